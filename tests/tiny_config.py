"""The main job's config shrunk for tests: a tiny DCLS ConvNeXt, a 512-image slice of the digits, 8-image batches.

Used as ``python -m train --config tests/tiny_config.py --workdir W`` by tests/test_train.py.
"""
from configs import digits_convnext_dcls


def get_config():
  c = digits_convnext_dcls.get_config()
  c.num_epochs = 3
  c.batch_size = 16
  c.log_every_steps = 4
  c.model.depths = (1, 1)
  c.model.dims = (8, 16)
  c.model.drop_path_rate = 0.0  # the multi-device equality test needs a dropout-free model
  c.dataset.train_split = "train[:256]"
  c.dataset.eval_split = "test[:64]"
  c.schedule.warmup_epochs = 1
  c.optimizer.learning_rate = 1e-2
  c.checkpoint.every_steps = 6
  c.checkpoint.max_to_keep = 3
  return c
