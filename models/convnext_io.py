"""PyTorch ConvNeXt / ConvNeXt-dcls state dicts <-> the parameters of ``models.convnext.ConvNeXt``.

The conversion is a ``models.torch_table`` table: the reference's names (``downsample_layers.{i}``,
``stages.{s}.{b}.{dwconv,norm,pwconv1,pwconv2,gamma}``, ``norm``, ``head``) map onto our modules of the same names.
A stage's shared DCLS positions (listed by the reference under every block) resolve to the stage's one leaf.
``stem_entries``, ``downsample_entries`` and ``block_entries`` are the parts of the table that other
ConvNeXt-shaped models (the audio taggers) reuse.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dcls_jax import nnx as dcls_nnx
from models import convnext
from models import torch_table as tt

def block_entries(prefix: str, path: tt.Path, block: convnext.Block) -> list[tt.Entry]:
  """One ConvNeXt block: ``{prefix}.{dwconv,norm,pwconv1,pwconv2,gamma}``."""
  if isinstance(block.dwconv, dcls_nnx.DclsConv):
    dwconv = tt.dcls(block.dwconv.spec.version, bias=block.dwconv.bias is not None)
  else:
    dwconv = tt.CONV
  entries = (tt.module(f"{prefix}.dwconv", path + ("dwconv",), dwconv)
             + tt.module(f"{prefix}.norm", path + ("norm",), tt.NORM)
             + tt.module(f"{prefix}.pwconv1", path + ("pwconv1",), tt.LINEAR)
             + tt.module(f"{prefix}.pwconv2", path + ("pwconv2",), tt.LINEAR))
  if block.gamma is not None:
    entries.append(tt.Entry(f"{prefix}.gamma", path + ("gamma",)))
  return entries


def stem_entries(prefix: str, path: tt.Path) -> list[tt.Entry]:
  """``Stem``: ``{prefix}.0`` conv, ``{prefix}.1`` LayerNorm (the reference's ``downsample_layers.0``)."""
  return tt.module(f"{prefix}.0", path + ("conv",), tt.CONV) + tt.module(f"{prefix}.1", path + ("norm",), tt.NORM)


def downsample_entries(prefix: str, path: tt.Path) -> list[tt.Entry]:
  """``Downsample``: ``{prefix}.0`` LayerNorm, ``{prefix}.1`` conv."""
  return tt.module(f"{prefix}.0", path + ("norm",), tt.NORM) + tt.module(f"{prefix}.1", path + ("conv",), tt.CONV)


def body_entries(downsample_layers: Sequence[Any], stages: Sequence[Sequence[convnext.Block]]) -> list[tt.Entry]:
  """``downsample_layers.*`` and ``stages.*`` of any ConvNeXt-shaped model, in the reference's order."""
  entries = stem_entries("downsample_layers.0", ("downsample_layers", 0))
  for i in range(1, len(downsample_layers)):
    entries += downsample_entries(f"downsample_layers.{i}", ("downsample_layers", i))
  for s, stage in enumerate(stages):
    for b, block in enumerate(stage):
      entries += block_entries(f"stages.{s}.{b}", ("stages", s, b), block)
  return entries


def reference_entries(model: convnext.ConvNeXt) -> list[tt.Entry]:
  """The table of ``model``: one entry per name of the reference's ``state_dict()``, in its order."""
  return (body_entries(model.downsample_layers, model.stages) + tt.module("norm", ("norm",), tt.NORM)
          + tt.module("head", ("head",), tt.LINEAR))


def load_torch_state(model: convnext.ConvNeXt, state_dict: Mapping[str, Any]) -> None:
  """Copies a reference state dict into ``model`` (in place; also fills a model built by ``nnx.eval_shape``)."""
  tt.load_torch_state(model, reference_entries(model), state_dict)


def to_torch(model: convnext.ConvNeXt, tree: Mapping) -> dict[str, np.ndarray]:
  """``model``'s parameters, or their gradients, as a pure dict -> the reference's names and layouts."""
  return tt.to_torch(model, reference_entries(model), tree)


# ---- the reference fixtures (arch convnext_dcls) --------------------------------------------------------

_DWCONV_KINDS = {"conv7x7": None, "dcls_v0": "v0", "dcls_gauss": "gauss"}


def model_from_reference(config: Mapping[str, Any], *, conv_algorithm: str = "auto") -> convnext.ConvNeXt:
  """A ``ConvNeXt`` with the sizes of a reference config (a fixture's ``meta.config``)."""
  kind = config.get("dwconv")
  if kind not in _DWCONV_KINDS:
    raise ValueError(f"config.dwconv={kind!r}: expected one of {sorted(_DWCONV_KINDS)}")
  if kind == "conv7x7":
    dw = convnext.DepthwiseConfig(kind="conv", kernel_size=7)
  else:
    version, d = _DWCONV_KINDS[kind], config["dcls_kernel_size"]
    if config.get("dcls_version", version) != version:
      raise ValueError(f"config.dcls_version={config['dcls_version']!r}: expected {version!r} for dwconv {kind!r}")
    if config.get("dcls_padding", d // 2) != d // 2:
      raise ValueError(f"config.dcls_padding={config['dcls_padding']!r}: expected dcls_kernel_size // 2 = {d // 2}")
    dw = convnext.DepthwiseConfig(kernel_size=d, kernel_count=config["dcls_kernel_count"], version=version,
                                  conv_algorithm=conv_algorithm)
  return convnext.ConvNeXt(config["num_classes"], depths=config["depths"], dims=config["dims"], dwconv=dw,
                           in_chans=config.get("in_chans", 3), drop_path_rate=config.get("drop_path_rate", 0.0),
                           layer_scale_init=config.get("layer_scale_init_value", 1e-6),
                           head_init_scale=config.get("head_init_scale", 1.0), rngs=nnx.Rngs(config.get("seed", 0)))


def run_fixture(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Arch ``convnext_dcls``: logits, per-stage features (NCHW), pooled features, DCLS kernels; in train mode the
  mean cross-entropy and the gradient of every reference parameter (shared ones under every alias)."""
  model = tt.fixture_model(meta, arrays, lambda: model_from_reference(meta["config"], conv_algorithm="direct"),
                           load_torch_state)
  train = meta["mode"] == "train"
  x = jnp.transpose(jnp.asarray(arrays["input/x"], jnp.float32), (0, 2, 3, 1))

  def forward(model):
    stages = model.stage_outputs(x)
    pooled = model.pool(stages[-1])
    logits = model.head(pooled)
    out = {f"output/features/stage{i}": jnp.transpose(y, (0, 3, 1, 2)) for i, y in enumerate(stages)}
    out.update({"output/features/pooled": pooled, "output/logits": logits})
    if train:
      out["output/loss"] = optax.softmax_cross_entropy_with_integer_labels(logits, arrays["input/labels"]).mean()
    for s, stage in enumerate(model.stages):
      for b, block in enumerate(stage):
        if isinstance(block.dwconv, dcls_nnx.DclsConv):
          out[f"output/kernel/stages.{s}.{b}.dwconv"] = block.dwconv.kernel()
    return out

  return tt.run_forward(model, reference_entries(model), forward, train=train)
