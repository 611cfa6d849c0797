"""Data parallelism: run a per-device step (``train/step.py``) on every device, by ``pmap`` or ``shard_map``.

Both modes run the same per-device function, whose collectives use the axis name 'data':

* ``pmap``: ``jax.pmap(step, axis_name='data')``; replicated values carry a leading axis of local devices and the
  per-process batch is reshaped to (local devices, per-device batch, ...). The design's original mode; JAX keeps it
  working (it is implemented with shard_map since 0.8) but in maintenance mode.
* ``shard_map``: ``jax.jit(jax.shard_map(step, mesh, in_specs=(P(), P('data')), out_specs=P()))`` over a ('data',)
  mesh of all devices; replicated values are global arrays with sharding P(), the batch is one global array
  sharded along its first axis. The mode current JAX recommends.

Checkpoints and logs see one replica as host numpy (``to_host``), so the two modes read and write the same
checkpoints. Multi-process: every process runs the same program on its own devices and its own slice of the global
batch (``process_batch_size``); ``initialize_distributed`` connects the processes first.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from train.step import AXIS

MODES = ("pmap", "shard_map")


def initialize_distributed(distributed_config) -> None:
  """Calls ``jax.distributed.initialize`` when ``config.distributed.coordinator_address`` is set (or ``auto``).

  Fields: coordinator_address ('host:port'), num_processes, process_id, auto (bool: let JAX read them from the
  cluster environment: TPU pods, SLURM, ...). Must run before anything touches a JAX device. CPU processes
  exchange collectives through gloo (what lets two local CPU processes train as one job, as the tests do).
  """
  if distributed_config is None or not (distributed_config.get("auto") or
                                        distributed_config.get("coordinator_address")):
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if distributed_config.get("auto"):
    jax.distributed.initialize()
  else:
    for field in ("num_processes", "process_id"):
      if distributed_config.get(field) is None:
        raise ValueError(f"config.distributed.{field} is missing: required with coordinator_address.")
    jax.distributed.initialize(coordinator_address=distributed_config.coordinator_address,
                               num_processes=distributed_config.num_processes,
                               process_id=distributed_config.process_id)
  logging.info("process %d of %d, %d local of %d devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def process_batch_size(global_batch_size: int) -> int:
  """This process's share of the global batch; checks it splits evenly over processes and devices."""
  devices = jax.device_count()
  if global_batch_size < 1 or global_batch_size % devices:
    raise ValueError(f"config.batch_size={global_batch_size}: expected a positive multiple of the device count"
                     f" {devices} (one equal share per device).")
  return global_batch_size // jax.process_count()


class DataParallel:
  """Places state and batches on the devices and runs per-device steps there, in one of ``MODES``."""

  def __init__(self, mode: str):
    if mode not in MODES:
      raise ValueError(f"config.parallel={mode!r}: expected one of {MODES}.")
    self.mode = mode
    self.mesh = jax.make_mesh((jax.device_count(),), (AXIS,))
    self._replicated = NamedSharding(self.mesh, P())
    self._sharded = NamedSharding(self.mesh, P(AXIS))

  def replicate(self, tree) -> Any:
    """Host pytree (one replica) -> the mode's replicated device pytree."""
    if self.mode == "pmap":
      n = jax.local_device_count()
      return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._replicated, np.asarray(x)), tree)

  def shard_batch(self, batch: dict[str, np.ndarray]) -> Any:
    """This process's batch (B_process, ...) -> per-device shards."""
    if self.mode == "pmap":
      n = jax.local_device_count()
      return jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]), batch)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._sharded, x), batch)

  def to_host(self, tree) -> Any:
    """The mode's replicated device pytree -> host numpy (one replica; no cross-process traffic)."""
    def one_replica(x):
      local = np.asarray(x.addressable_shards[0].data)
      return local[0] if self.mode == "pmap" else local
    return jax.tree.map(one_replica, tree)

  def run(self, per_device_step: Callable, *, donate_state: bool = False, shard_batch: bool = True) -> Callable:
    """``per_device_step(state, batch) -> outputs`` -> the same over all devices (state replicated, batch
    sharded, or replicated if not ``shard_batch``; outputs replicated: they must be reduced over 'data' inside)."""
    donate = (0,) if donate_state else ()
    if self.mode == "pmap":
      return jax.pmap(per_device_step, axis_name=AXIS, donate_argnums=donate)
    # check_vma=False: pmap's semantics, where a gradient wrt a replicated input stays per-device until the step's
    # own pmean (with the default True, shard_map would already sum it over devices, and the pmean would not undo it).
    batch_spec = P(AXIS) if shard_batch else P()
    return jax.jit(jax.shard_map(per_device_step, mesh=self.mesh, in_specs=(P(), batch_spec), out_specs=P(),
                                 check_vma=False), donate_argnums=donate)
