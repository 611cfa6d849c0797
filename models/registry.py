"""Models by name, built from a config: ``create_model(config.model, rngs=...)``.

``config.model`` holds ``name`` (a key of ``MODELS``) and the model's constructor arguments, e.g.::

  config.model = ml_collections.ConfigDict(dict(name="convnext", num_classes=10, depths=(1, 1), dims=(32, 64),
                                                dwconv=dict(kind="dcls", kernel_size=5, kernel_count=4)))

A model family registers one constructor ``f(**kwargs, rngs) -> nnx.Module`` here.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from flax import nnx

from models import audio_convnext
from models import convformer
from models import convmixer
from models import convnext
from models import fastvit
from models import pann
from models import seresnet
from models import snn_delays

MODELS: dict[str, Callable[..., nnx.Module]] = {
    "convnext": convnext.ConvNeXt,  # explicit depths, dims, dwconv
    "convnext_size": convnext.ConvNeXt.from_size,  # a standard size: T, S, B; dwconv conv | v0 | gauss
    "snn_delays": snn_delays.SnnDelays,
    "audio_convnext": audio_convnext.AudioConvNeXt,  # ConvNeXt-audio (topel): waveform in, own front end and bn0
    "audio_convnext_tiny": audio_convnext.AudioConvNeXt.tiny,  # the released ConvNeXt-Tiny tagger
    "dcls_audio_convnext": audio_convnext.DclsAudioConvNeXt,  # DCLS-Audio ConvNeXt; input (B, n_mels, T, 1)
    "dcls_audio_convnext_tiny": audio_convnext.DclsAudioConvNeXt.tiny,  # the paper's size; dwconv conv | dcls
    "convformer": convformer.ConvFormer,  # explicit depths, dims, dwconv; input (B, n_mels, T, 1)
    "convformer_s18": convformer.ConvFormer.s18,  # the DCLS-Audio size; dwconv conv | dcls
    "fastvit": fastvit.FastViT,  # explicit layers, embed_dims, token_mixers, pos_embs, dwconv
    "fastvit_sa24": fastvit.FastViT.sa24,  # the DCLS-Audio size; dwconv conv | dcls
    "convmixer": convmixer.ConvMixer,  # share_kernels; dwconv None (dense k x k) or a DCLS DepthwiseConfig
    "seresnet": seresnet.SEResNet,  # the CIFAR SE-ResNet; share_stages per stage
    "pann": pann.Pann,  # variant: cnn6 | cnn10 | cnn14 | cnn14_sep | cnn14_sep_pw | cnn6_next | cnn10_next | cnn14_next
}


def create_model(model_config: Mapping[str, Any], *, rngs: nnx.Rngs) -> nnx.Module:
  """Builds ``MODELS[model_config['name']](**other fields, rngs=rngs)``."""
  kwargs = dict(model_config)
  name = kwargs.pop("name", None)
  if name not in MODELS:
    raise ValueError(f"config.model.name={name!r}: expected one of {sorted(MODELS)}.")
  try:
    return MODELS[name](**_to_python(kwargs), rngs=rngs)
  except TypeError as e:  # an unknown or missing constructor argument
    raise ValueError(f"config.model for {name!r}: {e}") from e


def _to_python(value):
  """ConfigDicts and lists (ml_collections' tuples come back as lists on the command line) -> dicts and tuples."""
  if isinstance(value, Mapping):
    return {k: _to_python(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_to_python(v) for v in value)
  return value
