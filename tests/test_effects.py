"""Effect sizes from raw trial summaries (hierjax.model.effects), checked by hand-written formulas
and against BDA3's published beta-blocker table (Table 5.4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from hierjax.datasets import beta_blockers
from hierjax.model.effects import (
    EffectSizes,
    hedges_correction,
    log_odds_ratio,
    log_risk_ratio,
    mean_difference,
    risk_difference,
    standardized_mean_difference,
)
from hierjax.model.priors import InputError

# BDA3 Table 5.4, columns "log odds y_j" and "sd sigma_j" as printed (3 decimals).
BDA3_Y = [
    0.028,
    -0.741,
    -0.541,
    -0.246,
    0.069,
    -0.584,
    -0.512,
    -0.079,
    -0.424,
    -0.335,
    -0.213,
    -0.039,
    -0.593,
    0.282,
    -0.321,
    -0.135,
    0.141,
    0.322,
    0.444,
    -0.218,
    -0.591,
    -0.608,
]
BDA3_SIGMA = [
    0.850,
    0.483,
    0.565,
    0.138,
    0.281,
    0.676,
    0.139,
    0.204,
    0.274,
    0.117,
    0.195,
    0.229,
    0.425,
    0.205,
    0.298,
    0.261,
    0.364,
    0.553,
    0.717,
    0.260,
    0.257,
    0.272,
]


def test_beta_blockers_match_bda3_table_5_4():
    d = beta_blockers()
    assert all(len(a) == 22 for a in d)
    es = log_odds_ratio(d.treated_deaths, d.treated_total, d.control_deaths, d.control_total)
    assert isinstance(es, EffectSizes)
    np.testing.assert_array_equal(np.round(es.y, 3), BDA3_Y)
    np.testing.assert_array_equal(np.round(es.sigma, 3), BDA3_SIGMA)


def _by_hand_or(a, n1, c, n2):
    b, d = n1 - a, n2 - c
    if 0 in (a, b, c, d):
        a, b, c, d = a + 0.5, b + 0.5, c + 0.5, d + 0.5
    return math.log(a * d / (b * c)), math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)


def _by_hand_rr(a, n1, c, n2):
    b, d = n1 - a, n2 - c
    if 0 in (a, b, c, d):
        a, b, c, d = a + 0.5, b + 0.5, c + 0.5, d + 0.5
    m1, m2 = a + b, c + d
    return math.log((a / m1) / (c / m2)), math.sqrt(1 / a - 1 / m1 + 1 / c - 1 / m2)


TABLES = [(12, 50, 20, 48), (0, 30, 5, 31), (4, 4, 2, 9), (0, 10, 0, 12), (7, 100, 7, 100)]


def test_two_by_two_by_hand():
    a, n1, c, n2 = (np.array(v) for v in zip(*TABLES))
    orr, rr, rd = (
        log_odds_ratio(a, n1, c, n2),
        log_risk_ratio(a, n1, c, n2),
        risk_difference(a[[0, 1, 2, 4]], n1[[0, 1, 2, 4]], c[[0, 1, 2, 4]], n2[[0, 1, 2, 4]]),
    )
    for j, t in enumerate(TABLES):
        np.testing.assert_allclose(
            [orr.y[j], orr.sigma[j]], _by_hand_or(*t), rtol=1e-14, atol=1e-15
        )
        np.testing.assert_allclose([rr.y[j], rr.sigma[j]], _by_hand_rr(*t), rtol=1e-14, atol=1e-15)
    for j, (ai, ni, ci, mi) in enumerate([TABLES[k] for k in (0, 1, 2, 4)]):
        p1, p2 = ai / ni, ci / mi
        np.testing.assert_allclose(
            [rd.y[j], rd.sigma[j]],
            [p1 - p2, math.sqrt(p1 * (1 - p1) / ni + p2 * (1 - p2) / mi)],
            rtol=1e-14,
            atol=1e-16,
        )
    # the correction only touches tables with a zero cell, and can be changed or turned off
    assert log_odds_ratio(12, 50, 20, 48, cc=0.0).y == pytest.approx(orr.y[0], rel=1e-15)
    y1 = log_odds_ratio(0, 30, 5, 31, cc=1.0).y
    assert y1 == pytest.approx(math.log(1 * 27 / (31 * 6)), rel=1e-14)


def test_batched_shapes_broadcast():
    a = np.array([[3, 7, 5], [0, 2, 9]])
    es = log_odds_ratio(a, 40, 6, 41)
    assert es.y.shape == es.sigma.shape == (2, 3)
    np.testing.assert_allclose(es.y[1, 0], _by_hand_or(0, 40, 6, 41)[0], rtol=1e-14)


def test_means_by_hand():
    m1, s1, n1, m2, s2, n2 = 10.2, 3.1, 12, 8.7, 2.6, 15
    md = mean_difference(m1, s1, n1, m2, s2, n2)
    assert float(md.y) == pytest.approx(1.5, rel=1e-14)
    assert float(md.sigma) == pytest.approx(math.sqrt(s1**2 / n1 + s2**2 / n2), rel=1e-14)
    smd = standardized_mean_difference(m1, s1, n1, m2, s2, n2)
    m = n1 + n2 - 2
    sp = math.sqrt(((n1 - 1) * s1**2 + (n2 - 1) * s2**2) / m)
    cm = math.exp(special.gammaln(m / 2) - special.gammaln((m - 1) / 2)) / math.sqrt(m / 2)
    g = cm * (m1 - m2) / sp
    assert float(smd.y) == pytest.approx(g, rel=1e-13)
    assert float(smd.sigma) == pytest.approx(
        math.sqrt(1 / n1 + 1 / n2 + g * g / (2 * (n1 + n2))), rel=1e-13
    )
    # Hedges' approximation 1 - 3/(4m - 1) is within O(m^-2) of the exact factor
    for mm in (10, 100, 1000):
        assert abs(float(hedges_correction(mm)) - (1 - 3 / (4 * mm - 1))) < 1.0 / mm**2


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((3, 10, 12, 10), "study 1: events2 (12) > total2 (10)"),
        (([3, -1], [10, 10], [2, 2], [9, 9]), "study 2: events1 is -1"),
        (([3, 2.5], [10, 10], [2, 2], [9, 9]), "non-negative integer"),
        (([3, 2], [10, 0], [0, 0], [9, 9]), "total1 is 0"),
        (([3, np.nan], [10, 10], [2, 2], [9, 9]), "study 2: events1 is nan"),
        (([[1, 2], [3, 40]], 30, 2, 9), "dataset 1, study 2: events1 (40) > total1 (30)"),
        (("a", 10, 2, 9), "events1 must be numeric"),
        (([1, 2, 3], [10, 10], 2, 9), "shapes do not match"),
    ],
)
def test_count_errors(args, fragment):
    with pytest.raises(InputError, match=None) as e:
        log_odds_ratio(*args)
    assert fragment in str(e.value)


def test_zero_cell_errors():
    with pytest.raises(InputError, match="cc = 0"):
        log_odds_ratio(0, 10, 3, 10, cc=0.0)
    with pytest.raises(InputError, match="cc = 0"):
        log_risk_ratio(0, 10, 3, 10, cc=0.0)
    with pytest.raises(InputError, match="standard error 0"):
        risk_difference([2, 0], [10, 10], [3, 0], [10, 12])
    with pytest.raises(InputError, match="cc must be"):
        log_odds_ratio(1, 10, 3, 10, cc=-1.0)


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((1.0, 1.0, 1, 0.0, 1.0, 5), "n1 is 1 (must be an integer >= 2)"),
        ((1.0, 0.0, 5, 0.0, 1.0, 5), "sd1 is 0"),
        ((1.0, 1.0, 5, 0.0, 1.0, 4.5), "n2 is 4.5"),
        (([1.0, np.inf], 1.0, 5, 0.0, 1.0, 5), "study 2: mean1 is inf"),
    ],
)
def test_smd_errors(args, fragment):
    with pytest.raises(InputError) as e:
        standardized_mean_difference(*args)
    assert fragment in str(e.value)
    if "n1 is 1" in fragment:  # the raw mean difference allows n = 1
        mean_difference(*args)
