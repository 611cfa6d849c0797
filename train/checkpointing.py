"""Checkpoints of a training run: periodic, best-by-metric and final, on orbax-checkpoint's CheckpointManager.

A checkpoint is one step directory ``<directory>/<step>/`` holding two items:

  state   any pytree of jax / numpy arrays: parameters, optimiser state, ``jax.random.key_data`` of the RNG...
  meta    a JSON dict: epoch, step in the epoch (the data position), config hash...

Which steps are saved and kept:

* ``maybe_save`` saves at every multiple of ``every_steps``, when ``force`` is set (the final step, SIGTERM) and
  when ``metrics[best_metric]`` beats every value saved before (so the best step is saved even when evaluation
  does not fall on a multiple of ``every_steps``);
* the ``max_to_keep`` latest checkpoints are kept, plus the best one by ``best_metric``, never deleted by
  ``max_to_keep``.

Safety: saves are asynchronous (``async_save``): ``maybe_save`` returns once the arrays are copied to host memory
and the files are written in the background into ``<step>.orbax-checkpoint-tmp``, renamed to ``<step>`` only when
complete. A process killed mid-save leaves only the tmp directory, which ``latest_step`` and ``restore`` ignore and
the next ``Checkpointer`` on the directory deletes; the last complete checkpoint stays. Hence one
``Checkpointer`` per directory at a time: a second one deletes the files of the first one's saves in flight.

Multi-process: saving and restoring are collective. Every process calls ``maybe_save``, ``restore``,
``wait_until_finished`` and ``close`` in the same order with the same ``step``, ``metrics`` and ``force`` (metrics
reduced across processes first), on a directory every process sees; orbax writes each process's shards and
commits once from process 0. A SIGTERM reaching processes at different steps must be turned into one agreed step
(``orbax.checkpoint.utils.reached_preemption``) before ``force=True``.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

BEST_MODES = ("max", "min")


class _DropMissingMetricsWarning(logging.Filter):
  """Periodic saves carry no metrics by design; orbax warns about each one when it tracks a best metric."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropMissingMetricsWarning())


def _abstract_leaf(leaf: Any) -> Any:
  """A ``jax.ShapeDtypeStruct`` as is; the shape, dtype and sharding of an array (numpy: no sharding)."""
  return leaf if isinstance(leaf, jax.ShapeDtypeStruct) else ocp.utils.to_shape_dtype_struct(leaf)


class Checkpointer:
  """Saves and restores ``(state, meta)`` checkpoints of one run in ``directory`` (see the module docstring).

  Args:
    directory: where the step directories go; created if missing.
    every_steps: periodic saves at multiples of this step; 0 = no periodic saves (forced and best only).
    max_to_keep: how many of the latest checkpoints are kept (>= 1), besides the best one.
    best_metric: the key of ``maybe_save``'s ``metrics`` that ranks checkpoints, e.g. ``'eval/accuracy'``;
      None = no best checkpoint.
    best_mode: ``'max'`` or ``'min'``: whether a larger or a smaller ``best_metric`` is better.
    async_save: write in the background (``maybe_save`` returns before the files are complete).
  """

  def __init__(self,
               directory: str | os.PathLike,
               *,
               every_steps: int,
               max_to_keep: int,
               best_metric: Optional[str] = None,
               best_mode: str = "max",
               async_save: bool = True):
    if not isinstance(every_steps, int) or every_steps < 0:
      raise ValueError(f"every_steps must be an int >= 0 (0 = no periodic saves), got {every_steps!r}")
    if not isinstance(max_to_keep, int) or max_to_keep < 1:
      raise ValueError(f"max_to_keep must be an int >= 1, got {max_to_keep!r}")
    if best_mode not in BEST_MODES:
      raise ValueError(f"best_mode must be one of {BEST_MODES}, got {best_mode!r}")
    self.every_steps = every_steps
    self.best_metric = best_metric
    self.best_mode = best_mode
    keep = [checkpoint_managers.LatestN(n=max_to_keep)]
    tracking = {}
    if best_metric is not None:
      rank = lambda metrics: metrics[best_metric]
      keep.append(checkpoint_managers.BestN(get_metric_fn=rank, reverse=best_mode == "min", n=1,
                                            keep_checkpoints_without_metrics=False))
      tracking = dict(best_fn=rank, best_mode=best_mode)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(keep),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True,
        **tracking)
    self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)
    best_step = self.best_step()
    self._best_value = None if best_step is None else self._manager.metrics(best_step)[best_metric]

  @property
  def directory(self) -> str:
    return str(self._manager.directory)

  def latest_step(self) -> Optional[int]:
    """The step of the newest checkpoint (complete or being written by this process), None if there is none."""
    return self._manager.latest_step()

  def best_step(self) -> Optional[int]:
    """The step with the best ``best_metric`` among those saved with metrics; None if none or no best_metric."""
    if self.best_metric is None:
      return None
    return self._manager.best_step()

  def _improves_best(self, value: float) -> bool:
    if self._best_value is None:
      return True
    return value > self._best_value if self.best_mode == "max" else value < self._best_value

  def maybe_save(self, step: int, state: Any, meta: dict, *, metrics: Optional[dict] = None,
                 force: bool = False) -> bool:
    """Saves ``state`` and ``meta`` as checkpoint ``step`` if it is due; returns whether it saved.

    Due: ``step`` is a multiple of ``every_steps``, or ``force``, or ``metrics[best_metric]`` beats the best saved
    so far. A step already saved is never saved again (False). ``metrics`` (scalars) are stored with the
    checkpoint to rank it (ignored without ``best_metric``), and must then hold it. With ``async_save`` it returns
    once the jax arrays of ``state`` are copied to host memory: they may then be donated to the next step.
    """
    scalars = None
    if metrics is not None and self.best_metric is not None:
      if self.best_metric not in metrics:
        raise ValueError(f"metrics must hold best_metric {self.best_metric!r}, got keys {sorted(metrics)}")
      scalars = {name: float(value) for name, value in metrics.items()}
    improves = scalars is not None and self._improves_best(scalars[self.best_metric])
    periodic = self.every_steps > 0 and step % self.every_steps == 0
    if step in self._manager.all_steps() or not (periodic or force or improves):
      return False
    try:
      json.dumps(meta)
    except TypeError as error:
      raise ValueError(f"meta must be a JSON-serialisable dict, got {meta!r}: {error}") from None
    items = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    self._manager.save(step, args=items, metrics=scalars, force=True)
    if improves:
      self._best_value = scalars[self.best_metric]
    return True

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> tuple[Any, dict]:
    """Returns ``(state, meta)`` of checkpoint ``step`` (the latest when None).

    ``abstract_state`` has the structure of the saved state; its leaves are ``jax.ShapeDtypeStruct`` or arrays,
    whose shape, dtype and sharding the restored arrays get (a state replicated on a mesh comes back replicated
    on that mesh; numpy leaves come back as numpy arrays). Waits for a save in flight first.
    """
    self._manager.wait_until_finished()
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
    if step not in self._manager.all_steps():
      raise ValueError(f"step must be one of the saved steps {list(self._manager.all_steps())}, got {step}")
    target = jax.tree.map(_abstract_leaf, abstract_state)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def wait_until_finished(self) -> None:
    """Blocks until every save in flight is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Finishes the saves in flight and releases orbax's threads."""
    self._manager.close()
