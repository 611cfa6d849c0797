"""What the benchmarks share: a median timer and the line that says which machine ran them."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import jax


def timed(fn: Callable[[], object], steps: int) -> float:
  """Median seconds of ``fn()`` (which must block until its result is ready) over ``steps`` calls, after one
  untimed call (compilation, warm-up)."""
  fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def machine() -> str:
  """The processor, CPU count, jax version and backend, for the first line of every benchmark's output."""
  return (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}"
          f" backend={jax.default_backend()} ({jax.devices()[0].device_kind})")
