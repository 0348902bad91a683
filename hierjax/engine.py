"""The batched engine: one kernel per dataset, ``vmap`` (in chunks) at the edge, one ``jit``.

:func:`fit_dataset` is the whole computation for one standardised dataset.
:func:`fit_standardized` maps it over a batch with ``jax.lax.map(batch_size=chunk)``
inside a single module-level ``jax.jit``. :func:`fit` is the convenient layer:
host-side checks and standardisation in float64, then the batch in fixed-shape blocks
(padded with benign stand-ins to a power of two, or to whole chunks, and looped over
on the host), so the kernel compiles once per (J, prior types, dtype) whatever B is
and never holds more than one block's intermediates; then the map back to the user's
units.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hierjax._host import compute_dtype, prepare
from hierjax.batch import Batch, InputError
from hierjax.conditionals import mu_given_tau, theta_given_tau
from hierjax.grid import tail_alpha, tau_grid
from hierjax.priors import MuPrior, NormalMu, TauPrior
from hierjax.summaries import (Marginal, coarse_stages, mixture_summary, quantile_error, tau_mode,
                               tau_summary)

__all__ = ["Fit", "DatasetFit", "fit", "fit_batch", "fit_dataset", "fit_standardized",
           "DEFAULT_LEVELS", "STATUS", "status_text", "compute_dtype"]

DEFAULT_LEVELS = (0.025, 0.25, 0.5, 0.75, 0.975)

#: Per-dataset status bits (0 = ok).
STATUS = {
    "grid_unresolved": 1,      # n-rule differs from the 2n-rule by > 0.1 sqrt(eps) in a CDF,
                               # or moves a quantile of mu or theta_new by > 0.25 sqrt(eps)
                               # sd: use more nodes
    "tail_truncated": 2,       # mass beyond the dtype's range of tau (improper posterior?)
    "unconverged": 4,          # a solver (quantile, mode, extent) hit its iteration limit
    "invalid": 8,              # skipped input (see Fit.notes)
    "roundoff_limited": 16,    # log-likelihood round-off > 1e-5 (float32 with many groups):
                               # tail quantiles may miss 1e-4 sd; use float64
}


def status_text(code: int) -> str:
    """``'ok'`` or the ``;``-joined names of the set status bits."""
    names = [k for k, v in STATUS.items() if int(code) & v]
    return ";".join(names) if names else "ok"


class DatasetFit(NamedTuple):
    """Posterior summaries of one dataset in standardised units (see :class:`Fit`)."""

    mu: Marginal
    tau: Marginal
    theta: Marginal
    theta_new: Marginal
    tau_mode: jnp.ndarray
    log_evidence: jnp.ndarray
    grid_error: jnp.ndarray
    status: jnp.ndarray


def fit_dataset(y, sigma2, mask, threshold, tau_prior: TauPrior, mu_prior: MuPrior, levels,
                n: int) -> DatasetFit:
    r"""Exact posterior summaries of one standardised dataset.

    .. math::
        p(\mu, \theta, \tau \mid y) = p(\tau \mid y)\, p(\mu \mid \tau, y)
            \prod_j p(\theta_j \mid \mu, \tau, y)

    with ``p(tau | y)`` on the grid of :func:`hierjax.grid.tau_grid` and the
    conditionals of :mod:`hierjax.conditionals`.

    Args:
        y, sigma2, mask: ``[J]`` standardised data.
        threshold: where ``P(. > 0)`` sits in standard units, scalar.
        tau_prior, mu_prior: priors for the standardised data (scalar leaves).
        levels: quantile levels, ``[Q]``.
        n: Clenshaw-Curtis order; ``K = n + 1`` tau nodes.

    Returns:
        DatasetFit (``theta`` fields are ``[J]``, quantiles ``[..., Q]``).
    """
    dtype = y.dtype
    grid = tau_grid(y, sigma2, mask, tau_prior, mu_prior, n)
    w = jnp.exp(grid.log_weight)
    tau2 = grid.tau ** 2
    alpha = tail_alpha(jnp.sum(mask).astype(dtype), tau_prior, mu_prior)
    has_mean, has_sd = alpha > 1.0, alpha > 2.0
    always = jnp.array(True)
    # A normal mu prior bounds V_mu; under a flat one V_mu ~ tau^2 / J inherits tau's tail.
    mu_mean, mu_sd = (always, always) if isinstance(mu_prior, NormalMu) else (has_mean, has_sd)

    # nested rules with about 17 and 33 nodes start the quantile searches cheaply
    coarse = coarse_stages(grid)
    mu, ok_mu = mixture_summary(w, grid.mu.mean, jnp.sqrt(grid.mu.var), levels, threshold,
                                mu_mean, mu_sd, coarse)
    theta_m, theta_v = jax.vmap(lambda t2, mm, mv: theta_given_tau(
        t2, y, sigma2, grid.mu._replace(mean=mm, var=mv)))(tau2, grid.mu.mean, grid.mu.var)
    theta, ok_theta = jax.vmap(
        lambda m, v: mixture_summary(w, m, jnp.sqrt(v), levels, threshold, always, always,
                                     coarse),
        in_axes=1)(theta_m, theta_v)
    new, ok_new = mixture_summary(w, grid.mu.mean, jnp.sqrt(tau2 + grid.mu.var), levels,
                                  threshold, has_mean, has_sd, coarse)
    tau, ok_tau = tau_summary(grid, levels, has_mean, has_sd)
    # mu's and theta_new's tails inherit tau's (heavy for few groups): check their quantiles
    # against the 2n-rule directly, in units of the most probable component's sd.
    k = jnp.argmax(w)
    w_fine, fine = jnp.exp(grid.log_weight_fine), grid.mu_fine
    tau2_fine = grid.tau_fine ** 2
    q_err = jnp.maximum(
        quantile_error(mu.quantiles, levels, w, grid.mu.mean, jnp.sqrt(grid.mu.var), w_fine,
                       fine.mean, jnp.sqrt(fine.var), jnp.sqrt(grid.mu.var[k])),
        quantile_error(new.quantiles, levels, w, grid.mu.mean, jnp.sqrt(tau2 + grid.mu.var),
                       w_fine, fine.mean, jnp.sqrt(tau2_fine + fine.var),
                       jnp.sqrt(tau2[k] + grid.mu.var[k])))

    def log_joint(t):
        return tau_prior.log_density(t) + mu_given_tau(t * t, y, sigma2, mask, mu_prior).log_lik

    mode, ok_mode = tau_mode(grid, log_joint)
    proper = bool(tau_prior.proper and mu_prior.proper)
    log_ev = grid.log_evidence if proper else jnp.full((), jnp.nan, dtype)

    limit = 0.1 * float(jnp.finfo(dtype).eps) ** 0.5   # n-rule error vs the 2n-rule
    # q_err estimates the quantile error itself (1-2e-9 sd where it is above 1.5e-9 on
    # simulated batches, checked against quad): flag it at 0.25 sqrt(eps), 3.7e-9 sd in
    # float64 and 8.6e-5 sd in float32, inside the 1e-8 and 1e-4 goals.
    q_limit = 0.25 * float(jnp.finfo(dtype).eps) ** 0.5
    status = (jnp.where((grid.error > limit) | (q_err > q_limit), STATUS["grid_unresolved"], 0)
              | jnp.where(grid.truncated, STATUS["tail_truncated"], 0)
              | jnp.where(grid.roundoff > 1e-5, STATUS["roundoff_limited"], 0)
              | jnp.where(ok_mu & jnp.all(ok_theta) & ok_new & ok_tau & ok_mode & grid.converged,
                          0, STATUS["unconverged"])).astype(jnp.int32)
    return DatasetFit(mu, tau, theta, new, mode, log_ev, grid.error, status)


@functools.partial(jax.jit, static_argnames=("n", "chunk"))
def fit_standardized(y, sigma2, mask, threshold, tau_prior, mu_prior, levels, *, n: int,
                     chunk: int) -> DatasetFit:
    """:func:`fit_dataset` over a batch: ``[B, J]`` inputs, ``[B]`` prior leaves.

    ``lax.map`` with ``batch_size=chunk`` vmaps ``chunk`` datasets at a time inside
    this one compiled function (no retrace per chunk, bounded memory).
    """
    moments_only = levels.shape[0] == 0

    def one(args):
        yb, sb, mb, cb, tp, mp = args
        out = fit_dataset(yb, sb, mb, cb, tp, mp, levels, n)
        # lax.map cannot stack size-0 outputs: carry one placeholder level, dropped below
        return _pad_quantiles(out, 1) if moments_only else out

    out = jax.lax.map(one, (y, sigma2, mask, threshold, tau_prior, mu_prior),
                      batch_size=min(chunk, y.shape[0]))
    return _pad_quantiles(out, 0) if moments_only else out


def _pad_quantiles(out: DatasetFit, size: int) -> DatasetFit:
    """``out`` with every Marginal's quantile axis set to ``size`` zeros (moments only)."""
    def fix(m: Marginal):
        return m._replace(quantiles=jnp.zeros(m.quantiles.shape[:-1] + (size,), m.mean.dtype))
    return out._replace(mu=fix(out.mu), tau=fix(out.tau), theta=fix(out.theta),
                        theta_new=fix(out.theta_new))


class Fit(NamedTuple):
    """Posterior summaries of a batch of ``B`` datasets, in the data's units.

    Attributes:
        mu: population mean; fields ``[B]``, quantiles ``[B, Q]``.
        tau: population sd; fields ``[B]``, quantiles ``[B, Q]`` (``p_gt0`` is 1).
        theta: group effects; fields ``[B, J]``, quantiles ``[B, J, Q]`` (nan where padded).
        theta_new: the effect of a new group; fields ``[B]``, quantiles ``[B, Q]``.
        tau_mode: posterior mode of tau (0 when the density peaks at tau = 0), ``[B]``.
        log_marginal_likelihood: ``log p(y)`` where both priors are proper, else nan, ``[B]``.
        grid_error: nested-rule error estimate of the tau quadrature, ``[B]``; the full
            rule is about its square (relative), see README "Accuracy".
        status: status bits per dataset (:data:`STATUS`, :func:`status_text`), ``[B]``.
        n_groups: number of real groups per dataset, ``[B]``.
        mask: real groups, ``[B, J]``.
        levels: quantile levels as requested (float64), ``[Q]``.
        names: dataset labels, length ``B``.
        groups: group labels per dataset (or None), length ``B``.
        notes: why a dataset was skipped ('' otherwise), length ``B``.
    """

    mu: Marginal
    tau: Marginal
    theta: Marginal
    theta_new: Marginal
    tau_mode: np.ndarray
    log_marginal_likelihood: np.ndarray
    grid_error: np.ndarray
    status: np.ndarray
    n_groups: np.ndarray
    mask: np.ndarray
    levels: np.ndarray
    names: tuple
    groups: tuple
    notes: tuple


def _default_chunk(K: int, J: int) -> int:
    """Datasets per chunk: a power of two with at most 2**22 (tau node x group) elements in
    flight. A power of two keeps the padding of a batch larger than one chunk small (B =
    1e4 at J = 8 runs as 3 x 4096, not 2 x 8065) and shares block shapes with smaller
    batches (padded to powers of two)."""
    fit_ = max(1, min(16384, (1 << 22) // (K * J)))
    return 1 << (fit_.bit_length() - 1)


def fit(y, sigma=None, *, tau_prior="uniform", mu_prior="flat",
        quantiles: Sequence[float] = DEFAULT_LEVELS, mask=None, names=None, groups=None,
        skip_invalid: bool = False, nodes: Optional[int] = None, chunk: Optional[int] = None,
        dtype=None) -> Fit:
    r"""Exact posterior of the normal-normal hierarchical model for one or many datasets.

    .. math::
        y_j \sim N(\theta_j, \sigma_j^2),\quad \theta_j \sim N(\mu, \tau^2),\quad
        \mu \sim \text{flat} \mid N(m, s^2),\quad \tau \sim p(\tau)

    Args:
        y: estimates: ``[J]`` (one dataset), ``[B, J]``, ragged list of ``[J_b]``, or a
            :class:`hierjax.batch.Batch` (then ``sigma`` is None).
        sigma: known standard errors, same layout as ``y``.
        tau_prior: spec string (``"uniform"``, ``"half-cauchy:5"``, ...), a TauPrior, or a
            JAX log-density of tau.
        mu_prior: ``"flat"`` or ``"normal:M,S"`` (or a MuPrior).
        quantiles: levels in (0, 1), ``[Q]``; ``()`` or None for moments only (means,
            sds, P(> 0), tau mode, evidence: no quantile searches, several times faster).
        mask: ``[B, J]`` bool for padded rectangular input.
        names, groups: dataset and group labels (optional).
        skip_invalid: fit the valid datasets and mark invalid ones (status ``invalid``,
            results nan) instead of raising.
        nodes: Clenshaw-Curtis order ``n`` (``n + 1`` tau nodes; default by dtype).
        chunk: datasets per vmapped chunk (default from the batch's size).
        dtype: compute dtype (default: float64 under x64 unless the inputs are float32).

    Returns:
        Fit with a leading ``B`` axis, arrays in the compute dtype.

    Raises:
        ValueError: bad input (naming the dataset and field) unless ``skip_invalid``.

    Example:
        >>> import hierjax
        >>> f = hierjax.fit([28, 8, -3, 7, -1, 1, 18, 12], [15, 10, 16, 11, 9, 11, 10, 18])
        >>> round(float(f.mu.mean[0]), 2)
        7.93
    """
    levels = np.asarray(() if quantiles is None else quantiles, np.float64).reshape(-1)
    if not np.all((levels > 0) & (levels < 1)):
        raise InputError(f"quantile levels must lie strictly between 0 and 1, got {list(levels)}")
    # Fixed shapes: the batch is padded with benign stand-ins (invalid datasets are
    # replaced by them too) to a power of two below one chunk, or to whole chunks; the
    # jitted kernel then sees [size, J] blocks whatever B is, and compiles once per J.
    prep = prepare(y, sigma, tau_prior=tau_prior, mu_prior=mu_prior, mask=mask, names=names,
                   groups=groups, nodes=nodes, chunk=chunk, dtype=dtype,
                   skip_invalid=skip_invalid, default_chunk=_default_chunk, pad_blocks=True)
    batch, bad, problems, st, n, size = (prep.batch, prep.bad, prep.problems, prep.st, prep.n,
                                         prep.size)
    B = batch.y.shape[0]
    lv = prep.cast(levels)
    blocks = []
    for start in range(0, B + prep.n_pad, size):
        block = fit_standardized(*prep.block(slice(start, start + size)), lv, n=n, chunk=size)
        blocks.append(jax.tree.map(np.asarray, block))
    out = jax.tree.map(lambda *a: np.concatenate(a)[:B], *blocks)
    st = jax.tree.map(lambda a: a[:B], st)
    return _to_user_units(out, st, batch, bad, problems, levels, prep.dtype)


def _to_user_units(out: DatasetFit, st, batch: Batch, bad, problems, levels, dt):
    """Map standardised summaries back: ``phi = loc + scale * phi_std`` (tau: ``scale * tau``)."""
    o = jax.tree.map(lambda a: a if a.dtype == bool else np.asarray(a, np.float64), out)
    loc, scale = st.loc, st.scale

    def location(m: Marginal, axes):
        lc = loc.reshape((-1,) + (1,) * axes)
        sc = scale.reshape((-1,) + (1,) * axes)
        return m._replace(mean=lc + sc * m.mean, sd=sc * m.sd,
                          quantiles=lc[..., None] + sc[..., None] * m.quantiles)

    def scaled(m: Marginal):
        return m._replace(mean=scale * m.mean, sd=scale * m.sd,
                          quantiles=scale[:, None] * m.quantiles)

    mu, theta, new, tau = location(o.mu, 0), location(o.theta, 1), location(o.theta_new, 0), \
        scaled(o.tau)
    n_groups = batch.mask.sum(axis=1)
    log_ml = o.log_evidence - n_groups * np.log(scale)
    status = o.status.astype(np.int32) | np.where(bad, STATUS["invalid"], 0).astype(np.int32)

    def blank(m: Marginal, mask=None):
        def f(a):
            if a.dtype == bool:
                return np.where(bad.reshape((-1,) + (1,) * (a.ndim - 1)), False, a)
            a = np.where(bad.reshape((-1,) + (1,) * (a.ndim - 1)), np.nan, a)
            if mask is not None:
                mk = mask.reshape(mask.shape + (1,) * (a.ndim - 2))
                a = np.where(mk, a, np.nan)
            return a
        return Marginal(*map(f, m))

    def cast(m: Marginal):
        return Marginal(*[a if a.dtype == bool else a.astype(dt) for a in m])

    nanb = np.where(bad, np.nan, 1.0)
    return Fit(
        mu=cast(blank(mu)), tau=cast(blank(tau)), theta=cast(blank(theta, batch.mask)),
        theta_new=cast(blank(new)),
        tau_mode=(scale * o.tau_mode * nanb).astype(dt),
        log_marginal_likelihood=(log_ml * nanb).astype(dt),
        grid_error=(o.grid_error * nanb).astype(dt),
        status=status, n_groups=n_groups, mask=batch.mask, levels=levels,
        names=batch.names, groups=batch.groups,
        notes=tuple("" if p is None else p for p in problems),
    )


def fit_batch(batch: Batch, **kwargs) -> Fit:
    """:func:`fit` on an assembled :class:`~hierjax.batch.Batch` (e.g. from a CSV file)."""
    return fit(batch, None, **kwargs)
