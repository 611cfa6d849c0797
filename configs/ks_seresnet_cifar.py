"""The CIFAR SE-ResNet (n = 2, widths 64-128-256) with and without kernel sharing (spec kernel_sharing.md sections
3, 4.2).

  python -m train --config configs/ks_seresnet_cifar.py:shared --workdir runs/ks_seresnet_shared \\
      --config.dataset.manual_dir=/path/to/cifar   # cifar-10-python.tar.gz (cifar-100-python.tar.gz)

Variants '(shared|unshared)[-cifar100]':

| variant | reference model | shared | params CIFAR-10 / 100 |
|---|---|---|---|
| unshared | se_resnet_d_2 | nothing | 2,771,290 / 2,794,420 |
| shared | se_resnet_d_2_full_shared | one 3x3 kernel per stage for its isomorphic convs | 1,223,002 / 1,246,132 |

| recipe (the reference's run scripts) | value |
|---|---|
| optimiser | SGD, lr 0.1, momentum 0.9 (no Nesterov), L2 1e-4 added to the gradient of every parameter |
| schedule | x0.1 at epochs 85, 130, 180; 256 epochs of 390 steps |
| batch | 128 |
| augmentation | random crop 32 (4 px zero padding), flip, CIFAR mean / std; plain cross-entropy |
"""
import re

import ml_collections

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
VARIANT = re.compile(r"(?P<sharing>shared|unshared)(?P<cifar100>-cifar100)?")


def get_config(variant: str = "shared") -> ml_collections.ConfigDict:
  match = VARIANT.fullmatch(variant)
  if match is None:
    raise ValueError(f"variant {variant!r}: expected '(shared|unshared)[-cifar100]'")
  dataset = "cifar100" if match["cifar100"] else "cifar10"
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_epochs = 256
  c.batch_size = 128
  c.parallel = "pmap"
  c.log_every_steps = 100
  c.distributed = dict(coordinator_address="", num_processes=1, process_id=0, auto=False)
  c.task = dict(name="classification")

  c.model = dict(name="seresnet", num_classes=NUM_CLASSES[dataset], n_size=2, widths=(64, 128, 256),
                 stem_width=16, reduction=16, share_stages=(match["sharing"] == "shared",) * 3, dropout=0.0)
  c.dataset = dict(name=dataset, data_dir="~/tensorflow_datasets", manual_dir=None, train_split="train",
                   eval_split="test", augment="resnet", normalization="cifar", prefetch=2, worker_count=2,
                   cache=True)

  c.optimizer = dict(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=False, l2_weight_decay=1e-4,
                     no_decay_names=(), decay_vectors=True, ema_decay=0.0)
  c.schedule = dict(name="step", decay_epochs=(85, 130, 180), decay_rate=0.1, per_epoch=False)
  c.checkpoint = dict(every_steps=2000, max_to_keep=3, best_metric="eval/accuracy", best_mode="max", async_save=True)
  return c
