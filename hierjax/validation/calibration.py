r"""Calibration of the exact posterior: PIT values, SBC ranks, uniformity checks, ECDF bands.

For replicates ``(mu*, tau*, theta*, y*)`` drawn from the generating model, with the fit
priors equal to the generating ones, the PIT values

.. math::
    u_\mu = P(\mu \le \mu^* \mid y^*),\quad u_\tau = P(\tau \le \tau^* \mid y^*),\quad
    u_{\theta_j} = P(\theta_j \le \theta_j^* \mid y^*)

are exactly Uniform(0, 1) (Cook, Gelman and Rubin 2006), and the rank of the truth among
``S`` independent exact posterior draws is uniform on ``0 .. S`` (Talts et al. 2018, SBC).
hierjax computes the PIT from its exact posterior CDFs (:func:`hierjax.cdf`) and the ranks
from its exact draws (:func:`hierjax.draws`). Uniformity is summarised by the
Kolmogorov-Smirnov statistic, a chi-square over equal bins, and the simultaneous
ECDF-difference bands of Säilynoja, Bürkner and Vehtari (2022).

References:
    Talts, Betancourt, Simpson, Vehtari and Gelman (2018), Validating Bayesian inference
    algorithms with simulation-based calibration, arXiv:1804.06788.
    Säilynoja, Bürkner and Vehtari (2022), Graphical test for discrete uniformity and its
    applications in goodness-of-fit evaluation and multiple sample comparison,
    *Statistics and Computing* 32(32).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np

import hierjax
from hierjax.model.priors import InputError
from hierjax.validation.simstudy import SimData, as_key, simulate_design

__all__ = [
    "PIT",
    "Calibration",
    "EcdfBands",
    "Ranks",
    "Uniformity",
    "calibrate",
    "calibration_rows",
    "ecdf_bands",
    "ecdf_difference",
    "pit",
    "plot_ecdf_difference",
    "rank_uniformity",
    "sbc_ranks",
    "uniformity",
]


class PIT(NamedTuple):
    """PIT of the truth per replicate (float64).

    Attributes:
        mu: ``P(mu <= mu* | y*)``, ``[B]``.
        tau: ``P(tau <= tau* | y*)``, ``[B]``.
        theta: ``P(theta_j <= theta_j* | y*)``, ``[B, J]`` (nan where padded).
        status: the posterior's status bits (:data:`hierjax.STATUS`), ``[B]``.
    """

    mu: np.ndarray
    tau: np.ndarray
    theta: np.ndarray
    status: np.ndarray


class Ranks(NamedTuple):
    """SBC ranks: the number of exact posterior draws below the truth, in ``0 .. S``.

    Attributes:
        mu: ``[B]`` int.
        tau: ``[B]`` int.
        theta: ``[B, J]`` int (-1 where padded).
        num_draws: ``S``.
    """

    mu: np.ndarray
    tau: np.ndarray
    theta: np.ndarray
    num_draws: int


class Uniformity(NamedTuple):
    """Uniformity summaries of ``n`` values in ``[0, 1]`` (or ranks in ``0 .. S``).

    Attributes:
        n: sample size.
        ks: Kolmogorov-Smirnov statistic ``sup |F_n(u) - u|`` (for ranks: of the
            randomised PIT ``(rank + V) / (S + 1)``, ``V ~ U(0, 1)``).
        ks_p: its asymptotic p-value (Kolmogorov's distribution, Stephens' correction).
        chi2: Pearson's statistic over ``bins`` bins.
        chi2_df: ``bins - 1``.
        chi2_p: its p-value (chi-square with ``chi2_df`` degrees of freedom).
    """

    n: int
    ks: float
    ks_p: float
    chi2: float
    chi2_df: int
    chi2_p: float


class EcdfBands(NamedTuple):
    """Simultaneous ``prob`` bands for the ECDF difference ``F_n(z) - z`` of ``n`` uniforms.

    Attributes:
        z: evaluation points ``0, 1/K, .., 1``, ``[K + 1]``.
        lower, upper: band limits of ``F_n(z) - z``, ``[K + 1]``.
        gamma: the adjusted pointwise level: each band point is the central
            ``1 - gamma`` binomial interval of ``n F_n(z) ~ Bin(n, z)``.
        prob: the simultaneous coverage asked for.
        n: sample size.
    """

    z: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    gamma: float
    prob: float
    n: int


class Calibration(NamedTuple):
    """A calibration study (see :func:`calibrate`).

    Attributes:
        sim: the replicates (:class:`hierjax.validation.simstudy.SimData`).
        pit: :class:`PIT`.
        ranks: :class:`Ranks` (None without draws).
        summary: ``{parameter: Uniformity}`` for ``mu``, ``tau`` and ``theta`` (every
            real group pooled).
    """

    sim: SimData
    pit: PIT
    ranks: Ranks | None
    summary: dict


# --------------------------------------------------------------------------- PIT and ranks
def pit(sim: SimData, *, tau_prior="uniform", mu_prior="flat", nodes=None) -> PIT:
    """Exact PIT of the true ``mu``, ``tau`` and ``theta_j`` of each replicate.

    .. math::
        u = P(\\phi \\le \\phi^* \\mid y^*) = \\sum_k w_k \\Phi((\\phi^* - m_k) / s_k)
        \\ (\\text{mixtures}),\\qquad u_\\tau = F_{\\tau \\mid y^*}(\\tau^*)

    Args:
        sim: replicates (y, sigma, mask and the truths).
        tau_prior, mu_prior: the fit priors.
        nodes: passed to :func:`hierjax.posterior`.

    Returns:
        PIT with ``[B]`` and ``[B, J]`` fields.
    """
    post = hierjax.posterior(
        sim.y, sim.sigma, mask=sim.mask, tau_prior=tau_prior, mu_prior=mu_prior, nodes=nodes
    )
    u_mu = hierjax.cdf(post, "mu", sim.mu[:, None])[:, 0]
    u_tau = hierjax.cdf(post, "tau", sim.tau[:, None])[:, 0]
    u_theta = hierjax.cdf(post, "theta", np.where(sim.mask, sim.theta, 0.0)[:, :, None])[..., 0]
    u_theta = np.where(sim.mask, u_theta, np.nan)

    def unit(u):  # a CDF rounded past 0 or 1 (float32) is still a probability
        return np.clip(np.asarray(u, np.float64), 0.0, 1.0)

    return PIT(unit(u_mu), unit(u_tau), unit(u_theta), np.asarray(post.status))


def sbc_ranks(
    sim: SimData, *, key, num_draws: int, tau_prior="uniform", mu_prior="flat", chunk: int = 512
) -> Ranks:
    """SBC ranks of the truth among ``num_draws`` exact posterior draws per replicate.

    Draws for replicate ``i`` use :func:`hierjax.draws` with id ``i`` (``sim.ids``), so they
    do not depend on the batch or ``chunk`` (replicates per call, which bounds memory).

    Returns:
        Ranks with values in ``0 .. num_draws``.
    """
    key = as_key(key)
    B = sim.y.shape[0]
    out: dict[str, list] = {"mu": [], "tau": [], "theta": []}
    for a in range(0, B, chunk):
        sl = slice(a, a + chunk)
        d = hierjax.draws(
            sim.y[sl],
            sim.sigma[sl],
            mask=sim.mask[sl],
            key=key,
            num_draws=num_draws,
            tau_prior=tau_prior,
            mu_prior=mu_prior,
            ids=sim.ids[sl],
        )
        out["mu"].append(np.sum(d.mu < sim.mu[sl, None], axis=1))
        out["tau"].append(np.sum(d.tau < sim.tau[sl, None], axis=1))
        th = np.sum(d.theta < sim.theta[sl, None, :], axis=1)
        out["theta"].append(np.where(sim.mask[sl], th, -1))
    mu, tau, theta = (np.concatenate(out[k]).astype(np.int64) for k in ("mu", "tau", "theta"))
    return Ranks(mu, tau, theta, int(num_draws))


# --------------------------------------------------------------------------- uniformity
def _kolmogorov_sf(x: float) -> float:
    """``P(K > x)`` for Kolmogorov's distribution: ``2 sum (-1)^(k-1) exp(-2 k^2 x^2)``."""
    if x < 0.2:
        return 1.0
    k = np.arange(1, 101)
    p = 2.0 * np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * k**2 * x**2))
    return float(min(1.0, max(0.0, p)))


def _chi2_sf(x: float, df: int) -> float:
    """``P(X > x)`` for chi-square with integer ``df``: the recursion
    ``Q(x; k + 2) = Q(x; k) + (x/2)^(k/2) e^(-x/2) / Gamma(k/2 + 1)``."""
    if x <= 0:
        return 1.0
    h = 0.5 * x
    q, k = (math.erfc(math.sqrt(h)), 1) if df % 2 else (math.exp(-h), 2)
    while k < df:
        q += math.exp(0.5 * k * math.log(h) - h - math.lgamma(0.5 * k + 1.0))
        k += 2
    return min(1.0, q)


def _ks(u: np.ndarray):
    n = u.size
    s = np.sort(u)
    i = np.arange(1, n + 1)
    d = float(max(np.max(i / n - s), np.max(s - (i - 1) / n)))
    en = math.sqrt(n)
    return d, _kolmogorov_sf((en + 0.12 + 0.11 / en) * d)  # Stephens (1970)


def uniformity(u, bins: int = 20) -> Uniformity:
    """KS and chi-square summaries of ``u`` (any shape; nan ignored) against Uniform(0, 1).

    .. math::
        D = \\sup_u |F_n(u) - u|,\\qquad
        X^2 = \\sum_{b=1}^{m} (O_b - n/m)^2 / (n/m)

    Raises:
        InputError: fewer than 2 values, or values outside ``[0, 1]``.
    """
    a = np.asarray(u, np.float64).reshape(-1)
    a = a[~np.isnan(a)]
    if a.size < 2 or np.any((a < 0) | (a > 1)):
        raise InputError("uniformity needs at least 2 values in [0, 1]")
    d, p = _ks(a)
    counts = np.bincount(np.minimum((a * bins).astype(np.int64), bins - 1), minlength=bins)
    e = a.size / bins
    x2 = float(np.sum((counts - e) ** 2) / e)
    return Uniformity(int(a.size), d, p, x2, bins - 1, _chi2_sf(x2, bins - 1))


def rank_uniformity(ranks, num_draws: int, bins: int = 20, seed: int = 0) -> Uniformity:
    """Uniformity of SBC ranks on ``0 .. S`` (negative ranks, padding, ignored).

    The chi-square uses each bin's exact expected share (its count of rank values over
    ``S + 1``); the KS statistic uses the randomised PIT ``(rank + V) / (S + 1)``.
    """
    r = np.asarray(ranks).reshape(-1)
    r = r[r >= 0]
    S = int(num_draws)
    if r.size < 2 or np.any(r > S):
        raise InputError(f"rank_uniformity needs at least 2 ranks in 0 .. {S}")
    bins = min(bins, S + 1)
    edges = np.floor(np.arange(bins + 1) * (S + 1) / bins).astype(np.int64)  # bin b: [e_b, e_b+1)
    share = np.diff(edges) / (S + 1)
    counts = np.bincount(np.searchsorted(edges, r, side="right") - 1, minlength=bins)[:bins]
    e = r.size * share
    x2 = float(np.sum((counts - e) ** 2 / e))
    v = np.random.default_rng(seed).random(r.size)
    d, p = _ks((r + v) / (S + 1))
    return Uniformity(int(r.size), d, p, x2, bins - 1, _chi2_sf(x2, bins - 1))


# --------------------------------------------------------------------------- ECDF bands
def _log_factorials(n: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def _binom_logpmf(k, n, p, lf):
    """``log Bin(k; n, p)`` for integer arrays ``k, n`` (``-inf`` outside ``0 .. n``)."""
    k, n = np.asarray(k), np.asarray(n)
    ok = (k >= 0) & (k <= n)
    kk, nn = np.where(ok, k, 0), np.where(ok, n, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lp = (
            lf[nn]
            - lf[kk]
            - lf[nn - kk]
            + np.where(kk > 0, kk * np.log(p), 0.0)
            + np.where(nn - kk > 0, (nn - kk) * np.log1p(-p), 0.0)
        )
    return np.where(ok, lp, -np.inf)


def _binom_cdf_table(n: int, z: np.ndarray, lf) -> np.ndarray:
    """``P(X <= x)``, ``X ~ Bin(n, z_i)``, for ``x = 0 .. n``: ``[len(z), n + 1]``."""
    x = np.arange(n + 1)
    with np.errstate(divide="ignore"):
        lp = np.stack(
            [
                _binom_logpmf(x, n, zi, lf)
                if 0 < zi < 1
                else np.where(x == (0 if zi <= 0 else n), 0.0, -np.inf)
                for zi in z
            ]
        )
    return np.minimum(np.cumsum(np.exp(lp), axis=1), 1.0)


def _binom_quantile(cdf_table, p):
    """Smallest ``x`` with ``P(X <= x) >= p`` per row (R's ``qbinom``), with a relative
    slack of 1e-12 on ``p`` against the table's round-off."""
    return np.argmax(cdf_table >= p * (1 - 1e-12), axis=1)


def _interior_prob(lower, upper, z, n, lf) -> float:
    """P(``lower_i <= n F_n(z_i) <= upper_i`` for every inner ``z_i``) for ``n`` uniforms, by the
    forward recursion over ``z``: given ``x`` below ``z_{i-1}``, the count in
    ``(z_{i-1}, z_i]`` is ``Bin(n - x, (z_i - z_{i-1}) / (1 - z_{i-1}))``."""
    x1, p1 = np.array([0]), np.array([1.0])
    z_prev = 0.0
    for lo, hi, zi in zip(lower, upper, z):
        x2 = np.arange(lo, hi + 1)
        zt = (zi - z_prev) / (1.0 - z_prev)
        lp = _binom_logpmf(x2[:, None] - x1[None, :], n - x1[None, :], zt, lf)
        p2 = np.exp(lp) @ p1
        x1, p1, z_prev = x2, p2, zi
    return float(np.sum(p1))


def ecdf_bands(
    n: int,
    prob: float = 0.95,
    K: int | None = None,
    method: str = "auto",
    n_sim: int = 10_000,
    seed: int = 0,
) -> EcdfBands:
    """Simultaneous ``prob`` bands for the ECDF difference of ``n`` iid Uniform(0, 1) values.

    .. math::
        n F_n(z_i) \\sim \\mathrm{Bin}(n, z_i):\\quad
        [\\,Q_{\\mathrm{Bin}}(\\gamma/2),\\ Q_{\\mathrm{Bin}}(1 - \\gamma/2)\\,] / n - z_i,
        \\quad z_i = i / K

    with ``gamma`` adjusted so that the whole ECDF stays inside with probability ``prob``
    (Säilynoja et al. 2022): ``method="optimize"`` solves for it with the exact
    probability of staying inside (a forward recursion over the ``z_i``; its cost grows
    like ``K n``), ``"simulate"`` takes the ``1 - prob`` quantile over ``n_sim`` simulated
    uniform samples of ``2 min_i min(P(X <= x_i), P(X >= x_i))`` (as bayesplot; the counts
    at the ``z_i`` drawn as one multinomial per sample), ``"auto"`` the former up to
    ``n K = 2e5``.

    Args:
        n: sample size.
        prob: simultaneous coverage.
        K: evaluation points ``1/K .. 1`` (default ``min(n, 100)``).
        method: ``"auto"``, ``"optimize"`` or ``"simulate"``.
        n_sim, seed: the simulation method's size and NumPy seed.

    Returns:
        EcdfBands.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    if not 0 < prob < 1:
        raise InputError(f"prob must lie strictly between 0 and 1, got {prob!r}")
    K = min(int(n), 100) if K is None else int(K)
    if K < 1:
        raise InputError(f"K must be a positive integer, got {K}")
    if method not in ("auto", "optimize", "simulate"):
        raise InputError(f"method must be 'auto', 'optimize' or 'simulate', got {method!r}")
    n = int(n)
    if method == "auto":
        method = "optimize" if n * K <= 200_000 else "simulate"
    lf = _log_factorials(n)
    z = np.arange(K + 1) / K
    table = _binom_cdf_table(n, z[1:-1], lf)  # the inner points; ends are fixed

    def limits(gamma):
        lo = _binom_quantile(table, gamma / 2)
        hi = _binom_quantile(table, 1 - gamma / 2)
        return lo, hi

    if method == "simulate":
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(n, np.full(K, 1.0 / K), size=n_sim)  # [M, K] per bin
        x = np.cumsum(counts, axis=1)[:, :-1]  # n F_n(z_i), inner z
        rows = np.arange(K - 1)
        below = table[rows, x]  # P(X <= x)
        above = 1.0 - np.where(x > 0, table[rows, np.maximum(x - 1, 0)], 0.0)  # P(X >= x)
        g = 2.0 * np.minimum(below, above).min(axis=1)
        gamma = float(np.quantile(g, 1.0 - prob)) if K > 1 else 1.0 - prob
    else:

        def coverage(gamma):
            lo, hi = limits(gamma)
            return _interior_prob(lo, hi, z[1:-1], n, lf)

        # coverage falls as gamma grows: the largest gamma in (0, 1 - prob) that keeps it
        a, b = 0.0, 1.0 - prob
        if K == 1 or coverage(b) >= prob:
            a = b
        else:
            for _ in range(50):
                m = 0.5 * (a + b)
                if m <= 0 or b - a < 1e-12 * b:
                    break
                a, b = (m, b) if coverage(m) >= prob else (a, m)
        # a sits on a step of the coverage: step just inside it, so that no band point
        # hangs on a quantile tie (the bands can only widen: coverage stays >= prob)
        gamma = max(a * (1.0 - 1e-6), 1e-300)
    lo, hi = limits(gamma) if K > 1 else (np.zeros(0, int), np.zeros(0, int))
    lower = np.concatenate([[0.0], lo / n - z[1:-1], [0.0]])
    upper = np.concatenate([[0.0], hi / n - z[1:-1], [0.0]])
    return EcdfBands(z, lower, upper, float(gamma), float(prob), n)


def ecdf_difference(u, K: int | None = None):
    """``(z, F_n(z) - z)`` at ``z = 0, 1/K, .., 1`` of the values ``u`` (nan ignored)."""
    a = np.sort(np.asarray(u, np.float64).reshape(-1))
    a = a[~np.isnan(a)]
    K = min(a.size, 100) if K is None else int(K)
    z = np.arange(K + 1) / K
    return z, np.searchsorted(a, z, side="right") / a.size - z


def plot_ecdf_difference(
    u,
    *,
    prob: float = 0.95,
    K: int | None = None,
    ax=None,
    label: str | None = None,
    bands: EcdfBands | None = None,
):
    """Plot ``F_n(z) - z`` of PIT values ``u`` with its simultaneous band (needs matplotlib,
    extra ``plots``). Returns the axes."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # optional extra
        raise ImportError(
            "plot_ecdf_difference needs matplotlib: pip install 'hierjax[plots]'"
        ) from None
    z, diff = ecdf_difference(u, K)
    a = np.asarray(u, np.float64).reshape(-1)
    n = int(np.sum(~np.isnan(a)))
    bands = bands or ecdf_bands(n, prob, K=z.size - 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    ax.fill_between(
        bands.z,
        bands.lower,
        bands.upper,
        step="post",
        color="0.85",
        label=f"{prob:.0%} simultaneous band",
    )
    ax.step(z, diff, where="post", color="C0", label=label or "ECDF - z")
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xlabel("PIT")
    ax.set_ylabel("ECDF difference")
    ax.legend(loc="best", fontsize=8)
    return ax


# --------------------------------------------------------------------------- a whole study
def calibrate(
    n_replicates: int,
    *,
    key=0,
    J=5,
    sigma=1.0,
    tau_prior="half-normal:1",
    mu_prior="normal:0,1",
    fit_tau_prior=None,
    fit_mu_prior=None,
    num_draws: int = 0,
    bins: int = 20,
    chunk: int = 8192,
    progress=None,
) -> Calibration:
    """Simulate from proper generating priors, fit with the fit priors (default: the same)
    and return the PIT (and, with ``num_draws > 0``, SBC ranks) with uniformity summaries.

    Args:
        n_replicates: ``B``.
        key: a JAX key or integer seed (replicates from ``fold_in(key, 0)``, draws from
            ``fold_in(key, 1)``).
        J, sigma: the design (see :func:`hierjax.validation.simstudy.simulate_design`).
        tau_prior, mu_prior: generating priors (proper).
        fit_tau_prior, fit_mu_prior: fit priors (default: the generating ones).
        num_draws: exact draws per replicate for the SBC ranks (0: none).
        bins: chi-square bins.
        chunk: replicates per batch (results do not depend on it).
        progress: a callable ``progress(n_done)`` called after each chunk (or None).

    Raises:
        InputError: an improper generating prior (say so), bad sizes.
    """
    key = as_key(key)
    fit_tau = tau_prior if fit_tau_prior is None else fit_tau_prior
    fit_mu = mu_prior if fit_mu_prior is None else fit_mu_prior
    sims, pits, ranks = [], [], []
    for a in range(0, int(n_replicates), chunk):
        m = min(chunk, int(n_replicates) - a)
        s = simulate_design(
            m, key=jax.random.fold_in(key, 0), tau=tau_prior, mu=mu_prior, J=J, sigma=sigma, start=a
        )
        sims.append(s)
        pits.append(pit(s, tau_prior=fit_tau, mu_prior=fit_mu))
        if num_draws:
            ranks.append(
                sbc_ranks(
                    s,
                    key=jax.random.fold_in(key, 1),
                    num_draws=num_draws,
                    tau_prior=fit_tau,
                    mu_prior=fit_mu,
                )
            )
        if progress is not None:
            progress(m)

    def cat(xs):
        return type(xs[0])(*(np.concatenate(f) for f in zip(*xs)))

    sim, p = cat(sims), cat(pits)
    r = None
    if ranks:
        mu, tau, theta = (
            np.concatenate([getattr(x, f) for x in ranks]) for f in ("mu", "tau", "theta")
        )
        r = Ranks(mu, tau, theta, int(num_draws))
    summary = {
        "mu": uniformity(p.mu, bins),
        "tau": uniformity(p.tau, bins),
        "theta": uniformity(p.theta, bins),
    }
    return Calibration(sim, p, r, summary)


def calibration_rows(cal: Calibration):
    """Tidy rows ``(replicate, parameter, truth, pit, rank)`` (``theta[j]`` 1-based;
    rank -1 without draws)."""
    sim, p, r = cal.sim, cal.pit, cal.ranks
    rows = []
    for b in range(sim.y.shape[0]):
        i = int(sim.ids[b])
        rows.append((i, "mu", sim.mu[b], p.mu[b], -1 if r is None else int(r.mu[b])))
        rows.append((i, "tau", sim.tau[b], p.tau[b], -1 if r is None else int(r.tau[b])))
        for j in range(int(sim.n_groups[b])):
            rows.append(
                (
                    i,
                    f"theta[{j + 1}]",
                    sim.theta[b, j],
                    p.theta[b, j],
                    -1 if r is None else int(r.theta[b, j]),
                )
            )
    return rows
