"""The training loop: config -> model, optimiser, data -> data-parallel steps -> checkpoints, metrics, pictures.

``train_and_evaluate(config, workdir)`` trains, evaluates after every epoch, checkpoints, and resumes from the
latest checkpoint in ``workdir`` if there is one (a finished run reports its summary and returns). Layout of the
workdir::

  checkpoints/<step>/    orbax checkpoints (periodic, best by eval metric, final), meta = data position
  metrics.jsonl          one JSON record per logged step / evaluation; tensorboard/ holds the same as events
  curves.png             training curves;  kernels.png: where each DCLS layer's elements went
  summary.json           the final metrics

Resumption is exact: the checkpoint holds the step, parameters, optimiser state and EMA; the data position
(epoch, batch within it) is in its meta; batches and dropout keys are functions of (seed, epoch, batch) and
(seed, step), so a run killed at any point and resumed ends with the same parameters as an uninterrupted one.
SIGTERM (pre-emption) saves a checkpoint at the next step boundary and exits with status 143.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from dcls_jax import optim as dcls_optim
from models import registry
from train import checkpointing
from train import data as data_lib
from train import metrics as metrics_lib
from train import optimizers
from train import parallel
from train import plots
from train import step as step_lib
from train import tasks as tasks_lib
from train.data import pipeline as pipeline_lib
from train.data import sampling

REQUIRED_FIELDS = ("seed", "batch_size", "num_epochs", "model.name", "dataset.name", "optimizer.name",
                   "optimizer.learning_rate", "schedule.name", "parallel", "checkpoint.every_steps",
                   "checkpoint.max_to_keep", "log_every_steps")
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a process killed by SIGTERM reports


def load_config(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of the experiment file at ``path`` (what ``--config path`` loads)."""
  spec = importlib.util.spec_from_file_location("experiment_config", path)
  if spec is None or not os.path.isfile(path):
    raise ValueError(f"config path {path!r}: expected a python file with get_config().")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first missing required field."""
  for field in REQUIRED_FIELDS:
    node = config
    for part in field.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise ValueError(f"config.{field} is missing: every experiment config sets it (see configs/).")
      node = node[part]


class Experiment:
  """The pieces of one run, built from its config (model, optimiser, data, steps), without the loop."""

  def __init__(self, config: ml_collections.ConfigDict):
    check_config(config)
    self.config = config
    self.parallel = parallel.DataParallel(config.parallel)
    batch_size = parallel.process_batch_size(config.batch_size)

    # Initialisers draw from the 'params' stream; dropout / drop path from 'dropout', reseeded every step.
    module = registry.create_model(config.model, rngs=nnx.Rngs(params=config.seed, dropout=config.seed))
    self.model, params, batch_stats = step_lib.Model.split(module)
    self.position_limits = dcls_optim.dcls_position_limits(module)

    process = dict(process_index=jax.process_index(), process_count=jax.process_count())
    _prepare_data_once(config.dataset)
    transform = data_lib.get_transform(config.dataset, train=True)
    loading = dict(prefetch=config.dataset.get("prefetch", 2), cache=config.dataset.get("cache", False),
                   worker_count=config.dataset.get("worker_count", 0))
    train_source = data_lib.get_source(config.dataset, config.dataset.train_split)
    sampler = None
    if config.dataset.get("balanced_sampling", False):  # multi-label data: every class equally often per epoch
      sampler = functools.partial(sampling.balanced_order, sampling.labels_of(train_source))
    self.train_data = pipeline_lib.Pipeline(
        train_source, batch_size=batch_size, seed=config.seed, shuffle=True, drop_remainder=True,
        transform=transform, sampler=sampler, **loading, **process)
    self.eval_data = pipeline_lib.Pipeline(
        data_lib.get_source(config.dataset, config.dataset.eval_split), batch_size=batch_size, seed=config.seed,
        shuffle=False, drop_remainder=False, transform=data_lib.get_transform(config.dataset, train=False),
        **loading, **process)
    self.batch_size = batch_size
    self.steps_per_epoch = self.train_data.steps_per_epoch
    self.total_steps = config.num_epochs * self.steps_per_epoch

    self.tx, self.schedules = optimizers.build_optimizer(
        config, steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
        position_limits=self.position_limits)
    ema_decay = config.optimizer.get("ema_decay", 0.0)
    self.initial_state = step_lib.init_state(params, batch_stats, self.tx, ema=ema_decay > 0)
    input_key = config.get("input_key", "image")  # the batch entry fed to the model ('spikes' for SNNs)
    task_config = config.get("task", ml_collections.ConfigDict({"name": "classification"}))
    task = self.task = tasks_lib.create_task(task_config)
    self.train_step = self.parallel.run(
        step_lib.make_train_step(self.model, self.tx, task, seed=config.seed, ema_decay=ema_decay,
                                 input_key=input_key,
                                 extra_loss=self._repulsive_loss(config.optimizer.get("repulsive_after_epoch"))),
        donate_state=True)
    self.eval_step = self.parallel.run(
        step_lib.make_eval_step(self.model, task, use_ema=ema_decay > 0, input_key=input_key))
    self._set_sigmas = self.parallel.run(
        lambda state, sigma: state.replace(params=dcls_optim.with_sigmas(state.params, sigma)), shard_batch=False)

  def start_epoch(self, state, epoch: int):
    """The state for ``epoch``: the per-epoch parameter schedules applied (SNN-delays' sigma decay,
    ``config.sigma_schedule`` = dict(sigma_init, final_epoch)); a function of the epoch, so resuming re-applies it."""
    schedule = self.config.get("sigma_schedule")
    if schedule is None:
      return state
    sigma = np.float32(dcls_optim.sigma_schedule(epoch, sigma_init=schedule.sigma_init,
                                                 final_epoch=schedule.final_epoch))
    return self._set_sigmas(state, self.parallel.replicate(sigma))

  def _repulsive_loss(self, after_epoch: Optional[int]):
    """ConvNeXt-dcls: + (repulsive loss of the positions)^2 once the epoch exceeds ``after_epoch`` (20)."""
    if after_epoch is None:
      return None
    first_step = (after_epoch + 1) * self.steps_per_epoch

    def extra_loss(params, step):
      return jnp.where(step >= first_step, dcls_optim.total_repulsive_loss(params) ** 2, 0.0)
    return extra_loss

  def evaluate(self, state) -> dict[str, float]:
    """Task metrics over the whole eval split (the pipeline pads the last batch and masks the padding): the means
    of the task's sums and, for a task with ``finalize``, its metrics of the per-example outputs of every real
    example, gathered over devices and batches."""
    totals, per_example = None, []
    for batch in self.eval_data.epoch(0):
      sums, outputs = self.parallel.to_host(self.eval_step(state, self.parallel.shard_batch(batch)))
      totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
      per_example.append(outputs)
    count = float(totals.pop("count"))
    metrics = {name: float(value) / count for name, value in totals.items()}
    if self.task.finalize is not None:
      metrics.update(self.task.finalize(tasks_lib.real_examples(per_example)))
    return metrics


def _prepare_data_once(dataset_config) -> None:
  """Process 0 prepares the dataset (if needed) while the others wait: they may share its data_dir."""
  if jax.process_count() == 1:
    return
  if jax.process_index() == 0:
    data_lib.get_source(dataset_config, dataset_config.train_split)
  multihost_utils.sync_global_devices("dataset prepared")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run of ``config`` in ``workdir``; returns the final summary."""
  parallel.initialize_distributed(config.get("distributed"))
  exp = Experiment(config)
  os.makedirs(workdir, exist_ok=True)
  ckpt_config = config.checkpoint
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), every_steps=ckpt_config.every_steps,
      max_to_keep=ckpt_config.max_to_keep, best_metric=ckpt_config.get("best_metric"),
      best_mode=ckpt_config.get("best_mode", "max"), async_save=ckpt_config.get("async_save", True))
  summary_path = os.path.join(workdir, "summary.json")

  host_state, epoch, batch_in_epoch = exp.initial_state, 0, 0
  if checkpointer.latest_step() is not None:
    host_state, meta = checkpointer.restore(abstract(exp.initial_state))
    epoch, batch_in_epoch = meta["epoch"], meta["batch_in_epoch"]
  step = int(host_state.step)
  if step >= exp.total_steps and os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
    print(f"finished run in {workdir}: {_format(summary)}", flush=True)
    checkpointer.close()
    return summary
  if step:
    print(f"resuming {workdir} at step {step} (epoch {epoch}, batch {batch_in_epoch})", flush=True)

  writer = metrics_lib.MetricsWriter(workdir, process_index=jax.process_index())
  progress = metrics_lib.ProgressBar(exp.total_steps, initial_step=step, examples_per_step=config.batch_size)
  preempted = _PreemptionFlag()
  state = exp.parallel.replicate(host_state)
  eval_metrics: dict[str, float] = {}

  def save(force: bool, metrics: Optional[dict] = None):
    host = exp.parallel.to_host(state)
    if not all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(host.params)):
      raise FloatingPointError(f"parameters are not finite at step {step}: not saved; the last good checkpoint is"
                               f" step {checkpointer.latest_step()} in {workdir}.")
    checkpointer.maybe_save(step, host, {"epoch": epoch, "batch_in_epoch": batch_in_epoch}, metrics=metrics,
                            force=force)

  try:
    while epoch < config.num_epochs:
      state = exp.start_epoch(state, epoch)
      for batch in exp.train_data.epoch(epoch, batch_in_epoch):
        state, train_metrics = exp.train_step(state, exp.parallel.shard_batch(batch))
        step += 1
        batch_in_epoch += 1
        if batch_in_epoch == exp.steps_per_epoch:
          epoch, batch_in_epoch = epoch + 1, 0
        periodic = ckpt_config.every_steps > 0 and step % ckpt_config.every_steps == 0
        log_step = step % config.log_every_steps == 0
        stop = preempted.agreed(log_step)
        if log_step or periodic or stop:
          scalars = _log_train(exp, writer, progress, step, train_metrics)
          metrics_lib.check_finite(step, scalars)  # before any save: never checkpoint a diverged state
        if periodic and batch_in_epoch:  # end-of-epoch saves wait for the evaluation below
          save(force=False)
        if stop:
          save(force=True)
          checkpointer.wait_until_finished()
          print(f"SIGTERM: saved step {step} in {workdir}; rerun the same command to resume.", flush=True)
          sys.exit(PREEMPTED_EXIT_CODE)
        if batch_in_epoch == 0:
          break  # the epoch is over: evaluate before the next one
      eval_metrics = {f"eval/{k}": v for k, v in exp.evaluate(state).items()}
      writer.write(step, dict(eval_metrics, epoch=epoch))
      save(force=True, metrics=eval_metrics)  # every epoch end: a candidate for the best checkpoint
  finally:
    preempted.restore()

  if not eval_metrics:  # the run had finished training but was stopped before its summary
    eval_metrics = {f"eval/{k}": v for k, v in exp.evaluate(state).items()}
  checkpointer.wait_until_finished()
  summary = dict(eval_metrics, step=step, epochs=epoch, best_step=checkpointer.best_step())
  checkpointer.close()
  progress.close(_format(summary))
  writer.close()
  final = exp.parallel.to_host(state)
  if jax.process_index() == 0:
    summary["curves_png"] = plots.plot_curves(os.path.join(workdir, "metrics.jsonl"),
                                              os.path.join(workdir, "curves.png"))
    if exp.position_limits:
      summary["kernels_png"] = plots.plot_dcls_kernels(final.params, exp.position_limits,
                                                       os.path.join(workdir, "kernels.png"))
    with open(summary_path, "w") as f:
      json.dump(summary, f, indent=1)
  print(f"done: {_format(summary)}; checkpoints, metrics and plots in {workdir}", flush=True)
  return summary


def _log_train(exp: Experiment, writer, progress, step: int, train_metrics) -> dict[str, float]:
  scalars = {f"train/{k}": float(v) for k, v in exp.parallel.to_host(train_metrics).items()}
  for name, schedule in exp.schedules.items():
    scalars[f"train/{name}"] = float(schedule(step - 1))
  writer.write(step, scalars)
  progress.update(step, loss=scalars["train/loss"], **{k: scalars[f"train/{k}"] for k in exp.schedules})
  return scalars


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)


def _format(summary: dict) -> str:
  return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()
                   if not k.endswith("_png"))


class _PreemptionFlag:
  """Set by SIGTERM; the loop then saves and exits at a step boundary all processes agree on.

  One process: the next step. Several: the next logging step where any process has the flag (an all-gather of
  the flags, so every process saves the same step, as orbax requires).
  """

  def __init__(self):
    self._raised = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._raised = True

  def agreed(self, log_step: bool) -> bool:
    if jax.process_count() == 1:
      return self._raised
    return log_step and bool(multihost_utils.process_allgather(np.array(self._raised)).any())

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)
