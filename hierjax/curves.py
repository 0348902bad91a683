r"""Conditional curves over tau: how the posterior moves as tau does (BDA3 sec. 5.4, figs 5.5-5.7).

For one dataset and a tau axis, everything given tau is closed form
(:mod:`hierjax.model.conditionals`), and the marginal posterior of tau is the unnormalised

.. math::
    p(\tau \mid y) = \frac{p(\tau)\, p(y \mid \tau)}{Z},\qquad
    Z = \int_0^\infty p(\tau)\, p(y \mid \tau)\, d\tau

whose normalising constant ``Z`` is the engine's quadrature (the 2n-rule's
``log_evidence`` of :func:`hierjax.inference.grid.tau_grid`, which integrates
``p(x | y) = tau p(tau | y)`` over ``x = log tau``). The density is evaluated in tau
itself, not as ``p(x | y) / tau``, so it is finite at ``tau = 0`` (where the uniform
prior puts its largest value for the eight schools). Given tau (BDA3 eqs. 5.17-5.20):

.. math::
    \mu \mid \tau, y \sim N(\hat\mu, V_\mu),\qquad
    \theta_j \mid \tau, y \sim N\big((1 - B_j) y_j + B_j \hat\mu,\;
        (1 - B_j)\sigma_j^2 + B_j^2 V_\mu\big),\quad B_j = \frac{\sigma_j^2}{\sigma_j^2 + \tau^2}

and the marginal of mu is the normal mixture ``p(mu | y) = sum_k w_k N(mu | mu_hat_k, V_k)``
over the grid's nodes (:func:`mu_density`).

Both entry points follow :func:`hierjax.fit`: host-side checks, standardisation in
float64, fixed-shape blocks of ``chunk`` datasets through one module-level ``jit`` each,
run by the batch driver (:mod:`hierjax.engine.driver`), results in the data's units.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hierjax.engine import driver
from hierjax.engine.batch import InputError
from hierjax.engine.cache import register
from hierjax.engine.prepare import Prepared, prepare
from hierjax.inference.grid import tau_grid
from hierjax.inference.summaries import mixture_quantile, tau_summary
from hierjax.model.conditionals import mixture_components, mu_given_tau_near, reference_point
from hierjax.model.priors import NormalMu, Uniform
from hierjax.status import ROUNDOFF_LIMIT, STATUS

__all__ = [
    "TauCurves",
    "MuDensity",
    "tau_curves",
    "mu_density",
    "DEFAULT_POINTS",
    "TAU_AXIS_LEVEL",
    "MU_AXIS_LEVELS",
]

#: Points on a default axis.
DEFAULT_POINTS = 201
#: The default tau axis runs from 0 to this posterior quantile of tau.
TAU_AXIS_LEVEL = 0.995
#: The default mu axis spans these posterior quantiles of mu, widened by 10% each side.
MU_AXIS_LEVELS = (0.0005, 0.9995)


class TauCurves(NamedTuple):
    """Conditional curves over tau for ``B`` datasets, in the data's units.

    Attributes:
        tau: the tau axis per dataset, ``[B, T]``.
        density: ``p(tau | y)``, normalised over ``[0, inf)``, ``[B, T]``.
        prior: ``p(tau)`` where proper; for an improper prior its unnormalised shape
            (``1`` for the uniform prior), see ``prior_proper``; ``[B, T]``.
        prior_proper: whether ``prior`` is a normalised density, bool.
        mu_mean: ``E[mu | tau, y]``, ``[B, T]``.
        mu_sd: ``sd(mu | tau, y)``, ``[B, T]``.
        theta_mean: ``E[theta_j | tau, y]``, ``[B, T, J]`` (nan where padded).
        theta_sd: ``sd(theta_j | tau, y)``, ``[B, T, J]`` (nan where padded).
        log_normalizer: ``log Z = log int p(tau) p(y | tau) dtau`` in the data's units
            (with a flat mu prior, ``p(y | tau)`` is against Lebesgue measure on mu), ``[B]``.
        status: grid status bits (``grid_unresolved``, ``tail_truncated``,
            ``roundoff_limited``; see :data:`hierjax.STATUS`), ``[B]``.
        n_groups: real groups per dataset, ``[B]``.
        mask: real groups, ``[B, J]``.
        names: dataset labels, length ``B``.
        groups: group labels per dataset (or None), length ``B``.
    """

    tau: np.ndarray
    density: np.ndarray
    prior: np.ndarray
    prior_proper: bool
    mu_mean: np.ndarray
    mu_sd: np.ndarray
    theta_mean: np.ndarray
    theta_sd: np.ndarray
    log_normalizer: np.ndarray
    status: np.ndarray
    n_groups: np.ndarray
    mask: np.ndarray
    names: tuple
    groups: tuple


class MuDensity(NamedTuple):
    """The marginal posterior density of mu for ``B`` datasets, in the data's units.

    Attributes:
        mu: the mu axis per dataset, ``[B, M]``.
        density: ``p(mu | y)``, ``[B, M]``.
        prior: ``p(mu)`` for a normal prior; ``1`` (the flat prior's shape) otherwise, ``[B, M]``.
        prior_proper: whether ``prior`` is a normalised density, bool.
        status: grid status bits, ``[B]``.
        names: dataset labels, length ``B``.
    """

    mu: np.ndarray
    density: np.ndarray
    prior: np.ndarray
    prior_proper: bool
    status: np.ndarray
    names: tuple


def _grid_status(grid, dtype):
    limit = 0.1 * float(jnp.finfo(dtype).eps) ** 0.5
    return (
        jnp.where(grid.error > limit, STATUS["grid_unresolved"], 0)
        | jnp.where(grid.truncated, STATUS["tail_truncated"], 0)
        | jnp.where(grid.roundoff > ROUNDOFF_LIMIT, STATUS["roundoff_limited"], 0)
    ).astype(jnp.int32)


def tau_curves_dataset(y, sigma2, mask, tau_prior, mu_prior, axis, *, auto: bool, n: int):
    r"""The curves of one standardised dataset at ``T`` values of tau.

    .. math::
        \log p(\tau \mid y) = \log p(\tau) + \log p(y \mid \tau) - \log Z

    Args:
        y, sigma2, mask: ``[J]`` standardised data.
        tau_prior, mu_prior: priors for the standardised data (scalar leaves).
        axis: tau values in standard units, ``[T]``; with ``auto``, fractions of the
            posterior's :data:`TAU_AXIS_LEVEL` quantile of tau.
        auto: whether ``axis`` holds fractions (static).
        n: Clenshaw-Curtis order of the grid (static).

    Returns:
        ``(tau[T], log_density[T], log_prior[T], mu_mean[T], mu_var[T], theta_mean[T, J],
        theta_var[T, J], log_evidence, status)``.
    """
    dtype = y.dtype
    grid = tau_grid(y, sigma2, mask, tau_prior, mu_prior, n)
    if auto:
        top = tau_summary(
            grid, jnp.asarray([TAU_AXIS_LEVEL], dtype), jnp.array(True), jnp.array(True)
        )[0].quantiles[0]
        tau = axis * top
    else:
        tau = axis
    # the grid's own reference point: log p(y | tau) here is computed as at its nodes
    ref = reference_point(jnp.exp(2.0 * grid.x0), y, sigma2, mask, mu_prior)
    mu = jax.vmap(lambda t: mu_given_tau_near(ref, t * t, sigma2, mask, mu_prior))(tau)
    log_prior = jax.vmap(tau_prior.log_density)(tau)
    log_density = log_prior + mu.log_lik - grid.log_evidence
    log_density = jnp.where(jnp.isnan(log_density), -jnp.inf, log_density)
    c = mixture_components(tau * tau, mu.mean, mu.var, y, sigma2)
    theta_mean, theta_var = c.theta_mean, c.theta_var
    return (
        tau,
        log_density,
        log_prior,
        mu.mean,
        mu.var,
        theta_mean,
        theta_var,
        grid.log_evidence,
        _grid_status(grid, dtype),
    )


@register
@functools.partial(jax.jit, static_argnames=("auto", "n"))
def _tau_curves_batch(y, sigma2, mask, tau_prior, mu_prior, axis, *, auto: bool, n: int):
    """:func:`tau_curves_dataset` over ``[B, J]`` data and ``[B, T]`` axes, one dataset at
    a time (``lax.map``): the same code whatever the block, so chunking changes no bit."""
    return jax.lax.map(
        lambda a: tau_curves_dataset(*a, auto=auto, n=n),
        (y, sigma2, mask, tau_prior, mu_prior, axis),
    )


def mu_density_dataset(y, sigma2, mask, tau_prior, mu_prior, axis, *, auto: bool, n: int):
    r"""``p(mu | y)`` of one standardised dataset at ``M`` points (normal mixture over the grid).

    .. math::
        p(\mu \mid y) = \sum_k w_k\, N(\mu \mid \hat\mu(\tau_k), V_\mu(\tau_k))

    Args:
        axis: mu values in standard units, ``[M]``; with ``auto``, fractions in
            ``[0, 1]`` of the span of :data:`MU_AXIS_LEVELS` widened by 10% each side.

    Returns:
        ``(mu[M], density[M], status)``.
    """
    dtype = y.dtype
    grid = tau_grid(y, sigma2, mask, tau_prior, mu_prior, n)
    w = jnp.exp(grid.log_weight)
    m, s = grid.mu.mean, jnp.sqrt(grid.mu.var)
    if auto:
        lo = mixture_quantile(jnp.asarray(MU_AXIS_LEVELS[0], dtype), w, m, s)[0]
        hi = mixture_quantile(jnp.asarray(MU_AXIS_LEVELS[1], dtype), w, m, s)[0]
        pad = 0.1 * (hi - lo)
        mu = (lo - pad) + axis * (hi - lo + 2.0 * pad)
    else:
        mu = axis
    t = (mu[:, None] - m[None, :]) / s[None, :]
    dens = jnp.sum(w * jnp.exp(-0.5 * t * t) / (s * jnp.sqrt(2.0 * jnp.pi).astype(dtype)), axis=1)
    return mu, dens, _grid_status(grid, dtype)


@register
@functools.partial(jax.jit, static_argnames=("auto", "n"))
def _mu_density_batch(y, sigma2, mask, tau_prior, mu_prior, axis, *, auto: bool, n: int):
    """:func:`mu_density_dataset` over ``[B, J]`` data and ``[B, M]`` axes, one dataset at
    a time (``lax.map``): the same code whatever the block, so chunking changes no bit."""
    return jax.lax.map(
        lambda a: mu_density_dataset(*a, auto=auto, n=n),
        (y, sigma2, mask, tau_prior, mu_prior, axis),
    )


def _prepare(y, sigma, tau_prior, mu_prior, mask, nodes, dtype, chunk) -> Prepared:
    """Host checks and standardisation as :func:`hierjax.fit`
    (:func:`hierjax.engine.prepare.prepare`)."""
    return prepare(
        y,
        sigma,
        tau_prior=tau_prior,
        mu_prior=mu_prior,
        mask=mask,
        nodes=nodes,
        chunk=chunk,
        dtype=dtype,
    )


def _default_chunk(K: int, T: int, J: int) -> int:
    """Datasets per block: a bounded working set of the ``[K + T, J]`` arrays of each."""
    return int(max(1, min(1024, (1 << 20) // ((K + T) * J))))


def _axis(values, name, B, lower=None):
    """A user axis as float64 ``[B, T]`` (``[T]`` is shared by every dataset)."""
    a = np.asarray(values, np.float64)
    if a.ndim == 1:
        a = np.broadcast_to(a, (B, a.size))
    if a.ndim != 2 or a.shape[0] != B or a.shape[1] == 0:
        raise InputError(f"{name} must be [T] or [B, T] with B = {B}, got shape {np.shape(values)}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name} axis: values must be finite")
    if lower is not None and np.any(a < lower):
        raise InputError(f"{name} axis: values must be >= {lower}, got min {a.min()}")
    return a


def _run(kernel, prep: Prepared, axis_std, auto: bool, chunk):
    """``kernel`` over the batch in fixed-shape blocks of ``chunk`` datasets, the last one
    padded (:func:`hierjax.engine.driver.in_blocks`); NumPy ``[B, ...]`` outputs."""
    y, s2, m, _, tp, mp = prep.arrays()
    B, J = y.shape
    size = prep.size if chunk is not None else _default_chunk(prep.n + 1, axis_std.shape[1], J)
    args = (y, s2, m, tp, mp, np.asarray(axis_std, dtype=prep.dtype))
    return driver.in_blocks(kernel, args, driver.block_size(B, size), auto=auto, n=prep.n)


def _log_normalizer_shift(prep: Prepared, n_groups, scale):
    r"""``log Z - log Z'`` between the data's units and standard units.

    ``p(y | tau)`` has ``J - 1`` (flat mu) or ``J`` (normal mu) observations' worth of
    density units, each ``1/scale``; ``dtau = scale dtau'``, and a proper (or custom)
    prior's density carries ``1/scale`` while the uniform prior's ``1`` does not.
    """
    k = n_groups - 1.0 + (1.0 if isinstance(prep.mu_prior, NormalMu) else 0.0)
    return (-k + (1.0 if isinstance(prep.tau_prior, Uniform) else 0.0)) * np.log(scale)


def tau_curves(
    y,
    sigma=None,
    *,
    tau=None,
    tau_prior="uniform",
    mu_prior="flat",
    mask=None,
    nodes: int | None = None,
    dtype=None,
    points: int = DEFAULT_POINTS,
    chunk: int | None = None,
) -> TauCurves:
    r"""``p(tau | y)``, ``E``/``sd`` of mu and each ``theta_j`` given tau, on a tau axis.

    .. math::
        p(\tau \mid y) = p(\tau)\, p(y \mid \tau) / Z,\qquad
        E[\theta_j \mid \tau, y] = (1 - B_j) y_j + B_j \hat\mu(\tau)

    (BDA3 eqs. 5.17-5.21; see the module doc.)

    Args:
        y, sigma: one dataset (``[J]``), a batch (``[B, J]``), ragged lists, or a Batch.
        tau: the tau axis in the data's units, ``[T]`` (shared) or ``[B, T]``, values
            ``>= 0``; default ``points`` values from 0 to each dataset's posterior
            :data:`TAU_AXIS_LEVEL` quantile.
        tau_prior, mu_prior: as for :func:`hierjax.fit`.
        mask: ``[B, J]`` for padded rectangular input.
        nodes: Clenshaw-Curtis order of the tau grid (default by dtype).
        dtype: compute dtype (default as :func:`hierjax.fit`).
        points: ``T`` of the default axis.
        chunk: datasets per block (default: a bounded working set; a smaller batch is one
            block of the power of two at or above ``B``), the last block padded by
            repeating the last dataset (:mod:`hierjax.engine.driver`).

    Returns:
        TauCurves (arrays in the compute dtype).

    Raises:
        InputError: bad data, priors or axis, naming the dataset and field.

    Example:
        >>> import hierjax
        >>> c = tau_curves(*hierjax.eight_schools(), tau=[0.0, 5.0, 10.0])
        >>> c.theta_mean.shape
        (1, 3, 8)
    """
    prep = _prepare(y, sigma, tau_prior, mu_prior, mask, nodes, dtype, chunk)
    st = prep.st
    B = prep.batch.y.shape[0]
    scale = st.scale[:B]
    if tau is None:
        if int(points) < 2:
            raise InputError(f"points must be >= 2, got {points}")
        axis = np.broadcast_to(np.linspace(0.0, 1.0, int(points)), (B, int(points)))
        auto = True
    else:
        axis = _axis(tau, "tau", B, lower=0.0) / scale[:, None]
        auto = False
    t, log_d, log_p, mm, mv, thm, thv, log_ev, status = _run(
        _tau_curves_batch, prep, axis, auto, chunk
    )
    f64 = functools.partial(np.asarray, dtype=np.float64)
    sc = scale[:, None]
    dt = prep.dtype
    W = prep.batch.width  # the input's own width: the padding for shapes never shows
    group_mask = prep.batch.mask[:, :W]
    mask_ = group_mask[:, None, :]
    thm, thv = thm[..., :W], thv[..., :W]
    proper = bool(prep.tau_prior.proper)
    # user units: tau = scale tau', p(tau | y) = p(tau' | y) / scale, loc + scale * (mu, theta)
    loc = st.loc[:B]
    if proper:
        prior = np.exp(f64(log_p)) / sc
    else:
        prior = np.exp(f64(log_p) - np.max(f64(log_p), axis=1, keepdims=True))
    n_groups = prep.batch.mask.sum(axis=1)
    return TauCurves(
        tau=(sc * f64(t)).astype(dt),
        density=(np.exp(f64(log_d)) / sc).astype(dt),
        prior=prior.astype(dt),
        prior_proper=proper,
        mu_mean=(loc[:, None] + sc * f64(mm)).astype(dt),
        mu_sd=(sc * np.sqrt(f64(mv))).astype(dt),
        theta_mean=np.where(mask_, loc[:, None, None] + sc[..., None] * f64(thm), np.nan).astype(
            dt
        ),
        theta_sd=np.where(mask_, sc[..., None] * np.sqrt(f64(thv)), np.nan).astype(dt),
        log_normalizer=(f64(log_ev) + _log_normalizer_shift(prep, n_groups, scale)).astype(dt),
        status=status.astype(np.int32),
        n_groups=n_groups,
        mask=group_mask,
        names=prep.batch.names,
        groups=prep.batch.groups,
    )


def mu_density(
    y,
    sigma=None,
    *,
    mu=None,
    tau_prior="uniform",
    mu_prior="flat",
    mask=None,
    nodes: int | None = None,
    dtype=None,
    points: int = DEFAULT_POINTS,
    chunk: int | None = None,
) -> MuDensity:
    r"""The marginal posterior density ``p(mu | y)`` on a mu axis.

    .. math::
        p(\mu \mid y) = \int_0^\infty p(\tau \mid y)\, N(\mu \mid \hat\mu(\tau), V_\mu(\tau))\, d\tau
            \approx \sum_k w_k\, N(\mu \mid \hat\mu_k, V_k)

    Args:
        y, sigma, tau_prior, mu_prior, mask, nodes, dtype, chunk: as :func:`tau_curves`.
        mu: the axis in the data's units, ``[M]`` or ``[B, M]``; default ``points``
            values spanning the posterior's :data:`MU_AXIS_LEVELS` quantiles plus 10%.

    Returns:
        MuDensity.
    """
    prep = _prepare(y, sigma, tau_prior, mu_prior, mask, nodes, dtype, chunk)
    st, B = prep.st, prep.batch.y.shape[0]
    scale, loc = st.scale[:B], st.loc[:B]
    if mu is None:
        if int(points) < 2:
            raise InputError(f"points must be >= 2, got {points}")
        axis = np.broadcast_to(np.linspace(0.0, 1.0, int(points)), (B, int(points)))
        auto = True
    else:
        axis = (_axis(mu, "mu", B) - loc[:, None]) / scale[:, None]
        auto = False
    m, dens, status = _run(_mu_density_batch, prep, axis, auto, chunk)
    sc = scale[:, None]
    mu_user = loc[:, None] + sc * np.asarray(m, np.float64)
    mp = prep.mu_prior
    if isinstance(mp, NormalMu):
        m0, s0 = float(mp.loc), float(mp.scale)
        prior = np.exp(-0.5 * ((mu_user - m0) / s0) ** 2) / (s0 * np.sqrt(2.0 * np.pi))
    else:
        prior = np.ones_like(mu_user)
    dt = prep.dtype
    return MuDensity(
        mu=mu_user.astype(dt),
        density=(np.asarray(dens, np.float64) / sc).astype(dt),
        prior=prior.astype(dt),
        prior_proper=bool(mp.proper),
        status=status.astype(np.int32),
        names=prep.batch.names,
    )
