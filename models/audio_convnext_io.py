"""PyTorch state dicts, published checkpoints and reference fixtures of the two ConvNeXt audio taggers.

Tables (``models.torch_table``), from ``models.convnext_io``'s parts:

  AudioConvNeXt       ``bn0`` (BatchNorm with its buffers), ``downsample_layers.*``, ``stages.*``, ``norm``,
                      ``head_audioset``; ``logmel_extractor.melW`` (n_fft // 2 + 1, n_mels) is the frozen ``melW``
                      (same layout), imported only if it is the filterbank of the model's front end;
                      ``spectrogram_extractor.*`` (torchlibrosa's frozen DFT kernels; we use an FFT) is ignored.
  DclsAudioConvNeXt   ``downsample_layers.*``, ``stages.*`` (Dcls2d weight, P, SIG, bias: a stage's shared P and SIG
                      under every block), ``norm``, ``head``: ``convnext_io.reference_entries``.

Checkpoints: ``load_checkpoint(model, path)`` reads topel's ``convnext_tiny_471mAP.pth`` (or its safetensors) and
DCLS-Audio's ``convnext_dcls_audio_tiny.pth`` (state dict under 'model'), without running pickled code.

Fixtures (``python -m models.parity``): ``run_audio_convnext_fixture`` (arch ``audio_convnext``) and
``run_dcls_audio_convnext_fixture`` (arch ``dcls_audio_convnext``).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dcls_jax import nnx as dcls_nnx
from models import audio_convnext
from models import audio_frontend
from models import convnext
from models import convnext_io
from models import dcls_audio
from models import torch_table as tt

MEL_MATRIX = "logmel_extractor.melW"
IGNORED = ("spectrogram_extractor.*",)  # torchlibrosa's STFT as two frozen conv1d kernels
AudioModel = audio_convnext.AudioConvNeXt | audio_convnext.DclsAudioConvNeXt


def reference_entries(model: AudioModel) -> list[tt.Entry]:
  """The table of ``model`` (all reference names but ``logmel_extractor.melW``), in the reference's order."""
  if isinstance(model, audio_convnext.DclsAudioConvNeXt):
    return convnext_io.reference_entries(model)
  if isinstance(model, audio_convnext.AudioConvNeXt):
    return (tt.module("bn0", ("bn0",), tt.BATCH) + convnext_io.body_entries(model.downsample_layers, model.stages)
            + tt.module("norm", ("norm",), tt.NORM) + tt.module("head_audioset", ("head_audioset",), tt.LINEAR))
  raise TypeError(f"model is a {type(model).__name__}; expected an AudioConvNeXt or a DclsAudioConvNeXt")


def _mel_matrix(model: audio_convnext.AudioConvNeXt, state_dict: Mapping[str, Any]) -> np.ndarray:
  """``state_dict``'s ``logmel_extractor.melW``, checked against the filterbank of ``model.frontend``."""
  if MEL_MATRIX not in state_dict:
    raise ValueError(f"state_dict does not match this AudioConvNeXt: missing ['{MEL_MATRIX}']")
  given, expected = np.asarray(state_dict[MEL_MATRIX]), model.frontend.mel_matrix()
  if given.shape != expected.shape:
    raise ValueError(f"state_dict[{MEL_MATRIX!r}] has shape {given.shape}; this AudioConvNeXt expects "
                     f"{expected.shape} (n_fft // 2 + 1, n_mels)")
  if not np.allclose(given, expected, rtol=1e-5, atol=1e-7):
    raise ValueError(f"state_dict[{MEL_MATRIX!r}] is not the filterbank of the model's front end {model.frontend} "
                     f"(max |difference| {np.max(np.abs(given - expected)):.3g})")
  return given


def load_torch_state(model: AudioModel, state_dict: Mapping[str, Any]) -> None:
  """Copies a reference state dict into ``model`` (in place; also fills a model built by ``nnx.eval_shape``).

  Raises ValueError naming the first missing, unexpected or misshapen entry, shared DCLS positions that differ
  between the blocks of a stage, or (AudioConvNeXt) a mel matrix other than the front end's.
  """
  if isinstance(model, audio_convnext.AudioConvNeXt):
    mel_matrix = _mel_matrix(model, state_dict)
    tt.load_torch_state(model, reference_entries(model), state_dict, ignore=IGNORED + (MEL_MATRIX,))
    model.melW.set_value(jnp.asarray(mel_matrix, jnp.float32))
  else:
    tt.load_torch_state(model, reference_entries(model), state_dict)


def to_torch(model: AudioModel, tree: Mapping) -> dict[str, np.ndarray]:
  """``model``'s variables (``nnx.to_pure_dict(nnx.state(model))``, melW included) or gradients as a pure dict ->
  the reference's names and layouts (shared DCLS P/SIG under every block)."""
  out = tt.to_torch(model, reference_entries(model), tree)
  if isinstance(model, audio_convnext.AudioConvNeXt) and "melW" in tree:
    out = {MEL_MATRIX: np.asarray(tree["melW"]), **out}
  return out


def load_checkpoint(model: AudioModel, path: str, *, key: Optional[str] = None) -> None:
  """Loads a published ``.pth`` (``torch.load(weights_only=True)``) or ``.safetensors`` checkpoint into ``model``;
  a state dict wrapped under ``key`` (default: 'model', 'model_ema' or 'state_dict', whichever it has) is
  unwrapped (``torch_table.load_torch_checkpoint``)."""
  load_torch_state(model, tt.load_torch_checkpoint(path, key=key))


# ---- the reference fixtures -----------------------------------------------------------------------------------

def audio_convnext_from_reference(config: Mapping[str, Any], *,
                                  conv_algorithm: str = "auto") -> audio_convnext.AudioConvNeXt:
  """An ``AudioConvNeXt`` with the sizes and front end of a reference config (an ``audio_convnext`` fixture's
  ``meta.config``: topel's ConvNeXt constructor arguments and torchlibrosa front end fields)."""
  if config.get("use_torchaudio", False):
    raise ValueError("config.use_torchaudio=True: the Kaldi fbank front end is not supported; expected the "
                     "torchlibrosa one (use_torchaudio false)")
  return audio_convnext.AudioConvNeXt(
      config["num_classes"], depths=config["depths"], dims=config["dims"],
      frontend=audio_frontend.LogMelConfig.from_reference(config), stem_kernel=config.get("stem_kernel", (4, 4)),
      stem_stride=config.get("stem_stride", (4, 4)), stem_padding=config.get("stem_padding", (4, 0)),
      drop_path_rate=config.get("drop_path_rate", 0.0), layer_scale_init=config.get("layer_scale_init_value", 1e-6),
      head_init_scale=config.get("head_init_scale", 1.0), conv_algorithm=conv_algorithm,
      rngs=nnx.Rngs(config.get("seed", 0)))


def dcls_audio_convnext_from_reference(config: Mapping[str, Any], *,
                                       conv_algorithm: str = "auto") -> audio_convnext.DclsAudioConvNeXt:
  """A ``DclsAudioConvNeXt`` with the sizes of a reference config (a ``dcls_audio_convnext`` fixture's
  ``meta.config``: depths, dims, dilated_kernel_size, kernel_count, version, stem fields)."""
  if not config.get("stem_bias", True):
    raise ValueError("config.stem_bias=False: ConvNeXt's stem conv has a bias; expected true")
  dwconv = convnext.DepthwiseConfig(kernel_size=config["dilated_kernel_size"], kernel_count=config["kernel_count"],
                                    version=config.get("version", "gauss"), conv_algorithm=conv_algorithm)
  return audio_convnext.DclsAudioConvNeXt(
      config["num_classes"], depths=config["depths"], dims=config["dims"], dwconv=dwconv,
      stem_kernel=config.get("stem_kernel", (2, 16)), stem_stride=config.get("stem_stride"),
      stem_padding=config.get("stem_padding", 0), drop_path_rate=config.get("drop_path_rate", 0.0),
      layer_scale_init=config.get("layer_scale_init_value", 1e-6), head_init_scale=config.get("head_init_scale", 1.0),
      rngs=nnx.Rngs(config.get("seed", 0)))


def _mean_bce(logits: jax.Array, targets: np.ndarray) -> jax.Array:
  """The fixtures' loss: binary cross-entropy with logits, mean over batch and classes."""
  return optax.sigmoid_binary_cross_entropy(logits, jnp.asarray(targets, logits.dtype)).mean()


def run_audio_convnext_fixture(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Arch ``audio_convnext``: waveform -> front end, bn0, frame and scene embeddings, logits, probabilities (the
  reference's NCHW layouts: (B, 1, T, F) spectrograms, (B, C, T', F') frames); train mode: bn0 on batch
  statistics, the mean BCE loss, bn0's buffers after the step and every gradient."""
  config = meta["config"]
  flags = [flag for flag in ("use_pydub_augment", "use_roll_augment", "use_speed_perturb") if config.get(flag)]
  if flags:
    raise ValueError(f"config.{flags[0]}=True: a fixture's forward must run without waveform augmentations")
  model = tt.fixture_model(meta, arrays, lambda: audio_convnext_from_reference(meta["config"], conv_algorithm="direct"),
                           load_torch_state)
  train = meta["mode"] == "train"
  waveform = jnp.asarray(arrays["input/waveform"], jnp.float32)

  def forward(model):
    log_mel = model.log_mel(waveform)
    x = model.normalize(log_mel)
    frames = model.stage_outputs(x[..., None])[-1]
    scene = model.pool(frames)
    logits = model.head_audioset(scene)
    out = {"output/logmel": log_mel[:, None], "output/bn0": x[:, None],
           "output/frame_embeddings": jnp.transpose(frames, (0, 3, 1, 2)), "output/scene_embedding": scene,
           "output/logits": logits, "output/clipwise_output": jax.nn.sigmoid(logits)}
    if train:
      out["output/loss"] = _mean_bce(logits, arrays["input/targets"])
    else:
      power = audio_frontend.power_spectrogram(waveform, n_fft=model.frontend.n_fft,
                                               hop_length=model.frontend.hop_length)
      out["output/power_spectrogram"] = power[:, None]
    return out

  out = tt.run_forward(model, reference_entries(model), forward, train=train)
  return out


def run_dcls_audio_convnext_fixture(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Arch ``dcls_audio_convnext``. Eval: our DCLS-Audio front end on ``input/waveform`` (``output/spectrogram``
  (B, 1, n_mels, T) and its filterbank ``output/mel_fb``), and the network on the reference's
  ``output/spectrogram``: ``features``, ``logits``, every DCLS layer's dense kernel (C, 1, d, d). Train: logits and
  mean BCE loss on ``input/spectrogram``, and every gradient."""
  model = tt.fixture_model(
      meta, arrays, lambda: dcls_audio_convnext_from_reference(meta["config"], conv_algorithm="direct"),
      load_torch_state)
  return dcls_audio.run_fixture(meta, arrays, model, reference_entries(model), dcls_kernels)


def dcls_kernels(model: audio_convnext.DclsAudioConvNeXt) -> dict[str, jax.Array]:
  """``output/kernel/stages.{s}.{b}.dwconv``: the dense kernel (C, 1, d, d) of every DCLS layer, torch layout."""
  return {f"output/kernel/stages.{s}.{b}.dwconv": block.dwconv.kernel()
          for s, stage in enumerate(model.stages) for b, block in enumerate(stage)
          if isinstance(block.dwconv, dcls_nnx.DclsConv)}
