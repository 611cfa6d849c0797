"""What the three DCLS-Audio taggers share (spec ``audio.md`` section 4; K-H-Ismail/DCLS-Audio).

ConvNeXt-T, ConvFormer-S18 and FastViT-SA24 take standardised log-mels (B, N_MELS, T, 1), channels-last with
H = mel and W = time (the data pipeline's DCLS-Audio front end), and replace their 7x7 depthwise convolutions
by Gaussian DCLS (d 23, 26 elements), positions and sigmas shared per stage by the reference's growing-width rule
(``dcls_jax.sharing.GrowingWidth``). Here: the two depthwise recipes, the DCLS layers' initialisation, and the
front end as the reference fixtures record it.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from models import audio_frontend
from models import convnext

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
