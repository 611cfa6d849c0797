"""Fixtures shared by the test modules."""
import jax
import pytest


@pytest.fixture
def highest_matmul_precision():
  """Full float32 matmuls and convolutions: GPUs otherwise compute in TF32 (about 1e-3 relative), and parity is
  compared at highest precision (a module opts in with ``pytestmark = pytest.mark.usefixtures(...)``)."""
  with jax.default_matmul_precision("highest"):
    yield
