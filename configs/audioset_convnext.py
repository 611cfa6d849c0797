"""ConvNeXt-audio on AudioSet (Pellegrini et al., Interspeech 2023; spec audio.md sections 2.3, 3, 6.2).

  python -m train --config configs/audioset_convnext.py --workdir runs/audioset_convnext

The released ConvNeXt-Tiny tagger (0.471 mAP): the model takes raw 10 s waveforms at 32 kHz and owns its front end
(224 Slaney mel bins, dB, learned BatchNorm per mel bin) and SpecAugment (after that BatchNorm).

| item          | value                                                                                         |
|---------------|-----------------------------------------------------------------------------------------------|
| data          | balanced + unbalanced train, class-balanced sampling (PANN's sampler); eval on 'eval'         |
| input         | waveforms (B, 320000) = int16 / 32767                                                         |
| augmentation  | SpecAugment after bn0: 2 time stripes < 64 frames, 2 mel stripes < 28 bins                    |
| mixup         | the reference mixes pairs of log-mels inside the model; here: mixup of the waveform batch     |
|               | (lambda ~ Beta(1, 1) per batch, no smoothing): an approximation, see below                    |
| loss          | BCE with logits (task 'tagging'); metrics mAP, AUC, d' over the whole eval set                |
| optimiser     | AdamW, peak lr 1e-3, weight decay 0.05 (the value behind 0.471 is not recorded)              |
| schedule      | OneCycle over 75,000 steps: 30% warm-up from lr/25, cosine to lr/(25 * 1e4), beta1 0.95->0.85 |
| batch         | 256 global (32 per GPU x 8)                                                                   |

Mixup: PANN mixes (x_2i, x_2i+1) pairs of normalised log-mels with one lambda each, which needs the labels inside
the model; this config mixes waveforms in the data pipeline instead, so the network sees log(mix of powers) rather
than a mix of logs. Set ``dataset.mixup`` to None to train without it.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 256
  c.num_epochs = 10  # ~75,000 steps (the reference's early stop) at ~1.9M clips per balanced epoch
  c.parallel = "pmap"
  c.log_every_steps = 100
  c.distributed = dict(coordinator_address="", num_processes=1, process_id=0, auto=False)
  c.input_key = "input"
  c.task = dict(name="tagging", label_smoothing=0.0)

  c.model = dict(name="audio_convnext_tiny", num_classes=527, drop_path_rate=0.1,
                 spec_augment=dict(time_width=64, time_stripes=2, freq_width=28, freq_stripes=2))
  c.dataset = dict(name="audioset", data_dir="~/tensorflow_datasets", manual_dir=None,
                   train_split="balanced_train+unbalanced_train", eval_split="eval", front_end="waveform",
                   int16_divisor=32767, random_roll=False, speed_perturb=0.0,
                   mixup=dict(alpha=1.0, label_smoothing=0.0), balanced_sampling=True, prefetch=4, worker_count=8)

  c.optimizer = dict(name="adamw", learning_rate=1e-3, weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8,
                     grad_clip_norm=0.0, grad_accum_steps=1, ema_decay=0.0, no_decay_names=("bias", "scale"))
  c.schedule = dict(name="onecycle", pct_start=0.3, div_factor=25.0, final_div_factor=1e4, cycle_momentum=True,
                    base_momentum=0.85, max_momentum=0.95, per_epoch=False)
  c.checkpoint = dict(every_steps=5000, max_to_keep=3, best_metric="eval/mAP", best_mode="max", async_save=True)
  return ml_collections.ConfigDict(c)
