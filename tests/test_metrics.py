"""Tests for distill.metrics: hand-worked examples, edge cases and property tests."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from distill.metrics import (
    auc,
    avg_drugs,
    ddi_rate,
    f1,
    jaccard,
    medication_metrics,
    mrr,
    ndcg,
    news_metrics,
    prauc,
)

# Labels a, b, c, d are columns 0..3 in the medication examples.
ABC = [1, 1, 1, 0]
BCD = [0, 1, 1, 1]


# --------------------------------------------------------------------------- jaccard / f1


def test_jaccard_textbook_example():
    # {a,b,c} vs {b,c,d}: intersection {b,c} (2), union {a,b,c,d} (4) -> 2/4.
    assert jaccard([ABC], [BCD]) == pytest.approx(0.5)


def test_jaccard_perfect_and_no_hit():
    y = np.array([[1, 0, 1, 0], [0, 1, 0, 0]])
    assert jaccard(y, y) == 1.0
    assert jaccard(y, 1 - y) == 0.0


def test_jaccard_empty_union_scores_zero_and_is_averaged():
    # Sample 1: 2/4 = 0.5; sample 2: both sets empty -> 0 by convention. Mean 0.25.
    y_true = [ABC, [0, 0, 0, 0]]
    y_pred = [BCD, [0, 0, 0, 0]]
    assert jaccard(y_true, y_pred) == pytest.approx(0.25)


def test_jaccard_accepts_bool_input():
    y_true = np.array([ABC], dtype=bool)
    y_pred = np.array([BCD], dtype=bool)
    assert jaccard(y_true, y_pred) == pytest.approx(0.5)


def test_f1_textbook_examples():
    # {a,b,c} vs {b,c,d}: P = 2/3, R = 2/3 -> F1 = 2/3.
    assert f1([ABC], [BCD]) == pytest.approx(2 / 3)
    # T = {a,b}, P = {a}: P = 1, R = 1/2 -> F1 = 2*(1/2)/(3/2) = 2/3.
    assert f1([[1, 1, 0]], [[1, 0, 0]]) == pytest.approx(2 / 3)
    # Mean over samples: (2/3 + 1) / 2 = 5/6.
    assert f1([ABC, [1, 0, 0, 0]], [BCD, [1, 0, 0, 0]]) == pytest.approx(5 / 6)


def test_f1_perfect_no_hit_and_empty_predictions():
    y = np.array([[1, 0, 1], [0, 1, 1]])
    assert f1(y, y) == 1.0
    assert f1(y, 1 - y) == 0.0
    # Nothing predicted: P = 0 by convention, R = 0 -> F1 = 0.
    assert f1(y, np.zeros_like(y)) == 0.0
    # Nothing true and nothing predicted: P = R = 0 -> F1 = 0.
    assert f1([[0, 0, 0]], [[0, 0, 0]]) == 0.0


# --------------------------------------------------------------------------- prauc


def test_prauc_textbook_example():
    # Relevant items at ranks 1 and 3 of 4: AP = (1/1 + 2/3) / 2 = 5/6.
    assert prauc([[1, 0, 1, 0]], [[0.9, 0.8, 0.7, 0.6]]) == pytest.approx(5 / 6)


def test_prauc_perfect():
    y = np.array([[1, 0, 1, 0], [0, 0, 0, 1]])
    scores = np.array([[0.9, 0.1, 0.8, 0.2], [0.3, 0.2, 0.1, 0.7]])
    assert prauc(y, scores) == 1.0


def test_prauc_ties_grouped_like_sklearn():
    # Scores 0.9, 0.5, 0.5 with the positive inside the tie.
    # sklearn-style: threshold 0.9 admits {0}: P = 0/1, R = 0;
    #                threshold 0.5 admits {0,1,2}: P = 1/3, R = 1  -> AP = 1 * 1/3 = 1/3.
    # Naive stable sorting would rank the positive 2nd: AP = 1/2.
    assert prauc([[0, 1, 0]], [[0.9, 0.5, 0.5]]) == pytest.approx(1 / 3)
    # Positive tied with a negative at the second threshold:
    # 0.8 admits {0}: P = 1, R = 1/2; 0.5 admits {0,1,2}: P = 2/3, R = 1.
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6 (naive order would give 1.0).
    assert prauc([[1, 1, 0, 0]], [[0.8, 0.5, 0.5, 0.1]]) == pytest.approx(5 / 6)


def test_prauc_skips_samples_without_positive():
    y = [[1, 0, 1, 0], [0, 0, 0, 0]]
    s = [[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]]
    assert prauc(y, s) == pytest.approx(5 / 6)
    assert prauc([[0, 0, 0]], [[0.1, 0.2, 0.3]]) == 0.0


def _ap_reference(t, s):
    """Loop over distinct thresholds (descending): sum (R_n - R_{n-1}) * P_n."""
    ap, prev_recall = 0.0, 0.0
    for thr in sorted(set(s.tolist()), reverse=True):
        admitted = s >= thr
        tp = np.sum(t & admitted)
        recall = tp / t.sum()
        ap += (recall - prev_recall) * tp / admitted.sum()
        prev_recall = recall
    return ap


binary_matrices = hnp.arrays(bool, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8))
tie_prone_scores = st.one_of(
    st.sampled_from([-1.5, 0.0, 0.25, 2.0]), st.floats(-1e3, 1e3, allow_nan=False)
)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_prauc_matches_threshold_loop_reference(data):
    y = data.draw(binary_matrices)
    s = data.draw(hnp.arrays(np.float64, y.shape, elements=tie_prone_scores))
    per_sample = [_ap_reference(t, r) for t, r in zip(y, s, strict=True) if t.any()]
    expected = float(np.mean(per_sample)) if per_sample else 0.0
    assert prauc(y, s) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_prauc_of_perfect_score_is_one(data):
    y = data.draw(binary_matrices.filter(lambda a: a.any(axis=1).all()))
    noise = data.draw(hnp.arrays(np.float64, y.shape, elements=st.floats(0, 0.999)))
    assert prauc(y, y.astype(float)) == 1.0  # ties inside each class
    assert prauc(y, 2.0 * y + noise) == pytest.approx(1.0, abs=1e-12)


# --------------------------------------------------------------------------- ddi / drugs


def test_ddi_rate_is_pooled_not_per_sample_mean():
    # DDI pairs {0,1} and {3,4} (given reversed).
    # Sample 1 predicts {0,1,2}: pairs 01, 02, 12 -> 1 of 3 is a DDI.
    # Sample 2 predicts {3,4}:   pair 34          -> 1 of 1 is a DDI.
    # Pooled: (1 + 1) / (3 + 1) = 1/2; the per-sample mean would be (1/3 + 1)/2 = 2/3.
    y_pred = [[1, 1, 1, 0, 0], [0, 0, 0, 1, 1]]
    rate = ddi_rate(y_pred, [(0, 1), (4, 3)])
    assert rate == pytest.approx(0.5)
    assert rate != pytest.approx(2 / 3)


def test_ddi_rate_normalises_duplicated_and_reversed_pairs():
    y_pred = [[1, 1, 1, 0, 0], [0, 0, 0, 1, 1]]
    messy = [(0, 1), (1, 0), (0, 1), (4, 3), (3, 4)]
    assert ddi_rate(y_pred, messy) == pytest.approx(0.5)
    assert ddi_rate(y_pred, np.array([[1, 0], [3, 4]])) == pytest.approx(0.5)
    assert ddi_rate(y_pred, iter([(1, 0), (3, 4)])) == pytest.approx(0.5)


def test_ddi_rate_edge_cases():
    # No sample predicts two labels -> no pairs at all -> 0.0.
    assert ddi_rate([[1, 0, 0], [0, 0, 0]], [(0, 1)]) == 0.0
    # No DDI pairs given.
    assert ddi_rate([[1, 1, 0]], []) == 0.0
    # Every predicted pair interacts.
    assert ddi_rate([[1, 1, 1]], [(0, 1), (0, 2), (1, 2)]) == 1.0
    # Self-pairs are ignored: {2,3} is one pair, not a DDI.
    assert ddi_rate([[0, 0, 1, 1]], [(2, 2)]) == 0.0
    with pytest.raises(ValueError, match="outside"):
        ddi_rate([[1, 1, 0]], [(0, 3)])
    with pytest.raises(ValueError, match="pairs"):
        ddi_rate([[1, 1, 0]], [(0, 1, 2)])


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_ddi_rate_matches_pair_loop(data):
    y = data.draw(binary_matrices)
    n_labels = y.shape[1]
    index = st.integers(0, n_labels - 1)
    pairs = data.draw(st.lists(st.tuples(index, index), max_size=10))
    wanted = {frozenset(p) for p in pairs if p[0] != p[1]}
    hits = total = 0
    for row in y:
        for i, j in itertools.combinations(np.flatnonzero(row), 2):
            total += 1
            hits += frozenset((i, j)) in wanted
    expected = hits / total if total else 0.0
    assert ddi_rate(y, pairs) == pytest.approx(expected, abs=1e-12)


def test_avg_drugs():
    # 2 + 0 + 3 = 5 labels over 3 samples.
    assert avg_drugs([[1, 1, 0], [0, 0, 0], [1, 1, 1]]) == pytest.approx(5 / 3)
    assert avg_drugs([[0, 0]]) == 0.0


def test_medication_metrics_thresholds_with_ge():
    y_true = np.array([[1, 0, 1], [0, 1, 1]])
    y_score = np.array([[0.9, 0.2, 0.5], [0.1, 0.8, 0.4]])
    # threshold 0.5 (inclusive) -> predictions [[1,0,1], [0,1,0]].
    out = medication_metrics(y_true, y_score, 0.5, [(1, 2)])
    assert set(out) == {"jaccard", "f1", "prauc", "ddi_rate", "avg_drugs"}
    # jaccard: 2/2 and 1/2 -> 3/4.  f1: 1 and 2*(1*1/2)/(3/2) = 2/3 -> 5/6.
    assert out["jaccard"] == pytest.approx(0.75)
    assert out["f1"] == pytest.approx(5 / 6)
    # prauc on raw scores: sample 1 perfect (1); sample 2 ranks 0.8 (pos), 0.4 (pos) -> 1.
    assert out["prauc"] == pytest.approx(1.0)
    # Predicted pairs: {0,2} only (sample 2 has one label) and it is not a DDI.
    assert out["ddi_rate"] == 0.0
    assert out["avg_drugs"] == pytest.approx(1.5)


# --------------------------------------------------------------------------- news


def test_auc_perfect_no_hit_and_tie():
    assert auc([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.2]) == 1.0
    assert auc([1, 0, 1, 0], [0.1, 0.9, 0.2, 0.8]) == 0.0
    # Positives 0.8, 0.3; negatives 0.8, 0.1. Pairs (pos, neg):
    # (0.8, 0.8) tie -> 1/2, (0.8, 0.1) -> 1, (0.3, 0.8) -> 0, (0.3, 0.1) -> 1.
    # AUC = 2.5 / 4 = 0.625.
    assert auc([1, 0, 1, 0], [0.8, 0.8, 0.3, 0.1]) == pytest.approx(0.625)
    # All scores tied -> 1/2.
    assert auc([1, 0, 0], [0.3, 0.3, 0.3]) == pytest.approx(0.5)


def test_auc_needs_both_classes():
    with pytest.raises(ValueError, match="positive"):
        auc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="negative"):
        auc([1, 1], [0.1, 0.2])


# Hand-worked impression: labels   [0,   1,   0,   1,   0  ]
#                          scores   [0.9, 0.7, 0.8, 0.2, 0.5]
# Ranked by score: 0.9(0), 0.8(0), 0.7(1), 0.5(0), 0.2(1) -> ranked labels [0,0,1,0,1].
IMP_LABELS = [0, 1, 0, 1, 0]
IMP_SCORES = [0.9, 0.7, 0.8, 0.2, 0.5]


def test_mrr_hand_worked():
    # Positives at ranks 3 and 5: (1/3 + 1/5) / 2 = (8/15) / 2 = 4/15.
    assert mrr(IMP_LABELS, IMP_SCORES) == pytest.approx(4 / 15)


def test_ndcg_hand_worked():
    # DCG@5  = (2^1-1)/log2(3+1) + (2^1-1)/log2(5+1) = 1/2 + 1/log2(6).
    # IDCG@5 = 1/log2(2) + 1/log2(3) = 1 + 1/log2(3)  (ideal order [1,1,0,0,0]).
    expected5 = (0.5 + 1 / math.log2(6)) / (1 + 1 / math.log2(3))
    assert ndcg(IMP_LABELS, IMP_SCORES, 5) == pytest.approx(expected5)
    # k larger than the impression uses all 5 candidates.
    assert ndcg(IMP_LABELS, IMP_SCORES, 10) == pytest.approx(expected5)
    # DCG@3 = 1/2 only; IDCG@3 = 1 + 1/log2(3).
    assert ndcg(IMP_LABELS, IMP_SCORES, 3) == pytest.approx(0.5 / (1 + 1 / math.log2(3)))
    # Nothing relevant in the top 2 -> 0.
    assert ndcg(IMP_LABELS, IMP_SCORES, 2) == 0.0


def test_auc_hand_worked_impression():
    # Positives 0.7, 0.2 vs negatives 0.9, 0.8, 0.5: only (0.7 > 0.5) wins -> 1/6.
    assert auc(IMP_LABELS, IMP_SCORES) == pytest.approx(1 / 6)


def test_ranking_metrics_perfect():
    labels, scores = [0, 1, 1, 0], [0.1, 0.9, 0.8, 0.3]
    assert auc(labels, scores) == 1.0
    assert mrr(labels, scores) == pytest.approx((1 / 1 + 1 / 2) / 2)  # MIND mrr, ranks 1, 2
    assert ndcg(labels, scores, 5) == pytest.approx(1.0)
    assert ndcg(labels, scores, 1) == pytest.approx(1.0)


def test_mrr_tie_break_puts_later_position_first():
    # Tied scores: the later candidate is ranked first, so the positive sits at rank 2.
    assert mrr([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert mrr([0, 1], [0.5, 0.5]) == pytest.approx(1.0)


def test_mrr_ndcg_need_a_positive():
    with pytest.raises(ValueError, match="positive"):
        mrr([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="positive"):
        ndcg([0, 0], [0.1, 0.2], 5)
    with pytest.raises(ValueError, match="k must"):
        ndcg([1, 0], [0.1, 0.2], 0)


def test_news_metrics_averages_and_skips():
    impressions = [
        (IMP_LABELS, IMP_SCORES),
        ([0, 0, 0], [0.1, 0.2, 0.3]),  # no positive -> skipped
        ([1, 1], [0.1, 0.2]),  # no negative -> skipped
        ([1, 0], [0.9, 0.1]),  # perfect: auc = mrr = ndcg = 1
    ]
    out = news_metrics(impressions)
    assert out["skipped_impressions"] == 2
    ndcg5 = (0.5 + 1 / math.log2(6)) / (1 + 1 / math.log2(3))
    assert out["auc"] == pytest.approx((1 / 6 + 1) / 2)
    assert out["mrr"] == pytest.approx((4 / 15 + 1) / 2)
    assert out["ndcg5"] == pytest.approx((ndcg5 + 1) / 2)
    assert out["ndcg10"] == pytest.approx((ndcg5 + 1) / 2)


def test_news_metrics_all_skipped():
    out = news_metrics([([0, 0], [0.1, 0.2]), ([], [])])
    expected = {"auc": 0.0, "mrr": 0.0, "ndcg5": 0.0, "ndcg10": 0.0, "skipped_impressions": 2}
    assert out == expected


impressions_1d = st.integers(2, 12).flatmap(
    lambda n: st.tuples(
        hnp.arrays(bool, n).filter(lambda y: y.any() and not y.all()),
        hnp.arrays(np.float64, n, elements=tie_prone_scores),
    )
)


@settings(max_examples=80, deadline=None)
@given(impressions_1d)
def test_auc_of_negated_scores_is_complement(impression):
    labels, scores = impression
    assert auc(labels, scores) + auc(labels, -scores) == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=80, deadline=None)
@given(impressions_1d)
def test_auc_matches_pairwise_count(impression):
    labels, scores = impression
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auc(labels, scores) == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-12)


# --------------------------------------------------------------------------- bounds


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_jaccard_and_f1_are_in_unit_interval(data):
    y_true = data.draw(binary_matrices)
    y_pred = data.draw(hnp.arrays(bool, y_true.shape))
    for value in (jaccard(y_true, y_pred), f1(y_true, y_pred)):
        assert 0.0 <= value <= 1.0
    # Self-comparison: 1 for every non-empty row, 0 for empty rows.
    assert jaccard(y_true, y_true) == pytest.approx(y_true.any(axis=1).mean())


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("fn", [jaccard, f1, prauc])
def test_shape_mismatch_names_both_shapes(fn):
    with pytest.raises(ValueError, match=re.escape("(2, 3)") + ".*" + re.escape("(2, 4)")):
        fn(np.zeros((2, 3)), np.zeros((2, 4)))


@pytest.mark.parametrize("fn", [jaccard, f1, prauc])
def test_one_dimensional_input_rejected_for_medication(fn):
    with pytest.raises(ValueError, match="2-D"):
        fn(np.array([1, 0, 1]), np.array([1, 0, 1]))


def test_other_validation_errors():
    with pytest.raises(ValueError, match="2-D"):
        ddi_rate([1, 1, 0], [(0, 1)])
    with pytest.raises(ValueError, match="2-D"):
        avg_drugs([1, 0])
    with pytest.raises(ValueError, match="0/1"):
        jaccard([[2, 0]], [[1, 0]])
    with pytest.raises(ValueError, match="NaN"):
        prauc([[1, 0]], [[np.nan, 0.1]])
    with pytest.raises(ValueError, match="no samples"):
        jaccard(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="1-D"):
        auc([[1, 0]], [[0.1, 0.2]])
    with pytest.raises(ValueError, match=re.escape("(2,)") + ".*" + re.escape("(3,)")):
        mrr([1, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=re.escape("(2, 2)") + ".*" + re.escape("(2, 3)")):
        medication_metrics(np.ones((2, 2)), np.ones((2, 3)), 0.5, [])
