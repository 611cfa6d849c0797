"""Optimisers and learning-rate schedules built from an experiment config (optax).

``build_optimizer(config, ...)`` reads ``config.optimizer`` and ``config.schedule`` and chains, in this order:

  1. ``clip_by_global_norm(grad_clip_norm)``                                   if grad_clip_norm > 0
  2. ``add_decayed_weights(l2_weight_decay)``: L2 added to the gradient,       if l2_weight_decay > 0
     as torch ``Adam`` / ``SGD`` weight_decay
  3. the optimiser ``name`` at the scheduled learning rate (a one-cycle schedule also cycles its beta1, sgd: its
     momentum); with ``config.optimizer.positions``, an ``optax.partition`` that gives the DCLS ``positions`` an
     optimiser and schedule of their own (SNN-delays)
  4. ``dcls_jax.optim.scale_dcls_learning_rates``: lr x dcls_position_lr_mult    if a multiplier != 1
     for positions, x dcls_sigma_lr_mult for sigmas (0 freezes them)
  5. ``dcls_jax.optim.clamp_positions_update(position_limits)``, the last      if clamp_positions

and wraps the chain in ``optax.MultiSteps`` (the mean gradient of ``grad_accum_steps`` steps) when that is > 1.
Both decays (decoupled ``weight_decay`` of adamw / lamb and coupled ``l2_weight_decay``) spare the DCLS positions
and sigmas (every recipe), the leaves named in ``no_decay_names`` and, unless ``decay_vectors``, every leaf with
ndim <= 1 (``dcls_jax.optim.weight_decay_mask``).

Steps: ``steps_per_epoch`` and ``total_steps`` count training steps (calls of ``tx.update``, one per global batch).
The optimiser's schedules count optimiser updates: with ``grad_accum_steps`` k they advance once every k steps, an
epoch lasts steps_per_epoch / k updates (k must divide it), as in the ConvNeXt recipe's ``update_freq``. The
schedules returned for logging take the training step.

Fields (default; ``name`` and ``learning_rate`` are required) ::

  config.optimizer  name: 'adamw' | 'adam' | 'sgd' | 'lamb'   learning_rate (the peak of the schedule)
                    weight_decay 0 (adamw, lamb)   b1 0.9, b2 0.999, eps 1e-8 (adam, adamw, lamb)
                    momentum 0, nesterov False (sgd)   l2_weight_decay 0   grad_clip_norm 0   grad_accum_steps 1
                    ema_decay 0 (read by the trainer: see ``update_ema``)   dcls_position_lr_mult 1
                    dcls_sigma_lr_mult 1   clamp_positions False   no_decay_names ('bias', 'scale')
                    decay_vectors False   positions None
  config.optimizer.positions   name, learning_rate, weight_decay, b1, b2, eps, momentum, nesterov as above;
                    schedule None (= config.schedule, applied to this learning_rate)
  config.schedule   name: 'constant' | 'warmup_cosine' | 'onecycle' | 'step'   per_epoch False
                    warmup_cosine: warmup_epochs 0, end_learning_rate 0
                    onecycle: pct_start 0.3, div_factor 25, final_div_factor 1e4, cycle_momentum True,
                              base_momentum 0.85, max_momentum 0.95
                    step: decay_epochs (required), decay_rate 0.1

The recipes of the specs (fields not shown keep their defaults):

  ConvNeXt-dcls   adamw 4e-3, weight_decay 0.05, dcls_position_lr_mult 5, clamp_positions, ema_decay 0.9999;
                  warmup_cosine, warmup_epochs 20, end_learning_rate 1e-6
  DCLS-Audio      the same with dcls_sigma_lr_mult 5, no clamp, no EMA; ConvFormer: lamb, grad_clip_norm 1
  SNN-delays      adam 5e-3, l2_weight_decay 1e-5, dcls_sigma_lr_mult 0 (sigmas follow their own decay),
                  clamp_positions, positions=(adam 0.1, schedule=(warmup_cosine, per_epoch));
                  onecycle, per_epoch (beta1 0.95 -> 0.85 -> 0.95)
  ConvNeXt-audio  adamw; onecycle per step
  ConvMixer       adamw 1e-2, eps 1e-3, weight_decay 0.01, grad_clip_norm 1; warmup_cosine, end_learning_rate 1e-6
  SE-ResNet       sgd 0.1, momentum 0.9, l2_weight_decay 1e-4, no_decay_names (), decay_vectors;
                  step, decay_epochs (85, 130, 180)
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dcls_jax import optim as dcls_optim

OPTIMIZERS = ("adamw", "adam", "sgd", "lamb")
SCHEDULES = ("constant", "warmup_cosine", "onecycle", "step")

# ---- config fields -------------------------------------------------------------------------------

_REQUIRED = object()
_Check = tuple[Callable[[Any], bool], str]  # (is_valid(value), what is expected)


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _one_of(options: tuple[str, ...]) -> _Check:
  return (lambda value: value in options, f"one of {options}")


_POSITIVE: _Check = (lambda v: _is_number(v) and v > 0, "a number > 0")
_NON_NEGATIVE: _Check = (lambda v: _is_number(v) and v >= 0, "a number >= 0")
_FRACTION: _Check = (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
_OPEN_FRACTION: _Check = (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)")
_COUNT: _Check = (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1,
                  "an integer >= 1")
_FLAG: _Check = (lambda v: isinstance(v, bool), "True or False")
_NAMES: _Check = (lambda v: isinstance(v, (tuple, list)) and all(isinstance(n, str) for n in v),
                  "a tuple of parameter names")
_EPOCHS: _Check = (lambda v: isinstance(v, (tuple, list)) and all(_is_number(e) and e > 0 for e in v)
                   and list(v) == sorted(v), "a tuple of increasing epochs > 0")
_SECTION: _Check = (lambda v: isinstance(v, (ml_collections.ConfigDict, Mapping)), "a ConfigDict")

_BASE_OPTIMIZER_FIELDS = {
    "name": (_REQUIRED, _one_of(OPTIMIZERS)),
    "learning_rate": (_REQUIRED, _POSITIVE),
    "weight_decay": (0.0, _NON_NEGATIVE),
    "b1": (0.9, _FRACTION),
    "b2": (0.999, _FRACTION),
    "eps": (1e-8, _POSITIVE),
    "momentum": (0.0, _FRACTION),
    "nesterov": (False, _FLAG),
}
_OPTIMIZER_FIELDS = {
    **_BASE_OPTIMIZER_FIELDS,
    "l2_weight_decay": (0.0, _NON_NEGATIVE),
    "grad_clip_norm": (0.0, _NON_NEGATIVE),
    "grad_accum_steps": (1, _COUNT),
    "ema_decay": (0.0, _FRACTION),
    "dcls_position_lr_mult": (1.0, _NON_NEGATIVE),
    "dcls_sigma_lr_mult": (1.0, _NON_NEGATIVE),
    "clamp_positions": (False, _FLAG),
    "no_decay_names": (("bias", "scale"), _NAMES),
    "decay_vectors": (False, _FLAG),
    "positions": (None, _SECTION),
}
_POSITIONS_FIELDS = {**_BASE_OPTIMIZER_FIELDS, "schedule": (None, _SECTION)}
_SCHEDULE_FIELDS = {
    "name": (_REQUIRED, _one_of(SCHEDULES)),
    "per_epoch": (False, _FLAG),
    "warmup_epochs": (0, _NON_NEGATIVE),
    "end_learning_rate": (0.0, _NON_NEGATIVE),
    "pct_start": (0.3, _OPEN_FRACTION),
    "div_factor": (25.0, _POSITIVE),
    "final_div_factor": (1e4, _POSITIVE),
    "cycle_momentum": (True, _FLAG),
    "base_momentum": (0.85, _FRACTION),
    "max_momentum": (0.95, _FRACTION),
    "decay_epochs": ((), _EPOCHS),
    "decay_rate": (0.1, _POSITIVE),
}


def _read_fields(section: Any, fields: Mapping[str, tuple[Any, _Check]], where: str) -> dict[str, Any]:
  """The values of ``fields`` in a config section (None or absent: the default), checked; ``where`` names it."""
  if not _SECTION[0](section):
    raise ValueError(f"{where} is required: {_SECTION[1]}, got {section!r}")
  values = {}
  for name, (default, (is_valid, expected)) in fields.items():
    value = section.get(name)
    if value is None:
      if default is _REQUIRED:
        raise ValueError(f"{where}.{name} is required: {expected}")
      value = default
    elif not is_valid(value):
      raise ValueError(f"{where}.{name}={value!r}: expected {expected}")
    values[name] = value
  return values


def _check_count(value: Any, name: str) -> None:
  if not _COUNT[0](value):
    raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


# ---- schedules -----------------------------------------------------------------------------------

class _Clock(NamedTuple):
  """The time unit of a schedule: the epoch when per_epoch, else the step."""
  steps_per_unit: int
  units_per_epoch: int
  total_units: int
  unit: str

  def units(self, epochs: float) -> int:
    return round(epochs * self.units_per_epoch)

  def per_step(self, schedule_of_unit: optax.Schedule) -> optax.Schedule:
    if self.steps_per_unit == 1:
      return schedule_of_unit
    return lambda step: schedule_of_unit(step // self.steps_per_unit)


def _clock(per_epoch: bool, steps_per_epoch: int, total_steps: int) -> _Clock:
  if per_epoch:
    return _Clock(steps_per_epoch, 1, math.ceil(total_steps / steps_per_epoch), "epoch")
  return _Clock(1, steps_per_epoch, total_steps, "step")


def _cosine_anneal(start: float, end: float, fraction: jax.Array) -> jax.Array:
  return end + (start - end) * (1 + jnp.cos(jnp.pi * fraction)) / 2


def _one_cycle(start: float, peak: float, end: float, pct_start: float, total_units: int) -> optax.Schedule:
  """torch ``OneCycleLR`` (anneal_strategy 'cos'): start -> peak on units [0, pct_start * total - 1], then
  peak -> end at unit total - 1, both cosine; constant after."""
  peak_at, last = pct_start * total_units - 1.0, total_units - 1.0

  def schedule(unit):
    unit = jnp.asarray(unit, float)  # float64 under x64 (parity), float32 otherwise
    rising = _cosine_anneal(start, peak, jnp.clip(unit / peak_at, 0, 1))
    falling = _cosine_anneal(peak, end, jnp.clip((unit - peak_at) / (last - peak_at), 0, 1))
    return jnp.where(unit <= peak_at, rising, falling)

  return schedule


def _warmup_cosine(fields: dict[str, Any], peak: float, clock: _Clock, where: str) -> optax.Schedule:
  """Linear 0 -> peak over warmup_epochs, then cosine peak -> end_learning_rate, reached at total_units (timm's
  ``cosine_scheduler``, torch ``CosineAnnealingLR`` with T_max = the run when warmup_epochs = 0)."""
  warmup = clock.units(fields["warmup_epochs"])
  if warmup >= clock.total_units:
    raise ValueError(f"{where}.warmup_epochs={fields['warmup_epochs']}: the warm-up ({warmup} {clock.unit}s) must "
                     f"be shorter than the run ({clock.total_units} {clock.unit}s)")
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, clock.total_units, fields["end_learning_rate"])


def _onecycle(fields: dict[str, Any], peak: float, clock: _Clock, where: str) -> optax.Schedule:
  """torch ``OneCycleLR(max_lr=peak)``: from peak / div_factor up to peak, down to that / final_div_factor."""
  if fields["pct_start"] * clock.total_units <= 1:
    raise ValueError(f"{where}.pct_start={fields['pct_start']}: the rising phase (pct_start x "
                     f"{clock.total_units} {clock.unit}s) must last more than one {clock.unit}")
  start = peak / fields["div_factor"]
  return _one_cycle(start, peak, start / fields["final_div_factor"], fields["pct_start"], clock.total_units)


def _step_decay(fields: dict[str, Any], peak: float, clock: _Clock, where: str) -> optax.Schedule:
  """torch ``MultiStepLR``: peak x decay_rate ** (number of decay_epochs already begun)."""
  if not fields["decay_epochs"]:
    raise ValueError(f"{where}.decay_epochs: the step schedule needs at least one epoch")
  boundaries = jnp.asarray([clock.units(epoch) for epoch in fields["decay_epochs"]])
  return lambda unit: peak * fields["decay_rate"] ** jnp.sum(unit >= boundaries)


_LEARNING_RATE_SCHEDULES = {
    "constant": lambda fields, peak, clock, where: optax.constant_schedule(peak),
    "warmup_cosine": _warmup_cosine,
    "onecycle": _onecycle,
    "step": _step_decay,
}


def _build_schedules(schedule_config: Any, base_learning_rate: float, steps_per_epoch: int, total_steps: int,
                     where: str) -> tuple[optax.Schedule, Optional[optax.Schedule]]:
  """(learning rate, cycled beta1 / momentum or None) of a schedule section, as functions of the step."""
  fields = _read_fields(schedule_config, _SCHEDULE_FIELDS, where)
  _check_count(steps_per_epoch, "steps_per_epoch")
  _check_count(total_steps, "total_steps")
  clock = _clock(fields["per_epoch"], steps_per_epoch, total_steps)
  learning_rate = _LEARNING_RATE_SCHEDULES[fields["name"]](fields, base_learning_rate, clock, where)
  momentum = None
  if fields["name"] == "onecycle" and fields["cycle_momentum"]:  # high momentum while the lr is low
    momentum = clock.per_step(_one_cycle(fields["max_momentum"], fields["base_momentum"], fields["max_momentum"],
                                         fields["pct_start"], clock.total_units))
  return clock.per_step(learning_rate), momentum


def build_schedule(schedule_config: Any, base_learning_rate: float, steps_per_epoch: int,
                   total_steps: int) -> optax.Schedule:
  """The learning rate at each step (0-based) of a ``total_steps`` run, from ``config.schedule``.

  ``base_learning_rate`` is the peak. per_epoch: the value depends only on the epoch, step // steps_per_epoch, and
  the schedule's length is the number of epochs (torch schedulers stepped once per epoch); otherwise it changes
  every step and epochs (warmup_epochs, decay_epochs) are converted to steps. Jit-able, no host callbacks.
  """
  return _build_schedules(schedule_config, base_learning_rate, steps_per_epoch, total_steps, "config.schedule")[0]


# ---- optimisers ----------------------------------------------------------------------------------

def _timm_lamb(learning_rate, b1, b2, eps, weight_decay, mask) -> optax.GradientTransformation:
  """timm's ``Lamb`` (the DCLS-Audio ConvFormer recipe): the Adam direction; on the decayed leaves (``mask``) plus
  weight_decay x w, scaled by the trust ratio ||w|| / ||update||; the other leaves take the plain Adam step.
  optax's ``lamb`` differs: it applies the trust ratio to every leaf. timm's built-in clip is ``grad_clip_norm``."""
  decay_and_trust = optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_trust_ratio())
  return optax.chain(optax.scale_by_adam(b1, b2, eps),
                     optax.masked(decay_and_trust, mask) if weight_decay > 0 else optax.identity(),
                     optax.scale_by_learning_rate(learning_rate))


def _optimizer(fields: dict[str, Any], learning_rate: optax.Schedule, momentum: Optional[optax.Schedule],
               decay_mask: Callable[[Any], Any], where: str) -> optax.GradientTransformation:
  """One optax optimiser; ``momentum``, when given, is the schedule of beta1 (sgd: of the momentum)."""
  name = fields["name"]
  if fields["weight_decay"] > 0 and name in ("adam", "sgd"):
    raise ValueError(f"{where}.weight_decay={fields['weight_decay']}: '{name}' has no decoupled weight decay; "
                     f"use name='adamw' or l2_weight_decay")
  if name == "sgd":
    if fields["nesterov"] and momentum is None and fields["momentum"] == 0:
      raise ValueError(f"{where}.nesterov=True needs {where}.momentum > 0")
    if momentum is None:
      momentum = fields["momentum"] or None
    return optax.inject_hyperparams(optax.sgd)(learning_rate, momentum=momentum, nesterov=fields["nesterov"])
  adam_fields = dict(b1=fields["b1"] if momentum is None else momentum, b2=fields["b2"], eps=fields["eps"])
  if name == "adam":
    return optax.inject_hyperparams(optax.adam)(learning_rate, **adam_fields)
  factory = optax.adamw if name == "adamw" else _timm_lamb
  return optax.inject_hyperparams(factory, static_args=("weight_decay", "mask"))(
      learning_rate, weight_decay=fields["weight_decay"], mask=decay_mask, **adam_fields)


def _scaled(schedule: optax.Schedule, factor: float) -> optax.Schedule:
  return lambda step: factor * schedule(step)


def _per_update(schedule: optax.Schedule, accum_steps: int) -> optax.Schedule:
  """A schedule of optimiser updates as a function of the training step."""
  return lambda step: schedule(step // accum_steps)


def build_optimizer(config: ml_collections.ConfigDict,
                    *,
                    steps_per_epoch: int,
                    total_steps: int,
                    position_limits: Optional[dcls_optim.Limits] = None
                    ) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
  """The optimiser of ``config.optimizer`` and ``config.schedule`` (see the module docstring for the chain).

  Args:
    config: the experiment config.
    steps_per_epoch: training steps (global batches) per epoch.
    total_steps: training steps of the whole run.
    position_limits: ``dcls_jax.optim.dcls_position_limits(model)``, required when clamp_positions.
  Returns:
    The transformation, for plain nested dicts of arrays (``nnx.State.to_pure_dict()``), jit-able with no host
    callbacks, so usable in ``jax.pmap`` / ``jax.shard_map`` per-device steps; it needs ``params`` in
    ``update`` when clamp_positions. And the schedules to log, functions of the training step: ``lr``, ``b1``
    (sgd: ``momentum``) when cycled, ``lr_positions`` / ``lr_sigmas`` when those differ from ``lr``.
  """
  opt = _read_fields(config.get("optimizer"), _OPTIMIZER_FIELDS, "config.optimizer")
  _check_count(steps_per_epoch, "steps_per_epoch")
  _check_count(total_steps, "total_steps")
  accum_steps = opt["grad_accum_steps"]
  if steps_per_epoch % accum_steps or total_steps < accum_steps:
    raise ValueError(f"config.optimizer.grad_accum_steps={accum_steps} must divide steps_per_epoch="
                     f"{steps_per_epoch} and not exceed total_steps={total_steps}")
  updates_per_epoch, total_updates = steps_per_epoch // accum_steps, total_steps // accum_steps
  decay_mask = functools.partial(dcls_optim.weight_decay_mask, decay_vectors=opt["decay_vectors"],
                                 no_decay_names=(dcls_optim.POSITIONS, dcls_optim.SIGMAS, *opt["no_decay_names"]))

  learning_rate, momentum = _build_schedules(config.get("schedule"), opt["learning_rate"], updates_per_epoch,
                                             total_updates, "config.schedule")
  optimizer = _optimizer(opt, learning_rate, momentum, decay_mask, "config.optimizer")
  schedules = {"lr": learning_rate}
  if momentum is not None:
    schedules["momentum" if opt["name"] == "sgd" else "b1"] = momentum
  positions_learning_rate = learning_rate
  if opt["positions"] is not None:
    where = "config.optimizer.positions"
    positions = _read_fields(opt["positions"], _POSITIONS_FIELDS, where)
    schedule_config, schedule_where = ((positions["schedule"], f"{where}.schedule") if positions["schedule"]
                                       else (config.get("schedule"), "config.schedule"))
    positions_learning_rate, positions_momentum = _build_schedules(
        schedule_config, positions["learning_rate"], updates_per_epoch, total_updates, schedule_where)
    optimizer = optax.partition(
        {"default": optimizer,
         "positions": _optimizer(positions, positions_learning_rate, positions_momentum, decay_mask, where)},
        functools.partial(dcls_optim.dcls_param_labels, sigma_label="default"))

  position_mult, sigma_mult = opt["dcls_position_lr_mult"], opt["dcls_sigma_lr_mult"]
  if opt["positions"] is not None or position_mult != 1:
    schedules["lr_positions"] = _scaled(positions_learning_rate, position_mult)
  if sigma_mult != 1:
    schedules["lr_sigmas"] = _scaled(learning_rate, sigma_mult)

  chain = []
  if opt["grad_clip_norm"] > 0:
    chain.append(optax.clip_by_global_norm(opt["grad_clip_norm"]))
  if opt["l2_weight_decay"] > 0:
    chain.append(optax.add_decayed_weights(opt["l2_weight_decay"], mask=decay_mask))
  chain.append(optimizer)
  if position_mult != 1 or sigma_mult != 1:
    chain.append(dcls_optim.scale_dcls_learning_rates(position_mult, sigma_mult))
  if opt["clamp_positions"]:
    if position_limits is None:
      raise ValueError("config.optimizer.clamp_positions=True needs position_limits "
                       "(dcls_jax.optim.dcls_position_limits(model))")
    chain.append(dcls_optim.clamp_positions_update(position_limits))
  tx = optax.chain(*chain)
  if accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum_steps).gradient_transformation()
    schedules = {name: _per_update(schedule, accum_steps) for name, schedule in schedules.items()}
  return tx, schedules


# ---- parameter EMA -------------------------------------------------------------------------------

def update_ema(ema_params: Any, params: Any, decay: float) -> Any:
  """decay x ema_params + (1 - decay) x params, leaf by leaf (timm ``ModelEmaV2``; ConvNeXt: decay 0.9999,
  evaluated instead of the params). Call after every update, starting from ema_params = the initial params.
  Pure and jit-able; ``decay`` may be traced."""
  return jax.tree.map(lambda ema, param: decay * ema + (1 - decay) * param, ema_params, params)
