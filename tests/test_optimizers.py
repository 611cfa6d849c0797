"""train.optimizers: optimisers, schedules, parameter groups, clamp, accumulation and EMA built from a config."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from train import optimizers

LIMITS = {("conv", "positions"): (2.0, 1.0)}  # |positions[0]| <= 2, |positions[1]| <= 1


def make_config(optimizer=None, schedule=None):
  return ml_collections.ConfigDict({"optimizer": {"name": "sgd", "learning_rate": 0.1, **(optimizer or {})},
                                    "schedule": {"name": "constant", **(schedule or {})}})


def make_params():
  """A DCLS layer (weight (O, Cg, Kc), positions / sigmas (2, O, Cg, Kc), bias) and a norm, as a pure dict."""
  return {"conv": {"weight": jnp.full((2, 1, 3), 2.0), "positions": jnp.full((2, 2, 1, 3), 0.5),
                   "sigmas": jnp.full((2, 2, 1, 3), 0.5), "bias": jnp.full((2,), 2.0)},
          "norm": {"scale": jnp.full((2,), 2.0), "bias": jnp.full((2,), 2.0)}}


def filled(value):
  return jax.tree.map(lambda x: jnp.full_like(x, value), make_params())


def ramp():
  """Gradients with distinct entries, from -1 to 2 in each leaf."""
  return jax.tree.map(lambda x: jnp.linspace(-1.0, 2.0, x.size).reshape(x.shape), make_params())


def run(tx, gradients):
  """The params after each update of ``tx`` from ``make_params()`` with the given gradients (one tree per step)."""
  params = make_params()
  state, trajectory = tx.init(params), []
  for grads in gradients:
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    trajectory.append(params)
  return trajectory


def build(optimizer=None, schedule=None, steps_per_epoch=1, total_steps=100, **kwargs):
  return optimizers.build_optimizer(make_config(optimizer, schedule), steps_per_epoch=steps_per_epoch,
                                    total_steps=total_steps, **kwargs)


def injected_hyperparams(state):
  """The hyperparameters of the one ``optax.inject_hyperparams`` state in an optimiser state."""
  is_injected = lambda node: isinstance(node, optax.InjectStatefulHyperparamsState)
  (injected,) = [node for node in jax.tree.leaves(state, is_leaf=is_injected) if is_injected(node)]
  return injected.hyperparams


def values(schedule, steps):
  return np.array([float(schedule(step)) for step in steps])


# ---- schedules -----------------------------------------------------------------------------------

def test_warmup_cosine_warms_up_linearly_then_follows_the_cosine_to_the_end_value():
  schedule = optimizers.build_schedule(
      ml_collections.ConfigDict({"name": "warmup_cosine", "warmup_epochs": 1, "end_learning_rate": 0.1}),
      base_learning_rate=1.0, steps_per_epoch=2, total_steps=10)
  cosine = lambda i: 0.1 + 0.45 * (1 + np.cos(np.pi * i / 8))  # 8 steps after the 2 of warm-up
  np.testing.assert_allclose(values(schedule, [0, 1, 2, 4, 6, 9, 10]),
                             [0.0, 0.5, 1.0, cosine(2), 0.55, cosine(7), 0.1], rtol=1e-6)


def test_per_epoch_schedule_changes_only_at_epoch_boundaries():
  """CosineAnnealingLR(T_max=4 epochs) stepped once per epoch, over 3 steps per epoch."""
  schedule = optimizers.build_schedule(ml_collections.ConfigDict({"name": "warmup_cosine", "per_epoch": True}),
                                       base_learning_rate=1.0, steps_per_epoch=3, total_steps=12)
  per_epoch = 0.5 * (1 + np.cos(np.pi * np.arange(4) / 4))
  np.testing.assert_allclose(values(schedule, range(12)), np.repeat(per_epoch, 3), rtol=1e-6)


@pytest.mark.parametrize("per_epoch", [False, True])
def test_step_decay_multiplies_by_decay_rate_from_each_decay_epoch_on(per_epoch):
  schedule = optimizers.build_schedule(
      ml_collections.ConfigDict({"name": "step", "decay_epochs": (2, 3), "decay_rate": 0.1, "per_epoch": per_epoch}),
      base_learning_rate=1.0, steps_per_epoch=5, total_steps=20)
  np.testing.assert_allclose(values(schedule, [0, 9, 10, 14, 15, 19]), [1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_onecycle_is_torch_onecyclelr():
  """10 steps, pct_start 0.3: up from 1/25 to 1 over steps [0, 2] (0.3 x 10 - 1), down to 1/25e4 at step 9."""
  schedule = optimizers.build_schedule(ml_collections.ConfigDict({"name": "onecycle"}), base_learning_rate=1.0,
                                       steps_per_epoch=1, total_steps=10)
  start, end = 1 / 25, 1 / 25 / 1e4
  np.testing.assert_allclose(values(schedule, [0, 1, 2, 9, 12]),
                             [start, (start + 1) / 2, 1.0, end, end], rtol=1e-5)
  np.testing.assert_allclose(float(schedule(5.5)), (1 + end) / 2, rtol=1e-5)  # the middle of the descent


def snn_delays_config():
  """SNN-delays SHD (snn_delays.md 2.5): weights Adam + L2 1e-5, one-cycle per epoch with beta1 cycling;
  positions Adam 0.1 with their own per-epoch cosine; sigmas frozen; positions clamped."""
  return ml_collections.ConfigDict({
      "optimizer": {"name": "adam", "learning_rate": 5e-3, "l2_weight_decay": 1e-5, "dcls_sigma_lr_mult": 0.0,
                    "clamp_positions": True,
                    "positions": {"name": "adam", "learning_rate": 0.1,
                                  "schedule": {"name": "warmup_cosine", "per_epoch": True}}},
      "schedule": {"name": "onecycle", "per_epoch": True}})


def test_snn_delays_schedules_match_the_reference_run():
  """The measured SHD table of snn_delays.md 2.5 (150 epochs); here 2 steps per epoch."""
  _, schedules = optimizers.build_optimizer(snn_delays_config(), steps_per_epoch=2, total_steps=300,
                                            position_limits=LIMITS)
  last_steps = [2 * epoch + 1 for epoch in (0, 37, 75, 149)]
  np.testing.assert_allclose(values(schedules["lr"], last_steps), [2e-4, 4.706e-3, 4.0e-3, 2e-8], rtol=2e-4)
  np.testing.assert_allclose(values(schedules["b1"], last_steps), [0.95, 0.8561, 0.87, 0.95], atol=1e-4)
  np.testing.assert_allclose(values(schedules["lr_positions"], last_steps), [0.1, 8.572e-2, 5e-2, 1.0966e-5],
                             rtol=2e-4)
  np.testing.assert_array_equal(values(schedules["lr_sigmas"], last_steps), 0)


# ---- optimisers ----------------------------------------------------------------------------------

def test_sgd_momentum_two_steps_by_hand():
  tx, _ = build({"name": "sgd", "learning_rate": 0.1, "momentum": 0.9})
  first, second = run(tx, [filled(1.0), filled(3.0)])
  np.testing.assert_allclose(first["conv"]["weight"], 2.0 - 0.1 * 1.0)
  np.testing.assert_allclose(second["conv"]["weight"], 2.0 - 0.1 * 1.0 - 0.1 * (0.9 * 1.0 + 3.0), rtol=1e-6)


def test_adamw_decays_weights_but_not_positions_sigmas_biases_or_norm_scales():
  """With zero gradients the Adam direction is 0: what moves is the decoupled decay, lr x wd x w."""
  tx, _ = build({"name": "adamw", "learning_rate": 0.1, "weight_decay": 0.5})
  (params,) = run(tx, [filled(0.0)])
  np.testing.assert_allclose(params["conv"]["weight"], 2.0 - 0.1 * 0.5 * 2.0)
  for name, leaf in [("positions", params["conv"]["positions"]), ("sigmas", params["conv"]["sigmas"])]:
    np.testing.assert_array_equal(leaf, 0.5, err_msg=name)
  for leaf in (params["conv"]["bias"], params["norm"]["scale"], params["norm"]["bias"]):
    np.testing.assert_array_equal(leaf, 2.0)


def test_l2_weight_decay_is_added_to_the_gradient_with_the_same_mask():
  tx, _ = build({"name": "sgd", "learning_rate": 0.1, "l2_weight_decay": 0.5})
  (params,) = run(tx, [filled(1.0)])
  np.testing.assert_allclose(params["conv"]["weight"], 2.0 - 0.1 * (1.0 + 0.5 * 2.0))
  np.testing.assert_allclose(params["norm"]["bias"], 2.0 - 0.1 * 1.0)


def test_decay_vectors_with_no_names_decays_every_parameter_but_dcls_positions_and_sigmas():
  """SE-ResNet's L2 on every parameter (biases and norm scales too); DCLS positions and sigmas are never decayed."""
  tx, _ = build({"name": "sgd", "learning_rate": 0.1, "l2_weight_decay": 0.5, "no_decay_names": (),
                 "decay_vectors": True})
  (params,) = run(tx, [filled(0.0)])
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    expected = 0.5 if path[-1].key in ("positions", "sigmas") else 2.0 * (1 - 0.1 * 0.5)
    np.testing.assert_allclose(leaf, expected, err_msg=jax.tree_util.keystr(path))


def test_lamb_is_timm_lamb_trust_ratio_only_on_decayed_parameters():
  lr, wd, eps = 0.1, 0.5, 1e-8
  tx, _ = build({"name": "lamb", "learning_rate": lr, "weight_decay": wd, "eps": eps})
  grads = ramp()
  (params,) = run(tx, [grads])
  adam = lambda g: np.asarray(g) / (np.abs(g) + eps)  # the first bias-corrected Adam step
  weight, weight_grad = np.asarray(make_params()["conv"]["weight"]), grads["conv"]["weight"]
  update = adam(weight_grad) + wd * weight
  trust_ratio = np.linalg.norm(weight) / np.linalg.norm(update)
  np.testing.assert_allclose(params["conv"]["weight"], weight - lr * trust_ratio * update, rtol=1e-6)
  np.testing.assert_allclose(params["norm"]["bias"], 2.0 - lr * adam(grads["norm"]["bias"]), rtol=1e-6)


def test_dcls_learning_rate_multipliers_scale_exactly_the_positions_and_sigmas_updates():
  grads = ramp()
  plain, _ = build({"name": "adamw", "learning_rate": 0.01, "weight_decay": 0.05})
  scaled, schedules = build({"name": "adamw", "learning_rate": 0.01, "weight_decay": 0.05,
                             "dcls_position_lr_mult": 5.0, "dcls_sigma_lr_mult": 2.0})
  params, state_plain, state_scaled = make_params(), plain.init(make_params()), scaled.init(make_params())
  updates_plain, _ = plain.update(grads, state_plain, params)
  updates_scaled, _ = scaled.update(grads, state_scaled, params)
  multipliers = {"positions": 5.0, "sigmas": 2.0}
  for path, update in jax.tree_util.tree_leaves_with_path(updates_scaled):
    expected = multipliers.get(path[-1].key, 1.0) * updates_plain[path[0].key][path[1].key]
    np.testing.assert_array_equal(update, expected, err_msg=jax.tree_util.keystr(path))
  assert float(schedules["lr_positions"](0)) == pytest.approx(0.05)
  assert float(schedules["lr_sigmas"](0)) == pytest.approx(0.02)


def test_clamp_keeps_positions_inside_their_limits_after_the_multiplier():
  tx, _ = build({"name": "sgd", "learning_rate": 1.0, "dcls_position_lr_mult": 5.0, "clamp_positions": True},
                position_limits=LIMITS)
  final = run(tx, [filled(-1.0), filled(3.0), filled(-0.2)])
  positions = [np.asarray(params["conv"]["positions"]) for params in final]
  np.testing.assert_allclose(positions[0], np.full((2, 2, 1, 3), [[[[2.0]]], [[[1.0]]]]))  # 0.5 + 5 clipped
  np.testing.assert_allclose(positions[1], np.full((2, 2, 1, 3), [[[[-2.0]]], [[[-1.0]]]]), atol=1e-6)
  np.testing.assert_allclose(positions[2], np.full((2, 2, 1, 3), [[[[-1.0]]], [[[0.0]]]]), atol=1e-6)
  np.testing.assert_allclose(final[0]["conv"]["weight"], 3.0)  # other leaves are not clamped


def test_grad_clip_norm_bounds_the_global_gradient_norm():
  tx, _ = build({"name": "sgd", "learning_rate": 1.0, "grad_clip_norm": 1.0})
  grads = filled(4.0)
  (params,) = run(tx, [grads])
  moves = jax.tree.map(lambda before, after: before - after, make_params(), params)
  assert float(optax.tree.norm(moves)) == pytest.approx(1.0, rel=1e-6)
  np.testing.assert_allclose(moves["conv"]["weight"], 4.0 / float(optax.tree.norm(grads)), rtol=1e-6)


def test_grad_accumulation_updates_every_k_steps_with_schedules_counted_in_updates():
  """k = 2, 4 steps (2 updates) per epoch, lr x 0.1 from epoch 1: the 3rd update (steps 4, 5) has lr 0.1."""
  tx, schedules = build({"name": "sgd", "learning_rate": 1.0, "grad_accum_steps": 2},
                        {"name": "step", "decay_epochs": (1,), "decay_rate": 0.1}, steps_per_epoch=4, total_steps=8)
  weights = [float(params["conv"]["weight"][0, 0, 0]) for params in run(tx, [filled(g) for g in (1, 3) * 3])]
  np.testing.assert_allclose(weights, [2.0, 0.0, 0.0, -2.0, -2.0, -2.2], rtol=1e-6)  # mean gradient 2
  np.testing.assert_allclose(values(schedules["lr"], range(8)), [1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1], rtol=1e-6)


def test_separate_positions_optimizer_with_frozen_sigmas():
  """SNN-delays' first update: positions take Adam at 0.1, sigmas stay, weights take Adam(g + L2) at 2e-4."""
  tx, _ = optimizers.build_optimizer(snn_delays_config(), steps_per_epoch=2, total_steps=300,
                                     position_limits=LIMITS)
  (params,) = run(tx, [filled(0.5)])
  adam = lambda g: g / (abs(g) + 1e-8)
  np.testing.assert_allclose(params["conv"]["positions"], 0.5 - 0.1 * adam(0.5), rtol=1e-6)
  np.testing.assert_array_equal(params["conv"]["sigmas"], 0.5)
  np.testing.assert_allclose(params["conv"]["weight"], 2.0 - 2e-4 * adam(0.5 + 1e-5 * 2.0), rtol=1e-6)


def test_onecycle_cycles_adam_beta1_in_the_optimizer():
  tx, schedules = build({"name": "adam", "learning_rate": 1.0}, {"name": "onecycle"}, total_steps=10)
  params, state = make_params(), tx.init(make_params())
  used = []
  for _ in range(6):
    _, state = tx.update(filled(1.0), state, params)
    used.append(float(injected_hyperparams(state)["b1"]))  # the beta1 of the update just made
  np.testing.assert_allclose(used, values(schedules["b1"], range(6)), rtol=1e-6)
  np.testing.assert_allclose(used[:3], [0.95, 0.90, 0.85], rtol=1e-6)  # high momentum while the lr is low


def test_full_chain_runs_in_shard_map_and_pmap_per_device_steps():
  """Clip, L2, a positions partition, multipliers, clamp and accumulation: traceable per device, same result."""
  config = snn_delays_config()
  config.optimizer.update({"grad_clip_norm": 1.0, "grad_accum_steps": 2, "dcls_position_lr_mult": 2.0})
  tx, _ = optimizers.build_optimizer(config, steps_per_epoch=2, total_steps=300, position_limits=LIMITS)
  grads = ramp()

  def step(params, state, grads):  # one device's step: the mean gradient over devices
    updates, state = tx.update(jax.lax.pmean(grads, "data"), state, params)
    return optax.apply_updates(params, updates), state

  with_device_axis = lambda tree: jax.tree.map(lambda x: x[None], tree)
  first = lambda tree: jax.tree.map(lambda x: x[0], tree)
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  sharded = jax.jit(jax.shard_map(lambda p, s, g: step(p, s, first(g)), mesh=mesh, in_specs=(P(), P(), P("data")),
                                  out_specs=P()))
  mapped = jax.pmap(step, axis_name="data")

  params, state = make_params(), tx.init(make_params())
  for _ in range(2):
    params, state = sharded(params, state, with_device_axis(grads))
  sharded_params = params
  params, state = with_device_axis((make_params(), tx.init(make_params())))
  for _ in range(2):
    params, state = mapped(params, state, with_device_axis(grads))
  expected = run(tx, [grads, grads])[-1]
  for result in (sharded_params, first(params)):
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6), result, expected)
  assert float(jnp.max(jnp.abs(expected["conv"]["positions"] - 0.5))) > 0  # the update did happen


# ---- parameter EMA -------------------------------------------------------------------------------

def test_update_ema_is_decay_times_ema_plus_the_rest_times_params_and_jits():
  ema, params = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([3.0, 2.0])}
  np.testing.assert_allclose(optimizers.update_ema(ema, params, 0.75)["w"], [1.5, -1.0])
  np.testing.assert_allclose(jax.jit(optimizers.update_ema)(ema, params, 0.5)["w"], [2.0, 0.0])


# ---- config errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer, schedule, kwargs, message", [
    ({"name": "adamax"}, {}, {}, r"config.optimizer.name='adamax': expected one of"),
    ({"learning_rate": None}, {}, {}, r"config.optimizer.learning_rate is required"),
    ({"learning_rate": 0.0}, {}, {}, r"config.optimizer.learning_rate=0.0: expected a number > 0"),
    ({"weight_decay": -0.1}, {}, {}, r"config.optimizer.weight_decay=-0.1: expected a number >= 0"),
    ({"name": "adam", "weight_decay": 0.05}, {}, {}, r"config.optimizer.weight_decay=0.05: 'adam' has no decoupled"),
    ({"nesterov": True}, {}, {}, r"config.optimizer.nesterov=True needs config.optimizer.momentum > 0"),
    ({"momentum": 1.0}, {}, {}, r"config.optimizer.momentum=1.0: expected a number in \[0, 1\)"),
    ({"grad_accum_steps": 0}, {}, {}, r"config.optimizer.grad_accum_steps=0: expected an integer >= 1"),
    ({"grad_accum_steps": 3}, {}, {"steps_per_epoch": 4}, r"grad_accum_steps=3 must divide steps_per_epoch=4"),
    ({"clamp_positions": True}, {}, {}, r"config.optimizer.clamp_positions=True needs position_limits"),
    ({"no_decay_names": "bias"}, {}, {}, r"config.optimizer.no_decay_names='bias': expected a tuple"),
    ({"positions": {"name": "adam"}}, {}, {}, r"config.optimizer.positions.learning_rate is required"),
    ({"positions": {"name": "adam", "learning_rate": 0.1, "schedule": {"name": "cosine"}}}, {}, {},
     r"config.optimizer.positions.schedule.name='cosine': expected one of"),
    ({}, {"name": "linear"}, {}, r"config.schedule.name='linear': expected one of"),
    ({}, {"name": "warmup_cosine", "warmup_epochs": 100}, {}, r"config.schedule.warmup_epochs=100: the warm-up"),
    ({}, {"name": "onecycle", "pct_start": 0.01}, {}, r"config.schedule.pct_start=0.01: the rising phase"),
    ({}, {"name": "step"}, {}, r"config.schedule.decay_epochs: the step schedule needs at least one epoch"),
    ({}, {"name": "step", "decay_epochs": (3, 2)}, {},
     r"config.schedule.decay_epochs=\(3, 2\): expected a tuple of increasing"),
    ({}, {"per_epoch": "yes"}, {}, r"config.schedule.per_epoch='yes': expected True or False"),
    ({}, {}, {"steps_per_epoch": 0}, r"steps_per_epoch must be an integer >= 1, got 0"),
])
def test_bad_config_raises_a_value_error_naming_the_field(optimizer, schedule, kwargs, message):
  with pytest.raises(ValueError, match=message):
    build(optimizer, schedule, **kwargs)


def test_missing_schedule_section_is_named():
  with pytest.raises(ValueError, match=r"config.schedule is required: a ConfigDict, got None"):
    optimizers.build_optimizer(ml_collections.ConfigDict({"optimizer": {"name": "sgd", "learning_rate": 0.1}}),
                               steps_per_epoch=1, total_steps=10)
