"""Frequentist companions (:mod:`hierjax.model.frequentist`, ``hierjax freq``) against independent
references: the estimators written again here in NumPy/SciPy (closed forms, ``brentq`` roots
of the generalised Q and of the likelihood scores, SciPy's chi-square and t quantiles), and
metafor's published numbers on real meta-analyses.

Compiled shapes: every ``rma`` call uses the one shared batch :data:`ALL` (16 datasets padded
to ``J = 32``; method, test, level and threshold are traced), so the module compiles the kernel
once per precision; the in-process CLI runs read a CSV of the same datasets (the same shape).
The quantile functions compile three small vmapped programs.
"""

from __future__ import annotations

import csv
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import X64, cli_argv
from scipy import optimize, stats

import hierjax
import hierjax.io.cli
from hierjax.model.frequentist import FREQ_STATUS, TAU2_METHODS, chi2_quantile, rma, t_quantile

F32 = not X64
#: relative accuracy of the computation in the test's precision (the references are float64)
RTOL = 2e-5 if F32 else 1e-9

# ---------------------------------------------------------------------------------------------
# Data

#: BCG vaccine trials (metafor's dat.bcg; tpos, tneg, cpos, cneg), log risk ratios.
BCG = np.array(
    [
        [4, 119, 11, 128],
        [6, 300, 29, 274],
        [3, 228, 11, 209],
        [62, 13536, 248, 12619],
        [33, 5036, 47, 5761],
        [180, 1361, 372, 1079],
        [8, 2537, 10, 619],
        [505, 87886, 499, 87892],
        [29, 7470, 45, 7232],
        [17, 1699, 65, 1600],
        [186, 50448, 141, 27197],
        [5, 2493, 3, 2338],
        [27, 16886, 29, 17825],
    ],
    float,
)


def bcg():
    a, b, c, d = BCG.T
    yi = np.log((a / (a + b)) / (c / (c + d)))
    vi = 1 / a - 1 / (a + b) + 1 / c - 1 / (c + d)
    return yi, vi


# Viechtbauer (2005), J Educ Behav Stat 30:261-293, examples 1 and 2 (yi, vi as printed);
# metafor's own test reproduces pp. 271-272 with rma(yi, vi, method=...):
# https://www.metafor-project.org/doku.php/analyses:viechtbauer2005 (test file
# tests/testthat/test_analysis_example_viechtbauer2005.r in wviechtb/metafor)
V05_1 = (
    np.array([-0.581, 0.530, 0.771, 1.031, 0.553, 0.295, 0.078, 0.573, -0.176, -0.232]),
    np.array([0.023, 0.052, 0.060, 0.115, 0.095, 0.203, 0.200, 0.211, 0.051, 0.040]),
)
V05_2 = (
    np.array(
        [
            0.100,
            -0.162,
            -0.090,
            -0.049,
            -0.046,
            -0.010,
            -0.431,
            -0.261,
            0.134,
            0.019,
            0.175,
            0.056,
            0.045,
            0.103,
            0.121,
            -0.482,
            0.290,
            0.342,
        ]
    ),
    np.array(
        [
            0.016,
            0.015,
            0.050,
            0.050,
            0.032,
            0.052,
            0.036,
            0.024,
            0.034,
            0.033,
            0.031,
            0.034,
            0.039,
            0.167,
            0.134,
            0.096,
            0.016,
            0.035,
        ]
    ),
)


def clasp():
    """DerSimonian & Kacker (2007) CLASP trials, log odds ratios (escalc measure="OR"):
    https://www.metafor-project.org/doku.php/analyses:dersimonian2007"""
    n1 = np.array([156, 303, 565, 1570, 103, 4659.0])
    n2 = np.array([74, 303, 477, 1565, 105, 4650.0])
    a = np.array([5, 5, 12, 69, 9, 313.0])
    c = np.array([8, 17, 9, 94, 11, 352.0])
    yi = np.log(a / (n1 - a)) - np.log(c / (n2 - c))
    vi = 1 / a + 1 / (n1 - a) + 1 / c + 1 / (n2 - c)
    return yi, vi


#: units of the synthetic datasets: metafor's absolute tolerances (uniroot's 1.2e-4, the
#: scoring threshold) are then negligible against tau2, so exact roots are the reference
U = 40.0


def synthetic():
    """``{name: (y, v)}``: k = 2, tau2 = 0 truncation, unequal variances, an offset, k = 20."""
    rng = np.random.default_rng(24)
    s20 = np.exp(rng.normal(0, 0.6, 20))
    y20 = 1.0 + rng.normal(0, 0.7, 20) + s20 * rng.normal(size=20)
    sets = {
        "k2": ([0.0, 3.0], [1.0, 0.25]),
        "k2_close": ([0.0, 0.3], [1.0, 0.5]),
        "trunc": ([0.1, -0.1, 0.05, 0.0, 0.02], [1.0, 1.44, 0.64, 1.0, 2.0]),
        "unequal": ([-1.2, 0.4, 2.5, 0.9, -0.3], [0.01, 0.3, 4.0, 0.05, 1.0]),
        "near_q": ([0.0, 1.1, -1.0], [1.0, 1.0, 1.0]),
        "offset": (
            list(100.0 + np.array([0.3, -1.5, 2.2, 0.1, 1.7, -0.6])),
            [0.5, 0.8, 1.1, 0.4, 0.9, 0.7],
        ),
        "k20": (list(y20), list(s20**2)),
    }
    return {
        n: (U * np.asarray(y, float), U * U * np.asarray(v, float)) for n, (y, v) in sets.items()
    }


SYN = synthetic()
REAL = {"bcg": bcg(), "v05_1": V05_1, "v05_2": V05_2, "clasp": clasp()}
ONE = {"one": (np.array([1.5]), np.array([0.25]))}
#: hierjax.simulate(16384, 8, seed=1)[15558]: REML's Fisher scoring oscillates (each step
#: overshoots, the swing shrinks ~10% a step) and has not converged after 100 steps
OSC = {
    "osc": (
        np.array(
            [
                14.22820727,
                12.39333655,
                -12.53204488,
                6.78196741,
                -5.46355202,
                -6.66586666,
                -11.94584412,
                -12.87659093,
            ]
        ),
        np.array(
            [
                9.10075493,
                17.31365396,
                13.0246299,
                15.80907492,
                17.30165562,
                17.20403991,
                16.76877133,
                17.40613324,
            ]
        )
        ** 2,
    )
}
#: the one batch every test uses (16 datasets -> one compiled shape per precision)
EQUAL = {"equal": (np.array([0.7, 0.7, 0.7]), np.array([0.1, 0.2, 0.4]))}
ALL = {**REAL, **SYN, **ONE, **OSC, **EQUAL}
NAMES = list(ALL)
assert len(NAMES) <= 16 and max(len(y) for y, _ in ALL.values()) <= 32


def run(method, test="z", level=0.95, threshold=1e-5):
    """``rma`` of :data:`ALL` -> ``{name: {field: value}}``."""
    ys = [ALL[n][0] for n in NAMES]
    ss = [np.sqrt(ALL[n][1]) for n in NAMES]
    res = rma(ys, ss, method=method, test=test, level=level, threshold=threshold)
    out = {}
    for b, n in enumerate(NAMES):
        out[n] = {
            f: (getattr(res, f)[b] if f not in ("method", "test") else getattr(res, f))
            for f in res._fields
        }
    return res, out


# ---------------------------------------------------------------------------------------------
# Independent reference (float64 NumPy/SciPy)


def q_gen(y, v, tau2):
    w = 1.0 / (v + tau2)
    mu = np.sum(w * y) / np.sum(w)
    return np.sum(w * (y - mu) ** 2)


def root_q(y, v, target):
    """tau2 >= 0 with Q(tau2) = target (0 if Q(0) < target): brentq, bracket grown."""
    if q_gen(y, v, 0.0) < target:
        return 0.0
    hi = 1.0
    while q_gen(y, v, hi) > target:
        hi *= 4.0
    return optimize.brentq(lambda t: q_gen(y, v, t) - target, 0.0, hi, xtol=1e-14 * hi, rtol=1e-15)


def loglik(y, v, tau2, reml):
    """Marginal (ML) or restricted (REML) log-likelihood of tau2, mu profiled out."""
    w = 1.0 / (v + tau2)
    mu = np.sum(w * y) / np.sum(w)
    ll = -0.5 * np.sum(np.log(v + tau2)) - 0.5 * np.sum(w * (y - mu) ** 2)
    return ll - 0.5 * np.log(np.sum(w)) if reml else ll


def score(y, v, tau2, reml):
    """d loglik / d tau2, differentiated by hand from :func:`loglik`."""
    w = 1.0 / (v + tau2)
    mu = np.sum(w * y) / np.sum(w)
    s = -0.5 * np.sum(w) + 0.5 * np.sum(w**2 * (y - mu) ** 2)
    return s + 0.5 * np.sum(w**2) / np.sum(w) if reml else s


def mle(y, v, reml):
    """The maximiser of :func:`loglik` over tau2 >= 0 (a root of the score, or 0)."""
    if score(y, v, 0.0, reml) <= 0:
        # concave start: also check no interior maximum beats 0 on a coarse grid
        grid = np.geomspace(1e-6, 1e3, 400) * np.mean(v)
        assert max(loglik(y, v, t, reml) for t in grid) <= loglik(y, v, 0.0, reml) + 1e-9
        return 0.0
    hi = np.mean(v)
    while score(y, v, hi, reml) > 0:
        hi *= 4.0
    return optimize.brentq(lambda t: score(y, v, t, reml), 0.0, hi, xtol=1e-14 * hi, rtol=1e-15)


def reference(y, v, method, test, level):
    y, v = np.asarray(y, float), np.asarray(v, float)
    k = len(y)
    w0 = 1.0 / v
    q = q_gen(y, v, 0.0)
    if method == "DL":
        tau2 = max(0.0, (q - (k - 1)) / (w0.sum() - (w0**2).sum() / w0.sum()))
    elif method == "HE":
        tau2 = max(0.0, np.var(y, ddof=1) - v.mean())
    elif method == "SJ":
        t0 = np.var(y, ddof=0)
        tau2 = t0 * q_gen(y, v, t0) / (k - 1)
    elif method in ("PM", "EB"):
        tau2 = root_q(y, v, k - 1.0)
    else:
        tau2 = mle(y, v, method == "REML")
    w = 1.0 / (v + tau2)
    mu = np.sum(w * y) / np.sum(w)
    alpha = 1.0 - level
    if test == "knha":
        se = math.sqrt(np.sum(w * (y - mu) ** 2) / ((k - 1) * np.sum(w)))
        crit = stats.t.isf(alpha / 2, k - 1)
    else:
        se = 1.0 / math.sqrt(np.sum(w))
        crit = stats.norm.isf(alpha / 2)
    s2 = (k - 1) * w0.sum() / (w0.sum() ** 2 - (w0**2).sum())
    lo_t, hi_t = stats.chi2.isf(alpha / 2, k - 1), stats.chi2.ppf(alpha / 2, k - 1)
    pi = crit * math.sqrt(se**2 + tau2)
    return {
        "k": k,
        "tau2": tau2,
        "mu": mu,
        "mu_se": se,
        "mu_lo": mu - crit * se,
        "mu_hi": mu + crit * se,
        "q": q,
        "q_df": k - 1,
        "q_p": stats.chi2.sf(q, k - 1),
        "i2": 100 * tau2 / (tau2 + s2),
        "h2": (tau2 + s2) / s2,
        "tau2_lo": root_q(y, v, lo_t),
        "tau2_hi": root_q(y, v, hi_t),
        "pi_lo": mu - pi,
        "pi_hi": mu + pi,
    }


# ---------------------------------------------------------------------------------------------
# 1. quantiles against SciPy


def test_chi2_and_t_quantiles_match_scipy():
    dt = jnp.float64 if X64 else jnp.float32
    ps = np.array([1e-6, 1e-3, 0.0125, 0.025, 0.05, 0.2, 0.45])
    dfs = np.array([1, 2, 3, 4, 7, 12, 30, 99, 500, 0.5, 2.5])
    P, D = (a.ravel() for a in np.meshgrid(ps, dfs))
    lower = jax.jit(jax.vmap(lambda p, d: chi2_quantile(p, d)))(P.astype(dt), D.astype(dt))
    upper = jax.jit(jax.vmap(lambda p, d: chi2_quantile(p, d, upper=True)))(
        P.astype(dt), D.astype(dt)
    )
    tq = jax.jit(jax.vmap(t_quantile))(P.astype(dt), D.astype(dt))
    rtol = 2e-5 if F32 else 1e-11
    np.testing.assert_allclose(np.asarray(lower, float), stats.chi2.ppf(P, D), rtol=rtol)
    np.testing.assert_allclose(np.asarray(upper, float), stats.chi2.isf(P, D), rtol=rtol)
    np.testing.assert_allclose(np.asarray(tq, float), stats.t.isf(P, D), rtol=rtol)


# ---------------------------------------------------------------------------------------------
# 2. every estimator against the independent formulas

FIELDS = (
    "k",
    "mu",
    "mu_se",
    "mu_lo",
    "mu_hi",
    "tau2",
    "tau2_lo",
    "tau2_hi",
    "i2",
    "h2",
    "q",
    "q_df",
    "q_p",
    "pi_lo",
    "pi_hi",
)


@pytest.mark.parametrize("method", TAU2_METHODS)
def test_estimators_match_independent_formulas(method):
    level = 0.9
    # a tiny threshold: ML, REML and EB then stop at their roots
    _, z = run(method, "z", level=level, threshold=1e-12)
    _, kh = run(method, "knha", level=level, threshold=1e-12)
    for name, (y, v) in SYN.items():
        for test, got in (("z", z[name]), ("knha", kh[name])):
            ref = reference(y, v, method, test, level)
            scale = math.sqrt(np.mean(v))  # units of mu; scale^2: of tau2
            # PM and the Q-profile bounds stop at uniroot's absolute tol (1.2e-4 in data units)
            abs_tol = {
                "mu": scale,
                "mu_se": scale,
                "mu_lo": scale,
                "mu_hi": scale,
                "pi_lo": scale,
                "pi_hi": scale,
                "tau2": scale**2,
                "tau2_lo": scale**2,
                "tau2_hi": scale**2,
            }
            for f in FIELDS:
                atol = RTOL * abs_tol.get(f, 100.0 if f == "i2" else 1.0)
                if f in ("tau2_lo", "tau2_hi") or (f == "tau2" and method == "PM"):
                    atol += 1.3e-4
                if method == "PM" and f not in (
                    "tau2",
                    "tau2_lo",
                    "tau2_hi",
                    "q",
                    "q_p",
                    "k",
                    "q_df",
                ):
                    continue  # follow from tau2 (checked above to uniroot's tolerance)
                np.testing.assert_allclose(
                    float(got[f]),
                    ref[f],
                    rtol=10 * RTOL,
                    atol=atol,
                    err_msg=f"{method} {test} {name} {f}",
                )
            assert got["status"] == 0 and got["converged"], (method, name, got["status"])


def test_truncation_k2_and_pm_follow_from_tau2():
    """tau2 = 0 where the estimate would be negative (each method where it applies); PM's
    mu and intervals follow its own tau2."""
    for method in ("DL", "HE", "PM", "EB", "ML", "REML"):
        _, out = run(method, threshold=1e-12)
        assert float(out["trunc"]["tau2"]) == 0.0, method
        assert float(out["trunc"]["i2"]) == 0.0 and float(out["trunc"]["h2"]) == 1.0
    _, out = run("PM", "knha")
    for name, (y, v) in SYN.items():
        got = out[name]
        tau2 = float(got["tau2"])
        w = 1.0 / (v + tau2)
        mu = np.sum(w * y) / np.sum(w)
        se = math.sqrt(np.sum(w * (y - mu) ** 2) / ((len(y) - 1) * np.sum(w)))
        scale = math.sqrt(np.mean(v))
        np.testing.assert_allclose(float(got["mu"]), mu, rtol=RTOL, atol=RTOL * scale)
        np.testing.assert_allclose(float(got["mu_se"]), se, rtol=10 * RTOL)
        crit = stats.t.isf(0.025, len(y) - 1)
        np.testing.assert_allclose(
            float(got["pi_hi"]),
            mu + crit * math.sqrt(se**2 + tau2),
            rtol=10 * RTOL,
            atol=RTOL * scale,
        )


def test_null_interval_and_not_converged_flag():
    """Q below the lower chi-square quantile: the Q-profile interval is [0, 0] (metafor's
    null set), not flagged; REML's scoring that has not converged after 100 steps is."""
    y, v = SYN["trunc"]
    assert q_gen(y, v, 0.0) < stats.chi2.ppf(0.025, len(y) - 1)
    _, out = run("REML")
    assert float(out["trunc"]["tau2_lo"]) == 0.0 == float(out["trunc"]["tau2_hi"])
    assert out["trunc"]["status"] == 0
    osc = out["osc"]
    assert not osc["converged"] and osc["status"] & FREQ_STATUS["not_converged"]
    _, dl = run("DL")
    assert dl["osc"]["converged"] and dl["osc"]["status"] == 0


def test_equal_estimates():
    """All y_i equal: Q = 0, tau2 = 0 by every method, the Q-profile interval [0, 0], and
    metafor's Knapp-Hartung scale s2w = 0 (its RSS <= eps rule): a zero-width interval."""
    for method in TAU2_METHODS:
        _, out = run(method, "knha")
        e = out["equal"]
        assert float(e["tau2"]) == 0.0 and float(e["q"]) <= 1e-12, method
        assert float(e["q_p"]) == pytest.approx(1.0) and e["status"] == 0
        assert float(e["tau2_lo"]) == 0.0 == float(e["tau2_hi"])
        assert float(e["mu_se"]) == 0.0
        np.testing.assert_allclose([float(e["mu_lo"]), float(e["mu_hi"])], 0.7, rtol=RTOL)


def test_one_study():
    """k = 1 as metafor: tau2 = 0, Q = 0, p = 1, I^2 = 0, H^2 = 1; no Q-profile interval and
    no Knapp-Hartung interval (t with 0 df); flagged."""
    _, z = run("REML")
    _, kh = run("REML", "knha")
    one = z["one"]
    assert one["k"] == 1 and float(one["tau2"]) == 0.0 and float(one["q"]) == 0.0
    assert float(one["q_p"]) == 1.0 and float(one["i2"]) == 0.0 and float(one["h2"]) == 1.0
    assert one["status"] == FREQ_STATUS["one_study"]
    np.testing.assert_allclose([float(one["mu"]), float(one["mu_se"])], [1.5, 0.5], rtol=RTOL)
    np.testing.assert_allclose(
        float(one["mu_hi"]), 1.5 + 0.5 * stats.norm.isf(0.025), rtol=10 * RTOL
    )
    assert np.isnan(float(one["tau2_lo"])) and np.isnan(float(kh["one"]["mu_lo"]))


# ---------------------------------------------------------------------------------------------
# 3. metafor's published numbers


def close(got, want, digits, name):
    """``want`` printed to ``digits`` decimals: within half a unit of the last one."""
    tol = 0.5 * 10.0**-digits * 1.001 + 4 * RTOL * abs(want)
    assert abs(float(got) - want) <= tol, f"{name}: {float(got)!r} vs {want} (+-{tol:.1e})"


def test_bcg_metafor():
    """metafor 3.8 rma(yi, vi) on dat.bcg (REFERENCES.md; metafor's documentation and
    Viechtbauer 2010 print the same to 4 digits), and confint()'s Q-profile interval."""
    _, reml = run("REML")
    _, kh = run("REML", "knha")
    _, dl = run("DL")
    b = reml["bcg"]
    for f, want in [
        ("mu", -0.714532),
        ("mu_se", 0.179782),
        ("mu_lo", -1.066898),
        ("mu_hi", -0.362167),
        ("tau2", 0.313243),
        ("i2", 92.2214),
        ("h2", 12.8558),
        ("q", 152.2330),
        ("pi_lo", -1.866692),
        ("pi_hi", 0.437628),
        ("tau2_lo", 0.119695),
        ("tau2_hi", 1.111486),
    ]:
        close(b[f], want, 6 if abs(want) < 10 else 4, f"REML {f}")
    for f, want in [("mu_se", 0.180792), ("mu_lo", -1.108444), ("mu_hi", -0.320621)]:
        close(kh["bcg"][f], want, 6, f"knha {f}")
    for f, want in [
        ("mu", -0.714117),
        ("mu_se", 0.178742),
        ("mu_lo", -1.064445),
        ("mu_hi", -0.363789),
        ("tau2", 0.308760),
        ("i2", 92.1173),
        ("h2", 12.6861),
        ("pi_lo", -1.858154),
        ("pi_hi", 0.429919),
    ]:
        close(dl["bcg"][f], want, 6 if abs(want) < 10 else 4, f"DL {f}")
    assert int(b["q_df"]) == 12 and b["status"] == 0


# tau2, I^2, H^2 per method (Viechtbauer 2005 pp. 271-272 as metafor reproduces them)
V05_PUBLISHED = {
    "v05_1": {
        "HE": (0.1484, 68.7988, 3.2050),
        "DL": (0.2768, 80.4447, 5.1137),
        "ML": (0.1967, 74.5098, 3.9231),
        "REML": (0.2232, 76.8399, 4.3178),
        "EB": (0.1920, 74.0511, 3.8537),
        "SJ": (0.1992, 74.7545, 3.9611),
    },
    "v05_2": {
        "HE": (0.0, 0.0, 1.0),
        "DL": (0.0126, 27.5275, 1.3798),
        "ML": (0.0132, 28.4505, 1.3976),
        "REML": (0.0157, 32.0203, 1.4710),
        "EB": (0.0104, 23.7198, 1.3110),
        "SJ": (0.0248, 42.6734, 1.7444),
    },
}
# tau, mu, se per method (DerSimonian & Kacker 2007, Tables 3-4, as metafor reproduces them)
CLASP_PUBLISHED = {
    "PM": (0.3681, -0.3811, 0.2060),
    "HE": (0.4410, -0.4035, 0.2327),
    "DL": (0.2323, -0.3240, 0.1540),
    "EB": (0.3681, -0.3811, 0.2060),
    "ML": (0.0023, -0.1974, 0.0694),
    "REML": (0.1843, -0.2980, 0.1343),
    "SJ": (0.4572, -0.4079, 0.2386),
}


@pytest.mark.parametrize("method", ["HE", "DL", "ML", "REML", "EB", "SJ", "PM"])
def test_viechtbauer2005_and_clasp_metafor(method):
    """The iterative estimators as metafor stops them (threshold 1e-5; uniroot for PM):
    EB's I^2 of example 2 is 23.7198 there, 23.7179 at the exact root."""
    _, out = run(method)
    for name, table in V05_PUBLISHED.items():
        if method in table:
            tau2, i2, h2 = table[method]
            close(out[name]["tau2"], tau2, 4, f"{name} {method} tau2")
            close(out[name]["i2"], i2, 4, f"{name} {method} I2")
            close(out[name]["h2"], h2, 4, f"{name} {method} H2")
    tau, mu, se = CLASP_PUBLISHED[method]
    close(math.sqrt(float(out["clasp"]["tau2"])), tau, 4, f"CLASP {method} tau")
    close(out["clasp"]["mu"], mu, 4, f"CLASP {method} mu")
    close(out["clasp"]["mu_se"], se, 4, f"CLASP {method} se")


def test_bcg_dl_qprofile_metafor():
    """metafor's test_misc_confint.r: confint(rma(yi, vi, method="DL")) on dat.bcg gives
    tau2 0.3088 (0.1197, 1.1115); the Q-profile interval does not depend on the method."""
    _, dl = run("DL")
    for f, want in (("tau2", 0.3088), ("tau2_lo", 0.1197), ("tau2_hi", 1.1115)):
        close(dl["bcg"][f], want, 4, f)


def r_zeroin(f, a, b, fa, fb, tol, maxit=1000):
    """R's uniroot (Brent's zeroin, src/library/stats/src/zeroin.c), in plain Python."""
    c, fc = a, fa
    if fa == 0:
        return a
    if fb == 0:
        return b
    for _ in range(maxit + 1):
        prev_step = b - a
        if abs(fc) < abs(fb):
            a, b, c = b, c, b
            fa, fb, fc = fb, fc, fb
        tol_act = 2 * np.finfo(float).eps * abs(b) + tol / 2
        new_step = (c - b) / 2
        if abs(new_step) <= tol_act or fb == 0:
            return b
        if abs(prev_step) >= tol_act and abs(fa) > abs(fb):
            cb = c - b
            if a == c:
                t1 = fb / fa
                p, q = cb * t1, 1.0 - t1
            else:
                q, t1, t2 = fa / fc, fb / fc, fb / fa
                p = t2 * (cb * q * (q - t1) - (b - a) * (t1 - 1.0))
                q = (q - 1.0) * (t1 - 1.0) * (t2 - 1.0)
            if p > 0:
                q = -q
            else:
                p = -p
            if p < 0.75 * cb * q - abs(tol_act * q) / 2 and p < abs(prev_step * q / 2):
                new_step = p / q
        if abs(new_step) < tol_act:
            new_step = tol_act if new_step > 0 else -tol_act
        a, fa = b, fb
        b += new_step
        fb = f(b)
        if (fb > 0 and fc > 0) or (fb < 0 and fc < 0):
            c, fc = a, fa
    raise RuntimeError("zeroin did not converge")


UNIROOT_TOL = np.finfo(float).eps ** 0.25


def metafor_tau2(y, v, method, threshold=1e-5):
    """metafor's rma.uni tau2 for PM, EB, ML, REML, as its R code runs (plain Python)."""
    k = len(y)
    if method == "PM":
        tau2_max = max(100.0, 10 * (1.4826 * np.median(np.abs(y - np.median(y)))) ** 2)
        if q_gen(y, v, 0.0) < k - 1:
            return 0.0
        assert q_gen(y, v, tau2_max) <= k - 1
        f = lambda t: q_gen(y, v, t) - (k - 1)
        return r_zeroin(f, 0.0, tau2_max, f(0.0), f(tau2_max), UNIROOT_TOL)
    tau2 = max(0.0, np.var(y, ddof=1) - np.mean(v))  # HE start
    for _ in range(101):
        w = 1 / (v + tau2)
        P = np.diag(w) - np.outer(w, w) / w.sum()
        if method == "ML":
            adj = (y @ P @ P @ y - w.sum()) / (w**2).sum()
        elif method == "REML":
            adj = (y @ P @ P @ y - np.trace(P)) / np.sum(P * P)
        else:
            adj = (y @ P @ y * k / (k - 1) - k) / w.sum()
        while tau2 + adj < 0:
            adj /= 2
        old, tau2 = tau2, tau2 + adj
        if abs(old - tau2) <= threshold:
            break
    else:
        raise RuntimeError("Fisher scoring did not converge")
    if method in ("ML", "REML"):
        reml = method == "REML"
        if loglik(y, v, 0.0, reml) - loglik(y, v, tau2, reml) > UNIROOT_TOL and tau2 > threshold:
            tau2 = 0.0
    return max(0.0, tau2)


def metafor_qprofile(y, v, tau2, level=0.95):
    """confint.rma.uni's Q-profile bounds (both inside its search interval here)."""
    k, alpha = len(y), 1 - level
    tau2_max = max(100.0, 10 * tau2)
    out = []
    for target in (stats.chi2.isf(alpha / 2, k - 1), stats.chi2.ppf(alpha / 2, k - 1)):
        f = lambda t, c=target: q_gen(y, v, t) - c
        if f(0.0) < 0:
            out.append(0.0)
            continue
        assert f(tau2_max) < 0
        out.append(r_zeroin(f, 0.0, tau2_max, f(0.0), f(tau2_max), UNIROOT_TOL))
    return out


@pytest.mark.parametrize("method", ["PM", "EB", "ML", "REML"])
def test_iterates_are_metafors(method):
    """Beyond the printed digits: the iterative estimators and the Q-profile bounds equal
    metafor's algorithms (Fisher scoring with its threshold and ll0check; R's uniroot on its
    intervals), re-run here in plain Python, where they differ from the exact roots."""
    _, out = run(method)
    for name, (y, v) in REAL.items():
        tau2 = metafor_tau2(y, v, method)
        got = out[name]
        # float32: the scoring stops at its own round-off floor, a few 1e-6 of sigma^2
        atol = 0.0 if X64 else 1e-5 * np.exp(np.mean(np.log(v)))
        np.testing.assert_allclose(
            float(got["tau2"]), tau2, rtol=10 * RTOL, atol=atol, err_msg=f"{method} {name}"
        )
        lo, hi = metafor_qprofile(y, v, tau2)
        np.testing.assert_allclose(
            [float(got["tau2_lo"]), float(got["tau2_hi"])],
            [lo, hi],
            rtol=10 * RTOL,
            atol=atol,
            err_msg=f"{method} {name} CI",
        )


# ---------------------------------------------------------------------------------------------
# 4. the API's contract


def test_result_shapes_dtypes_and_errors():
    res, _ = run("DL")
    B = len(NAMES)
    dt = np.float64 if X64 else np.float32
    for f in res._fields:
        if f in ("method", "test"):
            continue
        assert getattr(res, f).shape == (B,), f
    assert res.mu.dtype == dt and res.k.dtype.kind == "i" and res.converged.dtype == bool
    assert res.method == "DL" and res.test == "z"
    y, v = REAL["bcg"]
    for kwargs, words in [
        ({"method": "XX"}, "method"),
        ({"test": "t"}, "test"),
        ({"level": 95}, "level"),
        ({"threshold": 0}, "threshold"),
    ]:
        with pytest.raises(ValueError, match=words):
            rma(y, np.sqrt(v), **kwargs)
    bad = np.sqrt(v).copy()
    bad[2] = 0.0
    with pytest.raises(ValueError, match=r"sigma\[3\]"):
        rma(y, bad)
    with pytest.raises(ValueError, match=r"y\[1\]"):
        rma([np.array([np.nan, 1.0])], [np.array([1.0, 1.0])])
    with pytest.raises(ValueError, match="no studies"):
        rma(np.zeros((1, 3)), np.ones((1, 3)), mask=np.zeros((1, 3), bool))


def test_padding_and_float32_inputs():
    """Garbage in masked slots changes nothing; float32 inputs compute in float32."""
    ys = [ALL[n][0] for n in NAMES]
    ss = [np.sqrt(ALL[n][1]) for n in NAMES]
    ref = rma(ys, ss, method="REML")
    J = 32
    Y = np.full((len(NAMES), J), 1e6)
    S = np.full((len(NAMES), J), -3.0)
    M = np.zeros((len(NAMES), J), bool)
    for b, (y, s) in enumerate(zip(ys, ss)):
        Y[b, : len(y)], S[b, : len(y)], M[b, : len(y)] = y, s, True
    got = rma(Y, S, mask=M, method="REML")
    for f in ("mu", "mu_se", "tau2", "tau2_lo", "tau2_hi", "q_p", "pi_hi"):
        np.testing.assert_array_equal(getattr(got, f), getattr(ref, f), err_msg=f)
    if X64:  # float32 inputs under x64: the float32 program, float32 out
        got32 = rma(
            [y.astype(np.float32) for y in ys], [s.astype(np.float32) for s in ss], method="REML"
        )
        assert got32.mu.dtype == np.float32
        np.testing.assert_allclose(got32.mu, ref.mu, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# 5. the CLI


@pytest.fixture(scope="module")
def all_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("freq") / "all.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dataset", "y", "sigma"])
        for n in NAMES:
            y, v = ALL[n]
            for yi, vi in zip(y, v):
                w.writerow([n, repr(float(yi)), repr(float(math.sqrt(vi)))])
    return path


def run_cli(argv, capsys):
    try:
        code = hierjax.io.cli.main(cli_argv(argv))
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


COLUMNS = [
    "dataset",
    "method",
    "test",
    "k",
    "mu",
    "mu_se",
    "mu_lo",
    "mu_hi",
    "tau2",
    "tau2_lo",
    "tau2_hi",
    "i2",
    "h2",
    "q",
    "q_p",
    "pi_lo",
    "pi_hi",
    "status",
]


def test_cli_bcg_file_and_stdout(all_csv, tmp_path, capsys):
    out = tmp_path / "freq.csv"
    code, _, err = run_cli(["freq", all_csv, "--method", "REML", "--out", out], capsys)
    assert code == 0, err
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == COLUMNS
    assert [r[0] for r in rows[1:]] == NAMES
    bcg_row = dict(zip(COLUMNS, rows[1]))
    assert bcg_row["method"] == "REML" and bcg_row["test"] == "z" and bcg_row["k"] == "13"
    close(float(bcg_row["mu"]), -0.714532, 6, "cli mu")
    close(float(bcg_row["tau2_lo"]), 0.119695, 6, "cli tau2_lo")
    close(float(bcg_row["i2"]), 92.2214, 4, "cli i2")
    assert bcg_row["status"] == "ok"
    assert dict(zip(COLUMNS, rows[1 + NAMES.index("one")]))["status"] == "one_study"
    assert dict(zip(COLUMNS, rows[1 + NAMES.index("osc")]))["status"] == "not_converged"

    code, stdout, err = run_cli(
        ["freq", all_csv, "--method", "dl", "--test", "knha", "--level", "0.9", "--out", "-"],
        capsys,
    )
    assert code == 0, err
    rows = list(csv.reader(stdout.splitlines()))
    assert rows[0] == COLUMNS and len(rows) == len(NAMES) + 1
    got = dict(zip(COLUMNS, rows[1 + NAMES.index("k20")]))
    ref = reference(*SYN["k20"], "DL", "knha", 0.9)
    np.testing.assert_allclose(float(got["mu_hi"]), ref["mu_hi"], rtol=10 * RTOL)
    assert got["method"] == "DL" and got["test"] == "knha"


def test_cli_bad_input_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("dataset,y,sigma\na,1.0,0.5\na,2.0,0\n")
    out = tmp_path / "out.csv"
    code, _, err = run_cli(["freq", bad, "--method", "DL", "--out", out], capsys)
    assert code == 2 and not out.exists()
    assert err.count("\n") == 1 and "sigma[2]" in err and "'a'" in err
    code, _, err = run_cli(
        ["freq", tmp_path / "missing.csv", "--method", "DL", "--out", out], capsys
    )
    assert code == 2 and not out.exists() and err.count("\n") == 1
    code, _, err = run_cli(["freq", bad, "--out", out], capsys)  # no --method
    assert code == 2 and "--method" in err
    code, _, err = run_cli(["freq", bad, "--method", "DL", "--level", "95", "--out", out], capsys)
    assert code == 2 and "level" in err
