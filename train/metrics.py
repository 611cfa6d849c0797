"""What a run reports: scalars to a JSONL file and TensorBoard, a progress line, a stop on NaN / inf.

Scalars are named ``<split>/<name>``, e.g. ``train/loss``, ``train/learning_rate``, ``eval/accuracy``; a name
without a split (``epoch``) is a field of every record of its write. The metrics file ``<workdir>/metrics.jsonl``
holds one JSON record per split per write::

  {"step": 120, "split": "train", "loss": 0.412, "learning_rate": 0.001}
  {"step": 120, "split": "eval", "epoch": 3, "accuracy": 0.951, "loss": 0.17}

The file is appended to, so a resumed run continues it; ``read_metrics`` merges the records a resumed run wrote
again for the same (split, step).
"""
from __future__ import annotations

import json
import math
import numbers
import os
import sys
import time
from typing import Any, Callable, Mapping, Optional, TextIO

import tensorboardX

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _plain(value: Any) -> int | float:
  """A Python int for integers (epoch), else a Python float (jax / numpy scalars included)."""
  return int(value) if isinstance(value, numbers.Integral) else float(value)


class MetricsWriter:
  """Writes scalars to ``<workdir>/metrics.jsonl`` and TensorBoard event files in ``<workdir>/tensorboard``.

  Only the process with ``process_index`` 0 writes; on the others every method does nothing, so all processes can
  call it alike. Each write is flushed to the JSONL file (a killed run keeps its metrics); TensorBoard events are
  flushed every two minutes and on ``close``.
  """

  def __init__(self, workdir: str | os.PathLike, *, process_index: int = 0, tensorboard: bool = True):
    self.path = os.path.join(workdir, METRICS_FILE)
    self._file: Optional[TextIO] = None
    self._tensorboard: Optional[tensorboardX.SummaryWriter] = None
    if process_index != 0:
      return
    os.makedirs(workdir, exist_ok=True)
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      self._tensorboard = tensorboardX.SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Records ``scalars`` (``{'<split>/<name>' or '<field>': number}``, numbers or 0-d arrays) at ``step``."""
    fields = {key: _plain(value) for key, value in scalars.items() if "/" not in key}
    if "step" in fields or "split" in fields:
      raise ValueError(f"'step' and 'split' are the record's own fields, not scalars; got keys {sorted(scalars)}")
    records: dict[str, dict[str, int | float]] = {}
    for key, value in scalars.items():
      split, slash, name = key.partition("/")
      if slash and not (split and name):
        raise ValueError(f"scalar names must be '<split>/<name>' like 'train/loss' or a field like 'epoch', "
                         f"got {key!r}")
      if slash:
        records.setdefault(split, dict(fields))[name] = _plain(value)
    if not records:
      raise ValueError(f"scalars must hold a '<split>/<name>' like 'train/loss', got keys {sorted(scalars)}")
    if self._file is None:
      return
    for split, values in records.items():
      self._file.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
    self._file.flush()
    if self._tensorboard is not None:
      for key, value in scalars.items():
        self._tensorboard.add_scalar(key, _plain(value), int(step))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tensorboard is not None:
      self._tensorboard.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
  """The records of a metrics file in the order they were first written.

  Records of the same (split, step) are merged, later values winning: a run resumed from a checkpoint rewrites
  the steps between that checkpoint and the interruption.
  """
  merged: dict[tuple[str, int], dict] = {}
  with open(path, encoding="utf-8") as file:
    for line in file:
      if line.strip():
        record = json.loads(line)
        merged.setdefault((record["split"], record["step"]), {}).update(record)
  return list(merged.values())


def check_finite(step: int, scalars: Mapping[str, Any]) -> None:
  """Raises FloatingPointError naming every NaN or infinite scalar, e.g. ``train/loss is nan at step 12``.

  Fetches the values to the host: call it where the scalars are fetched anyway (the logging steps), and before
  saving a checkpoint at that step, so that no checkpoint holds the diverged state.
  """
  bad = [f"{name} is {float(value)}" for name, value in scalars.items() if not math.isfinite(float(value))]
  if bad:
    raise FloatingPointError(f"{', '.join(bad)} at step {step}: the run stops here; the checkpoints saved "
                             f"before this step are kept")


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}"


class ProgressBar:
  """Progress of a run as one line: step/total, the given scalars, steps/s, examples/s and ETA::

    step 300/1000 (30%) | epoch 2 | loss 0.4123 | learning_rate 0.001 | 41.5 steps/s | 5312 ex/s | ETA 0:00:17

  The line of ``initial_step`` is drawn at once, while the first step compiles. On a terminal the line is redrawn
  in place (``\\r``) at most 10 times a second; otherwise (a log file) a plain line is printed every
  ``every_steps`` steps and at the last step. Throughput is averaged from the first ``update``, so the first
  step's compilation is left out.

  Args:
    total_steps: the step the run ends at.
    initial_step: the step the run starts from (a resumed run).
    examples_per_step: the global batch size.
    every_steps: print interval when ``stream`` is not a terminal.
    stream: where to print.
    clock: seconds, monotonic (``time.perf_counter``).
  """

  REDRAW_SECONDS = 0.1

  def __init__(self, total_steps: int, *, initial_step: int = 0, examples_per_step: int, every_steps: int = 100,
               stream: TextIO = sys.stderr, clock: Callable[[], float] = time.perf_counter):
    if total_steps < 1:
      raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= initial_step <= total_steps:
      raise ValueError(f"initial_step must be in [0, total_steps={total_steps}], got {initial_step}")
    if examples_per_step < 1:
      raise ValueError(f"examples_per_step must be >= 1, got {examples_per_step}")
    if every_steps < 1:
      raise ValueError(f"every_steps must be >= 1, got {every_steps}")
    self.total_steps = total_steps
    self.examples_per_step = examples_per_step
    self.every_steps = every_steps
    self._stream = stream
    self._clock = clock
    self._on_terminal = stream.isatty()
    self._first: Optional[tuple[int, float]] = None  # (step, time) of the first update
    self._last_draw = -math.inf
    self._line_width = 0  # of the line drawn in place, 0 when none
    self._draw(initial_step, clock(), {})

  def update(self, step: int, **scalars: Any) -> None:
    """Reports that ``step`` is done; ``scalars`` (epoch, loss, learning_rate...) are shown as given."""
    now = self._clock()
    if self._first is None:
      self._first = (step, now)
    last = step >= self.total_steps
    due = now - self._last_draw >= self.REDRAW_SECONDS if self._on_terminal else step % self.every_steps == 0
    if last or due:
      self._draw(step, now, scalars)

  def _draw(self, step: int, now: float, scalars: Mapping[str, Any]) -> None:
    line = self._line(step, now, scalars)
    if self._on_terminal:
      self._stream.write("\r" + line.ljust(self._line_width))
      self._line_width = len(line)
    else:
      self._stream.write(line + "\n")
    self._last_draw = now
    self._stream.flush()

  def _line(self, step: int, now: float, scalars: Mapping[str, Any]) -> str:
    fields = [f"step {step}/{self.total_steps} ({100 * step // self.total_steps}%)"]
    fields += [f"{name} {value}" if isinstance(value, numbers.Integral) else f"{name} {float(value):.4g}"
               for name, value in scalars.items()]
    first_step, first_time = self._first or (step, now)
    if step > first_step and now > first_time:
      steps_per_second = (step - first_step) / (now - first_time)
      fields += [f"{steps_per_second:.3g} steps/s", f"{steps_per_second * self.examples_per_step:.0f} ex/s",
                 f"ETA {_duration((self.total_steps - step) / steps_per_second)}"]
    else:
      fields += ["-- steps/s", "-- ex/s", "ETA --"]
    return " | ".join(fields)

  def close(self, summary: str) -> None:
    """Ends the line drawn in place and prints ``summary`` (the run's final line)."""
    if self._line_width:
      self._stream.write("\n")
      self._line_width = 0
    self._stream.write(summary + "\n")
    self._stream.flush()
