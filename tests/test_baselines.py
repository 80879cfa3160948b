"""Tests for distill.medication.baselines: popularity top-k and previous-visit medication
baselines."""

from __future__ import annotations

import numpy as np
import pytest

from distill.medication.baselines import (
    choose_k,
    label_frequency,
    popularity,
    previous_visit,
    top_k_mask,
)


def test_label_frequency_is_the_share_of_samples_with_each_label():
    y = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float32)
    freq = label_frequency(y)
    assert freq.dtype == np.float64
    np.testing.assert_allclose(freq, [0.75, 0.0, 0.5])


@pytest.mark.parametrize(
    ("k", "chosen"),
    [(0, []), (1, [1]), (2, [1, 3]), (3, [0, 1, 3]), (4, [0, 1, 2, 3]), (5, [0, 1, 2, 3, 4]),
     (9, [0, 1, 2, 3, 4])],
)  # fmt: skip
def test_top_k_mask_most_frequent_with_index_tie_break(k, chosen):
    # labels 1 and 3 tie at 0.5, labels 0 and 2 tie at 0.2: the lower index goes first
    freq = np.array([0.2, 0.5, 0.2, 0.5, 0.1])
    mask = top_k_mask(freq, k)
    assert mask.dtype == bool and mask.shape == (5,)
    assert np.flatnonzero(mask).tolist() == chosen


def test_choose_k_picks_the_best_validation_jaccard():
    freq = np.array([0.5, 0.4, 0.3, 0.1])  # top-k = the first k labels
    y_val = np.array(
        [
            [1, 1, 0, 0],  # {0, 1}
            [1, 1, 1, 0],  # {0, 1, 2}
            [0, 1, 0, 0],  # {1}
        ]
    )
    # Jaccard of the prediction {0..k-1} against each row, then the mean:
    #   k=1 {0}:          1/2, 1/3, 0/2  -> 0.278
    #   k=2 {0,1}:        2/2, 2/3, 1/2  -> 0.722   <- best
    #   k=3 {0,1,2}:      2/3, 3/3, 1/3  -> 0.667
    #   k=4 {0,1,2,3}:    2/4, 3/4, 1/4  -> 0.500
    assert choose_k(freq, y_val) == 2
    assert choose_k(freq, y_val, max_k=1) == 1  # only k=1 was allowed
    assert choose_k(freq, y_val, max_k=99) == 2  # capped at the number of labels


def test_choose_k_prefers_the_smallest_k_on_ties():
    freq = np.array([0.6, 0.4])
    y_val = np.array([[1, 0], [0, 1]])
    # k=1 {0}: 1, 0 -> 0.5;  k=2 {0,1}: 1/2, 1/2 -> 0.5: a tie, the smaller k wins
    assert choose_k(freq, y_val) == 1


def test_popularity_gives_everyone_the_same_scores_and_top_k():
    freq = np.array([0.1, 0.7, 0.3])
    scores, pred = popularity(freq, 2, 4)
    assert scores.shape == pred.shape == (4, 3)
    assert scores.dtype == np.float32 and pred.dtype == bool
    np.testing.assert_allclose(scores, np.tile(freq, (4, 1)), rtol=1e-6)
    assert (pred == [False, True, True]).all()
    pred[0, 0] = True  # writable copies, not views of one shared row
    assert not pred[1, 0]


def test_previous_visit_uses_previous_drugs_else_popularity():
    freq = np.array([0.9, 0.6, 0.3, 0.05, 0.01])
    k = 2  # popularity predicts {0, 1}
    prev = np.array(
        [
            [0, 0, 0, 1, 1],  # previous visit had the two rarest drugs
            [0, 0, 0, 0, 0],  # first visit
            [0, 1, 1, 0, 0],
        ],
        dtype=np.float32,
    )
    has_prev = np.array([True, False, True])
    scores, pred = previous_visit(prev, has_prev, freq, k)
    assert pred.dtype == bool and scores.shape == pred.shape == (3, 5)
    assert np.flatnonzero(pred[0]).tolist() == [3, 4]
    assert np.flatnonzero(pred[1]).tolist() == [0, 1]  # popularity for a first visit
    assert np.flatnonzero(pred[2]).tolist() == [1, 2]
    np.testing.assert_allclose(scores[1], freq, rtol=1e-6)  # plain frequency without history


def test_previous_visit_scores_rank_previous_drugs_first():
    freq = np.array([0.9, 0.6, 0.3, 0.05, 0.01])
    prev = np.array([[0, 0, 0, 1, 1], [0, 1, 1, 0, 0]], dtype=np.float32)
    scores, _ = previous_visit(prev, np.array([True, True]), freq, 2)
    # previous drugs first (by frequency among them), then the rest by frequency
    assert np.argsort(-scores[0], kind="stable").tolist() == [3, 4, 0, 1, 2]
    assert np.argsort(-scores[1], kind="stable").tolist() == [1, 2, 0, 3, 4]
    for row, p in zip(scores, prev, strict=True):
        assert row[p > 0].min() > row[p == 0].max()
