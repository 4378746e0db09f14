"""ROUGE, greedy token matching and bootstrap intervals against hand-computed values."""

import math

import numpy as np
import pytest

from speechsum.evaluation.metrics import (
    bootstrap_ci,
    cosine,
    greedy_match,
    paired_bootstrap_ci,
    repeated_ngrams,
    rouge,
    rouge_lsum,
    rouge_n,
    rouge_tokens,
)


def test_tokens_lowercase_alphanumeric_unicode():
    assert rouge_tokens("Hello, World! $2,500 in Málaga") == ["hello", "world", "2", "500", "in", "málaga"]


def test_identical_is_one_disjoint_is_zero():
    text = "The budget was raised to $2,500.\nOmar will send the slides."
    assert rouge(text, text) == {"rouge1": 1.0, "rouge2": 1.0, "rougeLsum": 1.0}
    assert rouge("alpha beta gamma", "delta epsilon") == {"rouge1": 0.0, "rouge2": 0.0, "rougeLsum": 0.0}
    assert rouge("", "something") == {"rouge1": 0.0, "rouge2": 0.0, "rougeLsum": 0.0}


def test_partial_overlap_hand_computed():
    ref = "the cat sat on the mat"
    # one substituted word: 5 of 6 unigrams (the x2, cat, on, mat), 3 of 5 bigrams, LCS 5
    assert rouge_n("the cat lay on the mat", ref, 1) == pytest.approx(5 / 6)
    assert rouge_n("the cat lay on the mat", ref, 2) == pytest.approx(3 / 5)
    assert rouge_lsum("the cat lay on the mat", ref) == pytest.approx(5 / 6)
    # short prediction: P = 2/3, R = 2/6 -> F = 4/9; bigrams P = 1/2, R = 1/5 -> F = 2/7
    assert rouge_n("a cat sat", ref, 1) == pytest.approx(4 / 9)
    assert rouge_n("a cat sat", ref, 2) == pytest.approx(2 / 7)


def test_clipped_counts():
    # "the" occurs once in the prediction: it matches at most one of the reference's two
    assert rouge_n("the cat", "the the", 1) == pytest.approx(2 * (1 / 2) * (1 / 2) / 1)


def test_lsum_union_lcs_lin_2004_example():
    # Lin (2004) 3.2: r = w1..w5, c1 = w1 w2 w6 w7 w8, c2 = w1 w3 w8 w9 w5.
    # LCS(r, c1) = w1 w2, LCS(r, c2) = w1 w3 w5, union = 4 hits; R = 4/5, P = 4/10, F = 8/15
    assert rouge_lsum("a b f g h\na c h i e", "a b c d e") == pytest.approx(8 / 15)


def test_lsum_is_sentence_level():
    # each reference sentence is matched against every candidate sentence, so swapped halves
    # score 1, where a single LCS over the whole text only finds 4 of 6 tokens
    assert rouge_lsum("The dog sat. The cat ran.", "The cat sat.\nThe dog ran.") == pytest.approx(1.0)


def test_lsum_union_does_not_reuse_candidate_tokens():
    # both reference sentences' LCS with the candidate is "a", but the candidate has one "a":
    # 1 hit, P = 1/1, R = 1/4, F = 0.4
    assert rouge_lsum("a", "a b\na c") == pytest.approx(0.4)


def test_cosine_and_greedy_match():
    assert cosine(np.array([1.0, 0.0]), np.array([3.0, 0.0])) == pytest.approx(1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(0.0)
    assert cosine(np.zeros(2), np.ones(2)) == 0.0
    same = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert greedy_match(same, 2 * same) == pytest.approx((1.0, 1.0, 1.0))
    assert greedy_match(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])) == pytest.approx((0.0, 0.0, 0.0))
    # two prediction tokens, one reference token equal to the first: P = (1 + 0)/2, R = 1, F = 2/3
    assert greedy_match(same, np.array([[1.0, 0.0]])) == pytest.approx((0.5, 1.0, 2 / 3))
    # 45 degrees apart: every max similarity is cos 45
    c = math.sqrt(0.5)
    assert greedy_match(np.array([[1.0, 1.0]]), np.array([[1.0, 0.0]])) == pytest.approx((c, c, c))
    assert greedy_match(np.zeros((0, 2)), same) == (0.0, 0.0, 0.0)


def test_bootstrap_two_point_sample():
    # resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 95 % interval
    # is [0, 1] (a 2.5 % tail holds ~250 of 1000 resamples at each end)
    assert bootstrap_ci([0.0, 1.0]) == (0.5, 0.0, 1.0)
    assert bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0, 3.0)


def test_bootstrap_matches_normal_approximation():
    # 0..9: population sd 2.872, sd of the mean 2.872 / sqrt(10) = 0.908; 4.5 +- 1.96 * 0.908
    mean, lo, hi = bootstrap_ci(list(range(10)), n=4000)
    assert mean == 4.5
    assert lo == pytest.approx(4.5 - 1.78, abs=0.2)
    assert hi == pytest.approx(4.5 + 1.78, abs=0.2)
    assert bootstrap_ci(list(range(10)), seed=1) == bootstrap_ci(list(range(10)), seed=1)
    assert bootstrap_ci(list(range(10)), seed=1) != bootstrap_ci(list(range(10)), seed=2)


def test_cluster_bootstrap_resamples_documents():
    # two documents, two items each, the items of a document alike: resampling documents is the
    # two-point bootstrap above (same draws)
    assert bootstrap_ci([0.0, 0.0, 1.0, 1.0], groups=["a", "a", "b", "b"]) == (0.5, 0.0, 1.0)
    # four such documents: narrower when the 8 items are wrongly taken as independent
    x, docs = [0.0, 0.0, 1.0, 1.0] * 2, ["a", "a", "b", "b", "c", "c", "d", "d"]
    (_, lo_c, hi_c), (_, lo_i, hi_i) = bootstrap_ci(x, groups=docs), bootstrap_ci(x)
    assert (lo_c, hi_c) == bootstrap_ci([0.0, 1.0, 0.0, 1.0])[1:]
    assert hi_i - lo_i < hi_c - lo_c
    # unequal sizes weigh by size: {a, a} -> 1 and {b, b} -> 0 (1/4 each), {a, b} -> 3/4 (half the
    # resamples; the mean of two group means would say 1/2): the middle 40 % is 3/4 only
    assert bootstrap_ci([1.0, 1.0, 1.0, 0.0], groups=["a", "a", "a", "b"], n=4000, alpha=0.6) == (0.75, 0.75, 0.75)
    with pytest.raises(ValueError, match="groups: 3 labels for 4 values"):
        bootstrap_ci([1.0, 1.0, 1.0, 0.0], groups=["a", "a", "b"])
    # paired: per-document differences
    assert paired_bootstrap_ci([1.0, 1.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], groups=[1, 1, 2, 2]) == (0.5, 0.0, 1.0)


def test_paired_bootstrap_cancels_item_difficulty():
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 1, size=50)
    a, b = difficulty + 0.1, difficulty
    _, lo_a, hi_a = bootstrap_ci(a)
    _, lo_b, hi_b = bootstrap_ci(b)
    assert lo_a < hi_b  # separately, the intervals overlap
    diff, lo, hi = paired_bootstrap_ci(a, b)
    assert (diff, lo, hi) == pytest.approx((0.1, 0.1, 0.1))
    diff, lo, hi = paired_bootstrap_ci([1, 0, 1, 0], [0, 1, 0, 1])
    assert diff == 0.0 and lo < 0 < hi


def test_paired_ratio_bootstrap_golden():
    """Pooled ratios: b = (1 + 1 + 0) / (4 + 1 + 2) = 2/7, a = (2 + 0 + 1) / (2 + 0 + 3) = 3/5."""
    from speechsum.evaluation.metrics import paired_ratio_bootstrap_ci

    diff, lo, hi = paired_ratio_bootstrap_ci([1, 1, 0], [4, 1, 2], [2, 0, 1], [2, 0, 3])
    assert diff == pytest.approx(2 / 7 - 3 / 5)
    assert lo < diff < hi
    # documents d1 = items 1-2, d2 = item 3: resamples are d1 d1 (4/10 - 4/4 = -0.6), d1 d2 or d2 d1
    # (the point, -0.314, half the draws) and d2 d2 (0/4 - 2/6 = -0.333): the interval spans -0.6 to the point
    diff, lo, hi = paired_ratio_bootstrap_ci([1, 1, 0], [4, 1, 2], [2, 0, 1], [2, 0, 3], groups=["d1", "d1", "d2"])
    assert (lo, hi) == pytest.approx((4 / 10 - 1.0, 2 / 7 - 3 / 5))
    with pytest.raises(ValueError, match="positive denominator"):
        paired_ratio_bootstrap_ci([1], [0], [1], [1])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_ratio_bootstrap_ci([1, 2], [1, 2], [1], [1])


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap_ci([1.0], [1.0, 2.0])


def test_repeated_ngrams_golden():
    # "a b c d a b c d": 4-grams abcd bcda cdab dabc abcd -> 5, of which 1 came before
    assert repeated_ngrams("a b c d a b c d") == pytest.approx(1 / 5)
    assert repeated_ngrams("The budget is $12,500 and the move is on Thursday.") == 0.0
    assert repeated_ngrams("too short") == 0.0 and repeated_ngrams("") == 0.0
    # a near-repeat the decoder's exact loop stop lets through: the date changes, the phrase does not
    near = ("Agreed to run the backlog by the library on Sunday 6 June. "
            "Agreed to run the backlog by the library on Sunday 14 June.")
    # 24 tokens -> 21 4-grams; of the second sentence's 9, the 7 that do not reach its date came before
    assert repeated_ngrams(near) == pytest.approx(7 / 21)
    assert repeated_ngrams("A B C D a b c d") == pytest.approx(1 / 5)  # case-blind, as ROUGE's tokens
