r"""The whole posterior, kept: distribution functions, intervals, predictive, shrinkage, pairs.

:func:`posterior` builds each dataset's tau grid once (the same grid as
:func:`hierjax.fit`) and keeps it in a :class:`Posterior`, so that anything can be
asked later, at any point, for any batch of datasets:

* :func:`pdf`, :func:`cdf`, :func:`quantile`, :func:`prob_greater` and :func:`interval`
  (central or shortest) for ``mu``, ``tau``, every ``theta_j``, ``theta_new``, a new
  observation ``y_new`` (with a given ``sigma_new``), the replicate ``y_rep_j`` of each
  group, and ``I2`` (Higgins and Thompson's heterogeneity);
* :func:`predictive_prob` and :func:`predictive_check` (posterior predictive p-values);
* :func:`shrinkage`, :func:`weights` (bayesmeta's ``weights`` and ``weights.theta``)
  and :func:`i2`;
* :func:`pairwise_prob`: ``P(theta_i > theta_j | y)`` for all pairs.

Given tau, ``mu``, ``theta_j``, ``theta_new``, ``y_new`` and ``y_rep_j`` are normal
(BDA3 sec. 5.4), so each marginal is a normal mixture over the tau nodes:

.. math::
    p(\phi \mid y) = \sum_k w_k N(\phi \mid m_k, s_k^2), \qquad
    \tilde y \mid \tau, y \sim N(\hat\mu, \tau^2 + V_\mu + \tilde\sigma^2), \qquad
    y^{rep}_j \mid \tau, y \sim N(E[\theta_j \mid \tau, y],
                                  Var[\theta_j \mid \tau, y] + \sigma_j^2)

The tau density is exact at any point, ``p(tau) p(y | tau) / p(y)`` (finite and
positive at ``tau = 0`` for a prior that is), and its CDF is the exact integral of the
Chebyshev interpolant of that density on the grid (:mod:`hierjax.inference.grid`).

Shortest intervals are highest-density intervals of a unimodal marginal: with
``l = Q(p)`` and ``u = Q(p + level)`` the width is smallest where ``f(l) = f(u)``,
found by safeguarded Newton in ``p`` (``d/dp log f(Q(p)) = (log f)'(l) / f(l)``).
For tau (and I^2) the interval is ``[0, Q(level)]`` when ``f(0) >= f(Q(level))``:
the density peaks at (or is largest near) zero, as for the eight schools under a
uniform prior.

Everything runs in standardised units (the data shifted by their Fisher-weighted
mean and divided by the geometric mean of sigma; :mod:`hierjax.engine.batch`) in
fixed-shape blocks, and is mapped back to the user's units on the host.

References:
    Gelman et al. (2013), *Bayesian Data Analysis*, 3rd ed., sec. 5.4-5.5.
    Röver (2020), Bayesian random-effects meta-analysis using the bayesmeta R
    package, *J. Stat. Softw.* 93(6) (shrinkage, weights, I^2).
    Higgins and Thompson (2002), Quantifying heterogeneity in a meta-analysis,
    *Stat. Med.* 21 (the typical within-study variance ``s^2``).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp, ndtr

from hierjax.engine import driver
from hierjax.engine.batch import InputError
from hierjax.engine.cache import register
from hierjax.engine.prepare import prepare
from hierjax.inference.grid import (
    TauGrid,
    grid_z_of_tau,
    tail_alpha,
    tau_grid,
)
from hierjax.inference.summaries import (
    Marginal,
    _barycentric,
    _Phi,
    mixture_mean_var,
    mixture_quantile,
    quantile_error,
    tau_cdf_nodes,
    tau_mean_var,
    tau_quantile,
)
from hierjax.model.conditionals import (
    MuGivenTau,
    mixture_components,
    mu_given_tau,
    mu_given_tau_near,
    reference_point,
)
from hierjax.model.priors import MuPrior, NormalMu, TauPrior
from hierjax.numerics.quadrature import clenshaw_curtis
from hierjax.numerics.solvers import iterate
from hierjax.status import DEFAULT_LEVELS, GOAL, ROUNDOFF_LIMIT, STATUS

__all__ = [
    "PARAMS",
    "I2Summary",
    "Moments",
    "Posterior",
    "PosteriorSummary",
    "PredictiveCheck",
    "Weights",
    "cdf",
    "difference_given_tau",
    "i2",
    "interval",
    "moments",
    "pairwise_prob",
    "pdf",
    "posterior",
    "predictive_check",
    "predictive_prob",
    "prob_greater",
    "quantile",
    "shrinkage",
    "summarize",
    "weights",
]

#: Parameters the distribution functions know. ``theta`` and ``y_rep`` are per group
#: (a ``J`` axis after ``B``); ``y_new`` needs ``sigma_new``.
PARAMS = ("mu", "tau", "theta", "theta_new", "y_new", "y_rep", "I2")
_LOCATION = ("mu", "theta", "theta_new", "y_new", "y_rep")  # shift and scale with the data
_GROUPED = ("theta", "y_rep")
_MAX_BLOCK = 1024  # datasets per compiled block
_MIN_BLOCK = 8  # small batches share one compiled shape
_MAX_ITER = 100
_SCAN = 8  # scan points of the shortest-interval search
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class Posterior(NamedTuple):
    """The posterior of ``B`` datasets, kept on their tau grids (standardised units).

    ``K = n + 1`` nodes of the n-rule (the normal mixtures), ``2n + 1`` of the 2n-rule
    (tau itself); ``J`` groups (padded, see ``mask``). Arrays are host NumPy arrays in
    the compute dtype unless said otherwise.

    Attributes:
        grid: each dataset's :class:`hierjax.inference.grid.TauGrid` with a leading ``B`` axis:
            ``tau [B, K]`` nodes, ``log_weight [B, K]`` normalised log weights,
            ``mu`` (``mean``, ``var``, ``log_lik`` of ``mu | tau_k, y``) ``[B, K]``
            (``mu_fine`` the same at the 2n-rule's nodes, ``[B, 2n + 1]``),
            ``tau_fine``, ``log_weight_fine``, ``density_z`` ``[B, 2n + 1]`` (the
            2n-rule; the Chebyshev interpolant of ``density_z`` integrates to the tau
            CDF), ``log_evidence [B]`` (``log int p(tau) p(y | tau) dtau``, normaliser
            of the exact tau density), map parameters ``x0``, ``u_lo``,
            ``one_minus_u_hi`` ``[B]``, and the diagnostics ``error``, ``truncated``,
            ``converged``, ``roundoff`` ``[B]``.
        y: standardised estimates ``(y - loc) / scale``, ``[B, J]`` (0 where padded);
            ``J`` is the input's own width (the columns of a ``[B, J]`` array, the
            longest dataset of a ragged list), as in every result.
        sigma2: standardised variances ``(sigma / scale)^2``, ``[B, J]`` (1 where padded).
        mask: real groups, ``[B, J]`` bool.
        tau_prior: the tau prior for the standardised data (leaves ``[B]``).
        mu_prior: the mu prior for the standardised data (leaves ``[B]``).
        loc: the shift of each dataset (Fisher-weighted mean), float64 ``[B]``.
        scale: the unit of each dataset (geometric mean of sigma), float64 ``[B]``.
        alpha: tail index, ``p(tau | y) ~ tau^-(alpha + 1)``, float64 ``[B]``.
        n_groups: real groups per dataset, ``[B]``.
        grid_error: nested-rule error estimate of the tau quadrature, ``[B]``.
        status: :data:`hierjax.engine.fitting.STATUS` bits per dataset, int32 ``[B]``.
        names: dataset labels, length ``B``.
        groups: group labels per dataset (or None), length ``B``.
        kernel_groups: the width the kernels run at (a power of two, at least ``J``:
            nearby widths share compiled kernels); ``y``, ``sigma2`` and ``mask`` are
            padded to it for each computation and the results trimmed back.
    """

    grid: TauGrid
    y: np.ndarray
    sigma2: np.ndarray
    mask: np.ndarray
    tau_prior: TauPrior
    mu_prior: MuPrior
    loc: np.ndarray
    scale: np.ndarray
    alpha: np.ndarray
    n_groups: np.ndarray
    grid_error: np.ndarray
    status: np.ndarray
    names: tuple
    groups: tuple
    kernel_groups: int

    def to_arrow(self, params=None, levels=DEFAULT_LEVELS):
        """The tidy table of :func:`summarize` at ``levels`` as a ``pyarrow.Table``: the
        schema of :meth:`hierjax.Fit.to_arrow`, one row per dataset and parameter.

        ``params``: which of ``mu, tau, theta, theta_new, i2`` (default: all but i2; i2
        rows as ``hierjax fit --params ...,i2``, from :func:`i2`). Needs the ``tables`` extra.

        Example:
            >>> import hierjax
            >>> post = hierjax.posterior([28, 8, -3, 7, -1, 1, 18, 12],
            ...                          [15, 10, 16, 11, 9, 11, 10, 18])
            >>> post.to_arrow(params=["mu", "theta_new"]).num_rows
            2
        """
        from hierjax.io.tidy import fit_table, with_i2

        if params is None or "i2" not in params:
            return fit_table(summarize(self, levels), params)
        import pyarrow as pa
        import pyarrow.compute as pc

        others = [p for p in params if p != "i2"]
        table = fit_table(summarize(self, levels), others or ["tau"])
        lv = np.asarray(levels, np.float64).reshape(-1)
        out = i2(self, tuple(lv) or (0.5,))
        table = with_i2(table, out.mean, out.quantiles[:, : lv.size], lv)
        return table.filter(pc.is_in(table["parameter"], value_set=pa.array(list(params))))

    def to_pandas(self, params=None, levels=DEFAULT_LEVELS):
        """The tidy table (see :meth:`to_arrow`) as a ``pandas.DataFrame``."""
        return self.to_arrow(params, levels).to_pandas()


class _Data(NamedTuple):
    """What a one-dataset kernel sees (scalar / ``[J]`` / ``[K]`` leaves)."""

    grid: TauGrid
    y: jax.Array | np.ndarray
    sigma2: jax.Array | np.ndarray
    mask: jax.Array | np.ndarray
    tau_prior: TauPrior
    mu_prior: MuPrior


def _data(post: Posterior) -> _Data:
    """The kernels' view of ``post``: its groups padded to ``post.kernel_groups``."""
    pad = [(0, 0), (0, post.kernel_groups - post.y.shape[1])]
    return _Data(
        post.grid,
        np.pad(post.y, pad),
        np.pad(post.sigma2, pad, constant_values=1),
        np.pad(post.mask, pad),
        post.tau_prior,
        post.mu_prior,
    )


def _own_groups(post: Posterior, a, axes=(1,)):
    """A kernel's output ``a`` with its group ``axes`` trimmed to the input's width."""
    idx = [slice(None)] * a.ndim
    for ax in axes:
        idx[ax] = slice(0, post.y.shape[1])
    return a[tuple(idx)]


def _dtype(post: Posterior):
    return post.grid.tau.dtype


# --------------------------------------------------------------------------- blocks
def _block_size(B: int) -> int:
    """A power of two between 8 and 1024: few compiled shapes whatever ``B`` is."""
    return min(_MAX_BLOCK, max(_MIN_BLOCK, 1 << max(0, B - 1).bit_length()))


def _in_blocks(kernel, args, **static):
    """``kernel(*args, **static)`` over blocks of :func:`_block_size` datasets of the
    leading ``B`` axis of ``args`` (NumPy), on every local device, or on host threads
    with one CPU device (:func:`hierjax.engine.driver.in_blocks`). Returns NumPy."""
    B = jax.tree.leaves(args)[0].shape[0]
    return driver.in_blocks(kernel, args, _block_size(B), **static)


# --------------------------------------------------------------------------- building
@register
@functools.partial(jax.jit, static_argnames=("n",))
def _build(y, sigma2, mask, tau_prior, mu_prior, *, n: int):
    """:func:`hierjax.inference.grid.tau_grid` over a block of datasets (``[b, J]`` inputs)."""
    return jax.vmap(lambda yb, sb, mb, tp, mp: tau_grid(yb, sb, mb, tp, mp, n))(
        y, sigma2, mask, tau_prior, mu_prior
    )


def posterior(
    y,
    sigma=None,
    *,
    tau_prior="uniform",
    mu_prior="flat",
    mask=None,
    names=None,
    groups=None,
    nodes: int | None = None,
    dtype=None,
) -> Posterior:
    r"""Build and keep the posterior of one or many datasets (see the module doc).

    .. math::
        p(\mu, \theta, \tau \mid y) = p(\tau \mid y)\, p(\mu \mid \tau, y)
            \prod_j p(\theta_j \mid \mu, \tau, y)

    Args:
        y: estimates: ``[J]``, ``[B, J]``, ragged list of ``[J_b]``, or a
            :class:`hierjax.engine.batch.Batch` (then ``sigma`` is None).
        sigma: known standard errors, same layout as ``y``.
        tau_prior, mu_prior: as in :func:`hierjax.fit`.
        mask: ``[B, J]`` bool for padded rectangular input.
        names, groups: dataset and group labels (optional).
        nodes: Clenshaw-Curtis order ``n`` (default by dtype, as :func:`hierjax.fit`).
        dtype: compute dtype (default: float64 under x64 unless the inputs are float32).

    Returns:
        Posterior with a leading ``B`` axis.

    Raises:
        InputError: bad input, naming the dataset and field (checked before jit).

    Example:
        >>> import hierjax
        >>> post = hierjax.posterior([28, 8, -3, 7, -1, 1, 18, 12],
        ...                          [15, 10, 16, 11, 9, 11, 10, 18])
        >>> lo, hi = hierjax.interval(post, "tau", 0.95, kind="shortest")
        >>> float(lo[0])
        0.0
    """
    prep = prepare(
        y,
        sigma,
        tau_prior=tau_prior,
        mu_prior=mu_prior,
        mask=mask,
        names=names,
        groups=groups,
        nodes=nodes,
        dtype=dtype,
    )
    tp, mp, dt, n, batch, st = (
        prep.tau_prior,
        prep.mu_prior,
        prep.dtype,
        prep.n,
        prep.batch,
        prep.st,
    )
    tp_std, mp_std = prep.tau_std, prep.mu_std
    B = batch.y.shape[0]

    def cast(a):
        return np.asarray(a, dt)

    def per_dataset(prior):  # leaves [B] or [B, J] (a scalar parameter broadcasts)
        return jax.tree.map(
            lambda a: np.broadcast_to(cast(a), (B,) + np.shape(a)[1:]).copy(), prior
        )

    tp_b, mp_b = per_dataset(tp_std), per_dataset(mp_std)
    ys, s2 = cast(st.y), cast(st.sigma2)
    grid = _in_blocks(_build, (ys, s2, batch.mask, tp_b, mp_b), n=n)
    n_groups = batch.mask.sum(axis=1)
    alpha = np.asarray(tail_alpha(n_groups.astype(np.float64), tp, mp), np.float64)
    limit = 0.1 * float(np.finfo(dt).eps) ** 0.5
    status = (
        np.where(grid.error > limit, STATUS["grid_unresolved"], 0)
        | np.where(grid.truncated, STATUS["tail_truncated"], 0)
        | np.where(grid.roundoff > ROUNDOFF_LIMIT, STATUS["roundoff_limited"], 0)
        | np.where(grid.converged, 0, STATUS["unconverged"])
    ).astype(np.int32)
    W = batch.width  # the input's own width: the padding for shapes never shows
    return Posterior(
        grid,
        ys[:, :W],
        s2[:, :W],
        batch.mask[:, :W],
        tp_b,
        mp_b,
        st.loc,
        st.scale,
        alpha,
        n_groups,
        grid.error,
        status,
        batch.names,
        batch.groups,
        batch.y.shape[1],
    )


# --------------------------------------------------------------------------- one dataset
def _mixture(d: _Data, param: str, sigma_new):
    """Normal components of a marginal: ``(log_w [K], m, s)``, ``m, s`` ``[K]`` or ``[J, K]``."""
    g = d.grid
    c = mixture_components(g.tau**2, g.mu.mean, g.mu.var, d.y, d.sigma2)
    if param == "mu":
        return g.log_weight, c.mu_mean, jnp.sqrt(c.mu_var)
    if param == "theta_new":
        return g.log_weight, c.mu_mean, jnp.sqrt(c.new_var)
    if param == "y_new":
        return g.log_weight, c.mu_mean, jnp.sqrt(c.new_var + sigma_new**2)
    m, v = c.theta_mean.T, c.theta_var.T  # [J, K]
    if param == "y_rep":
        v = v + d.sigma2[:, None]
    return g.log_weight, m, jnp.sqrt(v)


class _Tools(NamedTuple):
    """Scalar functions of one scalar marginal (standard units)."""

    log_pdf: Callable[..., Any]  # x -> log f(x)
    dist: Callable[..., Any]  # x -> (pdf, cdf, sf)
    quantile: Callable[..., Any]  # p -> (q, converged)
    lower: Any  # lower end of the support (tau, I2: 0) or None
    upper: Any = None  # upper end of the support (I2: 1) or None


def _mixture_tools(log_w, m, s) -> _Tools:
    w = jnp.exp(log_w)

    def log_pdf(x):
        t = (x - m) / s
        return logsumexp(log_w - 0.5 * t * t - jnp.log(s)) - _LOG_SQRT_2PI

    def dist(x):
        t = (x - m) / s
        return jnp.exp(log_pdf(x)), jnp.sum(w * _Phi(t)), jnp.sum(w * _Phi(-t))

    def quantile(p):
        return mixture_quantile(p, w, m, s)

    return _Tools(log_pdf, dist, quantile, None)


def _tau_tools(d: _Data) -> _Tools:
    """Exact density ``p(tau) p(y | tau) / p(y)``; CDF from the Chebyshev interpolant."""
    g = d.grid
    dt = g.tau.dtype
    N = g.density_z.shape[0] - 1
    cdf_nodes = tau_cdf_nodes(g)
    nodes = jnp.asarray(clenshaw_curtis(N)[0], dt)
    # log p(y | tau) as a change from the map's centre, as the grid computed it
    ref = reference_point(jnp.exp(2.0 * g.x0), d.y, d.sigma2, d.mask, d.mu_prior)

    def log_pdf(t):
        lik = mu_given_tau_near(ref, t * t, d.sigma2, d.mask, d.mu_prior).log_lik
        lp = d.tau_prior.log_density(t) + lik - g.log_evidence
        return jnp.where(t >= 0, lp, -jnp.inf)

    def dist(t):
        # F and S each from its own end's integral (S keeps its accuracy in the far tail)
        z = grid_z_of_tau(jnp.maximum(t, 0.0), g.x0, g.u_lo, g.one_minus_u_hi, g.kappa)
        F, S = _barycentric(
            jnp.clip(z, -1.0, 1.0),
            nodes,
            cdf_nodes.lam,
            jnp.stack([cdf_nodes.lower, cdf_nodes.upper]),
        )
        F = jnp.clip(jnp.where(z <= -1.0, 0.0, jnp.where(z >= 1.0, 1.0, F)), 0.0, 1.0)
        S = jnp.clip(jnp.where(z <= -1.0, 1.0, jnp.where(z >= 1.0, 0.0, S)), 0.0, 1.0)
        return jnp.exp(log_pdf(t)), F, S

    def quantile(p):
        return tau_quantile(p, g, cdf_nodes)

    return _Tools(log_pdf, dist, quantile, jnp.zeros((), dt))


def _typical_variance(sigma2, mask):
    r"""Higgins and Thompson's ``s^2 = (k - 1) sum w / ((sum w)^2 - sum w^2)``, ``w = 1/sigma^2``."""
    w = jnp.where(mask, 1.0 / sigma2, 0.0)
    k = jnp.sum(mask).astype(sigma2.dtype)
    S1, S2 = jnp.sum(w), jnp.sum(w * w)
    return (k - 1.0) * S1 / (S1 * S1 - S2)


def _i2_tools(d: _Data) -> _Tools:
    r"""``I^2 = tau^2 / (tau^2 + s^2)``, increasing in tau: ``tau = s sqrt(x / (1 - x))``."""
    tt = _tau_tools(d)
    s2 = _typical_variance(d.sigma2, d.mask)

    def tau_of(x):
        xc = jnp.clip(x, 0.0, 1.0)
        return jnp.sqrt(s2 * xc / (1.0 - xc))

    def log_pdf(x):
        inside = (x > 0) & (x < 1)
        xs = jnp.where(inside, x, 0.5)
        lp = (
            tt.log_pdf(tau_of(xs))
            + 0.5 * jnp.log(s2)
            - math.log(2.0)
            - 0.5 * jnp.log(xs)
            - 1.5 * jnp.log1p(-xs)
        )
        return jnp.where(
            inside,
            lp,
            jnp.where(x == 0, jnp.where(tt.log_pdf(0.0) > -jnp.inf, jnp.inf, -jnp.inf), -jnp.inf),
        )

    def dist(x):
        _, F, S = tt.dist(tau_of(x))
        return jnp.exp(log_pdf(x)), jnp.where(x >= 1.0, 1.0, F), jnp.where(x >= 1.0, 0.0, S)

    def quantile(p):
        t, ok = tt.quantile(p)
        return t * t / (t * t + s2), ok

    return _Tools(log_pdf, dist, quantile, jnp.zeros((), s2.dtype), jnp.ones((), s2.dtype))


def _shortest(tools: _Tools, level):
    r"""The shortest interval ``[Q(p), Q(p + level)]`` of mass ``level``.

    The width ``w(p) = Q(p + level) - Q(p)`` has ``w'(p) = 1/f(u) - 1/f(l)``, so its
    interior minima are where ``g(p) = log f(l) - log f(u)`` crosses zero upwards
    (``f(l) = f(u)``: for a unimodal density, the highest-density interval). ``g`` is
    scanned at ``_SCAN`` points of ``0 < p < 1 - level``; the upward crossing whose
    bracket holds the narrowest scanned interval is refined by Newton's method,
    ``g'(p) = (log f)'(l) / f(l) - (log f)'(u) / f(u)``, safeguarded by bisection.
    Where the support starts at 0 (tau, I^2) and ``f(0) >= f(Q(level))``, ``p = 0``
    is a local minimum too, ``[0, Q(level)]``; where it ends at 1 (I^2), so is
    ``[Q(1 - level), 1]``; the narrowest candidate wins. (The I^2 density is infinite
    at 0 when ``p(tau = 0 | y) > 0`` and may be largest at 1 for few groups, so for
    I^2 "shortest" need not be "highest density at both ends".)

    Returns:
        ``(lower, upper, converged)``.
    """
    dtype = jnp.result_type(level)
    eps = float(jnp.finfo(dtype).eps)
    dlog = jax.grad(tools.log_pdf)
    inf = jnp.full((), jnp.inf, dtype)

    def terms(p):
        (l, okl), (u, oku) = tools.quantile(p), tools.quantile(p + level)
        fl, fu = tools.log_pdf(l), tools.log_pdf(u)
        slope = dlog(l) * jnp.exp(-fl) - dlog(u) * jnp.exp(-fu)
        return fl - fu, slope, l, u, fl, okl & oku

    # scan; the ends: f(Q(0)) = 0 for an unbounded support (g < 0), f(Q(1)) = 0 (g > 0)
    p_scan = (1.0 - level) * jnp.arange(1, _SCAN + 1, dtype=dtype) / (_SCAN + 1)
    g_s, _, l_s, u_s, _, _ = jax.vmap(terms)(p_scan)
    if tools.lower is not None:
        u0, ok0 = tools.quantile(level)
        g0 = tools.log_pdf(tools.lower) - tools.log_pdf(u0)
    else:
        g0 = -inf
    zero = jnp.zeros((), dtype)
    p_ext = jnp.concatenate([zero[None], p_scan, (1.0 - level)[None]])
    neg = jnp.concatenate([(g0 < 0)[None], g_s < 0, jnp.array([False])])
    w_ext = jnp.concatenate([inf[None], u_s - l_s, inf[None]])
    up = neg[:-1] & ~neg[1:]
    i = jnp.argmin(jnp.where(up, jnp.minimum(w_ext[:-1], w_ext[1:]), inf))
    has_interior = jnp.any(up)

    def newton(state):
        i, p, lo, hi, _, _, _, done = state
        g, slope, l, u, fl, ok_q = terms(p)
        lo = jnp.where(g < 0, p, lo)
        hi = jnp.where(g < 0, hi, p)
        step = g / slope
        ok = (slope > 0) & (p - step > lo) & (p - step < hi) & jnp.isfinite(step)
        at_root = jnp.abs(g) <= 256.0 * eps * (1.0 + jnp.abs(fl))
        now = at_root | (hi - lo <= 4.0 * eps * level)
        p_new = jnp.where(now | done, p, jnp.where(ok, p - step, 0.5 * (lo + hi)))
        return i + 1, p_new, lo, hi, l, u, ok_q, done | now

    lo, hi = p_ext[i], p_ext[i + 1]
    start = (0, 0.5 * (lo + hi), lo, hi, zero, zero, jnp.array(False), jnp.array(False))
    # the ends (l, u) in the state belong to the p at which the loop stopped
    state = iterate(newton, start, fast_steps=0, max_iter=_MAX_ITER)
    l, u, conv = state[4], state[5], state[6] & state[7]
    # the ends of a bounded support: [lower, Q(level)] and [Q(1 - level), upper]
    if tools.lower is not None:
        at_lower = (g0 >= 0) & (~has_interior | (u0 - tools.lower <= u - l))
        l, u = jnp.where(at_lower, tools.lower, l), jnp.where(at_lower, u0, u)
        conv = jnp.where(at_lower, ok0, conv)
    if tools.upper is not None:
        l1, ok1 = tools.quantile(1.0 - level)
        at_upper = tools.upper - l1 < u - l
        l, u = jnp.where(at_upper, l1, l), jnp.where(at_upper, tools.upper, u)
        conv = jnp.where(at_upper, ok1, conv)
    return l, u, conv


def _apply(tools: _Tools, op: str, x):
    """One operation on points ``x [P]``: ``dist`` -> (pdf, cdf, sf); ``quantile`` -> (q, ok);
    ``shortest`` (``x`` are levels) -> (lower, upper, ok)."""
    if op == "dist":
        return jax.vmap(tools.dist)(x)
    if op == "quantile":
        return jax.vmap(tools.quantile)(x)
    if op == "shortest":
        return jax.vmap(lambda lv: _shortest(tools, lv))(x)
    raise ValueError(op)


def _dataset_op(d: _Data, x, sigma_new, param: str, op: str):
    """``op`` on the ``param`` marginal of one dataset; ``x`` is ``[P]`` (``[J, P]`` per group)."""
    if param == "tau":
        return _apply(_tau_tools(d), op, x)
    if param == "I2":
        return _apply(_i2_tools(d), op, x)
    log_w, m, s = _mixture(d, param, sigma_new)
    if param in _GROUPED:
        return jax.vmap(lambda mj, sj, xj: _apply(_mixture_tools(log_w, mj, sj), op, xj))(m, s, x)
    return _apply(_mixture_tools(log_w, m, s), op, x)


@register
@functools.partial(jax.jit, static_argnames=("param", "op"))
def _op_kernel(data: _Data, x, sigma_new, *, param: str, op: str):
    return jax.vmap(lambda d, xb, sb: _dataset_op(d, xb, sb, param, op))(data, x, sigma_new)


# --------------------------------------------------------------------------- user layer
def _check_param(param):
    if param not in PARAMS:
        raise InputError(f"param must be one of {PARAMS}, got {param!r}")


def _sigma_new(post: Posterior, param, sigma_new):
    """``sigma_new`` in standard units, ``[B]`` (zeros unless ``param == 'y_new'``)."""
    B = post.loc.shape[0]
    if param != "y_new":
        return np.zeros(B, _dtype(post))
    if sigma_new is None:
        raise InputError("param 'y_new' needs sigma_new (the new observation's standard error)")
    s = (
        np.broadcast_to(np.asarray(sigma_new, np.float64), (B,))
        if np.ndim(sigma_new) <= 1
        else None
    )
    if s is None or not np.all(np.isfinite(s)) or np.any(s < 0):
        raise InputError(
            f"sigma_new must be a finite number >= 0 or [B] of them, got {sigma_new!r}"
        )
    return (s / post.scale).astype(_dtype(post))


def _points(post: Posterior, param, x, what="x"):
    """``x`` as ``[B, P]`` (``[B, J, P]`` per group) float64, and how to shape the result."""
    B, J = post.y.shape
    a = np.asarray(x, np.float64)
    if a.ndim > 3 or (a.ndim == 3 and param not in _GROUPED):
        raise InputError(
            f"{what} must be a scalar, [P] or [B, P] (per group also [B, J, P]), "
            f"got shape {a.shape}"
        )
    scalar = a.ndim == 0
    if a.ndim <= 1:
        a = np.broadcast_to(a.reshape(-1), (B, a.size))
    elif a.ndim == 2 and a.shape[0] != B:
        raise InputError(f"{what} has shape {a.shape}; a [B, P] array needs B = {B}")
    if param in _GROUPED:
        if a.ndim == 2:
            a = np.broadcast_to(a[:, None, :], (B, J, a.shape[-1]))
        elif a.shape[:2] != (B, J):
            raise InputError(f"{what} has shape {a.shape}; per-group points are [B, J = {J}, P]")
    return np.ascontiguousarray(a), scalar


def _to_std(post: Posterior, param, x):
    if param in _LOCATION:
        shape = (-1,) + (1,) * (x.ndim - 1)
        return (x - post.loc.reshape(shape)) / post.scale.reshape(shape)
    if param == "tau":
        return x / post.scale.reshape((-1,) + (1,) * (x.ndim - 1))
    return x


def _from_std(post: Posterior, param, q, density=False):
    shape = (-1,) + (1,) * (q.ndim - 1)
    sc = post.scale.reshape(shape)
    if param in _LOCATION:
        return q / sc if density else post.loc.reshape(shape) + sc * q
    if param == "tau":
        return q / sc if density else sc * q
    return q


def _finish(post, param, a, scalar):
    """Cast to the compute dtype, nan where a group is padded, drop a scalar point axis."""
    a = np.asarray(a, np.float64)
    if param in _GROUPED:
        a = np.where(post.mask[..., None], a, np.nan)
    a = a.astype(_dtype(post))
    return a[..., 0] if scalar else a


def _run_op(post, param, pts, sigma_new, op):
    """:func:`_op_kernel` on points ``[B, (J,) P]`` (standard units); ``P`` is padded to a
    power of two (at least 8) by repeating the last point, so that nearby ``P`` share
    one compiled kernel."""
    P = pts.shape[-1]
    size = max(8, 1 << max(0, P - 1).bit_length())
    if size > P:
        pts = np.concatenate([pts, np.repeat(pts[..., -1:], size - P, axis=-1)], axis=-1)
    grouped = pts.ndim == 3
    if grouped:  # the padded groups' points: any benign value
        pts = np.pad(pts, [(0, 0), (0, post.kernel_groups - pts.shape[1]), (0, 0)], mode="edge")
    out = _in_blocks(
        _op_kernel,
        (
            _data(post),
            np.ascontiguousarray(pts).astype(_dtype(post)),
            _sigma_new(post, param, sigma_new),
        ),
        param=param,
        op=op,
    )
    return [_own_groups(post, np.asarray(a)[..., :P], (1,) if grouped else ()) for a in out]


def _dist(post, param, x, sigma_new):
    _check_param(param)
    pts, scalar = _points(post, param, x)
    f, F, S = _run_op(post, param, _to_std(post, param, pts), sigma_new, "dist")
    return np.asarray(f, np.float64), F, S, scalar


def pdf(post: Posterior, param: str, x, *, sigma_new=None):
    r"""Posterior density of ``param`` at ``x`` (user units).

    .. math::
        p(\phi \mid y) = \sum_k w_k N(\phi \mid m_k, s_k^2), \qquad
        p(\tau \mid y) = p(\tau)\, p(y \mid \tau) / p(y)\ \text{(exact)}

    Args:
        post: a :class:`Posterior`.
        param: one of :data:`PARAMS`.
        x: points: scalar, ``[P]`` (the same for every dataset) or ``[B, P]``; for
            ``theta`` and ``y_rep`` also ``[B, J, P]`` (nan gives nan).
        sigma_new: the new observation's standard error (``param='y_new'``), scalar or ``[B]``.

    Returns:
        ``[B, P]`` (``[B, J, P]`` per group; the ``P`` axis dropped for a scalar ``x``);
        nan where a group is padded. For ``I2`` the density is ``inf`` at 0 when
        ``p(tau = 0 | y) > 0``.
    """
    f, _, _, scalar = _dist(post, param, x, sigma_new)
    return _finish(post, param, _from_std(post, param, f, density=True), scalar)


def cdf(post: Posterior, param: str, x, *, sigma_new=None):
    """``P(param <= x | y)`` (arguments and shapes as :func:`pdf`)."""
    _, F, _, scalar = _dist(post, param, x, sigma_new)
    return _finish(post, param, F, scalar)


def prob_greater(post: Posterior, param: str, c, *, sigma_new=None):
    """``P(param > c | y)`` for any ``c``, from the upper tail (no cancellation for mixtures);
    arguments and shapes as :func:`pdf`."""
    _, _, S, scalar = _dist(post, param, c, sigma_new)
    return _finish(post, param, S, scalar)


def _levels(p, what):
    a = np.asarray(p, np.float64)
    if a.ndim > 1 or a.size == 0 or not np.all((a > 0) & (a < 1)):
        raise InputError(f"{what} must lie strictly between 0 and 1 (scalar or [P]), got {p!r}")
    return a


def _level_op(post, param, levels, sigma_new, op):
    _check_param(param)
    lv = _levels(levels, "probability levels" if op == "quantile" else "level")
    B, J = post.y.shape
    pts = np.broadcast_to(lv.reshape(-1), (B, lv.size))
    if param in _GROUPED:
        pts = np.broadcast_to(pts[:, None, :], (B, J, lv.size))
    return _run_op(post, param, pts, sigma_new, op), lv.ndim == 0


@register
@jax.jit
def _far_quantile_error(grid: TauGrid, q, levels, new):
    """:func:`hierjax.inference.summaries.quantile_error` per dataset for mu (``new`` False) or
    theta_new (True): ``q [B, P]`` standard units, ``levels [B, P]``, ``new [B]``; returns
    ``[B]``."""

    def one(g, qb, levels, new):
        w, w_fine = jnp.exp(g.log_weight), jnp.exp(g.log_weight_fine)
        extra = jnp.where(new, g.tau**2, 0.0)
        extra_fine = jnp.where(new, g.tau_fine**2, 0.0)
        k = jnp.argmax(w)
        return quantile_error(
            qb,
            levels,
            w,
            g.mu.mean,
            jnp.sqrt(extra + g.mu.var),
            w_fine,
            g.mu_fine.mean,
            jnp.sqrt(extra_fine + g.mu_fine.var),
            jnp.sqrt(extra[k] + g.mu.var[k]),
        )

    return jax.vmap(one)(grid, q, levels, new)


def _check_far_quantiles(post: Posterior, param: str, q, levels):
    """Warn (naming the datasets) where a quantile of mu or theta_new moves by more than
    ``0.25 sqrt(eps)`` sd between the n- and the 2n-rule: the far tails of few-group
    posteriors, as flagged ``grid_unresolved`` by :func:`hierjax.fit`."""
    if param not in ("mu", "theta_new"):
        return
    dt = _dtype(post)
    B = post.loc.shape[0]
    q = np.asarray(q, dt)
    lv = np.broadcast_to(np.asarray(levels, dt).reshape(-1), q.shape)
    # P padded as in _run_op, B in blocks: no retrace per batch size or number of levels
    # (repeating the last level changes no maximum)
    size = max(8, 1 << max(0, q.shape[1] - 1).bit_length())
    q, lv = (np.concatenate([a, np.repeat(a[:, -1:], size - a.shape[1], 1)], 1) for a in (q, lv))
    new = np.full(B, param == "theta_new")
    err = np.asarray(_in_blocks(_far_quantile_error, (post.grid, q, lv, new)))
    bad = np.nonzero(err > 0.25 * float(np.finfo(dt).eps) ** 0.5)[0]
    if bad.size:
        names = ", ".join(str(post.names[b]) for b in bad[:5]) + (" ..." if bad.size > 5 else "")
        warnings.warn(
            f"quantiles of {param} for {bad.size} dataset(s) ({names}) may be off by "
            f"up to {err[bad].max():.2g} sd at these levels (the 2n-rule disagrees): "
            "pass more nodes to hierjax.posterior",
            stacklevel=3,
        )


def _typical_sd(post: Posterior, param: str):
    """The sd of the most probable tau node's normal component of ``param`` in standard
    units, ``[B]`` (``[B, J]`` per group): finite under any tail. For ``y_new`` and
    ``y_rep`` that of ``theta_new`` and ``theta_j`` (smaller: a stricter unit)."""
    g = post.grid
    k = np.argmax(np.asarray(g.log_weight), axis=1)[:, None]
    tau2 = np.take_along_axis(np.asarray(g.tau, np.float64), k, axis=1) ** 2  # [B, 1]
    v_mu = np.take_along_axis(np.asarray(g.mu.var, np.float64), k, axis=1)  # [B, 1]
    if param in _GROUPED:
        # Var(theta_j | tau, y) = (1 - B_j) sigma_j^2 + B_j^2 V_mu, B_j = sigma_j^2 / v_j
        s2 = np.asarray(post.sigma2, np.float64)
        v = s2 + tau2
        return np.sqrt(tau2 / v * s2 + (s2 / v) ** 2 * v_mu)
    return np.sqrt(v_mu + (0.0 if param == "mu" else tau2))[:, 0]


def _check_rounding(post: Posterior, param: str, values):
    """Warn (naming the datasets) where casting ``values`` (float64, user units, ``[B, ...]``)
    to the compute dtype moves one by more than the dtype's accuracy goal in posterior sds:
    the computation keeps its accuracy under any offset, but float32 cannot hold
    ``-3e4 +- 1e-1`` to 1e-4 of the sd (:func:`hierjax.fit` sets ``output_rounded``)."""
    dt = np.dtype(_dtype(post))
    if param not in _LOCATION or dt == np.float64:
        return
    sd = _typical_sd(post, param)
    unit = post.scale.reshape((-1,) + (1,) * (sd.ndim - 1)) * sd
    unit = unit.reshape(unit.shape + (1,) * (values.ndim - unit.ndim))
    moved = np.abs(values.astype(dt).astype(np.float64) - values) / unit  # nan: False
    if param in _GROUPED:  # padded groups hold stand-in values: not judged
        moved = np.where(post.mask.reshape(post.mask.shape + (1,) * (moved.ndim - 2)), moved, 0.0)
    bad = np.nonzero((moved > GOAL[dt.itemsize * 8]).reshape(moved.shape[0], -1).any(axis=1))[0]
    if bad.size:
        names = ", ".join(str(post.names[b]) for b in bad[:5]) + (" ..." if bad.size > 5 else "")
        worst = np.nanmax(moved[bad])
        warnings.warn(
            f"{param} for {bad.size} dataset(s) ({names}) cannot be held in {dt} "
            f"to {GOAL[dt.itemsize * 8]:g} of a posterior sd (off by up to "
            f"{worst:.2g} sd after the cast): compute in float64 "
            "(jax_enable_x64, or hierjax --x64)",
            stacklevel=3,
        )


def quantile(post: Posterior, param: str, p, *, sigma_new=None):
    """Posterior quantiles of ``param`` at levels ``p`` (scalar or ``[P]``), user units.

    Mixtures: Halley's method on the mixture CDF (:func:`hierjax.inference.summaries.mixture_quantile`);
    tau: Newton on the Chebyshev CDF (:func:`hierjax.inference.summaries.tau_quantile`); I^2: the
    tau quantile mapped by ``tau^2 / (tau^2 + s^2)``. For mu and theta_new the outermost
    levels are checked against the 2n-rule, with a warning naming the datasets where a
    quantile moves by more than ``0.25 sqrt(eps)`` sd (far tails of few-group posteriors);
    for every location parameter, also where the compute dtype cannot hold a quantile to
    its accuracy goal (float32 data far from 0 relative to their sd: ``output_rounded``).

    Returns:
        ``[B, P]`` (``[B, J, P]`` per group); the ``P`` axis dropped for a scalar ``p``.
    """
    (q, _), scalar = _level_op(post, param, p, sigma_new, "quantile")
    _check_far_quantiles(post, param, q, p)
    out = _from_std(post, param, np.asarray(q, np.float64))
    _check_rounding(post, param, out)
    return _finish(post, param, out, scalar)


def interval(post: Posterior, param: str, level=0.95, kind: str = "central", *, sigma_new=None):
    """Credible intervals of mass ``level`` (scalar or ``[P]``), user units.

    Args:
        kind: ``"central"`` (equal tails) or ``"shortest"`` (the narrowest interval of
            that mass: the highest-density interval of a unimodal marginal; it starts at
            0 for tau where ``p(0 | y) >= p(Q(level) | y)``, and for I^2 may start at 0 or
            end at 1; see :func:`_shortest`).

    Returns:
        ``(lower, upper)``, each ``[B]`` for a scalar level (``[B, J]`` per group), with a
        trailing ``[P]`` axis for several levels.
    """
    if kind not in ("central", "shortest"):
        raise InputError(f"kind must be 'central' or 'shortest', got {kind!r}")
    if kind == "central":
        lv = _levels(level, "level")
        p = np.concatenate([0.5 * (1.0 - lv.reshape(-1)), 0.5 * (1.0 + lv.reshape(-1))])
        (q, _), _ = _level_op(post, param, p, sigma_new, "quantile")
        _check_far_quantiles(post, param, q, p)
        lo, hi, scalar = q[..., : lv.size], q[..., lv.size :], lv.ndim == 0
    else:
        (lo, hi, _), scalar = _level_op(post, param, level, sigma_new, kind)
    lo, hi = (_from_std(post, param, np.asarray(a, np.float64)) for a in (lo, hi))
    _check_rounding(post, param, np.stack([lo, hi], axis=-1))
    return _finish(post, param, lo, scalar), _finish(post, param, hi, scalar)


# --------------------------------------------------------------------------- predictive
@register
@jax.jit
def _mu_at(y, sigma2, mask, mu_prior, tau2):
    return jax.vmap(lambda yb, sb, mb, mp, tb: mu_given_tau(tb, yb, sb, mb, mp))(
        y, sigma2, mask, mu_prior, tau2
    )


def predictive_prob(post: Posterior, threshold, sigma_new, side: str = "greater", *, tau=None):
    r"""``P(y_new > threshold | sigma_new, y)`` (or ``<``) for a new group's new observation.

    .. math::
        \tilde y \mid \tau, y \sim N(\hat\mu(\tau), \tau^2 + V_\mu(\tau) + \tilde\sigma^2),
        \qquad P(\tilde y > c \mid y) = \sum_k w_k \Phi\big((\hat\mu_k - c)/s_k\big)

    Args:
        post: a :class:`Posterior`.
        threshold: ``c``: scalar, ``[P]`` or ``[B, P]`` (user units).
        sigma_new: the new observation's standard error, scalar or ``[B]``.
        side: ``"greater"`` (``P(y_new > c)``, the same as ``>=``) or ``"less"``.
        tau: condition on this tau (scalar or ``[B]``, user units) instead of integrating
            it out; ``tau=0`` is complete pooling (the seed lecture's calculation).

    Returns:
        ``[B]`` for a scalar threshold, else ``[B, P]``.
    """
    if side not in ("greater", "less"):
        raise InputError(f"side must be 'greater' or 'less', got {side!r}")
    if tau is None:
        f = prob_greater if side == "greater" else cdf
        return f(post, "y_new", threshold, sigma_new=sigma_new)
    B = post.loc.shape[0]
    t = np.broadcast_to(np.asarray(tau, np.float64), (B,)) if np.ndim(tau) <= 1 else None
    if t is None or not np.all(np.isfinite(t)) or np.any(t < 0):
        raise InputError(f"tau must be a finite number >= 0 or [B] of them, got {tau!r}")
    sn = _sigma_new(post, "y_new", sigma_new).astype(np.float64)
    pts, scalar = _points(post, "mu", threshold, "threshold")
    t_std = t / post.scale
    d = _data(post)
    mu = _in_blocks(_mu_at, (d.y, d.sigma2, d.mask, post.mu_prior, (t_std**2).astype(_dtype(post))))
    sd = np.sqrt(np.asarray(mu.var, np.float64) + t_std**2 + sn**2)
    z = (_to_std(post, "mu", pts) - np.asarray(mu.mean, np.float64)[:, None]) / sd[:, None]
    z = z if side == "less" else -z
    p = np.asarray(ndtr(jnp.asarray(z, _dtype(post))), np.float64)
    return _finish(post, "mu", p, scalar)


class PredictiveCheck(NamedTuple):
    """Replicates ``y_rep_j = theta_j + e_j``, ``e_j ~ N(0, sigma_j^2)``, of each group.

    Attributes:
        mean: ``E[y_rep_j | y] = E[theta_j | y]``, ``[B, J]``.
        sd: ``sd(y_rep_j | y) = sqrt(Var[theta_j | y] + sigma_j^2)``, ``[B, J]``.
        p_value: posterior predictive p-value ``P(y_rep_j > y_j | y)``, ``[B, J]``.
    (nan where a group is padded.)
    """

    mean: np.ndarray
    sd: np.ndarray
    p_value: np.ndarray


def _check_one(d: _Data):
    log_w, m, s = _mixture(d, "y_rep", None)  # [J, K]
    w = jnp.exp(log_w)
    mean = jnp.sum(w * m, axis=-1)
    var = jnp.sum(w * (s * s + (m - mean[:, None]) ** 2), axis=-1)
    p = jnp.sum(w * _Phi((m - d.y[:, None]) / s), axis=-1)
    return mean, jnp.sqrt(var), p


@register
@jax.jit
def _check_kernel(data: _Data):
    return jax.vmap(_check_one)(data)


def predictive_check(post: Posterior) -> PredictiveCheck:
    r"""Posterior predictive check of each group (mixtures over the tau nodes).

    .. math::
        P(y^{rep}_j > y_j \mid y) = \sum_k w_k
            \Phi\Big(\frac{E[\theta_j \mid \tau_k, y] - y_j}
                          {\sqrt{Var[\theta_j \mid \tau_k, y] + \sigma_j^2}}\Big)
    """
    mean, sd, p = (
        _own_groups(post, np.asarray(a, np.float64))
        for a in _in_blocks(_check_kernel, (_data(post),))
    )
    mean = post.loc[:, None] + post.scale[:, None] * mean
    sd = post.scale[:, None] * sd
    dt = _dtype(post)
    return PredictiveCheck(*(np.where(post.mask, a, np.nan).astype(dt) for a in (mean, sd, p)))


# --------------------------------------------------------------------------- shrinkage, weights
class Weights(NamedTuple):
    r"""Posterior weights of each study (and of the mu prior) in the posterior means.

    ``E[mu | y] = sum_i mu[i] y_i + mu_prior m0`` and
    ``E[theta_j | y] = sum_i theta[j, i] y_i + theta_prior[j] m0`` where the posterior
    means exist (the weights themselves always do); each row sums to 1.

    Attributes:
        mu: weights of the studies in ``E[mu | y]``, ``[B, J]``.
        mu_prior: weight of the mu prior's mean ``m0`` (0 for a flat prior), ``[B]``.
        theta: ``theta[b, j, i]``: weight of study ``i`` in ``E[theta_j | y]``, ``[B, J, J]``.
        theta_prior: weight of ``m0`` in ``E[theta_j | y]``, ``[B, J]``.
    (nan where a group is padded.)
    """

    mu: np.ndarray
    mu_prior: np.ndarray
    theta: np.ndarray
    theta_prior: np.ndarray


def _prior_precision(mu_prior: MuPrior, dtype):
    if isinstance(mu_prior, NormalMu):
        return 1.0 / jnp.asarray(mu_prior.scale, dtype) ** 2
    return jnp.zeros((), dtype)


def _shrink_one(d: _Data):
    r"""On the 2n-rule: ``E[B_j]``, the weights, ``E[I^2]``.

    Given tau, ``W_i = (1/v_i) / P`` and ``W_0 = p_0 / P`` (``P = sum 1/v + p_0``) are the
    weights of ``y_i`` and ``m0`` in ``mu_hat``; ``E[theta_j | tau, y] = (1 - B_j) y_j +
    B_j mu_hat``.
    """
    g = d.grid
    w = jnp.exp(g.log_weight_fine)  # [N]
    t2 = g.tau_fine[:, None] ** 2  # [N, 1]
    v = d.sigma2[None, :] + t2  # [N, J]
    B = d.sigma2[None, :] / v
    one_minus_B = t2 / v
    prec = jnp.where(d.mask[None, :], 1.0 / v, 0.0)
    p0 = _prior_precision(d.mu_prior, v.dtype)
    P = jnp.sum(prec, axis=1) + p0  # [N]
    W = prec / P[:, None]  # [N, J]
    W0 = p0 / P
    shrink = w @ B
    mu_w, mu_w0 = w @ W, jnp.sum(w * W0)
    theta_w = jnp.diag(w @ one_minus_B) + (B * w[:, None]).T @ W
    theta_w0 = (B * w[:, None]).T @ W0
    s2 = _typical_variance(d.sigma2, d.mask)
    i2_mean = jnp.sum(w * g.tau_fine**2 / (g.tau_fine**2 + s2))
    return shrink, mu_w, mu_w0, theta_w, theta_w0, i2_mean, s2


@register
@jax.jit
def _shrink_kernel(data: _Data):
    return jax.vmap(_shrink_one)(data)


def _shrink(post):
    out = [np.asarray(a, np.float64) for a in _in_blocks(_shrink_kernel, (_data(post),))]
    # shrink, mu_w, mu_w0, theta_w, theta_w0, i2_mean, s2: groups on axes 1 (theta_w 1, 2)
    group_axes = ((1,), (1,), (), (1, 2), (1,), (), ())
    return [_own_groups(post, a, ax) for a, ax in zip(out, group_axes)]


def shrinkage(post: Posterior):
    r"""Posterior mean shrinkage factor of each group, ``E[B_j | y]``, ``[B, J]``.

    .. math::
        B_j = \frac{\sigma_j^2}{\sigma_j^2 + \tau^2},\qquad
        E[B_j \mid y] = \int B_j(\tau)\, p(\tau \mid y)\, d\tau

    (0: no pooling, 1: complete pooling; nan where padded.)
    """
    return np.where(post.mask, _shrink(post)[0], np.nan).astype(_dtype(post))


def weights(post: Posterior) -> Weights:
    r"""Posterior weights of each study in ``E[mu | y]`` and each ``E[theta_j | y]``.

    .. math::
        E[\mu \mid \tau, y] = \sum_i W_i(\tau) y_i + W_0(\tau) m_0,\quad
        W_i = \frac{1/(\sigma_i^2 + \tau^2)}{P},\ W_0 = \frac{1/s_0^2}{P},\quad
        \omega_i = E[W_i(\tau) \mid y]

        E[\theta_j \mid y] = \sum_i E\big[(1 - B_j)\delta_{ij} + B_j W_i \mid y\big] y_i
            + E[B_j W_0 \mid y]\, m_0

    as bayesmeta's ``weights`` and ``weights.theta`` (Röver 2020, sec. 3.5).
    """
    _, mu_w, mu_w0, th_w, th_w0, _, _ = _shrink(post)
    m = post.mask
    dt = _dtype(post)
    return Weights(
        np.where(m, mu_w, np.nan).astype(dt),
        mu_w0.astype(dt),
        np.where(m[:, :, None] & m[:, None, :], th_w, np.nan).astype(dt),
        np.where(m, th_w0, np.nan).astype(dt),
    )


class I2Summary(NamedTuple):
    r"""The posterior of ``I^2 = tau^2 / (tau^2 + s^2)``.

    Attributes:
        mean: ``E[I^2 | y]`` (always exists: ``0 <= I^2 < 1``), ``[B]``.
        quantiles: at the requested levels, ``[B, Q]``.
        s2: the typical within-study variance ``s^2`` (user units), ``[B]``.
    """

    mean: np.ndarray
    quantiles: np.ndarray
    s2: np.ndarray


def i2(post: Posterior, levels=DEFAULT_LEVELS) -> I2Summary:
    r"""Posterior summary of the heterogeneity ``I^2(tau)`` (Higgins and Thompson 2002).

    .. math::
        I^2(\tau) = \frac{\tau^2}{\tau^2 + s^2},\qquad
        s^2 = \frac{(k - 1)\sum_i w_i}{(\sum_i w_i)^2 - \sum_i w_i^2},\ w_i = 1/\sigma_i^2

    (bayesmeta's ``I2``). ``I^2`` increases with tau, so its quantiles are those of tau
    mapped; its CDF and density are :func:`cdf` / :func:`pdf` with ``param="I2"``.
    """
    out = _shrink(post)
    dt = _dtype(post)
    return I2Summary(
        out[5].astype(dt),
        quantile(post, "I2", np.asarray(levels, np.float64)),
        (out[6] * post.scale**2).astype(dt),
    )


# --------------------------------------------------------------------------- moments, tables
#: Parameters with a mean and sd in :func:`moments` (those of :class:`hierjax.Fit`).
_MOMENT_PARAMS = ("mu", "tau", "theta", "theta_new")


class Moments(NamedTuple):
    """Posterior mean and sd of one parameter, user units, as :class:`hierjax.Fit` reports them.

    Attributes:
        mean: ``E[param | y]``, ``[B]`` (``[B, J]`` for theta); where it does not exist
            nan (tau: inf), as in :class:`hierjax.Marginal`.
        sd: ``sd(param | y)``, same shape; inf where it does not exist.
        mean_exists: whether the mean is finite (priors and number of groups), bool.
        sd_exists: whether the variance is finite, bool.
    (theta: nan, and False for the flags, where a group is padded.)
    """

    mean: np.ndarray
    sd: np.ndarray
    mean_exists: np.ndarray
    sd_exists: np.ndarray


def _moments_one(d: _Data, param: str):
    r"""Mean and sd of ``param``: mixtures on the n-rule, tau on the 2n-rule's nodes."""
    g = d.grid
    if param == "tau":
        mean, var = tau_mean_var(g)
        return mean, jnp.sqrt(var)
    w = jnp.exp(g.log_weight)
    c = mixture_components(g.tau**2, g.mu.mean, g.mu.var, d.y, d.sigma2)
    if param == "theta":
        mean, var = jax.vmap(mixture_mean_var, in_axes=(None, 1, 1))(w, c.theta_mean, c.theta_var)
    else:
        mean, var = mixture_mean_var(w, c.mu_mean, c.new_var if param == "theta_new" else c.mu_var)
    return mean, jnp.sqrt(var)


@register
@functools.partial(jax.jit, static_argnames=("param",))
def _moments_kernel(data: _Data, *, param: str):
    return jax.vmap(lambda d: _moments_one(d, param))(data)


def moments(post: Posterior, param: str) -> Moments:
    r"""Posterior mean and sd of ``mu``, ``tau``, ``theta`` or ``theta_new`` (user units).

    .. math::
        E[\phi \mid y] = \sum_k w_k m_k,\qquad
        Var[\phi \mid y] = \sum_k w_k \big(s_k^2 + (m_k - E[\phi \mid y])^2\big)

    over the normal components of the mixture (see the module doc); tau's on the
    2n-rule's nodes. They exist as in :func:`hierjax.fit`: tau's mean (sd) where the
    tail index ``alpha > 1`` (``> 2``), theta_new's too, mu's too under a flat mu prior
    (always under a normal one), theta_j's always.

    Returns:
        Moments, fields ``[B]`` (``[B, J]`` for theta).
    """
    if param not in _MOMENT_PARAMS:
        raise InputError(f"param must be one of {_MOMENT_PARAMS}, got {param!r}")
    out = _in_blocks(_moments_kernel, (_data(post),), param=param)
    mean, sd = (np.asarray(a, np.float64) for a in out)
    has_mean, has_sd = post.alpha > 1.0, post.alpha > 2.0
    if param == "mu" and isinstance(post.mu_prior, NormalMu):
        # a normal mu prior bounds V_mu; under a flat one V_mu ~ tau^2 / J has tau's tail
        has_mean, has_sd = np.ones_like(has_mean), np.ones_like(has_sd)
    if param == "theta":
        mean, sd = _own_groups(post, mean), _own_groups(post, sd)
        has_mean = has_sd = np.asarray(post.mask, bool)
    mean = _from_std(post, param, mean)
    sd = post.scale.reshape((-1,) + (1,) * (sd.ndim - 1)) * sd
    missing = np.inf if param == "tau" else np.nan
    mean = np.where(has_mean, mean, missing)
    sd = np.where(has_sd, sd, np.inf)
    if param == "theta":
        mean, sd = (np.where(post.mask, a, np.nan) for a in (mean, sd))
    dt = _dtype(post)
    return Moments(mean.astype(dt), sd.astype(dt), has_mean, has_sd)


class PosteriorSummary(NamedTuple):
    """The summaries :class:`hierjax.Fit` reports, answered by a :class:`Posterior`'s own
    queries (:func:`summarize`); the source of :meth:`Posterior.to_arrow`.

    Attributes:
        mu, tau, theta, theta_new: :class:`hierjax.Marginal` as in :class:`hierjax.Fit`
            (fields ``[B]``, theta's ``[B, J]``, quantiles a trailing ``[Q]``).
        status: the Posterior's status bits, int32 ``[B]``.
        mask: real groups, ``[B, J]`` bool.
        levels: the quantile levels (float64), ``[Q]``.
        names: dataset labels, length ``B``.
        groups: group labels per dataset (or None), length ``B``.
        notes: '' for every dataset (a Posterior holds valid datasets only), length ``B``.
    """

    mu: Marginal
    tau: Marginal
    theta: Marginal
    theta_new: Marginal
    status: np.ndarray
    mask: np.ndarray
    levels: np.ndarray
    names: tuple
    groups: tuple
    notes: tuple

    def to_arrow(self, params=None):
        """The tidy table (:func:`hierjax.io.tidy.fit_table`) as a ``pyarrow.Table``."""
        from hierjax.io.tidy import fit_table

        return fit_table(self, params)

    def to_pandas(self, params=None):
        """The tidy table as a ``pandas.DataFrame``."""
        return self.to_arrow(params).to_pandas()


def summarize(post: Posterior, levels=DEFAULT_LEVELS) -> PosteriorSummary:
    """:func:`moments`, :func:`quantile` at ``levels`` (``[Q]``, may be empty) and
    :func:`prob_greater` than 0 of mu, tau, theta and theta_new, as a
    :class:`PosteriorSummary` (the fields of :class:`hierjax.Fit`'s marginals).

    Example:
        >>> import hierjax
        >>> post = hierjax.posterior([28, 8, -3, 7, -1, 1, 18, 12],
        ...                          [15, 10, 16, 11, 9, 11, 10, 18])
        >>> hierjax.summarize(post).theta.quantiles.shape
        (1, 8, 5)
    """
    lv = np.asarray(levels, np.float64).reshape(-1)
    if lv.size:
        _levels(lv, "levels")
    dt = _dtype(post)
    marg = {}
    for param in _MOMENT_PARAMS:
        mo = moments(post, param)
        shape = mo.mean.shape
        q = quantile(post, param, lv) if lv.size else np.zeros(shape + (0,), dt)
        p = prob_greater(post, param, 0.0)
        if param == "theta":
            p = np.where(post.mask, p, np.nan).astype(dt)
        marg[param] = Marginal._make((mo.mean, mo.sd, q, p, mo.mean_exists, mo.sd_exists))
    return PosteriorSummary(
        **marg,
        status=np.asarray(post.status, np.int32),
        mask=np.asarray(post.mask, bool),
        levels=lv,
        names=tuple(post.names),
        groups=tuple(post.groups),
        notes=("",) * len(post.names),
    )


# --------------------------------------------------------------------------- pairwise
def difference_given_tau(tau2, y, sigma2, mu: MuGivenTau):
    r"""Mean and variance of ``theta_i - theta_j | tau, y`` for all pairs, ``[J, J]`` each.

    With ``v_i = sigma_i^2 + tau^2``, ``B_i = sigma_i^2 / v_i`` and
    ``Cov(theta_i, theta_j | tau, y) = B_i B_j V_mu`` (``i != j``, through mu):

    .. math::
        E = \tau^2\Big(\frac{y_i}{v_i} - \frac{y_j}{v_j}
            + \frac{(\sigma_i^2 - \sigma_j^2)\hat\mu}{v_i v_j}\Big),\quad
        Var = \tau^2\Big(\frac{\sigma_i^2}{v_i} + \frac{\sigma_j^2}{v_j}\Big)
            + \tau^4 \frac{(\sigma_i^2 - \sigma_j^2)^2}{v_i^2 v_j^2} V_\mu

    (``(1 - B_i)\sigma_i^2 + (1 - B_j)\sigma_j^2 + (B_i - B_j)^2 V_mu``, written without
    the cancellation of ``1 - B``).
    """
    E, C = _difference_terms(tau2, y, sigma2, mu)
    diag = jnp.eye(y.shape[0], dtype=bool)
    return tau2 * E, jnp.where(diag, 0.0, tau2 * C)


def _difference_terms(tau2, y, sigma2, mu: MuGivenTau):
    """``(E, C)`` with mean ``tau^2 E`` and variance ``tau^2 C`` of the differences."""
    v = sigma2 + tau2
    a = y / v
    b = sigma2 / v
    # (sigma_i^2 - sigma_j^2) / (v_i v_j), divided in turn: v_i v_j overflows float32 far
    # out in a heavy tail (tau ~ 1e10 in standard units), and inf / inf is nan
    dsv = (sigma2[:, None] - sigma2[None, :]) / v[:, None] / v[None, :]
    E = a[:, None] - a[None, :] + dsv * mu.mean
    C = b[:, None] + b[None, :] + (tau2 * dsv) * (dsv * mu.var)
    return E, C


def _pairwise_one(d: _Data):
    g = d.grid

    def at(t, mm, mv):
        E, C = _difference_terms(t * t, d.y, d.sigma2, MuGivenTau(mm, mv, mv))
        return _Phi(t * E / jnp.sqrt(C))  # mean / sd = tau E / sqrt(C)

    P = jnp.einsum("k,kij->ij", jnp.exp(g.log_weight), jax.vmap(at)(g.tau, g.mu.mean, g.mu.var))
    J = d.y.shape[0]
    return jnp.where(jnp.eye(J, dtype=bool), 0.0, jnp.clip(P, 0.0, 1.0))


@register
@jax.jit
def _pairwise_kernel(data: _Data):
    return jax.vmap(_pairwise_one)(data)


def pairwise_prob(post: Posterior):
    r"""``P(theta_i > theta_j | y)`` for all pairs, ``[B, J, J]`` (entry ``[b, i, j]``).

    .. math::
        P(\theta_i > \theta_j \mid y) = \sum_k w_k\,
            \Phi\big(E_{ij}(\tau_k) / \sqrt{Var_{ij}(\tau_k)}\big)

    with the exact conditional moments of :func:`difference_given_tau`. The diagonal is
    0 (``P(theta_i > theta_i) = 0``); nan where a group is padded.
    """
    P = _own_groups(
        post, np.asarray(_in_blocks(_pairwise_kernel, (_data(post),)), np.float64), (1, 2)
    )
    m = post.mask
    return np.where(m[:, :, None] & m[:, None, :], P, np.nan).astype(_dtype(post))
