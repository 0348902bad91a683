r"""The seed lecture's three models, batched: no, complete and partial pooling.

* **No pooling**: each group alone, :math:`\hat\theta_j = y_j` with sd :math:`\sigma_j`.
* **Complete pooling** (:math:`\theta_j = \mu`, flat prior): Fisher weighting,

  .. math::
      w_j = \frac{1/\sigma_j^2}{\sum_i 1/\sigma_i^2},\quad
      \mu \mid y \sim N\Big(\sum_j w_j y_j,\; \frac{1}{\sum_j 1/\sigma_j^2}\Big),\quad
      \tilde y \mid \tilde\sigma, y \sim N\Big(\sum_j w_j y_j,\;
          \frac{1}{\sum_j 1/\sigma_j^2} + \tilde\sigma^2\Big)

  (this is :func:`~hierjax.model.conditionals.mu_given_tau` at ``tau = 0``).
* **Partial pooling** with tau fixed (mu integrated under its prior), or with mu and
  tau both known (the seed's shrinkage formula
  :math:`\theta_j \mid \mu, \tau, y \sim N(w y_j + (1-w)\mu, 1/(1/\sigma_j^2 + 1/\tau^2))`).
  Partial pooling with tau marginalised is :func:`hierjax.fit`.

All functions take ``[J]``, ``[B, J]`` (with ``mask``) or ragged lists, compute in
standardised units (so float32 keeps its accuracy) and return ``[B, ...]`` arrays.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from hierjax.engine.batch import (
    Batch,
    InputError,
    Standardized,
    as_batch,
    rescale_priors,
    standardize,
    validate,
)
from hierjax.engine.cache import register
from hierjax.engine.fitting import compute_dtype
from hierjax.model.conditionals import mu_given_tau, theta_given_mu_tau, theta_given_tau
from hierjax.model.priors import Uniform, parse_mu_prior

__all__ = [
    "NoPooling",
    "CompletePooling",
    "PartialPooling",
    "no_pooling",
    "complete_pooling",
    "complete_pooling_predictive",
    "partial_pooling",
]


class NoPooling(NamedTuple):
    """Each group on its own: ``theta_j | y_j ~ N(y_j, sigma_j^2)`` (MLE ``y_j``).

    Attributes:
        mean: ``y``, ``[B, J]`` (nan where padded).
        sd: ``sigma``, ``[B, J]``.
    """

    mean: np.ndarray
    sd: np.ndarray


class CompletePooling(NamedTuple):
    """``theta_j = mu`` for all j: the posterior of mu.

    Attributes:
        mean: Fisher-weighted mean (posterior mean of mu), ``[B]``.
        sd: posterior sd of mu, ``[B]``.
        weights: Fisher weights ``w_j``, ``[B, J]`` (0 where padded).
    """

    mean: np.ndarray
    sd: np.ndarray
    weights: np.ndarray


class PartialPooling(NamedTuple):
    """Group effects given tau (and possibly mu).

    Attributes:
        theta_mean: ``E[theta_j | tau, y]`` (or ``| mu, tau, y``), ``[B, J]``.
        theta_sd: matching sd, ``[B, J]``.
        mu_mean: ``E[mu | tau, y]`` (the given mu when known), ``[B]``.
        mu_sd: ``sd(mu | tau, y)`` (0 when mu is known), ``[B]``.
        shrinkage: ``B_j = sigma_j^2 / (sigma_j^2 + tau^2)``, the weight on mu, ``[B, J]``.
    """

    theta_mean: np.ndarray
    theta_sd: np.ndarray
    mu_mean: np.ndarray
    mu_sd: np.ndarray
    shrinkage: np.ndarray


class _Prepared(NamedTuple):
    batch: Batch
    st: Standardized
    dtype: np.dtype


def _prepare(y, sigma, mask, mu_prior="flat"):
    """Checked, standardised batch; tau is given here, so one group is enough."""
    batch = as_batch(y, sigma, mask=mask)
    mp = parse_mu_prior(mu_prior)
    problems = [p for p in validate(batch, need=1) if p is not None]
    if problems:
        raise InputError(problems[0])
    return _Prepared(batch, standardize(batch), compute_dtype(y, sigma)), mp


def no_pooling(y, sigma, mask=None) -> NoPooling:
    """Separate estimates: the MLE ``y_j`` with sd ``sigma_j`` (``[B, J]``, nan where padded)."""
    batch = as_batch(y, sigma, mask=mask)
    J, m = _real_width(batch), batch.mask
    return NoPooling(np.where(m, batch.y, np.nan)[:, :J], np.where(m, batch.sigma, np.nan)[:, :J])


@register
@functools.partial(jax.jit)
def _pool(y, sigma2, mask, tau2, mu_prior):
    return jax.vmap(lambda yb, sb, mb, tb, mp: mu_given_tau(tb, yb, sb, mb, mp))(
        y, sigma2, mask, tau2, mu_prior
    )


def _cast(prep, *arrays):
    return [jnp.asarray(a, prep.dtype) for a in arrays]


def complete_pooling(y, sigma, mask=None, mu_prior="flat") -> CompletePooling:
    """Fisher weighting: the posterior of the common mean (see the module doc)."""
    prep, mp = _prepare(y, sigma, mask, mu_prior)
    st, batch = prep.st, prep.batch
    _, mp_std = rescale_priors(Uniform(), mp, st)
    ys, s2, tau2 = _cast(prep, st.y, st.sigma2, np.zeros(len(st.loc)))
    out = _pool(
        ys,
        s2,
        jnp.asarray(batch.mask),
        tau2,
        jax.tree.map(lambda a: jnp.asarray(a, prep.dtype), mp_std),
    )
    mean = st.loc + st.scale * np.asarray(out.mean, np.float64)
    sd = st.scale * np.sqrt(np.asarray(out.var, np.float64))
    prec = np.where(batch.mask, 1.0 / st.sigma2, 0.0)  # in units of 1 / scale^2
    w = prec / prec.sum(axis=1, keepdims=True)
    J = _real_width(batch)
    return CompletePooling(
        mean.astype(prep.dtype), sd.astype(prep.dtype), w[:, :J].astype(prep.dtype)
    )


def complete_pooling_predictive(y, sigma, sigma_new, threshold, mask=None):
    r"""``P(y_new > threshold | sigma_new, y)`` under complete pooling with a flat mu prior.

    .. math::
        \tilde y \mid \tilde\sigma, y \sim N\big(\hat\mu, V_\mu + \tilde\sigma^2\big)

    Args:
        y, sigma: the data (any layout of :func:`complete_pooling`).
        sigma_new: the new observation's standard error, scalar or ``[B]``.
        threshold: scalar or ``[B]``.

    Returns:
        ``(mean, sd, p_gt)`` each ``[B]``; ``P(y_new < threshold) = 1 - p_gt``.
    """
    pooled = complete_pooling(y, sigma, mask)
    mean = np.asarray(pooled.mean, np.float64)
    sd = np.sqrt(np.asarray(pooled.sd, np.float64) ** 2 + np.asarray(sigma_new, np.float64) ** 2)
    p = 1.0 - np.asarray(
        ndtr(jnp.asarray((np.asarray(threshold, np.float64) - mean) / sd, pooled.mean.dtype)),
        np.float64,
    )
    dt = pooled.mean.dtype
    return mean.astype(dt), sd.astype(dt), p.astype(dt)


@register
@jax.jit
def _partial(y, sigma2, mask, tau2, mu_prior):
    def one(yb, sb, mb, tb, mp):
        mu = mu_given_tau(tb, yb, sb, mb, mp)
        m, v = theta_given_tau(tb, yb, sb, mu)
        return m, v, mu.mean, mu.var, sb / (sb + tb)

    return jax.vmap(one)(y, sigma2, mask, tau2, mu_prior)


@register
@jax.jit
def _known(y, sigma2, mu, tau2):
    def one(yb, sb, mb, tb):
        m, v = theta_given_mu_tau(mb, tb, yb, sb)
        return m, v, sb / (sb + tb)

    return jax.vmap(one)(y, sigma2, mu, tau2)


def _real_width(batch):
    return int(batch.mask.sum(axis=1).max())


def partial_pooling(
    y, sigma, tau, mu: float | None = None, mask=None, mu_prior="flat"
) -> PartialPooling:
    r"""Partial pooling at a fixed tau; with ``mu`` given, the seed's shrinkage formula.

    Args:
        y, sigma: data (``[J]``, ``[B, J]`` with ``mask``, or ragged lists).
        tau: population sd, scalar or ``[B]`` (``tau = 0`` is complete pooling,
            ``tau -> inf`` no pooling).
        mu: population mean if known, scalar or ``[B]``; otherwise mu is integrated
            out under ``mu_prior``.

    Returns:
        PartialPooling.
    """
    prep, mp = _prepare(y, sigma, mask, mu_prior)
    st, batch = prep.st, prep.batch
    B = len(st.loc)
    tau = np.broadcast_to(np.asarray(tau, np.float64), (B,))
    if not np.all(np.isfinite(tau)) or np.any(tau < 0):
        raise InputError(f"tau must be finite and >= 0, got {tau}")
    tau2_std = (tau / st.scale) ** 2
    J = _real_width(batch)
    if mu is None:
        _, mp_std = rescale_priors(Uniform(), mp, st)
        ys, s2, t2 = _cast(prep, st.y, st.sigma2, tau2_std)
        m, v, mm, mv, shrink = _partial(
            ys,
            s2,
            jnp.asarray(batch.mask),
            t2,
            jax.tree.map(lambda a: jnp.asarray(a, prep.dtype), mp_std),
        )
        mu_mean = st.loc + st.scale * np.asarray(mm, np.float64)
        mu_sd = st.scale * np.sqrt(np.asarray(mv, np.float64))
    else:
        mu_arr = np.broadcast_to(np.asarray(mu, np.float64), (B,))
        ys, s2, mus, t2 = _cast(prep, st.y, st.sigma2, (mu_arr - st.loc) / st.scale, tau2_std)
        m, v, shrink = _known(ys, s2, mus, t2)
        mu_mean, mu_sd = mu_arr, np.zeros(B)
    m = st.loc[:, None] + st.scale[:, None] * np.asarray(m, np.float64)
    sd = st.scale[:, None] * np.sqrt(np.asarray(v, np.float64))
    mask_ = batch.mask
    dt = prep.dtype
    return PartialPooling(
        np.where(mask_, m, np.nan)[:, :J].astype(dt),
        np.where(mask_, sd, np.nan)[:, :J].astype(dt),
        mu_mean.astype(dt),
        mu_sd.astype(dt),
        np.where(mask_, np.asarray(shrink, np.float64), np.nan)[:, :J].astype(dt),
    )
