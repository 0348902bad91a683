"""Host-side preparation shared by the batched entry points that build on the tau grid.

The same steps as :func:`hierjax.engine.fitting.fit`, from the same helpers (no copies): parse
the priors, assemble and validate the batch, replace invalid datasets by stand-ins,
standardise in float64 and rescale the priors. The entry points then run their kernels
on fixed-shape blocks through the batch driver (:mod:`hierjax.engine.driver`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hierjax.engine.batch import (
    Batch,
    InputError,
    Standardized,
    as_batch,
    describe_priors,
    min_groups,
    rescale_priors,
    standardize,
    validate,
)
from hierjax.engine.cache import make_room, register
from hierjax.inference.grid import default_nodes, tau_grid
from hierjax.model.priors import MuPrior, TauPrior, parse_mu_prior, parse_tau_prior

__all__ = [
    "Prepared",
    "grids_standardized",
    "prepare",
    "compute_dtype",
    "with_stand_ins",
]


def compute_dtype(*arrays, dtype=None):
    """float64 when x64 is on and the inputs are not float32; float32 otherwise."""
    if dtype is not None:
        return jnp.dtype(jax.dtypes.canonicalize_dtype(dtype))

    def is_f32(a):
        if isinstance(a, (np.ndarray, jax.Array, np.generic)):
            return a.dtype == np.float32
        if isinstance(a, (list, tuple)) and a:  # ragged lists: look at the datasets
            return all(is_f32(v) for v in a)
        return False

    if any(is_f32(a) for a in arrays):
        return jnp.dtype(jnp.float32)
    return jnp.dtype(jax.dtypes.canonicalize_dtype(np.float64))


def with_stand_ins(batch: Batch, bad, n_pad: int) -> Batch:
    """Replace invalid datasets by benign ones (y = -1, 0, 1; sigma = 1) and append
    ``n_pad`` more; their results are dropped or replaced by nan."""
    y_ = np.concatenate([batch.y, np.zeros((n_pad,) + batch.y.shape[1:])])
    s_ = np.concatenate([batch.sigma, np.ones((n_pad,) + batch.y.shape[1:])])
    m_ = np.concatenate([batch.mask, np.zeros((n_pad,) + batch.y.shape[1:], bool)])
    stand_in = np.concatenate([bad, np.ones(n_pad, bool)])
    if stand_in.any():
        three = np.arange(3)  # padded J >= 8; three groups make any supported posterior proper
        y_[stand_in], s_[stand_in], m_[stand_in] = 0.0, 1.0, False
        m_[np.ix_(stand_in, three)] = True
        y_[np.ix_(stand_in, three)] = np.array([-1.0, 0.0, 1.0])
    return Batch(y_, s_, m_, batch.names, batch.groups, batch.width)


class Prepared(NamedTuple):
    """A batch ready for a jitted one-dataset kernel.

    Attributes:
        batch: the user's datasets (host, float64), ``B`` of them.
        tau_prior, mu_prior: the parsed priors (user units).
        bad: invalid datasets (replaced by stand-ins), ``[B]`` bool.
        problems: a message or None per dataset, length ``B``.
        work: the batch with invalid datasets replaced by stand-ins.
        st: its standardisation (float64), ``[B, ...]``.
        tau_std, mu_std: the priors for the standardised data, ``[B]`` leaves, already
            cast to ``dtype``.
        dtype: the compute dtype.
        n: Clenshaw-Curtis order.
        size: datasets per full block.
        n_pad: stand-in datasets appended to ``work`` and ``st`` (``pad_blocks``).
    """

    batch: Batch
    tau_prior: TauPrior
    mu_prior: MuPrior
    bad: np.ndarray
    problems: list
    work: Batch
    st: Standardized
    tau_std: TauPrior
    mu_std: MuPrior
    dtype: np.dtype
    n: int
    size: int
    n_pad: int = 0

    def cast(self, a):
        return jnp.asarray(a, dtype=self.dtype)

    def arrays(self):
        """``(y, sigma2, mask, threshold, tau_prior, mu_prior)`` of the whole batch as NumPy
        in the compute dtype, ``[B, ...]`` (for :func:`hierjax.engine.driver.in_blocks`)."""
        B = self.batch.y.shape[0]

        def host(a):
            return np.asarray(a[:B], dtype=self.dtype)

        return (
            host(self.st.y),
            host(self.st.sigma2),
            np.asarray(self.work.mask[:B]),
            host(self.st.threshold),
            jax.tree.map(lambda a: np.asarray(a)[:B], self.tau_std),
            jax.tree.map(lambda a: np.asarray(a)[:B], self.mu_std),
        )

    def block(self, sl, width: int | None = None):
        """``(y, sigma2, mask, threshold, tau_prior, mu_prior)`` of a block, on the device;
        only the first ``width`` groups (all by default: the caller knows the rest are
        padding)."""

        def take(a):
            return a[sl]

        cols = slice(None, width)
        return (
            self.cast(self.st.y[sl, cols]),
            self.cast(self.st.sigma2[sl, cols]),
            jnp.asarray(self.work.mask[sl, cols]),
            self.cast(self.st.threshold[sl]),
            jax.tree.map(take, self.tau_std),
            jax.tree.map(take, self.mu_std),
        )


def prepare(
    y,
    sigma,
    *,
    tau_prior,
    mu_prior,
    mask=None,
    names=None,
    groups=None,
    nodes: int | None = None,
    chunk: int | None = None,
    dtype=None,
    skip_invalid: bool = False,
    default_chunk=None,
    pad_blocks: bool = False,
) -> Prepared:
    """Host checks, stand-ins, padding and standardisation: the one place every batched
    entry point (:func:`hierjax.fit`, posterior, curves, draws, evidence) prepares a batch.

    Args:
        default_chunk: ``(K, J) -> datasets per block`` when ``chunk`` is None (default:
            the whole batch is one block).
        pad_blocks: append stand-in datasets so the batch is a power of two below one
            block, or whole blocks (:func:`hierjax.fit`'s fixed shapes); ``size`` is then
            the block size.

    Raises:
        InputError: bad input, naming the dataset and field (unless ``skip_invalid``).
    """
    make_room()  # before this call's kernels compile (hierjax.engine.cache)
    tp, mp = parse_tau_prior(tau_prior), parse_mu_prior(mu_prior)
    dt = compute_dtype(y, sigma, dtype=dtype)
    batch = y if isinstance(y, Batch) else as_batch(y, sigma, mask=mask, names=names, groups=groups)
    problems = validate(batch, min_groups(tp, mp), describe_priors(tp, mp))
    bad = np.array([p is not None for p in problems])
    if bad.any() and not skip_invalid:
        first = [p for p in problems if p is not None]
        more = f" (and {len(first) - 1} more invalid datasets)" if len(first) > 1 else ""
        raise InputError(first[0] + more)
    n = default_nodes(dt) if nodes is None else int(nodes)
    if n < 4 or n % 2:
        raise InputError(f"nodes must be an even integer >= 4, got {nodes}")
    B, J = batch.y.shape
    if chunk is not None:
        ch = int(chunk)
    else:
        ch = default_chunk(n + 1, J) if default_chunk is not None else max(B, 1)
    if ch < 1:
        raise InputError(f"chunk must be a positive integer, got {chunk}")
    n_pad = 0
    if pad_blocks:
        ch = 1 << max(0, B - 1).bit_length() if B < ch else ch
        n_pad = -B % ch
    work = with_stand_ins(batch, bad, n_pad)
    st = standardize(work)
    tp_std, mp_std = rescale_priors(tp, mp, st, work.mask)
    cast = functools.partial(jnp.asarray, dtype=dt)
    return Prepared(
        batch,
        tp,
        mp,
        bad,
        problems,
        work,
        st,
        jax.tree.map(cast, tp_std),
        jax.tree.map(cast, mp_std),
        dt,
        n,
        ch,
        n_pad,
    )


@register
@functools.partial(jax.jit, static_argnames=("n",))
def grids_standardized(y, sigma2, mask, tau_prior, mu_prior, *, n: int):
    """:func:`hierjax.inference.grid.tau_grid` for each dataset of a block (``[B, J]`` inputs, ``[B]``
    prior leaves) -> TauGrid with a leading ``B`` axis.

    One dataset at a time (``lax.map`` without vmap): each dataset's grid is then computed
    by the same code at the same vector width whatever the block size or its position in
    it, so results are bitwise reproducible per dataset; and the one compiled function is
    shared by every module that starts from the grid (draws, evidence).
    """

    def one(args):
        yb, sb, mb, tp, mp = args
        return tau_grid(yb, sb, mb, tp, mp, n)

    return jax.lax.map(one, (y, sigma2, mask, tau_prior, mu_prior))
