"""Is the input pipeline or the loop the bottleneck of training? Steps/s of three ways to run the same steps.

Usage::

  python -m benchmarks.bench_train [--config configs/digits_convnext_dcls.py] [--steps 300] [--quick]
  python -m benchmarks.bench_train --config configs/snn_shd.py --synthetic_shd 1024 --steps 10 --warmup 3

In one process, from one ``train.trainer.Experiment`` (model, optimiser, data of the config):

* ``bare``: the jitted data-parallel train step on one constant, device-resident batch, nothing else;
* ``pipeline``: the same step fed by the real input pipeline (tfds data_source -> grain -> host -> devices);
* ``loop``: ``pipeline`` plus what the training loop does around a step (metrics fetch and JSONL / TensorBoard
  writes every ``log_every_steps``, progress bar, checkpoint scheduling: ``Checkpointer.maybe_save``).

Prints steps/s and the ratios pipeline / bare (target >= 0.9: the pipeline is not the bottleneck) and loop / bare
(the host overhead of the loop). Timing starts after ``--warmup`` steps (compile excluded) and ends with
``block_until_ready``. ``--synthetic_shd N``: the SHD shapes without the SHD files, from N generated samples
written in the original HDF5 layout (700 units, ~1 s, ~5,000 spikes each) and read by the real SHD builder.
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import tempfile
import time

import jax
import numpy as np

from train import checkpointing
from train import metrics as metrics_lib
from train import trainer
from train.data import shd

TARGET_PIPELINE_RATIO = 0.9


def _batches(exp: trainer.Experiment):
  """Endless training batches, epoch after epoch."""
  for epoch in itertools.count():
    yield from exp.train_data.epoch(epoch)


def run_bare(exp, state, steps: int, warmup: int) -> float:
  batch = exp.parallel.shard_batch(next(_batches(exp)))
  batch = jax.device_put(batch)  # device-resident: no host work per step
  for _ in range(warmup):
    state, metrics = exp.train_step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = exp.train_step(state, batch)
  jax.block_until_ready(metrics)
  return steps / (time.perf_counter() - start)


def run_pipeline(exp, state, steps: int, *, warmup: int, with_loop: bool, workdir: str) -> float:
  batches = _batches(exp)
  for _ in range(warmup):
    state, metrics = exp.train_step(state, exp.parallel.shard_batch(next(batches)))
  jax.block_until_ready(metrics)
  config = exp.config
  if with_loop:
    writer = metrics_lib.MetricsWriter(workdir)
    progress = metrics_lib.ProgressBar(steps, examples_per_step=config.batch_size,
                                       every_steps=config.log_every_steps, stream=open(os.devnull, "w"))
    checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "ckpt"), every_steps=10**9, max_to_keep=1)
  start = time.perf_counter()
  for step in range(1, steps + 1):
    state, metrics = exp.train_step(state, exp.parallel.shard_batch(next(batches)))
    if with_loop:
      if step % config.log_every_steps == 0:
        scalars = {f"train/{k}": float(v) for k, v in exp.parallel.to_host(metrics).items()}
        metrics_lib.check_finite(step, scalars)
        writer.write(step, scalars)
        progress.update(step, loss=scalars["train/loss"])
      checkpointer.maybe_save(step, {}, {}, force=False)  # the scheduling decision, as the loop makes it
  jax.block_until_ready(metrics)
  rate = steps / (time.perf_counter() - start)
  if with_loop:
    writer.close()
    checkpointer.close()
  return rate


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/digits_convnext_dcls.py")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--data_dir", default=None, help="overrides config.dataset.data_dir")
  parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (compile, prefetch)")
  parser.add_argument("--synthetic_shd", type=int, default=0, help="N generated SHD-format samples as the data")
  parser.add_argument("--quick", action="store_true", help="tiny model, 30 steps: a smoke test of the script")
  args = parser.parse_args()

  config = trainer.load_config(args.config)
  if args.data_dir:
    config.dataset.data_dir = args.data_dir
  steps = args.steps
  if args.quick:
    config.model.depths, config.model.dims, steps = (1, 1), (8, 16), 30
  with tempfile.TemporaryDirectory() as data_dir:
    if args.synthetic_shd:
      config.dataset.data_dir = os.path.join(data_dir, "tfds")
      config.dataset.manual_dir = write_synthetic_shd(data_dir, args.synthetic_shd)
      config.model.bn_axis_name = None if jax.device_count() == 1 else config.model.bn_axis_name
    run_all(config, args, steps)


def write_synthetic_shd(directory: str, num_samples: int) -> str:
  """shd_train.h5 / shd_test.h5 of random spike trains in the original layout; returns their folder."""
  rng = np.random.default_rng(0)
  for split, count in (("train", num_samples), ("test", max(num_samples // 4, 1))):
    samples = []
    for _ in range(count):
      spikes = rng.integers(4000, 6000)
      samples.append((np.sort(rng.uniform(0.0, 1.0, spikes)), rng.integers(0, 700, spikes), rng.integers(0, 20)))
    shd.write_sample_file(os.path.join(directory, f"shd_{split}.h5"), samples)
  return directory


def run_all(config, args, steps: int) -> None:
  exp = trainer.Experiment(config)
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}"
        f" backend={jax.default_backend()} devices={jax.device_count()}; config {args.config}, model"
        f" {config.model.name}, batch {config.batch_size}, {steps} steps")
  state = exp.parallel.replicate(exp.initial_state)
  with tempfile.TemporaryDirectory() as workdir:
    bare = run_bare(exp, state, steps, args.warmup)
    pipeline = run_pipeline(exp, exp.parallel.replicate(exp.initial_state), steps, warmup=args.warmup,
                            with_loop=False, workdir=workdir)
    loop = run_pipeline(exp, exp.parallel.replicate(exp.initial_state), steps, warmup=args.warmup,
                        with_loop=True, workdir=workdir)
  print(f"| bare step | {bare:.3g} steps/s | 1.00 |")
  print(f"| + real input pipeline | {pipeline:.3g} steps/s | {pipeline / bare:.2f} |")
  print(f"| + loop (logging, metrics, progress, checkpoint scheduling) | {loop:.3g} steps/s | {loop / bare:.2f} |")
  verdict = "met" if pipeline / bare >= TARGET_PIPELINE_RATIO else "NOT met"
  print(f"pipeline / bare = {pipeline / bare:.2f} (target >= {TARGET_PIPELINE_RATIO}: {verdict});"
        f" host overhead of the loop: {1e3 * (1 / loop - 1 / pipeline):+.2f} ms/step")


if __name__ == "__main__":
  main()
