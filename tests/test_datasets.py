"""Published real datasets (../shared/REFERENCES.md): the engine against their printed
figures and against the independent quadrature reference.

* BDA3's beta-blocker meta-analysis (22 trials, log odds ratios from the 2x2 tables):
  uniform tau, flat mu, E[mu] = -0.2478, sd 0.0655, E[tau] = 0.1329 (printed, 4 digits).
* Efron and Morris's (1975) baseball batters (18 groups, sigma = 1): the exact posterior
  means predict the rest of the season better than the raw early averages (no pooling).

Both have padded J = 32, so they share one compiled kernel.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import X64
from reference import Reference

import hierjax

SD_TOL = 1e-8 if X64 else 1e-4


def _against_reference(f, y, sigma):
    """Largest error of means, sds and quantiles (mu, tau, every theta_j) in reference sds."""
    ref = Reference(y, sigma)
    levels = tuple(f.levels)
    worst = 0.0
    checks = [("mu", None, f.mu), ("tau", None, f.tau)] + [
        ("theta", j, f.theta) for j in range(len(y))
    ]
    for what, j, m in checks:
        rm = ref.marginal(what, j, levels)
        pick = (lambda a: np.asarray(a)[0]) if j is None else (lambda a: np.asarray(a)[0, j])
        errs = [abs(float(pick(m.mean)) - rm.mean), abs(float(pick(m.sd)) - rm.sd)]
        errs += [abs(float(a) - b) for a, b in zip(pick(m.quantiles), rm.quantiles)]
        worst = max(worst, max(errs) / rm.scale)
    return worst


@pytest.fixture(scope="module")
def beta():
    b = hierjax.beta_blockers()
    es = hierjax.log_odds_ratio(
        b.treated_deaths, b.treated_total, b.control_deaths, b.control_total
    )
    return es.y, es.sigma, hierjax.fit(es.y, es.sigma)


def test_beta_blockers_published_figures(beta):
    _, _, f = beta
    assert int(f.status[0]) == 0, hierjax.status_text(int(f.status[0]))
    assert float(f.mu.mean[0]) == pytest.approx(-0.2478, abs=5e-5)
    assert float(f.mu.sd[0]) == pytest.approx(0.0655, abs=5e-5)
    assert float(f.tau.mean[0]) == pytest.approx(0.1329, abs=5e-5)


def test_beta_blockers_against_quadrature(beta):
    y, sigma, f = beta
    assert _against_reference(f, y, sigma) < SD_TOL


def test_efron_morris_shrinkage_predicts_the_season():
    d = hierjax.efron_morris()
    f = hierjax.fit(d.y, d.sigma)
    assert int(f.status[0]) == 0, hierjax.status_text(int(f.status[0]))
    assert _against_reference(f, d.y, d.sigma) < SD_TOL
    post = np.asarray(f.theta.mean[0, : len(d.y)], np.float64)
    sse_mle = float(np.sum((d.y - d.truth) ** 2))
    sse_bayes = float(np.sum((post - d.truth) ** 2))
    # Efron and Morris: the raw averages' total squared error is about 3.5x the shrunken one's
    assert sse_bayes < 0.5 * sse_mle, (sse_bayes, sse_mle)
