"""The fixture contract (``shared/fixtures/README.md``): reproduce a PyTorch model's golden outputs and gradients.

  python -m models.parity FIXTURE.npz [FIXTURE.npz ...]

For each fixture: build the model named by ``meta.arch`` from ``meta.config``, load ``state/*``, feed
``input/*``, and compare every ``output/*`` and ``grad/*`` with |ours - ref| <= atol + rtol * |ref| (per-key
tolerances from ``meta.tolerance``), in the fixture's dtype with HIGHEST matmul precision. Prints one line per
array, then ``PASS n arrays`` or ``FAIL ...``. Exit status: 0 all pass, 1 a mismatch, 2 an unsupported or
malformed fixture (and no mismatch).

An arch is supported by registering ``run(meta, arrays) -> {key: array}`` in ``ARCHS``; it returns every
``output/*`` and ``grad/*`` key of the fixture, in the fixture's layout.
"""
from __future__ import annotations

import json
import sys
from typing import Callable, Mapping

import jax
import numpy as np

from models import dcls_layer

ARCHS: dict[str, Callable[[Mapping, Mapping[str, np.ndarray]], dict[str, np.ndarray]]] = {
    "dcls_layer": dcls_layer.run_fixture,
}


class UnsupportedFixture(Exception):
  """The fixture cannot be run: unknown arch or config, or keys missing."""


def load(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("meta")))
  except (OSError, KeyError, ValueError) as e:
    raise UnsupportedFixture(f"cannot read {path}: {e}") from e
  for field in ("arch", "config", "tolerance"):
    if field not in meta:
      raise UnsupportedFixture(f"{path}: meta has no {field!r}")
  return meta, arrays


def compute(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  arch = meta["arch"]
  if arch not in ARCHS:
    raise UnsupportedFixture(f"arch {arch!r} is not supported; known: {sorted(ARCHS)}")
  dtype = meta.get("dtype", "float32")
  if dtype not in ("float32", "float64"):
    raise UnsupportedFixture(f"meta.dtype must be float32 or float64, got {dtype!r}")
  # x64 for float64 fixtures (float32 ones are computed in float32), scoped so importers are unaffected.
  with jax.enable_x64(True), jax.default_matmul_precision("highest"):
    try:
      return ARCHS[arch](meta, arrays)
    except (KeyError, ValueError, NotImplementedError) as e:
      raise UnsupportedFixture(f"{type(e).__name__}: {e}") from e


def compare(meta: Mapping, arrays: Mapping[str, np.ndarray], ours: Mapping[str, np.ndarray]) -> list[str]:
  """Prints one line per expected array; returns the keys that mismatch."""
  failed = []
  expected_keys = [k for k in arrays if k.startswith(("output/", "grad/"))]
  for key in expected_keys:
    ref = arrays[key]
    tol = meta["tolerance"].get(key)
    if tol is None:
      raise UnsupportedFixture(f"meta.tolerance has no entry for {key}")
    got = ours.get(key)
    if got is None:
      print(f"  {key:<28} MISSING: the model did not produce it")
      failed.append(key)
      continue
    got = np.asarray(got)
    if got.shape != ref.shape:
      print(f"  {key:<28} SHAPE {got.shape} != reference {ref.shape}")
      failed.append(key)
      continue
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    allowed = tol["atol"] + tol["rtol"] * np.abs(ref.astype(np.float64))
    worst = float(np.max(err / allowed)) if err.size else 0.0
    ok = bool(np.all(err <= allowed))
    print(f"  {key:<28} max|err| {err.max(initial=0):.3e}  atol {tol['atol']:.1e} rtol {tol['rtol']:.1e}  "
          f"worst/allowed {worst:6.3f}  {'ok' if ok else 'MISMATCH'}")
    if not ok:
      failed.append(key)
  return failed


def main(paths: list[str]) -> int:
  if not paths:
    print("usage: python -m models.parity FIXTURE.npz [FIXTURE.npz ...]")
    return 2
  total, mismatched, unsupported = 0, [], []
  for path in paths:
    print(path)
    try:
      meta, arrays = load(path)
      failed = compare(meta, arrays, compute(meta, arrays))
    except UnsupportedFixture as e:
      print(f"  UNSUPPORTED: {e}")
      unsupported.append(path)
      continue
    total += sum(k.startswith(("output/", "grad/")) for k in arrays)
    mismatched += [f"{path}:{k}" for k in failed]
  if mismatched or unsupported:
    print(f"FAIL {len(mismatched)} mismatched arrays {mismatched}, {len(unsupported)} unsupported fixtures "
          f"{unsupported}")
    return 1 if mismatched else 2
  print(f"PASS {total} arrays")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
