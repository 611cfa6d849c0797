"""dcls_jax.optim: parameter groups, position clamping and the repulsive loss of the DCLS recipes."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dcls_jax import optim
from dcls_jax.layer import make_spec


class TinyDcls(nnx.Module):
  """Parameters named like a DCLS layer's: weight (O, Cg, Kc), positions / sigmas (n, O, Cg, Kc), bias (O,)."""

  def __init__(self, positions=None, dilated_kernel_size=(5, 3)):
    self.spec = make_spec(2, 2, 3, dilated_kernel_size)
    self.weight = nnx.Param(jnp.ones((2, 2, 3)))
    self.positions = positions if positions is not None else nnx.Param(jnp.zeros((2, 2, 2, 3)))
    self.sigmas = nnx.Param(jnp.full((2, 2, 2, 3), 0.23))
    self.bias = nnx.Param(jnp.zeros(2))


class TwoLayers(nnx.Module):
  """``b`` shares ``a``'s positions, as the blocks of a ConvNeXt-dcls stage do."""

  def __init__(self):
    self.a = TinyDcls()
    self.b = TinyDcls(positions=self.a.positions)


def linen_params():
  return {"params": {"DclsConv_0": {"weight": jnp.ones((2, 1, 3)), "positions": jnp.zeros((2, 2, 1, 3)),
                                    "sigmas": jnp.zeros((2, 2, 1, 3)), "bias": jnp.zeros(2)},
                     "LayerNorm_0": {"scale": jnp.ones(2), "bias": jnp.zeros(2)},
                     "Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}}


def flat(tree):
  return {optim.param_path(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ---- parameter groups ----------------------------------------------------------------------------

def test_labels_by_name_on_linen_params():
  labels = flat(optim.dcls_param_labels(linen_params()))
  assert labels[("params", "DclsConv_0", "positions")] == "positions"
  assert labels[("params", "DclsConv_0", "sigmas")] == "sigmas"
  assert {labels[k] for k in labels if k[-1] not in ("positions", "sigmas")} == {"default"}


def test_labels_on_nnx_state_of_variables_and_on_its_pure_arrays():
  """nnx.Optimizer labels Variables at tx.init and pure arrays at tx.update: both must agree."""
  state = nnx.state(TwoLayers(), nnx.Param)
  for tree in (state, nnx.as_pure(state)):
    labels = flat(optim.dcls_param_labels(tree, default_label="rest"))
    assert labels == {("a", "bias"): "rest", ("a", "positions"): "positions", ("a", "sigmas"): "sigmas",
                      ("a", "weight"): "rest", ("b", "bias"): "rest", ("b", "sigmas"): "sigmas",
                      ("b", "weight"): "rest"}  # the shared positions once


def test_weight_decay_mask_spares_positions_sigmas_biases_and_norm_scales():
  mask = flat(optim.weight_decay_mask(linen_params()))
  assert {k[1:] for k, decayed in mask.items() if decayed} == {("DclsConv_0", "weight"), ("Dense_0", "kernel")}


def test_scale_dcls_learning_rates_is_a_learning_rate_multiplier():
  """adamw + x5 on positions/sigmas == a separate adam at 5 x lr without decay for them (a torch param group)."""
  params = jax.tree.map(lambda x: x + 0.3, linen_params())
  grads = jax.tree.map(lambda x: jnp.linspace(-1.0, 2.0, x.size).reshape(x.shape), params)
  lr, wd = 1e-2, 0.1
  scaled = optax.chain(optax.adamw(lr, weight_decay=wd, mask=optim.weight_decay_mask),
                       optim.scale_dcls_learning_rates(position_multiplier=5.0, sigma_multiplier=2.0))
  grouped = optax.partition({"default": optax.adamw(lr, weight_decay=wd, mask=optim.weight_decay_mask),
                             "positions": optax.adam(5 * lr), "sigmas": optax.adam(2 * lr)},
                            optim.dcls_param_labels)
  results = []
  for tx in (scaled, grouped):
    p, state = params, tx.init(params)
    for _ in range(3):
      updates, state = tx.update(grads, state, p)
      p = optax.apply_updates(p, updates)
    results.append(p)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), *results)


# ---- position clamping ---------------------------------------------------------------------------

def test_project_positions_clips_each_row_to_its_limit_and_touches_nothing_else():
  positions = jnp.array([[[[-9.0, -2.5, 0.25, 2.0, 9.0]]],    # row 0: limit 2
                         [[[-9.0, -0.5, 0.25, 0.75, 9.0]]]])   # row 1: limit 1
  sigmas = jnp.full_like(positions, 50.0)
  params = {"conv": {"positions": positions, "sigmas": sigmas, "weight": jnp.full((1, 1, 5), 50.0)}}
  projected = optim.project_positions(params, (2, 1))
  np.testing.assert_array_equal(projected["conv"]["positions"],
                                [[[[-2.0, -2.0, 0.25, 2.0, 2.0]]], [[[-1.0, -0.5, 0.25, 0.75, 1.0]]]])
  assert projected["conv"]["sigmas"] is sigmas and projected["conv"]["weight"] is params["conv"]["weight"]
  by_path = optim.project_positions(params, {("conv", "positions"): (2, 1)})
  np.testing.assert_array_equal(by_path["conv"]["positions"], projected["conv"]["positions"])
  np.testing.assert_array_equal(optim.project_positions(params, 1)["conv"]["positions"][0, 0, 0],
                                [-1.0, -1.0, 0.25, 1.0, 1.0])  # one limit for every row
  with pytest.raises(KeyError, match="no position limits"):
    optim.project_positions(params, {("other", "positions"): (2, 1)})
  with pytest.raises(ValueError, match="2 rows"):
    optim.project_positions(params, (2, 1, 1))


def test_dcls_position_limits_of_an_nnx_model_lists_shared_positions_once():
  model = TwoLayers()
  assert optim.dcls_position_limits(model) == {("a", "positions"): (2, 1)}
  model.b.spec = make_spec(2, 2, 3, (7, 7))
  with pytest.raises(ValueError, match="different limits"):
    optim.dcls_position_limits(model)


def test_clamp_positions_update_lands_params_inside_the_box():
  """apply_updates(p, clamped u) == project_positions(p + u) within 2 ulps of the limit (one rounding of
  (clip(p + u) - p) + p); other updates pass through unchanged."""
  keys = jax.random.split(jax.random.key(0), 3)
  limits = (8, 3)
  params = {"positions": jnp.clip(3 * jax.random.normal(keys[0], (2, 4, 1, 34)), -3, 3),
            "weight": jax.random.normal(keys[1], (4, 1, 34))}
  raw = jax.tree.map(lambda x: 4 * jax.random.normal(keys[2], x.shape), params)
  tx = optax.chain(optax.identity(), optim.clamp_positions_update(limits))
  updates, _ = tx.update(raw, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  expected = optim.project_positions(optax.apply_updates(params, raw), limits)
  assert np.any(np.abs(expected["positions"]) == 8) and np.any(np.abs(expected["positions"]) < 3)
  np.testing.assert_allclose(new["positions"], expected["positions"], rtol=0, atol=2 * np.spacing(np.float32(8)))
  np.testing.assert_array_equal(updates["weight"], raw["weight"])
  with pytest.raises(ValueError, match="needs the current params"):
    tx.update(raw, tx.init(params))


# ---- repulsive loss ------------------------------------------------------------------------------

repulsive_loss = jax.jit(optim.repulsive_loss)  # jitted: one compilation instead of many eager ops
repulsive_grad = jax.jit(jax.grad(optim.repulsive_loss))

def test_repulsive_loss_hand_computed():
  # 1-D, Kc = 2 at distance 0.5: 2 * relu(1 - 0.5) / (2 * 1 * 1 * 1) = 0.5
  np.testing.assert_allclose(repulsive_loss(jnp.array([0.0, 0.5]).reshape(1, 1, 1, 2)), 0.5)
  # 2-D, Kc = 3: distances 1 (no overlap), 0.5 and sqrt(0.45): 2 * (0.5 + 1 - sqrt(0.45)) / (3 * 2)
  points = jnp.array([[0.0, 0.0], [0.6, 0.8], [0.0, 0.5]]).T.reshape(2, 1, 1, 3)
  np.testing.assert_allclose(repulsive_loss(points), (1.5 - np.sqrt(0.45)) / 3, rtol=1e-6)
  # a second channel pair without overlaps halves the mean; Kc = 1 has no pairs
  far = jnp.concatenate([jnp.array([0.0, 0.5]), jnp.array([0.0, 5.0])]).reshape(1, 2, 1, 2)
  np.testing.assert_allclose(repulsive_loss(far), 0.25)
  assert repulsive_loss(jnp.ones((2, 3, 1, 1))) == 0


def test_repulsive_loss_gradient_pushes_apart_and_is_finite_at_coincident_positions():
  grad = repulsive_grad(jnp.array([0.0, 0.5]).reshape(1, 1, 1, 2))
  np.testing.assert_allclose(grad.ravel(), [1.0, -1.0])  # L = 1 - (p1 - p0)
  coincident = repulsive_grad(jnp.zeros((2, 3, 1, 4)))
  np.testing.assert_array_equal(coincident, 0.0)  # torch's norm gives 0 at 0; a plain jnp.linalg.norm NaN


def test_total_repulsive_loss_is_the_mean_over_distinct_positions_leaves():
  model = TwoLayers()
  model.a.positions[...] = jnp.zeros((2, 2, 2, 3))  # shared with b: counted once
  params = nnx.state(model, nnx.Param)
  assert optim.total_repulsive_loss(params) == 1.0  # all pairs coincide: relu(1 - 0) everywhere
  extra = {"x": params, "y": {"positions": jnp.arange(6.0).reshape(2, 1, 1, 3) * 10}}
  assert optim.total_repulsive_loss(extra) == 0.5
  with pytest.raises(ValueError, match="no leaf named 'positions'"):
    optim.total_repulsive_loss({"weight": jnp.ones(3)})


# ---- the recipe with the real NNX layer ----------------------------------------------------------

def test_recipe_with_nnx_optimizer_on_dcls_conv():
  """Two AdamW steps: positions and sigmas move at 5 x lr without decay, positions end inside +-d//2."""
  dcls_nnx = pytest.importorskip("dcls_jax.nnx")
  model = dcls_nnx.DclsConv(4, 4, kernel_count=6, dilated_kernel_size=(3, 5), feature_group_count=4,
                            rngs=nnx.Rngs(0))
  lr, wd, eps = 0.1, 0.5, 1e-8
  tx = optax.chain(optax.adamw(lr, eps=eps, weight_decay=wd, mask=optim.weight_decay_mask),
                   optim.scale_dcls_learning_rates(position_multiplier=5.0, sigma_multiplier=5.0),
                   optim.clamp_positions_update(optim.dcls_position_limits(model)))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))

  def loss_fn(model):
    return jnp.mean(model(x) ** 2)

  @nnx.jit
  def train_step(model, optimizer):
    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads)
    return grads

  before = {k: getattr(model, k)[...] for k in ("weight", "positions", "sigmas")}
  grads = train_step(model, optimizer)
  # Adam's first step; tolerance 1e-5: optax's float32 bias correction 1 - 0.999 is off by 1.3e-5 relative
  adam_step = {k: lr * g[...] / (jnp.abs(g[...]) + eps)
               for k, g in (("weight", grads.weight), ("positions", grads.positions), ("sigmas", grads.sigmas))}
  np.testing.assert_allclose(model.weight[...], before["weight"] - adam_step["weight"] - lr * wd * before["weight"],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(model.sigmas[...], before["sigmas"] - 5 * adam_step["sigmas"], rtol=1e-5, atol=1e-5)
  limits = jnp.array([1.0, 2.0]).reshape(2, 1, 1, 1)
  np.testing.assert_allclose(model.positions[...],
                             jnp.clip(before["positions"] - 5 * adam_step["positions"], -limits, limits),
                             rtol=1e-5, atol=1e-5)
  train_step(model, optimizer)
  positions = np.abs(model.positions[...])
  assert np.all(positions <= limits * (1 + 2 ** -22))  # within 2 ulps of the limit
  assert np.any(positions >= limits)  # the clamp acted
