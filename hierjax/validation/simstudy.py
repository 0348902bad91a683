r"""Simulation designs for studies of the model itself: keyed, reproducible replicates.

.. math::
    \tau \sim p(\tau)\ \text{or fixed},\quad \mu \sim p(\mu)\ \text{or fixed},\quad
    \theta_j \sim N(\mu, \tau^2),\quad y_j \sim N(\theta_j, \sigma_j^2),\quad j = 1..J

Each of ``tau``, ``mu``, ``J`` and ``sigma_j`` is given by a *design spec*:

* a number (fixed), or :class:`Grid` ``(values)``: replicate ``i`` takes ``values[i % G]``
  (a grid of cells, each cell every ``G``-th replicate), or :class:`Choice` ``(values)``:
  drawn uniformly per replicate;
* for tau and mu also a proper prior (a spec string such as ``"half-cauchy:5"``, a
  :class:`hierjax.HalfNormal` ..., ``"normal:0,10"``): drawn from it;
* for sigma a number, a ``[J]`` vector (given; a replicate with fewer groups keeps its
  first ``J``), :class:`SigmaUniform`, :class:`SigmaLogNormal` or :class:`SigmaResample`
  (with replacement from a real dataset's ``sigma_j``).

Reproducibility: replicate ``i`` uses the key ``fold_in(key, i)`` (as :func:`hierjax.draws`
does per dataset), with sub-keys per quantity and per group (``fold_in(., 2 + j)``), and is
computed in fixed blocks of :data:`BLOCK` replicates aligned to multiples of it, so its
values are bitwise the same whatever ``n_replicates``, ``start`` or the chunking.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import hierjax
from hierjax.model.priors import (
    Exponential,
    FlatMu,
    HalfCauchy,
    HalfLogistic,
    HalfNormal,
    HalfT,
    InputError,
    InvGammaTau2,
    LogNormal,
    Lomax,
    MuPrior,
    Rayleigh,
    TauPrior,
)

__all__ = [
    "BLOCK",
    "Choice",
    "Grid",
    "SigmaLogNormal",
    "SigmaResample",
    "SigmaUniform",
    "SimData",
    "as_key",
    "sample_tau_prior",
    "simulate_design",
]

#: replicates per compiled block (the last one is computed whole and trimmed)
BLOCK = 1024
_SAMPLERS = (
    HalfNormal,
    HalfCauchy,
    HalfT,
    Exponential,
    HalfLogistic,
    Lomax,
    Rayleigh,
    LogNormal,
    InvGammaTau2,
)


class Grid(NamedTuple):
    """Replicate ``i`` takes ``values[i % len(values)]``."""

    values: Sequence


class Choice(NamedTuple):
    """Each replicate draws one of ``values`` uniformly."""

    values: Sequence


class SigmaUniform(NamedTuple):
    """``sigma_j ~ Uniform(low, high)`` independently per group."""

    low: float
    high: float


class SigmaLogNormal(NamedTuple):
    """``log sigma_j ~ N(loc, scale^2)`` independently per group."""

    loc: float
    scale: float


class SigmaResample(NamedTuple):
    """``sigma_j`` drawn with replacement from ``values`` (a real dataset's ``sigma_j``)."""

    values: Sequence


class SimData(NamedTuple):
    """Simulated replicates (float64 NumPy; padded groups: ``y = 0``, ``sigma = 1``,
    ``theta = nan``, ``mask = False``).

    Attributes:
        y: estimates, ``[B, J]``.
        sigma: known standard errors, ``[B, J]``.
        mask: real groups, ``[B, J]`` bool.
        theta: true group effects, ``[B, J]``.
        mu: true population mean, ``[B]``.
        tau: true population sd, ``[B]``.
        theta_new: a new group's true effect ``~ N(mu, tau^2)``, ``[B]``.
        n_groups: real groups per replicate, ``[B]`` int.
        ids: replicate indices (folded into the key), ``[B]`` int.
    """

    y: np.ndarray
    sigma: np.ndarray
    mask: np.ndarray
    theta: np.ndarray
    mu: np.ndarray
    tau: np.ndarray
    theta_new: np.ndarray
    n_groups: np.ndarray
    ids: np.ndarray


def as_key(key_or_seed):
    """A JAX PRNG key from a key (new or raw style) or an integer seed."""
    if isinstance(key_or_seed, (int, np.integer)) and not isinstance(key_or_seed, bool):
        if key_or_seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {key_or_seed}")
        return jax.random.key(int(key_or_seed))
    if isinstance(key_or_seed, jax.Array):
        return key_or_seed
    raise InputError(f"key must be a JAX PRNG key or an integer seed, got {key_or_seed!r}")


# --------------------------------------------------------------------------- specs
def _values(v, what, integer=False):
    a = np.asarray(v, np.float64).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise InputError(f"{what}: values must be finite and non-empty, got {v!r}")
    if integer and (np.any(a != np.round(a)) or np.any(a < 1)):
        raise InputError(f"{what}: values must be positive integers, got {v!r}")
    return a


def _scalar_spec(spec, what, *, prior_parser, nonneg=False):
    """``(kind, leaves)`` for tau or mu: kind ``cycle``, ``choice`` or ``prior``."""
    if isinstance(spec, (Grid, Choice)) or np.ndim(spec) > 0 and not isinstance(spec, str):
        vals = _values(spec.values if isinstance(spec, (Grid, Choice)) else spec, what)
        kind = "choice" if isinstance(spec, Choice) else "cycle"
    elif isinstance(spec, (int, float, np.integer, np.floating)) and not isinstance(spec, bool):
        vals, kind = _values(spec, what), "cycle"
    else:
        prior = prior_parser(spec)
        return "prior", prior
    if nonneg and np.any(vals < 0):
        raise InputError(f"{what}: values must be >= 0, got {vals}")
    return kind, vals


def _tau_prior(spec):
    prior = hierjax.parse_tau_prior(spec)
    if not isinstance(prior, _SAMPLERS):
        raise InputError(
            f"tau: cannot simulate from the prior {spec!r}: a proper generating prior "
            "is needed (half-normal, half-cauchy, half-t, exponential, half-logistic, "
            "lomax, rayleigh, log-normal, inv-gamma), or fixed values"
        )
    return prior


def _mu_prior(spec):
    prior = hierjax.parse_mu_prior(spec)
    if isinstance(prior, FlatMu):
        raise InputError(
            "mu: cannot simulate from the flat (improper) prior: a proper "
            "generating prior is needed (normal:M,S), or fixed values"
        )
    return prior


def _j_spec(J):
    if isinstance(J, (Grid, Choice)):
        return ("choice" if isinstance(J, Choice) else "cycle"), _values(J.values, "J", True)
    if np.ndim(J) == 0:
        return "cycle", _values(J, "J", True)
    return "cycle", _values(J, "J", True)


def _sigma_spec(sigma, width):
    if isinstance(sigma, SigmaUniform):
        lo, hi = float(sigma.low), float(sigma.high)
        if not (0 < lo <= hi < math.inf):
            raise InputError(f"SigmaUniform needs 0 < low <= high < inf, got {sigma}")
        return "uniform", np.array([lo, hi])
    if isinstance(sigma, SigmaLogNormal):
        if not (math.isfinite(sigma.loc) and 0 < sigma.scale < math.inf):
            raise InputError(f"SigmaLogNormal needs a finite loc and a positive scale, got {sigma}")
        return "lognormal", np.array([float(sigma.loc), float(sigma.scale)])
    if isinstance(sigma, SigmaResample):
        vals = _values(sigma.values, "SigmaResample")
        if np.any(vals <= 0):
            raise InputError("SigmaResample: sigma values must be positive")
        return "resample", vals
    vals = _values(sigma, "sigma")
    if np.any(vals <= 0):
        raise InputError(f"sigma must be positive, got {sigma!r}")
    if vals.size == 1:
        vals = np.full(width, vals[0])
    if vals.size < width:
        raise InputError(f"sigma: {vals.size} values given for up to {width} groups")
    return "given", vals[:width]


# --------------------------------------------------------------------------- sampling
def sample_tau_prior(prior: TauPrior, key, dtype):
    """One draw from a proper tau prior (inverse CDF or a standard construction)."""
    u = jax.random.uniform(key, (), dtype, minval=jnp.finfo(dtype).tiny)
    if isinstance(prior, HalfNormal):
        return prior.scale * jnp.abs(jax.random.normal(key, (), dtype))
    if isinstance(prior, HalfCauchy):
        return prior.scale * jnp.tan(0.5 * jnp.pi * u)  # |Cauchy| = tan(pi U / 2)
    if isinstance(prior, HalfT):
        return prior.scale * jnp.abs(jax.random.t(key, prior.df, (), dtype))
    if isinstance(prior, Exponential):
        return -jnp.log(u) / prior.rate
    if isinstance(prior, HalfLogistic):
        return prior.scale * jnp.log1p(u) - prior.scale * jnp.log1p(-u)  # F = (1-e^-z)/(1+e^-z)
    if isinstance(prior, Lomax):
        return prior.scale * jnp.expm1(-jnp.log(u) / prior.shape)  # (1 - F)^-1/a - 1, 1-F = u
    if isinstance(prior, Rayleigh):
        return prior.scale * jnp.sqrt(-2.0 * jnp.log(u))
    if isinstance(prior, LogNormal):
        return jnp.exp(prior.loc + prior.sigma * jax.random.normal(key, (), dtype))
    if isinstance(prior, InvGammaTau2):  # tau^2 = b / Gamma(a, 1)
        return jnp.sqrt(prior.scale / jax.random.gamma(key, prior.shape, (), dtype))
    raise TypeError(f"no sampler for {type(prior).__name__}")


def _scalar_draw(kind, leaves, key, i, dtype):
    if kind == "prior":
        if isinstance(leaves, MuPrior):
            return leaves.loc + leaves.scale * jax.random.normal(key, (), dtype)
        return sample_tau_prior(leaves, key, dtype)
    vals = jnp.asarray(leaves, dtype)
    if kind == "choice":
        return vals[jax.random.randint(key, (), 0, vals.shape[0])]
    return vals[i % vals.shape[0]]


def _replicate(key, i, tau_leaves, mu_leaves, j_leaves, sig_leaves, *, kinds, width, dtype):
    """One replicate: ``key`` is the study key, ``i`` the replicate index (uint32)."""
    tau_kind, mu_kind, j_kind, sig_kind = kinds
    k = jax.random.fold_in(key, i)
    sub = [jax.random.fold_in(k, c) for c in range(6)]
    tau = _scalar_draw(tau_kind, tau_leaves, sub[0], i, dtype)
    mu = _scalar_draw(mu_kind, mu_leaves, sub[1], i, dtype)
    n = _scalar_draw(j_kind, j_leaves, sub[2], i, dtype).astype(jnp.int32)
    groups = jnp.arange(width, dtype=jnp.uint32)
    mask = groups < n

    def per_group(kk, draw):
        return jax.vmap(lambda j: draw(jax.random.fold_in(kk, 2 + j)))(groups)

    if sig_kind == "given":
        sigma = jnp.asarray(sig_leaves, dtype)
    elif sig_kind == "uniform":
        lo, hi = sig_leaves[0].astype(dtype), sig_leaves[1].astype(dtype)
        sigma = per_group(sub[3], lambda kk: jax.random.uniform(kk, (), dtype, lo, hi))
    elif sig_kind == "lognormal":
        sigma = per_group(
            sub[3],
            lambda kk: jnp.exp(
                sig_leaves[0].astype(dtype)
                + sig_leaves[1].astype(dtype) * jax.random.normal(kk, (), dtype)
            ),
        )
    else:
        vals = jnp.asarray(sig_leaves, dtype)
        sigma = per_group(sub[3], lambda kk: vals[jax.random.randint(kk, (), 0, vals.shape[0])])
    z_theta = per_group(sub[4], lambda kk: jax.random.normal(kk, (), dtype))
    z_y = per_group(sub[5], lambda kk: jax.random.normal(kk, (), dtype))
    theta = mu + tau * z_theta  # theta_j ~ N(mu, tau^2)
    y = theta + sigma * z_y  # y_j ~ N(theta_j, sigma_j^2)
    theta_new = mu + tau * jax.random.normal(jax.random.fold_in(sub[4], 1), (), dtype)
    return y, sigma, mask, theta, mu, tau, theta_new, n


@functools.partial(jax.jit, static_argnames=("kinds", "width", "dtype"))
def _block(key, ids, tau_leaves, mu_leaves, j_leaves, sig_leaves, *, kinds, width, dtype):
    one = functools.partial(_replicate, kinds=kinds, width=width, dtype=dtype)
    return jax.vmap(one, in_axes=(None, 0, None, None, None, None))(
        key, ids, tau_leaves, mu_leaves, j_leaves, sig_leaves
    )


def simulate_design(
    n_replicates: int, *, key=0, tau=1.0, mu=0.0, J=5, sigma=1.0, start: int = 0
) -> SimData:
    r"""Replicates ``start .. start + n_replicates - 1`` of a simulation design.

    .. math::
        \theta_j = \mu + \tau z_j,\qquad y_j = \theta_j + \sigma_j z'_j,\qquad
        z, z' \sim N(0, 1)

    Args:
        n_replicates: ``B``.
        key: a JAX PRNG key or an integer seed.
        tau: a number, :class:`Grid`, :class:`Choice` or a proper tau prior (spec or object).
        mu: a number, :class:`Grid`, :class:`Choice` or a proper mu prior (``"normal:M,S"``).
        J: groups: an integer, :class:`Grid` or :class:`Choice` of integers (ragged: the
            arrays are ``max J`` wide with a ``mask``).
        sigma: a number, a ``[J]`` vector, :class:`SigmaUniform`, :class:`SigmaLogNormal`
            or :class:`SigmaResample`.
        start: index of the first replicate (for chunked studies).

    Returns:
        SimData with ``[B, max J]`` arrays; replicate ``i``'s values depend only on
        ``(key, i)`` (in the default JAX precision: float64 under x64).

    Raises:
        InputError: bad specs (an improper or unsupported generating prior, sigma <= 0 ...).

    Example:
        >>> import hierjax
        >>> s = hierjax.simulate_design(4, key=0, tau="half-normal:1", J=hierjax.Choice([3, 5]))
        >>> s.y.shape
        (4, 5)
    """
    if (
        isinstance(n_replicates, bool)
        or not isinstance(n_replicates, (int, np.integer))
        or n_replicates < 1
    ):
        raise InputError(f"n_replicates must be a positive integer, got {n_replicates!r}")
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise InputError(f"start must be a non-negative integer, got {start!r}")
    if start + n_replicates > 2**32:
        raise InputError("replicate indices must stay below 2**32")
    key = as_key(key)
    tk, tl = _scalar_spec(tau, "tau", prior_parser=_tau_prior, nonneg=True)
    mk, ml = _scalar_spec(mu, "mu", prior_parser=_mu_prior)
    jk, jl = _j_spec(J)
    width = int(jl.max())
    sk, sl = _sigma_spec(sigma, width)
    dtype = jnp.zeros(()).dtype  # the default float: float64 under x64
    tl = jax.tree.map(lambda a: jnp.asarray(a, dtype), tl)
    ml = jax.tree.map(lambda a: jnp.asarray(a, dtype), ml)
    first, stop = (start // BLOCK) * BLOCK, start + n_replicates
    outs = []
    for b0 in range(first, stop, BLOCK):
        ids = jnp.arange(b0, b0 + BLOCK, dtype=jnp.uint32)
        outs.append(
            [
                np.asarray(a)
                for a in _block(
                    key,
                    ids,
                    tl,
                    ml,
                    jnp.asarray(jl, dtype),
                    jnp.asarray(sl, dtype),
                    kinds=(tk, mk, jk, sk),
                    width=width,
                    dtype=dtype,
                )
            ]
        )
    cat = [np.concatenate(a)[start - first : stop - first] for a in zip(*outs)]
    y, sig, mask, theta, mu_, tau_, theta_new, n = cat
    f64 = functools.partial(np.asarray, dtype=np.float64)
    return SimData(
        np.where(mask, f64(y), 0.0),
        np.where(mask, f64(sig), 1.0),
        mask,
        np.where(mask, f64(theta), np.nan),
        f64(mu_),
        f64(tau_),
        f64(theta_new),
        n.astype(np.int64),
        np.arange(start, stop, dtype=np.int64),
    )
