"""hierjax.sampling.draws: exact iid posterior draws, checked by Monte Carlo z-tests against
the exact posterior (hierjax.fit, itself checked against quadrature in test_reference.py),
a Kolmogorov-Smirnov test of the tau draws against the independent quad CDF
(tests/reference.py), and bitwise reproducibility per dataset.

Every statistical test uses a fixed key (deterministic), with |z| <= 5 (a false alarm
rate of 6e-7 per check had the key been random). Run under JAX_ENABLE_X64=0 and =1.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from reference import reference
from scipy import stats

import hierjax
from hierjax import sampling
from hierjax.sampling import DRAW_CHUNK, draws, draws_standardized, to_arviz

EIGHT_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
EIGHT_S = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)
S = 1 << 17
Z = 5.0


@pytest.fixture(scope="module")
def eight():
    y, s = np.array(EIGHT_Y), np.array(EIGHT_S)
    return draws(y, s, key=jax.random.key(2024), num_draws=S), hierjax.fit(y, s)


def _z_mean(x, exact):
    return (np.mean(x) - exact) / (np.std(x) / math.sqrt(x.size))


def _z_sd(x, exact):
    """z of the sample variance: Var(s^2) ~= (m4 - s^4) / S."""
    c = x - np.mean(x)
    s2, m4 = np.mean(c**2), np.mean(c**4)
    return (s2 - exact**2) / math.sqrt((m4 - s2**2) / x.size)


def _z_quantile(x, q, p):
    """Binomial count of draws below the exact p-quantile q."""
    return (np.sum(x <= q) - x.size * p) / math.sqrt(x.size * p * (1 - p))


def test_draws_shapes_and_dtype(eight):
    d, _ = eight
    dt = np.float64 if jax.config.jax_enable_x64 else np.float32
    assert d.tau.shape == (1, S) and d.mu.shape == (1, S) and d.theta.shape == (1, S, 8)
    assert d.tau.dtype == dt and d.theta.dtype == dt
    assert d.status[0] == 0 and np.all(d.tau > 0) and np.all(np.isfinite(d.theta))


@pytest.mark.parametrize("name", ["tau", "mu", "theta0", "theta6"])
def test_moments_and_quantiles_z(eight, name):
    d, f = eight
    if name.startswith("theta"):
        j = int(name[5:])
        x = d.theta[0, :, j].astype(np.float64)
        m = f.theta
        mean, sd, q = m.mean[0, j], m.sd[0, j], m.quantiles[0, j]
    else:
        x = getattr(d, name)[0].astype(np.float64)
        m = getattr(f, name)
        mean, sd, q = m.mean[0], m.sd[0], m.quantiles[0]
    assert abs(_z_mean(x, mean)) < Z
    assert abs(_z_sd(x, sd)) < Z
    for p, qp in zip(f.levels, q):
        assert abs(_z_quantile(x, qp, p)) < Z, (name, p)


def _ref_cdf_table(ref, n=200):
    """The reference tau CDF at ``n`` points spread over the posterior (exact quad)."""
    ps = (np.arange(n) + 0.5) / n
    pts = np.array([math.exp(np.interp(p, ref._tab_cum, ref._tab_x)) for p in ps])
    return pts, np.array([ref.tau_cdf(float(t)) for t in pts])


def test_tau_draws_ks_against_quad_cdf(eight):
    d, _ = eight
    ref = reference(EIGHT_Y, EIGHT_S)
    pts, F = _ref_cdf_table(ref)
    tau = np.sort(d.tau[0].astype(np.float64))
    ecdf = np.searchsorted(tau, pts, side="right") / tau.size
    D = np.max(np.abs(ecdf - F))  # KS statistic on these points (<= the full one)
    assert stats.kstwo.sf(D, tau.size) > 1e-4, D
    # a 5% bias in tau is visible at this sample size: the test can fail
    ecdf_bad = np.searchsorted(1.05 * tau, pts, side="right") / tau.size
    assert stats.kstwo.sf(np.max(np.abs(ecdf_bad - F)), tau.size) < 1e-4


RAGGED_Y = [
    np.array(EIGHT_Y),
    np.array(EIGHT_Y[:5]) * 1.3,
    np.array(EIGHT_Y[2:]),
    np.array(EIGHT_Y[:4]) - 5.0,
    np.array(EIGHT_Y[1:7]) * 0.5,
]
RAGGED_S = [
    np.array(EIGHT_S),
    np.array(EIGHT_S[:5]),
    np.array(EIGHT_S[2:]),
    np.array(EIGHT_S[:4]),
    np.array(EIGHT_S[1:7]),
]


@pytest.fixture(scope="module")
def ragged():
    return draws(RAGGED_Y, RAGGED_S, key=jax.random.key(7), num_draws=300)


def test_batch_order_and_single_bitwise(ragged):
    perm = [3, 0, 4, 2, 1]
    d2 = draws(
        [RAGGED_Y[i] for i in perm],
        [RAGGED_S[i] for i in perm],
        key=jax.random.key(7),
        num_draws=300,
        ids=perm,
    )
    for f in ("tau", "mu", "theta"):
        assert np.array_equal(getattr(ragged, f)[perm], getattr(d2, f), equal_nan=True), f
    one = draws(RAGGED_Y[2], RAGGED_S[2], key=jax.random.key(7), num_draws=300, ids=[2])
    J = len(RAGGED_Y[2])  # its own width alone; the batch's is its longest dataset's
    assert one.theta.shape[-1] == J
    assert np.array_equal(one.theta[0], ragged.theta[2, :, :J], equal_nan=True)
    assert np.all(np.isnan(ragged.theta[2, :, J:]))
    # padded groups are nan, real ones finite
    assert np.all(np.isnan(ragged.theta[3, :, 4:])) and np.all(np.isfinite(ragged.theta[3, :, :4]))
    # another key or id gives other draws
    other = draws(RAGGED_Y[2], RAGGED_S[2], key=jax.random.key(7), num_draws=300, ids=[3])
    assert not np.array_equal(other.tau[0], ragged.tau[2])


def test_chunk_size_bitwise(ragged, monkeypatch):
    """Blocks of 2 (the last padded with a repeat of the last dataset) give the draws of
    one block of 8 bit for bit; every block has the chunk's shape, so the padded last
    block reuses the first one's compiled kernels."""
    widths = []
    real = sampling._draws_block

    def spy(key, ids, *args, **static):
        widths.append(ids.shape[0])
        return real(key, ids, *args, **static)

    monkeypatch.setattr(sampling, "_draws_block", spy)
    before = draws_standardized._cache_size()
    d2 = draws(RAGGED_Y, RAGGED_S, key=jax.random.key(7), num_draws=300, chunk=2)
    assert widths == [2, 2, 2]
    assert draws_standardized._cache_size() <= before + 1  # one shape, at most one trace
    for f in ("tau", "mu", "theta", "status"):
        assert np.array_equal(getattr(ragged, f), getattr(d2, f), equal_nan=True), f


def test_arviz_export(eight, ragged):
    pytest.importorskip("arviz")
    d, _ = eight
    idata = to_arviz(d)
    assert idata.posterior["theta"].shape == (1, S, 8)
    np.testing.assert_array_equal(idata.posterior["mu"].values[0], d.mu[0])
    one = to_arviz(ragged, dataset=3)
    assert one.posterior["theta"].shape == (1, 300, 4)
    allb = to_arviz(ragged)
    assert allb.posterior["theta"].shape == (1, 300, 5, 8)


def test_bad_input():
    with pytest.raises(hierjax.InputError):
        draws(EIGHT_Y, EIGHT_S, key=jax.random.key(0), num_draws=0)
    with pytest.raises(hierjax.InputError, match="sigma"):
        draws(EIGHT_Y, (-1.0,) + EIGHT_S[1:], key=jax.random.key(0), num_draws=10)
    with pytest.raises(hierjax.InputError, match="ids"):
        draws(EIGHT_Y, EIGHT_S, key=jax.random.key(0), num_draws=10, ids=[1, 2])


@pytest.mark.slow
def test_prefix_property_bitwise(ragged):
    big = draws(RAGGED_Y, RAGGED_S, key=jax.random.key(7), num_draws=3 * DRAW_CHUNK + 5)
    for f in ("tau", "mu", "theta"):
        assert np.array_equal(getattr(big, f)[:, :300], getattr(ragged, f), equal_nan=True), f


@pytest.mark.slow
@pytest.mark.parametrize("priors", [("uniform", "flat"), ("half-cauchy:5", "normal:0,5")])
def test_million_draws_z(priors):
    y, s = np.array(EIGHT_Y), np.array(EIGHT_S)
    d = draws(
        y, s, key=jax.random.key(11), num_draws=1_000_000, tau_prior=priors[0], mu_prior=priors[1]
    )
    f = hierjax.fit(y, s, tau_prior=priors[0], mu_prior=priors[1])
    for name in ("tau", "mu"):
        x = getattr(d, name)[0].astype(np.float64)
        m = getattr(f, name)
        assert abs(_z_mean(x, m.mean[0])) < Z
        assert abs(_z_sd(x, m.sd[0])) < Z
        for p, qp in zip(f.levels, m.quantiles[0]):
            assert abs(_z_quantile(x, qp, p)) < Z
    for j in range(8):
        x = d.theta[0, :, j].astype(np.float64)
        assert abs(_z_mean(x, f.theta.mean[0, j])) < Z
        assert abs(_z_sd(x, f.theta.sd[0, j])) < Z
