"""Parity with the live PyTorch reference ``dcls==0.1.1``: every class, version and argument kind.

Each case builds a reference layer, draws parameters and inputs, records the reference's kernel, output and
gradients as a fixture, and runs it through ``models.parity`` (the fixture contract, HIGHEST precision):
kernel, output and the gradients of weight, P, SIG and bias must match within the contract's tolerances.
"""
from __future__ import annotations

import numpy as np
import pytest

from models import parity
from tests import torch_reference

pytestmark = pytest.mark.reference

LEARNABLE_DIMS = {"Dcls1d": 1, "Dcls2d": 2, "Dcls3d": 3, "Dcls3_1d": 1, "Dcls2dK1d": 1}
SPATIAL_DIMS = {"Dcls1d": 1, "Dcls2d": 2, "Dcls3d": 3, "Dcls3_1d": 3, "Dcls2dK1d": 2}
VERSIONS = {"Dcls3_1d": ("v1", "max", "gauss")}


def random_case(seed: int):
  """A random reference layer: class, version, groups, strides, paddings and modes, Kc, non-square sizes."""
  rng = np.random.default_rng(seed)
  class_name = str(rng.choice(list(LEARNABLE_DIMS)))
  n, m = SPATIAL_DIMS[class_name], LEARNABLE_DIMS[class_name]
  groups = int(rng.choice([1, 1, 2, 3]))
  max_size = 5 if n == 3 else 9
  kwargs = dict(in_channels=groups * int(rng.integers(1, 3)), out_channels=groups * int(rng.integers(1, 3)),
                kernel_count=int(rng.integers(1, 6)), groups=groups, bias=bool(rng.random() < 0.7),
                version=str(rng.choice(VERSIONS.get(class_name, ("v0", "v1", "max", "gauss")))))
  dilated = [int(d) for d in rng.integers(1, max_size + 1, m)]
  kwargs["dilated_kernel_size"] = dilated if m > 1 else dilated[0]
  kernel_shape = list(dilated)
  if class_name == "Dcls3_1d":
    kwargs["dense_kernel_size"] = [int(e) for e in rng.integers(1, 4, 2)]
    kernel_shape = kwargs["dense_kernel_size"] + dilated
  elif class_name == "Dcls2dK1d":
    kwargs["flat_dim"] = int(rng.integers(0, 2))
    kernel_shape = dilated + [1] if kwargs["flat_dim"] == 0 else [1] + dilated
  kwargs["stride"] = [int(s) for s in rng.integers(1, 3, n)]
  kwargs["padding"] = [int(rng.integers(0, k // 2 + 1)) for k in kernel_shape]
  spatial = [max(k - 2 * p, 1) + int(rng.integers(0, 5 if n < 3 else 3))
             for k, p in zip(kernel_shape, kwargs["padding"])]
  mode = str(rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"]))
  if mode == "reflect" and any(p >= s for p, s in zip(kwargs["padding"], spatial)):
    mode = "replicate"  # torch's reflect needs padding < input size
  kwargs["padding_mode"] = mode
  if class_name == "Dcls2d":
    kwargs["use_implicit_gemm"] = False
  input_shape = (int(rng.integers(1, 3)), kwargs["in_channels"], *spatial)
  return class_name, kwargs, input_shape


def check(capsys, tmp_path, arrays, name="case"):
  path = tmp_path / f"{name}.npz"
  np.savez(path, **arrays)
  status = parity.main([str(path)])
  output = capsys.readouterr().out
  assert status == 0, output
  assert output.strip().splitlines()[-1].startswith("PASS"), output


@pytest.mark.parametrize("seed", range(40))
def test_random_layer_matches_reference(seed, capsys, tmp_path):
  class_name, kwargs, input_shape = random_case(seed)
  arrays = torch_reference.make_fixture(class_name, kwargs, input_shape, seed=seed, kinks=seed % 3 == 0)
  check(capsys, tmp_path, arrays)


@pytest.mark.parametrize("seed", range(40, 46))
def test_random_layer_matches_reference_in_float64(seed, capsys, tmp_path):
  class_name, kwargs, input_shape = random_case(seed)
  arrays = torch_reference.make_fixture(class_name, kwargs, input_shape, seed=seed, dtype="float64", kinks=True)
  check(capsys, tmp_path, arrays)


@pytest.mark.parametrize("version", ["v0", "v1", "max", "gauss"])
def test_convnext_shaped_depthwise_layer(version, capsys, tmp_path):
  """The recipes' layer shape (depthwise, d = 17, many elements), positions at the kinks."""
  kwargs = dict(in_channels=4, out_channels=4, kernel_count=34, dilated_kernel_size=17, padding=8, groups=4,
                version=version, use_implicit_gemm=False)
  check(capsys, tmp_path, torch_reference.make_fixture("Dcls2d", kwargs, (1, 4, 12, 12), kinks=True))


def _one_element(version, dilated, positions, sigma=0.23):
  """Kwargs and parameters of a layer with one element of weight 1 per channel pair."""
  n = len(positions)
  kwargs = dict(in_channels=1, out_channels=1, kernel_count=1, dilated_kernel_size=dilated,
                padding=[d // 2 for d in dilated] if isinstance(dilated, list) else dilated // 2,
                bias=False, version=version)
  params = {"weight": np.ones((1, 1, 1)), "P": np.asarray(positions, float).reshape(n, 1, 1, 1)}
  if version in ("max", "gauss"):
    params["SIG"] = np.full((n, 1, 1, 1), sigma)
  return kwargs, params


@pytest.mark.parametrize("version,position", [
    ("v1", 3.4),  # Q1: partly off the grid, renormalised onto the last tap
    ("v0", 3.4),  # Q1: v0 loses the off-grid corner
    ("gauss", 6.0),  # Q2: mass 0.132 instead of 1, the epsilon dominates
    ("gauss", 10.0),  # fully off the grid: kernel 0, gradients finite
    ("max", 5.5),
    ("v1", 3.0),  # exactly at the clamp limit: zero position gradient
    ("v0", 3.0),  # v0 keeps a right-hand derivative there
])
def test_elements_outside_or_on_the_border_of_the_grid(version, position, capsys, tmp_path):
  kwargs, params = _one_element(version, 7, [position])
  check(capsys, tmp_path, torch_reference.make_fixture("Dcls1d", kwargs, (1, 1, 9), params=params))


@pytest.mark.parametrize("version", ["v0", "v1", "max", "gauss"])
def test_even_sizes_put_the_upper_limit_off_the_grid(version, capsys, tmp_path):
  """Q3: d = 6 gives L = 3, so position +3 is at q = 6, one past the last tap."""
  kwargs, params = _one_element(version, [6, 4], [3.0, -2.0])
  check(capsys, tmp_path, torch_reference.make_fixture("Dcls2d", kwargs, (1, 1, 8, 8), params=params))


def test_max_with_zero_width_behaves_as_v1_and_never_learns_its_width(capsys, tmp_path):
  """Q4: d|SIG|/dSIG is 0 at SIG = 0 in the reference, so grad/SIG must be exactly 0 here too."""
  kwargs = dict(in_channels=2, out_channels=3, kernel_count=4, dilated_kernel_size=5, padding=2, version="max")
  arrays = torch_reference.make_fixture("Dcls2d", kwargs, (1, 2, 7, 7), params={"SIG": np.zeros((2, 3, 2, 4))})
  assert np.all(arrays["grad/SIG"] == 0)
  check(capsys, tmp_path, arrays)


@pytest.mark.parametrize("class_name,dilated", [("Dcls2d", [5, 9]), ("Dcls2d", [7, 1]), ("Dcls2d", [7, 3]),
                                                ("Dcls3d", [3, 5, 7]), ("Dcls3d", [6, 3, 4])])
@pytest.mark.parametrize("version", ["v0", "v1", "max", "gauss"])
def test_non_square_kernels_reproduce_the_reference_placement(class_name, dilated, version, capsys, tmp_path):
  """Spec §2.5: the reference offsets row j by d_j // 2 whatever axis it drives; the import keeps that."""
  kwargs = dict(in_channels=2, out_channels=2, kernel_count=3, dilated_kernel_size=dilated,
                padding=[d // 2 for d in dilated], version=version)
  input_shape = (1, 2) + tuple(d + 1 for d in dilated)
  check(capsys, tmp_path, torch_reference.make_fixture(class_name, kwargs, input_shape, kinks=True))
