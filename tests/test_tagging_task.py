"""train.tasks.tagging: multi-label BCE, and mAP / AUC / d' over the whole evaluation set, gathered over batches and
devices with the padding dropped (the evaluator of train.trainer)."""
import json
import os
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from train import parallel, step, tagging_metrics, tasks, trainer
from train.data.pipeline import Pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bce(logits, targets):
  """Binary cross-entropy of sigmoid(logits), by its definition."""
  probabilities = 1 / (1 + np.exp(-logits))
  return -(targets * np.log(probabilities) + (1 - targets) * np.log(1 - probabilities))


def test_loss_is_the_mean_bce_with_logits_over_examples_and_classes():
  logits = np.array([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.0]], np.float32)
  labels = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
  loss, metrics = tasks.tagging().loss(jnp.asarray(logits), {"label": jnp.asarray(labels)})
  np.testing.assert_allclose(loss, bce(logits, labels).mean(), rtol=1e-6)
  assert metrics == {}
  soft = np.array([[0.3, 0.9, 0.0], [0.5, 0.5, 1.0]], np.float32)  # mixup's targets are used as given
  np.testing.assert_allclose(tasks.tagging().loss(logits, {"label": soft})[0], bce(logits, soft).mean(), rtol=1e-6)


def test_label_smoothing_moves_targets_towards_one_over_the_class_count():
  logits = np.array([[2.0, -1.0, 0.5, 0.0]], np.float32)
  labels = np.array([[1, 0, 1, 0]], np.float32)
  loss, _ = tasks.tagging(label_smoothing=0.2).loss(logits, {"label": labels})
  np.testing.assert_allclose(loss, bce(logits, 0.8 * labels + 0.2 / 4).mean(), rtol=1e-6)


def test_eval_sums_ignore_masked_examples():
  logits = np.array([[2.0, -1.0], [5.0, 5.0]], np.float32)
  labels = np.array([[1, 0], [0, 0]], np.float32)
  sums = tasks.tagging().eval_sums(logits, {"label": labels, "mask": np.array([True, False])})
  np.testing.assert_allclose(sums["loss"], bce(logits[0], labels[0]).mean(), rtol=1e-6)
  assert sums["count"] == 1


def test_bad_label_smoothing_is_named():
  with pytest.raises(ValueError, match="label_smoothing"):
    tasks.create_task({"name": "tagging", "label_smoothing": 1.0})


def test_real_examples_concatenates_batches_and_drops_the_padding():
  batches = [{"scores": np.array([[1.0], [2.0]]), "mask": np.array([True, True])},
             {"scores": np.array([[3.0], [1.0]]), "mask": np.array([True, False])}]
  gathered = tasks.real_examples(batches)
  assert list(gathered) == ["scores"]
  np.testing.assert_array_equal(gathered["scores"], [[1.0], [2.0], [3.0]])


# ---- the evaluator -----------------------------------------------------------------------------------------------

class Scores(nnx.Module):
  """A parameter-free 'model' whose logits are its input: the scores a test chooses."""

  def __call__(self, x):
    return x


# 10 clips, 2 classes, evaluated in batches of 4: the last batch is padded with clips 0 and 1 (mask 0). Per-batch
# mAPs average to another value than the mAP of the set, and counting the padded repeats would change it too.
SCORES = np.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.6], [0.1, 0.3],
                   [0.7, 0.2], [0.3, 0.9], [0.6, 0.4], [0.4, 0.8],
                   [0.5, 0.5], [0.05, 0.35]], np.float32)
TARGETS = np.array([[1, 0], [0, 1], [1, 1], [0, 0],
                    [1, 0], [0, 1], [0, 0], [1, 1],
                    [0, 1], [1, 0]], np.float32)
BATCH_SIZE = 4


def evaluate(mode: str) -> dict[str, float]:
  """``trainer.Experiment.evaluate`` of the tagging task on SCORES, with everything but the evaluation stubbed."""
  data_parallel = parallel.DataParallel(mode)
  model, params, batch_stats = step.Model.split(Scores())
  task = tasks.tagging()
  source = [{"input": scores, "label": targets} for scores, targets in zip(SCORES, TARGETS)]
  experiment = types.SimpleNamespace(
      parallel=data_parallel, task=task,
      eval_step=data_parallel.run(step.make_eval_step(model, task, input_key="input")),
      eval_data=Pipeline(source, batch_size=BATCH_SIZE, seed=0, shuffle=False, drop_remainder=False,
                         transform=lambda batch, random: batch, prefetch=0))
  state = step.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=())
  return trainer.Experiment.evaluate(experiment, data_parallel.replicate(state))


@pytest.mark.parametrize("mode", parallel.MODES)
def test_evaluation_scores_the_whole_set_not_the_mean_over_batches(mode):
  metrics = evaluate(mode)
  expected = tagging_metrics.tagging_metrics(SCORES, TARGETS)
  for name in ("mAP", "AUC", "d_prime", "num_classes_scored"):
    assert metrics[name] == pytest.approx(expected[name], rel=1e-6), name
  np.testing.assert_allclose(metrics["loss"], bce(SCORES, TARGETS).mean(), rtol=1e-5)
  per_batch = [tagging_metrics.tagging_metrics(SCORES[i:i + BATCH_SIZE], TARGETS[i:i + BATCH_SIZE])["mAP"]
               for i in range(0, 8, BATCH_SIZE)]
  padded = np.concatenate([SCORES, SCORES[:2]]), np.concatenate([TARGETS, TARGETS[:2]])
  assert metrics["mAP"] != pytest.approx(np.mean(per_batch), abs=1e-3)
  assert metrics["mAP"] != pytest.approx(tagging_metrics.tagging_metrics(*padded)["mAP"], abs=1e-3)


def test_evaluation_gathers_the_outputs_of_every_device():
  """Two CPU devices, each holding half of every batch (a fresh process: the device count is fixed at start)."""
  script = ("import json, jax; from tests import test_tagging_task as t; print(json.dumps("
            "{'devices': jax.device_count(), **{mode: t.evaluate(mode)['mAP'] for mode in ('pmap', 'shard_map')}}))")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["devices"] == 2
  expected = tagging_metrics.tagging_metrics(SCORES, TARGETS)["mAP"]
  assert out["pmap"] == pytest.approx(expected, rel=1e-6) and out["shard_map"] == pytest.approx(expected, rel=1e-6)
