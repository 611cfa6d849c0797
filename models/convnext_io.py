"""PyTorch ConvNeXt / ConvNeXt-dcls state dicts <-> the parameters of ``models.convnext.ConvNeXt``.

The conversion is a table: every PyTorch name maps to one leaf of our parameters (``nnx.State.to_pure_dict()``
paths) through a layout transform. Module kinds (torch leaf -> our leaf, layout):

  conv     weight OIHW -> kernel HWIO, bias             (stem, downsampling, dense depthwise 7x7 (C, 1, 7, 7))
  linear   weight (out, in) -> kernel (in, out), bias   (pwconv1, pwconv2, head)
  norm     weight -> scale, bias                        (every LayerNorm)
  dcls     weight (C, 1, Kc), bias as they are; P, SIG (2, C, 1, Kc) -> positions, sigmas with the reference's row
           order per version (``dcls_jax.torch_io.axes_of_rows``: v0 rows drive (H, W), gauss rows (W, H))
  gamma    (C,) as it is

Shared positions: the reference lists a stage's shared P (and SIG) under every block (``stages.{s}.{b}.dwconv.P``
for all b); all those names map to the ONE leaf of the stage (in its first block). Import checks that the aliases
agree; export (of parameters, or of gradients, whose shared leaf holds the sum over the blocks) writes the leaf
under every alias, as the reference fixtures store them.

Checkpoints: ``load_torch_checkpoint`` reads a ``.pth`` with ``torch.load(weights_only=True)`` (no pickled code
runs) or a ``.safetensors`` file; torch and safetensors are optional and imported on use.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dcls_jax import nnx as dcls_nnx
from dcls_jax import torch_io
from models import convnext

Path = tuple[Any, ...]
# Keys under which published checkpoints wrap the state dict, in order of preference.
CHECKPOINT_KEYS = ("model", "model_ema", "state_dict")


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a PyTorch array becomes ours: ``ours = transpose(torch, axes)``, then the first axis reordered so that the
  reference's row j becomes our row ``rows[j]`` (P/SIG: the kernel axis that row drives)."""
  axes: Optional[tuple[int, ...]] = None
  rows: Optional[tuple[int, ...]] = None

  def to_ours(self, value: np.ndarray) -> np.ndarray:
    value = value if self.axes is None else np.transpose(value, self.axes)
    return value if self.rows is None else value[np.argsort(self.rows)]

  def torch_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape) if self.axes is None else tuple(shape[a] for a in np.argsort(self.axes))

  def to_torch(self, value: np.ndarray) -> np.ndarray:
    value = value if self.rows is None else value[list(self.rows)]
    return value if self.axes is None else np.transpose(value, np.argsort(self.axes))


_SAME = Layout()
_CONV = {"weight": ("kernel", Layout(axes=(2, 3, 1, 0))), "bias": ("bias", _SAME)}
_LINEAR = {"weight": ("kernel", Layout(axes=(1, 0))), "bias": ("bias", _SAME)}
_NORM = {"weight": ("scale", _SAME), "bias": ("bias", _SAME)}


def _dcls(version: str) -> dict[str, tuple[str, Layout]]:
  rows = Layout(rows=torch_io.axes_of_rows("Dcls2d", version, 2))  # square kernels: no offsets (torch_io)
  names = {"weight": ("weight", _SAME), "bias": ("bias", _SAME), "P": ("positions", rows)}
  if version in ("gauss", "max"):
    names["SIG"] = ("sigmas", rows)
  return names


@dataclasses.dataclass(frozen=True)
class Entry:
  """One PyTorch name: where it lives in our parameters and how its layout changes."""
  torch_name: str
  path: Path
  layout: Layout


def _module(torch_prefix: str, path: Path, names: Mapping[str, tuple[str, Layout]]) -> list[Entry]:
  return [Entry(f"{torch_prefix}.{torch_leaf}", path + (leaf,), layout)
          for torch_leaf, (leaf, layout) in names.items()]


def _block_entries(s: int, b: int, block: convnext.Block, first: convnext.Block) -> list[Entry]:
  prefix, path = f"stages.{s}.{b}", ("stages", s, b)
  entries = []
  if isinstance(block.dwconv, dcls_nnx.DclsConv):
    for entry in _module(f"{prefix}.dwconv", path + ("dwconv",), _dcls(block.dwconv.spec.version)):
      leaf = entry.path[-1]
      if leaf in ("positions", "sigmas") and getattr(block.dwconv, leaf) is getattr(first.dwconv, leaf):
        entry = dataclasses.replace(entry, path=("stages", s, 0, "dwconv", leaf))  # the stage's shared leaf
      entries.append(entry)
  else:
    entries += _module(f"{prefix}.dwconv", path + ("dwconv",), _CONV)
  entries += _module(f"{prefix}.norm", path + ("norm",), _NORM)
  entries += _module(f"{prefix}.pwconv1", path + ("pwconv1",), _LINEAR)
  entries += _module(f"{prefix}.pwconv2", path + ("pwconv2",), _LINEAR)
  if block.gamma is not None:
    entries.append(Entry(f"{prefix}.gamma", path + ("gamma",), _SAME))
  return entries


def reference_entries(model: convnext.ConvNeXt) -> list[Entry]:
  """The table of ``model``: one entry per name of the reference's ``state_dict()``, in its order."""
  entries = (_module("downsample_layers.0.0", ("downsample_layers", 0, "conv"), _CONV)
             + _module("downsample_layers.0.1", ("downsample_layers", 0, "norm"), _NORM))
  for i in range(1, len(model.downsample_layers)):
    entries += (_module(f"downsample_layers.{i}.0", ("downsample_layers", i, "norm"), _NORM)
                + _module(f"downsample_layers.{i}.1", ("downsample_layers", i, "conv"), _CONV))
  for s, stage in enumerate(model.stages):
    for b, block in enumerate(stage):
      entries += _block_entries(s, b, block, stage[0])
  return entries + _module("norm", ("norm",), _NORM) + _module("head", ("head",), _LINEAR)


def _get(tree: Mapping, path: Path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: Path, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def params_from_torch(model: convnext.ConvNeXt, state_dict: Mapping[str, Any]) -> dict:
  """A reference state dict (arrays or CPU tensors) -> ``model``'s parameters as a pure dict of numpy arrays.

  Raises ValueError for a missing or unexpected name, a wrong shape, or aliases of a shared tensor that differ.
  """
  entries = reference_entries(model)
  expected = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  names = {entry.torch_name for entry in entries}
  missing, unexpected = sorted(names - set(state_dict)), sorted(set(state_dict) - names)
  if missing or unexpected:
    raise ValueError(f"state_dict does not match this ConvNeXt: missing {missing}, unexpected {unexpected}")
  params, source = {}, {}
  for entry in entries:
    value = np.asarray(state_dict[entry.torch_name])
    shape = entry.layout.torch_shape(_get(expected, entry.path).shape)
    if value.shape != shape:
      raise ValueError(f"state_dict[{entry.torch_name!r}] has shape {value.shape}; this ConvNeXt expects {shape}")
    value = entry.layout.to_ours(value)
    if entry.path in source:
      if not np.array_equal(_get(params, entry.path), value):
        raise ValueError(f"state_dict[{entry.torch_name!r}] differs from state_dict[{source[entry.path]!r}]: the "
                         "model shares one tensor per stage, so they must be equal")
      continue
    source[entry.path] = entry.torch_name
    _set(params, entry.path, value)
  return params


def load_torch_state(model: convnext.ConvNeXt, state_dict: Mapping[str, Any]) -> None:
  """Copies a reference state dict into ``model`` (in place; also fills a model built by ``nnx.eval_shape``)."""
  params = params_from_torch(model, state_dict)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(lambda value, like: jnp.asarray(value, like.dtype), params,
                                               nnx.to_pure_dict(state)))
  nnx.update(model, state)


def to_torch(model: convnext.ConvNeXt, tree: Mapping) -> dict[str, np.ndarray]:
  """``model``'s parameters, or their gradients, as a pure dict -> the reference's state-dict names and layouts.

  A shared leaf (a stage's positions) is written under every alias; its gradient is already the sum over blocks.
  """
  return {entry.torch_name: entry.layout.to_torch(np.asarray(_get(tree, entry.path)))
          for entry in reference_entries(model)}


def load_torch_checkpoint(path: str, key: Optional[str] = None) -> dict[str, np.ndarray]:
  """The state dict of a published checkpoint, as numpy arrays, without executing pickled code.

  ``.safetensors`` files are read with the ``safetensors`` package; anything else with ``torch.load(path,
  weights_only=True, map_location='cpu')``. A checkpoint dict wrapping the state dict (``{'model': ...}``,
  ``{'model_ema': ...}``) is unwrapped: under ``key`` if given, else the first of ``CHECKPOINT_KEYS`` it holds.
  """
  if os.fspath(path).endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"reading {path} needs the optional package safetensors (pip install safetensors)") from e
    checkpoint = load_file(path)
  else:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"reading {path} needs the optional package torch (pip install torch)") from e
    checkpoint = torch.load(path, weights_only=True, map_location="cpu")
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f"{path} holds a {type(checkpoint).__name__}; expected a state dict or a dict wrapping one")
  if key is None:
    key = next((k for k in CHECKPOINT_KEYS if k in checkpoint), None)
  elif key not in checkpoint:
    raise ValueError(f"key={key!r}: {path} has no such entry; it has {sorted(checkpoint)}")
  state_dict = checkpoint if key is None else checkpoint[key]
  return {name: _to_numpy(value) for name, value in state_dict.items()}


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; numpy has no bfloat16
    value = value.detach().cpu()
    return (value.float() if value.is_floating_point() and value.element_size() < 4 else value).numpy()
  return np.asarray(value)


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
  if meta.get("dtype", "float32") != "float32":
    raise ValueError(f"meta.dtype={meta['dtype']!r}: this model runs in float32 only")
  if meta["config"].get("drop_path_rate", 0.0) != 0.0:
    raise ValueError("config.drop_path_rate must be 0: a fixture's forward is deterministic")
  # Built abstractly (no initialisation), then filled from state/: the model is its parameters alone.
  model = nnx.eval_shape(lambda: model_from_reference(meta["config"], conv_algorithm="direct"))
  load_torch_state(model, {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")})
  train = meta["mode"] == "train"
  model.train() if train else model.eval()
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

  def loss_fn(model):
    out = forward(model)
    return out["output/loss"], out

  if train:
    grads, out = nnx.jit(nnx.grad(loss_fn, has_aux=True))(model)
    out.update({f"grad/{k}": v for k, v in to_torch(model, nnx.to_pure_dict(grads)).items()})
  else:
    out = nnx.jit(forward)(model)
  return {k: np.asarray(v) for k, v in out.items()}
