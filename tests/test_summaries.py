"""Direct unit tests of :mod:`hierjax.inference.summaries` on given normal mixtures.

The references are SciPy's normal CDF and ``brentq`` on the mixture's CDF: independent of
hierjax's Halley searches and its own CDF.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import X64
from scipy import optimize, stats

from hierjax.inference.summaries import mixture_quantile, mixture_summary

# float32's CDF cannot resolve 0.001 / 0.999 of the heavy mixture to 1e-4 sd (an ulp of F
# there moves q by ~3e-4 sd): those levels are float64's only.
LEVELS = (0.001, 0.025, 0.25, 0.5, 0.75, 0.975, 0.999) if X64 else (0.025, 0.25, 0.5, 0.75, 0.975)
# accuracy goal in units of the mixture's sd (README "Accuracy")
GOAL = 1e-8 if X64 else 1e-4

MIXTURES = {
    # one component: the normal quantile itself
    "normal": ([1.0], [0.3], [2.0]),
    # well separated, unequal weights
    "bimodal": ([0.7, 0.3], [-3.0, 4.0], [1.0, 0.5]),
    # a heavy tail: sds spanning three decades, as for mu when tau's tail is heavy
    "heavy": ([0.5, 0.3, 0.15, 0.05], [0.0, 0.2, -0.5, 1.0], [0.1, 1.0, 10.0, 100.0]),
}


def _reference_quantile(p, w, m, s):
    w, m, s = map(np.asarray, (w, m, s))

    def F(x):
        return float(np.sum(w * stats.norm.cdf(x, m, s))) - p

    lo, hi = float(np.min(m - 40 * s)), float(np.max(m + 40 * s))
    return optimize.brentq(F, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)


def _arrays(w, m, s):
    dt = jnp.float64 if X64 else jnp.float32
    w = np.asarray(w) / np.sum(w)
    return jnp.asarray(w, dt), jnp.asarray(m, dt), jnp.asarray(s, dt)


@pytest.mark.parametrize("name", sorted(MIXTURES))
def test_mixture_quantile_matches_brentq(name):
    w, m, s = MIXTURES[name]
    wj, mj, sj = _arrays(w, m, s)
    p = jnp.asarray(LEVELS, wj.dtype)
    q, ok = jax.jit(jax.vmap(lambda pi: mixture_quantile(pi, wj, mj, sj)))(p)
    sd = np.sqrt(
        np.sum(np.asarray(w) / np.sum(w) * (np.asarray(s) ** 2 + np.asarray(m) ** 2))
        - np.sum(np.asarray(w) / np.sum(w) * np.asarray(m)) ** 2
    )
    ref = np.array([_reference_quantile(pi, np.asarray(w) / np.sum(w), m, s) for pi in LEVELS])
    err = np.abs(np.asarray(q, np.float64) - ref) / sd
    assert np.all(np.asarray(ok))
    assert np.max(err) < GOAL, (name, err)


def test_mixture_summary_moments_and_tail_probability():
    """Mean and sd by the closed form ``sum w (m^2 + s^2) - mean^2``; P(> 0) by SciPy."""
    w, m, s = MIXTURES["bimodal"]
    wj, mj, sj = _arrays(w, m, s)
    levels = jnp.asarray((0.25, 0.75), wj.dtype)
    yes = jnp.array(True)
    out, ok = jax.jit(
        lambda: mixture_summary(wj, mj, sj, levels, jnp.asarray(0.0, wj.dtype), yes, yes)
    )()
    wn = np.asarray(w) / np.sum(w)
    mean = np.sum(wn * np.asarray(m))
    sd = np.sqrt(np.sum(wn * (np.asarray(s) ** 2 + np.asarray(m) ** 2)) - mean**2)
    p_gt0 = np.sum(wn * stats.norm.sf(0.0, m, s))
    tol = 1e-12 if X64 else 1e-6
    np.testing.assert_allclose(float(out.mean), mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(float(out.sd), sd, rtol=tol)
    np.testing.assert_allclose(float(out.p_gt0), p_gt0, rtol=tol, atol=tol)
    ref = [_reference_quantile(p, wn, m, s) for p in (0.25, 0.75)]
    assert np.max(np.abs(np.asarray(out.quantiles, np.float64) - ref)) / sd < GOAL
    assert bool(ok)


def test_mixture_summary_reports_moments_that_do_not_exist():
    """``mean_exists`` / ``sd_exists`` False give nan / inf, whatever the grid's numbers."""
    wj, mj, sj = _arrays(*MIXTURES["heavy"])
    no = jnp.array(False)
    out, _ = mixture_summary(
        wj, mj, sj, jnp.asarray((0.5,), wj.dtype), jnp.asarray(0.0, wj.dtype), no, no
    )
    assert np.isnan(float(out.mean)) and np.isinf(float(out.sd))
    assert not bool(out.mean_exists) and not bool(out.sd_exists)


def test_normal_cdf_and_density_match_scipy_in_both_tails():
    # the one-exp pair behind every mixture CDF, against SciPy's log-space ndtr
    from scipy import special

    from hierjax.inference.summaries import _Phi_phi

    t = np.concatenate([np.linspace(-38.0, 38.0, 3041), [-np.inf, np.inf]])
    dt = jnp.float64 if X64 else jnp.float32
    Phi, phi = (np.asarray(a, np.float64) for a in _Phi_phi(jnp.asarray(t, dt)))
    ref, ref_d = special.ndtr(t), stats.norm.pdf(t)
    rel = 3e-15 if X64 else 3e-5
    # relative wherever the value is representable well above underflow; erfc's
    # rational fit beyond |x| = 8 keeps ~1e-10 of values below 1e-29
    big = ref > (1e-29 if X64 else 1e-30)
    assert np.all(np.abs(Phi - ref)[big] <= rel * ref[big] + (1e-300 if X64 else 1e-38))
    assert np.all(np.abs(Phi - ref)[~big] <= 1e-9 * ref[~big] + (1e-300 if X64 else 1e-30))
    # exp(-t^2/2) carries the rounding of t^2/2: relative ~eps t^2
    rel_d = np.where(np.isfinite(t), 4e-16 * (1.0 + t * t), 0.0) if X64 else 3e-5
    assert np.all(np.abs(phi - ref_d) <= rel_d * ref_d + 1e3 * float(jnp.finfo(dt).tiny))
    # the derivative is the exact density, also at +-inf
    g = jax.vmap(jax.grad(lambda x: _Phi_phi(x)[0]))(jnp.asarray(t, dt))
    assert np.all(np.abs(np.asarray(g, np.float64) - np.asarray(phi)) <= rel * phi)
