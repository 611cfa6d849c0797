"""PyTorch FastViT (DCLS-Audio) state dicts <-> the variables of ``models.fastvit.FastViT``; its reference fixtures.

The conversion is a ``models.torch_table`` table read off the model's structure, so it fits the training form and
the inference form (after ``fastvit.reparameterize``) alike: the reference's names (``patch_embed``,
``network.{i}...``, ``conv_exp``, ``head``) map onto our modules of the same names. Variables are Params and
BatchNorm buffers (``running_mean``, ``running_var``, ``num_batches_tracked``); layer scales are (C, 1, 1) there,
(1, 1, C) here; a stage's shared DCLS positions and sigmas (listed by the reference under every layer) resolve to the
one leaf of the layer that created them.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flax import nnx

from dcls_jax import nnx as dcls_nnx
from models import convnext
from models import dcls_audio
from models import fastvit
from models import torch_table as tt

_LAYER_SCALE = tt.Layout(axes=(1, 2, 0))  # torch (C, 1, 1) -> ours (1, 1, C)


def conv_entries(prefix: str, path: tt.Path, conv: nnx.Module) -> list[tt.Entry]:
  """A conv layer: an ``nnx.Conv`` (dense, with or without bias) or a DCLS conv."""
  if isinstance(conv, dcls_nnx.DclsConv):
    return tt.module(prefix, path, tt.dcls(conv.spec.version, bias=conv.bias is not None))
  return tt.module(prefix, path, tt.CONV, only=None if conv.bias is not None else ("weight",))


def conv_bn_entries(prefix: str, path: tt.Path, conv_bn: fastvit.ConvBN) -> list[tt.Entry]:
  """``{prefix}.conv``, ``{prefix}.bn``."""
  return (conv_entries(f"{prefix}.conv", path + ("conv",), conv_bn.conv)
          + tt.module(f"{prefix}.bn", path + ("bn",), tt.BATCH))


def mobileone_entries(prefix: str, path: tt.Path, block: fastvit.MobileOneBlock) -> list[tt.Entry]:
  """``{prefix}.se.{reduce,expand}``, then ``reparam_conv`` or the branches ``rbr_skip``, ``rbr_conv.{i}``,
  ``rbr_scale``."""
  entries = []
  if block.se is not None:
    for name in ("reduce", "expand"):
      entries += tt.module(f"{prefix}.se.{name}", path + ("se", name), tt.CONV)
  if block.reparam_conv is not None:
    return entries + tt.module(f"{prefix}.reparam_conv", path + ("reparam_conv",), tt.CONV)
  if block.rbr_skip is not None:
    entries += tt.module(f"{prefix}.rbr_skip", path + ("rbr_skip",), tt.BATCH)
  for i, branch in enumerate(block.rbr_conv):
    entries += conv_bn_entries(f"{prefix}.rbr_conv.{i}", path + ("rbr_conv", i), branch)
  if block.rbr_scale is not None:
    entries += conv_bn_entries(f"{prefix}.rbr_scale", path + ("rbr_scale",), block.rbr_scale)
  return entries


def patch_embed_entries(prefix: str, path: tt.Path, layer: fastvit.PatchEmbed) -> list[tt.Entry]:
  """``{prefix}.proj.0`` (``lkb_reparam`` or ``lkb_origin`` + ``small_conv``), ``{prefix}.proj.1``."""
  large, path0 = layer.proj[0], path + ("proj", 0)
  if large.lkb_reparam is not None:
    entries = tt.module(f"{prefix}.proj.0.lkb_reparam", path0 + ("lkb_reparam",), tt.CONV)
  else:
    entries = (conv_bn_entries(f"{prefix}.proj.0.lkb_origin", path0 + ("lkb_origin",), large.lkb_origin)
               + conv_bn_entries(f"{prefix}.proj.0.small_conv", path0 + ("small_conv",), large.small_conv))
  return entries + mobileone_entries(f"{prefix}.proj.1", path + ("proj", 1), layer.proj[1])


def convffn_entries(prefix: str, path: tt.Path, ffn: fastvit.ConvFFN) -> list[tt.Entry]:
  return (conv_bn_entries(f"{prefix}.conv", path + ("conv",), ffn.conv)
          + conv_entries(f"{prefix}.fc1", path + ("fc1",), ffn.fc1)
          + conv_entries(f"{prefix}.fc2", path + ("fc2",), ffn.fc2))


def _layer_scale(prefix: str, path: tt.Path, name: str) -> tt.Entry:
  return tt.Entry(f"{prefix}.{name}", path + (name,), _LAYER_SCALE)


def block_entries(prefix: str, path: tt.Path, block: fastvit.RepMixerBlock | fastvit.AttentionBlock
                  ) -> list[tt.Entry]:
  """One block of a stage: ``{prefix}.token_mixer``, ``convffn``, the layer scales (and ``norm``)."""
  entries = convffn_entries(f"{prefix}.convffn", path + ("convffn",), block.convffn)
  mixer, mixer_path = block.token_mixer, path + ("token_mixer",)
  if isinstance(block, fastvit.AttentionBlock):
    return (entries + tt.module(f"{prefix}.norm", path + ("norm",), tt.BATCH)
            + tt.module(f"{prefix}.token_mixer.qkv", mixer_path + ("qkv",), tt.LINEAR, only=("weight",))
            + tt.module(f"{prefix}.token_mixer.proj", mixer_path + ("proj",), tt.LINEAR)
            + [_layer_scale(prefix, path, "layer_scale_1"), _layer_scale(prefix, path, "layer_scale_2")])
  entries.append(_layer_scale(prefix, path, "layer_scale"))
  if mixer.reparam_conv is not None:
    return entries + tt.module(f"{prefix}.token_mixer.reparam_conv", mixer_path + ("reparam_conv",), tt.CONV)
  return (entries + [_layer_scale(f"{prefix}.token_mixer", mixer_path, "layer_scale")]
          + mobileone_entries(f"{prefix}.token_mixer.norm", mixer_path + ("norm",), mixer.norm)
          + mobileone_entries(f"{prefix}.token_mixer.mixer", mixer_path + ("mixer",), mixer.mixer))


def reference_entries(model: fastvit.FastViT) -> list[tt.Entry]:
  """The table of ``model`` (training or inference form): one entry per name of the reference's ``state_dict()``."""
  entries = tt.module("patch_embed", ("patch_embed",), tt.CONV, only=("weight",))
  for i, layer in enumerate(model.network):
    prefix, path = f"network.{i}", ("network", i)
    if isinstance(layer, fastvit.RepCPE):
      entries += conv_entries(f"{prefix}.pe", path + ("pe",), layer.pe)
    elif isinstance(layer, fastvit.PatchEmbed):
      entries += patch_embed_entries(prefix, path, layer)
    else:
      for j, block in enumerate(layer):
        entries += block_entries(f"{prefix}.{j}", path + (j,), block)
  return (entries + mobileone_entries("conv_exp", ("conv_exp",), model.conv_exp)
          + tt.module("head", ("head",), tt.LINEAR))


def load_torch_state(model: fastvit.FastViT, state_dict: Mapping[str, Any]) -> None:
  """Copies a reference state dict (Params and BatchNorm buffers) into ``model``, in place."""
  tt.load_torch_state(model, reference_entries(model), state_dict)


def to_torch(model: fastvit.FastViT, tree: Mapping) -> dict[str, np.ndarray]:
  """``model``'s variables (or their gradients, or its BatchNorm buffers), as a pure dict -> the reference's names
  and layouts."""
  return tt.to_torch(model, reference_entries(model), tree)


def load_checkpoint(model: fastvit.FastViT, path: str) -> None:
  """Loads a published checkpoint (``fastvit_dcls_audio_sa24.pth``: the state dict under 'model') into ``model``
  without executing pickled code. The checkpoint holds the training form: load it, then ``reparameterize``."""
  load_torch_state(model, tt.load_torch_checkpoint(path))


# ---- the reference fixtures (arch dcls_audio_fastvit) ----------------------------------------------------------

# meta.config fields fixed by the architecture, and our values for them.
_FIXED_CONFIG = {"version": "gauss", "stem_kernel": list(fastvit.STEM_PATCH), "stem_stride": list(fastvit.STEM_PATCH),
                 "stem_padding": [0, 0], "stem_bias": False, "repmixer_kernel_size": fastvit.REPMIXER_KERNEL,
                 "down_patch_size": fastvit.DOWN_PATCH, "down_stride": fastvit.DOWN_STRIDE,
                 "cls_ratio": fastvit.CLS_RATIO}
_POS_EMBS = {None: False, "RepCPE(7x7)": True}


def model_from_reference(config: Mapping[str, Any], *, conv_algorithm: str = "auto") -> fastvit.FastViT:
  """A ``FastViT`` with the sizes of a reference config (a fixture's ``meta.config``)."""
  for field, value in _FIXED_CONFIG.items():
    if field in config and config[field] != value:
      raise ValueError(f"config.{field}={config[field]!r}: this FastViT supports {value!r} only")
  if any(p not in _POS_EMBS for p in config["pos_embs"]):
    raise ValueError(f"config.pos_embs={config['pos_embs']!r}: expected each of {list(_POS_EMBS)}")
  d = config["dilated_kernel_size"]
  dw = convnext.DepthwiseConfig(kernel_size=d, kernel_count=config["kernel_count"], version="gauss",
                                conv_algorithm=conv_algorithm)
  return fastvit.FastViT(config["num_classes"], layers=config["layers"], embed_dims=config["embed_dims"],
                         mlp_ratios=config["mlp_ratios"], token_mixers=config["token_mixers"],
                         pos_embs=[_POS_EMBS[p] for p in config["pos_embs"]], dwconv=dw,
                         drop_path_rate=config.get("drop_path_rate", 0.0),
                         layer_scale_init=config.get("layer_scale_init_value", 1e-6), rngs=nnx.Rngs(0))


def _dcls_kernels(model: fastvit.FastViT) -> dict[str, Any]:
  """``output/kernel/<layer>``: every DCLS layer's dense kernel (O, 1, d, d), under its reference name."""
  kernels = {}
  for i, layer in enumerate(model.network):
    if isinstance(layer, fastvit.RepCPE):
      kernels[f"output/kernel/network.{i}.pe"] = layer.pe.kernel()
    elif isinstance(layer, nnx.List):
      for j, block in enumerate(layer):
        kernels[f"output/kernel/network.{i}.{j}.convffn.conv.conv"] = block.convffn.conv.conv.kernel()
  return kernels


def run_fixture(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Arch ``dcls_audio_fastvit``, every mode of the fixture README:

  eval     our front end's spectrogram and filterbank; the network fed with ``output/spectrogram``: features,
           logits, DCLS kernels
  train    logits, loss (mean BCE with logits vs ``input/targets``), the gradient of every parameter (shared ones
           under every alias), the BatchNorm buffers after the step (``output/state_after/``)
  reparam  eval logits of the training form (``logits_trainform``) and of the inference form (``logits``), and the
           inference form's state dict (``output/reparam_state/``)
  """
  mode = meta["mode"]
  if mode not in ("eval", "train", "reparam"):
    raise ValueError(f"meta.mode={mode!r}: expected 'eval', 'train' or 'reparam'")
  model = tt.fixture_model(meta, arrays, lambda: model_from_reference(meta["config"], conv_algorithm="direct"),
                           load_torch_state)

  if mode != "reparam":
    return dcls_audio.run_fixture(meta, arrays, model, reference_entries(model), _dcls_kernels)
  x = dcls_audio.network_input(arrays["input/spectrogram"])
  inference = fastvit.reparameterize(model)
  state = to_torch(inference, nnx.to_pure_dict(nnx.state(inference, nnx.Any(*tt.VARIABLES))))
  out = {"output/logits_trainform": nnx.jit(lambda m: m(x))(model),
         "output/logits": nnx.jit(lambda m: m(x))(inference),
         **{f"output/reparam_state/{k}": v for k, v in state.items()}}
  return {k: np.asarray(v) for k, v in out.items()}

