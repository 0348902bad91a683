"""mu | tau, y written as a change from a reference point (the grid's form) against the
direct formulas done again in NumPy float64, from tau = 0 to tau far in a heavy tail."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DEFAULT_DTYPE, eps_of

from hierjax.model.conditionals import mu_given_tau_near, reference_point
from hierjax.model.priors import FlatMu, NormalMu

Y = np.array([1.30689973, -0.18690185, -1.00849272])  # eight schools, first three, standardised
S2 = np.array([1.25518678, 0.55786079, 1.42812363])


def _direct(tau2, m0=None, s0=None):
    """``mu_hat`` and ``log p(y | tau)`` (up to its constant) straight from BDA3 eq. 5.21."""
    v = S2 + tau2
    prec, num = np.sum(1.0 / v), np.sum(Y / v)
    quad_extra, logdet_extra = 0.0, 0.0
    if m0 is not None:
        prec, num = prec + 1.0 / s0**2, num + m0 / s0**2
    mu_hat = num / prec
    if m0 is not None:
        quad_extra, logdet_extra = ((m0 - mu_hat) / s0) ** 2, 2.0 * np.log(s0)
    log_lik = -0.5 * (
        np.sum(np.log(v)) + logdet_extra + np.log(prec) + np.sum((Y - mu_hat) ** 2 / v) + quad_extra
    )
    return mu_hat, log_lik


@pytest.mark.parametrize("mu_prior", [FlatMu(), NormalMu(0.5, 2.0)], ids=["flat", "normal"])
def test_near_form_matches_direct_formulas(mu_prior):
    dt = DEFAULT_DTYPE
    y, s2, mask = jnp.asarray(Y, dt), jnp.asarray(S2, dt), jnp.ones(3, bool)
    ref = reference_point(jnp.asarray(1.0, dt), y, s2, mask, mu_prior)
    m0s0 = (None, None) if isinstance(mu_prior, FlatMu) else (0.5, 2.0)
    _, ll_ref = _direct(1.0, *m0s0)
    tol = 64 * eps_of(dt)
    # tau from 0 to 1e6 sigma: far out, mu_hat must not inherit the round-off of the
    # near form's S / P ~ eps tau^2 (it was 1e-4 at tau = 1e6 before the direct form).
    for tau in [0.0, 1e-3, 0.5, 0.9, 1.1, 3.0, 30.0, 1e3, 1e6]:
        out = mu_given_tau_near(ref, jnp.asarray(tau * tau, dt), s2, mask, mu_prior)
        mu_hat, ll = _direct(tau * tau, *m0s0)
        assert abs(float(out.mean) - mu_hat) <= tol * np.max(np.abs(Y)), (
            tau,
            float(out.mean),
            mu_hat,
        )
        # differences of log p(y | tau) from the reference keep their digits (in float32
        # only out to tau ~ 1e3 sigma: beyond, the S^2 / P term's round-off, eps^2 tau^2,
        # reaches 1e-3 at tau = 1e6, where the grid's weights are ~e^-15 of the peak)
        if tau > 1e3 and dt == np.float32:
            continue
        assert abs((float(out.log_lik) - float(ref.mu.log_lik)) - (ll - ll_ref)) <= tol * (
            1.0 + abs(ll - ll_ref)
        ), tau


def test_near_form_far_below_the_reference():
    """sigma_j^2 << tau_r^2 and tau -> 0: 1 + delta_j = v_j / v_rj is ~1e-8, where
    log1p(delta) would lose its digits; the frexp branch keeps them."""
    dt = DEFAULT_DTYPE
    s2_small = S2 * 1e-8
    y, s2, mask = jnp.asarray(Y, dt), jnp.asarray(s2_small, dt), jnp.ones(3, bool)
    ref = reference_point(jnp.asarray(1.0, dt), y, s2, mask, FlatMu())
    for tau2 in (0.0, 1e-9, 1e-4):
        out = mu_given_tau_near(ref, jnp.asarray(tau2, dt), s2, mask, FlatMu())
        v, v_r = s2_small + tau2, s2_small + 1.0
        prec, prec_r = np.sum(1.0 / v), np.sum(1.0 / v_r)
        mu_hat, mu_r = np.sum(Y / v) / prec, np.sum(Y / v_r) / prec_r
        d_ll = -0.5 * (
            np.sum(np.log(v / v_r))
            + np.log(prec / prec_r)
            + np.sum((Y - mu_hat) ** 2 / v)
            - np.sum((Y - mu_r) ** 2 / v_r)
        )
        got = float(out.log_lik) - float(ref.mu.log_lik)
        assert abs(got - d_ll) <= 64 * eps_of(dt) * (1.0 + abs(d_ll)), (tau2, got, d_ll)


def test_log1p_kernel_within_an_ulp():
    """The vectorised log1p of the near form against numpy's (libm) and mpmath, over its
    whole range, including the frexp reduction of ratios from 1e-30 to 1e30."""
    import mpmath

    from hierjax.model.conditionals import _log1p_small, _log_parts

    dt = np.dtype(DEFAULT_DTYPE)
    lo, hi = np.sqrt(0.5) - 1.0, np.sqrt(2.0) - 1.0
    tiny = 1e-30 if dt == np.float32 else 1e-300
    f = np.concatenate(
        [
            np.linspace(lo, hi, 20001),
            np.geomspace(tiny, hi, 2000),
            -np.geomspace(tiny, -lo, 2000),
            [0.0],
        ]
    ).astype(dt)
    got = np.asarray(_log1p_small(jnp.asarray(f)), np.float64)
    exact = np.array([float(mpmath.log1p(mpmath.mpf(float(x)))) for x in f[::10]])
    ulp = np.spacing(np.abs(np.log1p(f.astype(np.float64))).astype(dt)).astype(np.float64)
    assert np.all(np.abs(got - np.log1p(f.astype(np.float64))) <= 1.0 * ulp)
    assert np.all(np.abs(got[::10] - exact) <= 1.0 * ulp[::10])
    x = np.geomspace(1e-30, 1e30, 5001).astype(dt)
    fx, e = _log_parts(jnp.asarray(x))
    fx, e = np.asarray(fx, np.float64), np.asarray(e)
    assert np.all((fx >= lo) & (fx < hi))
    np.testing.assert_array_equal((1.0 + fx) * 2.0**e, x.astype(np.float64))  # exact
    log_x = e * np.log(2.0) + np.asarray(_log1p_small(jnp.asarray(fx.astype(dt))), np.float64)
    np.testing.assert_allclose(
        log_x,
        np.log(x.astype(np.float64)),
        rtol=0,
        atol=4 * np.finfo(dt).eps * np.maximum(1.0, np.abs(np.log(x))).max(),
    )
