"""Embedded datasets (public, published numbers).

* Eight schools, BDA3 Table 5.2 (rounded), as used by the seed lecture, Stan and NumPyro.
* Eight schools with Rubin's (1981) unrounded values, as in R's bayesmeta (``Rubin1981``).
* Beta-blocker trials, BDA3 Table 5.4 (Yusuf et al. 1985): deaths / total per arm.
* Efron and Morris (1975) baseball: 18 players' first 45 at-bats and their averages over
  the rest of the season (the "truth" that shrinkage predicts better).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "SCHOOLS",
    "BetaBlockers",
    "beta_blockers",
    "Baseball",
    "efron_morris",
    "eight_schools",
    "rubin_eight_schools",
]

SCHOOLS = ("A", "B", "C", "D", "E", "F", "G", "H")


def eight_schools():
    """``(y[8], sigma[8])``: SAT coaching effects and their standard errors (BDA3 Table 5.2)."""
    y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    return y, sigma


def rubin_eight_schools():
    """``(y[8], sigma[8])``: Rubin (1981) unrounded values (bayesmeta's ``Rubin1981``)."""
    y = np.array([28.39, 7.94, -2.75, 6.82, -0.64, 0.63, 18.01, 12.16])
    sigma = np.array([14.9, 10.2, 16.3, 11.0, 9.4, 11.4, 10.4, 17.6])
    return y, sigma


class BetaBlockers(NamedTuple):
    """Deaths and patients per arm of the 22 beta-blocker trials, each ``[22]`` (int).

    Attributes:
        control_deaths, control_total: control arm.
        treated_deaths, treated_total: beta-blocker arm.
    """

    control_deaths: np.ndarray
    control_total: np.ndarray
    treated_deaths: np.ndarray
    treated_total: np.ndarray


def beta_blockers() -> BetaBlockers:
    """The 22 beta-blocker trials of BDA3 Table 5.4 (Yusuf et al. 1985; Carlin 1992).

    BDA3 sec. 5.6 analyses the log odds ratio treated vs control
    (:func:`hierjax.model.effects.log_odds_ratio`), ``y_j = log(d_t/(n_t-d_t)) - log(d_c/(n_c-d_c))``
    with ``sigma_j^2 = 1/d_t + 1/(n_t-d_t) + 1/d_c + 1/(n_c-d_c)`` (no zero cells here).

    Example:
        >>> from hierjax.model.effects import log_odds_ratio
        >>> d = beta_blockers()
        >>> y, sigma = log_odds_ratio(d.treated_deaths, d.treated_total,
        ...                           d.control_deaths, d.control_total)
    """
    return BetaBlockers(
        control_deaths=np.array(
            [3, 14, 11, 127, 27, 6, 152, 48, 37, 188, 52, 47, 16, 45, 31, 38, 12, 6, 3, 40, 43, 39]
        ),
        control_total=np.array(
            [
                39,
                116,
                93,
                1520,
                365,
                52,
                939,
                471,
                282,
                1921,
                583,
                266,
                293,
                883,
                147,
                213,
                122,
                154,
                134,
                218,
                364,
                674,
            ]
        ),
        treated_deaths=np.array(
            [3, 7, 5, 102, 28, 4, 98, 60, 25, 138, 64, 45, 9, 57, 25, 33, 28, 8, 6, 32, 27, 22]
        ),
        treated_total=np.array(
            [
                38,
                114,
                69,
                1533,
                355,
                59,
                945,
                632,
                278,
                1916,
                873,
                263,
                291,
                858,
                154,
                207,
                251,
                151,
                174,
                209,
                391,
                680,
            ]
        ),
    )


class Baseball(NamedTuple):
    r"""Efron and Morris (1975): 18 batters of 1970, on the variance-stabilising scale.

    .. math::
        y_j = \sqrt{45}\, \arcsin(2 h_j / 45 - 1) \approx N(\theta_j, 1),\qquad
        \theta_j^{\rm season} = \sqrt{45}\, \arcsin(2 a_j - 1)

    Attributes:
        names: the players, length 18.
        hits: hits in the first 45 at-bats, ``[18]``.
        y: transformed early averages, ``[18]``; ``sigma`` is 1 for all.
        sigma: ``[18]`` ones.
        season: the rest-of-season averages ``a_j``, ``[18]``.
        truth: ``a_j`` on the same scale as ``y``, ``[18]``.
    """

    names: tuple
    hits: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    season: np.ndarray
    truth: np.ndarray


def efron_morris() -> Baseball:
    """The Efron and Morris (1975) baseball data (Table 1 of their JASA paper)."""
    names = (
        "Clemente",
        "F. Robinson",
        "F. Howard",
        "Johnstone",
        "Berry",
        "Spencer",
        "Kessinger",
        "L. Alvarado",
        "Santo",
        "Swoboda",
        "Petrocelli",
        "E. Rodriguez",
        "G. Scott",
        "Unser",
        "B. Williams",
        "Campaneris",
        "Munson",
        "Alvis",
    )
    hits = np.array([18, 17, 16, 15, 14, 14, 13, 12, 11, 11, 10, 10, 10, 10, 10, 9, 8, 7])
    season = np.array(
        [
            0.346,
            0.2981,
            0.2764,
            0.2218,
            0.2727,
            0.2704,
            0.2645,
            0.2101,
            0.2686,
            0.2300,
            0.2639,
            0.2258,
            0.3034,
            0.2635,
            0.3299,
            0.2849,
            0.3162,
            0.2000,
        ]
    )
    scale = np.sqrt(45.0)
    y = scale * np.arcsin(2.0 * hits / 45.0 - 1.0)
    truth = scale * np.arcsin(2.0 * season - 1.0)
    return Baseball(names, hits, y, np.ones(18), season, truth)
