"""ConvNeXt-dcls on ImageNet-1k (spec dcls.md section 4.1): one file, the variant as the config argument.

  python -m train --config configs/convnext_dcls_imagenet.py:T-v0 --workdir runs/cnx_t_v0 \\
      --config.dataset.manual_dir=/path/to/imagenet   # ILSVRC2012_img_{train,val}.tar + devkit

Variants SIZE-DWCONV: SIZE in T, S, B; DWCONV in conv (plain 7x7), v0 (bilinear, d 17, Kc 34 for T / 40 for
S and B, + repulsive loss after epoch 20), gauss (d 23, Kc 26, positions and sigmas shared per stage).
Paper top-1 (v0): T 82.5, S 83.7, B 84.1 (plain ConvNeXt: 82.1, 83.1, 83.8).

| recipe | value |
|---|---|
| optimiser | AdamW, lr 4e-3 x batch / 4096, betas (0.9, 0.999), eps 1e-8, weight decay 0.05 |
| DCLS positions (and sigmas) | lr x 5, no weight decay, clamped to the kernel after every step |
| schedule | 20 warm-up epochs from 0, cosine to 1e-6, per step, 300 epochs |
| regularisation | drop path T 0.1 / S 0.4 / B 0.5, layer scale 1e-6, label smoothing 0.1, mixup 0.8, cutmix 1.0, RandAugment m9 mstd0.5, random erasing 0.25 |
| evaluation | EMA 0.9999 of the parameters, 224 px, crop 0.875 |
"""
import ml_collections

BATCH_SIZE = 4096


def get_config(variant: str = "T-v0") -> ml_collections.ConfigDict:
  size, dwconv = variant.split("-")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_epochs = 300
  c.batch_size = BATCH_SIZE
  c.parallel = "pmap"
  c.log_every_steps = 100
  c.distributed = dict(coordinator_address="", num_processes=1, process_id=0, auto=False)
  c.task = dict(name="classification")  # label smoothing comes with mixup's soft targets

  c.model = dict(name="convnext_size", size=size, num_classes=1000, dwconv=dwconv, layer_scale_init=1e-6)
  c.dataset = dict(name="imagenet2012", data_dir="~/tensorflow_datasets", manual_dir=None, train_split="train",
                   eval_split="validation", image_size=224, crop_pct=0.875, randaugment_ops=2,
                   randaugment_magnitude=9, randaugment_magnitude_std=0.5, random_erasing=0.25,
                   mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1),
                   prefetch=2, worker_count=16, cache=False)

  c.optimizer = dict(name="adamw", learning_rate=4e-3 * BATCH_SIZE / 4096, b1=0.9, b2=0.999, eps=1e-8,
                     weight_decay=0.05, dcls_position_lr_mult=5.0, dcls_sigma_lr_mult=5.0, clamp_positions=True,
                     ema_decay=0.9999, repulsive_after_epoch=20 if dwconv == "v0" else None)
  c.schedule = dict(name="warmup_cosine", warmup_epochs=20, end_learning_rate=1e-6, per_epoch=False)
  c.checkpoint = dict(every_steps=2000, max_to_keep=3, best_metric="eval/accuracy", best_mode="max", async_save=True)
  return c
