"""The per-device training and evaluation steps, pure functions of (state, batch).

Both steps run on ONE device's share of the global batch and talk to the other devices only through collectives
over the named axis ``AXIS`` ('data'): ``lax.pmean`` of gradients and metrics, ``lax.psum`` of evaluation sums
(and, inside the model, BatchNorm layers built with ``axis_name='data'`` synchronise their statistics). So the very
same function runs under ``jax.pmap(..., axis_name='data')`` and under ``jax.shard_map`` on a ('data',) mesh
(``train/parallel.py``), on one device or many.

The model is a Flax NNX module split once into ``graphdef`` + parameters (``nnx.Param``) + batch statistics
(``nnx.BatchStat``) + the rest (RNG streams); the steps merge them back per call (trace time only). Models draw
dropout / drop-path masks from the NNX stream 'dropout', reseeded every step with a key derived from (seed, step,
device index), so a resumed run draws exactly the masks an uninterrupted one would.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax import struct
from jax import lax

from train import optimizers
from train import tasks as tasks_lib

AXIS = "data"


@struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data position (which the checkpoint's meta holds).

  step: int32 scalar, optimiser updates applied so far. params / batch_stats / ema_params: nested dicts of arrays
  (``nnx.to_pure_dict(state)``); batch_stats is {} without BatchNorm, ema_params None without EMA.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any = None


class Model(struct.PyTreeNode):
  """A split NNX model: ``apply`` runs it on pure parameter dicts."""
  graphdef: Any = struct.field(pytree_node=False)
  rest: Any  # the other state (RNG streams) as a pure dict: constant, reseeded per call. Pure, so that merging
  # creates its Variables inside the caller's trace (merged from Variables, NNX refuses their mutation under jit).

  @classmethod
  def split(cls, module: nnx.Module) -> tuple["Model", Any, Any]:
    """-> (model, params, batch_stats), the last two as pure nested dicts."""
    graphdef, params, batch_stats, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    return cls(graphdef, nnx.to_pure_dict(rest)), nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)

  def module(self, params, batch_stats) -> nnx.Module:
    return nnx.merge(self.graphdef, params, batch_stats, self.rest)

  def apply(self, params, batch_stats, inputs, *, train: bool, dropout_key: Optional[jax.Array] = None):
    """-> (outputs, new batch_stats). ``train``: dropout / drop path on, BatchNorm on batch statistics."""
    module = self.module(params, batch_stats)
    if train:
      nnx.reseed(module, dropout=dropout_key)
      module.train()
    else:
      module.eval()
    outputs = module(inputs)
    return outputs, nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))


def make_train_step(model: Model, tx: optax.GradientTransformation, task: tasks_lib.Task, *, seed: int,
                    ema_decay: float = 0.0, input_key: str = "image",
                    extra_loss: Optional[Callable[[Any, jax.Array], jax.Array]] = None):
  """Returns ``train_step(state, batch) -> (state, metrics)`` for one device.

  Args:
    model, tx, task: the split model, the optimiser, the loss.
    seed: the run's seed; dropout keys are fold_in(seed, step, device).
    ema_decay: > 0 keeps ``state.ema_params`` = decay * ema + (1 - decay) * params after every update.
    input_key: the batch entry fed to the model.
    extra_loss: optional ``f(params, step) -> scalar`` added to the task loss (e.g. the DCLS repulsive loss).

  metrics (averaged over devices): 'loss' (the optimised objective), the task's metrics, 'grad_norm'.
  """
  base_key = jax.random.key(seed)

  def train_step(state: TrainState, batch: dict):
    dropout_key = jax.random.fold_in(jax.random.fold_in(base_key, state.step), lax.axis_index(AXIS))

    def loss_fn(params):
      outputs, batch_stats = model.apply(params, state.batch_stats, batch[input_key], train=True,
                                         dropout_key=dropout_key)
      loss, metrics = task.loss(outputs, batch)
      if extra_loss is not None:
        loss = loss + extra_loss(params, state.step)
      return loss, (metrics, batch_stats)

    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, AXIS)
    # Running statistics: identical on every device with synchronised BatchNorm, else averaged (as flax examples do);
    # counters (BatchNorm's num_batches_tracked) are equal everywhere and stay integers.
    batch_stats = jax.tree.map(lambda v: lax.pmean(v, AXIS) if jnp.issubdtype(v.dtype, jnp.inexact) else v,
                               batch_stats)
    metrics = lax.pmean(dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads)), AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema_decay > 0:
      ema = optimizers.update_ema(ema, params, ema_decay)
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                         ema_params=ema), metrics

  return train_step


def make_eval_step(model: Model, task: tasks_lib.Task, *, use_ema: bool = False, input_key: str = "image"):
  """Returns ``eval_step(state, batch) -> (sums, per_example)`` for one device: the task's masked sums over all
  devices and, for a task with ``eval_outputs``, its per-example outputs and the batch's ``mask`` gathered from all
  devices (leading axis: the global batch, in device order); {} for a task without."""

  def eval_step(state: TrainState, batch: dict):
    params = state.ema_params if use_ema else state.params
    outputs, _ = model.apply(params, state.batch_stats, batch[input_key], train=False)
    sums = lax.psum(task.eval_sums(outputs, batch), AXIS)
    if task.eval_outputs is None:
      return sums, {}
    per_example = dict(task.eval_outputs(outputs, batch), mask=batch["mask"])
    return sums, lax.all_gather(per_example, AXIS, tiled=True)

  return eval_step


def init_state(params, batch_stats, tx: optax.GradientTransformation, *, ema: bool) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), ema_params=jax.tree.map(jnp.copy, params) if ema else None)
