"""hierjax.curves against independent math.

* ``p(tau | y)`` against tests/reference.py (the unnormalised posterior over its own
  scipy ``quad`` normaliser): 1e-8 relative in float64, 1e-4 in float32;
* the density integrates to 1 (scipy ``quad`` of ``tau_curves`` itself over ``[0, inf)``);
* ``E``/``sd`` of mu and theta_j given tau against the dense joint Gaussian of
  ``(mu, theta)`` at fixed tau (numpy inverse of its precision matrix), and at ``tau = 0``
  against complete pooling written out in numpy;
* ``p(mu | y)`` against the reference's ``quad`` of the normal mixture over tau.

Compiled shapes: eight-school-sized (J = 8) batches of one and two datasets, uniform
tau / flat mu, plus one half-Cauchy / normal run; the default axis and a T = 1 axis.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from reference import precision_posterior, reference
from scipy import integrate

import hierjax
from hierjax.curves import TAU_AXIS_LEVEL, TauCurves, mu_density, tau_curves

X64 = bool(jax.config.jax_enable_x64)
#: relative tolerance of densities; sd units for means
TOL = 1e-8 if X64 else 1e-4

EIGHT_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
EIGHT_S = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)
J3 = (EIGHT_Y[:3], EIGHT_S[:3])  # heavy tail: E[tau | y] does not exist


@pytest.fixture(scope="module")
def eight_curves():
    """Default axis for the eight schools (uniform tau, flat mu)."""
    return tau_curves(np.array(EIGHT_Y), np.array(EIGHT_S))


@pytest.fixture(scope="module")
def pair_curves():
    """A ragged batch (eight schools, its first three schools) on a shared explicit axis."""
    axis = np.concatenate([[0.0], np.geomspace(1e-3, 1e4, 60)])
    return axis, tau_curves(
        [np.array(EIGHT_Y), np.array(J3[0])], [np.array(EIGHT_S), np.array(J3[1])], tau=axis
    )


def test_density_matches_reference_default_axis(eight_curves):
    c = eight_curves
    assert c.tau.shape == c.density.shape == (1, 201)
    assert c.theta_mean.shape == (1, 201, 8)
    ref = reference(EIGHT_Y, EIGHT_S)
    tau = np.asarray(c.tau[0], np.float64)
    assert tau[0] == 0.0
    # the axis ends at the posterior's 0.995 quantile
    assert ref.tau_cdf(float(tau[-1])) == pytest.approx(TAU_AXIS_LEVEL, abs=TOL)
    want = ref.tau_density(tau)
    np.testing.assert_allclose(np.asarray(c.density[0], np.float64), want, rtol=TOL, atol=0)
    assert c.density.dtype == (np.float64 if X64 else np.float32)
    assert not c.prior_proper and np.all(c.prior == 1.0)
    assert c.status[0] == 0


def test_density_batch_and_heavy_tail_match_reference(pair_curves):
    axis, c = pair_curves
    assert c.tau.shape == (2, axis.size)
    for b, (y, s) in enumerate([(EIGHT_Y, EIGHT_S), J3]):
        ref = reference(y, s)
        np.testing.assert_allclose(
            np.asarray(c.tau[b], np.float64), axis, rtol=1e-15 if X64 else 1e-6
        )
        want = ref.tau_density(np.asarray(c.tau[b], np.float64))
        got = np.asarray(c.density[b], np.float64)
        # far in the tails the density underflows in float32: compare where it is representable
        live = want > (1e-300 if X64 else 1e-30)
        np.testing.assert_allclose(got[live], want[live], rtol=TOL, atol=0)
        assert c.log_normalizer[b] == pytest.approx(ref.log_evidence, abs=TOL)
    # padded groups are nan; real ones finite
    assert np.all(np.isnan(c.theta_mean[1, :, 3:])) and np.all(np.isfinite(c.theta_mean[1, :, :3]))


def test_proper_priors_density_prior_and_normalizer():
    """half-Cauchy(5) tau, normal(0, 5) mu: the prior is a normalised density, and the
    normaliser is the marginal likelihood p(y) of the reference."""
    axis = np.linspace(0.0, 25.0, 11)
    c = tau_curves(
        np.array(EIGHT_Y),
        np.array(EIGHT_S),
        tau=axis,
        tau_prior="half-cauchy:5",
        mu_prior="normal:0,5",
    )
    ref = reference(EIGHT_Y, EIGHT_S, "half-cauchy:5", "normal:0,5")
    np.testing.assert_allclose(
        np.asarray(c.density[0], np.float64), ref.tau_density(axis), rtol=TOL, atol=0
    )
    assert c.prior_proper
    np.testing.assert_allclose(
        np.asarray(c.prior[0], np.float64),
        2.0 / (math.pi * 5.0 * (1.0 + (axis / 5.0) ** 2)),
        rtol=TOL,
    )
    assert c.log_normalizer[0] == pytest.approx(ref.log_evidence, abs=TOL)
    # E[theta_j | tau, y] under the normal mu prior: dense Gaussian with the prior's precision
    for k in (1, 5, 10):
        mean, cov = precision_posterior(EIGHT_Y, EIGHT_S, axis[k], 0.0, 5.0)
        sd = np.sqrt(np.diag(cov))
        np.testing.assert_allclose((c.theta_mean[0, k] - mean[1:]) / sd[1:], 0.0, atol=TOL)
        np.testing.assert_allclose(c.theta_sd[0, k] / sd[1:], 1.0, rtol=TOL)


def test_density_integrates_to_one():
    """scipy quad of the density as tau_curves computes it, point by point, over [0, inf)."""
    y, s = np.array(EIGHT_Y), np.array(EIGHT_S)

    def p(t):
        return float(tau_curves(y, s, tau=[t]).density[0, 0])

    rel = 1e-11 if X64 else 1e-6  # float32 round-off would keep quad subdividing
    pieces = [(0.0, 5.0), (5.0, 20.0), (20.0, 100.0)]
    total = sum(integrate.quad(p, a, b, epsabs=0, epsrel=rel, limit=200)[0] for a, b in pieces)
    # tail beyond 100: tau = 100 / w, dtau = 100 / w^2 dw, w in (0, 1]
    total += integrate.quad(
        lambda w: p(100.0 / w) * 100.0 / w**2 if w > 0 else 0.0,
        0.0,
        1.0,
        epsabs=0,
        epsrel=rel,
        limit=200,
    )[0]
    assert total == pytest.approx(1.0, abs=1e-9 if X64 else 1e-5)


def test_conditionals_match_dense_joint_gaussian(pair_curves):
    axis, c = pair_curves
    for b, (y, s) in enumerate([(EIGHT_Y, EIGHT_S), J3]):
        J = len(y)
        # tau >= 0.05: below it the precision matrix (entries ~1/tau^2 on a rank-one
        # pattern) is so ill-conditioned that numpy's inverse itself loses ~1e-8 of a sd
        # (checked against mpmath); tau -> 0 is test_tau_zero_is_complete_pooling
        for k in range(15, axis.size, 6):
            tau = float(axis[k])
            mean, cov = precision_posterior(y, s, tau)
            sd = np.sqrt(np.diag(cov))
            np.testing.assert_allclose((c.mu_mean[b, k] - mean[0]) / sd[0], 0.0, atol=TOL)
            np.testing.assert_allclose(c.mu_sd[b, k] / sd[0], 1.0, rtol=TOL)
            np.testing.assert_allclose((c.theta_mean[b, k, :J] - mean[1:]) / sd[1:], 0.0, atol=TOL)
            np.testing.assert_allclose(c.theta_sd[b, k, :J] / sd[1:], 1.0, rtol=TOL)


def test_chunked_equals_unchunked_bitwise(pair_curves):
    """Three datasets in blocks of 2 (the last padded with a repeat of the last dataset)
    equal one block of 4 bit for bit; the blocks of 2 reuse the kernel ``pair_curves``
    compiled, the padded last one included (no trace)."""
    from hierjax.curves import _tau_curves_batch

    axis, pair = pair_curves
    ys = [np.array(EIGHT_Y), np.array(J3[0]), 0.5 * np.array(EIGHT_Y)]
    ss = [np.array(EIGHT_S), np.array(J3[1]), np.array(EIGHT_S)]
    before = _tau_curves_batch._cache_size()
    chunked = tau_curves(ys, ss, tau=axis, chunk=2)
    assert _tau_curves_batch._cache_size() == before
    whole = tau_curves(ys, ss, tau=axis)
    for f, a, b, p in zip(TauCurves._fields, chunked, whole, pair):
        np.testing.assert_array_equal(a, b, err_msg=f)
        if f not in ("prior_proper", "names", "groups"):
            np.testing.assert_array_equal(a[:2], p, err_msg=f)


def test_tau_zero_is_complete_pooling(pair_curves):
    """At tau = 0 every theta_j equals mu: the Fisher-weighted mean with sd 1/sqrt(sum 1/s^2)."""
    _, c = pair_curves
    for b, (y, s) in enumerate([(EIGHT_Y, EIGHT_S), J3]):
        w = 1.0 / np.square(s)
        mean, sd = np.sum(w * np.asarray(y)) / w.sum(), 1.0 / math.sqrt(w.sum())
        J = len(y)
        assert c.mu_mean[b, 0] == pytest.approx(mean, abs=TOL * sd)
        assert c.mu_sd[b, 0] == pytest.approx(sd, rel=TOL)
        np.testing.assert_allclose(c.theta_mean[b, 0, :J], mean, atol=TOL * sd)
        np.testing.assert_allclose(c.theta_sd[b, 0, :J], sd, rtol=TOL)


def test_mu_density_matches_reference():
    m = mu_density(np.array(EIGHT_Y), np.array(EIGHT_S))
    ref = reference(EIGHT_Y, EIGHT_S)
    assert m.mu.shape == (1, 201) and not m.prior_proper
    # the default axis covers the bulk: it spans the 0.0005 .. 0.9995 quantiles
    assert ref.mixture_cdf("mu", float(m.mu[0, 0])) < 5e-4
    assert ref.mixture_cdf("mu", float(m.mu[0, -1])) > 1 - 5e-4
    peak = float(np.max(m.density))
    for k in (0, 40, 80, 100, 120, 160, 200):
        want = ref.mu_density(float(m.mu[0, k]))
        assert float(m.density[0, k]) == pytest.approx(want, abs=TOL * peak)
    assert integrate.trapezoid(
        np.asarray(m.density[0], np.float64), np.asarray(m.mu[0], np.float64)
    ) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(y=[1.0, 2.0, 3.0], sigma=[1.0, -1.0, 1.0]), r"dataset 0: sigma\[2\]"),
        (dict(y=[1.0, 2.0], sigma=[1.0, 1.0]), "needs at least 3"),
        (dict(y=list(EIGHT_Y), sigma=list(EIGHT_S), tau=[-1.0, 2.0]), "tau axis"),
        (dict(y=list(EIGHT_Y), sigma=list(EIGHT_S), tau=[[1.0], [2.0]]), "tau must be"),
        (dict(y=list(EIGHT_Y), sigma=list(EIGHT_S), tau_prior="bogus"), "unknown tau prior"),
    ],
)
def test_bad_input_raises_before_jit(kwargs, match):
    with pytest.raises(hierjax.InputError, match=match):
        tau_curves(kwargs.pop("y"), kwargs.pop("sigma"), **kwargs)
