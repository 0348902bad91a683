r"""A functional core for one dataset, usable inside the caller's ``jit``, ``vmap`` and ``grad``.

:func:`log_evidence` and :func:`summaries` take ONE dataset in the caller's units
(``y[J]``, ``sigma[J]``, ``mask[J]``) and priors as pytrees whose continuous parameters
are array leaves (``HalfCauchy(scale)``, ``LogNormal(loc, sigma)``, ``NormalMu(loc,
scale)``). They are traceable: no host-side NumPy on values, no Python control flow on
values and no value checks (a bad dataset is reported in ``status``, never raised), so
``jax.jit(jax.vmap(log_evidence))`` over a batch and ``jax.grad`` of a sum of log
evidences work as written.

**Standardisation contract.** Inputs and outputs are in the caller's units. Inside, each
dataset is mapped to standard units as :func:`hierjax.engine.batch.standardize` does on the host
(centre ``loc``: the Fisher-weighted mean; scale ``s``: the geometric mean of the
``sigma_j``), in the data's dtype and traceably, so that data in units of ``1e-3`` or
``1e3`` get the same grid. The tau prior is carried over exactly,
``log p_s(t) = log p(s t) + log s`` (any prior, no ``rescaled`` needed), the mu prior by
``NormalMu.rescaled``, and the Jacobian is added back:

.. math::
    \log p(y) = \log p_s\big((y - loc) / s\big) - (J - 1 + [\mu\ \mathrm{normal}]) \log s

(flat mu: ``J - 1``, the flat prior is a density in mu's own units). ``loc`` and ``s`` sit
under ``stop_gradient``: the value does not depend on them (the map is exact), so the
derivatives are those of the model alone.

**Derivatives.** The tau grid (where the nodes go: a search with while loops) is built
from the data under ``stop_gradient``; the integrand ``p(tau) p(y | tau)`` is then
evaluated again at those fixed nodes from the live inputs, so ``grad`` differentiates the
quadrature sum and never a loop. The integral does not depend on where the nodes are (to
quadrature accuracy), so the derivative is accurate to about the value's own accuracy.

**Improper priors.** With a uniform (or other improper) tau prior or a flat mu prior the
integral is taken against the improper density as written (``p(tau) = 1``, ``p(mu) = 1``
in the caller's units, :class:`hierjax.model.conditionals` ``log p(y | tau)``): a proper ``log
p(y)`` needs both priors proper. Data-dependent priors (``Jeffreys`` and the like) must be
bound first (``prior.bind(sigma)``, host side).

References:
    Gelman et al. (2013), *Bayesian Data Analysis*, 3rd ed., sec. 5.4 (the conditionals).
    Trefethen, *Approximation Theory and Approximation Practice*, ch. 19 (Clenshaw-Curtis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import erfc, logsumexp, ndtri

from hierjax.inference.grid import TauGrid, default_nodes, grid_tau_of_z, tail_alpha, tau_grid
from hierjax.model.conditionals import MuGivenTau, mixture_components, mu_given_tau
from hierjax.model.priors import DataTauPrior, FlatMu, MuPrior, NormalMu, TauPrior, Uniform
from hierjax.numerics.quadrature import chebyshev_matrix, clenshaw_curtis
from hierjax.status import STATUS

__all__ = ["CoreMarginal", "CoreSummary", "log_evidence", "standardize", "summaries"]

# the default priors (BDA3's): module-level instances, immutable
_UNIFORM = Uniform()
_FLAT = FlatMu()

_SQRT_HALF = math.sqrt(0.5)
_BISECTIONS = 60  # halvings of a quantile's bracket (then one Newton step)


# --------------------------------------------------------------------------- standard units
class Standard(NamedTuple):
    """One dataset in standard units (see the module doc).

    Attributes:
        y: ``(y - loc) / scale`` (0 where masked), ``[J]``.
        sigma2: ``(sigma / scale)^2`` (1 where masked), ``[J]``.
        loc: the Fisher-weighted mean, scalar (under ``stop_gradient``).
        scale: the geometric mean of the ``sigma_j``, scalar (under ``stop_gradient``).
        n_groups: number of real groups, scalar (the data's dtype).
        valid: every real ``y_j`` finite and ``sigma_j`` positive and finite, at least one
            group, scalar bool.
    """

    y: jnp.ndarray
    sigma2: jnp.ndarray
    loc: jnp.ndarray
    scale: jnp.ndarray
    n_groups: jnp.ndarray
    valid: jnp.ndarray


def standardize(y, sigma, mask) -> Standard:
    r"""Traceable :func:`hierjax.engine.batch.standardize` of one dataset.

    .. math::
        s = \exp\Big(\frac1J \sum_j \log\sigma_j\Big),\qquad
        loc = \frac{\sum_j y_j (s/\sigma_j)^2}{\sum_j (s/\sigma_j)^2}

    Args:
        y, sigma: ``[J]`` in the caller's units; mask: ``[J]`` bool.

    Returns:
        :class:`Standard`; invalid groups are replaced by benign values and ``valid`` is
        False.
    """
    valid = jnp.all(
        jnp.where(mask, jnp.isfinite(y) & jnp.isfinite(sigma) & (sigma > 0), True)
    ) & jnp.any(mask)
    sg = jax.lax.stop_gradient
    ok = mask & jnp.isfinite(y) & jnp.isfinite(sigma) & (sigma > 0)
    n = jnp.maximum(jnp.sum(ok), 1).astype(y.dtype)
    log_sigma = jnp.where(ok, jnp.log(jnp.where(ok, sigma, 1.0)), 0.0)
    scale = sg(jnp.exp(jnp.sum(log_sigma) / n))
    s2 = jnp.where(ok, (sigma / scale) ** 2, 1.0)
    prec = jnp.where(ok, 1.0 / s2, 0.0)
    loc = sg(jnp.sum(prec * jnp.where(ok, y, 0.0)) / jnp.maximum(jnp.sum(prec), 1e-30))
    y_std = jnp.where(ok, (y - loc) / scale, 0.0)
    return Standard(y_std, s2, loc, scale, jnp.sum(mask).astype(y.dtype), valid)


@jax.tree_util.register_pytree_node_class
class _ScaledTau(TauPrior):
    """The tau prior of ``t = tau / scale``: ``log p_s(t) = log p(scale t) + log scale``."""

    def __init__(self, base: TauPrior, scale):
        self.base, self.scale = base, scale

    def tree_flatten(self):
        return (self.base, self.scale), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    @property
    def proper(self):
        return self.base.proper

    @property
    def tail_power(self):
        return self.base.tail_power

    @property
    def origin_power(self):
        return self.base.origin_power

    def log_density(self, tau):
        return self.base.log_density(tau * self.scale) + jnp.log(self.scale)


def _cast(tree, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


def _inputs(y, sigma, mask, tau_prior: TauPrior, mu_prior: MuPrior):
    """Checks on types and shapes (static), the dtype, the standard units and the priors."""
    if not isinstance(tau_prior, TauPrior):
        raise TypeError(
            f"tau_prior must be a hierjax tau prior (e.g. HalfCauchy(5.0)), got {tau_prior!r}"
        )
    if not isinstance(mu_prior, (FlatMu, NormalMu)):
        raise TypeError(f"mu_prior must be FlatMu() or NormalMu(loc, scale), got {mu_prior!r}")
    if isinstance(tau_prior, DataTauPrior) and not tau_prior.bound:
        raise ValueError(
            f"{type(tau_prior).__name__} depends on the sigma_j: bind it first "
            "(prior.bind(sigma), host side)"
        )
    y, sigma = jnp.asarray(y), jnp.asarray(sigma)
    dtype = jnp.result_type(y.dtype, sigma.dtype, float)
    y, sigma = y.astype(dtype), sigma.astype(dtype)
    if y.ndim != 1 or y.shape != sigma.shape:
        raise ValueError(
            f"y and sigma must be 1-D of one length (one dataset; vmap for a "
            f"batch), got shapes {y.shape} and {sigma.shape}"
        )
    mask = jnp.ones(y.shape, bool) if mask is None else jnp.asarray(mask)
    if mask.shape != y.shape or mask.dtype != jnp.bool_:
        raise ValueError(
            f"mask must be a bool array of shape {y.shape}, got {mask.dtype} {mask.shape}"
        )
    st = standardize(y, sigma, mask)
    tau_std = _ScaledTau(_cast(tau_prior, dtype), st.scale)
    mu_std = (
        _cast(mu_prior, dtype).rescaled(st.loc, st.scale)
        if isinstance(mu_prior, NormalMu)
        else FlatMu()
    )
    return dtype, mask, st, tau_std, mu_std


class _Nodes(NamedTuple):
    """The 2n-rule at fixed nodes with live integrand (fields ``[2n + 1]``)."""

    tau: jnp.ndarray  # nodes in standard units (no gradient)
    log_f: jnp.ndarray  # log(w_k p(tau_k) p(y | tau_k) dtau/dz), live
    mu: MuGivenTau  # at the nodes, live
    grid: TauGrid  # no gradient


def _nodes(mask, st: Standard, tau_std, mu_std, n: int) -> _Nodes:
    """The grid from the data under ``stop_gradient``, the integrand at its nodes live."""
    sg = jax.lax.stop_gradient
    dtype = st.y.dtype
    grid = tau_grid(
        sg(st.y), sg(st.sigma2), mask, jax.tree.map(sg, tau_std), jax.tree.map(sg, mu_std), n
    )
    grid = jax.tree.map(sg, grid)
    z_np, w_np = clenshaw_curtis(2 * n)
    z = jnp.asarray(z_np, dtype)
    tau, x, u, omu = grid_tau_of_z(z, grid.x0, grid.u_lo, grid.one_minus_u_hi, grid.kappa)
    # dtau/dz = tau * kappa / (u (1 - u)) * (u_hi - u_lo) / 2: fixed with the nodes
    log_jac = (
        x
        + jnp.log(grid.kappa)
        - jnp.log(u)
        - jnp.log(omu)
        + jnp.log(0.5 * (1.0 - grid.u_lo - grid.one_minus_u_hi))
    )
    mu = jax.vmap(lambda t: mu_given_tau(t * t, st.y, st.sigma2, mask, mu_std))(tau)
    log_prior = jax.vmap(tau_std.log_density)(tau)
    log_f = jnp.log(jnp.asarray(w_np, dtype)) + log_prior + mu.log_lik + log_jac
    log_f = jnp.where(jnp.isnan(log_f), -jnp.inf, log_f)
    return _Nodes(tau, log_f, mu, grid)


def _log_jacobian(st: Standard, mu_prior: MuPrior):
    """``(J - 1 + [mu normal]) log s``: standard units back to the caller's (module doc)."""
    k = st.n_groups - (0.0 if isinstance(mu_prior, NormalMu) else 1.0)
    return k * jnp.log(st.scale)


def _n_rule_log_z(log_f, n: int):
    """``log Z`` of the nested n-rule from the 2n-rule's integrand (same nodes, own weights)."""
    dtype = log_f.dtype
    w2 = jnp.log(jnp.asarray(clenshaw_curtis(2 * n)[1][::2], dtype))
    w1 = jnp.log(jnp.asarray(clenshaw_curtis(n)[1], dtype))
    return logsumexp(log_f[::2] - w2 + w1)


def log_evidence(
    y,
    sigma,
    mask=None,
    tau_prior: TauPrior = _UNIFORM,
    mu_prior: MuPrior = _FLAT,
    *,
    n: int | None = None,
):
    r"""The exact log marginal likelihood ``log p(y)`` of one dataset, differentiable.

    .. math::
        p(y) = \int_0^\infty p(\tau) \int p(\mu)\, \prod_j N(y_j \mid \mu,
            \sigma_j^2 + \tau^2)\, d\mu\, d\tau

    (BDA3 eq. 5.21 for the inner integral), by Clenshaw-Curtis over the dataset's tau grid
    (``2n + 1`` nodes). Differentiable with respect to ``y``, ``sigma`` and the priors'
    leaves (the nodes are fixed, see the module doc); a traceable function of one dataset:
    ``jax.vmap`` it over a batch.

    Args:
        y: group estimates in the caller's units, ``[J]``.
        sigma: their known standard errors, ``[J]``.
        mask: ``True`` for real groups, ``[J]`` bool (default: all).
        tau_prior: a tau prior pytree (``HalfCauchy(5.0)``, ``LogNormal(m, s)``, ...).
        mu_prior: ``FlatMu()`` or ``NormalMu(loc, scale)``.
        n: Clenshaw-Curtis order (static; default 64 in float64, 32 in float32).

    Returns:
        ``log p(y)``, scalar in the data's dtype (against the improper densities as
        written where a prior is improper; ``nan`` for invalid data: see
        :func:`summaries`' ``status``).

    Example:
        >>> import jax, jax.numpy as jnp, hierjax
        >>> y, s = map(jnp.asarray, hierjax.eight_schools())
        >>> f = lambda sc: hierjax.core.log_evidence(y, s, None, hierjax.HalfCauchy(sc),
        ...                                          hierjax.NormalMu(0.0, 5.0))
        >>> value, slope = jax.value_and_grad(f)(5.0)
    """
    dtype, mask, st, tau_std, mu_std = _inputs(y, sigma, mask, tau_prior, mu_prior)
    n = default_nodes(dtype) if n is None else int(n)
    nodes = _nodes(mask, st, tau_std, mu_std, n)
    out = logsumexp(nodes.log_f) - _log_jacobian(st, mu_prior)
    return jnp.where(st.valid, out, jnp.nan)


# --------------------------------------------------------------------------- summaries
class CoreMarginal(NamedTuple):
    """Posterior summary of one scalar (or ``[J]``) quantity, in the caller's units.

    Attributes:
        mean: posterior mean (``nan`` where it does not exist; ``inf`` for tau's), ``[]``
            or ``[J]``.
        sd: posterior sd (``inf`` where it does not exist), ``[]`` or ``[J]``.
        quantiles: at the requested levels, ``[Q]`` or ``[J, Q]``.
        p_gt0: ``P(. > 0 | y)``, ``[]`` or ``[J]``.
    """

    mean: jnp.ndarray
    sd: jnp.ndarray
    quantiles: jnp.ndarray
    p_gt0: jnp.ndarray


class CoreSummary(NamedTuple):
    """Posterior summaries of one dataset (:func:`summaries`).

    Attributes:
        mu, tau, theta_new: :class:`CoreMarginal` with scalar fields (quantiles ``[Q]``).
        theta: :class:`CoreMarginal` with ``[J]`` fields (quantiles ``[J, Q]``); ``nan``
            at masked groups.
        log_evidence: as :func:`log_evidence`, scalar.
        log_evidence_error: ``|log Z_n - log Z_2n|``, the nested rules' difference, scalar.
        error: the largest difference between the nested rules (``2n`` against ``n``) of
            a mean, sd or ``P(> 0)`` of mu, theta_j or theta_new (in posterior sds), or
            of a CDF of mu or theta_new (the grid's own check), scalar. The summaries
            come from the ``2n``-rule, so this bounds their error generously.
        status: bits of :data:`hierjax.STATUS` (0 = ok): ``grid_unresolved`` when
            ``error`` exceeds ``0.25 sqrt(eps)``, ``tail_truncated``, ``unconverged``
            (the grid's search), ``invalid`` (a non-finite value or ``sigma <= 0`` in a
            real group, or no group: every summary is then ``nan``), int32 scalar.
    """

    mu: CoreMarginal
    tau: CoreMarginal
    theta: CoreMarginal
    theta_new: CoreMarginal
    log_evidence: jnp.ndarray
    log_evidence_error: jnp.ndarray
    error: jnp.ndarray
    status: jnp.ndarray


def _phi_upper(x, m, s):
    """``P(N(m, s^2) > x)``."""
    return 0.5 * erfc((x - m) / s * _SQRT_HALF)


def _mixture(w, m, v, threshold, levels, mean_ok, sd_ok):
    """Moments, ``P(> threshold)`` and quantiles of ``sum_k w_k N(m_k, v_k)`` (fields scalar,
    quantiles ``[Q]``); quantiles by bisection on the CDF in the components' bracket, then
    one Newton step whose derivative is the implicit one."""
    live = w > 0
    wz = jnp.where(live, w, 0.0)
    mean = jnp.sum(jnp.where(live, wz * m, 0.0))
    var = jnp.sum(jnp.where(live, wz * (v + (m - mean) ** 2), 0.0))
    s = jnp.sqrt(v)
    p_gt0 = jnp.sum(jnp.where(live, wz * _phi_upper(threshold, m, s), 0.0))

    def cdf(x):
        return jnp.sum(jnp.where(live, wz * 0.5 * erfc((m - x) / s * _SQRT_HALF), 0.0))

    def pdf(x):
        return jnp.sum(
            jnp.where(live, wz * jnp.exp(-0.5 * ((x - m) / s) ** 2) / s, 0.0)
        ) / math.sqrt(2.0 * math.pi)

    # components below a negligible weight do not widen the bracket
    keep = w > 1e-3 * float(jnp.finfo(w.dtype).eps)

    def one(p):
        zp = ndtri(p)
        q_k = m + zp * s
        lo = jnp.min(jnp.where(keep, q_k, jnp.inf))
        hi = jnp.max(jnp.where(keep, q_k, -jnp.inf))
        lo, hi = jax.lax.stop_gradient((lo, hi))

        def halve(_, b):
            a, c = b
            mid = 0.5 * (a + c)
            below = cdf(mid) < p
            return jnp.where(below, mid, a), jnp.where(below, c, mid)

        a, c = jax.lax.fori_loop(0, _BISECTIONS, halve, (lo, hi))
        x = jax.lax.stop_gradient(0.5 * (a + c))
        return x - (cdf(x) - p) / pdf(x)

    q = jax.vmap(one)(jnp.asarray(levels, w.dtype)) if levels else jnp.zeros((0,), w.dtype)
    mean = jnp.where(mean_ok, mean, jnp.nan)
    sd = jnp.where(sd_ok, jnp.sqrt(var), jnp.inf)
    return CoreMarginal(mean, sd, q, p_gt0)


def _tau_marginal(nodes: _Nodes, w, levels, mean_ok, sd_ok):
    """tau's moments (2n-rule) and quantiles: bisection in ``z`` on the CDF of the density's
    Chebyshev interpolant (fields scalar, quantiles ``[Q]``; standard units)."""
    tau = nodes.tau
    mean = jnp.sum(w * tau)
    var = jnp.sum(w * (tau - mean) ** 2)
    N = tau.shape[0] - 1
    dtype = tau.dtype
    # density in z: f_k = p(tau_k | y) dtau/dz = exp(log_f_k) / w_k / Z
    log_cc = jnp.log(jnp.asarray(clenshaw_curtis(N)[1], dtype))
    dens = jnp.exp(nodes.log_f - log_cc - logsumexp(nodes.log_f))
    a = jnp.asarray(chebyshev_matrix(N), dtype) @ dens  # f(z) = sum_m a_m T_m(z)
    # int_{-1}^{z} T_m = b-coefficients: b_m = (a_{m-1} - a_{m+1}) / (2m), a_0 doubled
    a_ext = jnp.concatenate([a, jnp.zeros((2,), dtype)])
    m_idx = jnp.arange(1, N + 2)
    a_prev = a_ext[: N + 1].at[0].multiply(2.0)
    b = (a_prev - a_ext[2 : N + 3]) / (2.0 * m_idx)
    sign_at_m1 = jnp.where(m_idx % 2 == 0, 1.0, -1.0)  # T_m(-1) = (-1)^m

    def cdf_z(zz):
        t = jnp.cos(m_idx * jnp.arccos(jnp.clip(zz, -1.0, 1.0)))
        return jnp.sum(b * (t - sign_at_m1))

    total = cdf_z(jnp.asarray(1.0, dtype))
    g = nodes.grid

    def one(p):
        def halve(_, br):
            lo, hi = br
            mid = 0.5 * (lo + hi)
            below = cdf_z(mid) < p * total
            return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

        lo, hi = jax.lax.fori_loop(
            0, _BISECTIONS, halve, (jnp.asarray(-1.0, dtype), jnp.asarray(1.0, dtype))
        )
        zq = 0.5 * (lo + hi)
        return grid_tau_of_z(zq, g.x0, g.u_lo, g.one_minus_u_hi, g.kappa)[0]

    q = jax.vmap(one)(jnp.asarray(levels, dtype)) if levels else jnp.zeros((0,), dtype)
    mean = jnp.where(mean_ok, mean, jnp.inf)
    sd = jnp.where(sd_ok, jnp.sqrt(var), jnp.inf)
    return CoreMarginal(mean, sd, jax.lax.stop_gradient(q), jnp.ones((), dtype))


def _to_units(mg: CoreMarginal, loc, scale, shift=True):
    return CoreMarginal(
        loc * shift + scale * mg.mean, scale * mg.sd, loc * shift + scale * mg.quantiles, mg.p_gt0
    )


def _difference(a: CoreMarginal, b: CoreMarginal, unit):
    """The largest change between two summaries, in units of ``unit`` (P(> 0) absolute)."""
    d = [jnp.abs(a.p_gt0 - b.p_gt0)]
    for x, y in ((a.mean, b.mean), (a.sd, b.sd)):
        d.append(jnp.where(jnp.isfinite(x) & jnp.isfinite(y), jnp.abs(x - y) / unit, 0.0))
    if a.quantiles.shape[-1] and b.quantiles.shape[-1]:
        d.append(jnp.max(jnp.abs(a.quantiles - b.quantiles), axis=-1) / unit)
    return jnp.max(jnp.stack([jnp.max(e) for e in d]))


def summaries(
    y,
    sigma,
    mask=None,
    tau_prior: TauPrior = _UNIFORM,
    mu_prior: MuPrior = _FLAT,
    *,
    levels: Sequence[float] = (0.025, 0.5, 0.975),
    n: int | None = None,
) -> CoreSummary:
    r"""Exact posterior summaries of one dataset, traceable (jit, vmap).

    .. math::
        p(\mu, \theta \mid y) = \int p(\tau \mid y)\, p(\mu \mid \tau, y)
            \prod_j p(\theta_j \mid \mu, \tau, y)\, d\tau

    Each marginal of mu, theta_j and theta_new is a normal mixture over the tau nodes
    (BDA3 sec. 5.4), summarised on the ``2n``-rule and checked against the nested
    ``n``-rule (``error``, ``status``). Moments that do not exist (``E[tau^k | y]`` needs
    ``alpha > k``, :func:`hierjax.inference.grid.tail_alpha`) come back ``nan`` (means) or ``inf``
    (tau's mean, sds). The same standardisation contract as :func:`log_evidence`.

    Args:
        y, sigma, mask, tau_prior, mu_prior, n: as :func:`log_evidence`.
        levels: quantile levels (static tuple; ``()`` for moments only).

    Returns:
        :class:`CoreSummary`.

    Example:
        >>> import jax, jax.numpy as jnp, hierjax
        >>> y, s = map(jnp.asarray, hierjax.eight_schools())
        >>> out = jax.jit(hierjax.core.summaries)(y, s)
        >>> round(float(out.mu.mean), 3), [round(float(q), 3) for q in out.tau.quantiles]
        (7.932, [0.243, 5.239, 20.752])
    """
    levels = tuple(float(p) for p in levels)
    dtype, mask, st, tau_std, mu_std = _inputs(y, sigma, mask, tau_prior, mu_prior)
    n = default_nodes(dtype) if n is None else int(n)
    nodes = _nodes(mask, st, tau_std, mu_std, n)
    log_z = logsumexp(nodes.log_f)
    log_z_n = _n_rule_log_z(nodes.log_f, n)
    w_fine = jnp.exp(nodes.log_f - log_z)
    w2_even = jnp.asarray(clenshaw_curtis(2 * n)[1][::2], dtype)
    log_f_n = (
        nodes.log_f[::2] - jnp.log(w2_even) + jnp.log(jnp.asarray(clenshaw_curtis(n)[1], dtype))
    )
    w_n = jnp.exp(log_f_n - log_z_n)
    threshold = -st.loc / st.scale

    alpha = tail_alpha(st.n_groups, tau_prior, mu_prior)
    has_mean, has_sd = alpha > 1.0, alpha > 2.0
    always = jnp.array(True)
    mu_ok = (always, always) if isinstance(mu_prior, NormalMu) else (has_mean, has_sd)
    tau2 = nodes.tau**2
    mu = nodes.mu

    def marginals(w, sl, levels):
        m, v, t2 = mu.mean[sl], mu.var[sl], tau2[sl]
        out_mu = _mixture(w, m, v, threshold, levels, *mu_ok)
        out_new = _mixture(w, m, t2 + v, threshold, levels, has_mean, has_sd)
        comp = mixture_components(t2, m, v, st.y, st.sigma2)
        th_m, th_v = comp.theta_mean, comp.theta_var
        out_theta = jax.vmap(
            lambda a, b: _mixture(w, a, b, threshold, levels, always, always), in_axes=(1, 1)
        )(th_m, th_v)
        return out_mu, out_new, out_theta

    fine = marginals(w_fine, slice(None), levels)
    # the n-rule's moments and P(> 0) (its quantiles would double the work; grid.error
    # checks the CDFs of mu and theta_new)
    coarse = marginals(w_n, slice(None, None, 2), ())
    err = jnp.max(
        jnp.stack(
            [
                _difference(fine[0], coarse[0], _unit(fine[0])),
                _difference(fine[1], coarse[1], _unit(fine[1])),
                jnp.max(
                    jnp.where(
                        mask,
                        jax.vmap(lambda a, b: _difference(a, b, _unit(a)))(fine[2], coarse[2]),
                        0.0,
                    )
                ),
                nodes.grid.error,
            ]
        )
    )
    tau_mg = _tau_marginal(nodes, w_fine, levels, has_mean, has_sd)

    sc, loc = st.scale, st.loc
    theta = _to_units(fine[2], loc, sc)
    nanJ = jnp.where(mask, 0.0, jnp.nan)
    theta = CoreMarginal(
        theta.mean + nanJ, theta.sd + nanJ, theta.quantiles + nanJ[:, None], theta.p_gt0 + nanJ
    )
    ev_err = jnp.abs(log_z - log_z_n)
    limit = 0.25 * float(jnp.finfo(dtype).eps) ** 0.5
    status = (
        jnp.where(~(err <= limit), STATUS["grid_unresolved"], 0)
        | jnp.where(nodes.grid.truncated, STATUS["tail_truncated"], 0)
        | jnp.where(nodes.grid.converged, 0, STATUS["unconverged"])
        | jnp.where(st.valid, 0, STATUS["invalid"])
    ).astype(jnp.int32)
    log_ev = jnp.where(st.valid, log_z - _log_jacobian(st, mu_prior), jnp.nan)
    # invalid data: nan summaries beside the status bit, not numbers of the groups kept
    marg = jax.tree.map(
        lambda a: jnp.where(st.valid, a, jnp.nan),
        (
            _to_units(fine[0], loc, sc),
            _to_units(tau_mg, 0.0, sc, shift=False),
            theta,
            _to_units(fine[1], loc, sc),
        ),
    )
    mu_m, tau_m, theta_m, new_m = marg
    return CoreSummary(mu_m, tau_m, theta_m, new_m, log_ev, ev_err, err, status)


def _unit(mg: CoreMarginal):
    """A marginal's scale for error checks: its sd, else its central 95% width."""
    q = mg.quantiles
    spread = (q[..., -1] - q[..., 0]) / 4.0 if q.shape[-1] >= 2 else jnp.ones_like(mg.sd)
    return jnp.where(jnp.isfinite(mg.sd), mg.sd, spread)
