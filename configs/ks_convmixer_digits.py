"""Demonstration of kernel sharing: a small ConvMixer, shared vs unshared, on scikit-learn's 8x8 digits (bundled with
scikit-learn, no download), in a minute or two of CPU each.

  python -m train --config configs/ks_convmixer_digits.py:shared --workdir runs/ks_shared
  python -m train --config configs/ks_convmixer_digits.py:unshared --workdir runs/ks_unshared

Data: 1,797 8x8 grey digits (train / test split of train/data/digits.py), shifted by up to 1 pixel in training.
Model: ConvMixer-64/8 with 5x5 depthwise kernels at patch size 1 (8x8 maps throughout), one input channel;
'shared' ties the depthwise and pointwise kernels and biases of all 8 blocks (kernel_sharing.md section 2.2).
Recipe: the ConvMixer CIFAR recipe in miniature (AdamW lr 1e-2, eps 1e-3, weight decay 0.01 on ndim > 1, cosine
per step to 1e-6 without warm-up, clipping 1.0, label smoothing 0.1); no RandAugment or mixup on 8x8 digits.
"""
import ml_collections

SHARING = {"shared": True, "unshared": False}


def get_config(variant: str = "shared") -> ml_collections.ConfigDict:
  if variant not in SHARING:
    raise ValueError(f"variant {variant!r}: expected one of {sorted(SHARING)}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_epochs = 10
  c.batch_size = 32
  c.parallel = "pmap"
  c.log_every_steps = 20
  c.distributed = dict(coordinator_address="", num_processes=1, process_id=0, auto=False)
  c.task = dict(name="classification", label_smoothing=0.1)

  c.model = dict(name="convmixer", dim=64, depth=8, num_classes=10, kernel_size=5, patch_size=1, in_chans=1,
                 share_kernels=SHARING[variant])
  c.dataset = dict(name="digits", data_dir="~/tensorflow_datasets", manual_dir=None, train_split="train",
                   eval_split="test", max_translation=1, prefetch=2, cache=True)

  c.optimizer = dict(name="adamw", learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-3, weight_decay=0.01,
                     decay_vectors=False, grad_clip_norm=1.0, ema_decay=0.0)
  c.schedule = dict(name="warmup_cosine", warmup_epochs=0, end_learning_rate=1e-6, per_epoch=False)
  c.checkpoint = dict(every_steps=200, max_to_keep=2, best_metric="eval/accuracy", best_mode="max",
                      async_save=True)
  return c
