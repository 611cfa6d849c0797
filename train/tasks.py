"""What a model's output is trained against: the loss and the metrics of a task, per device.

A task is two pure functions of (model output, batch):

* ``loss(outputs, batch) -> (scalar loss, {name: scalar})``: the training objective, a mean over the local batch;
* ``eval_sums(outputs, batch) -> {name: scalar}``: SUMS over the examples with ``batch['mask'] == 1`` (padding
  examples of a last, partial eval batch have mask 0), plus ``count``; averages are taken after summing over all
  devices and batches, so evaluation is exact whatever the batch split.

and, for metrics that sums cannot give (ranking metrics such as mAP), two optional ones:

* ``eval_outputs(outputs, batch) -> {name: (B, ...) array}``: per-example values, which the evaluator gathers over
  all devices and batches, keeping the examples with mask 1 (``real_examples``);
* ``finalize(gathered) -> {name: float}``: host-side metrics of the gathered ``{name: (N, ...) array}`` of the
  whole evaluation set.

Tasks by name in ``TASKS``; ``config.task`` selects one (default 'classification').
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from train import tagging_metrics


class Task(NamedTuple):
  loss: Callable[[Any, dict], tuple[Any, dict]]
  eval_sums: Callable[[Any, dict], dict]
  eval_outputs: Optional[Callable[[Any, dict], dict]] = None
  finalize: Optional[Callable[[dict], dict]] = None


def real_examples(batches: Sequence[dict]) -> dict[str, np.ndarray]:
  """Per-example outputs of several batches, each ``{name: (B, ...)}`` with a ``mask`` (B,) -> ``{name: (N, ...)}``
  of the examples with mask 1, concatenated in order (``mask`` itself dropped)."""
  keep = np.concatenate([np.asarray(batch["mask"], bool) for batch in batches])
  names = [name for name in batches[0] if name != "mask"]
  return {name: np.concatenate([np.asarray(batch[name]) for batch in batches])[keep] for name in names}


TOP_K = 5  # eval_sums' top-k accuracy (k = the class count when it is smaller)


def classification(label_smoothing: float = 0.0) -> Task:
  """Softmax cross-entropy of logits (N, num_classes) against ``batch['label']``: integer labels (N,), smoothed by
  ``label_smoothing``, or soft targets (N, num_classes) float (mixup's), used as given since they carry their own
  smoothing. Accuracy: argmax of the logits == the label (of soft targets: their argmax); eval_sums also counts
  ``top5_accuracy``, the label among the 5 largest logits."""

  def targets(logits, labels, smoothing):
    if labels.ndim == logits.ndim:
      return labels.astype(logits.dtype)
    onehot = jnp.eye(logits.shape[-1], dtype=logits.dtype)[labels]
    return optax.smooth_labels(onehot, smoothing) if smoothing else onehot

  def hard_labels(logits, labels):
    return jnp.argmax(labels, -1) if labels.ndim == logits.ndim else labels

  def loss(logits, batch):
    logits = logits.astype(jnp.float32)
    per_example = optax.softmax_cross_entropy(logits, targets(logits, batch["label"], label_smoothing))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == hard_labels(logits, batch["label"]))
    return jnp.mean(per_example), {"accuracy": accuracy}

  def eval_sums(logits, batch):
    logits = logits.astype(jnp.float32)
    mask = batch["mask"].astype(jnp.float32)
    labels = hard_labels(logits, batch["label"])
    per_example = optax.softmax_cross_entropy(logits, targets(logits, batch["label"], 0.0))
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    _, top_classes = jax.lax.top_k(logits, min(TOP_K, logits.shape[-1]))
    in_top_k = jnp.any(top_classes == labels[:, None], axis=-1).astype(jnp.float32)
    return {"loss": jnp.sum(per_example * mask), "accuracy": jnp.sum(correct * mask),
            "top5_accuracy": jnp.sum(in_top_k * mask), "count": jnp.sum(mask)}

  return Task(loss, eval_sums)


def summed_softmax(trace):
  """SNN-delays readout: (N, T, num_classes) membrane trace -> (N, num_classes) sum over ALL T steps of the
  per-step class softmax (entries in [0, T])."""
  return jnp.sum(jax.nn.softmax(trace, axis=-1), axis=1)


def snn_delays() -> Task:
  """The SNN-delays loss: softmax cross-entropy of ``summed_softmax(trace)`` (so a second softmax over the summed
  probabilities, as torch CrossEntropyLoss on them) with integer labels ``batch['label']``; in the trace's dtype.

  Accuracy: argmax of the summed softmax. The reference averages accuracy per batch; eval_sums counts examples.
  """

  def per_example(trace, labels):
    logits = summed_softmax(trace)
    correct = (jnp.argmax(logits, -1) == labels).astype(logits.dtype)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels), correct

  def loss(trace, batch):
    cross_entropy, correct = per_example(trace, batch["label"])
    return jnp.mean(cross_entropy), {"accuracy": jnp.mean(correct)}

  def eval_sums(trace, batch):
    cross_entropy, correct = per_example(trace, batch["label"])
    mask = batch["mask"].astype(cross_entropy.dtype)
    return {"loss": jnp.sum(cross_entropy * mask), "accuracy": jnp.sum(correct * mask), "count": jnp.sum(mask)}

  return Task(loss, eval_sums)


def tagging(label_smoothing: float = 0.0) -> Task:
  """Multi-label tagging: logits (N, C) against ``batch['label']`` (N, C), multi-hot or soft (mixup's) targets.

  Loss: binary cross-entropy with logits (``optax.sigmoid_binary_cross_entropy``), the mean over examples and
  classes (PyTorch's ``BCEWithLogitsLoss``), targets smoothed to (1 - s) t + s / C when ``label_smoothing`` s > 0.
  DCLS-Audio folds its smoothing into mixup instead (``audio_augment.make_mixup``): use one or the other.
  Evaluation: the unsmoothed loss (eval_sums) and, over the whole evaluation set, ``tagging_metrics``' mAP, AUC,
  d_prime and num_classes_scored of the logits (rank-based: the same as of sigmoid probabilities) against the
  targets, which must be 0/1 there.
  """
  if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) or not (
      0 <= label_smoothing < 1):
    raise ValueError(f"config.task.label_smoothing must be a number in [0, 1), got {label_smoothing!r}")

  def per_example_loss(logits, targets):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets.astype(logits.dtype)), axis=-1)

  def loss(logits, batch):
    logits = logits.astype(jnp.float32)
    targets = batch["label"].astype(jnp.float32)
    if label_smoothing:
      targets = optax.smooth_labels(targets, label_smoothing)
    return jnp.mean(per_example_loss(logits, targets)), {}

  def eval_sums(logits, batch):
    logits = logits.astype(jnp.float32)
    mask = batch["mask"].astype(jnp.float32)
    return {"loss": jnp.sum(per_example_loss(logits, batch["label"]) * mask), "count": jnp.sum(mask)}

  def eval_outputs(logits, batch):
    return {"scores": logits.astype(jnp.float32), "targets": batch["label"]}

  def finalize(gathered):
    return {name: float(value) for name, value in
            tagging_metrics.tagging_metrics(gathered["scores"], gathered["targets"]).items()}

  return Task(loss, eval_sums, eval_outputs, finalize)


TASKS: dict[str, Callable[..., Task]] = {"classification": classification, "snn_delays": snn_delays,
                                         "tagging": tagging}


def create_task(task_config) -> Task:
  """``task_config``: ConfigDict with ``name`` and the task's keyword arguments."""
  kwargs = dict(task_config)
  name = kwargs.pop("name", None)
  if name not in TASKS:
    raise ValueError(f"config.task.name={name!r}: expected one of {sorted(TASKS)}.")
  return TASKS[name](**kwargs)
