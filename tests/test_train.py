"""The training framework end to end: ``python -m train`` on the tiny digits config (tests/tiny_config.py).

Specification:
* a few epochs on 8 devices give the parameters of 1 device (pmap and shard_map alike);
* a run killed with SIGKILL at any point and rerun ends bitwise equal to an uninterrupted run;
* SIGTERM saves a checkpoint and exits with status 143; rerunning resumes and ends bitwise equal;
* rerunning a finished run reports it without training; ``python -m train.eval`` evaluates the checkpoint;
* bad configs fail with errors naming the field.

Each run is a subprocess (device count is fixed when JAX starts; signals need a process of their own).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import digits_convnext_dcls
from tests import tiny_config
from train import checkpointing
from train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _command(workdir, data_dir, *overrides, module="train"):
  return [sys.executable, "-m", module, "--config", "tests/tiny_config.py", "--workdir", str(workdir),
          f"--config.dataset.data_dir={data_dir}", *overrides]


def _env(devices=1):
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.pop("JAX_PLATFORMS", None)
  return env


def _train(workdir, data_dir, *overrides, devices=1):
  done = subprocess.run(_command(workdir, data_dir, *overrides), cwd=ROOT, env=_env(devices), capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return done


def _final_params(workdir, data_dir):
  """The latest checkpoint's parameters, as a flat {path: array}."""
  config = tiny_config.get_config()
  config.dataset.data_dir = data_dir
  exp = trainer.Experiment(config)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1, max_to_keep=1,
                                    async_save=False)
  state, meta = ckpt.restore(trainer.abstract(exp.initial_state))
  ckpt.close()
  flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
  return int(state.step), meta, {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def _wait_for_checkpoint(workdir, process, timeout=300):
  ckpt_dir = os.path.join(workdir, "checkpoints")
  start = time.time()
  while time.time() - start < timeout:
    if os.path.isdir(ckpt_dir) and any(name.isdigit() for name in os.listdir(ckpt_dir)):
      return
    assert process.poll() is None, process.communicate()[1][-3000:]
    time.sleep(0.05)
  raise TimeoutError("no checkpoint appeared")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir):
  """One uninterrupted single-device run: (workdir, stdout, final step, params)."""
  workdir = tmp_path_factory.mktemp("reference")
  done = _train(workdir, data_dir)
  step, _, params = _final_params(workdir, data_dir)
  return workdir, done.stdout, step, params


def test_a_run_trains_checkpoints_logs_and_draws(reference_run):
  workdir, stdout, step, _ = reference_run
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["step"] == step == 3 * (256 // 16)
  assert "done:" in stdout and str(workdir) in stdout
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [r for r in records if r["split"] == "train"]
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["epoch"] for r in evals] == [1, 2, 3]
  assert evals[-1]["loss"] < evals[0]["loss"]  # it learns (3 epochs of a tiny model: slowly)
  assert evals[-1]["accuracy"] == summary["eval/accuracy"]
  assert {"loss", "accuracy", "lr", "lr_positions", "grad_norm"} <= set(train[0])
  for png in ("curves.png", "kernels.png"):
    assert os.path.getsize(os.path.join(workdir, png)) > 1000


def test_the_main_job_reaches_95_percent(tmp_path, data_dir):
  """README's first Quickstart command, on a fresh workdir: >= 95% test accuracy (measured: 96.1%, 50 s)."""
  done = subprocess.run([sys.executable, "-m", "train", "--config", "configs/digits_convnext_dcls.py", "--workdir",
                         str(tmp_path), f"--config.dataset.data_dir={data_dir}"], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.load(open(os.path.join(tmp_path, "summary.json")))["eval/accuracy"] >= 0.95


def test_rerunning_a_finished_run_reports_it(reference_run, data_dir):
  workdir, _, step, params = reference_run
  done = _train(workdir, data_dir)
  assert "finished run" in done.stdout
  assert _final_params(workdir, data_dir)[0] == step


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_eight_devices_match_one(reference_run, tmp_path, data_dir, mode):
  _, _, step, params = reference_run
  _train(tmp_path, data_dir, f"--config.parallel={mode}", devices=8)
  step8, _, params8 = _final_params(tmp_path, data_dir)
  assert step8 == step
  for name, value in params.items():  # same maths, other summation order: float32 round-off only
    np.testing.assert_allclose(params8[name], value, rtol=2e-4, atol=2e-5, err_msg=name)


def _start_and_wait_for_a_checkpoint(workdir, data_dir) -> subprocess.Popen:
  process = subprocess.Popen(_command(workdir, data_dir), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(workdir, process)
  return process


def _resume_and_compare(workdir, data_dir, reference_run):
  """Reruns the interrupted run to its end: the same final step and bitwise the same parameters."""
  _, _, step, params = reference_run
  _train(workdir, data_dir)
  resumed_step, _, resumed = _final_params(workdir, data_dir)
  assert resumed_step == step
  for name, value in params.items():
    np.testing.assert_array_equal(resumed[name], value, err_msg=name)


def test_sigkill_and_resume_is_bitwise_identical(reference_run, tmp_path, data_dir):
  process = _start_and_wait_for_a_checkpoint(tmp_path, data_dir)
  process.send_signal(signal.SIGKILL)
  process.communicate()
  assert process.returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(tmp_path, "summary.json"))  # killed mid-run
  _resume_and_compare(tmp_path, data_dir, reference_run)


def test_sigterm_saves_then_resumes_bitwise_identical(reference_run, tmp_path, data_dir):
  process = _start_and_wait_for_a_checkpoint(tmp_path, data_dir)
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == trainer.PREEMPTED_EXIT_CODE, stderr[-3000:]
  saved_step = int(stdout.split("SIGTERM: saved step ")[1].split()[0])
  assert _final_params(tmp_path, data_dir)[0] == saved_step < reference_run[2]
  _resume_and_compare(tmp_path, data_dir, reference_run)


def test_eval_command_reports_the_checkpoint(reference_run, data_dir):
  workdir, _, step, _ = reference_run
  done = subprocess.run(_command(workdir, data_dir, module="train.eval"), cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert f"step {step}: " in done.stdout
  assert f"eval/accuracy={summary['eval/accuracy']:.4f}" in done.stdout


@pytest.mark.parametrize("field, value, message", [
    ("model.name", "resnet", "config.model.name='resnet'"),
    ("dataset.name", "imagenet21k", "imagenet21k"),
    ("batch_size", 12, "config.batch_size=12: expected a positive multiple of the device count 8"),
    ("parallel", "pjit", "config.parallel='pjit'"),
])
def test_bad_configs_name_the_field(tmp_path, data_dir, field, value, message):
  done = subprocess.run(_command(tmp_path, data_dir, f"--config.{field}={value}"), cwd=ROOT, env=_env(8),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode != 0
  assert message in done.stderr


def test_a_missing_field_is_named():
  config = digits_convnext_dcls.get_config()
  del config.optimizer["learning_rate"]
  with pytest.raises(ValueError, match=r"config.optimizer.learning_rate is missing"):
    trainer.check_config(config)


def test_a_diverging_run_stops_with_a_clear_message_and_keeps_good_checkpoints(tmp_path, data_dir):
  done = subprocess.run(_command(tmp_path, data_dir, "--config.optimizer.name=sgd",
                                 "--config.optimizer.learning_rate=1e30", "--config.optimizer.weight_decay=0",
                                 "--config.schedule.name=constant"),
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert done.returncode != 0
  assert "FloatingPointError" in done.stderr
  assert any(message in done.stderr for message in ("parameters are not finite at step", "is nan at step",
                                                      "is inf at step"))
  ckpt_dir = os.path.join(tmp_path, "checkpoints")
  if os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir)):
    _, _, params = _final_params(tmp_path, data_dir)
    assert all(np.all(np.isfinite(v)) for v in params.values())


def test_two_processes_match_one(reference_run, tmp_path, data_dir):
  """Multi-host on one machine: 2 CPU processes x 2 devices, each reading its own shard, one checkpoint."""
  _, _, step, params = reference_run
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  processes = [
      subprocess.Popen(_command(tmp_path, data_dir, f"--config.distributed.coordinator_address=localhost:{port}",
                                "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"),
                       cwd=ROOT, env=_env(devices=2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  for process in processes:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
  step2, _, params2 = _final_params(tmp_path, data_dir)
  assert step2 == step
  for name, value in params.items():
    np.testing.assert_allclose(params2[name], value, rtol=2e-4, atol=2e-5, err_msg=name)
