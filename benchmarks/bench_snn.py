"""Train-step time of SNN-delays at the SHD configuration: learned delays vs fixed integer delays, one process.

Usage::

  python -m benchmarks.bench_snn [--steps 5] [--quick]

The SHD recipe (configs/snn_shd.py): batch 256, 100 time steps, 140 -> 256 -> 256 -> 20, K = 25, dropout 0.4,
both optimisers, position clamp; random spike input (density 5%). One jitted data-parallel train step (forward,
backward, two Adams, clamp) on one device-resident batch, median over ``--steps`` calls after a compile call, for

* ``learned``: the method (1-D Gaussian DCLS delay kernels, K taps, built from weights, positions and sigmas);
* ``fixed``: the same network with fixed integer delays, i.e. plain dense K-tap temporal convolutions;
* ``none``: per-step dense synapses (no delays at all), for scale.

Prints seconds per step and the ratio learned / fixed. For scale, the issue quotes the PyTorch reference at about
3.0 s per training iteration at these shapes on a 2-core CPU of the project's build machines (not measured here:
the reference needs SpikingJelly and the SNN-delays sources).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np
from flax import nnx

from configs import snn_shd
from dcls_jax import optim as dcls_optim
from models import registry
from train import optimizers
from train import parallel
from train import step as step_lib
from train import tasks

REFERENCE_SECONDS = 3.0  # quoted in the issue: the PyTorch reference, 2-core CPU, SHD shapes


def step_seconds(config, delays: str, steps: int, batch: dict) -> float:
  model_config = dict(config.model, delays=delays)
  module = registry.create_model(model_config, rngs=nnx.Rngs(params=0, dropout=0))
  model, params, batch_stats = step_lib.Model.split(module)
  tx, _ = optimizers.build_optimizer(config, steps_per_epoch=100, total_steps=100 * config.num_epochs,
                                     position_limits=dcls_optim.dcls_position_limits(module))
  dp = parallel.DataParallel("shard_map")
  train_step = dp.run(step_lib.make_train_step(model, tx, tasks.create_task(config.task), seed=0,
                                               input_key=config.input_key), donate_state=True)
  state = dp.replicate(step_lib.init_state(params, batch_stats, tx, ema=False))
  device_batch = jax.device_put(dp.shard_batch(batch))
  state, metrics = train_step(state, device_batch)  # compile
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = train_step(state, device_batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--quick", action="store_true", help="batch 8, 20 steps of time: a smoke test")
  args = parser.parse_args()
  config = snn_shd.get_config()
  config.model.bn_axis_name = None  # one device here
  batch_size, num_steps = (8, 20) if args.quick else (config.batch_size, 100)
  rng = np.random.default_rng(0)
  batch = {"spikes": (rng.random((batch_size, num_steps, 140)) < 0.05).astype(np.float32),
           "label": rng.integers(0, 20, batch_size).astype(np.int32)}
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}"
        f" backend={jax.default_backend()}; SHD shapes: batch {batch_size}, T {num_steps}, 140-256-256-20, K 25")
  seconds = {delays: step_seconds(config, delays, args.steps, batch) for delays in ("learned", "fixed", "none")}
  for delays, value in seconds.items():
    print(f"| {delays} | {value:.3f} s/step |")
  print(f"learned / fixed = {seconds['learned'] / seconds['fixed']:.2f}; reference figure {REFERENCE_SECONDS} s"
        f" / learned = {REFERENCE_SECONDS / seconds['learned']:.1f}x (target >= 3x)")


if __name__ == "__main__":
  main()
