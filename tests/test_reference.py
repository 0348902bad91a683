"""hierjax.fit against an independent float64 quadrature reference (tests/reference.py).

Tolerances (read at test time from ``jax.config.jax_enable_x64``, never set here):
every mean and quantile difference is measured in units of the reference posterior
sd (the interquartile range where the sd does not exist) and must be <= 1e-8 with
float64 and <= 1e-4 with float32; sds to the same relative tolerance; ``P(. > 0)``
to the same absolute tolerance. Published numbers are compared at the accuracy they
were published with, plus the precision tolerance.

Run under both ``JAX_ENABLE_X64=0`` and ``JAX_ENABLE_X64=1``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from reference import (
    LEVELS,
    joint_gaussian_posterior,
    joint_log_evidence,
    precision_posterior,
    reference,
)
from scipy import special

import hierjax


def tol() -> float:
    """1e-8 (sd units) under float64, 1e-4 under float32."""
    return 1e-8 if jax.config.jax_enable_x64 else 1e-4


def eps() -> float:
    return float(np.finfo(np.float64 if jax.config.jax_enable_x64 else np.float32).eps)


# --------------------------------------------------------------------------- data
EIGHT_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
EIGHT_S = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)
RUBIN_Y = (28.39, 7.94, -2.75, 6.82, -0.64, 0.63, 18.01, 12.16)
RUBIN_S = (14.9, 10.2, 16.3, 11.0, 9.4, 11.4, 10.4, 17.6)


def _scaled(values, factor):
    return tuple(float(v) * factor for v in values)


def _simulated(J, seed, mu=2.0, tau=1.0):
    """``sigma ~ U(0.5, 2)``, ``theta ~ N(mu, tau^2)``, ``y ~ N(theta, sigma^2)``."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.5, 2.0, J)
    theta = mu + tau * rng.standard_normal(J)
    y = theta + sigma * rng.standard_normal(J)
    return tuple(map(float, y)), tuple(map(float, sigma))


def _some_groups(y, sigma):
    """A few informative groups of a large dataset: first, last, extreme sigma and y."""
    y, s = np.asarray(y), np.asarray(sigma)
    return tuple(
        sorted(
            {
                0,
                len(y) - 1,
                int(np.argmin(s)),
                int(np.argmax(s)),
                int(np.argmax(y)),
                int(np.argmin(y)),
            }
        )
    )


J50 = _simulated(50, 50)  # float32 round-off estimate 1.5e-5: unflagged since 2.5e-5
J300 = _simulated(300, 300)
J3000 = _simulated(3000, 3000)

# name -> (y, sigma, tau_prior, mu_prior, groups to check (None: all))
CASES = {
    "eight-uniform-flat": (EIGHT_Y, EIGHT_S, "uniform", "flat", None),
    "eight-halfcauchy5-normal05": (EIGHT_Y, EIGHT_S, "half-cauchy:5", "normal:0,5", None),
    "eight-halfnormal10-flat": (EIGHT_Y, EIGHT_S, "half-normal:10", "flat", None),
    "eight-halft3,5-flat": (EIGHT_Y, EIGHT_S, "half-t:3,5", "flat", None),
    "eight-exponential0.2-flat": (EIGHT_Y, EIGHT_S, "exponential:0.2", "flat", None),
    # heavy tails: J = 3 (no E[tau], E[mu], sd(mu), E[theta_new]) and J = 4 (no sds)
    "J3-uniform-flat": (EIGHT_Y[:3], EIGHT_S[:3], "uniform", "flat", None),
    "J4-uniform-flat": (EIGHT_Y[:4], EIGHT_S[:4], "uniform", "flat", None),
    "J5-uniform-flat": (EIGHT_Y[:5], EIGHT_S[:5], "uniform", "flat", None),  # sd: tail tau^-2
    # p(tau | y) is largest at tau = 0
    "mode-at-zero": (
        (1.0, 1.3, 0.8, 1.1, 0.9, 1.2),
        (10.0, 12.0, 9.0, 11.0, 10.0, 13.0),
        "uniform",
        "flat",
        None,
    ),
    # units: 1e-6 and 1e6 (prior scales move with the data)
    "eight-1e-6-uniform-flat": (
        _scaled(EIGHT_Y, 1e-6),
        _scaled(EIGHT_S, 1e-6),
        "uniform",
        "flat",
        None,
    ),
    "eight-1e-6-halfcauchy-normal": (
        _scaled(EIGHT_Y, 1e-6),
        _scaled(EIGHT_S, 1e-6),
        "half-cauchy:5e-6",
        "normal:0,5e-6",
        None,
    ),
    "eight-1e6-uniform-flat": (
        _scaled(EIGHT_Y, 1e6),
        _scaled(EIGHT_S, 1e6),
        "uniform",
        "flat",
        None,
    ),
    "eight-1e6-halfcauchy-normal": (
        _scaled(EIGHT_Y, 1e6),
        _scaled(EIGHT_S, 1e6),
        "half-cauchy:5e6",
        "normal:0,5e6",
        None,
    ),
    # a large offset (flat mu prior)
    "eight-offset-1e4": (tuple(v - 1e4 for v in EIGHT_Y), EIGHT_S, "uniform", "flat", None),
    # sigma ratio 1e6 within one dataset
    "sigma-ratio-1e6": (
        (0.3, -1.2, 2.5, 40.0, 0.8, -0.5),
        (1e-3, 1.0, 2.0, 1e3, 1.0, 1.5),
        "uniform",
        "flat",
        None,
    ),
    # two groups with tiny sigma_j far apart: each theta_j sits ~1e3 of its own sds from
    # the standardised origin (the Fisher-weighted mean), where float32's ulp is ~1e-4 sd
    "precise-groups-apart": (
        (1.0, -1.0, 0.3, -0.8, 2.1, 0.4, -1.5, 1.2),
        (1e-3, 1e-3, 1.0, 1.3, 0.9, 1.1, 1.6, 1.2),
        "uniform",
        "flat",
        None,
    ),
    # every y_j the same (no spread: the whole-line map centres on the sigma_j alone);
    # two clusters of groups far apart (tau ~ 10 sigma_j)
    "identical-y": ((3.0,) * 5, (1.0, 2.0, 1.5, 1.0, 3.0), "uniform", "flat", None),
    "two-clusters": ((-10.0,) * 4 + (10.0,) * 4, (1.0,) * 8, "uniform", "flat", None),
    # one and two groups, possible with proper priors only
    "J1-halfnormal-normal": ((2.0,), (1.0,), "half-normal:1", "normal:0,10", None),
    "J2-halfcauchy-normal": ((-1.0, 5.0), (0.5, 0.5), "half-cauchy:2", "normal:0,5", None),
    # large J: a needle-sharp p(tau | y)
    "J50-uniform-flat": J50 + ("uniform", "flat", _some_groups(*J50)),
    "J300-uniform-flat": J300 + ("uniform", "flat", _some_groups(*J300)),
    "J3000-uniform-flat": J3000 + ("uniform", "flat", _some_groups(*J3000)),
}
# Each tau-prior family, J padding and batch size is one more XLA compilation of the
# engine (20-40 s each on 2 CPU cores): cases that need their own are marked slow, so
# that the default selection compiles only (uniform, flat) and (half-Cauchy, normal).
SLOW = {
    "eight-halfnormal10-flat",
    "eight-halft3,5-flat",
    "eight-exponential0.2-flat",
    "J300-uniform-flat",
    "J3000-uniform-flat",
}


def _case_params():
    return [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k for k in CASES]


@functools.cache
def _fit(y, sigma, tau_prior="uniform", mu_prior="flat"):
    return hierjax.fit(np.array(y), np.array(sigma), tau_prior=tau_prior, mu_prior=mu_prior)


def _ref(y, sigma, tau_prior="uniform", mu_prior="flat"):
    return reference(tuple(y), tuple(sigma), tau_prior, mu_prior)


# --------------------------------------------------------------------------- comparison
def compare_marginal(label, m, idx, ref, t, *, is_tau=False):
    """Differences between ``hierjax`` Marginal ``m[idx]`` and a RefMarginal, as messages."""
    errs = []
    mean, sd = float(np.asarray(m.mean)[idx]), float(np.asarray(m.sd)[idx])
    q = np.asarray(m.quantiles, np.float64)[idx]
    me, se = bool(np.asarray(m.mean_exists)[idx]), bool(np.asarray(m.sd_exists)[idx])
    scale = ref.scale
    unit = "sd" if ref.sd_exists else "IQR"
    if ref.mean_exists:
        d = abs(mean - ref.mean) / scale
        if not me:
            errs.append(f"{label}: mean_exists is False, the mean exists")
        if not d <= t:
            errs.append(
                f"{label}: mean {mean!r} vs reference {ref.mean!r} ({d:.3g} {unit} > {t:g})"
            )
    else:
        if me:
            errs.append(f"{label}: mean_exists is True, the mean does not exist")
        ok = (mean == math.inf) if is_tau else math.isnan(mean)
        if not ok:
            errs.append(
                f"{label}: nonexistent mean reported as {mean!r} "
                f"(expected {'inf' if is_tau else 'nan'})"
            )
    if ref.sd_exists:
        d = abs(sd - ref.sd) / ref.sd
        if not se:
            errs.append(f"{label}: sd_exists is False, the sd exists")
        if not d <= t:
            errs.append(f"{label}: sd {sd!r} vs reference {ref.sd!r} (relative {d:.3g} > {t:g})")
    else:
        if se:
            errs.append(f"{label}: sd_exists is True, the sd does not exist")
        if sd != math.inf:
            errs.append(f"{label}: nonexistent sd reported as {sd!r} (expected inf)")
    for p, a, b in zip(ref.levels, q, ref.quantiles):
        d = abs(a - b) / scale
        if not d <= t:
            errs.append(f"{label}: quantile {p} {a!r} vs reference {b!r} ({d:.3g} {unit} > {t:g})")
    pg = float(np.asarray(m.p_gt0)[idx])
    if not abs(pg - ref.p_gt0) <= t:
        errs.append(
            f"{label}: P(>0) {pg!r} vs reference {ref.p_gt0!r} "
            f"(|diff| {abs(pg - ref.p_gt0):.3g} > {t:g})"
        )
    return errs


def compare_fit(f, b, r, groups, t, label=""):
    """All checks of dataset ``b`` of Fit ``f`` against Reference ``r``."""
    errs = []
    assert tuple(np.asarray(f.levels)) in (LEVELS, ())  # () is a moments-only fit
    errs += compare_marginal(f"{label}tau", f.tau, b, r.marginal("tau"), t, is_tau=True)
    errs += compare_marginal(f"{label}mu", f.mu, b, r.marginal("mu"), t)
    errs += compare_marginal(f"{label}theta_new", f.theta_new, b, r.marginal("theta_new"), t)
    for j in range(r.J) if groups is None else groups:
        errs += compare_marginal(f"{label}theta[{j}]", f.theta, (b, j), r.marginal("theta", j), t)
    # posterior mode of tau
    mode = float(f.tau_mode[b])
    if r.mode == 0.0:
        if mode != 0.0:
            errs.append(f"{label}tau_mode {mode!r}, reference mode is exactly 0")
    elif not abs(mode - r.mode) / r.marginal("tau").scale <= t:
        errs.append(
            f"{label}tau_mode {mode!r} vs reference {r.mode!r} "
            f"({abs(mode - r.mode) / r.marginal('tau').scale:.3g} sd > {t:g})"
        )
    # log marginal likelihood
    lml = float(f.log_marginal_likelihood[b])
    if r.proper:
        if not abs(lml - r.log_evidence) <= t:
            errs.append(
                f"{label}log_marginal_likelihood {lml!r} vs reference "
                f"{r.log_evidence!r} (|diff| {abs(lml - r.log_evidence):.3g} > {t:g})"
            )
    elif not math.isnan(lml):
        errs.append(f"{label}log_marginal_likelihood {lml!r} with an improper prior (expected nan)")
    return errs


def _report(errs):
    assert not errs, f"{len(errs)} mismatch(es):\n  " + "\n  ".join(errs)


# --------------------------------------------------------------------------- the reference itself
def _mp_posterior(y, sigma, tau_prior, mu_prior):
    """mpmath versions of the unnormalised posterior pieces, memoised per node (use under
    ``mpmath.workdps``)."""
    Y = [mpmath.mpf(v) for v in y]
    S2 = [mpmath.mpf(v) ** 2 for v in sigma]
    obs_extra = []
    if mu_prior != "flat":
        m0, s0 = (mpmath.mpf(v) for v in mu_prior.split(":")[1].split(","))
        obs_extra = [(m0, s0**2)]
    if tau_prior == "uniform":

        def log_prior(t):
            return mpmath.mpf(0)
    else:
        s = mpmath.mpf(tau_prior.split(":")[1])

        def log_prior(t):  # half-Cauchy(s)
            return mpmath.log(2 / (mpmath.pi * s * (1 + (t / s) ** 2)))

    memo = {}

    def node(t):
        if t not in memo:
            obs = [(yy, s2 + t * t) for yy, s2 in zip(Y, S2)] + obs_extra
            P = mpmath.fsum(1 / w for _, w in obs)
            mh = mpmath.fsum(x / w for x, w in obs) / P
            ll = (
                -(len(obs) - 1) * mpmath.log(2 * mpmath.pi) / 2
                - mpmath.fsum(mpmath.log(w) for _, w in obs) / 2
                - mpmath.log(P) / 2
                - mpmath.fsum((x - mh) ** 2 / w for x, w in obs) / 2
            )
            memo[t] = (mpmath.exp(ll + log_prior(t)), mh, 1 / P)
        return memo[t]

    return node


MPMATH_CASES = {
    "eight-uniform-flat": (EIGHT_Y, EIGHT_S, "uniform", "flat", 1.0),
    "eight-halfcauchy5-normal05": (EIGHT_Y, EIGHT_S, "half-cauchy:5", "normal:0,5", 1.0),
    "eight-1e6-uniform-flat": (
        _scaled(EIGHT_Y, 1e6),
        _scaled(EIGHT_S, 1e6),
        "uniform",
        "flat",
        1e6,
    ),
    "J5-uniform-flat": (EIGHT_Y[:5], EIGHT_S[:5], "uniform", "flat", 1.0),  # sd(tau): tail tau^-2
    "J3-uniform-flat": (EIGHT_Y[:3], EIGHT_S[:3], "uniform", "flat", 1.0),  # no mean
}


@pytest.mark.parametrize("case", list(MPMATH_CASES))
def test_reference_against_mpmath(case):
    """The scipy reference agrees with 30-digit mpmath tanh-sinh quadrature to ~1e-11."""
    with mpmath.workdps(30):
        _check_against_mpmath(*MPMATH_CASES[case])


def _check_against_mpmath(y, sigma, tau_prior, mu_prior, unit):
    r = _ref(y, sigma, tau_prior, mu_prior)
    node = _mp_posterior(y, sigma, tau_prior, mu_prior)
    pts = [0, 1, 3, 6, 10, 20, 50, 200, 1e3, 1e4, 1e5, mpmath.inf]  # in units of `unit`

    f1 = node(mpmath.mpf(unit))[0]  # mpmath.quad's tolerance is absolute: integrate f / f1

    def E(g, a=0, b=mpmath.inf):
        """int_a^b p(tau) p(y | tau) g dtau, integrated in u = tau / unit."""
        a, b = a / unit, b / unit
        sub = [a] + [p for p in pts if a < p < b] + [b]
        return (
            unit
            * f1
            * mpmath.quad(lambda u: node(unit * u)[0] / f1 * g(unit * u, *node(unit * u)[1:]), sub)
        )

    mt, mm, th = r.marginal("tau"), r.marginal("mu"), r.marginal("theta", 0)
    Z = E(lambda t, m, v: 1)
    checks = [("log evidence", r.log_evidence, float(mpmath.log(Z)), 1e-11, "abs")]
    if mt.mean_exists:
        e_tau = E(lambda t, m, v: t) / Z
        e_mu = E(lambda t, m, v: m) / Z
        checks += [
            ("E[tau]", mt.mean, float(e_tau), 1e-11, "rel"),
            ("E[mu]", mm.mean, float(e_mu), 1e-11, "rel"),
        ]
    if mt.sd_exists:
        sd_tau = mpmath.sqrt(E(lambda t, m, v: (t - e_tau) ** 2) / Z)
        sd_mu = mpmath.sqrt(E(lambda t, m, v: v + (m - e_mu) ** 2) / Z)
        checks += [
            ("sd(tau)", mt.sd, float(sd_tau), 1e-11, "rel"),
            ("sd(mu)", mm.sd, float(sd_mu), 1e-11, "rel"),
        ]
    p_mu = E(lambda t, m, v: mpmath.ncdf(m / mpmath.sqrt(v))) / Z
    checks.append(("P(mu>0)", mm.p_gt0, float(p_mu), 1e-12, "abs"))
    for p in (0.025, 0.5, 0.975):
        q = mpmath.mpf(r.quantile("tau", p))
        checks.append((f"F_tau(q{p})", p, float(E(lambda t, m, v: 1, 0, q) / Z), 1e-12, "abs"))
        q = r.quantile("mu", p)
        F = E(lambda t, m, v: mpmath.ncdf((q - m) / mpmath.sqrt(v))) / Z
        checks.append((f"F_mu(q{p})", p, float(F), 1e-12, "abs"))
    s2 = sigma[0] ** 2
    e_th0 = E(lambda t, m, v: (t * t * y[0] + s2 * m) / (s2 + t * t)) / Z
    checks.append(("E[theta_1]", th.mean, float(e_th0), 1e-11, "rel"))
    errs = []
    for name, got, want, t, kind in checks:
        d = abs(got - want) / (abs(want) if kind == "rel" else 1.0)
        if not d <= t:
            errs.append(f"{name}: reference {got!r} vs mpmath {want!r} ({kind} {d:.3g} > {t:g})")
    _report(errs)


@pytest.mark.parametrize("tau", [0.3, 5.0, 60.0])
@pytest.mark.parametrize("mu_prior", ["flat", "normal:0,5"])
def test_reference_conditionals_against_dense_gaussian(tau, mu_prior):
    """Closed-form conditionals and log p(y | tau) of the reference vs dense linear algebra."""
    r = _ref(EIGHT_Y, EIGHT_S, "uniform", mu_prior)
    mh, V, th_m, th_v = r.conditional(tau)
    got_mean = np.concatenate([[mh], th_m])
    got_var = np.concatenate([[V], th_v])
    got_ll = float(r.log_lik([tau])[0])
    y = np.array(EIGHT_Y)
    if mu_prior == "flat":
        mean, cov = precision_posterior(EIGHT_Y, EIGHT_S, tau)
        np.testing.assert_allclose(got_mean, mean, rtol=1e-12, atol=1e-12 * np.sqrt(cov[0, 0]))
        np.testing.assert_allclose(got_var, np.diag(cov), rtol=1e-11)
        # the flat prior as the limit of a very wide normal one (bias ~ sigma^2 / s0^2)
        s0 = 1e4 * float(np.max(EIGHT_S))
        mean_w, cov_w = joint_gaussian_posterior(EIGHT_Y, EIGHT_S, tau, 0.0, s0)
        np.testing.assert_allclose(mean_w, mean, rtol=1e-6, atol=1e-6 * np.sqrt(cov[0, 0]))
        np.testing.assert_allclose(np.diag(cov_w), np.diag(cov), rtol=1e-6)
        # log p(y | tau) against Lebesgue measure on mu: p_s0(y) * sqrt(2 pi) s0 -> it
        ll_w = joint_log_evidence(y, EIGHT_S, tau, 0.0, s0) + math.log(math.sqrt(2 * math.pi) * s0)
        assert got_ll == pytest.approx(ll_w, abs=1e-6)
        # exact: mpmath (60 digits) with an astronomically wide prior
        with mpmath.workdps(60):
            S0 = mpmath.mpf(10) ** 25
            C = mpmath.matrix(8, 8)
            for i in range(8):
                for j in range(8):
                    C[i, j] = S0**2 + (EIGHT_S[i] ** 2 + tau**2 if i == j else 0)
            yv = mpmath.matrix(EIGHT_Y)
            ll_mp = float(
                -4 * mpmath.log(2 * mpmath.pi)
                - mpmath.log(mpmath.det(C)) / 2
                - (yv.T * mpmath.lu_solve(C, yv))[0] / 2
                + mpmath.log(mpmath.sqrt(2 * mpmath.pi) * S0)
            )
        assert got_ll == pytest.approx(ll_mp, abs=1e-11)
    else:
        m0, s0 = 0.0, 5.0
        mean, cov = joint_gaussian_posterior(EIGHT_Y, EIGHT_S, tau, m0, s0)
        mean_p, cov_p = precision_posterior(EIGHT_Y, EIGHT_S, tau, m0, s0)
        np.testing.assert_allclose(mean, mean_p, rtol=1e-11, atol=1e-11 * s0)
        np.testing.assert_allclose(cov, cov_p, rtol=1e-10, atol=1e-12 * s0**2)
        np.testing.assert_allclose(got_mean, mean, rtol=1e-11, atol=1e-11 * s0)
        np.testing.assert_allclose(got_var, np.diag(cov), rtol=1e-11)
        assert got_ll == pytest.approx(joint_log_evidence(y, EIGHT_S, tau, m0, s0), abs=1e-11)


def test_reference_matches_published_values():
    """The reference reproduces BDA3 and bayesmeta's published numbers and the seed's pooling."""
    errs = []

    def near(name, got, want, atol=0.0, rtol=0.0):
        if not abs(got - want) <= atol + rtol * abs(want):
            errs.append(f"{name}: reference {got!r} vs published {want!r}")

    r = _ref(EIGHT_Y, EIGHT_S)
    near("BDA3 E[mu]", r.moments("mu")[0], 7.932, atol=5e-4)
    near("BDA3 E[tau]", r.moments("tau")[0], 6.575, atol=5e-4)
    r = _ref(EIGHT_Y, EIGHT_S, "half-cauchy:5", "normal:0,5")
    near("HC5 E[mu]", r.moments("mu")[0], 4.397, atol=5e-4)
    near("HC5 E[tau]", r.moments("tau")[0], 3.598, atol=5e-4)
    r = _ref(RUBIN_Y, RUBIN_S)
    near("bayesmeta E[mu]", r.moments("mu")[0], 8.092138, rtol=2e-3)
    near("bayesmeta sd(mu)", r.moments("mu")[1], 5.246683, rtol=2e-3)
    near("bayesmeta E[tau]", r.moments("tau")[0], 6.585992, rtol=2e-7)
    near("bayesmeta sd(tau)", r.moments("tau")[1], 5.685974, rtol=2e-7)
    near("bayesmeta median(tau)", r.quantile("tau", 0.5), 5.227732, rtol=2e-7)
    r = _ref(RUBIN_Y, RUBIN_S, "half-cauchy:25", "normal:0,50")
    near("bayesmeta HC25 E[mu]", r.moments("mu")[0], 7.985729, rtol=2e-3)
    near("bayesmeta HC25 E[tau]", r.moments("tau")[0], 5.884511, rtol=1e-6)
    near("bayesmeta HC25 sd(tau)", r.moments("tau")[1], 4.869904, rtol=1e-6)
    near("bayesmeta HC25 P(mu>0)", r.moments("mu")[4], 0.9487521, rtol=2e-3)
    # complete pooling = the mu | tau = 0 conditional
    mh, V, _, _ = _ref(EIGHT_Y, EIGHT_S).conditional(0.0)
    near("complete pooling mean", mh, 7.685617, atol=5e-7)
    near(
        "P(y_new >= 28)", special.ndtr((mh - 28.0) / math.sqrt(V + 15.0**2)), 0.09560784, atol=5e-9
    )
    near("P(y_new < -3)", special.ndtr((-3.0 - mh) / math.sqrt(V + 16.0**2)), 0.2587447, atol=5e-8)
    _report(errs)


# --------------------------------------------------------------------------- fit vs reference
# Known limitation (issue 2 stays open on it): in float32 the J log-likelihood terms of a
# large dataset carry round-off that moves tail quantiles by up to ~3e-4 sd. Such fits
# carry the `roundoff_limited` status (checked below); there, and only when they miss,
# the accuracy tests are reported as expected failures instead of passing silently.
ROUNDOFF_LIMITED_F32 = {"J300-uniform-flat", "J3000-uniform-flat"}


def _known_f32_limit(case):
    if case in ROUNDOFF_LIMITED_F32 and not jax.config.jax_enable_x64:
        pytest.xfail("float32 log-likelihood round-off at large J (status roundoff_limited)")


@pytest.mark.parametrize("case", _case_params())
def test_fit_matches_reference(case):
    y, sigma, tp, mp, groups = CASES[case]
    f = _fit(y, sigma, tp, mp)
    errs = compare_fit(f, 0, _ref(y, sigma, tp, mp), groups, tol())
    if errs:
        _known_f32_limit(case)
    _report(errs)


@pytest.mark.parametrize("case", _case_params())
def test_fit_status_ok(case):
    """Valid data that the engine resolves get status 0 ('ok'); large J in float32 must
    say that round-off limits it."""
    y, sigma, tp, mp, _ = CASES[case]
    f = _fit(y, sigma, tp, mp)
    status = int(f.status[0])
    msg = (
        f"status {status} ({hierjax.status_text(status)}), grid_error {float(f.grid_error[0]):.3g}"
    )
    if case in ROUNDOFF_LIMITED_F32 and not jax.config.jax_enable_x64:
        # the round-off flag must be there; the n- and 2n-rules may then also disagree
        limited = hierjax.STATUS["roundoff_limited"]
        assert status & limited and not status & ~(limited | hierjax.STATUS["grid_unresolved"]), msg
    else:
        assert status == 0, msg


def test_general_grid_far_nodes_keep_their_digits():
    """The eight schools with one sigma_j = 1e-3 on the general grid: at tau nodes far from
    the map's centre the relative form's quadratic-form sums grow like r_j^2 / sigma_j^2
    and cancel; float32 put tau 5e-4 sd off (status ok) before they were summed directly
    there. theta_7 itself (18 +- 1e-3) cannot be held by float32 (output_rounded)."""
    sigma = list(EIGHT_S)
    sigma[6] = 1e-3
    general = hierjax.inference.grid.default_nodes(
        hierjax.engine.fitting.compute_dtype(np.array(EIGHT_Y))
    )
    f = hierjax.fit(np.array(EIGHT_Y), np.array(sigma), nodes=general)
    rounded = 0 if jax.config.jax_enable_x64 else hierjax.STATUS["output_rounded"]
    assert f.status[0] == rounded, hierjax.engine.fitting.status_text(f.status[0])
    groups = [0, 1, 2, 3, 4, 5, 7] if rounded else None
    _report(compare_fit(f, 0, _ref(EIGHT_Y, tuple(sigma)), groups, tol()))


def test_output_rounded_is_flagged():
    """The engine keeps its accuracy under any offset (it works on data standardised in
    float64), but a float32 result cannot hold ``-1e5 +- 5`` to 1e-4 sd (its half ulp
    there is 7.8e-4 sd): such datasets carry `output_rounded`, and only they."""
    shifted = np.array(EIGHT_Y) - 1e5
    f = hierjax.fit(
        np.stack([shifted, np.array(EIGHT_Y)]), np.stack([np.array(EIGHT_S)] * 2), dtype=np.float32
    )
    flag = hierjax.STATUS["output_rounded"]
    assert f.status[0] & flag and not f.status[1] & flag, f.status
    # the flag is needed: some summary of the shifted dataset misses 1e-4 sd
    r = _ref(EIGHT_Y, EIGHT_S)
    worst = 0.0
    for j in range(8):
        m = r.marginal("theta", j)
        got = np.asarray(f.theta.quantiles[0, j], np.float64) + 1e5
        worst = max(worst, float(np.max(np.abs(got - np.asarray(m.quantiles)) / m.scale)))
    assert worst > 1e-4, worst
    if jax.config.jax_enable_x64:  # float64 holds it
        g = hierjax.fit(shifted, np.array(EIGHT_S))
        assert not g.status[0] & flag, g.status


@pytest.mark.slow
def test_custom_log_density_prior():
    """A JAX callable (unnormalised half-normal(10)) gives the half-normal:10 posterior."""
    f = hierjax.fit(
        np.array(EIGHT_Y),
        np.array(EIGHT_S),
        tau_prior=lambda t: -0.5 * (t / 10.0) ** 2,
        mu_prior="flat",
    )
    errs = compare_fit(f, 0, _ref(EIGHT_Y, EIGHT_S, "half-normal:10", "flat"), None, tol())
    # improper-flagged custom prior: no evidence; everything else must match
    errs = [e for e in errs if "log_marginal_likelihood" not in e]
    assert math.isnan(float(f.log_marginal_likelihood[0]))
    _report(errs)


def _quad_moments_gamma_prior(b, rate):
    """E and sd of tau and mu, and E[theta_1], for the eight schools under
    ``p(tau) ~ tau^b e^{-rate tau}`` (flat mu) by scipy ``quad``, with the algebraic
    weight ``tau^b`` on [0, 1] (its singularity integrated exactly) and plain ``quad``
    beyond: the conditionals written out here again (BDA3 eq. 5.20-5.21)."""
    from scipy import integrate

    Y, S2 = np.array(EIGHT_Y), np.array(EIGHT_S) ** 2

    def cond(t):
        v = S2 + t * t
        P = np.sum(1 / v)
        m = np.sum(Y / v) / P
        ll = -0.5 * (np.sum(np.log(v)) + np.log(P) + np.sum((Y - m) ** 2 / v))
        th1 = (t * t * Y[0] + S2[0] * m) / v[0]
        return ll, m, 1 / P, th1

    c = cond(5.0)[0]

    def g(t, k):
        ll, m, V, th1 = cond(t)
        w = math.exp(ll - c - rate * t)
        return w * (1.0, t, t * t, m, m * m + V, th1)[k]

    def integral(k):
        a = integrate.quad(
            g, 0, 1, args=(k,), weight="alg", wvar=(b, 0), epsabs=0, epsrel=1e-13, limit=200
        )[0]
        return (
            a
            + integrate.quad(
                lambda t: t**b * g(t, k), 1, np.inf, epsabs=0, epsrel=1e-13, limit=400
            )[0]
        )

    z = integral(0)
    e_tau, e_tau2, e_mu, e_mu2, e_th1 = (integral(k) / z for k in range(1, 6))
    return e_tau, math.sqrt(e_tau2 - e_tau**2), e_mu, math.sqrt(e_mu2 - e_mu**2), e_th1


def test_custom_prior_with_a_spike_at_zero():
    """A user's Gamma(0.3, 0.1) prior on tau, ``p(tau) ~ tau^-0.7`` at 0: its origin power
    is estimated (-0.7) and the general grid's map chosen to make the integrand smooth
    there (kappa = 1 / 0.3). Before, the integrand was ``u^-0.4`` and the fit came back
    flagged and 64 sds off in E[tau]. Checked against ``quad`` with the singular weight."""
    b, rate = -0.7, 0.1
    prior = hierjax.model.priors.CustomTau(lambda t: b * jax.numpy.log(t) - rate * t)
    assert prior.origin_power == b
    f = hierjax.fit(np.array(EIGHT_Y), np.array(EIGHT_S), tau_prior=prior, quantiles=None)
    e_tau, sd_tau, e_mu, sd_mu, e_th1 = _quad_moments_gamma_prior(b, rate)
    # float32's range of tau ends at e^-39, where the posterior's tau^0.3 has fallen by only
    # e^-11.7 from its peak: flagged tail_truncated (the mass left out is ~3e-5, inside the goal)
    allowed = 0 if jax.config.jax_enable_x64 else hierjax.STATUS["tail_truncated"]
    assert f.status[0] & ~allowed == 0, hierjax.engine.fitting.status_text(f.status[0])
    t = tol()
    assert abs(f.tau.mean[0] - e_tau) / sd_tau <= t, (f.tau.mean[0], e_tau)
    assert abs(f.tau.sd[0] - sd_tau) / sd_tau <= t, (f.tau.sd[0], sd_tau)
    assert abs(f.mu.mean[0] - e_mu) / sd_mu <= t, (f.mu.mean[0], e_mu)
    assert abs(f.mu.sd[0] - sd_mu) / sd_mu <= t, (f.mu.sd[0], sd_mu)
    assert abs(f.theta.mean[0, 0] - e_th1) / f.theta.sd[0, 0] <= t, (f.theta.mean[0, 0], e_th1)


@pytest.mark.parametrize(
    "logpdf,power",
    [
        (lambda t: -0.5 * (t / 10.0) ** 2, 0.0),  # half-normal
        (lambda t: jax.numpy.log(t) - t, 1.0),  # Gamma(2)
        (lambda t: -0.5 * jax.numpy.log(t), -0.5),  # uniform on sqrt(tau)
        (lambda t: -1.0 / (t * t), math.inf),  # inverse-gamma-like: vanishes
        (lambda t: -0.5 * jax.numpy.log(t) ** 2, math.inf),  # log-normal: faster than powers
    ],
)
def test_custom_prior_origin_power_estimate(logpdf, power):
    assert hierjax.model.priors.CustomTau(logpdf).origin_power == power


def test_custom_prior_improper_at_zero_is_refused():
    """``p(tau) ~ 1/tau`` at 0: p(y | tau) has a positive limit there, so the posterior is
    improper; the fit says so on the host instead of returning a flagged number."""
    with pytest.raises(ValueError, match="improper"):
        hierjax.fit(np.array(EIGHT_Y), np.array(EIGHT_S), tau_prior=lambda t: -jax.numpy.log(t))


def test_heavy_tails_J3_existence():
    """J = 3, uniform/flat: E[tau], E[mu], sd(mu), E[theta_new] do not exist; quantiles do."""
    y, sigma = EIGHT_Y[:3], EIGHT_S[:3]
    f = _fit(y, sigma)
    r = _ref(y, sigma)
    assert not r.marginal("tau").mean_exists and not r.marginal("mu").mean_exists
    for name, m in (("tau", f.tau), ("mu", f.mu), ("theta_new", f.theta_new)):
        assert not bool(m.mean_exists[0]), f"{name}.mean_exists should be False"
        assert not bool(m.sd_exists[0]), f"{name}.sd_exists should be False"
        assert float(m.sd[0]) == math.inf, f"{name}.sd = {float(m.sd[0])!r}, expected inf"
    assert float(f.tau.mean[0]) == math.inf, f"tau.mean = {float(f.tau.mean[0])!r}, expected inf"
    assert math.isnan(float(f.mu.mean[0])), f"mu.mean = {float(f.mu.mean[0])!r}, expected nan"
    assert math.isnan(float(f.theta_new.mean[0]))
    # theta_j: both moments exist (bounded conditional means and variances)
    assert np.all(np.asarray(f.theta.mean_exists[0][:3])) and np.all(np.isfinite(f.theta.sd[0][:3]))
    t = tol()
    errs = []
    for name, m in (("tau", f.tau), ("mu", f.mu), ("theta_new", f.theta_new)):
        rm = r.marginal(name)
        q = np.asarray(m.quantiles[0], np.float64)
        for p, a, b in zip(LEVELS, q, rm.quantiles):
            if not abs(a - b) / rm.scale <= t:
                errs.append(
                    f"{name} quantile {p}: {a!r} vs reference {b!r} "
                    f"({abs(a - b) / rm.scale:.3g} IQR > {t:g})"
                )
    _report(errs)


def test_heavy_tails_J4_existence():
    """J = 4, uniform/flat: E[tau] and E[mu] exist, sd(tau), sd(mu), sd(theta_new) do not."""
    y, sigma = EIGHT_Y[:4], EIGHT_S[:4]
    f = _fit(y, sigma)
    r = _ref(y, sigma)
    assert r.marginal("tau").mean_exists and not r.marginal("tau").sd_exists
    for name, m in (("tau", f.tau), ("mu", f.mu), ("theta_new", f.theta_new)):
        assert bool(m.mean_exists[0]), f"{name}.mean_exists should be True"
        assert np.isfinite(float(m.mean[0])), f"{name}.mean = {float(m.mean[0])!r}"
        assert not bool(m.sd_exists[0]), f"{name}.sd_exists should be False"
        assert float(m.sd[0]) == math.inf
    t = tol()
    errs = []
    for name, m in (("tau", f.tau), ("mu", f.mu), ("theta_new", f.theta_new)):
        rm = r.marginal(name)
        d = abs(float(m.mean[0]) - rm.mean) / rm.scale
        if not d <= t:
            errs.append(f"{name} mean {float(m.mean[0])!r} vs reference {rm.mean!r} ({d:.3g} IQR)")
    _report(errs)


@pytest.mark.parametrize("y,sigma", [CASES["mode-at-zero"][:2], (EIGHT_Y, EIGHT_S)])
def test_tau_mode_at_zero(y, sigma):
    """Where p(tau | y) (uniform prior) peaks at tau = 0, tau_mode is exactly 0."""
    r = _ref(y, sigma)
    assert r.mode == 0.0
    # the density really is largest at 0: the derivative of log p at 0+ is negative
    assert r.log_post([0.0])[0] > r.log_post([1e-3 * min(sigma)])[0]
    f = _fit(y, sigma)
    assert float(f.tau_mode[0]) == 0.0, f"tau_mode = {float(f.tau_mode[0])!r}"


_FLOAT64_ONLY = pytest.mark.skipif("not jax.config.jax_enable_x64", reason="beyond float32's range")


@pytest.mark.parametrize(
    "factor",
    [
        1e-6,
        1e6,
        pytest.param(1e-200, marks=_FLOAT64_ONLY),
        pytest.param(1e200, marks=_FLOAT64_ONLY),
    ],
)
@pytest.mark.parametrize("priors", [("uniform", "flat"), ("half-cauchy:5", "normal:0,5")])
def test_scale_invariance(factor, priors):
    """Data (and prior scales) in other units give the scaled answer: 1e-6 and 1e6, and in
    float64 1e-200 and 1e200, where ``1 / sigma^2`` itself is out of range."""
    tp, mp = priors
    tp_s = tp if tp == "uniform" else f"half-cauchy:{5 * factor:g}"
    mp_s = mp if mp == "flat" else f"normal:0,{5 * factor:g}"
    f1 = _fit(EIGHT_Y, EIGHT_S, tp, mp)
    fs = _fit(_scaled(EIGHT_Y, factor), _scaled(EIGHT_S, factor), tp_s, mp_s)
    r = _ref(EIGHT_Y, EIGHT_S, tp, mp)
    t = tol()
    errs = []
    for name in ("tau", "mu", "theta_new", "theta"):
        for j in range(8) if name == "theta" else [None]:
            idx = 0 if j is None else (0, j)
            a, b = getattr(f1, name), getattr(fs, name)
            sc = r.marginal(name, j).scale
            pairs = [("mean", a.mean, b.mean, sc), ("sd", a.sd, b.sd, r.marginal(name, j).sd)]
            for k, lv in enumerate(LEVELS):
                pairs.append(
                    (f"q{lv}", np.asarray(a.quantiles)[..., k], np.asarray(b.quantiles)[..., k], sc)
                )
            for what, u, s, unit in pairs:
                u_, s_ = float(np.asarray(u)[idx]) * factor, float(np.asarray(s)[idx])
                d = abs(s_ - u_) / (unit * factor)
                if not d <= t:
                    errs.append(
                        f"{name}{'' if j is None else f'[{j}]'} {what}: scaled fit {s_!r} "
                        f"vs fit x {factor:g} = {u_!r} ({d:.3g} sd)"
                    )
            pa, pb = float(np.asarray(a.p_gt0)[idx]), float(np.asarray(b.p_gt0)[idx])
            if not abs(pa - pb) <= t:
                errs.append(f"{name} P(>0): {pb!r} vs unscaled {pa!r}")
    m1, ms = float(f1.tau_mode[0]), float(fs.tau_mode[0])
    if not abs(ms - factor * m1) <= t * factor * r.marginal("tau").sd:
        errs.append(f"tau_mode {ms!r} vs {factor * m1!r}")
    if mp != "flat":
        want = float(f1.log_marginal_likelihood[0]) - 8 * math.log(factor)
        got = float(fs.log_marginal_likelihood[0])
        if not abs(got - want) <= t:
            errs.append(f"log_marginal_likelihood {got!r} vs {want!r} (unscaled - J log factor)")
    _report(errs)


def _same(u, v, atol):
    """Equal non-finite entries (inf, nan) and finite ones within ``atol``."""
    u, v = np.atleast_1d(u), np.atleast_1d(v)
    fin = np.isfinite(u)
    if not np.array_equal(fin, np.isfinite(v)):
        return False
    if not np.array_equal(u[~fin], v[~fin], equal_nan=True):
        return False
    atol = np.broadcast_to(np.asarray(atol, np.float64), u.shape)
    return bool(np.all(np.abs(u[fin] - v[fin]) <= atol[fin]))


@pytest.mark.slow
def test_ragged_batch():
    """Datasets of J = 3, 5, 8, 12 fitted together match their references and solo fits."""
    y12, s12 = _simulated(12, 12, mu=5.0, tau=4.0)
    s12 = tuple(5.0 * s for s in s12)
    data = [(EIGHT_Y[:3], EIGHT_S[:3]), (EIGHT_Y[:5], EIGHT_S[:5]), (EIGHT_Y, EIGHT_S), (y12, s12)]
    f = hierjax.fit([np.array(y) for y, _ in data], [np.array(s) for _, s in data])
    assert f.theta.mean.shape[0] == 4
    t = tol()
    errs = []
    for b, (y, s) in enumerate(data):
        J = len(y)
        assert int(f.n_groups[b]) == J
        assert np.all(np.isnan(np.asarray(f.theta.mean[b])[J:]))
        errs += compare_fit(f, b, _ref(y, s), None, t, label=f"[J={J}] ")
        solo = _fit(y, s)
        r = _ref(y, s)
        for name in ("tau", "mu", "theta_new", "theta"):
            for j in range(J) if name == "theta" else [None]:
                ib, i1 = (b,) if j is None else (b, j), (0,) if j is None else (0, j)
                mb, m1 = getattr(f, name), getattr(solo, name)
                sc = r.marginal(name, j).scale
                for what in ("mean", "sd", "quantiles", "p_gt0"):
                    u = np.asarray(getattr(mb, what), np.float64)[ib]
                    v = np.asarray(getattr(m1, what), np.float64)[i1]
                    unit = {"p_gt0": 1.0, "sd": r.marginal(name, j).sd}.get(what, sc)
                    bound = 256 * eps() * (np.abs(v) + unit)
                    if what == "quantiles":
                        # The solvers stop when |F(q) - p| is at round-off (~K eps, K ~ 65
                        # nodes; padding to another J changes it); q moves by that over the
                        # density, which in a tail is at least min(p, 1-p) / |q - median|.
                        lv = np.asarray(LEVELS)
                        med = np.interp(0.5, lv, v)
                        bound = bound + 64 * 65 * eps() * np.abs(v - med) / np.minimum(lv, 1 - lv)
                    if not _same(u, v, bound):
                        errs.append(
                            f"[J={J}] {name}{'' if j is None else f'[{j}]'} {what}: "
                            f"batched {u!r} vs alone {v!r}"
                        )
    _report(errs)


# --------------------------------------------------------------------------- published numbers
def _near(errs, name, got, want, pub_atol=0.0, pub_rtol=0.0, sd=0.0):
    """``|got - want| <= published accuracy + precision tolerance (sd units)``."""
    lim = pub_atol + pub_rtol * abs(want) + tol() * sd
    if not abs(got - want) <= lim:
        errs.append(
            f"{name}: {got!r} vs published {want!r} (|diff| {abs(got - want):.3g} > {lim:.3g})"
        )


def _half_unit(x, digits):
    """Half a unit in the last of ``digits`` significant digits of ``x``."""
    return 0.5 * 10.0 ** (math.floor(math.log10(abs(x))) - digits + 1)


def test_seed_complete_pooling_numbers():
    """The seed lecture: Fisher-weighted mean 7.685617 and two predictive probabilities."""
    y, s = np.array(EIGHT_Y), np.array(EIGHT_S)
    errs = []
    cp = hierjax.complete_pooling(y, s)
    slop = 4 * eps()  # representation of the result in the compute dtype
    m = float(cp.mean[0])
    _near(errs, "complete pooling mean", m, 7.685617, pub_atol=_half_unit(7.685617, 7) + slop * m)
    prec = 1 / s**2
    sd_exact = math.sqrt(1 / prec.sum())
    _near(errs, "complete pooling sd", float(cp.sd[0]), sd_exact, pub_rtol=slop)
    np.testing.assert_allclose(np.asarray(cp.weights[0], np.float64), prec / prec.sum(), rtol=slop)
    if jax.config.jax_enable_x64:  # units where 1 / sigma^2 is out of float64's range
        for c in (1e-200, 1e200):
            cs = hierjax.complete_pooling(c * y, c * s)
            np.testing.assert_allclose(np.asarray(cs.weights[0]), prec / prec.sum(), rtol=slop)
            np.testing.assert_allclose(
                [float(cs.mean[0]) / c, float(cs.sd[0]) / c], [m, sd_exact], rtol=8 * slop
            )
    _, _, p28 = hierjax.complete_pooling_predictive(y, s, 15.0, 28.0)
    p = float(np.asarray(p28).reshape(-1)[0])
    _near(
        errs,
        "P(y_new >= 28 | sigma=15)",
        p,
        0.09560784,
        pub_atol=_half_unit(0.09560784, 7) + slop * p,
    )
    _, _, pm3 = hierjax.complete_pooling_predictive(y, s, 16.0, -3.0)
    p = 1.0 - float(np.asarray(pm3).reshape(-1)[0])
    _near(
        errs, "P(y_new < -3 | sigma=16)", p, 0.2587447, pub_atol=_half_unit(0.2587447, 7) + slop * p
    )
    _report(errs)


def test_bda3_published_values():
    """BDA3 (exact computation): uniform/flat and half-Cauchy(5)/normal(0,5) posterior means."""
    errs = []
    f = _fit(EIGHT_Y, EIGHT_S)
    r = _ref(EIGHT_Y, EIGHT_S)
    _near(errs, "uniform E[mu]", float(f.mu.mean[0]), 7.932, 5e-4, sd=r.marginal("mu").sd)
    _near(errs, "uniform E[tau]", float(f.tau.mean[0]), 6.575, 5e-4, sd=r.marginal("tau").sd)
    f = _fit(EIGHT_Y, EIGHT_S, "half-cauchy:5", "normal:0,5")
    r = _ref(EIGHT_Y, EIGHT_S, "half-cauchy:5", "normal:0,5")
    _near(errs, "HC5 E[mu]", float(f.mu.mean[0]), 4.397, 5e-4, sd=r.marginal("mu").sd)
    _near(errs, "HC5 E[tau]", float(f.tau.mean[0]), 3.598, 5e-4, sd=r.marginal("tau").sd)
    _report(errs)


def test_bayesmeta_published_values():
    """bayesmeta's vignette on Rubin's unrounded eight schools (hierjax.rubin_eight_schools())."""
    y, s = hierjax.rubin_eight_schools()
    assert tuple(y) == RUBIN_Y and tuple(s) == RUBIN_S
    errs = []
    f = _fit(RUBIN_Y, RUBIN_S)
    r = _ref(RUBIN_Y, RUBIN_S)
    sd_mu, sd_tau = r.marginal("mu").sd, r.marginal("tau").sd
    # bayesmeta's mu summaries carry ~1e-3 relative error by design; tau's ~1e-7
    _near(errs, "uniform E[mu]", float(f.mu.mean[0]), 8.092138, pub_rtol=2e-3, sd=sd_mu)
    _near(errs, "uniform sd(mu)", float(f.mu.sd[0]), 5.246683, pub_rtol=2e-3, sd=sd_mu)
    _near(errs, "uniform E[tau]", float(f.tau.mean[0]), 6.585992, pub_rtol=2e-7, sd=sd_tau)
    _near(errs, "uniform sd(tau)", float(f.tau.sd[0]), 5.685974, pub_rtol=2e-7, sd=sd_tau)
    med = float(f.tau.quantiles[0][LEVELS.index(0.5)])
    _near(errs, "uniform median(tau)", med, 5.227732, pub_rtol=2e-7, sd=sd_tau)
    f = _fit(RUBIN_Y, RUBIN_S, "half-cauchy:25", "normal:0,50")
    r = _ref(RUBIN_Y, RUBIN_S, "half-cauchy:25", "normal:0,50")
    sd_mu, sd_tau = r.marginal("mu").sd, r.marginal("tau").sd
    _near(errs, "HC25 E[mu]", float(f.mu.mean[0]), 7.985729, pub_rtol=2e-3, sd=sd_mu)
    _near(errs, "HC25 E[tau]", float(f.tau.mean[0]), 5.884511, pub_rtol=1e-6, sd=sd_tau)
    _near(errs, "HC25 sd(tau)", float(f.tau.sd[0]), 4.869904, pub_rtol=1e-6, sd=sd_tau)
    _near(errs, "HC25 P(mu>0)", float(f.mu.p_gt0[0]), 0.9487521, pub_rtol=2e-3)
    _report(errs)


# --------------------------------------------------------------------------- partial pooling
@pytest.mark.parametrize("tau", [0.5, 5.0, 50.0])
@pytest.mark.parametrize("mu_prior", ["flat", "normal:0,5"])
@pytest.mark.parametrize("data", ["eight", "sigma-ratio-1e6"])
def test_partial_pooling_fixed_tau_dense(tau, mu_prior, data):
    """partial_pooling at a fixed tau equals the dense joint-Gaussian conditioning."""
    y, s = (
        np.array(v)
        for v in ((EIGHT_Y, EIGHT_S) if data == "eight" else CASES["sigma-ratio-1e6"][:2])
    )
    pp = hierjax.partial_pooling(y, s, tau, mu_prior=mu_prior)
    if mu_prior == "flat":
        mean, cov = precision_posterior(y, s, tau)
    elif data == "eight":
        mean, cov = joint_gaussian_posterior(y, s, tau, 0.0, 5.0)
    else:  # the covariance form cancels digits when a posterior sd is 1e-6 of a prior sd
        mean, cov = precision_posterior(y, s, tau, 0.0, 5.0)
    sd = np.sqrt(np.diag(cov))
    t = tol()
    got_m = np.concatenate(
        [
            np.asarray(pp.mu_mean, np.float64).reshape(-1),
            np.asarray(pp.theta_mean, np.float64).reshape(-1),
        ]
    )
    got_s = np.concatenate(
        [
            np.asarray(pp.mu_sd, np.float64).reshape(-1),
            np.asarray(pp.theta_sd, np.float64).reshape(-1),
        ]
    )
    np.testing.assert_array_less(
        np.abs(got_m - mean) / sd, t, err_msg=f"means (mu, theta) {got_m} vs dense {mean}"
    )
    np.testing.assert_array_less(
        np.abs(got_s - sd) / sd, t, err_msg=f"sds (mu, theta) {got_s} vs dense {sd}"
    )
    np.testing.assert_allclose(
        np.asarray(pp.shrinkage, np.float64).reshape(-1), s**2 / (s**2 + tau**2), rtol=t
    )


@pytest.mark.parametrize("tau,mu", [(5.0, 8.0), (0.5, -3.0), (50.0, 20.0)])
def test_partial_pooling_known_mu_tau(tau, mu):
    """With mu and tau known: the seed's precision-weighted shrinkage formula."""
    y, s = np.array(EIGHT_Y), np.array(EIGHT_S)
    pp = hierjax.partial_pooling(y, s, tau, mu=mu)
    prec = 1 / s**2 + 1 / tau**2
    want_m = (y / s**2 + mu / tau**2) / prec
    want_s = np.sqrt(1 / prec)
    t = tol()
    np.testing.assert_array_less(
        np.abs(np.asarray(pp.theta_mean[0], np.float64) - want_m) / want_s,
        t,
        err_msg=f"{pp.theta_mean} vs {want_m}",
    )
    np.testing.assert_allclose(np.asarray(pp.theta_sd[0], np.float64), want_s, rtol=t)
    assert float(pp.mu_mean[0]) == mu and float(pp.mu_sd[0]) == 0.0
    # and it is the conditional of the dense joint Gaussian given mu as well
    mean, cov = precision_posterior(y, s, tau, m0=mu, s0=1e-9)
    np.testing.assert_allclose(mean[1:], want_m, rtol=1e-9, atol=1e-9 * want_s.min())


def test_partial_pooling_tau_zero_is_complete_pooling():
    y, s = np.array(EIGHT_Y), np.array(EIGHT_S)
    pp = hierjax.partial_pooling(y, s, 0.0)
    cp = hierjax.complete_pooling(y, s)
    prec = 1 / s**2
    m, sd = float(np.sum(prec * y) / prec.sum()), math.sqrt(1 / prec.sum())
    t = tol()
    np.testing.assert_array_less(np.abs(np.asarray(pp.theta_mean[0], np.float64) - m) / sd, t)
    np.testing.assert_allclose(np.asarray(pp.theta_sd[0], np.float64), sd, rtol=t)
    assert abs(float(pp.mu_mean[0]) - m) / sd <= t and abs(float(pp.mu_sd[0]) - sd) / sd <= t
    assert abs(float(cp.mean[0]) - m) / sd <= t and abs(float(cp.sd[0]) - sd) / sd <= t
    np.testing.assert_array_equal(np.asarray(pp.shrinkage[0]), 1.0)


TAU_FLAGS = (
    hierjax.engine.fitting.STATUS["roundoff_limited"]
    | hierjax.engine.fitting.STATUS["tail_truncated"]
)


def _tau_quantile_errors(label, f, r, levels, t):
    """tau's quantiles of dataset 0 of ``f`` against the reference, in its sd (IQR)."""
    m = r.marginal("tau", None, tuple(levels))
    errs = []
    for p, a, b in zip(levels, np.asarray(f.tau.quantiles[0], np.float64), m.quantiles):
        if not abs(a - b) / m.scale <= t:
            errs.append(
                f"{label}: tau quantile {p}: {a!r} vs reference {b!r} "
                f"({abs(a - b) / m.scale:.3g} {'sd' if m.sd_exists else 'IQR'} > {t:g})"
            )
    return errs


# J = 4 lies between the two ends and compiles its own kernels: in the slow suite
@pytest.mark.parametrize("J", [3, pytest.param(4, marks=pytest.mark.slow), 8])
def test_far_quantiles_are_exact_or_flagged(J):
    """The 0.001 and 0.999 quantiles of mu and theta_new sit thousands of sds out for J = 3
    (uniform tau, flat mu: Cauchy-like tails), where only the last few tau nodes contribute.
    With the default nodes each is within the tolerance of the quad reference or the fit is
    flagged ``grid_unresolved``; with 4x the nodes (float64, where the nodes are what limits
    it; float32's round-off leaves ~1e-4 IQR there whatever the grid) each is within it and
    unflagged.

    tau's own 0.999 quantile (~300 IQRs out for J = 3, ``p(tau | y) ~ tau^-2``) is within
    the tolerance, or flagged by tau's own estimate (``roundoff_limited`` or
    ``tail_truncated``: float32 carries ~1e-5 of it relative, 4e-3 IQR); never by the mixtures'
    nested rules alone, which do not look at tau."""
    y, sigma = EIGHT_Y[:J], EIGHT_S[:J]
    r = _ref(y, sigma)
    levels = (0.001, 0.999)
    fits = {"default": hierjax.fit(np.array(y), np.array(sigma), quantiles=levels)}
    if jax.config.jax_enable_x64:
        n4 = 4 * hierjax.inference.grid.default_nodes(np.float64)
        fits["4x"] = hierjax.fit(np.array(y), np.array(sigma), quantiles=levels, nodes=n4)
    t = tol()
    for label, f in fits.items():
        errs = []
        for name, m in (("mu", f.mu), ("theta_new", f.theta_new)):
            scale = r.quantile(name, 0.75) - r.quantile(name, 0.25)
            for p, a in zip(levels, np.asarray(m.quantiles[0], np.float64)):
                b = r.quantile(name, p)
                if not abs(a - b) / scale <= t:
                    errs.append(
                        f"{label}: {name} quantile {p}: {a!r} vs reference {b!r} "
                        f"({abs(a - b) / scale:.3g} IQR > {t:g})"
                    )
        status = int(f.status[0])
        tau_errs = _tau_quantile_errors(label, f, r, levels, t)
        assert not tau_errs or status & TAU_FLAGS, tau_errs
        if label == "default" and status & hierjax.engine.fitting.STATUS["grid_unresolved"]:
            continue  # flagged: the user is told to refit with more nodes
        assert status == 0, f"{label}: status {hierjax.engine.fitting.status_text(status)}"
        _report(errs + tau_errs)


# p(tau | y) ~ tau^-2 (uniform tau, normal mu, J = 2): the 0.975 quantile of tau is ~13
# IQRs out. Through 1 - F, float32 put it 2.4e-4 IQR off with status ok; the survival
# function integrated from its own end keeps it within 1e-4.
J2_HEAVY = (
    (-0.9087881928837462, -1.0038175001148766),
    (0.03582196829300117, 0.3610028134515606),
    "uniform",
    "normal:0,2.38451",
)


def test_tau_upper_quantiles_from_the_survival_function():
    y, sigma, tp, mp = J2_HEAVY
    f = hierjax.fit(np.array(y), np.array(sigma), tau_prior=tp, mu_prior=mp)
    assert int(f.status[0]) == 0, hierjax.engine.fitting.status_text(int(f.status[0]))
    _report(_tau_quantile_errors("default levels", f, _ref(y, sigma, tp, mp), LEVELS, tol()))


def test_fractional_tail_keeps_the_moment_integrand_bounded():
    """half-t(0.3, 5) with J = 3 and a flat mu: ``p(tau | y) ~ tau^-3.3``, so E[tau^2] has a
    ``tau^-1.3`` integrand and the sd exists only just. Under the general grid's stretch
    kappa = 2 that integrand is ``(1 - u)^-0.4`` at the map's end: tau's sd came out 6710
    against quad's 19.44 (flagged grid_unresolved). float32's range of tau (``x < 40``)
    cannot hold the integrand's tail at all: it must say so (tail_truncated)."""
    y, sigma, tp, mp = EIGHT_Y[:3], EIGHT_S[:3], "half-t:0.3,5", "flat"
    f = hierjax.fit(np.array(y), np.array(sigma), tau_prior=tp, mu_prior=mp)
    status = int(f.status[0])
    if not jax.config.jax_enable_x64:
        assert status & hierjax.STATUS["tail_truncated"], hierjax.status_text(status)
        return
    assert status == 0, hierjax.status_text(status)
    _report(compare_fit(f, 0, _ref(y, sigma, tp, mp), None, tol()))


# Another p(tau | y) ~ tau^-2 (J = 2, uniform tau, normal mu), from a random screen against
# quad: float32 put theta_new's 0.25 and 0.75 quantiles 0.11-0.14 IQR off with status ok.
# Halley's search started far out in the tail, where the mixture's F' and F'' are tiny,
# and its cubic error model "predicted" convergence after a step that left F(q) at 0.22.
J2_HEAVY_QUARTILES = (
    (-11.638306579545, -2.404978748689),
    (3.0424502728619247, 5.560977577421489),
    "uniform",
    "normal:0,1.72254",
)


def test_mixture_quantiles_from_far_in_a_heavy_tail():
    y, sigma, tp, mp = J2_HEAVY_QUARTILES
    f = hierjax.fit(np.array(y), np.array(sigma), tau_prior=tp, mu_prior=mp)
    assert int(f.status[0]) == 0, hierjax.engine.fitting.status_text(int(f.status[0]))
    _report(compare_fit(f, 0, _ref(y, sigma, tp, mp), None, tol()))


@pytest.mark.skipif(not jax.config.jax_enable_x64, reason="a 1e-8 sd question (float64)")
def test_tau_tail_is_kept_down_to_the_highest_level():
    """The grid's right end follows the highest level asked for: with the tail cut where
    the 0.999 level needed it, tau's 0.9999 quantile (~3300 IQRs out) was 2.5e-7 IQR off."""
    y, sigma, tp, mp = J2_HEAVY
    levels = (0.5, 0.9999)
    f = hierjax.fit(np.array(y), np.array(sigma), tau_prior=tp, mu_prior=mp, quantiles=levels)
    assert not int(f.status[0]) & TAU_FLAGS, hierjax.engine.fitting.status_text(int(f.status[0]))
    _report(_tau_quantile_errors("0.9999", f, _ref(y, sigma, tp, mp), levels, tol()))


# Three of 30 random datasets (J = 4-16, sigma ratios up to 1e3, five priors) on which the
# fast grid (kappa = 1) reported a theta_j sd or tail quantile 1.0-1.6e-8 sd off with status
# ok, before it checked theta_j against its 2n-rule (the general grid was exact on them).
FAST_GRID_THETA = {
    "J15-half-t-normal": (
        [
            17.914123268645554,
            10.983564756244714,
            23.734957851138727,
            5.19096257619013,
            14.304556647466335,
            19.03168126093937,
            12.399099094822283,
            4.211737224599991,
            3.6300467427252805,
            9.04516428235757,
            13.772019301471095,
            5.77073443152793,
            10.054203771682054,
            10.777827701016488,
            16.761276742155427,
        ],
        [
            1.5812743203565542,
            1.5108511880597364,
            6.669194705183388,
            8.02773197291722,
            4.537657350764168,
            5.705192737128156,
            4.034904693273939,
            8.36864663138923,
            6.701379747623014,
            1.4725203788162378,
            7.24091963580823,
            1.5596520017984947,
            5.706882307319518,
            2.0324203696027805,
            7.319265406469697,
        ],
        "half-t:3,5",
        "normal:0,20",
    ),
    "J6-half-t-flat": (
        [
            8.900934520542066,
            6.006640919434575,
            28.7331024351273,
            6.052523068228212,
            6.179288642234576,
            4.730547365829315,
        ],
        [
            3.8132058180538837,
            1.4904212709722964,
            11.939852651701589,
            1.1040740658847974,
            1.0284070012241042,
            0.23853060121042824,
        ],
        "half-t:3,5",
        "flat",
    ),
    "J15-exponential-flat": (
        [
            493.674924127922,
            -193.6557430589338,
            1250.677021937367,
            -693.2834402971506,
            249.81718940340366,
            837.0534569011272,
            -713.8950222865261,
            658.3917051796461,
            1114.5941442299693,
            699.9251928046795,
            -4141.707803375532,
            -70.10756587212404,
            2333.8105805067235,
            523.9213147857718,
            349.9218957527734,
        ],
        [
            260.30374436925393,
            648.276066531284,
            573.0139717594396,
            217.1758636832988,
            188.20746677520495,
            479.5842944055398,
            620.0077636018917,
            616.3286435926885,
            255.8679117498173,
            518.0880883019254,
            2617.1458548841315,
            304.57612478802736,
            1509.165004997442,
            79.98868122109268,
            1708.7917880567447,
        ],
        "exponential:0.2",
        "flat",
    ),
}


@pytest.mark.skipif(not jax.config.jax_enable_x64, reason="a 1e-8 sd question (float64)")
# one case by default (each compiles its own kernels), the other two in the slow suite
@pytest.mark.parametrize(
    "case",
    [
        c if i == 0 else pytest.param(c, marks=pytest.mark.slow)
        for i, c in enumerate(FAST_GRID_THETA)
    ],
)
def test_fast_grid_theta_exact_or_sent_back(case):
    y, sigma, tp, mp = (tuple(a) if isinstance(a, list) else a for a in FAST_GRID_THETA[case])
    f = _fit(y, sigma, tp, mp)
    errs = compare_fit(f, 0, _ref(y, sigma, tp, mp), None, tol())
    assert errs == [] or int(f.status[0]) != 0, errs


# Moments only, datasets the fast grid takes (J <= 16, alpha >= 3.5) are first fitted on
# a map centred on the data's spread that spans all of tau, with no search for the mode or
# the extents (grid._whole_line). Each case also runs through that kernel alone, so that a
# case the general grid rescues still has to be resolved by the whole-line map itself
# where it says so.
MOMENTS_CASES = [
    "eight-uniform-flat",
    "eight-halfcauchy5-normal05",
    "mode-at-zero",
    "eight-1e-6-uniform-flat",
    "eight-1e6-halfcauchy-normal",
    "eight-offset-1e4",
    "sigma-ratio-1e6",
    "precise-groups-apart",
    "identical-y",
    "J1-halfnormal-normal",
]


def _whole_line_kernel_status(y, sigma, tp, mp):
    """Status of the fast grid's moments-only kernel alone (no general-grid refit)."""
    from hierjax.engine.batch import as_batch, rescale_priors, standardize
    from hierjax.engine.fitting import fit_standardized
    from hierjax.inference.grid import FAST_KAPPA, fast_nodes
    from hierjax.model.priors import parse_mu_prior, parse_tau_prior

    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    st = standardize(as_batch(np.array([y]), np.array([sigma])))
    tau_prior, mu_prior = rescale_priors(parse_tau_prior(tp), parse_mu_prior(mp), st)
    c = functools.partial(jnp.asarray, dtype=dtype)
    out = fit_standardized(
        c(st.y),
        c(st.sigma2),
        jnp.ones(st.y.shape, bool),
        c(st.threshold),
        jax.tree.map(c, tau_prior),
        jax.tree.map(c, mu_prior),
        c(np.zeros(0)),
        n=fast_nodes(dtype, whole_line=True),
        chunk=1,
        kappa=FAST_KAPPA,
    )
    return int(out.status[0])


@pytest.mark.parametrize("case", MOMENTS_CASES)
def test_moments_only_matches_reference(case):
    """``quantiles=()``: means, sds, P(> 0), the tau mode and log p(y) against quad."""
    y, sigma, tp, mp, groups = CASES[case]
    f = hierjax.fit(np.array(y), np.array(sigma), tau_prior=tp, mu_prior=mp, quantiles=())
    assert f.mu.quantiles.shape == (1, 0)
    _report(compare_fit(f, 0, _ref(y, sigma, tp, mp), groups, tol()))
    assert not int(f.status[0]) & hierjax.STATUS["grid_unresolved"]


def test_fast_grid_checks_p_gt0():
    """P(theta_j > 0) is a CDF at 0, away from where the grid's error estimate looks (the
    CDFs of mu and theta_new near their centres): on this random dataset float32's fast
    grid (17 nodes) put P(theta_5 > 0) 1.3e-4 off with status ok, grid_error 2.3e-5.
    It is now checked against the 2n-rule, flagged and refitted on the general grid."""
    y = (3.18436, 2.59082, 1.7084, 8.09358, -3.90431)
    sigma = (1.51499, 4.69138, 0.249475, 1.06735, 2.92182)
    f = hierjax.fit(np.array(y), np.array(sigma), tau_prior="exponential:2.19965", quantiles=())
    r = _ref(y, sigma, "exponential:2.19965")
    errs = [
        f"theta[{j}]: P(>0) {f.theta.p_gt0[0, j]!r} vs reference {r.moments('theta', j)[4]!r}"
        for j in range(len(y))
        if not abs(float(f.theta.p_gt0[0, j]) - r.moments("theta", j)[4]) <= tol()
    ]
    assert int(f.status[0]) == 0
    _report(errs)


# A simulated J = 8 dataset (hierjax.simulate(20000, 8, seed=3), number 15814, to 6
# digits) with an outlying group (y_2 = 75.8, the others below 0): float32's fast grid put
# theta_2's 0.75 quantile 1.45e-4 sd off with status ok, its 0.025 and 0.975 quantiles
# (the only ones checked) within 8e-5.
CENTRE_MISS = (
    (-36.4935, 75.7943, -12.8665, -3.41252, -6.62145, -53.9732, -14.313, -21.73),
    (14.616, 14.8675, 11.2287, 9.96129, 13.5274, 14.6602, 9.80705, 9.17955),
)


def test_fast_grid_checks_every_theta_quantile():
    """The fast grid checks each theta_j's quantiles at every level against the 2n-rule,
    not only the outermost (the grid's own error estimate looks at mu's and theta_new's
    CDFs, not theta_j's): this dataset is flagged there and refitted on the general grid,
    where every summary matches quad with status ok."""
    y, sigma = CENTRE_MISS
    f = hierjax.fit(np.array(y), np.array(sigma))
    _report(compare_fit(f, 0, _ref(y, sigma), None, tol()))
    assert int(f.status[0]) == 0


# Simulated J = 5 datasets (hierjax.simulate(8192, 5, seed=48, sigma_range=(1, 30)),
# numbers 2359, 3288 and 5226, to 6 digits), half-Cauchy(5) / normal(0, 10): each has a
# group with a large sigma_j far from the rest. The fast grid flags them; float32's general
# grid (32 nodes) did not check theta_j and put a 0.025 or 0.975 quantile of it 1.1-1.5e-4
# sd off with status ok (64 nodes: within 1.6e-6).
WIDE_GROUP = (
    ((13.5161, 8.59896, 9.69452, -12.175, -68.7957), (12.1811, 2.79789, 1.14996, 16.6963, 24.7359)),
    ((-3.2151, 28.4834, 1.07767, 33.9351, -88.3197), (1.60963, 22.8091, 7.44842, 16.9014, 26.1088)),
    (
        (-14.0247, 4.23123, 96.9291, -25.1243, -4.51042),
        (19.6823, 2.92878, 28.8233, 18.6853, 24.0641),
    ),
)


@pytest.mark.parametrize("case", range(len(WIDE_GROUP)))
def test_general_grid_checks_theta_quantiles(case):
    """The general grid checks each theta_j against its 2n-rule in float32 too (allowing
    for the check's own round-off, a few ulps of the components' means), and what that
    check alone flags is refitted with twice the nodes: every summary matches quad with
    status ok."""
    y, sigma = WIDE_GROUP[case]
    tp, mp = "half-cauchy:5", "normal:0,10"
    f = hierjax.fit(np.array(y), np.array(sigma), tau_prior=tp, mu_prior=mp)
    _report(compare_fit(f, 0, _ref(y, sigma, tp, mp), None, tol()))
    assert int(f.status[0]) == 0, hierjax.engine.fitting.status_text(int(f.status[0]))


def test_whole_line_map_resolves_eight_schools():
    """The whole-line map alone resolves the eight schools (the fallback is not what passes
    the test above), and flags the 1e6 sigma ratio it cannot resolve with 33 nodes."""
    for case in ("eight-uniform-flat", "eight-halfcauchy5-normal05", "mode-at-zero"):
        y, sigma, tp, mp, _ = CASES[case]
        assert _whole_line_kernel_status(y, sigma, tp, mp) == 0, case
    y, sigma, tp, mp, _ = CASES["sigma-ratio-1e6"]
    assert _whole_line_kernel_status(y, sigma, tp, mp) & hierjax.STATUS["grid_unresolved"]


# A group with a standard error ~1600x the smallest: its theta_j's variance jumps where tau
# reaches sigma_j, far out in p(tau | y)'s tau^-5 tail. On the general grid's 65 nodes its
# sd was 2.9e-8 sd off with every check of mu and theta_new passing (found by comparing
# random datasets against quad).
FAR_GROUP = (
    (0.039, -123.524, -31.332, 0.047, -0.708, 0.062),
    (0.0822, 128.9308, 30.4035, 0.4884, 0.6512, 0.0883),
)


def test_far_group_theta_sd_is_checked_and_refitted():
    """The general grid checks each theta_j's mean and sd against its 2n-rule (it flags this
    dataset at its default nodes), and :func:`hierjax.fit` refits what it flags with twice
    the nodes: the default fit matches quad with status ok."""
    y, sigma = FAR_GROUP
    f = hierjax.fit(np.array(y), np.array(sigma), quantiles=())
    _report(compare_fit(f, 0, _ref(y, sigma), None, tol()))
    assert int(f.status[0]) == 0, hierjax.status_text(int(f.status[0]))
    if jax.config.jax_enable_x64:  # a 3e-8 sd question
        g = hierjax.fit(np.array(y), np.array(sigma), quantiles=(), nodes=64)
        assert int(g.status[0]) & hierjax.STATUS["grid_unresolved"]
