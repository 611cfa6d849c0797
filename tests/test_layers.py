"""The Flax layers (dcls_jax.nnx, dcls_jax.linen): agreement, params, init, sharing, transforms, dtypes, errors.

Numbers are compared under HIGHEST matmul precision (autouse fixture). Framework-internal: parity with the
PyTorch reference lives in test_reference_parity.py.
"""
import doctest
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from jax import lax

import dcls_jax.nnx
from dcls_jax import kernels
from dcls_jax import linen as dlinen
from dcls_jax import nnx as dnnx

PARAM_NAMES = ("weight", "positions", "sigmas", "bias")
# rbg keys: the default threefry PRNG compiles for ~0.5 s of CPU per new shape, most of this file's time otherwise.
key = functools.partial(jax.random.key, impl="rbg")

# name: (class name, positional args, keyword args, channels-last input shape)
CASES = {
    "full1d_gauss": ("DclsConv", (3, 4, 3, (7,)), {}, (2, 12, 3)),
    "full2d_v0_depthwise_stride2": ("DclsConv", (4, 4, 3, (5, 3)),
                                    dict(version="v0", feature_group_count=4, strides=2), (2, 9, 8, 4)),
    "full3d_max_reflect": ("DclsConv", (2, 3, 2, (3, 5, 3)), dict(version="max", padding_mode="reflect"),
                           (1, 5, 6, 5, 2)),
    "partial1_gauss": ("PartialDclsConv", (3, 2, 3, (3,), 5), {}, (2, 6, 9, 3)),
    "partial2_v1_valid": ("PartialDclsConv", (2, 4, 2, (3, 2), 5), dict(version="v1", padding="VALID"),
                          (1, 5, 4, 8, 2)),
    "flat_h_v1": ("FlatDclsConv", (3, 2, 3, 5), dict(flat_axis=0), (2, 8, 7, 3)),
    "flat_w_gauss_nobias": ("FlatDclsConv", (3, 2, 3, 5), dict(flat_axis=1, version="gauss", use_bias=False),
                            (2, 8, 7, 3)),
}


pytestmark = pytest.mark.usefixtures("highest_matmul_precision")


def make_nnx(case, seed=0, **overrides):
  cls_name, args, kwargs, _ = CASES[case]
  return getattr(dnnx, cls_name)(*args, **{**kwargs, **overrides}, rngs=nnx.Rngs(key(seed)))


def make_linen(case, **overrides):
  cls_name, args, kwargs, _ = CASES[case]
  return getattr(dlinen, cls_name)(*args, **{**kwargs, **overrides})


def nnx_params(model):
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def random_input(case, seed=1, dtype=jnp.float32):
  return jax.random.normal(key(seed), CASES[case][3], dtype)


def hand_built(spec, x, p):
  """lax.conv_general_dilated of the kernels module's kernel, padded by hand: independent of DclsSpec.apply."""
  build = dict(version=spec.version)
  if spec.kind == "full":
    kernel = kernels.build_kernel(p["weight"], p["positions"], p.get("sigmas"),
                                  dilated_kernel_size=spec.dilated_kernel_size, **build)
  elif spec.kind == "partial":
    kernel = kernels.build_partial_kernel(p["weight"], p["positions"], p.get("sigmas"),
                                          dilated_kernel_size=spec.dilated_kernel_size[0], **build)
  else:
    kernel = kernels.build_flat_kernel(p["weight"], p["positions"], p.get("sigmas"),
                                       dilated_kernel_size=spec.dilated_kernel_size[0], flat_axis=spec.flat_axis,
                                       **build)
  pads = lax.padtype_to_pads(x.shape[1:-1], kernel.shape[2:], spec.strides, spec.padding)
  x = jnp.pad(x, [(0, 0), *pads, (0, 0)], mode="reflect" if spec.padding_mode == "reflect" else "constant")
  axes = "DHW"[3 - (kernel.ndim - 2):]
  layout = (f"N{axes}C", f"OI{axes}", f"N{axes}C")
  y = lax.conv_general_dilated(x, kernel, spec.strides, "VALID", dimension_numbers=layout,
                               feature_group_count=spec.feature_group_count)
  return y + p["bias"] if "bias" in p else y


# ---- one forward, four ways ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_nnx_linen_spec_and_hand_built_conv_agree(case):
  model, x = make_nnx(case), random_input(case)
  p = nnx_params(model)
  y = model(x)
  np.testing.assert_array_equal(make_linen(case).apply({"params": p}, x), y)
  spec_y = model.spec.apply(x, p["weight"], p["positions"], p.get("sigmas"), p.get("bias"))
  np.testing.assert_array_equal(spec_y, y)
  np.testing.assert_allclose(hand_built(model.spec, x, p), y, rtol=1e-5, atol=1e-6)
  assert model.kernel().shape == (model.spec.out_features, x.shape[-1] // model.spec.feature_group_count,
                                  *model.spec.kernel_spatial_shape)


def test_nnx_docstring_example():
  assert doctest.testmod(dcls_jax.nnx).failed == 0


# ---- parameters ------------------------------------------------------------------------------------------------
SHAPES = [
    ("DclsConv", (4, 6, 3, (5, 7)), dict(version="gauss", feature_group_count=2),
     dict(weight=(6, 2, 3), positions=(2, 6, 2, 3), sigmas=(2, 6, 2, 3), bias=(6,))),
    ("DclsConv", (4, 6, 3, (5, 7, 3)), dict(version="max"),
     dict(weight=(6, 4, 3), positions=(3, 6, 4, 3), sigmas=(3, 6, 4, 3), bias=(6,))),
    ("DclsConv", (4, 6, 3, (5,)), dict(version="v1"), dict(weight=(6, 4, 3), positions=(1, 6, 4, 3), bias=(6,))),
    ("DclsConv", (4, 6, 3, (5, 7)), dict(version="v0", use_bias=False), dict(weight=(6, 4, 3), positions=(2, 6, 4, 3))),
    ("PartialDclsConv", (4, 6, 3, (3, 2), 7), {},
     dict(weight=(6, 4, 3, 2, 3), positions=(1, 6, 4, 3, 2, 3), sigmas=(1, 6, 4, 3, 2, 3), bias=(6,))),
    ("PartialDclsConv", (4, 6, 3, (3,), 7), dict(version="v1"),
     dict(weight=(6, 4, 3, 3), positions=(1, 6, 4, 3, 3), bias=(6,))),
    ("FlatDclsConv", (4, 6, 3, 7), {}, dict(weight=(6, 4, 3), positions=(1, 6, 4, 3), bias=(6,))),
]


@pytest.mark.parametrize("cls_name, args, kwargs, expected", SHAPES)
def test_param_names_and_shapes(cls_name, args, kwargs, expected):
  shape = lambda a: a.shape
  model = nnx.eval_shape(lambda: getattr(dnnx, cls_name)(*args, **kwargs, rngs=nnx.Rngs(key(0))))
  assert jax.tree.map(shape, nnx_params(model)) == expected
  for name in set(PARAM_NAMES) - set(expected):
    assert getattr(model, name) is None
  layer = getattr(dlinen, cls_name)(*args, **kwargs)
  x = jnp.zeros((1,) + (8,) * model.spec.num_spatial_dims + (args[0],))
  assert jax.tree.map(shape, jax.eval_shape(layer.init, key(0), x)["params"]) == expected


def init_params(framework, cls_name, args, **kwargs):
  if framework == "nnx":
    model = getattr(dnnx, cls_name)(*args, **kwargs, rngs=nnx.Rngs(key(0)))
    return model.spec, nnx_params(model)
  layer = getattr(dlinen, cls_name)(*args, **kwargs)
  x = jnp.zeros((1,) + (9,) * layer.spec.num_spatial_dims + (args[0],))
  return layer.spec, layer.init(key(0), x)["params"]


@pytest.mark.parametrize("framework", ["nnx", "linen"])
@pytest.mark.parametrize("version, sigma", [("gauss", 0.23), ("max", 0.0)])
def test_full_init_follows_reference(framework, version, sigma):
  spec, p = init_params(framework, "DclsConv", (16, 16, 8, (9, 3)), version=version)
  bound = 1 / math.sqrt(16 * 8)  # fan_in = Cg * Kc
  for name in ("weight", "bias"):
    assert np.abs(p[name]).max() <= bound and np.abs(p[name]).max() > 0.8 * bound
  row_wide, row_narrow = p["positions"]
  assert np.abs(row_wide).max() <= 4 and 0.45 < np.std(row_wide) < 0.55  # N(0, 0.5**2), clamp at 4 is rare
  assert np.abs(row_narrow).max() == 1  # clamped to +-(3 // 2)
  np.testing.assert_array_equal(p["sigmas"], np.full(spec.positions_shape, sigma, np.float32))


@pytest.mark.parametrize("framework", ["nnx", "linen"])
def test_partial_init_is_uniform_positions(framework):
  _, p = init_params(framework, "PartialDclsConv", (8, 8, 8, (3,), 9))
  limit = 9 // 2
  assert np.abs(p["positions"]).max() <= limit and np.abs(p["positions"]).max() > 0.9 * limit
  assert abs(np.std(p["positions"]) - limit / math.sqrt(3)) < 0.2  # U(-L, L)
  bound = 1 / math.sqrt(8 * 3 * 8)  # fan_in = Cg * prod(dense_kernel_size) * Kc
  assert np.abs(p["weight"]).max() <= bound


@pytest.mark.parametrize("framework", ["nnx", "linen"])
def test_custom_initialisers(framework):
  init = jax.nn.initializers
  _, p = init_params(framework, "DclsConv", (4, 4, 3, (5, 5)), weight_init=init.zeros, bias_init=init.ones,
                     positions_init=init.constant(0.5), sigmas_init=init.constant(2.0))
  for name, value in dict(weight=0, bias=1, positions=0.5, sigmas=2).items():
    np.testing.assert_array_equal(p[name], np.full(p[name].shape, value, np.float32))


# ---- shared positions ------------------------------------------------------------------------------------------
def separate_grads(spec, loss_fns, params, x):
  """d(sum of losses)/d(positions, sigmas), one layer at a time; loss_fns[i](y) is layer i's loss."""
  grads = []
  for loss, p in zip(loss_fns, params):
    def f(pos, sig, p=p, loss=loss):
      return loss(spec.apply(x, p["weight"], pos, sig, p["bias"]))
    grads.append(jax.grad(f, argnums=(0, 1))(p["positions"], p["sigmas"]))
  return jax.tree.map(lambda *g: sum(g), *grads)


def pair_losses():
  target = jax.random.normal(key(7), (2, 10, 4))
  return (lambda y: jnp.sum(y ** 2)), (lambda y: jnp.sum(y * target))


def test_nnx_shared_positions_are_one_leaf_with_summed_grad():
  class Pair(nnx.Module):
    def __init__(self, rngs):
      self.a = dnnx.DclsConv(3, 4, 2, (5,), rngs=rngs)
      self.b = dnnx.DclsConv(3, 4, 2, (5,), positions=self.a.positions, sigmas=self.a.sigmas, rngs=rngs)

    def __call__(self, x):
      return self.a(x), self.b(x)

  model, x = Pair(nnx.Rngs(key(0))), jax.random.normal(key(1), (2, 10, 3))
  assert model.b.positions is model.a.positions
  names = [path[-1] for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
  assert sorted(names) == ["bias", "bias", "positions", "sigmas", "weight", "weight"]

  loss_a, loss_b = pair_losses()
  grads = nnx.to_pure_dict(nnx.grad(lambda m: loss_a(m(x)[0]) + loss_b(m(x)[1]))(model))
  expected = separate_grads(model.a.spec, (loss_a, loss_b), (nnx_params(model.a), nnx_params(model.b)), x)
  np.testing.assert_allclose(grads["a"]["positions"], expected[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grads["a"]["sigmas"], expected[1], rtol=1e-5, atol=1e-6)


def test_linen_shared_positions_via_call_arguments():
  class Pair(nn.Module):
    @nn.compact
    def __call__(self, x):
      a, b = dlinen.DclsConv(3, 4, 2, (5,), name="a"), dlinen.DclsConv(3, 4, 2, (5,), name="b")
      positions = self.param("positions", a.spec.initializer("positions"), a.spec.positions_shape)
      sigmas = self.param("sigmas", a.spec.initializer("sigmas"), a.spec.positions_shape)
      return a(x, positions, sigmas), b(x, positions, sigmas)

  x = jax.random.normal(key(1), (2, 10, 3))
  p = Pair().init(key(0), x)["params"]
  assert jax.tree.map(jnp.shape, p) == dict(positions=(1, 4, 3, 2), sigmas=(1, 4, 3, 2),
                                            a=dict(weight=(4, 3, 2), bias=(4,)), b=dict(weight=(4, 3, 2), bias=(4,)))

  loss_a, loss_b = pair_losses()
  grads = jax.grad(lambda p: loss_a(Pair().apply({"params": p}, x)[0]) + loss_b(Pair().apply({"params": p}, x)[1]))(p)
  spec = dlinen.DclsConv(3, 4, 2, (5,)).spec
  per_layer = [dict(p[k], positions=p["positions"], sigmas=p["sigmas"]) for k in "ab"]
  expected = separate_grads(spec, (loss_a, loss_b), per_layer, x)
  np.testing.assert_allclose(grads["positions"], expected[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grads["sigmas"], expected[1], rtol=1e-5, atol=1e-6)


# ---- layout, transforms, dtypes --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_channels_first_is_the_transposed_channels_last(case):
  model, x = make_nnx(case), random_input(case)
  model_cf = make_nnx(case, seed=1, channels_first=True)
  nnx.update(model_cf, nnx.state(model, nnx.Param))
  to_cf = lambda a: jnp.moveaxis(a, -1, 1)
  y_cf = model_cf(to_cf(x))
  np.testing.assert_allclose(y_cf, to_cf(model(x)), rtol=1e-5, atol=1e-6)
  linen_y = make_linen(case, channels_first=True).apply({"params": nnx_params(model)}, to_cf(x))
  np.testing.assert_array_equal(linen_y, y_cf)


@pytest.mark.parametrize("case", ["full1d_gauss", "full3d_max_reflect", "partial1_gauss", "flat_h_v1"])
def test_jit_and_grad_match_the_functional_layer(case):
  # sigmas 0.1: |s| has derivative 0 at s = 0 (the max init, as in the reference), which would hide that grad.
  model, x = make_nnx(case, sigmas_init=jax.nn.initializers.constant(0.1)), random_input(case)
  spec, p = model.spec, nnx_params(model)
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(model, x), model(x), rtol=1e-6, atol=1e-6)
  layer = make_linen(case)
  np.testing.assert_allclose(jax.jit(layer.apply)({"params": p}, x), model(x), rtol=1e-6, atol=1e-6)

  grads, grad_x = nnx.grad(lambda m, x: jnp.sum(jnp.sin(m(x))), argnums=(0, 1))(model, x)
  def functional(p, x):
    return jnp.sum(jnp.sin(spec.apply(x, p["weight"], p["positions"], p.get("sigmas"), p["bias"])))
  expected, expected_x = jax.jit(jax.grad(functional, argnums=(0, 1)))(p, x)
  grads = nnx.to_pure_dict(grads)
  assert set(grads) == set(p) and set(grads) >= {"weight", "positions", "bias"}
  for name in grads:
    assert np.abs(grads[name]).max() > 0
    np.testing.assert_allclose(grads[name], expected[name], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad_x, expected_x, rtol=1e-5, atol=1e-6)


def test_vmap_over_weights_with_shared_positions():
  model, x = make_nnx("full2d_v0_depthwise_stride2"), random_input("full2d_v0_depthwise_stride2")
  spec, p = model.spec, nnx_params(model)
  weights = jax.random.normal(key(3), (3,) + spec.weight_shape)
  apply = lambda w: spec.apply(x, w, p["positions"], None, p["bias"])
  stacked = jax.vmap(apply)(weights)
  for w, y in zip(weights, stacked):
    np.testing.assert_allclose(y, apply(w), rtol=1e-5, atol=1e-6)
  stacked_kernels = jax.vmap(lambda w: spec.kernel(w, p["positions"]))(weights)
  np.testing.assert_allclose(stacked_kernels[1], spec.kernel(weights[1], p["positions"]), rtol=1e-6, atol=1e-7)


BF16_TOL = 2e-2  # of the output's scale: bf16 (8-bit significand) rounds x, weight, kernel and output by <= 0.4%


@pytest.mark.parametrize("case", ["full1d_gauss", "full2d_v0_depthwise_stride2", "partial1_gauss"])
def test_bfloat16_compute_is_close_to_float32(case):
  model, x = make_nnx(case), random_input(case)
  y32 = model(x)
  scale = float(np.abs(y32).max())
  model16 = make_nnx(case, dtype=jnp.bfloat16)
  nnx.update(model16, nnx.state(model, nnx.Param))
  y16 = model16(x)
  assert y16.dtype == jnp.bfloat16 and model16.weight[...].dtype == jnp.float32
  np.testing.assert_allclose(y16.astype(jnp.float32), y32, atol=BF16_TOL * scale, rtol=BF16_TOL)
  linen16 = make_linen(case, dtype=jnp.bfloat16).apply({"params": nnx_params(model)}, x)
  np.testing.assert_array_equal(linen16, y16)

  stored16 = make_nnx(case, param_dtype=jnp.bfloat16)  # bf16 storage, dtype inferred from x and params
  assert stored16.positions[...].dtype == jnp.bfloat16
  grads = nnx.grad(lambda m: jnp.sum(m(x.astype(jnp.bfloat16)).astype(jnp.float32)))(stored16)
  assert all(jnp.isfinite(g).all() for g in jax.tree.leaves(grads))


# ---- errors ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("framework", ["nnx", "linen"])
def test_bad_inputs_name_x(framework):
  case = "full2d_v0_depthwise_stride2"
  x = random_input(case)
  if framework == "nnx":
    call = make_nnx(case)
  else:
    call = lambda x: make_linen(case).init(key(0), x)
  with pytest.raises(ValueError, match="^x must have rank 4"):
    call(x[0])
  with pytest.raises(ValueError, match="^x must have in_features=4 channels"):
    call(x[..., :3])


def test_bad_shared_params():
  rngs = nnx.Rngs(key(0))
  with pytest.raises(ValueError, match="^positions must have shape"):
    dnnx.DclsConv(3, 4, 2, (5,), positions=nnx.Param(jnp.zeros((2, 4, 3, 2))), rngs=rngs)
  with pytest.raises(ValueError, match="^sigmas must have shape"):
    dnnx.DclsConv(3, 4, 2, (5,), sigmas=nnx.Param(jnp.zeros((1, 4, 3, 3))), rngs=rngs)
  with pytest.raises(ValueError, match="^sigmas given"):
    dnnx.DclsConv(3, 4, 2, (5,), version="v1", sigmas=nnx.Param(jnp.zeros((1, 4, 3, 2))), rngs=rngs)
  with pytest.raises(TypeError, match="^positions must be an nnx.Param"):
    dnnx.DclsConv(3, 4, 2, (5,), positions=jnp.zeros((1, 4, 3, 2)), rngs=rngs)

  layer, x = dlinen.DclsConv(3, 4, 2, (5,)), jnp.zeros((1, 10, 3))
  with pytest.raises(ValueError, match="^positions must have shape"):
    layer.init(key(0), x, positions=jnp.zeros((2, 4, 3, 2)))
  with pytest.raises(ValueError, match="^sigmas given"):
    dlinen.DclsConv(3, 4, 2, (5,), version="v1").init(key(0), x, sigmas=jnp.zeros((1, 4, 3, 2)))


@pytest.mark.parametrize("framework", ["nnx", "linen"])
@pytest.mark.parametrize("cls_name, args, kwargs, match", [
    ("DclsConv", (4, 4, 3, (5,)), dict(version="v2"), "^version"),
    ("DclsConv", (4, 4, 3, (5,)), dict(padding_mode="same"), "^padding_mode"),
    ("DclsConv", (4, 4, 0, (5,)), {}, "^kernel_count"),
    ("DclsConv", (4, 6, 3, (5,)), dict(feature_group_count=4), "feature_group_count"),
    ("DclsConv", (4, 4, 3, (5, 5, 5, 5)), {}, "^dilated_kernel_size"),
    ("PartialDclsConv", (4, 4, 3, (3,), 5), dict(version="v0"), "'v0'"),
    ("FlatDclsConv", (4, 4, 3, 5), dict(flat_axis=2), "^flat_axis"),
])
def test_bad_arguments_raise_at_construction(framework, cls_name, args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    if framework == "nnx":
      getattr(dnnx, cls_name)(*args, **kwargs, rngs=nnx.Rngs(key(0)))
    else:
      getattr(dlinen, cls_name)(*args, **kwargs)
