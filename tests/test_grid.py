"""Direct unit tests of the per-dataset tau grid (:func:`hierjax.inference.grid.tau_grid`).

The grid's weights integrate ``p(tau | y)``: its expectations and log evidence are checked
against ``scipy.integrate.quad`` over tau in ``tests/reference.py`` (independent code).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import X64
from reference import reference

import hierjax
from hierjax.inference.grid import default_nodes, tail_alpha, tau_grid
from hierjax.model.priors import FlatMu, HalfCauchy, NormalMu, Uniform

# the general grid's goal for E[tau] and the log evidence, relative (README "Accuracy")
TOL = 1e-9 if X64 else 2e-5

CASES = {
    # (tau prior, mu prior, reference specs); data standardised below (unit sigma scale)
    "uniform/flat": (Uniform(), FlatMu(), "uniform", "flat"),
    "half-cauchy/normal": (
        HalfCauchy(np.float64(0.5)),
        NormalMu(np.float64(0.0), np.float64(0.5)),
        "half-cauchy:0.5",
        "normal:0,0.5",
    ),
}


def _standard_eight_schools():
    """The eight schools in units of the geometric-mean sigma (what the engine feeds the grid)."""
    y, sigma = hierjax.eight_schools()
    scale = float(np.exp(np.mean(np.log(sigma))))
    return y / scale, sigma / scale


@pytest.mark.parametrize("case", sorted(CASES))
def test_grid_weights_integrate_the_tau_posterior(case):
    tau_prior, mu_prior, ref_tau, ref_mu = CASES[case]
    y, sigma = _standard_eight_schools()
    ref = reference(tuple(y), tuple(sigma), ref_tau, ref_mu)
    dt = jnp.float64 if X64 else jnp.float32
    yj, s2 = jnp.asarray(y, dt), jnp.asarray(sigma**2, dt)
    mask = jnp.ones(y.shape, bool)
    tp = jax.tree.map(lambda a: jnp.asarray(a, dt), tau_prior)
    mp = jax.tree.map(lambda a: jnp.asarray(a, dt), mu_prior)
    g = jax.jit(lambda: tau_grid(yj, s2, mask, tp, mp, default_nodes(dt)))()

    w = np.exp(np.asarray(g.log_weight_fine, np.float64))
    tau = np.asarray(g.tau_fine, np.float64)
    assert abs(w.sum() - 1.0) < 10 * float(jnp.finfo(dt).eps) * w.size
    assert bool(g.converged) and not bool(g.truncated)
    for k in (1, 2):
        e_ref = ref.expect(lambda t, m, v, k=k: t**k)
        np.testing.assert_allclose(np.sum(w * tau**k), e_ref, rtol=TOL)
    # the evidence's normalising constant, comparable where both priors are proper
    if tau_prior.proper and mu_prior.proper:
        np.testing.assert_allclose(
            float(g.log_evidence), ref.log_evidence, atol=TOL * abs(ref.log_evidence) + TOL
        )
    # the n-rule's own error estimate is far inside the goal on such data
    assert float(g.error) < 0.1 * float(jnp.finfo(dt).eps) ** 0.5


@pytest.mark.parametrize(
    "J, normal_mu, expected", [(3, False, 1.0), (8, False, 6.0), (3, True, 2.0)]
)
def test_tail_alpha_is_the_posterior_tail_power(J, normal_mu, expected):
    """``p(tau | y) ~ tau^-(alpha + 1)`` under a uniform prior: ``alpha = J - 2`` (flat mu) or
    ``J - 1`` (normal mu), BDA3 eq. 5.21."""
    mu = NormalMu(np.float64(0.0), np.float64(1.0)) if normal_mu else FlatMu()
    assert float(tail_alpha(jnp.asarray(float(J)), Uniform(), mu)) == expected
