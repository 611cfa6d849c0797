"""Trains an experiment: ``python -m train --config configs/<experiment>.py --workdir DIR [--config.field=value]``.

Resumes from the latest checkpoint in DIR; reports and exits if the run there has finished.
"""
from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

from train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; the progress bar says what matters
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
