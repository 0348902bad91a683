"""NumPyro NUTS against the exact posterior: the cross-check, and tests of the cross-check.

The reference here is independent of the engine: a sampler (NumPyro's NUTS, with NumPyro's
own prior distributions) whose error is known in Monte Carlo standard errors. The model's
densities are checked against an explicit log joint written from the equations.

Compiled shapes: one vmapped NUTS kernel (eight schools, B = 1, J = 8, 4 chains, SHORT
settings) shared by both priors (prior families are array leaves in the sampler), the CLI
test and the determinism test; two engine fits of the eight schools (B = 1).
"""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

numpyro = pytest.importorskip("numpyro")
pytest.importorskip("scipy")

import hierjax
import hierjax.cli
from hierjax.nuts import (
    COMPARE_LEVELS,
    InputError,
    compare,
    crosscheck,
    hierarchical_model,
    prior_codes,
    run_nuts,
)

SHORT = {"chains": 4, "warmup": 500, "samples": 1000}
PRIORS = [("uniform", "flat"), ("half-cauchy:25", "normal:0,100")]


@pytest.fixture(scope="module", params=PRIORS, ids=lambda p: f"{p[0]}/{p[1]}")
def eight(request):
    """``(fit, run, comparison)`` for the eight schools under one prior, non-centered."""
    tp, mp = request.param
    y, s = hierjax.eight_schools()
    f, run, cmp = crosscheck(y, s, tau_prior=tp, mu_prior=mp, seed=1, **SHORT)
    return tp, mp, f, run, cmp


def test_eight_schools_agree_with_nuts(eight):
    """Every compared mean, sd and quantile is within the Bonferroni |z| bound, and the
    combined KS/chi^2 test of N(0, 1) passes at 1%."""
    tp, mp, f, run, cmp = eight
    assert run.mu.shape == (1, 4, 1000) and run.theta.shape == (1, 4, 1000, 8)
    assert np.all(cmp.rhat[0] < 1.02), cmp.rhat
    assert np.all(cmp.ess[0] > 300), cmp.ess
    assert cmp.ok, (cmp.p_value, cmp.max_abs_z)
    assert not cmp.flagged.any(), cmp.max_abs_z
    assert cmp.max_abs_z[0] < cmp.z_threshold
    # what is compared: p(tau | y) ~ tau^-(alpha+1); alpha = 6 (uniform, flat mu) compares
    # the mean of tau and mu but not their sd; alpha = 9 (half-Cauchy, normal mu) both
    z = cmp.z[0]
    assert np.isfinite(z[2:]).all()                       # every theta_j statistic
    assert np.isfinite(z[:2, 2:]).all()                   # quantiles of mu and tau
    assert np.isfinite(z[:2, 0]).all()
    if tp == "uniform":
        assert np.isnan(z[:2, 1]).all()
    else:
        assert np.isfinite(z[:2, 1]).all()
    assert cmp.divergences[0] == run.diverging.sum()


@pytest.mark.parametrize("where", ["tau mean", "theta quantile", "mu sd"])
def test_planted_error_fails(eight, where):
    """Test the test: an exact value moved by a fraction of a posterior sd is caught."""
    tp, mp, f, run, cmp = eight
    if where == "mu sd" and tp == "uniform":
        pytest.skip("mu's sd is not compared under the uniform prior (alpha = 6)")
    bad = f
    if where == "tau mean":
        bad = f._replace(tau=f.tau._replace(mean=f.tau.mean + 0.3 * f.tau.sd))
    elif where == "theta quantile":
        q = np.array(f.theta.quantiles)
        q[0, 2, 2] += 0.3 * f.theta.sd[0, 2]              # theta[3], median
        bad = f._replace(theta=f.theta._replace(quantiles=q))
    else:
        bad = f._replace(mu=f.mu._replace(sd=f.mu.sd * 1.15))
    c = compare(bad, run)
    assert not c.ok and c.flagged.all(), (c.p_value, c.max_abs_z)
    assert cmp.ok                                         # the true values pass


def test_deterministic_given_seed(eight):
    """Same seed, same draws (the compiled kernel is reused); another seed, other draws."""
    tp, mp, f, run, cmp = eight
    y, s = hierjax.eight_schools()
    again = run_nuts(y, s, tau_prior=tp, mu_prior=mp, seed=1, **SHORT)
    assert again.compile_seconds == 0.0
    np.testing.assert_array_equal(again.theta, run.theta)
    np.testing.assert_array_equal(again.diverging, run.diverging)
    other = run_nuts(y, s, tau_prior=tp, mu_prior=mp, seed=2, **SHORT)
    assert not np.array_equal(other.tau, run.tau)
    # chains of one dataset are distinct
    assert not np.array_equal(run.tau[0, 0], run.tau[0, 1])


# -- the model's densities --------------------------------------------------------------

def _explicit_log_joint(y, sigma, mask, tp, mp, mu, tau, theta):
    """log p(y, theta, mu, tau) in the data's units from the equations (hierjax priors)."""
    from scipy.stats import norm
    lp = float(tp.log_density(jnp.asarray(tau)))
    if isinstance(mp, hierjax.NormalMu):
        lp += norm.logpdf(mu, mp.loc, mp.scale)
    m = mask
    lp += np.sum(norm.logpdf(theta[m], mu, tau)) + np.sum(norm.logpdf(y[m], theta[m], sigma[m]))
    return lp


DENSITY_CASES = ([(t, m, False) for t in ("uniform", "half-normal:7", "half-cauchy:25", "half-t:3,5",
                                          "exponential:0.2", "custom") for m in ("flat", "normal:3,20")]
                 + [("uniform", "flat", True), ("half-t:3,5", "normal:3,20", True)])


@pytest.mark.parametrize(("tau_spec", "mu_spec", "centered"), DENSITY_CASES)
def test_model_density_is_the_hierjax_model(tau_spec, mu_spec, centered):
    """NumPyro's log density of the model (as sampled: prior codes; and with the prior
    objects) differs from the explicit log joint by a constant, padded groups included."""
    from numpyro.infer.util import log_density

    if tau_spec == "custom":
        tp = hierjax.CustomTau(lambda t: -jnp.log1p((t / 4.0) ** 4), tail_power=4.0)
    else:
        tp = hierjax.parse_tau_prior(tau_spec)
    mp = hierjax.parse_mu_prior(mu_spec)
    rng = np.random.default_rng(0)
    J, n = 8, 5
    y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1e6, -3e5, 7e7])       # padded values are junk
    sigma = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 1e-3, 5.0, 1e4])
    mask = np.arange(J) < n
    loc = y[:n].mean()
    scale = np.exp(np.log(sigma[:n]).mean())
    codes = prior_codes(tp, mp)
    variants = [(tp, mp), codes]
    diffs, points, expect = {}, [], []
    for _ in range(4):
        mu, tau = rng.normal(5, 10), rng.uniform(0.5, 30)
        theta = mu + tau * rng.standard_normal(J)
        pad = rng.standard_normal(J)
        latent = {"mu_z": (mu - loc) / scale, "tau_z": tau / scale}
        if centered:
            latent["theta_z"] = np.where(mask, (theta - loc) / scale, pad)
            jac = 0.0
        else:
            latent["eta"] = np.where(mask, (theta - mu) / tau, pad)
            jac = n * math.log(tau)      # d theta / d eta over the real groups
        from scipy.stats import norm
        expected = (_explicit_log_joint(y, sigma, mask, tp, mp, mu, tau, theta) + jac
                    + np.sum(norm.logpdf(pad[~mask])))
        points.append(jax.tree.map(jnp.asarray, latent))
        expect.append(expected)
    batch = jax.tree.map(lambda *a: jnp.stack(a), *points)
    for i, (t, m) in enumerate(variants):
        t = jax.tree.map(jnp.asarray, t) if i else t
        m = jax.tree.map(jnp.asarray, m) if i else m
        args = (jnp.asarray(y), jnp.asarray(sigma), jnp.asarray(mask), t, m)
        lp = jax.vmap(lambda z, args=args: log_density(hierarchical_model, args,
                                                        {"centered": centered}, z)[0])(batch)
        diffs[i] = np.asarray(lp, np.float64) - np.array(expect)
    tol = 1e-8 if jax.config.jax_enable_x64 else 2e-3
    for i, d in diffs.items():
        assert np.ptp(d) < tol * max(1.0, np.max(np.abs(d))), (i, d)


# -- input checks -----------------------------------------------------------------------

def test_bad_input_raises_before_compiling():
    y, s = hierjax.eight_schools()
    with pytest.raises(InputError, match="datasets"):
        run_nuts(y, s, datasets=[3])
    with pytest.raises(InputError, match="dataset 0.*needs at least 3"):
        run_nuts(y[:2], s[:2])
    with pytest.raises(InputError, match="sigma"):
        run_nuts(y, -s)
    with pytest.raises(InputError, match="chains"):
        run_nuts(y, s, chains=0)


# -- the command line -------------------------------------------------------------------

def test_cli_crosscheck_writes_json_and_prints_table(tmp_path, capsys):
    """``hierjax crosscheck`` on the eight schools (shares the compiled kernel above)."""
    out = tmp_path / "cc.json"
    code = hierjax.cli.main(["crosscheck", "--tau-prior", "uniform", "--chains", "4", "--warmup",
                             str(SHORT["warmup"]), "--samples", str(SHORT["samples"]), "--seed", "3",
                             "--json", str(out)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "dataset eight_schools" in cap.out and "theta[8]" in cap.out and "rhat" in cap.out
    assert "datasets/s" in cap.out and "p-value" in cap.out
    report = json.loads(out.read_text())
    assert report["samples"] == SHORT["samples"] and report["chains"] == 4
    ds = report["datasets"][0]
    assert ds["name"] == "eight_schools" and ds["n_groups"] == 8
    assert set(ds["parameters"]) == {"mu", "tau"} | {f"theta[{j}]" for j in range(1, 9)}
    assert ds["parameters"]["tau"]["sd"]["z"] is None          # alpha = 6: not compared
    assert ds["parameters"]["theta[1]"]["mean"]["z"] is not None
    assert 0.0 <= report["p_value"] <= 1.0
    assert not list(tmp_path.glob(".hierjax-*"))                # no temporary file left


def test_cli_crosscheck_bad_prior(capsys):
    code = hierjax.cli.main(["crosscheck", "--tau-prior", "half-cauchy:-1"])
    assert code == 2
    assert "half-cauchy" in capsys.readouterr().err


# -- many datasets (slow) ---------------------------------------------------------------

@pytest.mark.slow
def test_simulated_datasets_z_scores_standard_normal():
    """200 simulated datasets, uniform tau, flat mu, non-centered, 4 x 1000 draws: the
    z-scores of every (parameter, statistic) are N(0, 1) across datasets at the 1% level
    (KS and chi^2, Bonferroni-combined)."""
    sim = hierjax.simulate(200, 8, seed=11)
    f, run, cmp = crosscheck(sim.y, sim.sigma, chains=4, warmup=500, samples=1000, seed=5,
                             levels=COMPARE_LEVELS)
    assert run.mu.shape == (200, 4, 1000)
    assert cmp.n_z.max() == 200
    assert cmp.ok, (cmp.p_value, np.nanmin(cmp.ks_p), np.nanmin(cmp.chi2_p))
    assert cmp.flagged.sum() <= 2, np.flatnonzero(cmp.flagged)
