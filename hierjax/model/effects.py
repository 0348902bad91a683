r"""Effect sizes with standard errors from raw trial summaries: meta-analysis input.

Batched NumPy on the host (any common shape: ``[J]`` studies or ``[B, J]`` datasets),
returning :class:`EffectSizes` ``(y, sigma)`` ready for :func:`hierjax.fit`. The
formulas and defaults follow ``metafor::escalc`` (Viechtbauer 2010, J. Stat. Softw.
36(3)), so results can be compared with R.

Two-by-two tables (arm 1 "treated" vs arm 2 "control"), with cells
``a = events1``, ``b = total1 - events1``, ``c = events2``, ``d = total2 - events2``:

.. math::
    \text{log OR} = \log\frac{a d}{b c},\quad v = \frac1a + \frac1b + \frac1c + \frac1d \qquad
    \text{log RR} = \log\frac{a / n_1}{c / n_2},\quad v = \frac1a - \frac1{n_1} + \frac1c - \frac1{n_2}

    \text{RD} = \frac{a}{n_1} - \frac{c}{n_2},\quad
    v = \frac{p_1 (1 - p_1)}{n_1} + \frac{p_2 (1 - p_2)}{n_2}

Continuity correction (escalc's default ``add = 1/2, to = "only0"``): for the log OR and
log RR, a study with a zero cell gets ``cc`` (default 0.5) added to all four cells
(so ``n_1, n_2`` grow by ``2 cc``); other studies are untouched, and studies with zero
events in both arms are kept (escalc's ``drop00 = FALSE``). ``cc = 0`` turns it off (a
zero cell then raises). The risk difference is not corrected (escalc does not need it);
a study whose RD variance is 0 (both proportions 0 or 1) raises.

Means and SDs (arm 1 vs arm 2):

.. math::
    \text{MD} = \bar x_1 - \bar x_2,\quad v = \frac{s_1^2}{n_1} + \frac{s_2^2}{n_2}

    g = c(m)\, \frac{\bar x_1 - \bar x_2}{s_p},\quad
    s_p^2 = \frac{(n_1 - 1) s_1^2 + (n_2 - 1) s_2^2}{m},\quad m = n_1 + n_2 - 2,\quad
    c(m) = \frac{\Gamma(m/2)}{\sqrt{m/2}\,\Gamma((m-1)/2)},\quad
    v = \frac1{n_1} + \frac1{n_2} + \frac{g^2}{2 (n_1 + n_2)}

(Hedges' g with the exact small-sample correction, Hedges 1981; escalc's ``"SMD"``
with its default large-sample variance.)

References:
    Viechtbauer (2010), Conducting meta-analyses in R with the metafor package,
    *J. Stat. Softw.* 36(3); metafor's ``escalc`` help.
    Hedges (1981), Distribution theory for Glass's estimator of effect size, *J. Educ.
    Stat.* 6(2).
    Gelman et al. (2013), *Bayesian Data Analysis*, 3rd ed., sec. 5.6 (beta-blockers).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from hierjax.model.priors import InputError

__all__ = [
    "EffectSizes",
    "hedges_correction",
    "log_odds_ratio",
    "log_risk_ratio",
    "mean_difference",
    "risk_difference",
    "standardized_mean_difference",
]


class EffectSizes(NamedTuple):
    """Effect estimates and their standard errors (unpack into :func:`hierjax.fit`).

    Attributes:
        y: effect estimates, ``[J]`` or ``[B, J]`` (the broadcast shape of the inputs).
        sigma: standard errors, same shape.
    """

    y: np.ndarray
    sigma: np.ndarray


def _where(idx, shape) -> str:
    """``"study 3"`` or ``"dataset 1, study 3"`` (1-based studies) for an index."""
    if len(shape) == 0:
        return "study 1"
    if len(shape) == 1:
        return f"study {idx[0] + 1}"
    return f"dataset {idx[0]}, study {idx[-1] + 1}" if len(shape) == 2 else f"entry {idx}"


def _fail(bad, shape, message):
    if np.any(bad):
        idx = np.unravel_index(int(np.flatnonzero(bad)[0]), shape) if shape else ()
        raise InputError(f"{_where(idx, shape)}: {message(idx)}")


def _numbers(names, values):
    """Float64 arrays broadcast to one shape; non-numbers and non-finite values raise."""
    arrs = []
    for name, v in zip(names, values):
        try:
            a = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{name} must be numeric") from None
        arrs.append(a)
    try:
        arrs = np.broadcast_arrays(*arrs)
    except ValueError:
        raise InputError(
            "shapes do not match: " + ", ".join(f"{n} {np.shape(a)}" for n, a in zip(names, arrs))
        ) from None
    shape = arrs[0].shape
    for name, a in zip(names, arrs):
        _fail(
            ~np.isfinite(a), shape, lambda i, a=a, name=name: f"{name} is {a[i]} (must be finite)"
        )
    return [np.array(a) for a in arrs], shape


def _counts(e1, n1, e2, n2):
    names = ("events1", "total1", "events2", "total2")
    (e1, n1, e2, n2), shape = _numbers(names, (e1, n1, e2, n2))
    for name, a in zip(names, (e1, n1, e2, n2)):
        _fail(
            (a < 0) | (a != np.round(a)),
            shape,
            lambda i, a=a, name=name: f"{name} is {a[i]} (must be a non-negative integer)",
        )
    for name, a in (("total1", n1), ("total2", n2)):
        _fail(a < 1, shape, lambda i, a=a, name=name: f"{name} is {a[i]:g} (must be >= 1)")
    for en, nn, e, n in (("events1", "total1", e1, n1), ("events2", "total2", e2, n2)):
        _fail(e > n, shape, lambda i, e=e, n=n, en=en, nn=nn: f"{en} ({e[i]:g}) > {nn} ({n[i]:g})")
    return e1, n1, e2, n2, shape


def _cells(e1, n1, e2, n2, cc):
    """Cells ``a, b, c, d`` with the "only0" continuity correction."""
    if not (np.isfinite(cc) and cc >= 0):
        raise InputError(f"cc must be a non-negative number, got {cc!r}")
    a, b, c, d = e1, n1 - e1, e2, n2 - e2
    zero = (a == 0) | (b == 0) | (c == 0) | (d == 0)
    add = np.where(zero, float(cc), 0.0)
    return a + add, b + add, c + add, d + add


def log_odds_ratio(events1, total1, events2, total2, *, cc: float = 0.5) -> EffectSizes:
    """Log odds ratio of arm 1 vs arm 2 and its standard error (see the module doc).

    Args:
        events1, total1: events and sample size in arm 1 (treated), ``[J]`` or ``[B, J]``.
        events2, total2: the same for arm 2 (control).
        cc: continuity correction added to all cells of a table with a zero cell.

    Returns:
        EffectSizes ``(y, sigma)``.

    Raises:
        InputError: counts that are not non-negative integers, events > total, total < 1,
            or a zero cell with ``cc = 0``.

    Example:
        >>> es = log_odds_ratio([3, 7], [38, 114], [3, 14], [39, 116])
        >>> [round(float(v), 3) for v in es.y]
        [0.028, -0.741]
    """
    e1, n1, e2, n2, shape = _counts(events1, total1, events2, total2)
    a, b, c, d = _cells(e1, n1, e2, n2, cc)
    _fail(
        (a == 0) | (b == 0) | (c == 0) | (d == 0),
        shape,
        lambda i: "a zero cell and cc = 0: the log odds ratio is infinite",
    )
    y = np.log(a) + np.log(d) - np.log(b) - np.log(c)
    return EffectSizes(y, np.sqrt(1 / a + 1 / b + 1 / c + 1 / d))


def log_risk_ratio(events1, total1, events2, total2, *, cc: float = 0.5) -> EffectSizes:
    """Log risk ratio of arm 1 vs arm 2 and its standard error (see the module doc).

    Args and Raises as :func:`log_odds_ratio`.
    """
    e1, n1, e2, n2, shape = _counts(events1, total1, events2, total2)
    a, b, c, d = _cells(e1, n1, e2, n2, cc)
    _fail(
        (a == 0) | (c == 0),
        shape,
        lambda i: "zero events and cc = 0: the log risk ratio is infinite",
    )
    m1, m2 = a + b, c + d
    y = np.log(a / m1) - np.log(c / m2)
    return EffectSizes(y, np.sqrt(1 / a - 1 / m1 + 1 / c - 1 / m2))


def risk_difference(events1, total1, events2, total2) -> EffectSizes:
    """Risk difference ``p1 - p2`` and its standard error (no continuity correction).

    Raises:
        InputError: as :func:`log_odds_ratio`, and when both proportions are 0 or 1
            (variance 0: the normal model cannot use the study).
    """
    e1, n1, e2, n2, shape = _counts(events1, total1, events2, total2)
    p1, p2 = e1 / n1, e2 / n2
    v = p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2
    _fail(
        v <= 0,
        shape,
        lambda i: "both proportions are 0 or 1: the risk difference has standard error 0",
    )
    return EffectSizes(p1 - p2, np.sqrt(v))


def _means(m1, sd1, n1, m2, sd2, n2, n_min):
    names = ("mean1", "sd1", "n1", "mean2", "sd2", "n2")
    arrs, shape = _numbers(names, (m1, sd1, n1, m2, sd2, n2))
    m1, sd1, n1, m2, sd2, n2 = arrs
    for name, a in (("n1", n1), ("n2", n2)):
        _fail(
            (a < n_min) | (a != np.round(a)),
            shape,
            lambda i, a=a, name=name: f"{name} is {a[i]:g} (must be an integer >= {n_min})",
        )
    for name, a in (("sd1", sd1), ("sd2", sd2)):
        _fail(a <= 0, shape, lambda i, a=a, name=name: f"{name} is {a[i]:g} (must be > 0)")
    return m1, sd1, n1, m2, sd2, n2


def mean_difference(mean1, sd1, n1, mean2, sd2, n2) -> EffectSizes:
    """Raw mean difference of arm 1 vs arm 2 and its standard error (escalc ``"MD"``).

    Raises:
        InputError: non-finite values, ``sd <= 0``, ``n`` not an integer >= 1.
    """
    m1, s1, k1, m2, s2, k2 = _means(mean1, sd1, n1, mean2, sd2, n2, 1)
    return EffectSizes(m1 - m2, np.sqrt(s1**2 / k1 + s2**2 / k2))


def hedges_correction(m):
    r"""Exact small-sample factor :math:`c(m) = \Gamma(m/2) / (\sqrt{m/2}\,\Gamma((m-1)/2))`."""
    m = np.asarray(m, dtype=np.float64)
    lg = np.vectorize(math.lgamma, otypes=[np.float64])
    return np.exp(lg(m / 2) - 0.5 * np.log(m / 2) - lg((m - 1) / 2))


def standardized_mean_difference(mean1, sd1, n1, mean2, sd2, n2) -> EffectSizes:
    """Hedges' g (bias-corrected SMD) of arm 1 vs arm 2 and its standard error (escalc ``"SMD"``).

    Raises:
        InputError: non-finite values, ``sd <= 0``, ``n`` not an integer >= 2 per arm.
    """
    m1, s1, k1, m2, s2, k2 = _means(mean1, sd1, n1, mean2, sd2, n2, 2)
    m = k1 + k2 - 2
    sp = np.sqrt(((k1 - 1) * s1**2 + (k2 - 1) * s2**2) / m)
    g = hedges_correction(m) * (m1 - m2) / sp
    return EffectSizes(g, np.sqrt(1 / k1 + 1 / k2 + g**2 / (2 * (k1 + k2))))
