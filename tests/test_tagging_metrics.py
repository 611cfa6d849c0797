"""Tagging metrics against hand-computed rankings: AP, AUC (ties count 1/2), d', and the classes left out."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from train import tagging_metrics as tm

# Class A: four clips ranked 1..4 by score, positives at ranks 1 and 3.
#   AP  = (precision at rank 1 + precision at rank 3) / 2 = (1/1 + 2/3) / 2 = 5/6
#   AUC = correctly ordered (pos, neg) pairs: (1,2) yes, (1,4) yes, (3,2) no, (3,4) yes -> 3/4
SCORES_A, TARGETS_A = [4.0, 3.0, 2.0, 1.0], [1, 0, 1, 0]
# Class B: scores 2, 1, 1, 0 with positives at the 2 and the first 1 (a tied positive/negative pair).
#   AP  = tied clips form one threshold: score >= 2: P = 1, R = 1/2; score >= 1: P = 2/3, R = 1
#         -> 1/2 * 1 + 1/2 * 2/3 = 5/6
#   AUC = pairs (2,1) yes, (2,0) yes, (1,1) tie 1/2, (1,0) yes -> 3.5/4 = 7/8
SCORES_B, TARGETS_B = [2.0, 1.0, 1.0, 0.0], [1, 1, 0, 0]


def columns(*values):
  return np.stack([np.asarray(v, float) for v in values], axis=1)


def d_prime(auc):
  return math.sqrt(2.0) * scipy.stats.norm.ppf(auc)


def test_one_class_by_hand():
  metrics = tm.tagging_metrics(columns(SCORES_A), columns(TARGETS_A))
  assert metrics["mAP"] == pytest.approx(5 / 6)
  assert metrics["AUC"] == pytest.approx(3 / 4)
  assert metrics["d_prime"] == pytest.approx(math.sqrt(2.0) * 0.6744897501960817)  # Phi^-1(0.75)
  assert metrics["num_classes_scored"] == 1


def test_ties_count_one_half_and_form_one_threshold():
  metrics = tm.tagging_metrics(columns(SCORES_B), columns(TARGETS_B))
  assert metrics["mAP"] == pytest.approx(5 / 6)
  assert metrics["AUC"] == pytest.approx(7 / 8)


def test_means_are_over_classes_and_d_prime_is_averaged_per_class():
  metrics = tm.tagging_metrics(columns(SCORES_A, SCORES_B), columns(TARGETS_A, TARGETS_B))
  assert metrics["mAP"] == pytest.approx(5 / 6)
  assert metrics["AUC"] == pytest.approx((3 / 4 + 7 / 8) / 2)
  assert metrics["d_prime"] == pytest.approx((d_prime(3 / 4) + d_prime(7 / 8)) / 2)
  assert metrics["d_prime"] != pytest.approx(d_prime((3 / 4 + 7 / 8) / 2))  # not d' of the mean AUC


def test_chance_scores_give_d_prime_zero_and_ap_the_prevalence():
  metrics = tm.tagging_metrics(np.zeros((4, 1)), columns([1, 0, 0, 0]))
  assert metrics == {"mAP": pytest.approx(1 / 4), "AUC": 0.5, "d_prime": 0.0, "num_classes_scored": 1}


def test_a_perfect_ranking_has_map_and_auc_one():
  metrics = tm.tagging_metrics(columns([0.9, 0.8, 0.1], [0.2, 0.7, 0.6]), columns([1, 1, 0], [0, 1, 1]))
  assert (metrics["mAP"], metrics["AUC"], metrics["d_prime"]) == (1.0, 1.0, math.inf)


def test_metrics_depend_only_on_the_ranking():
  logits = np.random.RandomState(0).normal(size=(20, 3))
  targets = np.random.RandomState(1).uniform(size=(20, 3)) < 0.4
  assert tm.tagging_metrics(logits, targets) == tm.tagging_metrics(1 / (1 + np.exp(-logits)), targets)


def test_classes_without_positives_or_negatives_are_left_out():
  scores = columns(SCORES_A, [0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5])
  targets = columns(TARGETS_A, [0, 0, 0, 0], [1, 1, 1, 1])
  metrics = tm.tagging_metrics(scores, targets)
  assert metrics["num_classes_scored"] == 1
  assert (metrics["mAP"], metrics["AUC"]) == (pytest.approx(5 / 6), pytest.approx(3 / 4))
  np.testing.assert_allclose(tm.per_class_average_precision(scores, targets), [5 / 6, np.nan, np.nan])


def test_no_scorable_class_is_an_error():
  with pytest.raises(ValueError, match="no class of the 2 has both a positive and a negative among the 3 clips"):
    tm.tagging_metrics(np.zeros((3, 2)), columns([0, 0, 0], [1, 1, 1]))


@pytest.mark.parametrize("scores, targets, match", [
    (np.zeros(4), np.zeros(4), r"shape \(N, C\)"),
    (np.zeros((4, 2)), np.zeros((4, 3)), r"shape \(N, C\)"),
    (np.zeros((0, 2)), np.zeros((0, 2)), r"N >= 1"),
    (np.array([[np.nan], [0.0]]), np.array([[1], [0]]), "scores must be finite"),
    (np.zeros((2, 1)), np.array([[0.5], [1.0]]), "targets must be 0 or 1"),
])
def test_bad_inputs_are_rejected(scores, targets, match):
  with pytest.raises(ValueError, match=match):
    tm.tagging_metrics(scores, targets)
