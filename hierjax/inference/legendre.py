r"""Moments and quantiles on Gauss-Legendre nodes placed where ``p(tau | y)`` lives.

For one standardised dataset the posterior of ``x = log tau``, ``h(x) = log p(tau) +
log p(y | tau) + x``, is located (its mode ``x_m``, by Newton steps on analytic derivatives) and
cut on the left where it has fallen ``D = 36`` nats (``x_c``; the mass below is
``< e^{-D}``). Then

.. math::
    \tau(u) = \tau_0 + c\,\frac{u}{1 - u},\quad u \in (0, 1),\quad
    \tau_0 = e^{x_c},\quad c = e^{x_m} - \tau_0,

puts the mode at ``u = 1/2`` and, by the shift ``tau_0``, moves the integrand's complex
singularities at ``tau = +-i sigma_j`` away from ``u = 0`` where ``tau >> sigma``. A tail
``p(tau | y) ~ tau^{-(alpha + 1)}`` becomes ``(1 - u)^{alpha - 1 - k}`` for
``tau^k p(tau | y)``: a polynomial end for the integer ``alpha >= 3`` this path serves.
``N`` Gauss-Legendre nodes in ``u`` integrate every moment.

**Error estimate**: each integrand ``g(u) = p(tau(u) | y) tau'(u) q(u)`` (``q``: a
centred and scaled moment, in posterior sds) has Legendre coefficients
``a_n = (2n + 1) sum_k w_k q_k P_n(z_k)`` (``w_k`` the normalised weights, ``z = 2u - 1``),
exact from the ``N`` nodes up to aliasing. The ``N``-point rule's error is at most
``sum_{m >= 2N} |a_m|``; with ``A`` the largest of the last four coefficients, ``B`` the
largest of four eight degrees lower and ``r = (A / B)^{1/8}``, it is estimated as
``A r^{N+1} / (1 - r)`` (``r`` capped below 1). Datasets whose estimate exceeds the goal
are flagged, as are those with a singularity of the integrand close to ``[0, 1]``
(:func:`_singular_error`), which the decay does not see; :func:`hierjax.fit` sends them
on to its grids.

**Quantiles**: of mu, theta_j and theta_new by :func:`_mixture_quantiles` on the nodes'
mixture, each level's CDF integrand ``(Phi(t_k) - p) / (f(q) sd)`` joining the error
estimate (a quantile shift in sds); of tau by :func:`_tau_quantiles`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp, ndtri

from hierjax.engine.cache import register
from hierjax.inference.summaries import (
    _NEAR,
    _TOL_RES,
    DatasetFit,
    Marginal,
    _halley_step,
    _mixture_moments,
    _Moments,
    _Phi,
    _Phi_phi,
    _start_in,
    tau_mode,
)
from hierjax.model.conditionals import _prior_terms, mixture_components, mu_given_tau
from hierjax.model.priors import (
    FlatMu,
    HalfCauchy,
    HalfT,
    MuPrior,
    NormalMu,
    TauPrior,
    Uniform,
)

__all__ = [
    "LEGENDRE_GOAL",
    "LEGENDRE_MIN_ALPHA",
    "LEGENDRE_NODES",
    "fit_dataset_legendre",
    "fit_legendre",
    "legendre_applies",
    "legendre_nodes",
]

#: Gauss-Legendre nodes per dtype's bits.
LEGENDRE_NODES = {64: 32, 32: 20}
#: The error estimate (posterior sds; relative for sds and the evidence) a dataset must
#: pass: the dtype's accuracy goal (README "Accuracy").
LEGENDRE_GOAL = {64: 1e-8, 32: 1e-4}
#: Smallest tail power ``alpha`` served: every moment exists and ``tau^2 p(tau | y)``
#: stays bounded at ``u = 1``.
LEGENDRE_MIN_ALPHA = 3.0

_DROP = 36.0  # nats below the mode where the map starts (mass below < e^-36)
_SCOUT = 9  # scout points over +-12 in log tau around the data's spread
_MODE_STEPS = 8
_CUT_STEPS = 5
_PROBES = (1.0, 3.0, 7.0, 15.0, 31.0)  # left of the cut: nothing may rise above it
_WINDOW = 4  # coefficients per window of the decay estimate
_GAP = 8  # degrees between the two windows
_R_MAX = 0.95  # cap on the decay ratio per degree
_SAFETY = 1.0  # factor on the extrapolated error
_TAU_Q_STEPS = 6  # safeguarded Newton steps on the interpolant's CDF
_TAU_Q_FIRST = 16  # nodes of the first two Newton steps' rules on the CDF; the last has N
_COARSE_STEPS = 2  # Halley steps on every _STRIDE-th node (float32 specials) start a quantile
_STRIDE = 2


@functools.cache
def legendre_nodes(N: int):
    r"""``(u[N], w[N], T[2 W, N])`` on ``(0, 1)``, ``u`` decreasing (tau from large to small).

    ``w`` sums to 1; ``T[i, k] = (2n + 1) P_n(2 u_k - 1)`` for the ``n`` of the two
    windows (``N - GAP - W .. N - GAP - 1`` then ``N - W .. N - 1``), so that
    ``a_n = sum_k T[i, k] w_k g_k`` are the Legendre coefficients of ``g``.
    """
    z, w = np.polynomial.legendre.leggauss(N)
    z, w = z[::-1], w[::-1] / 2.0
    ns = list(range(N - _GAP - _WINDOW, N - _GAP)) + list(range(N - _WINDOW, N))
    T = np.stack([(2 * n + 1) * np.polynomial.legendre.legval(z, np.eye(n + 1)[n]) for n in ns])
    u = 0.5 * (1.0 + z)
    om = 0.5 * (1.0 - z)  # 1 - u without cancellation
    return u, om, w, T


@functools.cache
def legendre_matrix(N: int):
    """``T[n, k] = (2n + 1) P_n(z_k)``, ``n < N``, on the nodes of :func:`legendre_nodes`:
    ``T @ (w g)`` are the coefficients of the degree ``N - 1`` interpolant of ``g``."""
    z = 2.0 * legendre_nodes(N)[0] - 1.0
    return np.stack(
        [(2 * n + 1) * np.polynomial.legendre.legval(z, np.eye(N)[n]) for n in range(N)]
    )


def _loglik_derivs(s, y, sigma2, mask, mu_prior: MuPrior):
    r"""``(l', l'')`` of ``l(s) = log p(y | tau^2 = s)`` with mu profiled out: with
    ``a_j = 1/(sigma_j^2 + s)``, ``r_j = y_j - mu_hat``, ``S_k = sum a^k``,
    ``R_k = sum a^k r^2``, ``R = sum a^2 r`` (envelope theorem for ``mu_hat``),

    .. math::
        l' = -\tfrac12\,(S_1 - S_2/P - R_2),\quad
        l'' = -\tfrac12\,(2 S_3/P - S_2 - S_2^2/P^2 + 2 R_3 - 2 R^2/P).
    """
    p0, p0m0 = _prior_terms(mu_prior, y.dtype)
    a = jnp.where(mask, 1.0 / jnp.where(mask, sigma2 + s, 1.0), 0.0)
    a2 = a * a
    P = jnp.sum(a) + p0
    r = jnp.where(mask, y - (jnp.sum(a * y) + p0m0) / P, 0.0)
    ar2 = a * r * r
    S1, S2, S3 = jnp.sum(a), jnp.sum(a2), jnp.sum(a2 * a)
    R1, R2, R3 = jnp.sum(a2 * r), jnp.sum(a * ar2), jnp.sum(a2 * ar2)
    g = S2 / P
    l1 = -0.5 * (S1 - g - R2)
    l2 = -0.5 * (2.0 * S3 / P - S2 - g * g + 2.0 * R3 - 2.0 * R1 * R1 / P)
    return l1, l2


def _setup(y, sigma2, mask, tau_prior: TauPrior, mu_prior: MuPrior):
    """The map's ``(tau0, c, ok)``: mode of ``h`` by a scout and Newton steps, cut where
    ``h`` has fallen ``_DROP`` nats left of it (``tau0 = 0`` where that is not clear)."""
    dtype = y.dtype
    fi = jnp.finfo(dtype)
    x_min, x_max = 0.45 * math.log(float(fi.tiny)), 0.45 * math.log(float(fi.max))

    def h(x):
        tau = jnp.exp(x)
        return (
            tau_prior.log_density(tau)
            + mu_given_tau(tau * tau, y, sigma2, mask, mu_prior).log_lik
            + x
        )

    def prior(x):
        return tau_prior.log_density(jnp.exp(x)) + x

    def d12(x):
        """``(h', h'')``: the log-likelihood's analytically, the prior's by autodiff."""
        dp, d2p = jax.jvp(jax.grad(prior), (x,), (jnp.ones_like(x),))
        s = jnp.exp(2.0 * x)
        l1, l2 = _loglik_derivs(s, y, sigma2, mask, mu_prior)
        # chain rule through s = e^{2x}
        return 2.0 * s * l1 + dp, 4.0 * s * (s * l2 + l1) + d2p

    def value_and_d1(x):
        s = jnp.exp(2.0 * x)
        vp, dp = jax.value_and_grad(prior)(x)
        l0 = mu_given_tau(s, y, sigma2, mask, mu_prior).log_lik
        l1, _ = _loglik_derivs(s, y, sigma2, mask, mu_prior)
        return vp + l0, 2.0 * s * l1 + dp

    n_obs = jnp.maximum(jnp.sum(mask), 1).astype(dtype)
    ybar = jnp.sum(jnp.where(mask, y, 0.0)) / n_obs
    spread = jnp.sum(jnp.where(mask, (y - ybar) ** 2, 0.0)) / n_obs
    s2bar = jnp.sum(jnp.where(mask, sigma2, 0.0)) / n_obs
    centre = 0.5 * jnp.log(spread + s2bar / n_obs)
    scout = jnp.clip(centre + jnp.linspace(-12.0, 12.0, _SCOUT, dtype=dtype), x_min, x_max)
    hs = jax.vmap(h)(scout)
    x = scout[jnp.argmax(jnp.where(jnp.isnan(hs), -jnp.inf, hs))]

    # Newton on h' with steps of at most 2 (uphill by the gradient's sign where h'' >= 0)
    def mode_step(_, x):
        g1, g2 = d12(x)
        step = jnp.where(g2 < 0, -g1 / g2, jnp.sign(g1) * 2.0)
        return jnp.clip(x + jnp.clip(step, -2.0, 2.0), x_min, x_max)

    # rolled loops: the same work, a fraction of the program to compile
    x = jax.lax.fori_loop(0, _MODE_STEPS, mode_step, x)
    g1, g2 = d12(x)
    width = jax.lax.rsqrt(jnp.maximum(-g2, 1e-30))
    # the map needs the mode to a fraction of its width only
    mode_ok = (g2 < 0) & (jnp.abs(g1 / g2) < 0.05 * width) & (x > x_min) & (x < x_max)
    x_m, h_m = x, h(x)
    target = h_m - _DROP

    # the cut: Newton on h(x) = target from the normal approximation's point
    xc = x_m - jnp.sqrt(2.0 * _DROP) * width

    def cut_step(_, xc):
        hv, g = value_and_d1(xc)
        step = -(hv - target) / jnp.maximum(g, 1e-3)
        return jnp.clip(xc + jnp.clip(step, -40.0, 0.5 * (x_m - xc)), x_min, x_m)

    xc = jax.lax.fori_loop(0, _CUT_STEPS, cut_step, xc)
    probes = jnp.clip(xc - jnp.asarray(_PROBES, dtype), x_min, x_max)
    h_probe = jax.vmap(h)(probes)
    cut_ok = (h(xc) <= target + 1.0) & jnp.all(h_probe <= target + 1.0) & (xc > x_min)
    tau0 = jnp.where(cut_ok, jnp.exp(xc), 0.0)
    c = jnp.exp(x_m) - tau0
    return tau0, c, mode_ok & jnp.isfinite(c) & (c > 0)


def _decay_error(coef, N: int):
    """Error estimate per column from its two coefficient windows, ``[2W, M] -> [M]``: the
    top window's size carried on geometrically from degree ``N - 1`` to ``2N`` and summed."""
    mid = jnp.max(jnp.abs(coef[:_WINDOW]), axis=0)
    top = jnp.max(jnp.abs(coef[_WINDOW:]), axis=0)
    r = jnp.minimum((top / jnp.maximum(mid, jnp.finfo(coef.dtype).tiny)) ** (1.0 / _GAP), _R_MAX)
    return _SAFETY * top * r ** (N + 1) / (1.0 - r), r


def _singular_points(sigma2, mask, tau_prior: TauPrior, mu_prior: MuPrior):
    """Magnitudes ``t`` of the integrand's singularities ``tau = +-i t``, ``[J + 2]`` (nan
    where none): every ``sigma_j``; a Cauchy or t prior's pole; a normal mu prior's zero of
    ``1/s0^2 + sum_j 1/(sigma_j^2 + tau^2)``, bounded by ``sqrt(max sigma^2 + n s0^2)``.
    The flat-mu zeros of that sum lie between the ``sigma_j``, whose ends bound them."""
    dtype = sigma2.dtype
    nan = jnp.full((), jnp.nan, dtype)
    s = jnp.where(mask, jnp.sqrt(sigma2), jnp.nan)
    if isinstance(tau_prior, HalfCauchy):
        pole = jnp.asarray(tau_prior.scale, dtype)
    elif isinstance(tau_prior, HalfT):
        pole = jnp.asarray(tau_prior.scale, dtype) * math.sqrt(tau_prior.df)
    else:
        pole = nan
    if isinstance(mu_prior, NormalMu):
        n = jnp.sum(mask).astype(dtype)
        s0 = jnp.asarray(mu_prior.scale, dtype)
        zero = jnp.sqrt(jnp.max(jnp.where(mask, sigma2, 0.0)) + n * s0 * s0)
    else:
        zero = nan
    return jnp.concatenate([s, jnp.stack([pole, zero])])


def _singular_error(t, tau0, c, log_post, log_z, N: int):
    r"""Gauss-Legendre error bound from the singularities ``tau = i t``, largest over ``t``.

    ``u = (i t - tau0) / (c - tau0 + i t)`` lies on the Bernstein ellipse
    ``rho = |z + sqrt(z^2 - 1)|`` (``z = 2u - 1``); the ``N``-point rule's error is about
    ``(64/15) M rho^{-2N} / (rho^2 - 1)``, with ``M`` the integrand (second moments
    included) at the real point nearest ``u``, relative to its integral ``e^{log_z}``.
    """
    dtype = t.dtype
    it = jax.lax.complex(jnp.zeros_like(t), t)  # complex of t's own precision
    u = (it - tau0) / (c - tau0 + it)
    z = 2.0 * u - 1.0
    w = jnp.sqrt(z * z - 1.0)
    rho = jnp.maximum(jnp.abs(z + w), jnp.abs(z - w))
    ur = jnp.clip(jnp.real(u), 0.0, 1.0 - 1.0 / (4 * N * N))
    tau = tau0 + c * ur / (1.0 - ur)
    scale = tau0 + c
    log_m = (
        log_post(tau) + jnp.log(c) - 2.0 * jnp.log1p(-ur) + jnp.log1p((tau / scale) ** 2) - log_z
    )
    log_err = (
        math.log(64.0 / 15.0)
        + log_m
        - 2.0 * N * jnp.log(rho)
        - jnp.log(jnp.maximum(rho * rho - 1.0, jnp.finfo(dtype).tiny))
    )
    return jnp.max(jnp.where(jnp.isnan(log_err), -jnp.inf, jnp.exp(log_err)))


def _lane_start(zp, sign, w, m, s, mo: _Moments):
    """``(x0, lo, hi)`` of :func:`~hierjax.inference.summaries._quantile_start` for the
    reflected components ``sign m``, by a loop over them with lane-shaped accumulators."""
    tiny = float(jnp.finfo(m.dtype).eps) * 1e-3
    shape = jnp.broadcast_shapes(zp.shape, m.shape[1:])
    inf = jnp.full(shape, jnp.inf, m.dtype)
    zero = jnp.zeros(shape, m.dtype)

    def body(k, acc):
        lo, hi, sw, swq = acc
        qk = sign * m[k] + s[k] * zp
        live = w[k] > tiny
        return (
            jnp.where(live, jnp.minimum(lo, qk), lo),
            jnp.where(live, jnp.maximum(hi, qk), hi),
            sw + jnp.where(live, w[k], 0.0),
            swq + jnp.where(live, w[k] * qk, 0.0),
        )

    lo, hi, sw, swq = jax.lax.fori_loop(0, m.shape[0], body, (inf, -inf, zero, zero))
    return _start_in(zp, sign, mo, swq / sw, lo, hi), lo, hi


def _lane_terms(x, p, w, m, inv_s, sign, special_dtype=None, T=None):
    """``(F(x) - p, F', F'', F''', coef)`` of ``F = sum_k w_k Phi((x - sign m_k) / s_k)``, components on
    axis 0 and lanes after, by a loop over ``k`` with lane-shaped sums (lanes last keep XLA's
    loops vectorised); with ``T``, ``coef = sum_k T[:, k] w_k (Phi(t_k) - p)``, else None.
    A rolled loop: unrolled, XLA fused the sums into each consumer and recomputed them."""
    zero = jnp.zeros(x.shape, x.dtype)

    def body(k, acc):
        F, f, fp, fpp, g = acc
        t = (x - sign * m[k]) * inv_s[k]
        tl = t if special_dtype is None else t.astype(special_dtype)
        Phi, phi = (a.astype(x.dtype) for a in _Phi_phi(tl))
        wphi = w[k] * inv_s[k] * phi
        fp = fp - wphi * t * inv_s[k]
        fpp = fpp + wphi * (t * t - 1.0) * inv_s[k] * inv_s[k]
        if g is not None:
            g = g.at[k].set(w[k] * (Phi - p))
        return F + w[k] * Phi, f + wphi, fp, fpp, g

    g0 = None if T is None else jnp.zeros(m.shape[:1] + x.shape, x.dtype)
    F, f, fp, fpp, g = jax.lax.fori_loop(0, m.shape[0], body, (zero, zero, zero, zero, g0))
    coef = None if T is None else jnp.tensordot(jnp.asarray(T, x.dtype), g, axes=1)
    return F - p, f, fp, fpp, coef


def _mixture_quantiles(levels, w, m, s, mo, T):
    r"""Quantiles of the mixtures ``sum_k w_k N(m_k, s_k^2)`` at ``levels``, elementwise over
    lanes: ``w, m, s`` ``[K, ...]`` (components first), ``mo`` (their
    :func:`~hierjax.inference.summaries._mixture_moments`) and ``levels`` broadcast against
    the lanes. Returns ``(q, converged, left, err)``, ``left`` and ``err`` in the mixture's
    sds: the last step's possible error and the decay estimate (``T`` of
    :func:`legendre_nodes`) of the CDF integrand ``(Phi(t_k) - p) / f``.

    From the Cornish-Fisher start (components' quantiles averaged for heavy tails), two
    Halley steps on every other node in float32 specials, then one float64 step;
    converged where its cubic remainder ``f C |h|^3`` is below ``2e-10 p``
    (:func:`hierjax.inference.summaries.mixture_quantile`), so no lane waits on a loop.
    Upper levels are solved as the reflected mixture's lower tail.
    """
    dtype = m.dtype
    eps = float(jnp.finfo(dtype).eps)
    inv_s = 1.0 / s
    w_c = w[::_STRIDE] / jnp.sum(w[::_STRIDE], axis=0)
    # levels above 1/2 as the reflected mixture's lower tail (sign -1: components at -m)
    sign = jnp.where(levels > 0.5, -1.0, 1.0).astype(dtype)
    p = jnp.minimum(levels, 1.0 - levels)
    x, lo, hi = _lane_start(ndtri(p), sign, w, m, s, mo)

    def coarse_step(_, x):
        F, f, fp, _, _ = _lane_terms(x, p, w_c, m[::_STRIDE], inv_s[::_STRIDE], sign, jnp.float32)
        x_c = jnp.clip(x - jnp.clip(_halley_step(F, f, fp), -mo.sd, mo.sd), lo, hi)
        return jnp.where(jnp.isfinite(x_c), x_c, x)

    x = jax.lax.fori_loop(0, _COARSE_STEPS, coarse_step, x)
    F, f, fp, fpp, coef = _lane_terms(x, p, w, m, inv_s, sign, None, T)
    h = _halley_step(F, f, fp)
    C = jnp.abs(fpp / (6.0 * f) - (fp / (2.0 * f)) ** 2)
    small = (f * C * jnp.abs(h) ** 3 <= jnp.maximum(16.0 * eps, _TOL_RES * p)) & (
        jnp.abs(F) <= _NEAR * p
    )
    conv = (jnp.abs(F) <= 4.0 * eps) | small
    # what the last step may have left: Halley's remainder near the root, else itself
    left = jnp.where(jnp.abs(F) <= _NEAR * p, C * jnp.abs(h) ** 3, jnp.abs(h))
    x_new = jnp.clip(x - h, lo, hi)
    x = jnp.where(jnp.isfinite(x_new), x_new, x)
    err, _ = _decay_error(coef / (f * mo.sd), T.shape[1])
    return sign * x, conv & jnp.isfinite(x), left / mo.sd, err


def _series_cdf(a, z):
    r"""``(F, g)`` of the Legendre series ``g(z) = sum_n a_n P_n(z)`` at ``z``:
    ``F = (1/2) int_{-1}^z g``, by ``int_{-1}^z P_n = (P_{n+1} - P_{n-1}) / (2n + 1)``."""
    N = a.shape[0]
    p_prev, p_n = jnp.ones_like(z), z
    F = a[0] * (z + 1.0)
    g = a[0] + a[1] * z
    for n in range(1, N):
        p_next = ((2 * n + 1) * z * p_n - n * p_prev) / (n + 1)
        F = F + a[n] * (p_next - p_prev) / (2 * n + 1)
        if n + 1 < N:
            g = g + a[n + 1] * p_next
        p_prev, p_n = p_n, p_next
    return 0.5 * F, g


def _tau_quantiles(levels, wq, tau0, c, log_z, sd, log_post, N: int):
    r"""Quantiles of ``p(tau | y)`` and their error estimates in sds, ``([Q], [Q])``.

    Safeguarded Newton on the CDF of the degree ``N - 1`` interpolant of the weights (its
    Legendre series in ``z = 2u - 1``) starts ``tau_q``; three Newton steps on the CDF from
    fresh rules (16, 16, then ``N`` nodes) on the shorter side of ``u_q`` finish, as the
    interpolant is only half as accurate as the rule; the third brings the result to
    round-off, so it does not depend on the chunk's rounding. Error: that rule's
    coefficient estimate plus Newton's remainder ``|f'/f| h^2 / 2``, both over ``f(tau_q)``
    in sds.
    """
    dtype = wq.dtype
    z_nodes = jnp.asarray(2.0 * legendre_nodes(N)[0] - 1.0, dtype)[::-1]  # increasing
    a = jnp.asarray(legendre_matrix(N), dtype) @ wq  # a_0 = sum w = 1
    w_up = wq[::-1]
    cum = jnp.concatenate([jnp.zeros(1, dtype), jnp.cumsum(w_up) - 0.5 * w_up, jnp.ones(1, dtype)])
    z_ext = jnp.concatenate([-jnp.ones(1, dtype), z_nodes, jnp.ones(1, dtype)])

    def solve(p):
        def newton(_, st):
            z, lo, hi = st
            F, g = _series_cdf(a, z)
            lo, hi = jnp.where(F < p, z, lo), jnp.where(F < p, hi, z)
            zn = z - (F - p) / (0.5 * g)
            ok = (zn > lo) & (zn < hi) & jnp.isfinite(zn)
            return jnp.where(ok, zn, 0.5 * (lo + hi)), lo, hi

        # bracketed by the nodes around the level (by their cumulative weights), widened by one
        k = jnp.clip(jnp.searchsorted(cum, p), 1, cum.shape[0] - 1)
        lo, hi = z_ext[jnp.maximum(k - 2, 0)], z_ext[jnp.minimum(k + 1, cum.shape[0] - 1)]
        start = (jnp.clip(jnp.interp(p, cum, z_ext), lo, hi), lo, hi)
        return jax.lax.fori_loop(0, _TAU_Q_STEPS, newton, start)[0]

    z = jax.vmap(solve)(levels)
    tau_q = tau0 + c * (1.0 + z) / (1.0 - z)
    lower = levels <= 0.5

    def correct(tau_q, n: int):
        """One Newton step on the CDF from an ``n``-node rule on the shorter side of
        ``tau_q``: ``[0, u_q]`` below the median, ``[u_q, 1]`` above it."""
        u_q = (tau_q - tau0) / (c + tau_q - tau0)
        om_q = c / (c + tau_q - tau0)
        u_m, om_m, W, T_m = (jnp.asarray(x, dtype) for x in legendre_nodes(n))
        span = jnp.where(lower, u_q, om_q)[:, None]
        u = jnp.where(lower[:, None], 0.0, u_q[:, None]) + span * u_m
        om = jnp.where(lower[:, None], 1.0 - u_q[:, None] * u_m, om_q[:, None] * om_m)
        lp = jax.vmap(jax.vmap(log_post))(tau0 + c * u / om)
        log_f = lp + jnp.log(c) - 2.0 * jnp.log(om) + jnp.log(W * span) - log_z
        f = jnp.exp(jnp.where(jnp.isnan(log_f), -jnp.inf, log_f))  # [Q, N]
        mass = jnp.sum(f, axis=1)
        resid = jnp.where(lower, mass - levels, 1.0 - levels - mass)  # F(tau_q) - p
        dlp = jax.vmap(jax.value_and_grad(log_post))(tau_q)
        dens = jnp.exp(dlp[0] - log_z)
        h = resid / dens
        sub_err = _decay_error(T_m @ f.T, n)[0]
        return tau_q - h, (sub_err / dens + 0.5 * jnp.abs(dlp[1]) * h * h) / sd

    first = min(_TAU_Q_FIRST, N)
    tau_q = jax.lax.fori_loop(0, 2, lambda _, t: correct(t, first)[0], tau_q)
    tau_q, err = correct(tau_q, N)
    return tau_q, jnp.where(jnp.isnan(err), jnp.inf, err)


class _Mixtures(NamedTuple):
    """The ``M = J + 2`` posterior mixtures of one dataset (mu, theta_new, theta_1..J) on
    the nodes: weights ``w [K]``; components' offsets ``d`` from ``ref [M]`` and sds ``s``,
    ``[K, M]``; their moments ``mo`` ``[M]``; ``live [M]`` (False for padded groups)."""

    w: jnp.ndarray
    d: jnp.ndarray
    s: jnp.ndarray
    ref: jnp.ndarray
    mo: _Moments
    live: jnp.ndarray


def _nodes_fit(
    y, sigma2, mask, threshold, tau_prior: TauPrior, mu_prior: MuPrior, setup, N: int, levels
):
    r"""Everything of :func:`fit_dataset_legendre` but the mixtures' quantiles: a
    :class:`DatasetFit` (those quantiles 0, its status and error without them) and the
    :class:`_Mixtures` they are solved on.

    .. math::
        E[g] = \sum_k w_k\, g(\tau_k),\qquad
        w_k \propto W_k\, p(\tau_k)\, p(y \mid \tau_k)\, c / (1 - u_k)^2
    """
    dtype = y.dtype
    tau0, c, setup_ok = setup
    u_np, om_np, w_np, T_np = legendre_nodes(N)
    u, om = jnp.asarray(u_np, dtype), jnp.asarray(om_np, dtype)
    W, T = jnp.asarray(w_np, dtype), jnp.asarray(T_np, dtype)
    tau = tau0 + c * u / om
    tau2 = tau * tau
    cond = jax.vmap(lambda t2: mu_given_tau(t2, y, sigma2, mask, mu_prior))(tau2)
    log_joint = tau_prior.log_density(tau) + cond.log_lik
    # dtau/du = c / (1 - u)^2
    log_f = log_joint + jnp.log(c) - 2.0 * jnp.log(om) + jnp.log(W)
    finite = jnp.all(jnp.isfinite(log_f))
    log_z = logsumexp(jnp.where(jnp.isnan(log_f), -jnp.inf, log_f))
    w = jnp.exp(log_f - log_z)
    wq = jnp.where(w > 0, w, 0.0)

    def mix(m, v):
        """Mean, variance, P(> 0), the centred moments' integrands, the offsets from the
        heaviest component (keeps float32's digits) and sds of ``sum_k w_k N(m_k, v_k)``."""
        ref = m[jnp.argmax(wq)]
        d = m - ref
        mean_d = jnp.sum(wq * d)
        dc = d - mean_d
        var = jnp.sum(wq * (v + dc * dc))
        above = _Phi((m - threshold) * jax.lax.rsqrt(v))
        p = jnp.clip(jnp.sum(wq * above), 0.0, 1.0)
        cols = (dc * jax.lax.rsqrt(var), 0.5 * (v + dc * dc - var) / var, above - p)
        return ref + mean_d, var, p, cols, ref, d, jnp.sqrt(v)

    comp = mixture_components(tau2, cond.mean, cond.var, y, sigma2)
    mu_ = mix(comp.mu_mean, comp.mu_var)
    new_ = mix(comp.mu_mean, comp.new_var)
    th_ = jax.vmap(mix, in_axes=(1, 1), out_axes=(0, 0, 0, 1, 0, 1, 1))(
        comp.theta_mean, comp.theta_var
    )
    # the M = J + 2 mixtures in a row: mu, theta_new, then each theta_j
    m_mean, m_var, m_p = (jnp.concatenate([mu_[i][None], new_[i][None], th_[i]]) for i in range(3))
    live = jnp.concatenate([jnp.ones(2, bool), mask])
    t_mean = jnp.sum(wq * tau)
    tc = tau - t_mean
    t_var = jnp.sum(wq * tc * tc)
    tau_cols = (tc * jax.lax.rsqrt(t_var), 0.5 * (tc * tc - t_var) / t_var)

    # integrands (times the weights) whose Legendre coefficients give the error estimate;
    # theta_new's mean integrand is mu's
    cols = jnp.concatenate(
        [
            jnp.ones((N, 1), dtype),
            jnp.stack(tau_cols + mu_[3] + new_[3][1:], axis=1),
        ]
        + [jnp.where(mask[None, :], col, 0.0) for col in th_[3]],
        axis=1,
    )
    err, _ = _decay_error(T @ (wq[:, None] * cols), N)

    def log_density_tau(t):
        return tau_prior.log_density(t) + mu_given_tau(t * t, y, sigma2, mask, mu_prior).log_lik

    Q = 0 if levels is None else levels.shape[0]
    if Q:
        tau_q, tau_q_err = _tau_quantiles(
            levels, wq, tau0, c, log_z, jnp.sqrt(t_var), log_density_tau, N
        )
        err = jnp.concatenate([err, tau_q_err])
    else:
        tau_q = jnp.zeros((1,), dtype)  # lax.map cannot stack size-0 outputs

    # the coefficients' decay cannot see a singularity close to the nodes: bound it apart
    near = _singular_error(
        _singular_points(sigma2, mask, tau_prior, mu_prior),
        tau0,
        c,
        jax.vmap(log_density_tau),
        log_z,
        N,
    )
    error = jnp.maximum(jnp.max(jnp.where(jnp.isnan(err), jnp.inf, err)), near)

    nodes = _Nodes(tau, log_joint)  # the fields of a TauGrid that tau_mode reads
    mode, mode_ok = tau_mode(nodes, log_density_tau)  # type: ignore[arg-type]
    proper = bool(tau_prior.proper and mu_prior.proper)
    log_ev = log_z if proper else jnp.full((), jnp.nan, dtype)

    yes = jnp.array(True)
    yes_j = jnp.ones(y.shape, bool)
    q0 = jnp.zeros((m_mean.shape[0], max(Q, 1)), dtype)

    def marginal(i, q):
        return Marginal(m_mean[i], jnp.sqrt(m_var[i]), q, m_p[i], yes, yes)

    goal = LEGENDRE_GOAL[jnp.finfo(dtype).bits]
    ok = (
        setup_ok
        & finite
        & mode_ok
        & (error <= goal)
        & jnp.isfinite(t_var)
        & (t_var > 0)
        & jnp.all(jnp.where(live, jnp.isfinite(m_var), True))
    )
    fit = DatasetFit(
        mu=marginal(0, q0[0]),
        tau=Marginal(t_mean, jnp.sqrt(t_var), tau_q, jnp.ones((), dtype), yes, yes),
        theta=Marginal(m_mean[2:], jnp.sqrt(m_var[2:]), q0[2:], m_p[2:], yes_j, yes_j),
        theta_new=marginal(1, q0[1]),
        tau_mode=mode,
        log_evidence=log_ev,
        grid_error=error,
        status=jnp.where(ok, 0, 1).astype(jnp.int32),
        theta_only=jnp.array(False),
    )
    if not Q:
        return fit, None
    ref = jnp.concatenate([mu_[4][None], new_[4][None], th_[4]])
    d, s = (jnp.concatenate([mu_[i][:, None], new_[i][:, None], th_[i]], 1) for i in (5, 6))
    mo = jax.vmap(_mixture_moments, in_axes=(None, 1, 1))(wq, d, s)
    return fit, _Mixtures(wq, d, s, ref, mo, live)


def _with_quantiles(fit: DatasetFit, mx: _Mixtures, q, conv, left, err) -> DatasetFit:
    """``fit`` with the mixtures' quantiles ``q [Q, M]`` (offsets from ``mx.ref``), their
    convergence and error estimates joining its status and error."""
    q = (mx.ref + q).T  # [M, Q]
    live = mx.live[None, :]
    error = jnp.maximum(
        fit.grid_error,
        jnp.max(jnp.where(live, jnp.where(jnp.isnan(err), jnp.inf, jnp.maximum(err, left)), 0.0)),
    )
    goal = LEGENDRE_GOAL[jnp.finfo(q.dtype).bits]
    ok = (fit.status == 0) & jnp.all(jnp.where(live, conv, True)) & (error <= goal)
    return fit._replace(
        mu=fit.mu._replace(quantiles=q[0]),
        theta=fit.theta._replace(quantiles=q[2:]),
        theta_new=fit.theta_new._replace(quantiles=q[1]),
        grid_error=error,
        status=jnp.where(ok, 0, 1).astype(jnp.int32),
    )


def fit_dataset_legendre(
    y,
    sigma2,
    mask,
    threshold,
    tau_prior: TauPrior,
    mu_prior: MuPrior,
    setup,
    N: int,
    levels=None,
) -> DatasetFit:
    r"""Means, sds, quantiles, ``P(> 0)``, tau mode and log evidence of one standardised
    dataset; ``status`` 1 (``grid_unresolved``) where the error estimate does not certify it.

    Args:
        y, sigma2, mask: ``[J]`` standardised data.
        threshold: where ``P(. > 0)`` sits in standard units, scalar.
        tau_prior, mu_prior: priors for the standardised data (scalar leaves).
        setup: ``(tau0, c, ok)`` from :func:`_setup`.
        N: Gauss-Legendre nodes (static).
        levels: quantile levels ``[Q]`` (None or ``Q = 0``: moments only; the quantiles
            are then one placeholder level).
    """
    one = jax.tree.map(lambda a: a[None], (y, sigma2, mask, threshold, tau_prior, mu_prior, setup))
    return jax.tree.map(lambda a: a[0], _fit_chunk(one, N, levels))


def _fit_chunk(args, N: int, levels) -> DatasetFit:
    """:func:`fit_dataset_legendre` over a chunk (leading axis of ``args``): the nodes per
    dataset, then every mixture's quantiles at once with the datasets on the last axis,
    where XLA vectorises the loops."""
    y, sigma2, mask, threshold, tau_prior, mu_prior, setup = args
    fit, mx = jax.vmap(functools.partial(_nodes_fit, N=N, levels=levels))(
        y, sigma2, mask, threshold, tau_prior, mu_prior, setup
    )
    if levels is None or levels.shape[0] == 0:
        return fit
    # components first, then levels, mixtures and datasets: [K, 1, M, B]
    qs = _mixture_quantiles(
        levels[:, None, None],
        mx.w.T[:, None, None, :],
        jnp.moveaxis(mx.d, 0, -1)[:, None],
        jnp.moveaxis(mx.s, 0, -1)[:, None],
        jax.tree.map(lambda a: a.T, mx.mo),
        legendre_nodes(N)[3],
    )
    return jax.vmap(_with_quantiles)(fit, mx, *(jnp.moveaxis(a, -1, 0) for a in qs))


# jitted inside the kernel so the block and chunk shapes share one trace of a chunk's body
_setup_traced = jax.jit(_setup)
_fit_chunk_traced = jax.jit(_fit_chunk, static_argnums=1)


class _Nodes(NamedTuple):
    """The two fields of a grid :func:`hierjax.inference.summaries.tau_mode` reads (nodes from large
    tau to small)."""

    tau_fine: jnp.ndarray
    log_joint_fine: jnp.ndarray


def _map_chunks(f, xs, batch: int):
    """``f`` over ``xs``'s leading axis in chunks of ``batch`` (``f`` takes a chunk): a
    ``lax.map`` over the whole chunks, then the rest in one call."""
    B = jax.tree.leaves(xs)[0].shape[0]
    n = B // batch
    whole = jax.tree.map(lambda a: a[: n * batch].reshape((n, batch) + a.shape[1:]), xs)
    out = jax.tree.map(lambda a: a.reshape((n * batch,) + a.shape[2:]), jax.lax.map(f, whole))
    if n * batch == B:
        return out
    rest = f(jax.tree.map(lambda a: a[n * batch :], xs))
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, rest)


@register
@functools.partial(jax.jit, static_argnames=("N", "chunk"))
def fit_legendre(
    y, sigma2, mask, threshold, tau_prior, mu_prior, levels=None, *, N: int, chunk: int
) -> DatasetFit:
    """:func:`fit_dataset_legendre` over a batch: ``[B, J]`` inputs, ``[B]`` prior leaves,
    quantile ``levels`` ``[Q]`` shared (None: moments only).

    Two ``lax.map`` passes: the map's setup, then the nodes. In one pass XLA fused the
    setup into every node's loop and recomputed it per node. Each chunk of the second is
    :func:`_fit_chunk`.
    """
    batch = min(chunk, y.shape[0])
    setup = jax.lax.map(
        lambda a: _setup_traced(*a), (y, sigma2, mask, tau_prior, mu_prior), batch_size=batch
    )
    moments_only = levels is None or levels.shape[0] == 0
    lv = None if moments_only else levels
    args = (y, sigma2, mask, threshold, tau_prior, mu_prior, setup)
    out = _map_chunks(lambda a: _fit_chunk_traced(a, N, lv), args, batch)
    if not moments_only:
        return out

    def drop(m: Marginal):
        return m._replace(quantiles=m.quantiles[..., :0])

    return out._replace(
        mu=drop(out.mu), tau=drop(out.tau), theta=drop(out.theta), theta_new=drop(out.theta_new)
    )


def _integer(v) -> bool:
    return v == math.inf or float(v).is_integer()


def legendre_applies(n_groups, tau_prior: TauPrior, mu_prior: MuPrior, dtype):
    """Datasets :func:`hierjax.fit` tries on the Legendre nodes first, ``[B]``
    bool: a uniform, half-Cauchy or half-t (integer nu) tau prior, whose algebraic tail is a
    polynomial in ``1 - u``, and ``alpha >= 3``; float64 only. Light tails (half-normal, exponential) are left
    out: ``e^{-tau^2}`` is not analytic at ``u = 1``, its coefficients decay ever more
    slowly, and the estimate's geometric extrapolation missed a tau sd 300-fold there."""
    n_groups = np.asarray(n_groups)
    known = type(tau_prior) in (Uniform, HalfCauchy) or (
        type(tau_prior) is HalfT and float(tau_prior.df).is_integer()
    )
    if not known or type(mu_prior) not in (FlatMu, NormalMu):
        return np.zeros(n_groups.shape, bool)
    if not _integer(tau_prior.tail_power) or not _integer(tau_prior.origin_power):
        return np.zeros(n_groups.shape, bool)
    base = 1.0 if isinstance(mu_prior, NormalMu) else 2.0
    alpha = n_groups - base + tau_prior.tail_power
    # float32 is left to the grids: its errors are round-off, which the coefficients'
    # decay does not see (a screen against quad found a certified 1.8e-4 sd miss)
    return (alpha >= LEGENDRE_MIN_ALPHA) & (np.finfo(dtype).bits > 32)
