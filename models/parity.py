"""The fixture contract (``shared/fixtures/README.md``): reproduce a PyTorch model's golden outputs and gradients.

  python -m models.parity FIXTURE.npz|SCHEDULE.json [...]

For each fixture: build the model named by ``meta.arch`` from ``meta.config``, load ``state/*``, feed
``input/*``, and compare every ``output/*`` and ``grad/*`` with |ours - ref| <= atol + rtol * |ref| (per-key
tolerances from ``meta.tolerance``), in the fixture's dtype with HIGHEST matmul precision. Prints one line per
array, then ``PASS n arrays`` or ``FAIL ...``. Exit status: 0 all pass, 1 a mismatch, 2 an unsupported or
malformed fixture (and no mismatch).

An arch is supported by registering ``run(meta, arrays) -> {key: array}`` in ``ARCHS``; it returns every
``output/*`` and ``grad/*`` key of the fixture, in the fixture's layout.

Tolerances: ``meta.tolerance`` maps a key, or a group of comma-separated glob patterns (``grad/*``) and names
(``BN running stats``, ``num_batches_tracked``), to {atol, rtol} or to ``"exact"`` (equality). A schedule file
(``.json``, arch ``snn_delays/schedules``) becomes a fixture with ``input/epoch`` and one ``output/<column>`` per
entry of ``columns``, under the tolerance group (lr, betas, sigma) its column name starts with.
"""
from __future__ import annotations

import fnmatch
import json
import sys
from typing import Callable, Mapping

import jax
import numpy as np

from models import audio_convnext_io
from models import convformer_io
from models import convnext_io
from models import dcls_layer
from models import fastvit_io
from models import kernel_sharing_io
from models import lif
from models import snn_delays

ARCHS: dict[str, Callable[[Mapping, Mapping[str, np.ndarray]], dict[str, np.ndarray]]] = {
    "audio_convnext": audio_convnext_io.run_audio_convnext_fixture,
    "convnext_dcls": convnext_io.run_fixture,
    "dcls_audio_convnext": audio_convnext_io.run_dcls_audio_convnext_fixture,
    "dcls_audio_convformer": convformer_io.run_fixture,
    "dcls_audio_fastvit": fastvit_io.run_fixture,
    "dcls_layer": dcls_layer.run_fixture,
    "ks_convmixer": kernel_sharing_io.run_convmixer_fixture,
    "ks_seresnet": kernel_sharing_io.run_seresnet_fixture,
    "snn_delays": snn_delays.run_fixture,
    "snn_delays/delay_layer": snn_delays.run_delay_layer_fixture,
    "snn_delays/lif": lif.run_fixture,
    "snn_delays/schedules": snn_delays.run_schedules_fixture,
}
# Tolerance names that are not glob patterns: the keys they cover.
_NAMED_KEYS = {"BN running stats": ("output/model.*.running_mean", "output/model.*.running_var"),
               "num_batches_tracked": ("*num_batches_tracked",)}
# Schedule files: the tolerance group of a per-epoch column, by the start of its name.
_SCHEDULE_GROUPS = (("lr", "lr"), ("beta", "betas"), ("sigma", "sigma"))


class UnsupportedFixture(Exception):
  """The fixture cannot be run: unknown arch or config, or keys missing."""


def load(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  if path.endswith(".json"):
    return load_schedule(path)
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


def load_schedule(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  """A schedule file as (meta, arrays): ``input/epoch``, ``output/<column>``, tolerances per output key."""
  try:
    with open(path) as f:
      meta = json.load(f)
    per_epoch = meta.pop("per_epoch")
    arrays = {"input/epoch": np.asarray(per_epoch["epoch"])}
    arrays.update({f"output/{column}": np.asarray(per_epoch[column], np.float64) for column in meta["columns"]})
    groups = {f"output/{column}": next(group for prefix, group in _SCHEDULE_GROUPS if column.startswith(prefix))
              for column in meta["columns"]}
    meta["tolerance"] = {key: meta["tolerance"][group] for key, group in groups.items()}
  except (OSError, KeyError, ValueError, TypeError, StopIteration) as e:
    raise UnsupportedFixture(f"cannot read schedule file {path}: {type(e).__name__}: {e}") from e
  for field in ("arch", "config"):
    if field not in meta:
      raise UnsupportedFixture(f"{path}: has no {field!r}")
  return meta, arrays


def tolerance(tolerances: Mapping, key: str):
  """{atol, rtol} or "exact" for ``key``: its own entry, else the first group with a glob pattern matching it,
  else the first group naming it; None if none does."""
  if key in tolerances:
    return tolerances[key]
  groups = [([p.strip() for p in group.split(",")], value) for group, value in tolerances.items()]
  for patterns, value in groups:
    if any("/" in p and fnmatch.fnmatchcase(key, p) for p in patterns):
      return value
  for patterns, value in groups:
    if any(fnmatch.fnmatchcase(key, named) for p in patterns for named in _NAMED_KEYS.get(p, ())):
      return value
  return None


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
    tol = tolerance(meta["tolerance"], key)
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
    if tol == "exact":
      ok = bool(np.array_equal(got, ref))
      print(f"  {key:<28} exact  {'ok' if ok else f'MISMATCH at {np.count_nonzero(got != ref)} entries'}")
      if not ok:
        failed.append(key)
      continue
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    allowed = tol["atol"] + tol["rtol"] * np.abs(ref.astype(np.float64))
    # Tolerances of 0 (exact integers given as atol = rtol = 0): an exact match counts as 0 of the allowance.
    worst = float(np.max(np.where(err == 0, 0.0, err / np.where(allowed > 0, allowed, np.inf)))) if err.size else 0.0
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
