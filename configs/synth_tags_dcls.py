"""Audio demonstration: a tiny DCLS-Audio ConvNeXt tags synthetic clips (offline, minutes on 2 CPU cores).

  python -m train --config configs/synth_tags_dcls.py --workdir runs/synth_tags_dcls

Data: train/data/synth_tags.py makes 2,000 + 500 one-second 16 kHz clips locally (tones, chirps, noise bursts,
click trains, AM tones, buzzes: 1 to 3 events per clip over faint noise) with multi-hot labels, through the same
tfds builder + data_source path and the same DCLS-Audio transform as AudioSet: log-mels (B, 64 mel, 101 frames, 1).
Model: the DCLS-Audio ConvNeXt in miniature (two stages; Gaussian DCLS depthwise convs, 7x7 dilated kernel, 6
elements per channel, positions and sigmas shared per stage), trained with the DCLS-Audio recipe in miniature:
AdamW with positions and sigmas at 5x the learning rate, warm-up + cosine, random roll (no mixup: at this size it
slows learning more than it regularises). Evaluation reports mAP, AUC and d' over the whole test split after
every epoch. Measured (2-core CPU): test mAP 0.39 after the first epoch, 0.84 after 24 (AUC 0.91), ~5 minutes.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_epochs = 24
  c.batch_size = 32
  c.parallel = "pmap"
  c.log_every_steps = 20
  c.distributed = dict(coordinator_address="", num_processes=1, process_id=0, auto=False)
  c.input_key = "input"
  c.task = dict(name="tagging", label_smoothing=0.0)

  c.model = dict(name="dcls_audio_convnext", num_classes=8, depths=(1, 1), dims=(32, 64), stem_kernel=(2, 4),
                 dwconv=dict(kind="dcls", kernel_size=7, kernel_count=6, version="gauss"), drop_path_rate=0.0)
  c.dataset = dict(name="synth_tags", data_dir="~/tensorflow_datasets", manual_dir=None, train_split="train",
                   eval_split="test", front_end="dcls_audio", random_roll=True, speed_perturb=0.0,
                   random_erasing=0.0, mixup=None, prefetch=2, cache=True)

  c.optimizer = dict(name="adamw", learning_rate=4e-3, weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8,
                     grad_clip_norm=0.0, grad_accum_steps=1, ema_decay=0.0,
                     dcls_position_lr_mult=5.0, dcls_sigma_lr_mult=5.0, clamp_positions=False,
                     no_decay_names=("bias", "scale"))
  c.schedule = dict(name="warmup_cosine", warmup_epochs=1, end_learning_rate=1e-5, per_epoch=False)
  c.checkpoint = dict(every_steps=200, max_to_keep=2, best_metric="eval/mAP", best_mode="max", async_save=True)
  return ml_collections.ConfigDict(c)
