r"""Evidence: marginal likelihood, Bayes factors for ``tau = 0`` and ``mu = 0``, ML and MAP.

Definitions follow bayesmeta (Röver 2020, J. Stat. Softw. 93(6), sec. 2 and the
``bayesmeta`` documentation, items ``marginal.likelihood``, ``bayesfactor``, ``ML``,
``MAP``), with ``p(y | mu, tau) = prod_j N(y_j; mu, sigma_j^2 + tau^2)``:

.. math::
    p(y \mid \tau) = \int p(y \mid \mu, \tau)\, p(\mu)\, d\mu \quad\text{(closed form)},\qquad
    p(y \mid \mu) = \int p(y \mid \mu, \tau)\, p(\tau)\, d\tau,\qquad
    p(y) = \int p(y \mid \tau)\, p(\tau)\, d\tau

* actual Bayes factors (both priors proper):
  ``BF(tau=0) = p(y | tau=0) / p(y)``, ``BF(mu=0) = p(y | mu=0) / p(y)``;
  the second is computed as the Savage-Dickey ratio ``p(mu=0 | y) / p(mu=0)``
  (the same number: ``p(y | mu) / p(y) = p(mu | y) / p(mu)``);
* minimum Bayes factors (Spiegelhalter et al. 2004, sec. 4.4), the minimum over all
  priors of the parameter tested, i.e. against its best point alternative:
  ``minBF(tau=0) = p(y | tau=0) / max_tau p(y | tau)`` (needs a proper mu prior) and
  ``minBF(mu=0) = p(y | mu=0) / max_mu p(y | mu)`` (needs a proper tau prior);
* ML: joint ``argmax_{tau, mu} p(y | mu, tau)``; marginal ``argmax_tau p(y | tau)`` and
  ``argmax_mu p(y | mu)``;
* MAP: joint ``argmax_{tau, mu} p(tau) p(mu) p(y | mu, tau)``; marginal: the modes of
  ``p(tau | y)`` and of ``p(mu | y)``.

Where bayesmeta leaves a number undefined (NA) it is nan here: actual Bayes factors and
``log p(y)`` unless both priors are proper, ``minBF(tau=0)`` unless the mu prior is, and
``minBF(mu=0)`` unless the tau prior is. Values are log Bayes factors (``exp`` gives
bayesmeta's numbers). With a flat mu prior ``p(y | mu)`` is proportional to the marginal
posterior density of mu, and with a normal one to that density under a flat mu prior;
both are normal mixtures over the tau grid (:mod:`hierjax.inference.grid`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from hierjax.engine import driver
from hierjax.engine.cache import register
from hierjax.engine.prepare import grids_standardized, prepare
from hierjax.inference.grid import TauGrid, tail_alpha
from hierjax.model.conditionals import mu_given_tau
from hierjax.model.priors import FlatMu, MuPrior, NormalMu, TauPrior
from hierjax.numerics.solvers import maximize
from hierjax.status import STATUS

__all__ = [
    "Estimate",
    "Evidence",
    "DatasetEvidence",
    "evidence",
    "evidence_dataset",
    "evidence_standardized",
]

_LOG_2PI = math.log(2.0 * math.pi)
_SCOUT = 41  # scout points in x = log tau for the 1-d maximisations
_SCOUT_HALF = 20.0  # ... over x0 +- 20 (tau over ~17 orders of magnitude)
_MU_SCOUT = 129  # scout points for the mode of a normal mixture
_FAST = 0  # no fixed Newton steps: one while loop each keeps the compile small


class Estimate(NamedTuple):
    """A point estimate of ``(tau, mu)`` (fields scalar per dataset, or ``[B]``)."""

    tau: jax.Array | np.ndarray
    mu: jax.Array | np.ndarray


class DatasetEvidence(NamedTuple):
    """Evidence of one standardised dataset (see :class:`Evidence`); scalars."""

    log_marginal_likelihood: jnp.ndarray
    log_bf_tau0: jnp.ndarray
    log_bf_mu0: jnp.ndarray
    log_min_bf_tau0: jnp.ndarray
    log_min_bf_mu0: jnp.ndarray
    ml_joint: Estimate
    ml_marginal: Estimate
    map_joint: Estimate
    map_marginal: Estimate
    status: jnp.ndarray


class Evidence(NamedTuple):
    """Evidence for a batch of ``B`` datasets, in the data's units; every field ``[B]``.

    Attributes:
        log_marginal_likelihood: ``log p(y)`` (both priors proper, else nan).
        log_bf_tau0: ``log p(y | tau=0) - log p(y)`` (both priors proper, else nan).
        log_bf_mu0: ``log p(y | mu=0) - log p(y)`` (both priors proper, else nan).
        log_min_bf_tau0: ``log p(y | tau=0) - max_tau log p(y | tau)`` (proper mu prior,
            else nan).
        log_min_bf_mu0: ``log p(y | mu=0) - max_mu log p(y | mu)`` (proper tau prior, else
            nan).
        ml_joint: ``argmax p(y | mu, tau)``.
        ml_marginal: ``argmax_tau p(y | tau)`` and ``argmax_mu p(y | mu)`` (nan when the
            ``mu`` integral over tau is not finite on the grid: see module doc).
        map_joint: ``argmax p(tau) p(mu) p(y | mu, tau)``.
        map_marginal: the modes of ``p(tau | y)`` and ``p(mu | y)``.
        status: status bits (:data:`hierjax.engine.fitting.STATUS`).
        names: dataset labels, length ``B``.
    """

    log_marginal_likelihood: np.ndarray
    log_bf_tau0: np.ndarray
    log_bf_mu0: np.ndarray
    log_min_bf_tau0: np.ndarray
    log_min_bf_mu0: np.ndarray
    ml_joint: Estimate
    ml_marginal: Estimate
    map_joint: Estimate
    map_marginal: Estimate
    status: np.ndarray
    names: tuple


def _log_normal(x, mean, var):
    return -0.5 * (_LOG_2PI + jnp.log(var) + (x - mean) ** 2 / var)


def _mu_log_prior(mu, mu_prior: MuPrior):
    """``log p(mu)`` (0 for the flat prior: the constant is arbitrary)."""
    if isinstance(mu_prior, NormalMu):
        return _log_normal(mu, mu_prior.loc, mu_prior.scale**2)
    return jnp.zeros_like(mu)


def _log_lik_joint(mu, tau, y, sigma2, mask):
    r"""``log p(y | mu, tau) = sum_j log N(y_j; mu, sigma_j^2 + tau^2)``."""
    v = jnp.where(mask, sigma2 + tau * tau, 1.0)
    return jnp.sum(jnp.where(mask, _log_normal(y, mu, v), 0.0))


def _argmax_tau(g, centre):
    """``argmax_{tau >= 0} g(tau)``: a scout grid in ``x = log tau`` around ``centre``,
    safeguarded Newton between the best scout point's neighbours, then ``tau = 0`` itself
    (which wins ties at round-off). Returns ``(tau, g(tau), converged)``."""
    dtype = centre.dtype
    eps = float(jnp.finfo(dtype).eps)
    x = centre + jnp.linspace(-_SCOUT_HALF, _SCOUT_HALF, _SCOUT, dtype=dtype)
    gx = jax.vmap(lambda t: g(jnp.exp(t)))(x)
    gx = jnp.where(jnp.isnan(gx), -jnp.inf, gx)
    i = jnp.argmax(gx)
    step = x[1] - x[0]
    xb, conv = maximize(
        lambda t: g(jnp.exp(t)), x[i], x[i] - step, x[i] + step, 1e-3 * eps**0.5, fast_steps=_FAST
    )
    g_in = g(jnp.exp(xb))
    better = g_in >= gx[i]
    xb, g_in = jnp.where(better, xb, x[i]), jnp.maximum(g_in, gx[i])
    g0 = g(jnp.zeros((), dtype))
    at_zero = g0 >= g_in - 64.0 * eps * (1.0 + jnp.abs(g_in))
    return (jnp.where(at_zero, 0.0, jnp.exp(xb)), jnp.where(at_zero, g0, g_in), conv | at_zero)


def _mixture_log_density(x, log_w, m, v):
    return logsumexp(log_w + _log_normal(x, m, v))


def _mixture_mode(log_w, m, v):
    """The mode of ``sum_k w_k N(m_k, v_k)``: every stationary point lies in
    ``[min m_k, max m_k]`` (the slope has the sign of ``m_k - x`` in every term outside);
    the best of a scout grid there, refined by Newton. Returns ``(mode, converged)``."""
    dtype = m.dtype
    eps = float(jnp.finfo(dtype).eps)
    live = log_w > -jnp.inf
    lo = jnp.min(jnp.where(live, m, jnp.inf))
    hi = jnp.max(jnp.where(live, m, -jnp.inf))
    x = jnp.linspace(0.0, 1.0, _MU_SCOUT, dtype=dtype) * (hi - lo) + lo
    fx = jax.vmap(lambda t: _mixture_log_density(t, log_w, m, v))(x)
    i = jnp.argmax(fx)
    step = (hi - lo) / (_MU_SCOUT - 1)
    sd = jnp.sqrt(jnp.sum(jnp.exp(log_w) * v))
    xb, conv = maximize(
        lambda t: _mixture_log_density(t, log_w, m, v),
        x[i],
        jnp.maximum(x[i] - step, lo),
        jnp.minimum(x[i] + step, hi),
        1e-3 * eps**0.5 * (sd + jnp.abs(x[i])),
        fast_steps=_FAST,
    )
    better = _mixture_log_density(xb, log_w, m, v) >= fx[i]
    return jnp.where(hi > lo, jnp.where(better, xb, x[i]), lo), conv


def evidence_dataset(
    grid: TauGrid, y, sigma2, mask, threshold, tau_prior: TauPrior, mu_prior: MuPrior
) -> DatasetEvidence:
    r"""Evidence of one standardised dataset from its tau grid (see the module doc).

    Args:
        grid: the dataset's :class:`~hierjax.inference.grid.TauGrid` under ``tau_prior``, ``mu_prior``.
        y, sigma2, mask: ``[J]`` standardised data.
        threshold: ``mu = 0`` in standard units, scalar.
        tau_prior, mu_prior: priors for the standardised data (scalar leaves).

    Returns:
        DatasetEvidence in standard units (Bayes factors are unit-free).
    """
    dtype = y.dtype
    nan = jnp.full((), jnp.nan, dtype)
    zero = jnp.zeros((), dtype)

    def log_lik(tau):  # log p(y | tau), mu integrated
        return mu_given_tau(tau * tau, y, sigma2, mask, mu_prior).log_lik

    def log_lik_flat(tau):  # the same under a flat mu prior
        return mu_given_tau(tau * tau, y, sigma2, mask, FlatMu()).log_lik

    # mu | tau at the 2n-rule's nodes: the marginal of mu is a normal mixture there
    cond = jax.vmap(lambda t: mu_given_tau(t * t, y, sigma2, mask, mu_prior))(grid.tau_fine)
    log_w = grid.log_weight_fine

    # p(y | mu) = c * sum_k w_k^flat N(mu; m_k^flat, V_k^flat): the mu-marginal under a flat
    # mu prior, reweighted from this grid when the mu prior is normal
    n_groups = jnp.sum(mask).astype(dtype)
    alpha = tail_alpha(n_groups, tau_prior, mu_prior)
    if isinstance(mu_prior, NormalMu):
        flat = jax.vmap(lambda t: mu_given_tau(t * t, y, sigma2, mask, FlatMu()))(grid.tau_fine)
        lw = log_w + flat.log_lik - cond.log_lik
        lw = jnp.where(jnp.isnan(lw), -jnp.inf, lw)
        log_w_flat = lw - logsumexp(lw)
        flat_ok = alpha > 1.0  # the grid follows tau * p(tau | y) far enough out
    else:
        flat, log_w_flat, flat_ok = cond, log_w, jnp.array(True)

    # ML and MAP
    ml_tau, ml_value, ok1 = _argmax_tau(log_lik, grid.x0)
    ml_mu, ok2 = _mixture_mode(log_w_flat, flat.mean, flat.var)
    ml_mu = jnp.where(flat_ok, ml_mu, nan)

    def profile_ml(tau):  # max_mu log p(y | mu, tau)
        mu_hat = mu_given_tau(tau * tau, y, sigma2, mask, FlatMu()).mean
        return _log_lik_joint(mu_hat, tau, y, sigma2, mask)

    def profile_map(tau):  # max_mu log p(tau) p(mu) p(y | mu, tau)
        mu_star = mu_given_tau(tau * tau, y, sigma2, mask, mu_prior).mean
        return (
            tau_prior.log_density(tau)
            + _mu_log_prior(mu_star, mu_prior)
            + _log_lik_joint(mu_star, tau, y, sigma2, mask)
        )

    jml_tau, _, ok3 = _argmax_tau(profile_ml, grid.x0)
    jml_mu = mu_given_tau(jml_tau**2, y, sigma2, mask, FlatMu()).mean
    jmap_tau, _, ok4 = _argmax_tau(profile_map, grid.x0)
    jmap_mu = mu_given_tau(jmap_tau**2, y, sigma2, mask, mu_prior).mean

    # the mode of p(tau | y) (as summaries.tau_mode, with this module's single-loop maximiser)
    mode_tau, _, ok5 = _argmax_tau(lambda t: tau_prior.log_density(t) + log_lik(t), grid.x0)
    mode_mu, ok6 = _mixture_mode(log_w, cond.mean, cond.var)

    # Bayes factors
    proper_tau, proper_mu = bool(tau_prior.proper), bool(mu_prior.proper)
    ll0 = log_lik(zero)
    log_ev = grid.log_evidence if (proper_tau and proper_mu) else nan
    log_bf_tau0 = ll0 - log_ev
    if proper_tau and proper_mu:
        # Savage-Dickey: p(y | mu=0) / p(y) = p(mu=0 | y) / p(mu=0)
        log_bf_mu0 = _mixture_log_density(threshold, log_w, cond.mean, cond.var) - _mu_log_prior(
            threshold, mu_prior
        )
    else:
        log_bf_mu0 = nan
    log_min_tau0 = ll0 - ml_value if proper_mu else nan
    if proper_tau:
        log_min_mu0 = _mixture_log_density(
            threshold, log_w_flat, flat.mean, flat.var
        ) - _mixture_log_density(ml_mu, log_w_flat, flat.mean, flat.var)
    else:
        log_min_mu0 = nan

    limit = 0.1 * float(jnp.finfo(dtype).eps) ** 0.5
    conv = ok1 & ok2 & ok3 & ok4 & ok5 & ok6 & grid.converged
    status = (
        jnp.where(grid.error > limit, STATUS["grid_unresolved"], 0)
        | jnp.where(grid.truncated, STATUS["tail_truncated"], 0)
        | jnp.where(conv, 0, STATUS["unconverged"])
    ).astype(jnp.int32)
    return DatasetEvidence(
        log_ev,
        log_bf_tau0,
        log_bf_mu0,
        log_min_tau0,
        log_min_mu0,
        Estimate(jml_tau, jml_mu),
        Estimate(ml_tau, ml_mu),
        Estimate(jmap_tau, jmap_mu),
        Estimate(mode_tau, mode_mu),
        status,
    )


@register
@jax.jit
def evidence_standardized(grids: TauGrid, y, sigma2, mask, threshold, tau_prior, mu_prior):
    """:func:`evidence_dataset` over a block (leading ``B`` axis everywhere), vmapped."""
    return jax.vmap(evidence_dataset)(grids, y, sigma2, mask, threshold, tau_prior, mu_prior)


def _evidence_block(y, sigma2, mask, threshold, tau_prior, mu_prior, *, n: int):
    """A block's grids, then its evidence: the kernel :func:`evidence` gives the batch
    driver (module-level, so that the driver's compiled programs are keyed on one function)."""
    grids = grids_standardized(y, sigma2, mask, tau_prior, mu_prior, n=n)
    return evidence_standardized(grids, y, sigma2, mask, threshold, tau_prior, mu_prior)


def _default_chunk(K: int, J: int) -> int:
    return int(max(1, min(4096, (1 << 22) // (K * J))))


def evidence(
    y,
    sigma=None,
    *,
    tau_prior="uniform",
    mu_prior="flat",
    mask=None,
    names=None,
    nodes: int | None = None,
    chunk: int | None = None,
    dtype=None,
) -> Evidence:
    r"""Marginal likelihood, Bayes factors and ML/MAP estimates, as bayesmeta defines them.

    .. math::
        \mathrm{BF}(\tau = 0) = \frac{p(y \mid \tau = 0)}{p(y)},\quad
        \mathrm{BF}(\mu = 0) = \frac{p(y \mid \mu = 0)}{p(y)},\quad
        \mathrm{minBF}(\tau = 0) = \frac{p(y \mid \tau = 0)}{\max_\tau p(y \mid \tau)},\quad
        \mathrm{minBF}(\mu = 0) = \frac{p(y \mid \mu = 0)}{\max_\mu p(y \mid \mu)}

    Args:
        y, sigma, tau_prior, mu_prior, mask, names, nodes, dtype: as for :func:`hierjax.fit`.
        chunk: datasets per block (default by memory; a smaller batch is one block of the
            power of two at or above ``B``), the last block padded by repeating the last
            dataset (:mod:`hierjax.engine.driver`).

    Returns:
        Evidence with ``[B]`` fields in the data's units (log Bayes factors).

    Raises:
        InputError: bad data or settings, naming the dataset and field.

    References:
        Röver (2020), Bayesian random-effects meta-analysis using the bayesmeta R package,
        J. Stat. Softw. 93(6). Spiegelhalter, Abrams, Myles (2004), Bayesian approaches to
        clinical trials and health-care evaluation, sec. 4.4 (minimum Bayes factors).

    Example:
        >>> import hierjax
        >>> from hierjax.evidence import evidence
        >>> e = evidence(*hierjax.rubin_eight_schools(), tau_prior="half-cauchy:25",
        ...              mu_prior="normal:0,50")
        >>> bool(e.log_bf_tau0[0] > 0)
        True
    """
    prep = prepare(
        y,
        sigma,
        tau_prior=tau_prior,
        mu_prior=mu_prior,
        mask=mask,
        names=names,
        nodes=nodes,
        chunk=chunk,
        dtype=dtype,
        default_chunk=_default_chunk,
    )
    B = prep.batch.y.shape[0]
    st = prep.st
    res = driver.in_blocks(
        _evidence_block, prep.arrays(), driver.block_size(B, prep.size), n=prep.n
    )
    r = jax.tree.map(lambda a: a if a.dtype == np.int32 else a.astype(np.float64), res)
    loc, scale = st.loc[:B], st.scale[:B]
    n_groups = prep.batch.mask.sum(axis=1)
    dt = prep.dtype

    def est(e: Estimate):
        return Estimate((scale * e.tau).astype(dt), (loc + scale * e.mu).astype(dt))

    return Evidence(
        log_marginal_likelihood=(r.log_marginal_likelihood - n_groups * np.log(scale)).astype(dt),
        log_bf_tau0=r.log_bf_tau0.astype(dt),
        log_bf_mu0=r.log_bf_mu0.astype(dt),
        log_min_bf_tau0=r.log_min_bf_tau0.astype(dt),
        log_min_bf_mu0=r.log_min_bf_mu0.astype(dt),
        ml_joint=est(r.ml_joint),
        ml_marginal=est(r.ml_marginal),
        map_joint=est(r.map_joint),
        map_marginal=est(r.map_marginal),
        status=r.status.astype(np.int32),
        names=prep.batch.names,
    )
