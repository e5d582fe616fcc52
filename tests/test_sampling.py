"""Negative sampler and subsampling."""

from __future__ import annotations

import numpy as np

from model.sampling import KEEP_SCALE, AliasSampler, keep_probabilities, keep_thresholds


def test_alias_sampler_frequencies_match_unigram_075() -> None:
    counts = np.array([1000, 500, 100, 50, 10, 5, 1], dtype=np.int64)
    sampler = AliasSampler(counts, 0.75)
    n = 2_000_000
    draws = sampler.sample(n, np.random.default_rng(42))
    observed = np.bincount(draws, minlength=counts.size)
    expected = counts**0.75 / (counts**0.75).sum() * n
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    # 6 degrees of freedom: P(chi2 > 22.46) = 0.001; a wrong exponent gives chi2 in the thousands.
    assert chi2 < 22.46, chi2
    uniform_counts = counts**1.0 / counts.sum() * n
    assert float(((observed - uniform_counts) ** 2 / uniform_counts).sum()) > 1000


def test_alias_tables_reproduce_the_distribution_exactly() -> None:
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 10_000, size=5000)
    sampler = AliasSampler(counts, 0.75)
    # Probability mass of each id implied by the tables: own acceptance plus aliased remainder.
    n = counts.size
    mass = sampler.accept.astype(np.float64) / n
    np.add.at(mass, sampler.alias, (1.0 - sampler.accept.astype(np.float64)) / n)
    np.testing.assert_allclose(mass, sampler.probabilities, atol=1e-7)


def test_keep_probability_is_word2vec_formula() -> None:
    counts = np.array([100_000, 1_000, 10], dtype=np.int64)
    sample = 1e-3
    f = counts / counts.sum()
    expected = np.minimum((np.sqrt(f / sample) + 1) * sample / f, 1.0)
    np.testing.assert_allclose(keep_probabilities(counts, sample), expected)
    assert keep_probabilities(counts, sample)[0] < 0.2  # the frequent word is mostly dropped
    assert keep_probabilities(counts, sample)[2] == 1.0


def test_sample_zero_keeps_every_word() -> None:
    thresholds = keep_thresholds(np.array([10**6, 1]), 0.0)
    assert np.all(thresholds == KEEP_SCALE)
