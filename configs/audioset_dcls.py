"""DCLS-Audio on AudioSet-2M (Khalfaoui-Hassani et al., arXiv 2309.13972; spec audio.md sections 2.2, 4, 6.1).

  python -m train --config configs/audioset_dcls.py:convnext-dcls --workdir runs/audioset_convnext_dcls

``get_config("<model>-<dwconv>")``: model convnext (ConvNeXt-T), convformer (ConvFormer-S18) or fastvit
(FastViT-SA24); dwconv 'dcls' (Gaussian DCLS, d 23, 26 elements, positions shared per stage) or 'conv' (the dense
7x7 baseline the paper re-trained in the same pipeline).

| item            | value                                                                                      |
|-----------------|--------------------------------------------------------------------------------------------|
| data            | balanced + unbalanced train (AudioSet-2M), eval on 'eval'; 10 s clips at 32 kHz             |
| front end       | 128 HTK mel bins, dB, standardised by (-18.2696, 30.5735); input (B, 128, 1001, 1)         |
| augmentation    | random roll, speed perturbation p 0.5, random erasing p 0.25 on the linear spectrogram      |
| mixup           | one lambda ~ Beta(0.8, 0.8) per batch, label smoothing 0.1 folded in                       |
| loss            | BCE with logits (task 'tagging'); metrics mAP, AUC, d' over the whole eval set             |
| optimiser       | AdamW (ConvFormer: LAMB with global clip 1.0), lr 4e-3, weight decay 0.05                  |
| DCLS parameters | positions and sigmas at 5x the learning rate, no weight decay, never clamped               |
| schedule        | 60 epochs, 20 of linear warm-up, cosine to 1e-6, per step                                  |
| batch           | 4096 global                                                                                |
| stochastic depth| 0.4 (linear over blocks)                                                                   |
| checkpoint      | best by eval mAP (the reference selects on the eval set too)                               |
"""
import ml_collections

MODELS = {  # registry name of the paper's size
    "convnext": "dcls_audio_convnext_tiny",
    "convformer": "convformer_s18",
    "fastvit": "fastvit_sa24",
}


def get_config(arg: str = "convnext-dcls") -> ml_collections.ConfigDict:
  model, _, dwconv = arg.partition("-")
  if model not in MODELS or dwconv not in ("dcls", "conv"):
    raise ValueError(f"config argument {arg!r}: expected '<model>-<dwconv>' with model in {sorted(MODELS)} and "
                     "dwconv 'dcls' or 'conv'")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_epochs = 60
  c.batch_size = 4096
  c.parallel = "pmap"
  c.log_every_steps = 100
  c.distributed = dict(coordinator_address="", num_processes=1, process_id=0, auto=False)
  c.input_key = "input"
  c.task = dict(name="tagging", label_smoothing=0.0)  # smoothing is folded into mixup

  c.model = dict(name=MODELS[model], num_classes=527, dwconv=dwconv, drop_path_rate=0.4)
  c.dataset = dict(name="audioset", data_dir="~/tensorflow_datasets", manual_dir=None,
                   train_split="balanced_train+unbalanced_train", eval_split="eval", front_end="dcls_audio",
                   random_roll=True, speed_perturb=0.5, random_erasing=0.25,
                   mixup=dict(alpha=0.8, label_smoothing=0.1), balanced_sampling=False, prefetch=4, worker_count=8)

  lamb = model == "convformer"
  c.optimizer = dict(name="lamb" if lamb else "adamw", learning_rate=4e-3, weight_decay=0.05, b1=0.9, b2=0.999,
                     eps=1e-8, grad_clip_norm=1.0 if lamb else 0.0, grad_accum_steps=1, ema_decay=0.0,
                     dcls_position_lr_mult=5.0, dcls_sigma_lr_mult=5.0, clamp_positions=False,
                     no_decay_names=("bias", "scale"))
  c.schedule = dict(name="warmup_cosine", warmup_epochs=20, end_learning_rate=1e-6, per_epoch=False)
  c.checkpoint = dict(every_steps=1000, max_to_keep=3, best_metric="eval/mAP", best_mode="max", async_save=True)
  return ml_collections.ConfigDict(c)
