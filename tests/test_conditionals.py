"""mu | tau, y written as a change from a reference point (the grid's form) against the
direct formulas done again in NumPy float64, from tau = 0 to tau far in a heavy tail."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DEFAULT_DTYPE, eps_of

from hierjax.conditionals import mu_given_tau_near, reference_point
from hierjax.priors import FlatMu, NormalMu

Y = np.array([1.30689973, -0.18690185, -1.00849272])      # eight schools, first three, standardised
S2 = np.array([1.25518678, 0.55786079, 1.42812363])


def _direct(tau2, m0=None, s0=None):
    """``mu_hat`` and ``log p(y | tau)`` (up to its constant) straight from BDA3 eq. 5.21."""
    v = S2 + tau2
    prec, num = np.sum(1.0 / v), np.sum(Y / v)
    quad_extra, logdet_extra = 0.0, 0.0
    if m0 is not None:
        prec, num = prec + 1.0 / s0 ** 2, num + m0 / s0 ** 2
    mu_hat = num / prec
    if m0 is not None:
        quad_extra, logdet_extra = ((m0 - mu_hat) / s0) ** 2, 2.0 * np.log(s0)
    log_lik = -0.5 * (np.sum(np.log(v)) + logdet_extra + np.log(prec)
                      + np.sum((Y - mu_hat) ** 2 / v) + quad_extra)
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
        assert abs(float(out.mean) - mu_hat) <= tol * np.max(np.abs(Y)), (tau, float(out.mean), mu_hat)
        # differences of log p(y | tau) from the reference keep their digits (in float32
        # only out to tau ~ 1e3 sigma: beyond, the S^2 / P term's round-off, eps^2 tau^2,
        # reaches 1e-3 at tau = 1e6, where the grid's weights are ~e^-15 of the peak)
        if tau > 1e3 and dt == np.float32:
            continue
        assert abs((float(out.log_lik) - float(ref.mu.log_lik)) - (ll - ll_ref)) <= tol * (
            1.0 + abs(ll - ll_ref)), tau
