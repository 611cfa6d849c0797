"""Checkpointer: what is saved, when, what is kept, and what comes back."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train.checkpointing import Checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def saved_steps(directory):
  """Complete step directories on disk."""
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def training_state():
  """Parameters, adamw state after one update and RNG key data: what the trainer checkpoints."""
  params = {"conv": {"weight": jnp.linspace(-1, 1, 6).reshape(2, 3), "positions": jnp.full((2, 2, 3), 0.5)},
            "bias": jnp.arange(3.0)}
  tx = optax.adamw(1e-2, weight_decay=0.05)
  grads = jax.tree.map(lambda p: jnp.sin(p + 1), params)
  updates, opt_state = tx.update(grads, tx.init(params), params)
  rng = jax.random.key_data(jax.random.split(jax.random.key(3))[1])
  return {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "rng": rng}


def test_round_trip_is_bitwise(tmp_path):
  state = training_state()
  meta = {"epoch": 2, "step_in_epoch": 17, "config_hash": "abc"}
  checkpointer = Checkpointer(tmp_path, every_steps=10, max_to_keep=3)
  assert checkpointer.maybe_save(10, state, meta)
  checkpointer.close()

  restored, restored_meta = Checkpointer(tmp_path, every_steps=10, max_to_keep=3).restore(state)

  assert restored_meta == meta
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_restore_picks_the_requested_step(tmp_path):
  checkpointer = Checkpointer(tmp_path, every_steps=1, max_to_keep=3)
  for step in (1, 2):
    checkpointer.maybe_save(step, {"x": jnp.full((2,), step)}, {"step": step})
  abstract = {"x": jax.ShapeDtypeStruct((2,), jnp.int32)}
  assert checkpointer.restore(abstract)[1] == {"step": 2}
  state, meta = checkpointer.restore(abstract, step=1)
  assert meta == {"step": 1} and state["x"].tolist() == [1, 1]
  with pytest.raises(ValueError, match=r"step must be one of the saved steps \[1, 2\], got 5"):
    checkpointer.restore(abstract, step=5)
  checkpointer.close()


def test_latest_step(tmp_path):
  checkpointer = Checkpointer(tmp_path, every_steps=5, max_to_keep=2)
  assert checkpointer.latest_step() is None
  with pytest.raises(FileNotFoundError, match="no checkpoint to restore"):
    checkpointer.restore({"x": np.zeros(2)})
  checkpointer.maybe_save(5, {"x": np.zeros(2)}, {})
  checkpointer.maybe_save(10, {"x": np.ones(2)}, {})
  checkpointer.close()
  assert Checkpointer(tmp_path, every_steps=5, max_to_keep=2).latest_step() == 10


def test_saves_every_steps_and_skips_steps_already_saved(tmp_path):
  checkpointer = Checkpointer(tmp_path, every_steps=3, max_to_keep=10)
  saved = [step for step in range(1, 8) if checkpointer.maybe_save(step, {"x": np.zeros(1)}, {})]
  assert saved == [3, 6]
  assert not checkpointer.maybe_save(6, {"x": np.zeros(1)}, {}, force=True)
  checkpointer.wait_until_finished()
  assert saved_steps(tmp_path) == [3, 6]
  checkpointer.close()


def test_force_saves_off_schedule(tmp_path):
  checkpointer = Checkpointer(tmp_path, every_steps=100, max_to_keep=2, async_save=False)
  assert not checkpointer.maybe_save(7, {"x": np.zeros(1)}, {})
  assert checkpointer.maybe_save(7, {"x": np.zeros(1)}, {}, force=True)
  assert saved_steps(tmp_path) == [7]
  checkpointer.close()


def test_every_steps_zero_saves_only_forced(tmp_path):
  checkpointer = Checkpointer(tmp_path, every_steps=0, max_to_keep=2)
  assert not checkpointer.maybe_save(1, {"x": np.zeros(1)}, {})
  assert checkpointer.maybe_save(2, {"x": np.zeros(1)}, {}, force=True)
  checkpointer.close()


def test_keeps_the_latest_n_plus_the_best(tmp_path):
  checkpointer = Checkpointer(tmp_path, every_steps=1, max_to_keep=2, best_metric="eval/accuracy")
  accuracies = {1: 0.5, 2: 0.9, 3: None, 4: 0.3, 5: None}
  for step, accuracy in accuracies.items():
    metrics = None if accuracy is None else {"eval/accuracy": accuracy, "eval/loss": 1 - accuracy}
    checkpointer.maybe_save(step, {"x": np.full(1, step)}, {}, metrics=metrics)
  checkpointer.wait_until_finished()
  assert saved_steps(tmp_path) == [2, 4, 5]
  assert checkpointer.best_step() == 2
  checkpointer.close()


def test_saves_an_improved_best_off_schedule_and_remembers_it(tmp_path):
  kwargs = dict(every_steps=100, max_to_keep=1, best_metric="eval/loss", best_mode="min")
  checkpointer = Checkpointer(tmp_path, **kwargs)
  assert checkpointer.maybe_save(10, {"x": np.zeros(1)}, {}, metrics={"eval/loss": 2.0})
  assert checkpointer.maybe_save(20, {"x": np.zeros(1)}, {}, metrics={"eval/loss": 1.5})
  assert not checkpointer.maybe_save(30, {"x": np.zeros(1)}, {}, metrics={"eval/loss": 1.7})
  checkpointer.close()

  resumed = Checkpointer(tmp_path, **kwargs)
  assert resumed.best_step() == 20
  assert not resumed.maybe_save(40, {"x": np.zeros(1)}, {}, metrics={"eval/loss": 1.6})
  assert resumed.maybe_save(50, {"x": np.zeros(1)}, {}, metrics={"eval/loss": 1.0})
  resumed.wait_until_finished()
  assert resumed.best_step() == 50 and saved_steps(tmp_path) == [50]
  resumed.close()


@pytest.mark.parametrize("kwargs, message", [
    (dict(every_steps=-1, max_to_keep=1), "every_steps must be an int >= 0"),
    (dict(every_steps=1, max_to_keep=0), "max_to_keep must be an int >= 1"),
    (dict(every_steps=1, max_to_keep=1, best_mode="best"), "best_mode must be one of"),
])
def test_bad_arguments(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    Checkpointer(tmp_path, **kwargs)


def test_bad_metrics_and_meta(tmp_path):
  checkpointer = Checkpointer(tmp_path, every_steps=1, max_to_keep=1, best_metric="eval/accuracy")
  with pytest.raises(ValueError, match="metrics must hold best_metric 'eval/accuracy', got keys"):
    checkpointer.maybe_save(1, {"x": np.zeros(1)}, {}, metrics={"eval/loss": 1.0})
  with pytest.raises(ValueError, match="meta must be a JSON-serialisable dict"):
    checkpointer.maybe_save(1, {"x": np.zeros(1)}, {"epoch": object()})
  checkpointer.close()


def run_python(code, **env):
  """Runs ``code`` in a fresh interpreter from the repository root; returns the completed process."""
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                        env={**os.environ, **env}, timeout=120)


def test_restore_gives_the_shardings_of_abstract_state(tmp_path):
  code = f"""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from train.checkpointing import Checkpointer

    mesh = jax.make_mesh((8,), ("data",))
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    state = {{"w": jax.device_put(jnp.arange(16.0).reshape(8, 2), replicated),
              "b": jax.device_put(jnp.arange(8.0), split)}}
    checkpointer = Checkpointer({str(tmp_path)!r}, every_steps=1, max_to_keep=1)
    checkpointer.maybe_save(1, state, {{}})
    checkpointer.close()
    wanted = {{"w": replicated, "b": replicated}}  # b was saved split over devices
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, wanted)
    restored, _ = Checkpointer({str(tmp_path)!r}, every_steps=1, max_to_keep=1).restore(abstract)
    print(json.dumps({{
        "devices": jax.device_count(),
        "replicated": [restored[k].sharding == replicated for k in ("w", "b")],
        "equal": [bool(np.array_equal(restored[k], state[k])) for k in ("w", "b")]}}))
  """
  result = run_python(code, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout.splitlines()[-1]) == {"devices": 8, "replicated": [True, True],
                                                        "equal": [True, True]}


def test_a_save_killed_in_flight_leaves_the_last_complete_checkpoint(tmp_path):
  code = f"""
    import os, signal
    import jax.numpy as jnp
    from train.checkpointing import Checkpointer

    checkpointer = Checkpointer({str(tmp_path)!r}, every_steps=1, max_to_keep=5)
    checkpointer.maybe_save(1, {{"x": jnp.zeros(8_000_000)}}, {{"step": 1}})
    checkpointer.wait_until_finished()
    checkpointer.maybe_save(2, {{"x": jnp.ones(8_000_000)}}, {{"step": 2}})  # 32 MB, written in the background
    os.kill(os.getpid(), signal.SIGKILL)
  """
  result = run_python(code, JAX_PLATFORMS="cpu")
  assert result.returncode == -signal.SIGKILL, result.stderr
  assert sorted(os.listdir(tmp_path)) == ["1", "2.orbax-checkpoint-tmp"]

  checkpointer = Checkpointer(tmp_path, every_steps=1, max_to_keep=5)
  assert checkpointer.latest_step() == 1
  state, meta = checkpointer.restore({"x": jax.ShapeDtypeStruct((8_000_000,), jnp.float32)})
  assert meta == {"step": 1} and not np.any(state["x"])
  assert sorted(os.listdir(tmp_path)) == ["1"]  # the half checkpoint is cleaned up
  checkpointer.close()
