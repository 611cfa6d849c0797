"""Specification of the PyTorch reference (``dcls==0.1.1``) <-> dcls-jax conversion (``dcls_jax.torch_io``).

The round trips and the §2.4/§2.5 peak vectors of ``shared/spec/dcls.md`` need no torch; the live comparisons
(marked ``reference``) build the reference layer and compare kernels and gradients.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcls_jax import torch_io

VERSIONS = ("v0", "v1", "max", "gauss")
SIGMA_DEFAULT = {"gauss": 0.23, "max": 0.0}


pytestmark = pytest.mark.usefixtures("highest_matmul_precision")


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------
def layer_kwargs(class_name, dilated_kernel_size, version, **extra):
  """Small reference-constructor kwargs: 4 -> 4 channels in 2 groups, 3 elements per channel pair."""
  kwargs = dict(in_channels=4, out_channels=4, kernel_count=3, dilated_kernel_size=dilated_kernel_size,
                groups=2, version=version)
  if class_name == "Dcls3_1d":
    kwargs["dense_kernel_size"] = (2, 3)
  elif class_name == "Dcls2_1d":
    kwargs["dense_kernel_size"] = 3
  kwargs.update(extra)
  return kwargs


# (class name, dilated_kernel_size, extra kwargs): square and non-square for every class.
LAYERS = [
    ("Dcls1d", 7, {}), ("Dcls1d", 6, {}),
    ("Dcls2d", (7, 7), {}), ("Dcls2d", (5, 9), {}), ("Dcls2d", (4, 6), {}), ("Dcls2d", (7, 1), {}),
    ("Dcls3d", (5, 5, 5), {}), ("Dcls3d", (3, 5, 7), {}), ("Dcls3d", (6, 3, 4), {}),
    ("Dcls3_1d", 7, {}), ("Dcls3_1d", 6, {}),
    ("Dcls2_1d", 7, {}), ("Dcls2_1d", 6, {}),
    ("Dcls2dK1d", 7, {"flat_dim": 0}), ("Dcls2dK1d", 6, {"flat_dim": 1}),
]


def versions_of(class_name):
  return VERSIONS[1:] if class_name in ("Dcls3_1d", "Dcls2_1d") else VERSIONS


LAYER_CASES = [pytest.param(name, dks, version, extra, id=f"{name}-{dks}-{version}")
               for name, dks, extra in LAYERS for version in versions_of(name)]


def half_sizes(spec):
  return [d // 2 for d in spec.dilated_kernel_size]


def max_offset(spec):
  """Largest |d_j // 2 - d_a // 2| the conversion may add to a position row."""
  return max(half_sizes(spec)) - min(half_sizes(spec))


def random_ours(spec, seed):
  """Our params for ``spec``: positions a bit beyond the grid, sigmas of both signs."""
  rng = np.random.default_rng(seed)
  limits = np.array([d // 2 + 1.5 for d in spec.dilated_kernel_size]).reshape((-1,) + (1,) * len(spec.weight_shape))
  params = {"weight": rng.normal(size=spec.weight_shape).astype(np.float32),
            "positions": (rng.uniform(-1, 1, spec.positions_shape) * limits).astype(np.float32),
            "bias": rng.normal(size=(spec.out_features,)).astype(np.float32)}
  if spec.has_sigmas:
    params["sigmas"] = rng.uniform(-0.5, 1.0, spec.positions_shape).astype(np.float32)
  return params


def random_reference_state(spec, seed):
  """A reference state_dict (numpy) with P rows a bit beyond their own +-d_j // 2."""
  ours = random_ours(spec, seed)
  return {"weight": ours["weight"], "P": ours["positions"], "bias": ours["bias"],
          **({"SIG": ours["sigmas"]} if spec.has_sigmas else {})}


def assert_positions_equal_up_to_rounding(actual, expected, spec):
  """Exact when no offset is added; otherwise within one float32 ulp of |position| + max offset.

  Each direction adds an integer offset d_j // 2 - d_a // 2 and rounds once (half an ulp of the intermediate, whose
  magnitude is at most |position| + offset), so a round trip may move a position by that much; the kernel depends
  on positions only through q = position + d // 2, so this is an ulp of q (spec §2.5 float note).
  """
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.dtype == expected.dtype and actual.shape == expected.shape
  offset = max_offset(spec)
  if offset == 0:
    np.testing.assert_array_equal(actual, expected)
  else:
    ulp = np.spacing((np.abs(expected) + offset).astype(np.float32))
    assert np.all(np.abs(actual - expected) <= ulp)


def single_element_kernel(class_name, dilated_kernel_size, version, P, **extra):
  """Our kernel (one channel, one element of weight 1) for reference parameters P (and the default SIG)."""
  kwargs = dict(in_channels=1, out_channels=1, kernel_count=1, dilated_kernel_size=dilated_kernel_size,
                version=version, bias=False, **extra)
  spec = torch_io.spec_from_reference(class_name, kwargs)
  state = {"weight": np.ones(spec.weight_shape, np.float32),
           "P": np.asarray(P, np.float32).reshape(spec.positions_shape)}
  if spec.has_sigmas:
    state["SIG"] = np.full(spec.positions_shape, SIGMA_DEFAULT[version], np.float32)
  params = torch_io.params_from_reference(class_name, kwargs, state)
  kernel = spec.kernel(params["weight"], params["positions"], params.get("sigmas"))
  return np.asarray(kernel)[0, 0]


def peak(kernel):
  return tuple(int(i) for i in np.unravel_index(np.argmax(kernel), kernel.shape))


# ------------------------------------------------------------------------------------------------------------
# round trips
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("class_name, dks, version, extra", LAYER_CASES)
def test_ours_to_reference_and_back_is_the_identity(class_name, dks, version, extra):
  kwargs = layer_kwargs(class_name, dks, version, **extra)
  spec = torch_io.spec_from_reference(class_name, kwargs)
  ours = random_ours(spec, 0)
  state = torch_io.params_to_reference(class_name, kwargs, ours)
  assert {k: v.shape for k, v in state.items()} == {
      "weight": spec.weight_shape, "P": spec.positions_shape, "bias": (4,),
      **({"SIG": spec.positions_shape} if spec.has_sigmas else {})}
  back = torch_io.params_from_reference(class_name, kwargs, state)
  assert set(back) == set(ours)
  for name in ("weight", "bias", "sigmas"):
    if name in ours:
      np.testing.assert_array_equal(back[name], ours[name], err_msg=name)
  assert_positions_equal_up_to_rounding(back["positions"], ours["positions"], spec)


@pytest.mark.parametrize("class_name, dks, version, extra", LAYER_CASES)
def test_reference_to_ours_and_back_is_the_identity(class_name, dks, version, extra):
  kwargs = layer_kwargs(class_name, dks, version, **extra)
  spec = torch_io.spec_from_reference(class_name, kwargs)
  state = random_reference_state(spec, 1)
  back = torch_io.params_to_reference(class_name, kwargs, torch_io.params_from_reference(class_name, kwargs, state))
  assert set(back) == set(state)
  for name in ("weight", "bias", "SIG"):
    if name in state:
      np.testing.assert_array_equal(back[name], state[name], err_msg=name)
  assert_positions_equal_up_to_rounding(back["P"], state["P"], spec)


def test_dcls2_1d_extra_buffers_are_ignored_and_its_gauss_sigma_offset_is_one():
  """The reference's Dcls2_1d stores DCK.IDX / DCK.lim in its state_dict and uses sigma = |SIG| + 1.0."""
  kwargs = layer_kwargs("Dcls2_1d", 7, "gauss")
  spec = torch_io.spec_from_reference("Dcls2_1d", kwargs)
  assert spec.gauss_sigma_offset == 1.0
  assert torch_io.spec_from_reference("Dcls3_1d", layer_kwargs("Dcls3_1d", 7, "gauss")).gauss_sigma_offset == 0.27
  state = {**random_reference_state(spec, 2), "DCK.IDX": np.arange(7), "DCK.lim": np.array([7])}
  assert set(torch_io.params_from_reference("Dcls2_1d", kwargs, state)) == {"weight", "positions", "sigmas", "bias"}


@pytest.mark.parametrize("class_name, version", [("Dcls1d", "gauss"), ("Dcls2d", "gauss"), ("Dcls3d", "gauss"),
                                                 ("Dcls3_1d", "gauss"), ("Dcls2_1d", "gauss"),
                                                 ("Dcls2dK1d", "v1")])
def test_default_version_is_the_reference_default(class_name, version):
  kwargs = layer_kwargs(class_name, 5, version)  # an int dilated_kernel_size is expanded to every axis
  del kwargs["version"]
  assert torch_io.spec_from_reference(class_name, kwargs).version == version


@pytest.mark.parametrize("class_name, version, axes", [
    ("Dcls1d", "v1", (0,)), ("Dcls2dK1d", "v0", (0,)), ("Dcls3_1d", "gauss", (0,)),
    ("Dcls2d", "v0", (0, 1)), ("Dcls2d", "v1", (1, 0)), ("Dcls2d", "max", (1, 0)), ("Dcls2d", "gauss", (1, 0)),
    ("Dcls3d", "v0", (0, 2, 1)), ("Dcls3d", "v1", (2, 1, 0)), ("Dcls3d", "gauss", (2, 1, 0)),
])
def test_reference_rows_drive_the_axes_of_spec_table_2_4(class_name, version, axes):
  assert torch_io.axes_of_rows(class_name, version, len(axes)) == axes


# ------------------------------------------------------------------------------------------------------------
# the verified peak vectors of spec §2.4 / §2.5, through our builder
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version, expected", [("v0", (5, 2)), ("v1", (2, 5)), ("gauss", (2, 5)), ("max", (2, 5))])
def test_dcls2d_7x7_peak_of_reference_position_plus2_minus1(version, expected):
  assert peak(single_element_kernel("Dcls2d", 7, version, [2.0, -1.0])) == expected


@pytest.mark.parametrize("version, expected", [("v0", (6, 4, 1)), ("v1", (4, 1, 6)), ("gauss", (4, 1, 6)),
                                               ("max", (4, 1, 6))])
def test_dcls3d_7x7x7_peak_of_reference_position_3_minus2_1(version, expected):
  assert peak(single_element_kernel("Dcls3d", 7, version, [3.0, -2.0, 1.0])) == expected


@pytest.mark.parametrize("version", ["v1", "max", "gauss"])
def test_dcls2d_5x5_reference_row_0_moves_along_the_width(version):
  assert peak(single_element_kernel("Dcls2d", (5, 5), version, [1.0, 0.0])) == (2, 3)


def test_non_square_v1_reference_bug_is_reproduced():
  """v1 dks (5, 9), P = 0: the reference puts the mass at (row 4, col 2), not at the centre (2, 4)."""
  kernel = single_element_kernel("Dcls2d", (5, 9), "v1", [0.0, 0.0])
  assert peak(kernel) == (4, 2)
  np.testing.assert_allclose(kernel[4, 2], 1.0, atol=1e-6)


def test_non_square_v0_2d_is_centred():
  assert peak(single_element_kernel("Dcls2d", (5, 9), "v0", [0.0, 0.0])) == (2, 4)


def test_flat_gauss_7x1_reference_bug_is_reproduced():
  """gauss dks (7, 1), P = 0: the column holds 0.130, 0.018, 0, ... (total mass 0.147, the 1e-7 dominates)."""
  kernel = single_element_kernel("Dcls2d", (7, 1), "gauss", [0.0, 0.0])
  assert kernel.shape == (7, 1)
  np.testing.assert_allclose(kernel[:3, 0], [0.130, 0.018, 0.0], atol=5e-4)
  np.testing.assert_allclose(kernel.sum(), 0.147, atol=5e-4)


@pytest.mark.parametrize("flat_dim, shape, expected", [(0, (7, 1), (5, 0)), (1, (1, 7), (0, 5))])
def test_dcls2dk1d_flat_dim_0_is_vertical_and_1_horizontal(flat_dim, shape, expected):
  kernel = single_element_kernel("Dcls2dK1d", 7, "v1", [2.0], flat_dim=flat_dim)
  assert kernel.shape == shape and peak(kernel) == expected


# ------------------------------------------------------------------------------------------------------------
# against the live reference
# ------------------------------------------------------------------------------------------------------------
LIVE_LAYERS = [("Dcls2d", (5, 9)), ("Dcls2d", (7, 1)), ("Dcls2d", (4, 6)), ("Dcls3d", (3, 5, 7)),
               ("Dcls3d", (4, 2, 3)), ("Dcls1d", 6)]
LIVE_CASES = ([pytest.param(name, dks, version, {}, id=f"{name}-{dks}-{version}")
               for name, dks in LIVE_LAYERS for version in VERSIONS] +
              [pytest.param("Dcls3_1d", 7, version, {}, id=f"Dcls3_1d-7-{version}") for version in VERSIONS[1:]] +
              [pytest.param("Dcls2dK1d", 6, version, {"flat_dim": 1}, id=f"Dcls2dK1d-6-{version}")
               for version in VERSIONS])


@pytest.fixture(scope="module")
def reference():
  """(torch, DCLS.construct.modules), or skip when the reference is not installed."""
  torch = pytest.importorskip("torch")
  modules = pytest.importorskip("DCLS.construct.modules")
  return torch, modules


def random_reference_layer(reference, class_name, kwargs, seed):
  """A reference layer with random weight, P rows up to one cell beyond +-d_j // 2 and SIG of both signs."""
  torch, modules = reference
  torch.manual_seed(seed)
  layer = getattr(modules, class_name)(**kwargs)
  dks = kwargs["dilated_kernel_size"]
  dks = (dks,) * layer.P.shape[0] if isinstance(dks, int) else dks
  with torch.no_grad():
    layer.weight.normal_()
    for j, d in enumerate(dks):
      layer.P[j].uniform_(-(d // 2) - 1, d // 2 + 1)
    if layer.SIG is not None:
      layer.SIG.uniform_(-0.4, 0.8)
  return layer


def reference_kernel(layer, class_name, kwargs):
  kernel = layer.DCK(layer.weight, layer.P, layer.SIG)
  if class_name == "Dcls2dK1d":
    kernel = kernel.unsqueeze(-1 - kwargs.get("flat_dim", 0))
  return kernel


@pytest.mark.reference
@pytest.mark.parametrize("class_name, dks, version, extra", LIVE_CASES)
def test_kernel_matches_live_reference_in_float32(reference, class_name, dks, version, extra):
  """Imported reference parameters give the reference's kernel (DCK(weight, P, SIG)) to 1e-6."""
  kwargs = layer_kwargs(class_name, dks, version, **extra)
  layer = random_reference_layer(reference, class_name, kwargs, seed=0)
  spec = torch_io.spec_from_reference(class_name, kwargs)
  params = torch_io.params_from_reference(class_name, kwargs, layer.state_dict())
  expected = reference_kernel(layer, class_name, kwargs).detach().numpy()
  ours = jax.jit(spec.kernel)(params["weight"], params["positions"], params.get("sigmas"))
  assert ours.dtype == jnp.float32 and ours.shape == expected.shape
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
  assert np.abs(expected).max() > 0.1  # not a vacuous comparison of empty kernels


@pytest.mark.reference
@pytest.mark.parametrize("class_name, dks, version, extra", LIVE_CASES)
def test_gradients_map_onto_live_reference_autograd(reference, class_name, dks, version, extra):
  """gradients_to_reference(jax.grad(sum(kernel * R))) == the reference's weight/P/SIG grads.

  Compared in float64 on both sides: an element with a tiny mass S on the grid (partly or fully off it) has
  position/sigma gradients that are differences of terms ~1/S (the 1e-7 epsilon), so float32 gradients of the
  two implementations legitimately differ there by ~1e-5 relative; float64 isolates the mapping itself.
  """
  torch, _ = reference
  kwargs = layer_kwargs(class_name, dks, version, **extra)
  layer = random_reference_layer(reference, class_name, kwargs, seed=0).double()
  spec = torch_io.spec_from_reference(class_name, kwargs)
  params = torch_io.params_from_reference(class_name, kwargs, layer.state_dict())
  ref_kernel = reference_kernel(layer, class_name, kwargs)
  cotangent = np.random.default_rng(3).normal(size=tuple(ref_kernel.shape))
  (ref_kernel * torch.from_numpy(cotangent)).sum().backward()
  expected = {"weight": layer.weight.grad, "P": layer.P.grad, **({"SIG": layer.SIG.grad} if spec.has_sigmas else {})}

  names = ["weight", "positions"] + (["sigmas"] if spec.has_sigmas else [])
  with jax.enable_x64(True):
    loss = lambda p: jnp.sum(spec.kernel(p["weight"], p["positions"], p.get("sigmas")) * cotangent)
    grads = jax.jit(jax.grad(loss))({name: jnp.asarray(params[name]) for name in names})
    assert grads["positions"].dtype == jnp.float64
    mapped = torch_io.gradients_to_reference(class_name, kwargs, grads)
  assert set(mapped) == set(expected)
  for name, grad in expected.items():
    grad = grad.numpy()
    scale = max(1.0, float(np.abs(grad).max()))
    np.testing.assert_allclose(mapped[name], grad, rtol=0, atol=1e-10 * scale, err_msg=name)
  assert np.any(expected["P"].numpy() != 0)


@pytest.mark.reference
def test_live_reference_non_square_v1_peak_matches_the_converted_one(reference):
  """The §2.5 example measured on the live reference: v1 dks (5, 9), P = 0 peaks at (4, 2)."""
  torch, modules = reference
  layer = modules.Dcls2d(1, 1, 1, dilated_kernel_size=(5, 9), version="v1", bias=False)
  with torch.no_grad():
    layer.weight.fill_(1.0)
    layer.P.zero_()
  assert peak(layer.DCK(layer.weight, layer.P, layer.SIG).detach().numpy()[0, 0]) == (4, 2)


# ------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------
def test_unknown_class_name_raises_naming_it():
  with pytest.raises(ValueError, match="class_name.*Dcls4d"):
    torch_io.spec_from_reference("Dcls4d", layer_kwargs("Dcls2d", 5, "v1"))
  with pytest.raises(ValueError, match="class_name"):
    torch_io.params_from_reference("Conv2d", layer_kwargs("Dcls2d", 5, "v1"), {})


def test_unknown_kwarg_raises_naming_it():
  with pytest.raises(ValueError, match="kernel_size"):
    torch_io.spec_from_reference("Dcls2d", {**layer_kwargs("Dcls2d", 5, "v1"), "kernel_size": 3})


@pytest.mark.parametrize("missing", ["P", "SIG", "weight", "bias"])
def test_state_dict_missing_an_entry_raises_naming_it(missing):
  kwargs = layer_kwargs("Dcls2d", (5, 7), "gauss")
  state = random_reference_state(torch_io.spec_from_reference("Dcls2d", kwargs), 3)
  del state[missing]
  with pytest.raises(ValueError, match=f"'{missing}'"):
    torch_io.params_from_reference("Dcls2d", kwargs, state)


@pytest.mark.parametrize("entry, shape", [("P", (2, 4, 2, 4)), ("P", (3, 4, 2, 3)), ("SIG", (2, 4, 2)),
                                          ("weight", (4, 4, 3))])
def test_state_dict_entry_of_wrong_shape_raises_naming_it(entry, shape):
  kwargs = layer_kwargs("Dcls2d", (5, 7), "gauss")
  state = random_reference_state(torch_io.spec_from_reference("Dcls2d", kwargs), 3)
  state[entry] = np.zeros(shape, np.float32)
  with pytest.raises(ValueError, match=rf"state_dict\['{entry}'\]"):
    torch_io.params_from_reference("Dcls2d", kwargs, state)


def test_bfloat16_reference_state_imports_as_float32():
  torch = pytest.importorskip("torch")
  kwargs = dict(in_channels=2, out_channels=2, kernel_count=3, dilated_kernel_size=5, version="gauss")
  state = {"weight": torch.ones(2, 2, 3, dtype=torch.bfloat16), "P": torch.zeros(2, 2, 2, 3, dtype=torch.bfloat16),
           "SIG": torch.zeros(2, 2, 2, 3, dtype=torch.bfloat16), "bias": torch.zeros(2, dtype=torch.bfloat16)}
  params = torch_io.params_from_reference("Dcls2d", kwargs, state)
  assert params["weight"].dtype == np.float32


def test_missing_reference_kwarg_is_named():
  with pytest.raises(ValueError, match="kernel_count"):
    torch_io.spec_from_reference("Dcls1d", dict(in_channels=1, out_channels=1))
