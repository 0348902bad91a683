"""Calibration (hierjax.validation.calibration): PIT and SBC ranks of the exact engine, uniformity
summaries against scipy, the ECDF bands against their simultaneous coverage.

The must-show check: with the generating priors, the PIT of mu, tau and theta_j passes
KS and chi-square; with a deliberately wrong fit prior it fails (test the test). The
default suite runs 2,000 replicates (J = 5, half-normal tau, normal mu: one compiled
shape, shared with tests/test_coverage.py); the 1e5 version is marked slow.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import cli_argv
from scipy import stats

import hierjax
from hierjax.validation.calibration import (
    _chi2_sf,
    calibrate,
    ecdf_bands,
    ecdf_difference,
    rank_uniformity,
    uniformity,
)

GEN = {"J": 5, "tau_prior": "half-normal:1", "mu_prior": "normal:0,1"}
P_FLOOR = 1e-3  # fixed seeds: a pass is a property of the code, not of a lucky draw


def _passes(summary):
    return all(u.ks_p > P_FLOOR and u.chi2_p > P_FLOOR for u in summary.values())


# --------------------------------------------------------------------------- summaries
def test_uniformity_against_scipy():
    rng = np.random.default_rng(0)
    for u in (rng.random(1000), rng.beta(1.2, 1.0, 3000)):
        got = uniformity(u, bins=20)
        ks = stats.kstest(u, "uniform")
        assert got.ks == pytest.approx(ks.statistic, rel=1e-12)
        assert got.ks_p == pytest.approx(ks.pvalue, abs=0.01)  # asymptotic vs exact
        chi = stats.chisquare(np.histogram(u, bins=20, range=(0, 1))[0])
        assert got.chi2 == pytest.approx(chi.statistic, rel=1e-12)
        assert got.chi2_p == pytest.approx(chi.pvalue, rel=1e-9)
    for x, df in [(0.5, 1), (25.3, 19), (3.1, 4), (150.0, 99), (1e-3, 7)]:
        assert _chi2_sf(x, df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-10)


def test_rank_uniformity_uses_exact_bin_shares():
    rng = np.random.default_rng(1)
    S = 30  # 31 rank values into 20 unequal bins
    r = rng.integers(0, S + 1, 5000)
    got = rank_uniformity(r, S, bins=20)
    edges = np.floor(np.arange(21) * (S + 1) / 20).astype(int)
    obs = np.array([np.sum((r >= a) & (r < b)) for a, b in itertools.pairwise(edges)])
    exp = 5000 * np.diff(edges) / (S + 1)
    assert got.chi2 == pytest.approx(stats.chisquare(obs, exp).statistic, rel=1e-12)
    assert got.chi2_p > P_FLOOR
    assert rank_uniformity(np.minimum(r, S - 3), S).chi2_p < 1e-6  # a pile-up fails


# --------------------------------------------------------------------------- ECDF bands
def _mc_coverage(b, n, M=4000, seed=5):
    """Share of M uniform samples of size n whose ECDF difference stays inside ``b``."""
    u = np.sort(np.random.default_rng(seed).random((M, n)), axis=1)
    F = np.stack([np.searchsorted(row, b.z, side="right") for row in u]) / n - b.z
    eps = 1e-12
    return np.mean(np.all((F >= b.lower - eps) & (F <= b.upper + eps), axis=1))


def test_ecdf_bands_quick():
    n, K, M = 100, 20, 4000
    b = ecdf_bands(n, 0.95, K=K)
    cov = _mc_coverage(b, n, M)
    assert abs(cov - 0.95) < 3.5 * np.sqrt(0.95 * 0.05 / M)
    # the simulation method finds about the same gamma; both far below the pointwise 0.05
    g_sim = ecdf_bands(n, 0.95, K=K, method="simulate", n_sim=4000).gamma
    assert g_sim == pytest.approx(b.gamma, rel=0.25)
    assert b.gamma < 0.02
    # each inner band point is the central 1 - gamma binomial interval (scipy's quantiles)
    z = b.z[1:-1]
    np.testing.assert_array_equal(b.lower[1:-1], stats.binom.ppf(b.gamma / 2, n, z) / n - z)
    np.testing.assert_array_equal(b.upper[1:-1], stats.binom.ppf(1 - b.gamma / 2, n, z) / n - z)
    _zz, d = ecdf_difference(np.array([0.1, 0.2, 0.7, np.nan]), K=10)
    np.testing.assert_allclose(
        d[[0, 1, 2, 5, 7, 10]], [0, 1 / 3 - 0.1, 2 / 3 - 0.2, 2 / 3 - 0.5, 1 - 0.7, 0], atol=1e-15
    )


@pytest.mark.slow
@pytest.mark.parametrize("n, K", [(50, 50), (1000, 100)])
def test_ecdf_bands_simultaneous_coverage(n, K):
    M = 20_000
    b = ecdf_bands(n, 0.95, K=K)
    assert abs(_mc_coverage(b, n, M, seed=n) - 0.95) < 3.5 * np.sqrt(0.95 * 0.05 / M)


def test_plot_ecdf_difference():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = hierjax.plot_ecdf_difference(np.random.default_rng(2).random(200), K=20)
    assert len(ax.lines) >= 1 and len(ax.collections) == 1
    plt.close("all")


# --------------------------------------------------------------------------- the engine
@pytest.fixture(scope="module")
def good():
    return calibrate(2000, key=11, **GEN)


def test_pit_uniform_with_the_generating_priors(good):
    assert good.pit.mu.shape == (2000,) and good.pit.theta.shape == (2000, 5)
    assert np.all((good.pit.mu > 0) & (good.pit.mu < 1))
    assert _passes(good.summary), good.summary
    b = ecdf_bands(2000, 0.99, K=50)
    for u in (good.pit.mu, good.pit.tau):
        _, d = ecdf_difference(u, K=50)
        assert np.all((d >= b.lower - 1e-12) & (d <= b.upper + 1e-12))


@pytest.mark.parametrize(
    "wrong", [{"fit_tau_prior": "half-normal:3"}, {"fit_mu_prior": "normal:0,0.5"}]
)
def test_pit_fails_with_a_wrong_fit_prior(good, wrong):
    bad = calibrate(2000, key=11, **GEN, **wrong)
    np.testing.assert_array_equal(bad.sim.y, good.sim.y)  # the same replicates
    assert not _passes(bad.summary)
    worst = min(min(u.ks_p, u.chi2_p) for u in bad.summary.values())
    assert worst < 1e-6, bad.summary


@pytest.mark.slow  # hierjax.draws compiles for ~40 s: too dear for the default suite
def test_sbc_ranks_uniform():
    cal = calibrate(256, key=4, num_draws=99, **GEN)
    r = cal.ranks
    assert r.mu.min() >= 0 and r.mu.max() <= 99 and r.theta.shape == (256, 5)
    for k in ("mu", "tau", "theta"):
        u = rank_uniformity(getattr(r, k), 99, bins=10)
        assert u.chi2_p > P_FLOOR and u.ks_p > P_FLOOR, (k, u)
    # a rank counts the draws below the truth: it moves with the PIT
    assert np.corrcoef(r.mu, cal.pit.mu)[0, 1] > 0.95


@pytest.mark.slow
def test_pit_1e5_replicates():
    cal = calibrate(100_000, key=12, **GEN)
    assert _passes(cal.summary), cal.summary
    bad = calibrate(100_000, key=12, fit_tau_prior="half-normal:1.3", **GEN)
    assert min(min(u.ks_p, u.chi2_p) for u in bad.summary.values()) < 1e-6, bad.summary


@pytest.mark.slow
def test_sbc_ranks_wrong_prior_fails():
    cal = calibrate(2000, key=13, num_draws=99, fit_tau_prior="half-normal:3", **GEN)
    assert rank_uniformity(cal.ranks.tau, 99).chi2_p < 1e-6


# --------------------------------------------------------------------------- the CLI
def test_cli_calibrate(good, tmp_path, capsys):
    import csv

    from hierjax.io.cli import main

    out = tmp_path / "pit.csv"
    rc = main(
        cli_argv(
            [
                "calibrate",
                "--J",
                "5",
                "--tau-prior",
                "half-normal:1",
                "--mu-prior",
                "normal:0,1",
                "--replicates",
                "2000",
                "--draws",
                "0",
                "--seed",
                "11",
                "--out",
                str(out),
            ]
        )
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "PIT" in printed and "theta" in printed and "chi2 p" in printed
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["replicate", "parameter", "truth", "pit", "rank"]
    assert len(rows) == 1 + 2000 * 7
    assert [r[1] for r in rows[1:8]] == ["mu", "tau"] + [f"theta[{j}]" for j in range(1, 6)]
    pit_mu = np.array([float(r[3]) for r in rows[1:] if r[1] == "mu"])
    np.testing.assert_allclose(pit_mu, good.pit.mu, rtol=1e-9)  # seed 11 = key 11
    assert all(r[4] == "" for r in rows[1:])  # no draws: no ranks
    # an improper generating prior is refused, saying why, and writes nothing
    bad = tmp_path / "bad.csv"
    rc = main(
        cli_argv(
            [
                "calibrate",
                "--J",
                "5",
                "--tau-prior",
                "uniform",
                "--mu-prior",
                "normal:0,1",
                "--replicates",
                "10",
                "--out",
                str(bad),
            ]
        )
    )
    assert rc == 2 and not bad.exists()
    assert "proper generating priors" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_calibrate_with_ranks(tmp_path, capsys):
    import csv

    from hierjax.io.cli import main

    out = tmp_path / "pit.csv"
    assert (
        main(
            cli_argv(
                [
                    "calibrate",
                    "--J",
                    "5",
                    "--tau-prior",
                    "half-normal:1",
                    "--mu-prior",
                    "normal:0,1",
                    "--replicates",
                    "300",
                    "--draws",
                    "49",
                    "--out",
                    str(out),
                ]
            )
        )
        == 0
    )
    assert "SBC rank/49" in capsys.readouterr().out
    with open(out, newline="") as fh:
        ranks = [int(r["rank"]) for r in csv.DictReader(fh)]
    assert min(ranks) >= 0 and max(ranks) <= 49
