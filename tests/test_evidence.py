"""hierjax.evidence against independent quadrature and optimisation (scipy), written here.

Definitions (bayesmeta, Röver 2020; see hierjax/evidence.py): p(y | mu, tau) = prod_j
N(y_j; mu, sigma_j^2 + tau^2); p(y | tau) integrates mu against its prior (closed form:
a dense multivariate normal here); p(y | mu) integrates tau against its prior (quad
here); p(y) by quad over tau (tests/reference.py). Tolerances: 1e-8 (float64), 1e-4
(float32) absolute on log Bayes factors and relative on log p(y); estimates to 1e-6
(float64) / 2e-3 (float32) of the posterior sd.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from conftest import BATCH_RTOL
from reference import joint_log_evidence, log_prior_tau, parse_tau, reference
from scipy import integrate, optimize, stats

from hierjax.evidence import evidence, evidence_standardized

RUBIN_Y = (28.39, 7.94, -2.75, 6.82, -0.64, 0.63, 18.01, 12.16)
RUBIN_S = (14.9, 10.2, 16.3, 11.0, 9.4, 11.4, 10.4, 17.6)
WIDE_Y = tuple(2.5 * v for v in RUBIN_Y)  # heterogeneous: interior tau estimates
DATA = [(RUBIN_Y, RUBIN_S), (WIDE_Y, RUBIN_S)]
PROPER = ("half-cauchy:25", "normal:0,50")


def tol():
    return 1e-8 if jax.config.jax_enable_x64 else 1e-4


def est_tol():
    return 1e-6 if jax.config.jax_enable_x64 else 2e-3


@pytest.fixture(scope="module")
def proper():
    return evidence(
        [np.array(d[0]) for d in DATA],
        [np.array(d[1]) for d in DATA],
        tau_prior=PROPER[0],
        mu_prior=PROPER[1],
    )


@pytest.fixture(scope="module")
def improper():
    return evidence([np.array(d[0]) for d in DATA], [np.array(d[1]) for d in DATA])


# ----------------------------------------------------------------- independent pieces
def loglik_joint(y, s, mu, tau):
    return float(np.sum(stats.norm.logpdf(y, mu, np.sqrt(np.asarray(s) ** 2 + tau**2))))


def log_p_y_given_tau(y, s, tau, m0=0.0, s0=50.0):
    return joint_log_evidence(y, s, tau, m0, s0)


def log_p_y_given_mu(y, s, mu, tau_spec):
    """log int p(y | mu, tau) p(tau) dtau by quad (scaled by its value at a guess)."""
    kind, params = parse_tau(tau_spec)
    c = max(
        loglik_joint(y, s, mu, t) + float(log_prior_tau(kind, params, t))
        for t in np.geomspace(1e-3, 1e3, 200)
    )

    def f(t):
        return math.exp(loglik_joint(y, s, mu, t) + float(log_prior_tau(kind, params, t)) - c)

    val = sum(
        integrate.quad(f, a, b, epsabs=0, epsrel=1e-13, limit=400)[0]
        for a, b in [(0, 1), (1, 10), (10, 100), (100, np.inf)]
    )
    return math.log(val) + c


def argmax_1d(f, lo, hi):
    """Maximise f on [lo, hi] (bounded Brent, then compared with the ends)."""
    r = optimize.minimize_scalar(
        lambda x: -f(x), bounds=(lo, hi), method="bounded", options={"xatol": 1e-12}
    )
    cands = [(f(r.x), r.x), (f(lo), lo)]
    return max(cands)[1]


# ----------------------------------------------------------------- tests
@pytest.mark.parametrize("b", [0, 1])
def test_log_ml_and_bayes_factors_vs_quad(proper, b):
    y, s = map(np.array, DATA[b])
    ref = reference(DATA[b][0], DATA[b][1], *PROPER)
    log_py = ref.log_evidence
    assert abs(proper.log_marginal_likelihood[b] - log_py) <= tol() * abs(log_py)
    # BF(tau = 0) = p(y | tau = 0) / p(y), with p(y | tau = 0) from dense linear algebra
    assert abs(proper.log_bf_tau0[b] - (log_p_y_given_tau(y, s, 0.0) - log_py)) <= tol()
    # BF(mu = 0) = p(y | mu = 0) / p(y), p(y | mu = 0) by quad over tau
    l0 = log_p_y_given_mu(y, s, 0.0, PROPER[0])
    assert abs(proper.log_bf_mu0[b] - (l0 - log_py)) <= tol()
    # minimum BFs: against the best point alternative
    t_ml = argmax_1d(lambda t: log_p_y_given_tau(y, s, t), 0.0, 200.0)
    mbf_tau = log_p_y_given_tau(y, s, 0.0) - log_p_y_given_tau(y, s, t_ml)
    assert abs(proper.log_min_bf_tau0[b] - mbf_tau) <= tol()
    m_ml = argmax_1d(lambda m: log_p_y_given_mu(y, s, m, PROPER[0]), -50.0, 80.0)
    assert abs(proper.log_min_bf_mu0[b] - (l0 - log_p_y_given_mu(y, s, m_ml, PROPER[0]))) <= max(
        tol(), 1e-9
    )
    sd_tau, sd_mu = ref.moments("tau")[1], ref.moments("mu")[1]
    assert abs(proper.ml_marginal.tau[b] - t_ml) <= est_tol() * sd_tau
    assert abs(proper.ml_marginal.mu[b] - m_ml) <= est_tol() * sd_mu


def _joint_argmax(f, start):
    """argmax of f(tau, mu) over tau >= 0: L-BFGS-B from a start, and the tau = 0 edge."""
    r = optimize.minimize(
        lambda p: -f(p[0], p[1]),
        start,
        method="L-BFGS-B",
        bounds=[(0.0, None), (None, None)],
        options={"ftol": 1e-15, "gtol": 1e-11, "maxiter": 2000},
    )
    r = optimize.minimize(
        lambda p: -f(p[0], p[1]),
        r.x,
        method="Nelder-Mead",
        options={"xatol": 1e-11, "fatol": 1e-15, "maxiter": 5000},
    )
    edge = optimize.minimize_scalar(
        lambda m: -f(0.0, m), bounds=(-100, 100), method="bounded", options={"xatol": 1e-12}
    )
    x = r.x if r.x[0] >= 0 else np.array([0.0, edge.x])
    return x if f(*x) > f(0.0, edge.x) else np.array([0.0, edge.x])


@pytest.mark.parametrize("which", ["proper", "improper"])
@pytest.mark.parametrize("b", [0, 1])
def test_ml_map_estimates_vs_scipy(proper, improper, which, b):
    e = proper if which == "proper" else improper
    tp, mp = PROPER if which == "proper" else ("uniform", "flat")
    y, s = map(np.array, DATA[b])
    ref = reference(DATA[b][0], DATA[b][1], tp, mp)
    kind, params = parse_tau(tp)
    sd_tau, sd_mu = ref.moments("tau")[1], ref.moments("mu")[1]

    def logp_mu(m):
        return stats.norm.logpdf(m, 0.0, 50.0) if which == "proper" else 0.0

    start = np.array([float(np.std(y)), float(np.mean(y))])
    jml = _joint_argmax(lambda t, m: loglik_joint(y, s, m, t), start)
    jmap = _joint_argmax(
        lambda t, m: loglik_joint(y, s, m, t) + float(log_prior_tau(kind, params, t)) + logp_mu(m),
        start,
    )
    for est, (t, m) in ((e.ml_joint, jml), (e.map_joint, jmap)):
        assert abs(est.tau[b] - t) <= 1e3 * est_tol() * sd_tau, (est, t, m)
        assert abs(est.mu[b] - m) <= 1e3 * est_tol() * sd_mu, (est, t, m)
    # marginal MAP: modes of p(tau | y) (the reference's own root of the derivative) and
    # of p(mu | y) (quad mixture density maximised by Brent)
    assert abs(e.map_marginal.tau[b] - ref.mode) <= est_tol() * sd_tau

    def dens_mu(m):
        return ref.expect(
            lambda t, mh, v: math.exp(-0.5 * (m - ref.c - mh) ** 2 / v) / math.sqrt(2 * math.pi * v)
        )

    m_mode = argmax_1d(dens_mu, ref.moments("mu")[0] - sd_mu, ref.moments("mu")[0] + sd_mu)
    assert abs(e.map_marginal.mu[b] - m_mode) <= 10 * est_tol() * sd_mu
    if which == "improper":
        # flat mu: argmax_mu p(y | mu) is the mode of p(mu | y); argmax p(y | tau) is the
        # tau mode under a uniform tau prior
        assert abs(e.ml_marginal.mu[b] - m_mode) <= 10 * est_tol() * sd_mu
        assert abs(e.ml_marginal.tau[b] - ref.mode) <= est_tol() * sd_tau


def test_improper_priors_give_nan_like_bayesmeta(improper):
    for f in (
        "log_marginal_likelihood",
        "log_bf_tau0",
        "log_bf_mu0",
        "log_min_bf_tau0",
        "log_min_bf_mu0",
    ):
        assert np.all(np.isnan(getattr(improper, f))), f
    assert np.all(improper.status == 0)


def test_chunked_equals_unchunked(improper):
    """Three datasets in blocks of 2 (the last padded with a repeat of the last dataset)
    equal one block of 4 to round-off (``BATCH_RTOL``: the block's width changes XLA's
    vectorised code, which differs by CPU) and the two-dataset fixture bit for bit (the
    same program); the blocks of 2 reuse the kernel that fixture compiled (no trace)."""
    ys = [np.array(d[0]) for d in DATA] + [0.3 * np.array(RUBIN_Y) + 1.0]
    ss = [np.array(RUBIN_S)] * 3
    before = evidence_standardized._cache_size()
    chunked = evidence(ys, ss, chunk=2)
    assert evidence_standardized._cache_size() == before
    whole = evidence(ys, ss)
    for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(whole)):
        if np.issubdtype(np.asarray(b).dtype, np.floating):
            scale = np.nanmax(np.abs(b), initial=0.0)
            np.testing.assert_allclose(a, b, rtol=BATCH_RTOL, atol=BATCH_RTOL * scale)
        else:
            np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(chunked[:-1]), jax.tree.leaves(improper[:-1])):  # not names
        np.testing.assert_array_equal(a[:2], b)
