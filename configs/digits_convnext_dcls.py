"""Main job: a small ConvNeXt-dcls learns scikit-learn's 8x8 digits (bundled with scikit-learn, no download).

  python -m train --config configs/digits_convnext_dcls.py --workdir /tmp/digits

Data: 1,797 8x8 grey digits (train / test split of train/data/digits.py), read through the same tfds builder +
data_source path as the real datasets. Model: ConvNeXt with two stages; every depthwise conv is a Gaussian DCLS
conv (5x5 dilated kernel, 4 elements per channel, positions and sigmas shared per stage), trained with the
ConvNeXt-dcls recipe in miniature: AdamW, warm-up + cosine, positions and sigmas at 5x the learning rate and
without weight decay, positions clamped after every update. Expect >= 95% test accuracy in a few minutes on
2 CPU cores.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_epochs = 30
  c.batch_size = 32                      # global, over all devices
  c.parallel = "pmap"                    # or "shard_map"
  c.log_every_steps = 10
  # Multi-process: set coordinator_address ('host:port'), num_processes and process_id on each process, or auto.
  c.distributed = dict(coordinator_address="", num_processes=1, process_id=0, auto=False)

  c.model = dict(name="convnext", num_classes=10, in_chans=1, patch_size=2, depths=(2, 2), dims=(32, 64),
                 dwconv=dict(kind="dcls", kernel_size=5, kernel_count=4, version="gauss"),
                 drop_path_rate=0.1, layer_scale_init=1e-6)
  c.dataset = dict(name="digits", data_dir="~/tensorflow_datasets", manual_dir=None, train_split="train",
                   eval_split="test", max_translation=1, prefetch=2,
                   cache=True)  # 1,797 records: decoded once, then batched from memory

  c.optimizer = dict(name="adamw", learning_rate=4e-3, weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8,
                     grad_clip_norm=0.0, grad_accum_steps=1, ema_decay=0.0,
                     dcls_position_lr_mult=5.0, dcls_sigma_lr_mult=5.0, clamp_positions=True,
                     no_decay_names=("bias", "scale"))
  c.schedule = dict(name="warmup_cosine", warmup_epochs=2, end_learning_rate=1e-5, per_epoch=False)
  c.checkpoint = dict(every_steps=100, max_to_keep=2, best_metric="eval/accuracy", best_mode="max",
                      async_save=True)
  return ml_collections.ConfigDict(c)
