"""PyTorch DCLS-Audio ConvFormer state dicts <-> ``models.convformer.ConvFormer``; the reference fixtures.

The conversion is a ``models.torch_table`` table: the reference's names (``downsample_layers.{i}.{conv,pre_norm,
post_norm}``, ``stages.{s}.{b}.{norm1,token_mixer,res_scale1,norm2,mlp,res_scale2}``, ``norm``, ``head``) map onto
our modules of the same names. A stage's shared DCLS P and SIG (listed by the reference under every block) resolve
to the one leaf of the stage. Published checkpoints (``convformer_dcls_audio_s18.pth``, ``convformer_audio_s18.pth``,
state dict under 'model') load with ``load_checkpoint``.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

from dcls_jax import nnx as dcls_nnx
from models import convformer
from models import convnext
from models import dcls_audio
from models import torch_table as tt

STAR_RELU = {"scale": ("scale", tt.SAME), "bias": ("bias", tt.SAME)}
_WEIGHT = ("weight",)  # the layers without bias: our Conv / Linear / LayerNorm with ``use_bias=False``


def _dwconv_entries(prefix: str, path: tt.Path, dwconv: nnx.Module) -> list[tt.Entry]:
  if isinstance(dwconv, dcls_nnx.DclsConv):
    return tt.module(prefix, path, tt.dcls(dwconv.spec.version, bias=False))
  return tt.module(prefix, path, tt.CONV, only=_WEIGHT)


def block_entries(prefix: str, path: tt.Path, block: convformer.Block) -> list[tt.Entry]:
  """One MetaFormer block, in the reference's order."""
  mixer, mixer_path = f"{prefix}.token_mixer", path + ("token_mixer",)
  entries = (tt.module(f"{prefix}.norm1", path + ("norm1",), tt.NORM, only=_WEIGHT)
             + tt.module(f"{mixer}.pwconv1", mixer_path + ("pwconv1",), tt.LINEAR, only=_WEIGHT)
             + tt.module(f"{mixer}.act1", mixer_path + ("act1",), STAR_RELU)
             + _dwconv_entries(f"{mixer}.dwconv", mixer_path + ("dwconv",), block.token_mixer.dwconv)
             + tt.module(f"{mixer}.pwconv2", mixer_path + ("pwconv2",), tt.LINEAR, only=_WEIGHT))
  if block.res_scale1 is not None:
    entries.append(tt.Entry(f"{prefix}.res_scale1.scale", path + ("res_scale1",)))
  entries += (tt.module(f"{prefix}.norm2", path + ("norm2",), tt.NORM, only=_WEIGHT)
              + tt.module(f"{prefix}.mlp.fc1", path + ("mlp", "fc1"), tt.LINEAR, only=_WEIGHT)
              + tt.module(f"{prefix}.mlp.act", path + ("mlp", "act"), STAR_RELU)
              + tt.module(f"{prefix}.mlp.fc2", path + ("mlp", "fc2"), tt.LINEAR, only=_WEIGHT))
  if block.res_scale2 is not None:
    entries.append(tt.Entry(f"{prefix}.res_scale2.scale", path + ("res_scale2",)))
  return entries


def reference_entries(model: convformer.ConvFormer) -> list[tt.Entry]:
  """The table of ``model``: one entry per name of the reference's ``state_dict()``, in its order."""
  stem = ("downsample_layers", 0)
  entries = (tt.module("downsample_layers.0.conv", stem + ("conv",), tt.CONV, only=_WEIGHT)
             + tt.module("downsample_layers.0.post_norm", stem + ("post_norm",), tt.NORM, only=_WEIGHT))
  for i in range(1, len(model.downsample_layers)):
    path = ("downsample_layers", i)
    entries += (tt.module(f"downsample_layers.{i}.pre_norm", path + ("pre_norm",), tt.NORM, only=_WEIGHT)
                + tt.module(f"downsample_layers.{i}.conv", path + ("conv",), tt.CONV))
  for s, stage in enumerate(model.stages):
    for b, block in enumerate(stage):
      entries += block_entries(f"stages.{s}.{b}", ("stages", s, b), block)
  return (entries + tt.module("norm", ("norm",), tt.NORM)
          + tt.module("head.fc1", ("head", "fc1"), tt.LINEAR) + tt.module("head.norm", ("head", "norm"), tt.NORM)
          + tt.module("head.fc2", ("head", "fc2"), tt.LINEAR))


def load_torch_state(model: convformer.ConvFormer, state_dict: Mapping[str, Any]) -> None:
  """Copies a reference state dict into ``model`` (in place; also fills a model built by ``nnx.eval_shape``)."""
  tt.load_torch_state(model, reference_entries(model), state_dict)


def to_torch(model: convformer.ConvFormer, tree: Mapping) -> dict[str, np.ndarray]:
  """``model``'s parameters, or their gradients, as a pure dict -> the reference's names and layouts."""
  return tt.to_torch(model, reference_entries(model), tree)


def load_checkpoint(model: convformer.ConvFormer, path: str) -> None:
  """Loads a published DCLS-Audio ConvFormer checkpoint (``.pth``, state dict under 'model') into ``model``.

  ``convformer_dcls_audio_s18.pth`` fits ``ConvFormer.s18(dwconv='dcls')``, ``convformer_audio_s18.pth``
  ``ConvFormer.s18(dwconv='conv')``. No pickled code runs (``torch_table.load_torch_checkpoint``).
  """
  load_torch_state(model, tt.load_torch_checkpoint(path))


# ---- the reference fixtures (arch dcls_audio_convformer) ---------------------------------------------------

def model_from_reference(config: Mapping[str, Any], *, conv_algorithm: str = "auto") -> convformer.ConvFormer:
  """A DCLS ``ConvFormer`` with the sizes of a reference config (a fixture's ``meta.config``)."""
  kernel, stride = tuple(config["stem_kernel"]), tuple(config["stem_stride"])
  if kernel != stride:
    raise ValueError(f"config.stem_kernel={list(kernel)} and config.stem_stride={list(stride)}: expected equal "
                     "(a patchify stem)")
  if tuple(config["stem_padding"]) != (0, 0) or config["stem_bias"]:
    raise ValueError(f"config.stem_padding={config['stem_padding']} and config.stem_bias={config['stem_bias']}: "
                     "expected [0, 0] and false")
  d = config["dilated_kernel_size"]
  dw = convnext.DepthwiseConfig(kernel_size=d, kernel_count=config["kernel_count"], version=config["version"],
                                conv_algorithm=conv_algorithm)
  return convformer.ConvFormer(config["num_classes"], depths=config["depths"], dims=config["dims"], dwconv=dw,
                               mlp_ratio=config["mlp_ratio"], res_scale_stages=config["res_scale_stages"],
                               stem_patch=kernel, drop_path_rate=config["drop_path_rate"], rngs=nnx.Rngs(0))


def run_fixture(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Arch ``dcls_audio_convformer``. Eval: our front end's spectrogram and filterbank, then the network on the
  fixture's ``output/spectrogram``: features, logits, every DCLS kernel. Train: logits, the mean binary
  cross-entropy with ``input/targets``, and the gradient of every reference parameter (shared P and SIG, summed
  over their layers, under every alias)."""
  config = meta["config"]
  model = tt.fixture_model(meta, arrays, lambda: model_from_reference(config, conv_algorithm="direct"),
                           load_torch_state)
  return dcls_audio.run_fixture(meta, arrays, model, reference_entries(model), dcls_kernels)


def dcls_kernels(model: convformer.ConvFormer) -> dict[str, jax.Array]:
  """``output/kernel/<reference layer>``: the dense kernel (C, 1, d, d) of every DCLS token mixer, torch layout."""
  return {f"output/kernel/stages.{s}.{b}.token_mixer.dwconv": block.token_mixer.dwconv.kernel()
          for s, stage in enumerate(model.stages) for b, block in enumerate(stage)
          if isinstance(block.token_mixer.dwconv, dcls_nnx.DclsConv)}
