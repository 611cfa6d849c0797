"""Optimiser pieces of the DCLS training recipes, as optax transformations and pure functions.

The reference recipes (ConvNeXt-dcls, DCLS-Audio, SNN-delays) treat DCLS parameters specially:

* ``positions`` (and ``sigmas`` when learned) get a learning-rate multiplier (x5) and no weight decay;
* ``positions`` are projected back into the kernel, |positions[j]| <= d_j // 2, after every update
  (the reference's ``clamp_parameters``; never in the forward, never on sigmas or weights);
* ConvNeXt-dcls adds the square of a repulsive loss between the positions of each channel after epoch 20;
* SNN-delays sets the (frozen) Gaussian sigmas per epoch from an exponential decay (``sigma_schedule``,
  ``with_sigmas``).

Every helper finds DCLS parameters by their NAME (the last key of a leaf's path: ``positions``, ``sigmas``), never
by Variable type, so it works alike on a Linen params dict, on an ``nnx.State`` of Variables (what
``nnx.Optimizer`` passes to ``tx.init``) and on the pure-array state (what it passes to ``tx.update``).

Usage, the ConvNeXt-dcls recipe with an NNX model::

  import optax
  from flax import nnx
  from dcls_jax import optim as dcls_optim

  schedule = optax.warmup_cosine_decay_schedule(0.0, 4e-3, warmup_steps, total_steps, end_value=1e-6)
  tx = optax.chain(
      optax.adamw(schedule, weight_decay=0.05, mask=dcls_optim.weight_decay_mask),
      dcls_optim.scale_dcls_learning_rates(position_multiplier=5.0),  # positions: lr x5
      dcls_optim.clamp_positions_update(dcls_optim.dcls_position_limits(model)),  # last: projects
  )
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  def loss_fn(model, x, y, epoch):
    rep = dcls_optim.total_repulsive_loss(nnx.state(model, nnx.Param))
    return cross_entropy(model(x), y) + jnp.where(epoch > 20, rep ** 2, 0.0)

A different optimiser per group (SNN-delays: Adam at lr 0.1 for positions, sigmas frozen) is a plain partition::

  tx = optax.partition({"default": optax.adamw(1e-3), "positions": optax.adam(0.1),
                        "sigmas": optax.set_to_zero()}, dcls_optim.dcls_param_labels)
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence, Union

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dcls_jax.layer import DclsSpec

POSITIONS = "positions"
SIGMAS = "sigmas"

PathNames = tuple[Union[str, int], ...]
# One bound per positions row (or one for all rows), or such bounds per positions leaf keyed by its path names.
Limits = Union[float, Sequence[float], Mapping[PathNames, Union[float, Sequence[float]]]]


def _key_name(key: Any) -> Any:
  for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey / FlattenedIndexKey
    if hasattr(key, attr):
      return getattr(key, attr)
  return key


def param_path(path: Sequence[Any]) -> PathNames:
  """A leaf's jax key path as plain names, e.g. ``('stages', 0, 'positions')``.

  The trailing ``.value`` key that an ``nnx.Variable`` adds when flattened is dropped, so a Variable and its pure
  array have the same path; the names are those of ``nnx.iter_graph`` and of Linen params dicts.
  """
  names = tuple(_key_name(key) for key in path)
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and names[-1] == "value":
    names = names[:-1]
  return names


def _param_name(path: Sequence[Any]) -> Any:
  names = param_path(path)
  return names[-1] if names else None


# ---- parameter groups ----------------------------------------------------------------------------

def dcls_param_labels(params: Any,
                      *,
                      position_label: str = "positions",
                      sigma_label: str = "sigmas",
                      default_label: str = "default") -> Any:
  """Labels for ``optax.partition``: ``position_label`` for leaves named ``positions``, ``sigma_label`` for
  ``sigmas``, ``default_label`` for every other leaf. Same tree structure as ``params``."""
  labels = {POSITIONS: position_label, SIGMAS: sigma_label}
  return jax.tree_util.tree_map_with_path(lambda path, _: labels.get(_param_name(path), default_label), params)


def weight_decay_mask(params: Any,
                      *,
                      no_decay_names: Sequence[str] = (POSITIONS, SIGMAS, "bias", "scale"),
                      decay_vectors: bool = False) -> Any:
  """``mask`` for ``optax.adamw`` / ``optax.add_decayed_weights``: True = decayed.

  False for leaves named in ``no_decay_names`` (DCLS positions and sigmas, biases, norm scales) and, unless
  ``decay_vectors``, for every leaf with ndim <= 1 (biases, norm scales, layer-scale gammas), the timm /
  ConvNeXt-dcls rule. DCLS ``weight`` (O, Cg, Kc) is decayed, as in the reference. ``decay_vectors=True`` with
  ``no_decay_names=()`` decays every leaf (the SE-ResNet recipe's L2 on all parameters).
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: _param_name(path) not in no_decay_names and (decay_vectors or jnp.ndim(leaf) > 1),
      params)


def scale_dcls_learning_rates(position_multiplier: float = 5.0,
                              sigma_multiplier: float = 5.0) -> optax.GradientTransformation:
  """Multiplies the updates of ``positions`` and ``sigmas`` leaves; place it right after the optimiser.

  For optimisers whose step is ``learning_rate * direction(gradients, state)`` (sgd, adam, adamw, lion, ...: every
  optax alias ending in ``scale_by_learning_rate``) this is exactly a per-group learning-rate multiplier, like a
  PyTorch param group with ``lr = multiplier * base_lr`` (decoupled weight decay included: mask it off with
  ``weight_decay_mask``). The schedule is shared, as in the reference. Stateless.
  """
  multipliers = {POSITIONS: position_multiplier, SIGMAS: sigma_multiplier}

  def update_fn(updates, state, params=None):
    del params

    def scale(path, update):
      multiplier = multipliers.get(_param_name(path))
      return update if multiplier is None else update * multiplier

    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


# ---- position clamping ---------------------------------------------------------------------------

def dcls_position_limits(model: Any) -> dict[PathNames, tuple[int, ...]]:
  """``{path names of a positions leaf: spec.position_limits}`` for every DCLS layer of an NNX model.

  A DCLS layer is a module with a ``spec`` (``DclsSpec``) and a ``positions`` Variable. A positions Variable
  shared by several layers (ConvNeXt-dcls shares one per stage) appears once, at the path where ``nnx.state``
  lists it; layers sharing it must agree on the limits. The result is the ``limits`` of ``project_positions`` /
  ``clamp_positions_update`` for ``nnx.state(model, ...)`` and for the pure state ``nnx.Optimizer`` updates.
  """
  limits_of: dict[int, tuple[int, ...]] = {}  # id(positions Variable) -> limits
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, nnx.Module):
      continue
    spec, positions = getattr(node, "spec", None), getattr(node, POSITIONS, None)
    if isinstance(spec, DclsSpec) and isinstance(positions, nnx.Variable):
      limits = spec.position_limits
      if limits_of.setdefault(id(positions), limits) != limits:
        raise ValueError(f"positions shared by layers with different limits {limits_of[id(positions)]} and "
                         f"{limits} (layer at {path})")
  return {path: limits_of[id(node)]
          for path, node in nnx.iter_graph(model)
          if isinstance(node, nnx.Variable) and id(node) in limits_of}


def _row_bounds(limits: Limits, path: Sequence[Any], positions: jax.Array) -> jax.Array:
  """The bounds of one positions leaf (n, ...), shaped (n or 1, 1, ..., 1) to broadcast over its rows."""
  if isinstance(limits, Mapping):
    key = param_path(path)
    if key not in limits:
      raise KeyError(f"no position limits for {key}; limits are given for {sorted(limits, key=str)}")
    limits = limits[key]
  bounds = jnp.asarray(limits, positions.dtype).reshape(-1)
  if bounds.shape[0] not in (1, positions.shape[0]):
    raise ValueError(f"positions at {param_path(path)} have {positions.shape[0]} rows, got {bounds.shape[0]} "
                     f"limits {limits}")
  return bounds.reshape((-1,) + (1,) * (positions.ndim - 1))


def project_positions(params: Any, limits: Limits) -> Any:
  """``params`` with every ``positions`` leaf (n, O, Cg, ..., Kc) clipped to [-limits[j], limits[j]] per row j.

  ``limits``: one number per row (or one for all rows) used for every positions leaf, or a mapping from a leaf's
  ``param_path`` to its limits (``dcls_position_limits(model)``). Other leaves are returned unchanged. Exact:
  the reference's ``clamp_parameters``. For an NNX model: ``nnx.update(model, project_positions(nnx.state(model,
  nnx.Param), limits))``.
  """
  def project(path, leaf):
    if _param_name(path) != POSITIONS:
      return leaf
    bounds = _row_bounds(limits, path, leaf)
    return jnp.clip(leaf, -bounds, bounds)

  return jax.tree_util.tree_map_with_path(project, params)


def clamp_positions_update(limits: Limits) -> optax.GradientTransformationExtraArgs:
  """The projection of ``project_positions`` as the LAST transformation of an ``optax.chain``.

  Rewrites each ``positions`` update u to ``clip(p + u) - p`` so that ``optax.apply_updates`` lands in the box;
  other updates pass through. Needs ``params`` in ``update`` (``nnx.Optimizer`` passes them). The result equals
  ``project_positions(p + u)`` up to the rounding of ``(clip(p + u) - p) + p``: within 2 ulps of the limit; use
  ``project_positions`` after the update where the bound must hold exactly. Stateless.
  """
  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("clamp_positions_update needs the current params: call update(updates, state, params)")

    def clamp(path, update, param):
      if _param_name(path) != POSITIONS or update is None:
        return update
      bounds = _row_bounds(limits, path, param)
      target = jnp.asarray(param + update).astype(param.dtype)  # what optax.apply_updates computes
      return (jnp.clip(target, -bounds, bounds) - param).astype(update.dtype)

    return jax.tree_util.tree_map_with_path(clamp, updates, params, is_leaf=lambda x: x is None), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


# ---- repulsive loss (ConvNeXt-dcls) --------------------------------------------------------------

def repulsive_loss(positions: jax.Array) -> jax.Array:
  """ConvNeXt-dcls repulsive loss of one positions array (n, O, Cg, ..., Kc): a scalar.

  L = 2 * sum_{k<k'} relu(1 - ||p_k - p_k'||_2) / (Kc * (Kc - 1) * O * Cg * ...), with p_k the n-D position of
  element k of a channel pair (o, c, ...): the mean over channels and ordered pairs k != k' of the overlap
  relu(1 - distance). 0 when Kc = 1. Coincident positions have gradient 0 (as torch's norm), not NaN.
  """
  kernel_count = positions.shape[-1]
  if kernel_count < 2:
    return jnp.zeros((), positions.dtype)
  differences = positions[..., :, None] - positions[..., None, :]  # (n, O, Cg, ..., Kc, Kc)
  squared = jnp.sum(differences**2, axis=0)
  nonzero = squared > 0
  distances = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, squared, 1)), 0)
  overlaps = jnp.where(~jnp.eye(kernel_count, dtype=bool), jax.nn.relu(1 - distances), 0)
  pairs = kernel_count * (kernel_count - 1) * math.prod(positions.shape[1:-1])
  return jnp.sum(overlaps) / pairs


def total_repulsive_loss(params: Any) -> jax.Array:
  """Mean of ``repulsive_loss`` over the leaves of ``params`` named ``positions``: the recipe's L_rep.

  Each shared positions array must appear once, as in ``nnx.state(model)`` and Linen params (a converted torch
  state dict repeats a stage's shared P in every block: deduplicate it first). The recipe adds
  ``total_repulsive_loss(params) ** 2`` to the loss only when epoch > 20; that choice belongs to the training loop.
  """
  losses = [repulsive_loss(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
            if _param_name(path) == POSITIONS]
  if not losses:
    raise ValueError("params have no leaf named 'positions'")
  return sum(losses) / len(losses)


# ---- sigma decay ---------------------------------------------------------------------------------

SIGMA_FINAL = 0.23  # raw sigma at the end of the decay: width 0.23 + 0.27 = 0.5


def sigma_schedule(epoch, *, sigma_init: float, final_epoch: int, sigma_final: float = SIGMA_FINAL):
  """Raw sigma in force during ``epoch`` (0-based): sigma_init * alpha ** min(epoch, final_epoch).

  alpha = (sigma_final / sigma_init) ** (1 / final_epoch): the reference multiplies sigma by alpha after each of
  the first final_epoch epochs (= epochs // 4) while it is above sigma_final. Constant when sigma_init <=
  sigma_final or final_epoch = 0. ``epoch`` may be an int or an array (jit-able); the result is float64 under x64.
  The kernel width is this + 0.27 (``kernels.GAUSS_SIGMA_OFFSET``).
  """
  if not isinstance(final_epoch, int) or isinstance(final_epoch, bool) or final_epoch < 0:
    raise ValueError(f"final_epoch must be an int >= 0, got {final_epoch!r}")
  if not sigma_init > 0:
    raise ValueError(f"sigma_init must be > 0, got {sigma_init!r}")
  if final_epoch == 0 or sigma_init <= sigma_final:
    return jnp.full(jnp.shape(epoch), sigma_init, float)
  alpha = (sigma_final / sigma_init)**(1 / final_epoch)
  return sigma_init * alpha**jnp.minimum(jnp.asarray(epoch, float), final_epoch)


def with_sigmas(params: Any, sigma) -> Any:
  """``params`` (a pure dict or State) with every leaf named ``sigmas`` set to ``sigma`` (the epoch's raw value)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: jnp.full_like(leaf, sigma) if param_path(path)[-1] == SIGMAS
      else leaf, params)
