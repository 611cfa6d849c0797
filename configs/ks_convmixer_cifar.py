"""ConvMixer-256/16 on CIFAR with and without inter-layer kernel sharing (spec kernel_sharing.md sections 2, 4.1).

  python -m train --config configs/ks_convmixer_cifar.py:shared --workdir runs/ks_convmixer_shared \\
      --config.dataset.manual_dir=/path/to/cifar   # cifar-10-python.tar.gz (cifar-100-python.tar.gz)

Variants '[dcls-](shared|unshared)[-cifar100]':

| variant | depthwise conv | shared by all 16 blocks | params CIFAR-10 / 100 |
|---|---|---|---|
| unshared | dense 9x9 | nothing | 1,409,034 / 1,432,164 |
| shared | dense 9x9 | depthwise and pointwise kernels and biases (the reference's `_shared`) | 107,274 / 130,404 |
| dcls-unshared | DCLS | the DCLS positions and sigmas (the DCLS recipes' rule) | 1,215,498 / 1,238,628 |
| dcls-shared | DCLS | the whole DCLS depthwise conv and the pointwise kernel and bias | 121,098 / 144,228 |

The DCLS depthwise conv is this project's choice, not a reference's: Gaussian interpolation, 27 elements per
channel (a third of the 9x9 kernel's 81 weights, the DCLS abstract's ~3x fewer depthwise parameters) on a 17x17
dilated kernel (ConvNeXt-dcls' size), with the ConvNeXt-dcls position rules (lr x 5, no weight decay, clamped to
the kernel). Paper: sharing drops top-1 by 1.8 % (CIFAR-10) and 3.6 % (CIFAR-100), absolute or relative unstated.

| recipe (the reference's run scripts) | value |
|---|---|
| optimiser | AdamW, lr 1e-2, betas (0.9, 0.999), eps 1e-3, weight decay 0.01 on tensors of ndim > 1 only |
| schedule | cosine per step from 1e-2 to 1e-6, no warm-up, 200 epochs of 390 steps |
| batch / clipping | 128 / global norm 1.0 |
| augmentation | random crop 32 (4 px zero padding), flip, RandAugment rand-m9-mstd0.5-inc1, ImageNet mean / std, random erasing 0.25 'pixel', mixup 0.5 / cutmix 0.5 (switch 0.5) with label smoothing 0.1 |
| seed | 0 (CIFAR-10), 76 (CIFAR-100) |
"""
import re

import ml_collections

BATCH_SIZE = 128
SEEDS = {"cifar10": 0, "cifar100": 76}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
DCLS_DEPTHWISE = dict(kind="dcls", kernel_size=17, kernel_count=27, version="gauss", share_positions=True)
VARIANT = re.compile(r"(?P<dcls>dcls-)?(?P<sharing>shared|unshared)(?P<cifar100>-cifar100)?")


def get_config(variant: str = "shared") -> ml_collections.ConfigDict:
  match = VARIANT.fullmatch(variant)
  if match is None:
    raise ValueError(f"variant {variant!r}: expected '[dcls-](shared|unshared)[-cifar100]'")
  dataset = "cifar100" if match["cifar100"] else "cifar10"
  dcls = match["dcls"] is not None
  c = ml_collections.ConfigDict()
  c.seed = SEEDS[dataset]
  c.num_epochs = 200
  c.batch_size = BATCH_SIZE
  c.parallel = "pmap"
  c.log_every_steps = 100
  c.distributed = dict(coordinator_address="", num_processes=1, process_id=0, auto=False)
  c.task = dict(name="classification")  # label smoothing comes with mixup's soft targets

  c.model = dict(name="convmixer", dim=256, depth=16, num_classes=NUM_CLASSES[dataset], patch_size=1,
                 share_kernels=match["sharing"] == "shared",
                 **(dict(dwconv=DCLS_DEPTHWISE) if dcls else dict(kernel_size=9)))
  c.dataset = dict(name=dataset, data_dir="~/tensorflow_datasets", manual_dir=None, train_split="train",
                   eval_split="test", augment="convmixer", normalization="imagenet", randaugment_ops=2,
                   randaugment_magnitude=9, randaugment_magnitude_std=0.5, random_erasing=0.25,
                   mixup=dict(mixup_alpha=0.5, cutmix_alpha=0.5, prob=1.0, switch_prob=0.5, label_smoothing=0.1),
                   prefetch=2, worker_count=4, cache=True)

  c.optimizer = dict(name="adamw", learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-3, weight_decay=0.01,
                     decay_vectors=False, grad_clip_norm=1.0, ema_decay=0.0)
  if dcls:
    c.optimizer.update(dcls_position_lr_mult=5.0, dcls_sigma_lr_mult=5.0, clamp_positions=True)
  c.schedule = dict(name="warmup_cosine", warmup_epochs=0, end_learning_rate=1e-6, per_epoch=False)
  c.checkpoint = dict(every_steps=2000, max_to_keep=3, best_metric="eval/accuracy", best_mode="max", async_save=True)
  return c
