r"""Posterior summaries of one dataset from its tau grid.

Given tau, ``mu``, each ``theta_j`` and ``theta_new`` are normal, so each marginal
is a normal mixture over the tau nodes with weights ``w_k``:

.. math::
    p(\phi \mid y) = \sum_k w_k\, N(\phi \mid m_k, s_k^2),\quad
    E[\phi] = \sum_k w_k m_k,\quad
    Var[\phi] = \sum_k w_k s_k^2 + \sum_k w_k (m_k - E[\phi])^2

    F(q) = \sum_k w_k \Phi\big((q - m_k)/s_k\big),\qquad
    P(\phi > c) = \sum_k w_k \Phi\big((m_k - c)/s_k\big)

Quantiles solve ``F(q) = p`` by Newton's method safeguarded by bisection inside the
bracket ``[min_k q_k, max_k q_k]`` of the components' own quantiles. The tau
marginal uses the Chebyshev interpolant of its density on the grid (its integral
is the tau CDF). Moments that do not exist (heavy tails) are ``nan`` (means of
symmetric-ish parameters) or ``inf`` (tau's mean, every sd) with the matching
``*_exists`` flag False: never a grid-dependent number.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

from hierjax.grid import TauGrid, chebyshev_density_coefficients, grid_tau_of_z
from hierjax.quadrature import cdf_coefficients, chebyshev_eval, clenshaw_curtis

__all__ = ["Marginal", "mixture_summary", "mixture_quantile", "mixture_cdf", "tau_summary",
           "tau_quantile", "tau_mode"]

_MAX_ITER = 60


class Marginal(NamedTuple):
    """Summary of one scalar posterior marginal (leading axes as documented by the caller).

    Attributes:
        mean: posterior mean; ``nan`` (``inf`` for tau) where it does not exist.
        sd: posterior sd; ``inf`` where it does not exist.
        quantiles: posterior quantiles at the requested levels, trailing axis ``[Q]``.
        p_gt0: ``P(parameter > 0 | y)``.
        mean_exists: whether the posterior mean is finite (a property of the
            model: priors and number of groups), bool.
        sd_exists: whether the posterior variance is finite, bool.
    """

    mean: jnp.ndarray
    sd: jnp.ndarray
    quantiles: jnp.ndarray
    p_gt0: jnp.ndarray
    mean_exists: jnp.ndarray
    sd_exists: jnp.ndarray


def mixture_cdf(q, w, m, s):
    """``F(q) = sum_k w_k Phi((q - m_k)/s_k)``; ``w, m, s`` are ``[K]``, ``q`` scalar."""
    return jnp.sum(w * ndtr((q - m) / s))


def mixture_quantile(p, w, m, s):
    r"""Solve ``F(q) = p`` for a normal mixture (safeguarded Newton).

    Args:
        p: level in (0, 1), scalar.
        w: weights summing to one, ``[K]``.
        m, s: component means and sds, ``[K]``.

    Returns:
        ``(q, converged)``.
    """
    dtype = m.dtype
    eps = jnp.finfo(dtype).eps
    zp = ndtri(p)
    qk = m + s * zp
    live = w > eps * 1e-3
    lo = jnp.min(jnp.where(live, qk, jnp.inf))
    hi = jnp.max(jnp.where(live, qk, -jnp.inf))
    x = jnp.clip(jnp.sum(jnp.where(live, w * qk, 0.0)) / jnp.sum(jnp.where(live, w, 0.0)), lo, hi)
    scale = jnp.sum(w * s)

    def cond(state):
        i, _, _, _, done = state
        return (i < _MAX_ITER) & ~done

    def body(state):
        i, x, lo, hi, _ = state
        t = (x - m) / s
        F = jnp.sum(w * ndtr(t)) - p
        f = jnp.sum(w * jnp.exp(-0.5 * t * t) / s) * 0.3989422804014327
        lo = jnp.where(F < 0, x, lo)
        hi = jnp.where(F < 0, hi, x)
        newton = x - F / f
        ok = (newton > lo) & (newton < hi) & jnp.isfinite(newton)
        x_new = jnp.where(ok, newton, 0.5 * (lo + hi))
        # Round-off in F is ~K eps: stop when the step or the bracket is at that level.
        tol = 64.0 * eps * (jnp.abs(x_new) + scale)
        done = (jnp.abs(x_new - x) <= tol) | (hi - lo <= tol) | (jnp.abs(F) <= 16.0 * eps)
        return i + 1, x_new, lo, hi, done

    i, x, lo, hi, done = jax.lax.while_loop(cond, body, (0, x, lo, hi, jnp.array(False)))
    return x, done


def mixture_summary(w, m, s, levels, threshold, mean_exists, sd_exists):
    """Summary of the normal mixture ``sum_k w_k N(m_k, s_k^2)``.

    Args:
        w: weights, ``[K]``.
        m, s: component means and sds, ``[K]``.
        levels: quantile levels, ``[Q]``.
        threshold: ``c`` in ``P(phi > c)``, scalar (``0`` on the user's scale).
        mean_exists, sd_exists: scalar bools (see :class:`Marginal`).

    Returns:
        ``(Marginal, quantiles_converged)`` with scalar fields and ``quantiles[Q]``.
    """
    mean = jnp.sum(w * m)
    var = jnp.sum(w * s * s) + jnp.sum(w * (m - mean) ** 2)
    q, conv = jax.vmap(lambda p: mixture_quantile(p, w, m, s))(levels)
    p_gt = jnp.sum(w * ndtr((m - threshold) / s))
    mean = jnp.where(mean_exists, mean, jnp.nan)
    sd = jnp.where(sd_exists, jnp.sqrt(var), jnp.inf)
    return Marginal(mean, sd, q, p_gt, mean_exists, sd_exists), jnp.all(conv)


def tau_quantile(p, grid: TauGrid, coef_cdf, coef_pdf):
    """Solve ``F(tau) = p`` on the Chebyshev CDF in ``z``; returns ``(tau, converged)``."""
    dtype = grid.tau.dtype
    eps = jnp.finfo(dtype).eps
    # Start from the node where the discrete cumulative weight crosses p (z decreasing in k).
    cum = jnp.cumsum(jnp.exp(grid.log_weight)[::-1])
    z_inc = jnp.asarray(grid_z_nodes(grid), dtype)[::-1]
    j = jnp.clip(jnp.searchsorted(cum, p), 0, z_inc.shape[0] - 1)
    x = z_inc[j]

    def cond(state):
        i, _, _, _, done = state
        return (i < _MAX_ITER) & ~done

    def body(state):
        i, z, lo, hi, _ = state
        F = chebyshev_eval(coef_cdf, z) - p
        f = chebyshev_eval(coef_pdf, z)
        lo = jnp.where(F < 0, z, lo)
        hi = jnp.where(F < 0, hi, z)
        newton = z - F / f
        ok = (f > 0) & (newton > lo) & (newton < hi)
        z_new = jnp.where(ok, newton, 0.5 * (lo + hi))
        done = (jnp.abs(z_new - z) <= 64.0 * eps) | (hi - lo <= 64.0 * eps) | (jnp.abs(F) <= 16.0 * eps)
        return i + 1, z_new, lo, hi, done

    one = jnp.ones((), dtype)
    _, z, _, _, done = jax.lax.while_loop(cond, body, (0, x, -one, one, jnp.array(False)))
    tau, _, _, _ = grid_tau_of_z(z, grid.x0, grid.u_lo, grid.one_minus_u_hi)
    return tau, done


def grid_z_nodes(grid: TauGrid):
    """The Clenshaw-Curtis nodes ``z_k`` of ``grid`` (``cos(k pi / n)``)."""
    return clenshaw_curtis(grid.tau.shape[0] - 1)[0]


def tau_summary(grid: TauGrid, levels, mean_exists, sd_exists):
    """Summary of ``p(tau | y)``: moments on the grid, quantiles from the Chebyshev CDF.

    Returns:
        ``(Marginal, quantiles_converged)``; ``p_gt0`` is 1 (tau > 0 almost surely).
    """
    w = jnp.exp(grid.log_weight)
    mean = jnp.sum(w * grid.tau)
    var = jnp.sum(w * (grid.tau - mean) ** 2)
    coef_pdf = chebyshev_density_coefficients(grid)
    coef_cdf = cdf_coefficients(coef_pdf)
    q, conv = jax.vmap(lambda p: tau_quantile(p, grid, coef_cdf, coef_pdf))(levels)
    mean = jnp.where(mean_exists, mean, jnp.inf)
    sd = jnp.where(sd_exists, jnp.sqrt(var), jnp.inf)
    one = jnp.ones((), grid.tau.dtype)
    return Marginal(mean, sd, q, one, mean_exists, sd_exists), jnp.all(conv)


def tau_mode(grid: TauGrid, log_density_tau):
    r"""The posterior mode of tau, ``argmax_{tau >= 0} log p(tau) + log p(y | tau)``.

    The best grid node is refined by safeguarded Newton in ``x = log tau`` between its
    neighbours, then compared with ``tau = 0`` itself (the mode is 0 when
    ``p(tau | y)`` is largest there, as for the eight schools under a uniform prior).

    Args:
        grid: the dataset's TauGrid.
        log_density_tau: ``tau -> log p(tau) + log p(y | tau)`` (scalar function).
    """
    g_nodes = jax.vmap(log_density_tau)(grid.tau)
    g_nodes = jnp.where(jnp.isnan(g_nodes), -jnp.inf, g_nodes)
    k = jnp.argmax(g_nodes)
    x = jnp.log(grid.tau)
    K = x.shape[0]
    # nodes run from large tau (k = 0) to small tau (k = K - 1)
    hi = jnp.where(k > 0, x[jnp.maximum(k - 1, 0)], x[k] + 1.0)
    lo = jnp.where(k < K - 1, x[jnp.minimum(k + 1, K - 1)], x[k] - 30.0)

    def g(xx):
        return log_density_tau(jnp.exp(xx))

    dg = jax.grad(g)
    d2g = jax.grad(dg)

    def body(_, state):
        xx, lo, hi = state
        a, c = dg(xx), d2g(xx)
        lo = jnp.where(a > 0, xx, lo)
        hi = jnp.where(a > 0, hi, xx)
        newton = xx - a / c
        ok = (c < 0) & (newton >= lo) & (newton <= hi) & jnp.isfinite(newton)
        return jnp.where(ok, newton, 0.5 * (lo + hi)), lo, hi

    xx, _, _ = jax.lax.fori_loop(0, 40, body, (x[k], lo, hi))
    g_inner = jnp.maximum(g(xx), g_nodes[k])
    x_best = jnp.where(g(xx) >= g_nodes[k], xx, x[k])
    g_zero = log_density_tau(jnp.zeros((), x.dtype))
    return jnp.where(g_zero >= g_inner, 0.0, jnp.exp(x_best))
