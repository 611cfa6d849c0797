"""Multi-label tagging metrics over a whole evaluation set (spec ``audio.md`` section 7): mAP, mean AUC, d'.

Host-side numpy / scikit-learn on the gathered scores (logits or probabilities: every metric is rank-based) and
binary targets, both (N, C) = (clips, classes):

  AP_c   scikit-learn ``average_precision_score``: sum_k (R_k - R_{k-1}) P_k over the ranked clips, no
         interpolation; tied scores form one threshold
  AUC_c  ROC AUC: the fraction of (positive, negative) pairs of class c ranked correctly, a tie counting 1/2
  d'_c   sqrt(2) Phi^{-1}(AUC_c) (Phi the standard normal CDF): 0 for chance, +inf for AUC_c = 1

A class is scored when the set holds at least one positive and one negative of it; AP and AUC are undefined
otherwise. The reported values are macro means over the scored classes (all 527 on AudioSet's eval set).
"""
from __future__ import annotations

import numpy as np
import scipy.stats
from sklearn import metrics as sk_metrics


def _checked(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(float64 scores, int64 targets), after checking that both are (N, C), the scores finite, the targets 0/1."""
  scores, targets = np.asarray(scores, np.float64), np.asarray(targets)
  if scores.ndim != 2 or scores.shape != targets.shape or scores.shape[0] == 0:
    raise ValueError(f"scores and targets must both have shape (N, C) with N >= 1, got scores {scores.shape} and "
                     f"targets {targets.shape}")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores must be finite")
  if not np.all((targets == 0) | (targets == 1)):
    raise ValueError("targets must be 0 or 1 (multi-hot); got other values")
  return scores, targets.astype(np.int64)


def _per_class(metric, scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """(C,) float64 ``metric(targets_c, scores_c)`` of each class with at least one positive and one negative clip;
  NaN for the others."""
  positives = targets.sum(axis=0)
  scored = (positives > 0) & (positives < targets.shape[0])
  values = np.full(targets.shape[1], np.nan)
  if scored.any():
    values[scored] = metric(targets[:, scored], scores[:, scored], average=None)
  return values


def per_class_average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """(C,) float64 AP of each class; NaN for a class without positives or without negatives.

  Args:
    scores: (N, C) real scores, higher = more likely positive.
    targets: (N, C) 0/1 labels.
  """
  return _per_class(sk_metrics.average_precision_score, *_checked(scores, targets))


def tagging_metrics(scores: np.ndarray, targets: np.ndarray) -> dict[str, float | int]:
  """Macro mAP, mean AUC and mean d' over the scored classes.

  Args:
    scores: (N, C) real scores of the whole evaluation set, higher = more likely positive.
    targets: (N, C) 0/1 labels.

  Returns:
    {'mAP', 'AUC', 'd_prime': floats, 'num_classes_scored': int (classes with both a positive and a negative)}.

  Raises:
    ValueError: bad shapes or values, or no class has both a positive and a negative.
  """
  scores, targets = _checked(scores, targets)
  precision = _per_class(sk_metrics.average_precision_score, scores, targets)
  scored = ~np.isnan(precision)
  if not scored.any():
    raise ValueError(f"no class of the {targets.shape[1]} has both a positive and a negative among the "
                     f"{targets.shape[0]} clips: AP and AUC are undefined")
  auc = _per_class(sk_metrics.roc_auc_score, scores, targets)[scored]
  return {"mAP": float(np.mean(precision[scored])), "AUC": float(np.mean(auc)),
          "d_prime": float(np.mean(np.sqrt(2.0) * scipy.stats.norm.ppf(auc))),
          "num_classes_scored": int(scored.sum())}
