"""What the three DCLS-Audio taggers share (spec ``audio.md`` section 4; K-H-Ismail/DCLS-Audio).

ConvNeXt-T, ConvFormer-S18 and FastViT-SA24 take standardised log-mels (B, N_MELS, T, 1), channels-last with
H = mel and W = time (the data pipeline's DCLS-Audio front end), and replace their 7x7 depthwise convolutions
by Gaussian DCLS (d 23, 26 elements), positions and sigmas shared per stage by the reference's growing-width rule
(``dcls_jax.sharing.GrowingWidth``). Here: the two depthwise recipes, the DCLS layers' initialisation, and the
front end as the reference fixtures record it.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from models import audio_frontend
from models import convnext
from models import torch_table as tt

N_MELS = 128
# The paper's baseline (dense 7x7) and its DCLS replacement.
DWCONVS = {"conv": convnext.DepthwiseConfig(kind="conv", kernel_size=7),
           "dcls": convnext.DepthwiseConfig(kernel_size=23, kernel_count=26, version="gauss")}
# replace_depthwise_dcls's initialisation of DCLS weights: a plain normal (positions N(0, 0.5^2) clamped to the
# kernel and sigmas 0.23 are DclsConv's gauss defaults).
DCLS_WEIGHT_INIT = nnx.initializers.normal(stddev=0.02)


def depthwise_config(dwconv) -> convnext.DepthwiseConfig:
  """'conv' | 'dcls' (``DWCONVS``), a ``DepthwiseConfig`` or its fields as a dict -> a ``DepthwiseConfig``."""
  return convnext.depthwise_config(dwconv, DWCONVS)


def depthwise_conv(width: int, dw: convnext.DepthwiseConfig, *, use_bias: bool, rngs: nnx.Rngs) -> nnx.Module:
  """A 'same' depthwise conv on ``width`` channels as DCLS-Audio builds it: dense, or DCLS initialised as spec 4.1."""
  return convnext.depthwise_conv(width, dw, use_bias=use_bias, dcls_weight_init=DCLS_WEIGHT_INIT, rngs=rngs)


def reference_front_end(config: Mapping[str, Any], waveform: np.ndarray) -> dict[str, np.ndarray]:
  """The fixtures' front-end outputs from ``input/waveform`` (B, clip_samples): ``output/spectrogram``
  (B, 1, n_mels, T), the network's input in the reference's NCHW layout, and ``output/mel_fb`` (n_fft // 2 + 1,
  n_mels), with the constants of the fixture's ``meta.config``."""
  if waveform.ndim != 2 or waveform.shape[1] != config["clip_samples"]:
    raise ValueError(f"input/waveform has shape {waveform.shape}; expected (B, config.clip_samples = "
                     f"{config['clip_samples']})")
  front_end = audio_frontend.LogMelConfig.from_reference(config)
  mel_fb = front_end.mel_matrix()
  spectrogram = audio_frontend.log_mel(jnp.asarray(waveform, jnp.float32), front_end, mel_fb)  # (B, T, n_mels)
  return {"output/spectrogram": np.asarray(jnp.swapaxes(spectrogram, 1, 2)[:, None]),
          "output/mel_fb": mel_fb.astype(np.float32)}


def network_input(spectrogram: np.ndarray) -> jnp.ndarray:
  """A fixture's spectrogram (B, 1, n_mels, T), NCHW -> the models' input (B, n_mels, T, 1)."""
  return jnp.transpose(jnp.asarray(spectrogram, jnp.float32), (0, 2, 3, 1))


def run_fixture(meta: Mapping, arrays: Mapping[str, np.ndarray], model, entries: Sequence[tt.Entry],
                dcls_kernels: Callable[[Any], dict]) -> dict[str, np.ndarray]:
  """The eval and train files of the three ``dcls_audio_*`` archs, for a ``model`` loaded from ``state/``.

  Eval: our front end on ``input/waveform`` (``output/spectrogram``, ``output/mel_fb``), then the network on the
  fixture's ``output/spectrogram``: ``features``, ``logits`` and ``dcls_kernels(model)`` (``output/kernel/<layer>``).
  Train: on ``input/spectrogram``, the logits, the mean BCE with logits against ``input/targets``, every gradient
  (shared P/SIG: the total, under every alias) and the BatchNorm buffers after the pass.
  """
  train = meta["mode"] == "train"
  x = network_input(arrays["input/spectrogram" if train else "output/spectrogram"])

  def forward(model):
    features = model.features(x)
    out = {"output/features": features, "output/logits": model.head(features)}
    if train:
      out["output/loss"] = optax.sigmoid_binary_cross_entropy(out["output/logits"], arrays["input/targets"]).mean()
    else:
      out.update(dcls_kernels(model))
    return out

  out = tt.run_forward(model, entries, forward, train=train)
  if not train:
    out.update(reference_front_end(meta["config"], arrays["input/waveform"]))
  return out
