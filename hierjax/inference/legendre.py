r"""Moments on Gauss-Legendre nodes placed where ``p(tau | y)`` lives (issue 22).

For one standardised dataset the posterior of ``x = log tau``, ``h(x) = log p(tau) +
log p(y | tau) + x``, is located (its mode ``x_m``, by Newton steps with ``jax.grad``) and
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
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erfc, logsumexp

from hierjax.engine.cache import register
from hierjax.inference.summaries import Marginal, tau_mode
from hierjax.model.conditionals import mixture_components, mu_given_tau
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
    "LegendreFit",
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
_SQRT_HALF = math.sqrt(0.5)


class LegendreFit(NamedTuple):
    """Moments of one dataset on the Legendre nodes (fields as :class:`hierjax.engine.fitting.DatasetFit`,
    quantiles ``[..., 0]``); ``status`` is 1 (``grid_unresolved``) where not certified."""

    mu: Marginal
    tau: Marginal
    theta: Marginal
    theta_new: Marginal
    tau_mode: jnp.ndarray
    log_evidence: jnp.ndarray
    grid_error: jnp.ndarray
    status: jnp.ndarray
    theta_only: jnp.ndarray


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


def _Phi(t):
    return 0.5 * erfc(-t * _SQRT_HALF)


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

    dh = jax.grad(h)

    def d12(x):
        return jax.jvp(dh, (x,), (jnp.ones_like(x),))

    n_obs = jnp.maximum(jnp.sum(mask), 1).astype(dtype)
    ybar = jnp.sum(jnp.where(mask, y, 0.0)) / n_obs
    spread = jnp.sum(jnp.where(mask, (y - ybar) ** 2, 0.0)) / n_obs
    s2bar = jnp.sum(jnp.where(mask, sigma2, 0.0)) / n_obs
    centre = 0.5 * jnp.log(spread + s2bar / n_obs)
    scout = jnp.clip(centre + jnp.linspace(-12.0, 12.0, _SCOUT, dtype=dtype), x_min, x_max)
    hs = jax.vmap(h)(scout)
    x = scout[jnp.argmax(jnp.where(jnp.isnan(hs), -jnp.inf, hs))]

    # Newton on h' with steps of at most 2 (uphill by the gradient's sign where h'' >= 0)
    for _ in range(_MODE_STEPS):
        g1, g2 = d12(x)
        step = jnp.where(g2 < 0, -g1 / g2, jnp.sign(g1) * 2.0)
        x = jnp.clip(x + jnp.clip(step, -2.0, 2.0), x_min, x_max)
    g1, g2 = d12(x)
    width = jax.lax.rsqrt(jnp.maximum(-g2, 1e-30))
    # the map needs the mode to a fraction of its width only
    mode_ok = (g2 < 0) & (jnp.abs(g1 / g2) < 0.05 * width) & (x > x_min) & (x < x_max)
    x_m, h_m = x, h(x)
    target = h_m - _DROP

    # the cut: Newton on h(x) = target from the normal approximation's point
    xc = x_m - jnp.sqrt(2.0 * _DROP) * width
    for _ in range(_CUT_STEPS):
        hv, g = jax.value_and_grad(h)(xc)
        step = -(hv - target) / jnp.maximum(g, 1e-3)
        xc = jnp.clip(xc + jnp.clip(step, -40.0, 0.5 * (x_m - xc)), x_min, x_m)
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


def fit_dataset_legendre(
    y, sigma2, mask, threshold, tau_prior: TauPrior, mu_prior: MuPrior, setup, N: int
) -> LegendreFit:
    r"""Means, sds, ``P(> 0)``, tau mode and log evidence of one standardised dataset.

    .. math::
        E[g] = \sum_k w_k\, g(\tau_k),\qquad
        w_k \propto W_k\, p(\tau_k)\, p(y \mid \tau_k)\, c / (1 - u_k)^2

    Args:
        y, sigma2, mask: ``[J]`` standardised data.
        threshold: where ``P(. > 0)`` sits in standard units, scalar.
        tau_prior, mu_prior: priors for the standardised data (scalar leaves).
        setup: ``(tau0, c, ok)`` from :func:`_setup`.
        N: Gauss-Legendre nodes (static).
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
        """Mean, variance, P(> 0) and the centred integrands of ``sum_k w_k N(m_k, v_k)``."""
        ref = m[jnp.argmax(wq)]  # about the heaviest component: keeps float32's digits
        d = m - ref
        mean_d = jnp.sum(wq * d)
        dc = d - mean_d
        var = jnp.sum(wq * (v + dc * dc))
        above = _Phi((m - threshold) * jax.lax.rsqrt(v))
        p = jnp.clip(jnp.sum(wq * above), 0.0, 1.0)
        cols = (dc * jax.lax.rsqrt(var), 0.5 * (v + dc * dc - var) / var, above - p)
        return ref + mean_d, var, p, cols

    mu_m, mu_v, mu_p, mu_cols = mix(cond.mean, cond.var)
    new_m, new_v, new_p, new_cols = mix(cond.mean, tau2 + cond.var)
    comp = mixture_components(tau2, cond.mean, cond.var, y, sigma2)
    th_m, th_v = comp.theta_mean, comp.theta_var
    th_mean, th_var, th_p, th_cols = jax.vmap(mix, in_axes=(1, 1), out_axes=(0, 0, 0, 1))(
        th_m, th_v
    )
    t_mean = jnp.sum(wq * tau)
    tc = tau - t_mean
    t_var = jnp.sum(wq * tc * tc)
    tau_cols = (tc * jax.lax.rsqrt(t_var), 0.5 * (tc * tc - t_var) / t_var)

    # integrands (times the weights) whose Legendre coefficients give the error estimate
    cols = jnp.concatenate(
        [
            jnp.ones((N, 1), dtype),
            jnp.stack(tau_cols + mu_cols + new_cols[1:2] + new_cols[2:], axis=1),
        ]
        + [jnp.where(mask[None, :], col, 0.0) for col in th_cols],
        axis=1,
    )
    coef = T @ (wq[:, None] * cols)
    err, _ = _decay_error(coef, N)

    def log_density_tau(t):
        return tau_prior.log_density(t) + mu_given_tau(t * t, y, sigma2, mask, mu_prior).log_lik

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
    # one placeholder level (lax.map cannot stack size-0 outputs), dropped by fit_legendre
    none = jnp.zeros((1,), dtype)
    th_none = jnp.zeros(y.shape + (1,), dtype)
    yes_j = jnp.ones(y.shape, bool)

    def marginal(m, v, p, q=none, exists=yes):
        return Marginal(m, jnp.sqrt(v), q, p, exists, exists)

    goal = LEGENDRE_GOAL[jnp.finfo(dtype).bits]
    ok = (
        setup_ok
        & finite
        & mode_ok
        & (error <= goal)
        & jnp.isfinite(t_var)
        & (t_var > 0)
        & jnp.isfinite(mu_v)
        & jnp.all(jnp.where(mask, jnp.isfinite(th_var), True))
    )
    status = jnp.where(ok, 0, 1).astype(jnp.int32)
    return LegendreFit(
        mu=marginal(mu_m, mu_v, mu_p),
        tau=marginal(t_mean, t_var, jnp.ones((), dtype)),
        theta=Marginal(th_mean, jnp.sqrt(th_var), th_none, th_p, yes_j, yes_j),
        theta_new=marginal(new_m, new_v, new_p),
        tau_mode=mode,
        log_evidence=log_ev,
        grid_error=error,
        status=status,
        theta_only=jnp.array(False),
    )


class _Nodes(NamedTuple):
    """The two fields of a grid :func:`hierjax.inference.summaries.tau_mode` reads (nodes from large
    tau to small)."""

    tau_fine: jnp.ndarray
    log_joint_fine: jnp.ndarray


@register
@functools.partial(jax.jit, static_argnames=("N", "chunk"))
def fit_legendre(
    y, sigma2, mask, threshold, tau_prior, mu_prior, *, N: int, chunk: int
) -> LegendreFit:
    """:func:`fit_dataset_legendre` over a batch: ``[B, J]`` inputs, ``[B]`` prior leaves.

    Two ``lax.map`` passes: the map's setup, then the nodes. In one pass XLA fused the
    setup into every node's loop and recomputed it per node.
    """
    batch = min(chunk, y.shape[0])
    setup = jax.lax.map(
        lambda a: _setup(*a), (y, sigma2, mask, tau_prior, mu_prior), batch_size=batch
    )

    def one(args):
        yb, sb, mb, cb, tp, mp, st = args
        return fit_dataset_legendre(yb, sb, mb, cb, tp, mp, st, N)

    out = jax.lax.map(
        one, (y, sigma2, mask, threshold, tau_prior, mu_prior, setup), batch_size=batch
    )

    def drop(m: Marginal):
        return m._replace(quantiles=m.quantiles[..., :0])

    return out._replace(
        mu=drop(out.mu), tau=drop(out.tau), theta=drop(out.theta), theta_new=drop(out.theta_new)
    )


def _integer(v) -> bool:
    return v == math.inf or float(v).is_integer()


def legendre_applies(n_groups, tau_prior: TauPrior, mu_prior: MuPrior, dtype):
    """Datasets :func:`hierjax.fit` tries on the Legendre nodes first (moments only), ``[B]``
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
