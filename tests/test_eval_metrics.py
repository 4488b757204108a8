"""Scores and judge-free metrics against hand computations."""
import math
import random

import numpy as np
import pytest

from svlm_jax.eval import metrics


def _lcs_dp(a, b):
    m = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            m[i + 1][j + 1] = m[i][j] + 1 if x == y else max(m[i][j + 1], m[i + 1][j])
    return m[-1][-1]


def test_lcs_matches_dynamic_programming():
    r = random.Random(0)
    for _ in range(300):
        a = [r.randint(0, 4) for _ in range(r.randint(0, 40))]
        b = [r.randint(0, 4) for _ in range(r.randint(0, 90))]
        assert metrics.lcs_length(a, b) == _lcs_dp(a, b)


def test_word_f1_and_rouge_l_by_hand():
    # candidate: the ball goes in the net ; reference: the ball is in
    cand, ref = "The ball goes in, the net!", "the ball is in"
    # bag overlap: the(1), ball, in = 3 of 6 candidate words and 3 of 4 reference words
    p, r = 3 / 6, 3 / 4
    assert metrics.word_f1(cand, ref) == pytest.approx(2 * p * r / (p + r))
    # LCS "the ball in" = 3
    assert metrics.rouge_l(cand, ref) == pytest.approx(2 * p * r / (p + r))
    assert metrics.rouge_l("a b c d", "d c b a") == pytest.approx(2 * 0.25 * 0.25 / 0.5)
    assert metrics.word_f1("", "x") == 0 and metrics.rouge_l("x", "") == 0


def test_word_lags_by_hand():
    ref = [(10.0, "Curry shoots"), (12.0, "three"), (30.0, "far away")]
    cand = [(9.0, "curry"), (13.0, "Curry shoots three"), (16.0, "shoots")]
    # curry -> 9 (earliest unused within 10 s: -1), shoots -> 13 (+3), three -> 13 (+1), far/away unmatched.
    assert metrics.word_lags(ref, cand) == [-1.0, 3.0, 1.0]
    assert metrics.median_lag(ref, cand) == 1.0
    assert math.isnan(metrics.median_lag([(0, "zzz")], cand))


def test_win_rate_per_video_bootstrap_and_segments():
    recs = [{"video": "g1", "start": 0, "votes": {"A": 2, "B": 0}},
            {"video": "g1", "start": 50, "votes": {"A": 1, "B": 1}},
            {"video": "g2", "start": 90, "votes": {"A": 0, "B": 2}}]
    votes = [(r["votes"]["A"], r["votes"]["B"]) for r in recs]
    assert metrics.win_rate(votes) == 3 / 6 and metrics.win_rate([]) == 0
    table = metrics.per_video(recs)
    assert table["g1"] == {"windows": 2, "A": 3, "B": 1, "win_rate": 0.75} and table["g2"]["win_rate"] == 0
    lo, hi = metrics.bootstrap_interval(votes, n=4000, seed=1)
    assert 0 <= lo < 0.5 < hi <= 1
    # Every resample of identical windows gives the same rate.
    assert metrics.bootstrap_interval([(1, 1)] * 5) == (0.5, 0.5)
    seg = metrics.segment_win_rates(recs, {"g1": (0, 100), "g2": (0, 100)})
    assert [s["windows"] for s in seg] == [1, 0, 1, 0, 1]
    assert [s["win_rate"] for s in seg if s["windows"]] == [1.0, 0.5, 0.0]
    assert np.isnan(seg[1]["win_rate"])
