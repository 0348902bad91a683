"""hierjax.posterior against the independent quadrature reference (tests/reference.py).

Distribution functions (pdf, cdf, P(>c)) of mu, tau, theta, theta_new, y_new, y_rep and
I^2; quantiles and intervals (central, shortest) and their mutual consistency; the
seed lecture's predictive probabilities; shrinkage, weights and I^2; pairwise
probabilities (also against a dense joint Gaussian at fixed tau); batched equals one
dataset at a time.

Tolerances (read from ``jax.config.jax_enable_x64``): locations 1e-8 of a posterior sd
and probabilities 1e-8 absolute in float64, 1e-4 in float32; self-consistency
(``cdf(quantile(p)) = p``) 1e-10 / 1e-5.

Compile budget: every posterior here has J <= 8 groups (padded to 8) and B <= 8
datasets (one block of 8), so each kernel compiles once per param.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import BATCH_RTOL
from reference import precision_posterior, reference
from scipy import special

import hierjax
from hierjax.model.conditionals import MuGivenTau, mu_given_tau
from hierjax.posterior import difference_given_tau

X64 = bool(jax.config.jax_enable_x64)
TOL = 1e-8 if X64 else 1e-4  # sd units / absolute on probabilities
CONS = 1e-10 if X64 else 1e-5  # cdf(quantile(p)) = p

EIGHT_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
EIGHT_S = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)
# clearly heterogeneous: p(tau | y) peaks away from 0
HET_Y = (-10.0, 22.0, 3.0, 35.0, -6.0, 15.0)
HET_S = (4.0, 5.0, 3.0, 6.0, 4.0, 5.0)
# four groups: sd(tau) does not exist under the uniform prior
SMALL_Y = EIGHT_Y[:4]
SMALL_S = EIGHT_S[:4]
DATA = [(EIGHT_Y, EIGHT_S), (HET_Y, HET_S), (SMALL_Y, SMALL_S)]
P5 = np.array([1e-3, 0.025, 0.5, 0.975, 0.999])


@pytest.fixture(scope="module")
def post():
    """The ragged batch (B = 3, J = 8, 6, 4), uniform tau, flat mu."""
    return hierjax.posterior([np.array(y) for y, _ in DATA], [np.array(s) for _, s in DATA])


def ref(b, tau_prior="uniform", mu_prior="flat"):
    return reference(DATA[b][0], DATA[b][1], tau_prior, mu_prior)


def points(b):
    """Five points across the data of dataset ``b``."""
    y = np.asarray(DATA[b][0])
    return np.linspace(y.min() - 12.0, y.max() + 12.0, 5)


def report(errs):
    assert not errs, f"{len(errs)} mismatch(es):\n  " + "\n  ".join(errs)


# --------------------------------------------------------------------------- pdf / cdf / sf
@pytest.mark.parametrize("param", ["mu", "theta", "theta_new", "y_new", "y_rep"])
def test_mixture_distribution_functions_vs_quad(post, param):
    B = post.y.shape[0]
    x = np.stack([points(b) for b in range(B)])  # [B, P]
    sn = np.array([15.0, 4.0, 16.0]) if param == "y_new" else None
    kw = {"sigma_new": sn} if sn is not None else {}
    f, F, S = (fn(post, param, x, **kw) for fn in (hierjax.pdf, hierjax.cdf, hierjax.prob_greater))
    assert f.dtype == F.dtype == S.dtype == post.grid.tau.dtype
    errs = []
    for b in (0, 1):
        r = ref(b)
        for j in ((0, 3) if b == 0 else (1,)) if param in ("theta", "y_rep") else (None,):
            idx = (b,) if j is None else (b, j)
            sig = None if sn is None else sn[b]
            fr = [r.density(param, xx, j, sig) for xx in x[b]]
            Fr = [r.cdf(param, xx, j, sig) for xx in x[b]]
            Sr = [r.sf(param, xx, j, sig) for xx in x[b]]
            peak = max(fr)
            for k in range(x.shape[1]):
                lab = f"{param} b={b} j={j} x={x[b, k]}"
                if not abs(f[idx][k] - fr[k]) <= TOL * peak:
                    errs.append(f"{lab}: pdf {f[idx][k]!r} vs {fr[k]!r}")
                if not abs(F[idx][k] - Fr[k]) <= TOL:
                    errs.append(f"{lab}: cdf {F[idx][k]!r} vs {Fr[k]!r}")
                if not abs(S[idx][k] - Sr[k]) <= TOL:
                    errs.append(f"{lab}: P(>x) {S[idx][k]!r} vs {Sr[k]!r}")
    report(errs)
    if param in ("theta", "y_rep"):  # padded groups are nan
        assert np.all(np.isnan(F[1, 6:])) and np.all(np.isfinite(F[1, :6]))


def test_tau_distribution_functions_vs_quad(post):
    """The tau density is exact (also at tau = 0, finite and positive); the CDF is the
    integral of its interpolant."""
    x = np.stack([np.array([0.0, 0.3, 3.0, 10.0, 40.0])] * post.y.shape[0])
    f, F, S = (fn(post, "tau", x) for fn in (hierjax.pdf, hierjax.cdf, hierjax.prob_greater))
    errs = []
    for b in (0, 1, 2):
        r = ref(b)
        for k, t in enumerate(x[b]):
            fr, Fr, Sr = r.tau_density(t), r.tau_cdf(t), r.tau_sf(t)
            if not abs(f[b, k] - fr) <= TOL * fr:
                errs.append(f"b={b} tau={t}: pdf {f[b, k]!r} vs {fr!r}")
            if not abs(F[b, k] - Fr) <= TOL:
                errs.append(f"b={b} tau={t}: cdf {F[b, k]!r} vs {Fr!r}")
            if not abs(S[b, k] - Sr) <= TOL:
                errs.append(f"b={b} tau={t}: P(>tau) {S[b, k]!r} vs {Sr!r}")
    report(errs)
    assert np.all(np.isfinite(f[:, 0])) and np.all(f[:, 0] > 0)
    assert np.all(F[:, 0] == 0)


# --------------------------------------------------------------------------- quantiles
@pytest.mark.parametrize("param", ["mu", "tau", "theta", "theta_new"])
def test_quantiles_vs_quad(post, param):
    q = hierjax.quantile(post, param, P5)
    errs = []
    for b in (0, 1) if param == "tau" else (0,):
        r = ref(b)
        for j in (0, 2) if param == "theta" else (None,):
            idx = (b,) if j is None else (b, j)
            mo = r.moments(param, j)
            scale = mo[1] if mo[3] else (r.quantile(param, 0.75, j) - r.quantile(param, 0.25, j))
            for k, p in enumerate(P5):
                if p in (0.025, 0.999):  # the reference's root finding is slow
                    continue
                qr = r.quantile(param, float(p), j)
                if not abs(q[idx][k] - qr) <= TOL * scale:
                    errs.append(f"{param} b={b} j={j} p={p}: {q[idx][k]!r} vs {qr!r}")
    report(errs)


@pytest.mark.parametrize("param", hierjax.PARAMS)
def test_cdf_of_quantile(post, param):
    """``cdf(quantile(p)) = p`` for every parameter, dataset and group."""
    kw = {"sigma_new": 15.0} if param == "y_new" else {}
    q = hierjax.quantile(post, param, P5, **kw)
    F = hierjax.cdf(post, param, q, **kw)
    expect = np.broadcast_to(P5, F.shape)
    ok = np.isnan(F) if param in ("theta", "y_rep") else np.zeros(F.shape, bool)
    err = np.where(ok, 0.0, np.abs(F - expect))
    assert np.nanmax(err) <= CONS, f"{param}: max |cdf(quantile(p)) - p| = {np.nanmax(err):.3g}"
    assert np.all(np.diff(np.where(ok, 0.0, q), axis=-1) >= 0)


# --------------------------------------------------------------------------- intervals
# the shortest-interval kernel of each param is one more compilation (the heaviest)
@pytest.mark.parametrize(
    "param",
    ["mu", "tau"] + [pytest.param(p, marks=pytest.mark.slow) for p in ("theta", "theta_new", "I2")],
)
def test_intervals(post, param):
    """Central: equal tails. Shortest: mass ``level``, equal density at both ends (or
    starting at 0), no wider than the central one, the density rising into it at
    both ends (so the mode of a unimodal density lies inside)."""
    level = 0.9
    cl, cu = hierjax.interval(post, param, level)
    sl, su = hierjax.interval(post, param, level, kind="shortest")
    grouped = param == "theta"
    valid = post.mask if grouped else np.ones(post.y.shape[0], bool)
    assert np.all(np.abs(hierjax.cdf(post, param, cl[..., None])[..., 0] - 0.05)[valid] <= CONS)
    assert np.all(np.abs(hierjax.cdf(post, param, cu[..., None])[..., 0] - 0.95)[valid] <= CONS)
    Fl = hierjax.cdf(post, param, sl[..., None])[..., 0]
    Fu = hierjax.cdf(post, param, su[..., None])[..., 0]
    assert np.all(np.abs(Fu - Fl - level)[valid] <= 2 * CONS)
    width_c, width_s = (cu - cl)[valid], (su - sl)[valid]
    assert np.all(width_s <= width_c * (1 + CONS))
    h = 1e-3 * (su - sl)
    x = np.stack([sl, sl + h, 0.5 * (sl + su), su - h, su], axis=-1)
    f = hierjax.pdf(post, param, x).astype(np.float64)
    at_zero = sl == 0
    rel = 1e-7 if X64 else 2e-2
    both = ~at_zero & valid & (su < 1)
    assert np.all(np.abs(f[..., 0] - f[..., 4])[both] <= rel * f[..., 2][both])
    assert np.all((f[..., 1] > f[..., 0])[both])
    at_one = su == 1  # I^2 only: the support ends at 1
    # (an interval from 0 may end where the density rises again: I^2 of four groups is
    # U-shaped, infinite at 0 and increasing towards 1)
    assert np.all((f[..., 3] > f[..., 4])[valid & ~at_one & ~at_zero])
    assert np.all((f[..., 0] >= f[..., 4])[at_zero & valid])
    assert np.all((f[..., 4] >= f[..., 0])[at_one & valid])
    if param in ("mu", "theta", "theta_new"):
        assert not np.any(at_zero[valid])
    if param in ("tau", "I2"):
        # the eight schools: p(tau | y) peaks at 0 (reference mode exactly 0), so the
        # shortest interval is [0, Q(level)]; the heterogeneous dataset's does not start at 0
        assert ref(0).mode == 0.0 and ref(1).mode > 0
        assert sl[0] == 0.0
        q = hierjax.quantile(post, param, level)
        assert abs(su[0] - q[0]) <= CONS * q[0]
        assert sl[1] > 0
        if param == "tau":
            assert sl[1] <= ref(1).mode <= su[1]


# --------------------------------------------------------------------------- predictive
def test_seed_predictive_probabilities(post):
    """The seed lecture: P(y_new >= 28 | sigma = 15, y) = 0.09560784 and
    P(y_new < -3 | sigma = 16, y) = 0.2587447, printed for the pooled model, i.e. the
    hierarchical posterior given tau = 0; integrated over p(tau | y) (uniform prior)
    they are 0.1262... and 0.2753..., checked against quadrature."""
    p_hi = hierjax.predictive_prob(post, 28.0, 15.0, "greater", tau=0.0)[0]
    p_lo = hierjax.predictive_prob(post, -3.0, 16.0, "less", tau=0.0)[0]
    assert abs(p_hi - 0.09560784) <= 5e-9 + TOL
    assert abs(p_lo - 0.2587447) <= 5e-8 + TOL
    # the same by the seed's own formula (Fisher weighting), in float64 NumPy
    y, s = np.array(EIGHT_Y), np.array(EIGHT_S)
    m = np.sum(y / s**2) / np.sum(1 / s**2)
    v = 1 / np.sum(1 / s**2)
    assert abs(p_hi - special.ndtr(-(28 - m) / np.sqrt(v + 15**2))) <= TOL
    assert abs(p_lo - special.ndtr((-3 - m) / np.sqrt(v + 16**2))) <= TOL
    # integrated over tau
    r = ref(0)
    q_hi = hierjax.predictive_prob(post, 28.0, 15.0, "greater")[0]
    q_lo = hierjax.predictive_prob(post, -3.0, 16.0, "less")[0]
    assert abs(q_hi - r.sf("y_new", 28.0, sigma_new=15.0)) <= TOL
    assert abs(q_lo - r.cdf("y_new", -3.0, sigma_new=16.0)) <= TOL


def test_predictive_check_vs_quad(post):
    pc = hierjax.predictive_check(post)
    errs = []
    for b in (0, 1):
        r = ref(b)
        for j in range(len(DATA[b][0])):
            mean, sd = r.moments("theta", j)[:2]
            sd_rep = math.sqrt(sd**2 + DATA[b][1][j] ** 2)
            pv = r.sf("y_rep", DATA[b][0][j], j)
            if not abs(pc.mean[b, j] - mean) <= TOL * sd_rep:
                errs.append(f"b={b} j={j}: mean {pc.mean[b, j]!r} vs {mean!r}")
            if not abs(pc.sd[b, j] - sd_rep) <= TOL * sd_rep:
                errs.append(f"b={b} j={j}: sd {pc.sd[b, j]!r} vs {sd_rep!r}")
            if not abs(pc.p_value[b, j] - pv) <= TOL:
                errs.append(f"b={b} j={j}: p-value {pc.p_value[b, j]!r} vs {pv!r}")
    report(errs)
    assert np.all(np.isnan(pc.p_value[2, 4:]))


# --------------------------------------------------------------------------- shrinkage, weights
def test_shrinkage_vs_quad(post):
    B_ = hierjax.shrinkage(post)
    errs = [
        f"b={b} j={j}: {B_[b, j]!r} vs {ref(b).shrinkage(j)!r}"
        for b in (0, 1)
        for j in range(len(DATA[b][0]))
        if not abs(B_[b, j] - ref(b).shrinkage(j)) <= TOL
    ]
    report(errs)
    assert np.all((B_[post.mask] > 0) & (B_[post.mask] < 1))


def test_weights_flat_mu(post):
    """Weights sum to 1 (no prior weight under a flat mu), match quadrature, and
    reproduce the posterior means of mu and each theta_j."""
    w = hierjax.weights(post)
    m = post.mask
    assert np.all(w.mu_prior == 0) and np.all(w.theta_prior[m] == 0)
    assert np.allclose(np.nansum(w.mu, axis=1), 1.0, rtol=0, atol=CONS)
    assert np.allclose(np.nansum(w.theta, axis=2)[m], 1.0, rtol=0, atol=CONS)
    errs = []
    for b in (0, 1):
        r = ref(b)
        y = np.array(DATA[b][0])
        J = y.size
        for i in range(J):
            if not abs(w.mu[b, i] - r.mu_weight(i)) <= TOL:
                errs.append(f"b={b}: mu weight {i} {w.mu[b, i]!r} vs {r.mu_weight(i)!r}")
            if not abs(w.theta[b, 0, i] - r.theta_weight(0, i)) <= TOL:
                errs.append(
                    f"b={b}: theta[0] weight {i} {w.theta[b, 0, i]!r} vs {r.theta_weight(0, i)!r}"
                )
        mean, sd = r.moments("mu")[:2]
        if not abs(w.mu[b, :J] @ y - mean) <= TOL * sd:
            errs.append(f"b={b}: sum w y = {w.mu[b, :J] @ y!r} vs E[mu] {mean!r}")
        for j in range(J):
            mean, sd = r.moments("theta", j)[:2]
            if not abs(w.theta[b, j, :J] @ y - mean) <= TOL * sd:
                errs.append(f"b={b}: theta {j}: sum w y {w.theta[b, j, :J] @ y!r} vs {mean!r}")
    report(errs)


@pytest.mark.slow  # a second prior type: the grid compiles again
def test_weights_normal_mu_prior():
    """With mu ~ N(m0, s0^2) the prior mean has a weight too; all weights sum to 1."""
    m0, s0 = 5.0, 10.0
    p = hierjax.posterior(np.array(EIGHT_Y), np.array(EIGHT_S), mu_prior=f"normal:{m0},{s0}")
    w = hierjax.weights(p)
    r = reference(EIGHT_Y, EIGHT_S, "uniform", f"normal:{m0},{s0}")
    y = np.array(EIGHT_Y)
    assert abs(w.mu[0].sum() + w.mu_prior[0] - 1) <= CONS
    assert np.allclose(w.theta[0].sum(axis=1) + w.theta_prior[0], 1.0, rtol=0, atol=CONS)
    assert abs(w.mu_prior[0] - r.mu_weight(None)) <= TOL
    assert abs(w.theta_prior[0, 2] - r.theta_weight(2, None)) <= TOL
    mean, sd = r.moments("mu")[:2]
    assert abs(w.mu[0] @ y + w.mu_prior[0] * m0 - mean) <= TOL * sd
    mean, sd = r.moments("theta", 2)[:2]
    assert abs(w.theta[0, 2] @ y + w.theta_prior[0, 2] * m0 - mean) <= TOL * sd


def test_i2(post):
    """I^2 = tau^2 / (tau^2 + s^2): s^2, mean and CDF against quadrature; quantiles are
    tau's mapped."""
    out = hierjax.i2(post, P5)
    tq = hierjax.quantile(post, "tau", P5).astype(np.float64)
    s2 = out.s2.astype(np.float64)
    for b in range(3):
        w = 1 / np.array(DATA[b][1]) ** 2
        k = w.size
        assert abs(s2[b] - (k - 1) * w.sum() / (w.sum() ** 2 - (w**2).sum())) <= CONS * s2[b]
    mapped = tq**2 / (tq**2 + s2[:, None])
    assert np.allclose(out.quantiles, mapped, rtol=100 * CONS, atol=0)
    x = np.array([0.05, 0.2, 0.5, 0.7, 0.95])
    F = hierjax.cdf(post, "I2", x)
    errs = []
    for b in (0, 1):
        r = ref(b)
        if not abs(out.mean[b] - r.i2_mean()) <= TOL:
            errs.append(f"b={b}: E[I2] {out.mean[b]!r} vs {r.i2_mean()!r}")
        for k, xx in enumerate(x):
            if not abs(F[b, k] - r.i2_cdf(xx)) <= TOL:
                errs.append(f"b={b}: P(I2 <= {xx}) {F[b, k]!r} vs {r.i2_cdf(xx)!r}")
    report(errs)


# --------------------------------------------------------------------------- tables
def test_table_equals_the_fits(post):
    """``Posterior.to_arrow`` has ``Fit.to_arrow``'s schema and rows, and each number, from
    the Posterior's own queries, is the fit's within the accuracy goal (TOL posterior sds,
    or of the IQR where the sd does not exist as for SMALL's tau; P(> 0) absolute)."""
    f = hierjax.fit([np.array(y) for y, _ in DATA], [np.array(s) for _, s in DATA])
    a, b = f.to_arrow(), post.to_arrow()
    assert b.schema.equals(a.schema), (a.schema, b.schema)
    for c in ("dataset", "parameter", "group", "status", "note"):
        assert b[c].to_pylist() == a[c].to_pylist(), c
    sd = a["sd"].to_numpy().astype(np.float64)
    iqr = (a["q0.75"].to_numpy() - a["q0.25"].to_numpy()).astype(np.float64)
    unit = np.where(np.isfinite(sd), sd, iqr)
    errs = []
    for c in ("mean", "sd", "q0.025", "q0.25", "q0.5", "q0.75", "q0.975", "p_gt0"):
        x, z = (t[c].to_numpy().astype(np.float64) for t in (a, b))
        same = np.array_equal(x, z, equal_nan=True)  # nan and inf where a moment does not exist
        fin = np.isfinite(x)
        if not same and not np.array_equal(fin, np.isfinite(z)):
            errs.append(f"{c}: not finite in different rows")
            continue
        d = np.abs(x[fin] - z[fin]) / (1.0 if c == "p_gt0" else unit[fin])
        if not np.all(d <= TOL):
            errs.append(f"{c}: off by {d.max():.3g} (row {np.flatnonzero(fin)[np.argmax(d)]})")
    report(errs)
    par = a["parameter"].to_numpy(zero_copy_only=False)
    assert not np.isfinite(sd[par == "tau"][2])  # SMALL's tau: no sd (J = 4)


def test_table_options_and_round_trip(post, tmp_path):
    """``params`` (i2 rows too) and ``levels``; ``to_pandas`` reads back from the CSV."""
    import pandas as pd

    from hierjax.io.tidy import write_csv

    t = post.to_arrow(params=["theta_new", "i2", "mu"], levels=(0.1, 0.9))
    assert t.column_names[3:8] == ["mean", "sd", "q0.1", "q0.9", "p_gt0"]
    # table order; i2 after tau, or last without it (as hierjax fit --params)
    assert t["parameter"].to_pylist() == ["mu", "theta_new", "i2"] * 3
    i2 = hierjax.i2(post, (0.1, 0.9))
    np.testing.assert_array_equal(t["mean"].to_numpy()[2::3], i2.mean)
    np.testing.assert_array_equal(t["q0.9"].to_numpy()[2::3], i2.quantiles[:, 1])
    q = hierjax.quantile(post, "theta_new", (0.1, 0.9))
    np.testing.assert_array_equal(t["q0.1"].to_numpy()[1::3], q[:, 0])
    df = post.to_pandas()
    write_csv(post.to_arrow(), str(tmp_path / "t.csv"))
    back = pd.read_csv(
        tmp_path / "t.csv",
        keep_default_na=False,
        na_values=["nan", ""],
        dtype={"group": str, "dataset": str},
    )
    assert list(back.columns) == list(df.columns)
    for c in df.columns:
        if df[c].dtype.kind == "f":
            got = back[c].to_numpy(np.float64).astype(df[c].dtype)
            np.testing.assert_array_equal(got, df[c].to_numpy(), err_msg=c)
        else:
            # missing strings read back as nan
            assert [v if isinstance(v, str) else "" for v in back[c]] == [
                v if isinstance(v, str) else "" for v in df[c]
            ], c


# --------------------------------------------------------------------------- pairwise
def test_pairwise_vs_quad(post):
    P = hierjax.pairwise_prob(post)
    m = post.mask
    off = m[:, :, None] & m[:, None, :] & ~np.eye(post.y.shape[1], dtype=bool)
    assert np.allclose((P + P.transpose(0, 2, 1))[off], 1.0, rtol=0, atol=2 * TOL)
    assert np.all(np.diagonal(P, axis1=1, axis2=2)[m] == 0)
    assert np.all(np.isnan(P[2, 4:, :])) and np.all(np.isnan(P[2, :, 4:]))
    errs = []
    for b, pairs in (
        (0, [(i, j) for i in range(8) for j in range(i + 1, 8)]),
        (1, [(0, 1), (2, 3), (4, 5)]),
    ):
        r = ref(b)
        for i, j in pairs:
            pr = r.pairwise(i, j)
            if not abs(P[b, i, j] - pr) <= TOL:
                errs.append(f"b={b}: P(theta_{i} > theta_{j}) {P[b, i, j]!r} vs {pr!r}")
    report(errs)


@pytest.mark.parametrize("tau", [0.3, 4.0, 60.0])
def test_difference_given_tau_dense(tau):
    """Given tau, the mean and variance of theta_i - theta_j against the dense joint
    Gaussian posterior of (mu, theta) from its precision matrix."""
    y, s = np.array(EIGHT_Y), np.array(EIGHT_S)
    dt = jnp.float64 if X64 else jnp.float32
    mean, cov = precision_posterior(y, s, tau)
    ya, s2a = jnp.asarray(y, dt), jnp.asarray(s**2, dt)
    mu = mu_given_tau(jnp.asarray(tau * tau, dt), ya, s2a, jnp.ones(8, bool), hierjax.FlatMu())
    E, V = difference_given_tau(jnp.asarray(tau * tau, dt), ya, s2a, MuGivenTau(*mu))
    th, C = mean[1:], cov[1:, 1:]
    E_ref = th[:, None] - th[None, :]
    V_ref = np.diag(C)[:, None] + np.diag(C)[None, :] - 2 * C
    sd = np.sqrt(np.diag(C))
    tol = 1e-10 if X64 else 1e-5
    assert np.all(np.abs(np.asarray(E) - E_ref) <= tol * sd.max())
    assert np.all(np.abs(np.asarray(V) - V_ref) <= tol * (sd.max() ** 2))
    iu = np.triu_indices(8, 1)
    assert np.all(
        np.abs(np.sqrt(np.asarray(V, np.float64))[iu] - np.sqrt(V_ref[iu]))
        <= tol * np.sqrt(V_ref[iu]) * 10
    )


# --------------------------------------------------------------------------- structure
def test_batched_equals_one_at_a_time(post):
    """Each dataset alone gives what it gives in the (ragged) batch."""
    x = np.array([-5.0, 0.0, 5.0, 10.0, 20.0])
    batched = (
        hierjax.cdf(post, "mu", x),
        hierjax.quantile(post, "tau", P5),
        hierjax.interval(post, "theta_new", 0.9, kind="shortest")[1],
        hierjax.shrinkage(post),
        hierjax.pairwise_prob(post),
    )
    for b, (y, s) in enumerate(DATA):
        one = hierjax.posterior(np.array(y), np.array(s))
        single = (
            hierjax.cdf(one, "mu", x),
            hierjax.quantile(one, "tau", P5),
            hierjax.interval(one, "theta_new", 0.9, kind="shortest")[1],
            hierjax.shrinkage(one),
            hierjax.pairwise_prob(one),
        )
        J = len(y)  # the dataset's own groups (the batch's kernels ran at 8 too)
        group_axes = (0, 0, 0, 1, 2)  # shrinkage [B, J], pairwise_prob [B, J, J]
        for a, c, g in zip(batched, single, group_axes):
            if g:  # the batch's columns beyond the dataset's groups are nan
                assert np.all(np.isnan(a[b][J:])), "padded groups"
            a = a[b][(slice(0, J),) * g]
            np.testing.assert_allclose(a, c[0], rtol=BATCH_RTOL, atol=BATCH_RTOL * 1e-3)


def test_other_batch_sizes_and_levels_compile_nothing(post):
    """B and the number of levels run in padded blocks: a posterior of 2 datasets and other
    levels reuse the kernels of the B = 3 one (counted over every registered kernel,
    the far-quantile check of mu and theta_new included)."""
    from hierjax.engine import cache

    def compiled():
        return sum(size() for size, _ in cache._KERNELS)

    hierjax.interval(post, "mu", 0.95)
    hierjax.quantile(post, "theta_new", [0.1, 0.5, 0.9])
    before = compiled()
    two = hierjax.posterior([np.array(y) for y, _ in DATA[:2]], [np.array(s) for _, s in DATA[:2]])
    hierjax.interval(two, "mu", [0.5, 0.95])
    hierjax.quantile(two, "theta_new", 0.3)
    assert compiled() == before


def test_bad_input(post):
    with pytest.raises(hierjax.InputError, match="param"):
        hierjax.cdf(post, "sigma", 0.0)
    with pytest.raises(hierjax.InputError, match="between 0 and 1"):
        hierjax.quantile(post, "mu", [0.5, 1.0])
    with pytest.raises(hierjax.InputError, match="between 0 and 1"):
        hierjax.interval(post, "mu", 0.0)
    with pytest.raises(hierjax.InputError, match="kind"):
        hierjax.interval(post, "mu", 0.9, kind="hpd")
    with pytest.raises(hierjax.InputError, match="sigma_new"):
        hierjax.cdf(post, "y_new", 0.0)
    with pytest.raises(hierjax.InputError, match="sigma_new"):
        hierjax.predictive_prob(post, 0.0, -1.0)
    with pytest.raises(hierjax.InputError, match="B = 3"):
        hierjax.cdf(post, "mu", np.zeros((2, 5)))
    with pytest.raises(hierjax.InputError, match="dataset 1.*sigma"):
        hierjax.posterior(
            [np.array(EIGHT_Y), np.array(HET_Y)], [np.array(EIGHT_S), np.array(HET_S) * 0]
        )


def test_far_quantiles_warn_or_agree():
    """J = 3 (Cauchy-like tails of mu): the 0.001/0.999 quantiles need more than the default
    nodes. Posterior.quantile warns, naming the dataset; with 4x the nodes it agrees with the
    quad reference and stays silent (float64); at the usual levels the eight schools raise
    no warning (both precisions)."""
    import warnings

    from hierjax.inference.grid import default_nodes
    from hierjax.posterior import quantile

    levels = [0.001, 0.999]
    dt = np.float64 if X64 else np.float32
    if X64:
        y, s = EIGHT_Y[:3], EIGHT_S[:3]
        with pytest.warns(UserWarning, match="quantiles of mu for 1 dataset"):
            quantile(hierjax.posterior(np.array(y), np.array(s)), "mu", levels)
        post = hierjax.posterior(np.array(y), np.array(s), nodes=4 * default_nodes(dt))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            q = quantile(post, "mu", levels)[0]
        r = reference(tuple(y), tuple(s))
        iqr = r.quantile("mu", 0.75) - r.quantile("mu", 0.25)
        for p, a in zip(levels, q):
            assert abs(a - r.quantile("mu", p)) / iqr <= TOL, (p, a, r.quantile("mu", p))
    with warnings.catch_warnings():  # no spurious warning at the usual levels
        warnings.simplefilter("error")
        quantile(
            hierjax.posterior(np.array(EIGHT_Y), np.array(EIGHT_S)), "theta_new", [0.025, 0.975]
        )


def test_float32_rounding_warns():
    """float32 cannot hold the eight schools' quantiles at an offset of -1e5 to 1e-4 sd (half
    an ulp there is ~8e-4 sd): quantile and interval warn, naming that dataset and only it
    (hierjax.fit flags it ``output_rounded``). float64 holds it silently."""
    import warnings

    from hierjax.posterior import interval, quantile

    shifted = np.array(EIGHT_Y) - 1e5
    post = hierjax.posterior(
        np.stack([np.array(EIGHT_Y), shifted]),
        np.stack([np.array(EIGHT_S)] * 2),
        names=["plain", "shifted"],
        dtype=np.float32,
    )
    for param in ("mu", "theta", "theta_new", "y_rep"):
        with pytest.warns(UserWarning, match=r"1 dataset\(s\) \(shifted\) cannot be held"):
            quantile(post, param, [0.25, 0.5, 0.975])
    with pytest.warns(UserWarning, match=r"mu for 1 dataset\(s\) \(shifted\)"):
        interval(post, "mu", 0.95)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantile(post, "tau", [0.25, 0.5])  # a scale, not a location: holds
        plain = hierjax.posterior(np.array(EIGHT_Y), np.array(EIGHT_S), dtype=np.float32)
        quantile(plain, "theta", [0.025, 0.5, 0.975])
        interval(plain, "theta_new", [0.5, 0.95])
        if X64:
            wide = hierjax.posterior(shifted, np.array(EIGHT_S))
            quantile(wide, "theta", [0.025, 0.5, 0.975])


def test_tau_upper_quantile_agrees_with_fit_in_a_full_block():
    """``quantile(post, 'tau', 0.975)`` inverts ``cdf`` for every dataset of a block of 1024
    (600 datasets), as :func:`hierjax.fit`'s tau quantile does: float32 once gave the last
    lanes of a block wrong upper quantiles, silently."""
    rng = np.random.default_rng(1)
    B, J = 600, 5
    tau = np.abs(rng.standard_normal(B))
    theta = rng.standard_normal(B)[:, None] + tau[:, None] * rng.standard_normal((B, J))
    y, s = theta + rng.standard_normal((B, J)), np.ones((B, J))
    kw = dict(tau_prior="half-normal:1", mu_prior="normal:0,1")
    post = hierjax.posterior(y, s, **kw)
    q = np.asarray(hierjax.quantile(post, "tau", [0.975]), np.float64)
    F = np.asarray(hierjax.cdf(post, "tau", q), np.float64)[:, 0]
    assert np.max(np.abs(F - 0.975)) < 1e-4, np.flatnonzero(np.abs(F - 0.975) >= 1e-4)[:10]
