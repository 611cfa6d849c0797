"""PyTorch state dicts <-> the variables of an NNX model, through a table of entries.

A model's converter lists one ``Entry`` per name of the reference's ``state_dict()``: the path of our variable
(as in ``nnx.state(model).to_pure_dict()``, written for the layer that uses it) and a layout transform. Common
module kinds (torch leaf -> our leaf, layout):

  CONV     weight OIHW -> kernel HWIO, bias
  LINEAR   weight (out, in) -> kernel (in, out), bias
  NORM     weight -> scale, bias                      (LayerNorm)
  BATCH    NORM + running_mean -> mean, running_var -> var, num_batches_tracked   (models.layers.BatchNorm)
  dcls(v)  weight (O, Cg, Kc), bias as they are; P, SIG (n, O, Cg, Kc) -> positions, sigmas with the reference's
           row order for version v (``dcls_jax.torch_io.axes_of_rows``: Dcls2d v0 rows drive (H, W), others (W, H))

Shared tensors: the reference lists a shared tensor under every layer that holds it; our model holds ONE Variable
(``dcls_jax.sharing``). Entries name the path of each use; the table resolves it to the Variable's one leaf by
identity, so import checks that the aliases agree, and export (of values, or of gradients, whose shared leaf holds
the sum over the uses) writes the leaf under every alias, as the reference fixtures store them.

Checkpoints: ``load_torch_checkpoint`` reads a ``.pth`` with ``torch.load(weights_only=True)`` (no pickled code
runs) or a ``.safetensors`` file; torch and safetensors are optional and imported on use.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dcls_jax import sharing
from dcls_jax import torch_io

Path = tuple[Any, ...]
# Keys under which published checkpoints wrap the state dict, in order of preference.
CHECKPOINT_KEYS = ("model", "model_ema", "state_dict")
# What a table converts: parameters and BatchNorm buffers (not RNG streams).
VARIABLES = (nnx.Param, nnx.BatchStat)


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


SAME = Layout()
CONV = {"weight": ("kernel", Layout(axes=(2, 3, 1, 0))), "bias": ("bias", SAME)}
LINEAR = {"weight": ("kernel", Layout(axes=(1, 0))), "bias": ("bias", SAME)}
NORM = {"weight": ("scale", SAME), "bias": ("bias", SAME)}
BATCH = {**NORM, "running_mean": ("mean", SAME), "running_var": ("var", SAME),
         "num_batches_tracked": ("num_batches_tracked", SAME)}


def dcls(version: str, *, bias: bool = True) -> dict[str, tuple[str, Layout]]:
  """A ``Dcls2d`` layer (square kernel) of ``version``: weight, P (and SIG for gauss/max), bias if ``bias``."""
  rows = Layout(rows=torch_io.axes_of_rows("Dcls2d", version, 2))  # square kernels: no offsets (torch_io)
  names = {"weight": ("weight", SAME), "P": ("positions", rows)}
  if version in ("gauss", "max"):
    names["SIG"] = ("sigmas", rows)
  if bias:
    names["bias"] = ("bias", SAME)
  return names


@dataclasses.dataclass(frozen=True)
class Entry:
  """One PyTorch name: where it lives in our variables (the path of the layer using it) and its layout change."""
  torch_name: str
  path: Path
  layout: Layout = SAME


def module(torch_prefix: str, path: Path, names: Mapping[str, tuple[str, Layout]],
           only: Optional[Sequence[str]] = None) -> list[Entry]:
  """The entries of one module: ``{torch_prefix}.{torch leaf}`` -> ``path + (our leaf,)`` for each of ``names``
  (or of its subset ``only``, e.g. a conv without bias: ``only=('weight',)``)."""
  return [Entry(f"{torch_prefix}.{torch_leaf}", path + (leaf,), layout)
          for torch_leaf, (leaf, layout) in names.items() if only is None or torch_leaf in only]


def _get(tree: Mapping, path: Path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: Path, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _leaf_paths(model: nnx.Module) -> dict[Path, Path]:
  """Every path at which ``model`` holds a variable -> the path of its one leaf in ``nnx.state``."""
  return {path: group[0] for group in sharing.paths(model, VARIABLES) for path in group}


def _resolve(model: nnx.Module, entries: Sequence[Entry]) -> list[Entry]:
  leaves = _leaf_paths(model)
  unknown = [entry for entry in entries if entry.path not in leaves]
  if unknown:
    raise ValueError(f"conversion table names variables the model lacks: "
                     f"{[(e.torch_name, e.path) for e in unknown[:5]]}")
  return [dataclasses.replace(entry, path=leaves[entry.path]) for entry in entries]


def variables_from_torch(model: nnx.Module, entries: Sequence[Entry], state_dict: Mapping[str, Any], *,
                         ignore: Sequence[str] = ()) -> dict:
  """A reference state dict (arrays or CPU tensors) -> ``model``'s variables as a pure dict of numpy arrays.

  ``ignore``: glob patterns of state-dict names the model has no variable for (e.g. frozen DFT kernels).
  Raises ValueError for a missing or unexpected name, a wrong shape, or aliases of a shared tensor that differ.
  """
  entries = _resolve(model, entries)
  expected = nnx.to_pure_dict(nnx.state(model, nnx.Any(*VARIABLES)))
  names = {entry.torch_name for entry in entries}
  given = {name for name in state_dict if not any(fnmatch.fnmatchcase(name, p) for p in ignore)}
  missing, unexpected = sorted(names - given), sorted(given - names)
  if missing or unexpected:
    raise ValueError(f"state_dict does not match this {type(model).__name__}: missing {missing}, unexpected "
                     f"{unexpected}")
  variables, source = {}, {}
  for entry in entries:
    value = np.asarray(state_dict[entry.torch_name])
    shape = entry.layout.torch_shape(_get(expected, entry.path).shape)
    if value.shape != shape:
      raise ValueError(f"state_dict[{entry.torch_name!r}] has shape {value.shape}; this {type(model).__name__} "
                       f"expects {shape}")
    value = entry.layout.to_ours(value)
    if entry.path in source:
      if not np.array_equal(_get(variables, entry.path), value):
        raise ValueError(f"state_dict[{entry.torch_name!r}] differs from state_dict[{source[entry.path]!r}]: the "
                         "model shares one tensor between them, so they must be equal")
      continue
    source[entry.path] = entry.torch_name
    _set(variables, entry.path, value)
  return variables


def load_torch_state(model: nnx.Module, entries: Sequence[Entry], state_dict: Mapping[str, Any], *,
                     ignore: Sequence[str] = ()) -> None:
  """Copies a reference state dict into ``model`` (in place; also fills a model built by ``nnx.eval_shape``)."""
  variables = variables_from_torch(model, entries, state_dict, ignore=ignore)
  state = nnx.state(model, nnx.Any(*VARIABLES))
  nnx.replace_by_pure_dict(state, jax.tree.map(lambda value, like: jnp.asarray(value, like.dtype), variables,
                                               nnx.to_pure_dict(state)))
  nnx.update(model, state)


def to_torch(model: nnx.Module, entries: Sequence[Entry], tree: Mapping) -> dict[str, np.ndarray]:
  """Variables of ``model``, or their gradients, as a pure dict -> the reference's names and layouts.

  Entries whose leaf ``tree`` lacks are left out (a gradient tree has no BatchNorm buffers). A shared leaf is
  written under every alias; its gradient is already the sum over the uses.
  """
  out = {}
  for entry in _resolve(model, entries):
    try:
      value = _get(tree, entry.path)
    except (KeyError, IndexError, TypeError):
      continue
    out[entry.torch_name] = np.asarray(entry.layout.to_torch(np.asarray(value)), order="C")  # safetensors needs it
  return out


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


def fixture_model(meta: Mapping, arrays: Mapping[str, np.ndarray], build: Callable[[], nnx.Module],
                  load: Callable[[nnx.Module, Mapping[str, np.ndarray]], None]) -> nnx.Module:
  """The model of a float32 fixture with a deterministic forward (no drop path): ``build()`` traced abstractly (no
  initialisation), filled from ``state/`` by ``load(model, state_dict)`` (the model's converter), in the mode
  ``meta.mode`` ('train' or anything else: eval)."""
  if meta.get("dtype", "float32") != "float32":
    raise ValueError(f"meta.dtype={meta['dtype']!r}: this model runs in float32 only")
  if meta["config"].get("drop_path_rate", 0.0) != 0.0:
    raise ValueError("config.drop_path_rate must be 0: a fixture's forward is deterministic")
  model = nnx.eval_shape(build)
  load(model, fixture_state(arrays))
  model.train() if meta["mode"] == "train" else model.eval()
  return model


def run_forward(model: nnx.Module, entries: Sequence[Entry], forward: Callable[[nnx.Module], dict], *,
                train: bool) -> dict[str, np.ndarray]:
  """A fixture runner's pass: ``forward(model) -> {key: array}`` under jit; with ``train`` (``forward`` then returns
  ``output/loss``) also ``grad/<torch name>`` of every parameter (a shared one's total, under every alias) and
  ``output/state_after/<torch name>`` of every BatchNorm buffer after the pass."""
  if not train:
    return {k: np.asarray(v) for k, v in nnx.jit(forward)(model).items()}

  def loss_fn(model):
    out = forward(model)
    return out["output/loss"], out

  grads, out = nnx.jit(nnx.grad(loss_fn, has_aux=True))(model)
  out.update({f"grad/{k}": v for k, v in to_torch(model, entries, nnx.to_pure_dict(grads)).items()})
  buffers = to_torch(model, entries, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
  out.update({f"output/state_after/{k}": v for k, v in buffers.items()})
  return {k: np.asarray(v) for k, v in out.items()}


def fixture_state(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A fixture's ``state/<name>`` arrays as a state dict."""
  return {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
