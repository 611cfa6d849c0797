"""Metrics file and TensorBoard events, the progress line, the NaN stop, and the PNG plots."""
import io
import json
import os
import struct

import jax.numpy as jnp
import pytest
from flax import nnx
from tensorboardX.proto import event_pb2

from dcls_jax import nnx as dcls_nnx
from dcls_jax import optim as dcls_optim
from train.metrics import MetricsWriter, ProgressBar, check_finite, read_metrics
from train.plots import plot_curves, plot_dcls_kernels

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tensorboard_scalars(directory):
  """(step, tag, value) of every scalar in the event files of ``directory`` (TFRecord framing)."""
  scalars = []
  for name in os.listdir(directory):
    with open(os.path.join(directory, name), "rb") as file:
      data = file.read()
    position = 0
    while position < len(data):
      (length,) = struct.unpack("<Q", data[position:position + 8])
      event = event_pb2.Event.FromString(data[position + 12:position + 12 + length])
      scalars += [(event.step, value.tag, value.simple_value) for value in event.summary.value]
      position += 12 + length + 4
  return scalars


def test_metrics_file_holds_one_record_per_split(tmp_path):
  writer = MetricsWriter(tmp_path, tensorboard=False)
  writer.write(5, {"train/loss": jnp.float32(0.5), "train/learning_rate": 1e-3})
  writer.write(10, {"eval/accuracy": 0.75, "train/loss": 0.25, "epoch": 1})
  writer.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
      {"step": 5, "split": "train", "loss": 0.5, "learning_rate": 1e-3},
      {"step": 10, "split": "eval", "epoch": 1, "accuracy": 0.75},  # epoch: a field of every record
      {"step": 10, "split": "train", "epoch": 1, "loss": 0.25},
  ]
  assert not (tmp_path / "tensorboard").exists()


def test_read_metrics_merges_steps_a_resumed_run_wrote_again(tmp_path):
  first = MetricsWriter(tmp_path, tensorboard=False)
  for step in (1, 2):
    first.write(step, {"train/loss": 1.0 / step})
  first.close()
  resumed = MetricsWriter(tmp_path, tensorboard=False)  # resumed from a checkpoint at step 1
  resumed.write(2, {"train/loss": 0.4, "train/grad_norm": 3.0})
  resumed.write(3, {"train/loss": 0.3})
  resumed.close()
  assert read_metrics(tmp_path / "metrics.jsonl") == [
      {"step": 1, "split": "train", "loss": 1.0},
      {"step": 2, "split": "train", "loss": 0.4, "grad_norm": 3.0},
      {"step": 3, "split": "train", "loss": 0.3},
  ]


def test_tensorboard_events_hold_the_scalars(tmp_path):
  writer = MetricsWriter(tmp_path)
  writer.write(5, {"train/loss": 0.5, "eval/accuracy": 0.75})
  writer.close()
  assert sorted(tensorboard_scalars(tmp_path / "tensorboard")) == [(5, "eval/accuracy", 0.75),
                                                                   (5, "train/loss", 0.5)]


def test_only_process_0_writes(tmp_path):
  writer = MetricsWriter(tmp_path / "run", process_index=1)
  writer.write(5, {"train/loss": 0.5})
  writer.close()
  assert not (tmp_path / "run").exists()


def test_scalars_need_a_split(tmp_path):
  writer = MetricsWriter(tmp_path, tensorboard=False)
  with pytest.raises(ValueError, match="scalars must hold a '<split>/<name>' like 'train/loss', got keys"):
    writer.write(1, {"loss": 0.5})
  with pytest.raises(ValueError, match="scalar names must be '<split>/<name>' like 'train/loss' or a field"):
    writer.write(1, {"/loss": 0.5})
  with pytest.raises(ValueError, match="'step' and 'split' are the record's own fields"):
    writer.write(1, {"train/loss": 0.5, "step": 3})
  writer.close()


def test_progress_lines_in_a_log_file_show_throughput_and_eta():
  stream = io.StringIO()
  times = iter([99.0, 100.0, 101.0, 101.5, 102.0, 106.0])
  bar = ProgressBar(10, examples_per_step=32, every_steps=2, stream=stream, clock=lambda: next(times))
  for step in (1, 2, 3, 4):
    bar.update(step, epoch=0, loss=0.5 / step)
  bar.update(10, epoch=2, loss=jnp.float32(0.01))
  bar.close("done: 10 steps")
  assert stream.getvalue().splitlines() == [
      "step 0/10 (0%) | -- steps/s | -- ex/s | ETA --",  # drawn at once, while step 1 compiles
      "step 2/10 (20%) | epoch 0 | loss 0.25 | 1 steps/s | 32 ex/s | ETA 0:00:08",
      "step 4/10 (40%) | epoch 0 | loss 0.125 | 1.5 steps/s | 48 ex/s | ETA 0:00:04",
      "step 10/10 (100%) | epoch 2 | loss 0.01 | 1.5 steps/s | 48 ex/s | ETA 0:00:00",
      "done: 10 steps",
  ]


def test_progress_line_on_a_terminal_is_redrawn_in_place():
  class Terminal(io.StringIO):

    def isatty(self):
      return True

  stream = Terminal()
  times = iter([-1.0, 0.0, 0.05, 0.2])
  bar = ProgressBar(4, initial_step=1, examples_per_step=8, stream=stream, clock=lambda: next(times))
  bar.update(2, loss=1.0, examples_seen=123456789)
  bar.update(3, loss=1.0)  # within 0.1 s of the last drawing: not drawn
  bar.update(4, loss=1.0)
  assert "\n" not in stream.getvalue()
  bar.close("finished")
  step_2 = "step 2/4 (50%) | loss 1 | examples_seen 123456789 | -- steps/s | -- ex/s | ETA --"
  step_4 = "step 4/4 (100%) | loss 1 | 10 steps/s | 80 ex/s | ETA 0:00:00"
  assert stream.getvalue().split("\r")[1:] == [
      "step 1/4 (25%) | -- steps/s | -- ex/s | ETA --",
      step_2,
      step_4.ljust(len(step_2)) + "\nfinished\n",  # blanks erase the end of the longer line
  ]


def test_progress_bar_bad_arguments():
  with pytest.raises(ValueError, match="initial_step must be in"):
    ProgressBar(10, initial_step=11, examples_per_step=1)
  with pytest.raises(ValueError, match="examples_per_step must be >= 1"):
    ProgressBar(10, examples_per_step=0)


def test_check_finite_names_the_bad_metrics():
  check_finite(3, {"train/loss": 0.5, "train/grad_norm": jnp.float32(2.0)})
  with pytest.raises(FloatingPointError, match=r"^train/loss is nan at step 12: the run stops here"):
    check_finite(12, {"train/loss": jnp.float32(float("nan")), "train/learning_rate": 0.1})
  with pytest.raises(FloatingPointError, match=r"^train/loss is inf, train/grad_norm is -inf at step 4"):
    check_finite(4, {"train/loss": float("inf"), "train/grad_norm": float("-inf")})


def assert_png(path):
  with open(path, "rb") as file:
    assert file.read(8) == PNG_SIGNATURE
  assert os.path.getsize(path) > 5000  # a drawn figure, not an empty canvas


def test_plot_curves(tmp_path):
  writer = MetricsWriter(tmp_path, tensorboard=False)
  for step in range(1, 21):
    writer.write(step, {"train/loss": 1 / step, "train/learning_rate": 1e-3 * min(1, step / 5)})
    if step % 10 == 0:
      writer.write(step, {"eval/loss": 2 / step, "eval/accuracy": step / 25, "epoch": step // 10})
  writer.close()
  out = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "plots" / "curves.png")
  assert out == str(tmp_path / "plots" / "curves.png")
  assert_png(out)


def test_plot_curves_of_an_empty_file(tmp_path):
  (tmp_path / "metrics.jsonl").write_text("")
  with pytest.raises(ValueError, match="holds no metrics"):
    plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")


class DclsNet(nnx.Module):
  """A 2-D gauss conv in a list, a 1-D v1 delay conv and a partial (dense H, learnable W) conv."""

  def __init__(self):
    self.blocks = nnx.List([dcls_nnx.DclsConv(3, 3, 4, (7, 9), feature_group_count=3, rngs=nnx.Rngs(0))])
    self.delays = dcls_nnx.DclsConv(2, 4, 3, 11, version="v1", rngs=nnx.Rngs(1))
    self.partial = dcls_nnx.PartialDclsConv(2, 2, 3, (3,), 7, rngs=nnx.Rngs(2))


def test_plot_dcls_kernels_of_1d_and_2d_layers(tmp_path):
  model = DclsNet()
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  out = plot_dcls_kernels(params, dcls_optim.dcls_position_limits(model), tmp_path / "kernels.png",
                          max_channels=2)
  assert_png(out)


def test_plot_dcls_kernels_bad_input(tmp_path):
  model = DclsNet()
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  limits = dcls_optim.dcls_position_limits(model)
  del limits[("delays", "positions")]
  with pytest.raises(ValueError, match=r"position_limits has no entry \('delays', 'positions'\)"):
    plot_dcls_kernels(params, limits, tmp_path / "kernels.png")
  with pytest.raises(ValueError, match="params hold no DCLS layer"):
    plot_dcls_kernels({"dense": {"kernel": jnp.ones((2, 2))}}, {}, tmp_path / "kernels.png")
