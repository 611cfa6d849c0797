"""Specification of the functional DCLS core (``dcls_jax.kernels``): kernel values, gradients, conventions.

Framework-internal (no torch). The values are checked against an independent float64 numpy implementation of
the formulas of ``shared/spec/dcls.md`` §2.2-2.3, written here; the two constructions (``separable``,
``scatter``) are checked against each other in values and gradients.
"""
from __future__ import annotations

import functools
import itertools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcls_jax import kernels, layer
from dcls_jax.kernels import build_flat_kernel, build_kernel, build_partial_kernel

VERSIONS = ("v0", "v1", "max", "gauss")
NORMALISED_VERSIONS = ("v1", "max", "gauss")
METHODS = ("separable", "scatter")
# Sizes of the learnable axes: 1/2/3-D, odd and even, square and non-square.
SIZES = [(7,), (6,), (5, 9), (4, 6), (3, 5, 7), (4, 3, 2)]
SIZES_BY_DIM = [(7,), (5, 8), (3, 4, 5)]
# Default width parameters of the reference: effective sigma 0.5 (gauss), half-width 1 (max).
DEFAULT_SIGMA = {"gauss": 0.23, "max": 0.0}
F32_ATOL = 1e-6
# Gradients of the two constructions differ by float32 summation order only; relative to the largest gradient
# entry this stays below 1e-6 for v0/v1/max and ~2e-6 for gauss, whose terms are amplified by 1/sigma**2 and then
# cancel through the normalisation (both constructions are ~1e-5 off a float64 gradient there).
GRAD_RTOL_OF_SCALE = 5e-6


pytestmark = pytest.mark.usefixtures("highest_matmul_precision")


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------
def has_sigmas(version):
  return version in ("max", "gauss")


def random_params(seed, batch, kernel_count, sizes, version, overshoot=1.5):
  """float32 (weight, positions, sigmas); positions up to ``overshoot`` cells beyond +-d//2 on each axis."""
  rng = np.random.default_rng(seed)
  weight = rng.normal(size=batch + (kernel_count,)).astype(np.float32)
  limits = np.array([d // 2 + overshoot for d in sizes]).reshape((-1,) + (1,) * (len(batch) + 1))
  positions = (rng.uniform(-1, 1, size=(len(sizes),) + batch + (kernel_count,)) * limits).astype(np.float32)
  sigmas = None
  if has_sigmas(version):
    sigmas = rng.uniform(-0.5, 1.0, size=positions.shape).astype(np.float32)  # negative: only |s| counts (Q9)
  return weight, positions, sigmas


def single_element(position, version):
  """weight (1,), positions (n, 1), default sigmas (n, 1) of one element of weight 1 at ``position``."""
  position = np.asarray(position, np.float32).reshape(-1, 1)
  sigmas = np.full_like(position, DEFAULT_SIGMA[version]) if has_sigmas(version) else None
  return np.ones((1,), np.float32), position, sigmas


@functools.partial(jax.jit, static_argnames=("sizes", "version", "method", "gauss_sigma_offset"))
def build(weight, positions, sigmas, sizes, version, method="separable", gauss_sigma_offset=0.27):
  """build_kernel, jitted (compiled once per shape; eager calls are checked in test_jit_matches_eager)."""
  return build_kernel(weight, positions, sigmas, dilated_kernel_size=sizes, version=version, method=method,
                      gauss_sigma_offset=gauss_sigma_offset)


def dense_reference(weight, positions, sigmas, sizes, version, gauss_sigma_offset=0.27):
  """Independent float64 DCLS kernel from the spec's formulas.

  v1/max/gauss: broadcast-compare of every element against the whole grid, product of the per-axis profiles
  (gauss: exp(-r**2 / 2) with r the sigma-scaled Euclidean distance), divided by the element's joint mass + 1e-7.
  v0: bilinear corners floor(q) + {0, 1} per axis, weight prod_j (1 - r_j or r_j), off-grid corners dropped.
  """
  sizes = tuple(sizes)
  n = len(sizes)
  weight = np.asarray(weight, np.float64)
  batch, kc = weight.shape[:-1], weight.shape[-1]
  w = weight.reshape(-1, kc)
  num = w.shape[0]
  centres = np.array([d // 2 for d in sizes], np.float64).reshape(n, 1, 1)
  q = np.asarray(positions, np.float64).reshape(n, num, kc) + centres
  if version == "v0":
    floor = np.floor(q)
    frac = q - floor
    kernel = np.zeros((num,) + sizes)
    element_batch = np.broadcast_to(np.arange(num)[:, None], (num, kc))
    for corner in itertools.product((0, 1), repeat=n):
      value = w.copy()
      cells = []
      for j, c in enumerate(corner):
        value = value * (frac[j] if c else 1 - frac[j])
        cells.append((floor[j] + c).astype(np.int64))
      inside = np.all([(cell >= 0) & (cell < d) for cell, d in zip(cells, sizes)], axis=0)
      np.add.at(kernel, (element_batch[inside],) + tuple(cell[inside] for cell in cells), value[inside])
    return kernel.reshape(batch + sizes)
  grid = np.indices(sizes, dtype=np.float64)  # (n, *sizes)
  on_grid = (slice(None), slice(None), slice(None)) + (None,) * n  # (n, num, kc) -> (n, num, kc, 1, ...)
  delta = grid[:, None, None] - q[on_grid]  # (n, num, kc, *sizes)
  if version == "v1":
    h = np.prod(np.maximum(1 - np.abs(delta), 0), axis=0)
  else:
    s = np.abs(np.asarray(sigmas, np.float64).reshape(n, num, kc))[on_grid]
    if version == "max":
      h = np.prod(np.maximum(s + 1.0 - np.abs(delta), 0), axis=0)
    else:
      r = np.sqrt(np.sum((delta / (s + gauss_sigma_offset)) ** 2, axis=0))
      h = np.exp(-0.5 * r ** 2)
  mass = h.sum(axis=tuple(range(2, 2 + n)), keepdims=True)
  kernel = np.einsum("bk,bk...->b...", w, h / (mass + 1e-7))
  return kernel.reshape(batch + sizes)


@functools.partial(jax.jit, static_argnames=("sizes", "version", "method"))
def kernel_and_grads(weight, positions, sigmas, sizes, version, method, cotangent):
  """The kernel and the gradients of sum(kernel * cotangent) wrt weight, positions (and sigmas for max/gauss)."""
  def loss(weight, positions, sigmas):
    kernel = build_kernel(weight, positions, sigmas, dilated_kernel_size=sizes, version=version, method=method)
    return jnp.sum(kernel * cotangent), kernel
  argnums = (0, 1, 2) if has_sigmas(version) else (0, 1)
  (_, kernel), grads = jax.value_and_grad(loss, argnums=argnums, has_aux=True)(
      weight, positions, sigmas if has_sigmas(version) else None)
  return kernel, grads


def grads_of(weight, positions, sigmas, sizes, version, method, cotangent):
  return kernel_and_grads(weight, positions, sigmas, sizes, version, method, cotangent)[1]


def peak(kernel):
  kernel = np.asarray(kernel)
  return tuple(int(i) for i in np.unravel_index(np.argmax(kernel), kernel.shape))


def edge_case_params(seed, sizes, version, batch=(2, 3)):
  """Random params whose elements 0-3 sit on integers, at +d//2, at -d//2 and fully off the grid (axis 0)."""
  weight, positions, sigmas = random_params(seed, batch, 6, sizes, version)
  half = np.array([d // 2 for d in sizes], np.float32).reshape((-1,) + (1,) * len(batch))
  positions[..., 0] = np.round(positions[..., 0])
  positions[..., 1] = half
  positions[..., 2] = -half
  positions[0, ..., 3] = sizes[0] // 2 + 3.5
  if sigmas is not None:
    sigmas[..., 0] = 0.0  # |s| at its kink too
  return weight, positions, sigmas


# ------------------------------------------------------------------------------------------------------------
# convention: row j moves axis j, position 0 is the centre d_j // 2
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("position", [(0, 0), (2, -1), (-3, 3), (1, 2)])
def test_single_element_peaks_at_centre_plus_position_on_7x7(version, method, position):
  """Row j moves kernel axis j (for every version, unlike the reference), measured from the centre 3."""
  kernel = build(*single_element(position, version), (7, 7), version, method)
  assert kernel.shape == (7, 7)
  assert peak(kernel) == (3 + position[0], 3 + position[1])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("sizes, position, expected", [
    ((7,), (2,), (5,)),
    ((7,), (-3,), (0,)),
    ((6,), (-3,), (0,)),
    ((7, 7, 7), (3, -2, 1), (6, 1, 4)),
    ((3, 5, 7), (-1, 2, -3), (0, 4, 0)),
    ((5, 9), (0, 0), (2, 4)),
    ((4, 6), (0, 0), (2, 3)),
])
def test_single_element_peaks_at_centre_plus_position_1d_3d_and_non_square(version, sizes, position, expected):
  kernel = build(*single_element(position, version), sizes, version)
  assert kernel.shape == sizes
  assert peak(kernel) == expected


@pytest.mark.parametrize("version", ["v0", "v1", "max"])
def test_single_element_at_integer_position_is_one_hot_for_hat_versions_and_v0(version):
  """v0/v1/max(s=0) put the whole (normalised) weight on one cell when the position is an integer."""
  kernel = np.asarray(build(*single_element((1, -2), version), (5, 9), version))
  expected = np.zeros((5, 9))
  expected[3, 2] = 1
  np.testing.assert_allclose(kernel, expected, atol=F32_ATOL)


# ------------------------------------------------------------------------------------------------------------
# values against the independent dense implementation
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sizes", SIZES, ids=str)
@pytest.mark.parametrize("version", VERSIONS)
def test_values_match_dense_reference(version, sizes, method):
  params = random_params(zlib.crc32(repr((version, sizes)).encode()), (2, 3), 5, sizes, version)
  kernel = build(*params, sizes, version, method)
  assert kernel.shape == (2, 3) + sizes and kernel.dtype == jnp.float32
  np.testing.assert_allclose(kernel, dense_reference(*params, sizes, version), rtol=1e-5, atol=F32_ATOL)


@pytest.mark.parametrize("version", VERSIONS)
def test_values_match_dense_reference_without_batch_axes(version):
  params = random_params(7, (), 4, (5, 6), version)
  for method in METHODS:
    kernel = build(*params, (5, 6), version, method)
    np.testing.assert_allclose(kernel, dense_reference(*params, (5, 6), version), rtol=1e-5, atol=F32_ATOL)


@pytest.mark.parametrize("version", NORMALISED_VERSIONS)
def test_normalised_versions_give_each_on_grid_element_unit_mass(version):
  """An element well inside the grid carries exactly its weight (mass / (mass + 1e-7) ~ 1)."""
  weight, positions, sigmas = random_params(3, (4,), 1, (9, 9), version, overshoot=-2.5)
  kernel = np.asarray(build(weight, positions, sigmas, (9, 9), version))
  np.testing.assert_allclose(kernel.sum(axis=(-2, -1)), weight[:, 0], rtol=1e-5)


def test_v0_is_not_normalised():
  """v0's mass is the sum of the bilinear corner weights that land on the grid, without renormalisation."""
  kernel = build(*single_element((-3.25,), "v0"), (7,), "v0")  # q = -0.25: corner -1 (0.25) dropped
  np.testing.assert_allclose(kernel, [0.75, 0, 0, 0, 0, 0, 0], atol=F32_ATOL)


# ------------------------------------------------------------------------------------------------------------
# separable == scatter, values and gradients
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sizes", SIZES_BY_DIM, ids=str)
@pytest.mark.parametrize("version", VERSIONS)
def test_separable_and_scatter_agree_in_values_and_gradients(version, sizes):
  """Incl. positions on integers, at +-d//2 and off the grid, where the derivative conventions matter."""
  params = edge_case_params(11, sizes, version)
  cotangent = np.random.default_rng(5).normal(size=(2, 3) + sizes).astype(np.float32)
  (kernel_sep, grads_sep), (kernel_sct, grads_sct) = (
      kernel_and_grads(*params, sizes, version, method, cotangent) for method in METHODS)
  np.testing.assert_allclose(kernel_sep, kernel_sct, rtol=1e-6, atol=F32_ATOL)
  assert len(grads_sep) == len(grads_sct) == (3 if has_sigmas(version) else 2)
  for name, g_sep, g_sct in zip(("weight", "positions", "sigmas"), grads_sep, grads_sct):
    assert np.all(np.isfinite(g_sep)), name
    scale = max(1.0, float(np.abs(g_sep).max()))
    np.testing.assert_allclose(g_sep, g_sct, rtol=0, atol=GRAD_RTOL_OF_SCALE * scale, err_msg=name)
  assert np.any(np.asarray(grads_sep[1]) != 0)  # the comparison is not vacuous


@pytest.mark.parametrize("sizes", SIZES_BY_DIM, ids=str)
@pytest.mark.parametrize("version", VERSIONS)
def test_one_element_per_channel_pair(version, sizes):
  """Kc = 1 (the delay synapses of SNN-delays) takes an outer product, not a contraction: same values and
  gradients as scatter, incl. elements on integers, at +-d//2 and off the grid."""
  # The 6 edge-case elements of each of 2 x 3 channel pairs become 6 x 3 pairs of one element each.
  params = tuple(None if p is None else p.reshape(p.shape[:-2] + (-1, 1))
                 for p in edge_case_params(13, sizes, version))
  np.testing.assert_allclose(build(*params, sizes, version, "separable"), dense_reference(*params, sizes, version),
                             rtol=1e-5, atol=F32_ATOL)
  cotangent = np.random.default_rng(6).normal(size=(2, 18) + sizes).astype(np.float32)
  (kernel_sep, grads_sep), (kernel_sct, grads_sct) = (
      kernel_and_grads(*params, sizes, version, method, cotangent) for method in METHODS)
  np.testing.assert_allclose(kernel_sep, kernel_sct, rtol=1e-6, atol=F32_ATOL)
  for name, g_sep, g_sct in zip(("weight", "positions", "sigmas"), grads_sep, grads_sct):
    scale = max(1.0, float(np.abs(g_sep).max()))
    np.testing.assert_allclose(g_sep, g_sct, rtol=0, atol=GRAD_RTOL_OF_SCALE * scale, err_msg=name)


def test_one_gaussian_per_pair_forward_mode_and_second_derivatives_match_scatter():
  """1-D gauss with Kc = 1 has a hand-written JVP: jvp, grad and the Hessian agree with autodiff of scatter."""
  weight, positions, sigmas = (p.reshape(p.shape[:-2] + (-1, 1)) for p in edge_case_params(17, (9,), "gauss"))
  tangents = tuple(np.random.default_rng(i).normal(size=p.shape).astype(np.float32)
                   for i, p in enumerate((weight, positions, sigmas)))
  cotangent = np.random.default_rng(8).normal(size=weight.shape[:-1] + (9,)).astype(np.float32)

  def loss(method, *params):
    return jnp.sum(jnp.sin(build_kernel(*params, dilated_kernel_size=(9,), version="gauss", method=method))
                   * cotangent)

  for derivative in (lambda f: jax.jvp(f, (weight, positions, sigmas), tangents)[1],
                     lambda f: jax.grad(f, argnums=(0, 1, 2))(weight, positions, sigmas),
                     lambda f: jax.hessian(f, argnums=1)(weight, positions, sigmas)):
    actual, expected = (derivative(functools.partial(loss, method)) for method in METHODS)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, e, rtol=0, atol=GRAD_RTOL_OF_SCALE * max(1.0, float(np.abs(e).max())))


@pytest.mark.parametrize("version", VERSIONS)
def test_gradients_match_finite_differences_of_dense_reference(version):
  """Directional derivatives (away from kinks) agree with central differences of the float64 formulas."""
  sizes = (5, 6)
  weight, positions, sigmas = random_params(23, (3,), 4, sizes, version, overshoot=0.5)
  cotangent = np.random.default_rng(2).normal(size=(3,) + sizes)
  grads = grads_of(weight, positions, sigmas, sizes, version, "separable", cotangent.astype(np.float32))
  args = [weight, positions] + ([sigmas] if has_sigmas(version) else [])
  rng = np.random.default_rng(4)
  eps = 1e-4
  for i, (arg, grad) in enumerate(zip(args, grads)):
    direction = rng.normal(size=arg.shape)
    def ref_loss(step):
      shifted = [a.astype(np.float64) for a in args] + [None] * (3 - len(args))
      shifted[i] = shifted[i] + step * direction
      return np.sum(dense_reference(*shifted, sizes, version) * cotangent)
    numeric = (ref_loss(eps) - ref_loss(-eps)) / (2 * eps)
    np.testing.assert_allclose(np.sum(np.asarray(grad, np.float64) * direction), numeric, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------------------------------------------------
# derivative conventions (spec Q4-Q6)
# ------------------------------------------------------------------------------------------------------------
def test_abs_with_zero_derivative_has_derivative_sign_x_and_zero_at_zero():
  f = kernels.abs_with_zero_derivative
  np.testing.assert_array_equal(f(jnp.array([-2.5, 0.0, 3.0])), [2.5, 0.0, 3.0])
  assert jax.grad(f)(0.0) == 0.0
  assert jax.grad(f)(-2.0) == -1.0 and jax.grad(f)(2.0) == 1.0


def test_jnp_abs_has_derivative_one_at_zero_which_is_why_the_library_does_not_use_it():
  assert jax.grad(jnp.abs)(0.0) == 1.0  # torch: 0; this would make `max` learn SIG from SIG = 0 (Q4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("integer", [0.0, 1.0, -1.0, 3.0, -3.0])
def test_v1_position_gradient_is_exactly_zero_on_integers(method, integer):
  """A v1 coordinate on an integer (e.g. at the clamp bound +-d//2) is frozen; the other coordinate is not."""
  weight = np.array([1.5, -0.5], np.float32)
  positions = np.array([[integer, integer], [0.3, -1.6]], np.float32)  # row 0 integer, row 1 not
  cotangent = np.random.default_rng(0).normal(size=(7, 7)).astype(np.float32)
  _, grad_positions = grads_of(weight, positions, None, (7, 7), "v1", method, cotangent)
  np.testing.assert_array_equal(grad_positions[0], 0.0)
  assert np.all(np.asarray(grad_positions[1]) != 0)


@pytest.mark.parametrize("method", METHODS)
def test_max_with_zero_sigmas_has_zero_sigma_gradient_and_equals_v1(method):
  """Q4: the reference's `max` never moves SIG away from its init 0 and then behaves exactly like v1."""
  weight, positions, _ = random_params(1, (2, 2), 3, (5, 6), "v1")
  sigmas = np.zeros_like(positions)
  cotangent = np.random.default_rng(1).normal(size=(2, 2, 5, 6)).astype(np.float32)
  _, grad_positions, grad_sigmas = grads_of(weight, positions, sigmas, (5, 6), "max", method, cotangent)
  np.testing.assert_array_equal(grad_sigmas, 0.0)
  assert np.any(np.asarray(grad_positions) != 0)
  np.testing.assert_allclose(build(weight, positions, sigmas, (5, 6), "max", method),
                             build(weight, positions, None, (5, 6), "v1", method), rtol=0, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_max_sigma_gradient_is_nonzero_away_from_zero(method):
  weight, positions, _ = random_params(1, (2,), 3, (7,), "v1")
  sigmas = np.full_like(positions, -0.4)
  grads = grads_of(weight, positions, sigmas, (7,), "max", method, np.arange(14.0).reshape(2, 7))
  assert np.all(np.isfinite(grads[2])) and np.any(np.asarray(grads[2]) != 0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("position", [(0.0, 0.0), (3.0, -3.0), (-3.0, 3.0), (1.0, 2.0)])
def test_gauss_gradients_are_finite_at_zero_distance(method, position):
  """Q6: every coordinate on a grid cell (e.g. a corner after clamping): finite (NaN-free) gradients."""
  params = single_element(position, "gauss")
  cotangent = np.random.default_rng(3).normal(size=(7, 7)).astype(np.float32)
  grads = grads_of(*params, (7, 7), "gauss", method, cotangent)
  for grad in grads:
    assert np.all(np.isfinite(grad))
  assert np.any(np.asarray(grads[2]) != 0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("integer", [-2.0, 0.0, 1.0])
def test_v0_has_the_right_hand_derivative_at_integer_positions(method, integer):
  """Q5: floor is constant, so at an integer the derivative is the right-hand one (non-zero), unlike v1."""
  cotangent = np.arange(7.0, dtype=np.float32) ** 2
  weight, positions, _ = single_element((integer,), "v0")
  _, grad_positions = grads_of(weight, positions, None, (7,), "v0", method, cotangent)
  q = int(integer) + 3
  right_hand = cotangent[q + 1] - cotangent[q]  # d/dq of (1 - r) * c[q] + r * c[q + 1]
  np.testing.assert_allclose(grad_positions[0, 0], right_hand, rtol=1e-6)
  assert right_hand != 0


def test_v0_and_v1_gradients_coincide_inside_the_grid_away_from_integers():
  """Spec Q5: at P = 1.3 v0 and v1 gradients coincide (the hat has unit mass inside the grid)."""
  cotangent = np.random.default_rng(8).normal(size=(7,)).astype(np.float32)
  weight, positions, _ = single_element((1.3,), "v1")
  grads = {version: grads_of(weight, positions, None, (7,), version, "separable", cotangent)
           for version in ("v0", "v1")}
  for g0, g1 in zip(grads["v0"], grads["v1"]):
    np.testing.assert_allclose(g0, g1, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# reference quirks (spec Q1, Q2)
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_q1_partial_overlap_is_renormalised_by_v1_but_loses_mass_in_v0(method):
  """1-D d = 7, position 3.4 (q = 6.4): v1 gives [0, ..., 0, 1], v0 gives [0, ..., 0, 0.6]."""
  v1 = build(*single_element((3.4,), "v1"), (7,), "v1", method)
  v0 = build(*single_element((3.4,), "v0"), (7,), "v0", method)
  np.testing.assert_allclose(v1, [0, 0, 0, 0, 0, 0, 1], atol=1e-6)
  np.testing.assert_allclose(v0, [0, 0, 0, 0, 0, 0, 0.6], atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_q2_gauss_epsilon_dominates_small_mass(method):
  """gauss d = 7, sigma param 0.23 (sigma 0.5): position 6 (q = 9) sums to ~0.132, position 10 to 0."""
  near = build(*single_element((6.0,), "gauss"), (7,), "gauss", method)
  far = build(*single_element((10.0,), "gauss"), (7,), "gauss", method)
  np.testing.assert_allclose(float(near.sum()), 0.132, atol=5e-4)
  assert np.asarray(near)[-1] == np.max(near)
  np.testing.assert_allclose(far, 0.0, atol=1e-20)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("version", VERSIONS)
def test_elements_fully_off_grid_contribute_nothing_with_zero_gradients(version, method):
  """An element far off the grid leaves the kernel unchanged and gets zero (not NaN) gradients."""
  sizes = (5, 6)
  weight = np.array([0.7, -1.3], np.float32)
  positions = np.array([[0.4, 30.0], [-1.2, 0.5]], np.float32)  # element 1 is 30 cells beyond the last row
  sigmas = np.full_like(positions, 0.23) if has_sigmas(version) else None
  cotangent = np.random.default_rng(9).normal(size=sizes).astype(np.float32)
  kernel, grads = kernel_and_grads(weight, positions, sigmas, sizes, version, method, cotangent)
  on_grid_only = build(weight[:1], positions[:, :1], None if sigmas is None else sigmas[:, :1], sizes, version,
                       method)
  np.testing.assert_allclose(kernel, on_grid_only, atol=1e-7)
  for grad in grads:
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(np.asarray(grad)[..., 1], 0.0)
  assert np.any(np.asarray(grads[0])[..., 0] != 0)


# ------------------------------------------------------------------------------------------------------------
# transformations and dtypes
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_jit_matches_eager(version):
  params = random_params(4, (2, 2), 3, (5, 6), version)
  fn = functools.partial(build_kernel, dilated_kernel_size=(5, 6), version=version)
  np.testing.assert_allclose(jax.jit(fn)(*params), fn(*params), rtol=1e-6, atol=1e-7)


def test_jit_of_grad_matches_eager_grad():
  """Equal up to summation order (fused differently under jit: on GPU a gauss entry of 0.1 moves by 2e-6 while the
  largest entry is 5), so within GRAD_RTOL_OF_SCALE of the largest entry."""
  params = random_params(4, (2,), 3, (5, 6), "gauss")
  loss = lambda *a: jnp.sum(build_kernel(*a, dilated_kernel_size=(5, 6), version="gauss") ** 2)
  for eager, jitted in zip(jax.grad(loss, (0, 1, 2))(*params), jax.jit(jax.grad(loss, (0, 1, 2)))(*params)):
    np.testing.assert_allclose(jitted, eager, rtol=0, atol=GRAD_RTOL_OF_SCALE * float(np.abs(eager).max()))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("version", VERSIONS)
def test_vmap_over_weights_with_shared_positions(version, method):
  """vmap over a stack of weights == one batched build with the positions broadcast over the stack."""
  _, positions, sigmas = random_params(6, (2, 3), 4, (5, 4), version)
  weights = np.random.default_rng(6).normal(size=(5, 2, 3, 4)).astype(np.float32)
  fn = functools.partial(build_kernel, dilated_kernel_size=(5, 4), version=version, method=method)
  batched = jax.jit(jax.vmap(fn, in_axes=(0, None, None)))(weights, positions, sigmas)
  assert batched.shape == (5, 2, 3, 5, 4)
  stack = lambda a: None if a is None else np.broadcast_to(a[:, None], (a.shape[0], 5) + a.shape[1:])
  expected = build(weights, stack(positions), stack(sigmas), (5, 4), version, method)
  np.testing.assert_allclose(batched, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("version", VERSIONS)
def test_bfloat16_inputs_give_bfloat16_kernel_close_to_float32(version, method):
  """bf16 in, bf16 out; computed in float32, so only the final rounding differs: |err| <= 2**-8 * |K|."""
  params = random_params(12, (2, 3), 4, (5, 6), version)
  as_bf16 = [None if p is None else jnp.asarray(p, jnp.bfloat16) for p in params]
  same_values_f32 = [None if p is None else p.astype(jnp.float32) for p in as_bf16]
  kernel = build(*as_bf16, (5, 6), version, method)
  assert kernel.dtype == jnp.bfloat16
  expected = np.asarray(build(*same_values_f32, (5, 6), version, method))
  np.testing.assert_allclose(np.asarray(kernel, np.float32), expected, rtol=2.0 ** -8, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# partial (Dcls3_1d / Dcls2_1d) and flat (Dcls2dK1d) kernels
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", NORMALISED_VERSIONS)
@pytest.mark.parametrize("dense", [(2, 3), (3,)], ids=str)
def test_partial_kernel_normalises_every_dense_tap_over_d_only(version, dense):
  """(O, Cg, *dense, Kc) -> (O, Cg, *dense, d): each dense tap is its own 1-D DCLS kernel along the last axis."""
  d = 7
  weight, positions, sigmas = random_params(13, (4, 2) + dense, 3, (d,), version)
  kernel = build_partial_kernel(weight, positions, sigmas, dilated_kernel_size=d, version=version)
  assert kernel.shape == (4, 2) + dense + (d,)
  np.testing.assert_allclose(kernel, dense_reference(weight, positions, sigmas, (d,), version), rtol=1e-5,
                             atol=F32_ATOL)
  ones = np.ones_like(weight)
  centred = positions * 0.5  # within the grid: every tap has unit mass per element
  mass = build_partial_kernel(ones, centred, sigmas, dilated_kernel_size=d, version=version)
  np.testing.assert_allclose(np.asarray(mass).sum(-1), 3.0, rtol=1e-5)


def test_gauss_sigma_offset_one_reproduces_dcls2_1d_centre_tap():
  """Spec §2.6: SIG 0.23 gives centre tap 0.324 with offset 1.0 (reference Dcls2_1d) vs 0.787 with 0.27."""
  params = single_element((0.0,), "gauss")
  wide = build(*params, (11,), "gauss", gauss_sigma_offset=1.0)
  narrow = build(*params, (11,), "gauss")
  np.testing.assert_allclose(float(wide[5]), 0.324, atol=5e-4)
  np.testing.assert_allclose(float(narrow[5]), 0.787, atol=5e-4)
  np.testing.assert_allclose(wide, dense_reference(*params, (11,), "gauss", gauss_sigma_offset=1.0), atol=1e-6)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("flat_axis, expand", [(0, -1), (1, -2)])
def test_flat_kernel_lies_along_h_for_axis_0_and_w_for_axis_1(version, flat_axis, expand):
  weight, positions, sigmas = random_params(14, (3, 2), 4, (9,), version)
  kernel = build_flat_kernel(weight, positions, sigmas, dilated_kernel_size=9, flat_axis=flat_axis,
                             version=version)
  assert kernel.shape == ((3, 2, 9, 1) if flat_axis == 0 else (3, 2, 1, 9))
  expected = np.expand_dims(dense_reference(weight, positions, sigmas, (9,), version), expand)
  np.testing.assert_allclose(kernel, expected, rtol=1e-5, atol=F32_ATOL)


def test_flat_kernel_rejects_other_axes():
  with pytest.raises(ValueError, match="flat_axis"):
    build_flat_kernel(*single_element((0.0,), "v1"), dilated_kernel_size=5, flat_axis=2)


# ------------------------------------------------------------------------------------------------------------
# NaN propagation
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("version, bad", [(version, "positions") for version in VERSIONS] +
                         [(version, "sigmas") for version in ("max", "gauss")])
def test_nan_parameters_give_nan_kernel_entries_not_a_finite_kernel(version, method, bad):
  weight, positions, sigmas = random_params(15, (3,), 4, (5, 6), version, overshoot=0)
  (positions if bad == "positions" else sigmas)[1, 1, 2] = np.nan  # element 2 of channel pair 1
  kernel = np.asarray(build(weight, positions, sigmas, (5, 6), version, method))
  assert np.isnan(kernel[1]).any()
  assert np.isfinite(kernel[[0, 2]]).all()  # other channel pairs untouched


# ------------------------------------------------------------------------------------------------------------
# input validation
# ------------------------------------------------------------------------------------------------------------
def _valid_args(version="gauss"):
  weight, positions, sigmas = random_params(0, (2,), 3, (5, 5), "gauss")
  return dict(weight=weight, positions=positions, sigmas=sigmas, dilated_kernel_size=(5, 5), version=version)


@pytest.mark.parametrize("change, match", [
    (dict(version="v2"), "version"),
    (dict(method="dense"), "method"),
    (dict(weight=np.zeros((2, 0), np.float32), positions=np.zeros((2, 2, 0), np.float32),
          sigmas=np.zeros((2, 2, 0), np.float32)), "kernel_count"),
    (dict(dilated_kernel_size=(5, 0)), "dilated_kernel_size"),
    (dict(dilated_kernel_size=()), "dilated_kernel_size"),
    (dict(dilated_kernel_size=(5, 2.5)), "dilated_kernel_size"),
    (dict(positions=np.zeros((2, 2, 4), np.float32)), "positions"),
    (dict(positions=np.zeros((1, 2, 3), np.float32)), "positions"),
    (dict(dilated_kernel_size=(5, 5, 5)), "positions"),
    (dict(sigmas=None), "sigmas"),
    (dict(sigmas=None, version="max"), "sigmas"),
    (dict(sigmas=np.zeros((2, 3), np.float32)), "sigmas"),
])
def test_bad_input_raises_value_error_naming_the_argument(change, match):
  args = {**_valid_args(), **change}
  weight, positions, sigmas = args.pop("weight"), args.pop("positions"), args.pop("sigmas")
  with pytest.raises(ValueError, match=match):
    build_kernel(weight, positions, sigmas, **args)


def test_v0_and_v1_do_not_need_sigmas():
  args = _valid_args()
  weight, positions = args.pop("weight"), args.pop("positions")
  for version in ("v0", "v1"):
    assert build_kernel(weight, positions, dilated_kernel_size=(5, 5), version=version).shape == (2, 5, 5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(in_features=6, out_features=4, feature_group_count=4), "feature_group_count"),
    (dict(kernel_count=0), "kernel_count"),
    (dict(padding_mode="mirror"), "padding_mode"),
    (dict(kind="partial", dilated_kernel_size=7, dense_kernel_size=(3, 3), version="v0"), "v0"),
    (dict(version="v2"), "version"),
    (dict(dilated_kernel_size=(5, 0)), "dilated_kernel_size"),
    (dict(conv_algorithm="dft"), "conv_algorithm='dft'.*1-D"),
])
def test_make_spec_rejects_bad_arguments_naming_them(kwargs, match):
  args = dict(in_features=4, out_features=4, kernel_count=3, dilated_kernel_size=(5, 5), feature_group_count=2)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    layer.make_spec(args.pop("in_features"), args.pop("out_features"), args.pop("kernel_count"),
                    args.pop("dilated_kernel_size"), **args)
