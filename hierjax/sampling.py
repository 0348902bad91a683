r"""Exact, independent posterior draws of ``(tau, mu, theta)``, batched and reproducible.

Each draw follows the factorisation of the posterior (BDA3 sec. 5.4):

.. math::
    \tau = F^{-1}(U),\ U \sim \mathrm{Uniform}(0, 1),\qquad
    \mu \mid \tau, y \sim N(\hat\mu(\tau), V_\mu(\tau)),\qquad
    \theta_j \mid \mu, \tau, y \sim N\Big(\frac{\tau^2 y_j + \sigma_j^2 \mu}{\sigma_j^2 + \tau^2},
        \frac{\sigma_j^2 \tau^2}{\sigma_j^2 + \tau^2}\Big)

where ``F`` is the posterior CDF of tau: the exact integral of the Chebyshev
interpolant of ``p(tau | y)`` through the 2n-rule nodes of the dataset's tau grid
(:mod:`hierjax.inference.grid`), inverted by safeguarded Newton to round-off
(:func:`hierjax.inference.summaries.tau_quantile`). No histogram, no resampling of grid nodes:
the draws are iid from the posterior up to the interpolant's error (the same error
as the reported tau quantiles, ~1e-10 in float64).

Reproducibility: the draws of dataset ``b`` use the key ``fold_in(key, id_b)`` where
``id_b`` is its position in the batch (or the id the user passes), and draw ``s`` uses
``fold_in(fold_in(key, id_b), s)`` with separate sub-keys for ``U``, the ``mu`` normal
and each group's ``theta`` normal (``fold_in(., 0)``, ``fold_in(., 1)``,
``fold_in(., 2 + j)``). So a dataset's draws do not depend on the batch it sits in,
its position in a block, the chunk size, the padding of ``J``, or ``num_draws``: the
first ``S`` draws of a larger request are exactly the ``S`` draws of a smaller one.
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
from hierjax.engine.prepare import grids_standardized, prepare
from hierjax.inference.grid import TauGrid
from hierjax.inference.summaries import tau_cdf_nodes, tau_quantile
from hierjax.model.conditionals import mu_given_tau, theta_given_mu_tau
from hierjax.model.priors import MuPrior
from hierjax.status import STATUS

__all__ = [
    "DRAW_CHUNK",
    "DatasetDraws",
    "Draws",
    "draws",
    "draws_dataset",
    "draws_standardized",
    "to_arviz",
]

#: Draws vmapped at once for one dataset; ``num_draws`` is padded to a multiple of it so
#: that every draw is computed at the same vector width whatever ``S`` (bitwise prefixes).
DRAW_CHUNK = 256
_MAX_ITER = 100
_FAST_STEPS = 0  # a single while loop: a small compile; lanes stop when done


class DatasetDraws(NamedTuple):
    """Draws for one standardised dataset (see :class:`Draws`).

    Attributes:
        tau: ``[S]``.
        mu: ``[S]``.
        theta: ``[S, J]`` (padded groups carry meaningless values).
        status: grid and solver status bits (:data:`hierjax.engine.fitting.STATUS`), scalar.
    """

    tau: jax.Array | np.ndarray
    mu: jax.Array | np.ndarray
    theta: jax.Array | np.ndarray
    status: jax.Array | np.ndarray


class Draws(NamedTuple):
    """Independent posterior draws for a batch of ``B`` datasets, in the data's units.

    Attributes:
        tau: population sd, ``[B, S]``.
        mu: population mean, ``[B, S]``.
        theta: group effects, ``[B, S, J]`` (nan where padded).
        status: status bits per dataset (:data:`hierjax.engine.fitting.STATUS`), ``[B]``.
        mask: real groups, ``[B, J]``.
        ids: the integer folded into the key for each dataset, ``[B]``.
        names: dataset labels, length ``B``.
        groups: group labels per dataset (or None), length ``B``.
    """

    tau: np.ndarray
    mu: np.ndarray
    theta: np.ndarray
    status: np.ndarray
    mask: np.ndarray
    ids: np.ndarray
    names: tuple
    groups: tuple


def draws_dataset(
    key, grid: TauGrid, y, sigma2, mask, mu_prior: MuPrior, num_draws: int
) -> DatasetDraws:
    r"""``num_draws`` iid posterior draws for one standardised dataset.

    Args:
        key: this dataset's PRNG key (already folded with its id).
        grid: the dataset's :class:`~hierjax.inference.grid.TauGrid`.
        y, sigma2, mask: ``[J]`` standardised data.
        mu_prior: mu prior for the standardised data (scalar leaves).
        num_draws: ``S``, a multiple of :data:`DRAW_CHUNK` (vmapped that many at a time).

    Returns:
        DatasetDraws with ``tau[S]``, ``mu[S]``, ``theta[S, J]``.
    """
    dtype = y.dtype
    J = y.shape[0]
    # the tau CDF at the 2n-rule nodes: exact integral of the density's interpolant
    cdf = tau_cdf_nodes(grid)
    groups = jnp.arange(J, dtype=jnp.uint32)

    def one(s):
        k = jax.random.fold_in(key, s)
        u = jax.random.uniform(jax.random.fold_in(k, 0), (), dtype)
        tau, ok = tau_quantile(u, grid, cdf, fast_steps=_FAST_STEPS)  # tau = F^-1(U)
        tau2 = tau * tau
        cond = mu_given_tau(tau2, y, sigma2, mask, mu_prior)  # mu | tau, y
        mu = cond.mean + jnp.sqrt(cond.var) * jax.random.normal(jax.random.fold_in(k, 1), (), dtype)
        mean, var = theta_given_mu_tau(mu, tau2, y, sigma2)  # theta_j | mu, tau, y
        z = jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(k, 2 + j), (), dtype))(groups)
        return tau, mu, mean + jnp.sqrt(var) * z, ok

    tau, mu, theta, ok = jax.lax.map(
        one, jnp.arange(num_draws, dtype=jnp.uint32), batch_size=min(DRAW_CHUNK, num_draws)
    )
    limit = 0.1 * float(jnp.finfo(dtype).eps) ** 0.5
    status = (
        jnp.where(grid.error > limit, STATUS["grid_unresolved"], 0)
        | jnp.where(grid.truncated, STATUS["tail_truncated"], 0)
        | jnp.where(jnp.all(ok) & grid.converged, 0, STATUS["unconverged"])
    ).astype(jnp.int32)
    return DatasetDraws(tau, mu, theta, status)


@register
@functools.partial(jax.jit, static_argnames=("num_draws",))
def draws_standardized(
    key, ids, grids: TauGrid, y, sigma2, mask, mu_prior, *, num_draws: int
) -> DatasetDraws:
    """:func:`draws_dataset` over a block: ``[B]`` ids, grids with a leading ``B`` axis,
    ``[B, J]`` data, ``[B]`` prior leaves.

    Datasets one after another (``lax.map``), draws vmapped :data:`DRAW_CHUNK` at a time:
    every draw is computed by the same code at the same width, whatever the block, so a
    dataset's draws are bitwise the same in any batch, order or chunking.
    """

    def one(args):
        i, g, yb, sb, mb, mp = args
        return draws_dataset(jax.random.fold_in(key, i), g, yb, sb, mb, mp, num_draws)

    return jax.lax.map(one, (ids, grids, y, sigma2, mask, mu_prior))


def _draws_block(key, ids, y, sigma2, mask, tau_prior, mu_prior, *, n: int, num_draws: int):
    """A block's grids, then its draws: the kernel :func:`draws` gives the batch driver
    (module-level, so that the driver's compiled programs are keyed on one function)."""
    grids = grids_standardized(y, sigma2, mask, tau_prior, mu_prior, n=n)
    return draws_standardized(key, ids, grids, y, sigma2, mask, mu_prior, num_draws=num_draws)


def _default_chunk(K: int, J: int) -> int:
    return 64


def draws(
    y,
    sigma=None,
    *,
    key,
    num_draws: int,
    tau_prior="uniform",
    mu_prior="flat",
    mask=None,
    names=None,
    groups=None,
    ids=None,
    nodes: int | None = None,
    dtype=None,
    chunk: int | None = None,
) -> Draws:
    r"""Independent exact posterior draws of ``(tau, mu, theta)`` for one or many datasets.

    .. math::
        \tau^{(s)} = F^{-1}_{\tau \mid y}(U_s),\quad
        \mu^{(s)} \sim p(\mu \mid \tau^{(s)}, y),\quad
        \theta_j^{(s)} \sim p(\theta_j \mid \mu^{(s)}, \tau^{(s)}, y)

    Args:
        y, sigma: as for :func:`hierjax.fit` (``[J]``, ``[B, J]``, ragged lists or a Batch).
        key: a JAX PRNG key (``jax.random.key(0)`` or ``jax.random.PRNGKey(0)``).
        num_draws: ``S``, draws per dataset.
        tau_prior, mu_prior, mask, names, groups, nodes, dtype: as for :func:`hierjax.fit`.
        ids: integers in ``[0, 2**32)`` folded into ``key``, one per dataset (default: the
            dataset's position ``0 .. B-1``). A dataset gets the same draws whenever it has
            the same id, whatever else is in the batch.
        chunk: datasets per block (default 64; a smaller batch is one block of the power
            of two at or above ``B``), the last block padded by repeating the last dataset
            (:mod:`hierjax.engine.driver`). Datasets are processed one after another inside
            a block, so it changes neither the draws nor the memory per dataset.

    Returns:
        Draws with ``tau[B, S]``, ``mu[B, S]``, ``theta[B, S, J]`` in the compute dtype.
        The first ``S`` draws of a request for more are the ``S`` draws of this one.

    Raises:
        InputError: bad data or settings, naming the dataset and field.

    Example:
        >>> import jax, hierjax
        >>> from hierjax.sampling import draws
        >>> d = draws(*hierjax.eight_schools(), key=jax.random.key(0), num_draws=1000)
        >>> d.theta.shape
        (1, 1000, 8)
    """
    if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)) or num_draws < 1:
        raise InputError(f"num_draws must be a positive integer, got {num_draws!r}")
    S = int(num_draws)
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    prep = prepare(
        y,
        sigma,
        tau_prior=tau_prior,
        mu_prior=mu_prior,
        mask=mask,
        names=names,
        groups=groups,
        nodes=nodes,
        chunk=chunk,
        dtype=dtype,
        default_chunk=_default_chunk,
    )
    B = prep.batch.y.shape[0]
    if ids is None:
        ids_np = np.arange(B, dtype=np.int64)
    else:
        ids_np = np.asarray(ids)
        if ids_np.shape != (B,) or not np.issubdtype(ids_np.dtype, np.integer):
            raise InputError(f"ids must be {B} integers (one per dataset), got {ids!r}")
        if np.any(ids_np < 0) or np.any(ids_np >= 2**32):
            raise InputError("ids must lie in [0, 2**32)")
    ids_u32 = ids_np.astype(np.uint32)
    S_pad = -(-S // DRAW_CHUNK) * DRAW_CHUNK
    y_h, s2_h, m_h, _, tp_h, mp_h = prep.arrays()
    res = driver.in_blocks(
        _draws_block,
        (key, ids_u32, y_h, s2_h, m_h, tp_h, mp_h),
        driver.block_size(B, prep.size),
        batched=(False,) + (True,) * 6,
        n=prep.n,
        num_draws=S_pad,
    )
    res = res._replace(tau=res.tau[:, :S], mu=res.mu[:, :S], theta=res.theta[:, :S])
    loc, scale = prep.st.loc, prep.st.scale
    dt = prep.dtype
    tau = (scale[:, None] * res.tau.astype(np.float64)).astype(dt)
    mu = (loc[:, None] + scale[:, None] * res.mu.astype(np.float64)).astype(dt)
    W = prep.batch.width  # the input's own width: the padding for shapes never shows
    mask = prep.batch.mask[:, :W]
    theta = loc[:, None, None] + scale[:, None, None] * res.theta[..., :W].astype(np.float64)
    theta = np.where(mask[:, None, :], theta, np.nan).astype(dt)
    return Draws(
        tau=tau,
        mu=mu,
        theta=theta,
        status=res.status.astype(np.int32),
        mask=mask,
        ids=ids_np,
        names=prep.batch.names,
        groups=prep.batch.groups,
    )


def to_arviz(d: Draws, dataset: int | None = None):
    """The draws as an ``arviz.InferenceData`` (one chain of ``S`` draws).

    Args:
        d: the draws.
        dataset: index of one dataset: its posterior with ``theta`` over its real groups
            only (dimension ``group``, labelled with its group labels if any). ``None``
            (default): a single dataset as above when ``B == 1``; otherwise every dataset,
            with a leading ``dataset`` dimension labelled by the names, and ``theta`` over
            the padded ``J`` (nan where a dataset has fewer groups).

    Returns:
        arviz.InferenceData with a ``posterior`` group holding ``mu``, ``tau``, ``theta``.

    Raises:
        ImportError: arviz is not installed (``pip install hierjax[arviz]``).
    """
    try:
        import arviz as az
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("to_arviz needs arviz: pip install 'hierjax[arviz]'") from e
    B = d.tau.shape[0]
    if dataset is None and B == 1:
        dataset = 0
    if dataset is not None:
        b = int(dataset)
        if not -B <= b < B:
            raise InputError(f"dataset {dataset} out of range for {B} datasets")
        m = np.asarray(d.mask[b])
        labels = d.groups[b]
        labels = list(range(1, int(m.sum()) + 1)) if labels is None else list(labels)
        post = {"mu": d.mu[b][None], "tau": d.tau[b][None], "theta": d.theta[b][:, m][None]}
        return az.from_dict(posterior=post, coords={"group": labels}, dims={"theta": ["group"]})
    post = {
        "mu": np.moveaxis(d.mu, 0, -1)[None],
        "tau": np.moveaxis(d.tau, 0, -1)[None],
        "theta": np.moveaxis(d.theta, 0, 1)[None],
    }
    names = [str(x) for x in d.names]
    return az.from_dict(
        posterior=post,
        coords={"dataset": names, "group": list(range(1, d.theta.shape[2] + 1))},
        dims={"mu": ["dataset"], "tau": ["dataset"], "theta": ["dataset", "group"]},
    )
