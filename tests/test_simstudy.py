"""Simulation designs (hierjax.validation.simstudy): keyed reproducibility and the generative model.

Every test shares one design (tau and mu from priors, ragged J, uniform sigma) so the
simulator compiles once; its distributions are checked against scipy.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import stats

import hierjax
from hierjax.validation.simstudy import (
    BLOCK,
    Choice,
    Grid,
    SigmaResample,
    SigmaUniform,
    sample_tau_prior,
    simulate_design,
)

DESIGN = {
    "tau": "half-normal:2",
    "mu": "normal:1,3",
    "J": Choice([3, 5]),
    "sigma": SigmaUniform(0.5, 2.0),
}


@pytest.fixture(scope="module")
def big():
    return simulate_design(20_000, key=7, **DESIGN)


def test_replicates_do_not_depend_on_batch_or_chunking(big):
    n = BLOCK + 500  # spans a block boundary
    whole = simulate_design(n, key=7, **DESIGN)
    parts = [
        simulate_design(700, key=7, **DESIGN),
        simulate_design(n - 700, key=7, start=700, **DESIGN),
    ]
    one = simulate_design(1, key=7, start=1234, **DESIGN)
    for f in whole._fields:
        a = getattr(whole, f)
        np.testing.assert_array_equal(a, np.concatenate([getattr(p, f) for p in parts]), err_msg=f)
        np.testing.assert_array_equal(a[1234:1235], getattr(one, f), err_msg=f)
        np.testing.assert_array_equal(a, getattr(big, f)[:n], err_msg=f)
    # a JAX key gives the same replicates as its integer seed; another seed others
    same = simulate_design(5, key=jax.random.key(7), **DESIGN)
    np.testing.assert_array_equal(same.y, whole.y[:5])
    assert not np.array_equal(simulate_design(5, key=8, **DESIGN).y, whole.y[:5])


def test_the_generative_model(big):
    s = big
    tol = 1e-3  # p-value floor: a fixed seed, not a flaky draw
    assert stats.kstest(s.tau, stats.halfnorm(scale=2).cdf).pvalue > tol
    assert stats.kstest(s.mu, stats.norm(1, 3).cdf).pvalue > tol
    # J from the choice, ragged: mask rows have J real groups, padding benign
    assert set(np.unique(s.n_groups)) == {3, 5}
    assert abs(np.mean(s.n_groups == 5) - 0.5) < 0.02
    np.testing.assert_array_equal(s.mask.sum(axis=1), s.n_groups)
    assert np.all(s.y[~s.mask] == 0) and np.all(s.sigma[~s.mask] == 1)
    assert np.all(np.isnan(s.theta[~s.mask]))
    sig = s.sigma[s.mask]
    assert stats.kstest(sig, stats.uniform(0.5, 1.5).cdf).pvalue > tol
    # theta_j = mu + tau z, y_j = theta_j + sigma_j z'
    z_theta = ((s.theta - s.mu[:, None]) / s.tau[:, None])[s.mask]
    z_y = ((s.y - s.theta) / s.sigma)[s.mask]
    z_new = (s.theta_new - s.mu) / s.tau
    for z in (z_theta, z_y, z_new):
        assert stats.kstest(z, "norm").pvalue > tol
    # independence of the groups within a replicate
    full = s.n_groups == 5
    zt = ((s.theta - s.mu[:, None]) / s.tau[:, None])[full]
    assert abs(np.corrcoef(zt[:, 0], zt[:, 4])[0, 1]) < 0.05


def test_fixed_grid_and_resampled_designs():
    grid = simulate_design(
        9, key=1, tau=Grid([0.0, 1.0, 2.0]), mu=3.0, J=4, sigma=SigmaResample([1.0, 2.0, 5.0])
    )
    np.testing.assert_array_equal(grid.tau, np.tile([0.0, 1.0, 2.0], 3))
    np.testing.assert_array_equal(grid.mu, np.full(9, 3.0))
    assert set(np.unique(grid.sigma)) <= {1.0, 2.0, 5.0}
    np.testing.assert_array_equal(grid.theta[grid.tau == 0], 3.0)  # tau = 0: theta = mu
    given = simulate_design(3, key=1, tau=1.0, J=Grid([2, 3]), sigma=[1.0, 2.0, 3.0])
    np.testing.assert_array_equal(given.n_groups, [2, 3, 2])
    np.testing.assert_array_equal(given.sigma[1], [1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"tau": "uniform"}, "proper generating prior"),
        ({"mu": "flat"}, "proper generating prior"),
        ({"tau": "jeffreys"}, "proper generating prior"),
        ({"sigma": 0.0}, "positive"),
        ({"tau": -1.0}, ">= 0"),
        ({"J": Choice([0, 2])}, "positive integers"),
    ],
)
def test_bad_designs_say_so(bad, match):
    kw = {"tau": 1.0, "mu": 0.0, "J": 3, "sigma": 1.0} | bad
    with pytest.raises(hierjax.InputError, match=match):
        simulate_design(4, key=0, **kw)


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec, dist",
    [
        ("half-cauchy:2", stats.halfcauchy(scale=2)),
        ("half-t:3,1.5", stats.t(3, scale=1.5)),
        ("exponential:2", stats.expon(scale=0.5)),
        ("half-logistic:1.5", stats.halflogistic(scale=1.5)),
        ("lomax:3,2", stats.lomax(3, scale=2)),
        ("rayleigh:1.5", stats.rayleigh(scale=1.5)),
        ("log-normal:0.3,0.7", stats.lognorm(0.7, scale=np.exp(0.3))),
        ("inv-gamma:3,2", None),
    ],
)
def test_tau_prior_samplers(spec, dist):
    prior = hierjax.parse_tau_prior(spec)
    dt = jax.numpy.zeros(()).dtype
    keys = jax.random.split(jax.random.key(3), 20_000)
    tau = np.asarray(
        jax.jit(jax.vmap(lambda k, p: sample_tau_prior(p, k, dt), in_axes=(0, None)))(keys, prior),
        np.float64,
    )

    def cdf(t):
        if spec.startswith("half-t"):  # |t|: the folded cdf
            return 2 * dist.cdf(t) - 1
        if dist is None:  # tau^2 ~ IG(3, 2)
            return stats.invgamma(3, scale=2).cdf(t**2)
        return dist.cdf(t)

    assert stats.kstest(tau, cdf).pvalue > 1e-3
