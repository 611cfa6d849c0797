"""Evaluates a run's checkpoint: ``python -m train.eval --config C --workdir DIR [--step N | --best]``.

Prints the eval metrics of the latest (default), best or given checkpoint of DIR and returns them.
"""
import os

from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

from train import checkpointing
from train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory (holds checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_BEST = flags.DEFINE_bool("best", False, "Evaluate the best checkpoint by config.checkpoint.best_metric.")
flags.mark_flags_as_required(["config", "workdir"])


def evaluate_checkpoint(config, workdir: str, *, step=None, best: bool = False) -> dict[str, float]:
  exp = trainer.Experiment(config)
  ckpt = config.checkpoint
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), every_steps=ckpt.every_steps, max_to_keep=ckpt.max_to_keep,
      best_metric=ckpt.get("best_metric"), best_mode=ckpt.get("best_mode", "max"), async_save=False)
  if best:
    step = checkpointer.best_step()
  if step is None and checkpointer.latest_step() is None:
    raise ValueError(f"--workdir={workdir}: no checkpoint in {workdir}/checkpoints.")
  host_state, _ = checkpointer.restore(trainer.abstract(exp.initial_state), step=step)
  checkpointer.close()
  metrics = exp.evaluate(exp.parallel.replicate(host_state))
  print(f"step {int(host_state.step)}: " + ", ".join(f"eval/{k}={v:.4f}" for k, v in metrics.items()), flush=True)
  return metrics


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; the progress bar says what matters
  evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, step=_STEP.value, best=_BEST.value)


if __name__ == "__main__":
  app.run(main)
