"""Host-side batches: padding, validation and standardisation, in float64 NumPy before jit.

A batch is ``[B, J]`` arrays with a mask: ragged input (datasets with different
numbers of groups) is padded to a common ``J`` (rounded up to a power of two, at
least 8, so that nearby sizes share one compiled kernel). Padded groups are benign
(``y = 0``, ``sigma = 1``) with ``mask = False``.

Standardisation: each dataset is shifted by its precision-weighted mean and
divided by the geometric mean of its ``sigma_j``. The model is equivariant under
this map (priors are rescaled with it), so results are exact after mapping back,
and float32 kernels lose nothing to a large offset or an extreme unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from hierjax.model.priors import DataTauPrior, FlatMu, InputError, MuPrior, NormalMu, TauPrior

__all__ = [
    "InputError",
    "Batch",
    "as_batch",
    "validate",
    "min_groups",
    "describe_priors",
    "padded_size",
    "Standardized",
    "standardize",
]


class Batch(NamedTuple):
    """Datasets as padded float64 arrays (host side).

    Attributes:
        y: group estimates, ``[B, J]`` (0 where padded).
        sigma: known standard errors, ``[B, J]`` (1 where padded).
        mask: real groups, ``[B, J]`` bool.
        names: a label per dataset, length ``B``.
        groups: group labels per dataset (``None`` for 1-based numbers), length ``B``.
        width: the input's own number of columns (the longest dataset of a ragged list),
            at most ``J``: results are trimmed back to it, so that the padding added for
            the kernels' shapes never shows (padding given with a mask stays).
    """

    y: np.ndarray
    sigma: np.ndarray
    mask: np.ndarray
    names: tuple
    groups: tuple
    width: int


def padded_size(j: int) -> int:
    """Pad ``J`` up to a power of two (at least 8): few compiled shapes for ragged data."""
    return max(8, 1 << max(0, int(j) - 1).bit_length())


def _to_float(name, values, where):
    """``values`` as float64; a non-numeric cell is named by dataset and group."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    arr = np.asarray(values, dtype=object)
    for idx in np.ndindex(arr.shape):
        try:
            float(arr[idx])
        except (TypeError, ValueError):
            if arr.ndim == 2:
                place = f"dataset {idx[0]}: {name}[{idx[1] + 1}]"
            elif arr.ndim == 1:  # one dataset: dataset 0, or the one named by `where`
                place = f"{'dataset 0' if where == 'input' else where}: {name}[{idx[0] + 1}]"
            else:
                place = f"{where}: {name}"
            raise InputError(f"{place} is not a number: {arr[idx]!r}") from None
    raise InputError(f"{where}: {name} must be a numeric array, got shape {arr.shape}")


def as_batch(
    y, sigma, mask=None, names: Sequence | None = None, groups=None, pad_to: int | None = None
) -> Batch:
    """Assemble a batch from ``[J]``, ``[B, J]`` (with optional mask) or ragged lists.

    Args:
        y, sigma: one dataset (``[J]``), a batch (``[B, J]``), or lists of ``[J_b]`` arrays.
        mask: ``[B, J]`` bool for rectangular input (default: all True).
        names: dataset labels (default ``0 .. B-1``).
        groups: per-dataset group labels (optional).
        pad_to: pad ``J`` to at least this size (default :func:`padded_size`).

    Raises:
        ValueError: shapes that do not match, non-numeric values, empty datasets.
    """
    ragged = isinstance(y, (list, tuple)) and len(y) > 0 and np.ndim(y[0]) == 1
    if ragged:
        if mask is not None:
            raise InputError("mask is for [B, J] arrays; ragged lists carry their own lengths")
        if not isinstance(sigma, (list, tuple)) or len(sigma) != len(y):
            raise InputError(
                f"ragged y has {len(y)} datasets; sigma must be a list of the same length"
            )
        ys = [_to_float("y", v, f"dataset {b}") for b, v in enumerate(y)]
        ss = [_to_float("sigma", v, f"dataset {b}") for b, v in enumerate(sigma)]
        for b, (yv, sv) in enumerate(zip(ys, ss)):
            if yv.ndim != 1 or sv.shape != yv.shape:
                raise InputError(
                    f"dataset {b}: y has shape {yv.shape} and sigma {sv.shape}; "
                    "expected two 1-D arrays of equal length"
                )
        lens = [len(v) for v in ys]
        B = len(ys)
        J = max(lens) if lens else 0
        Y = np.zeros((B, J))
        S = np.ones((B, J))
        M = np.zeros((B, J), bool)
        for b, (yv, sv) in enumerate(zip(ys, ss)):
            Y[b, : lens[b]], S[b, : lens[b]], M[b, : lens[b]] = yv, sv, True
    else:
        Y = _to_float("y", y, "input")
        S = _to_float("sigma", sigma, "input")
        if Y.ndim == 1:
            Y, S = Y[None], S[None] if S.ndim == 1 else S
        if Y.ndim != 2 or S.shape != Y.shape:
            raise InputError(
                f"y has shape {np.shape(y)} and sigma {np.shape(sigma)}; expected "
                "equal shapes [J] or [B, J], or ragged lists of 1-D arrays"
            )
        M = np.ones(Y.shape, bool) if mask is None else np.asarray(mask, bool)
        if M.ndim == 1:
            M = M[None]
        if M.shape != Y.shape:
            raise InputError(f"mask has shape {M.shape}; expected {Y.shape}")
        Y = np.where(M, Y, 0.0)
        S = np.where(M, S, 1.0)
    B, J = Y.shape
    if B == 0:
        raise InputError("no datasets given")
    width = J
    target = max(padded_size(J), pad_to or 0)
    if target > J:
        Y = np.pad(Y, ((0, 0), (0, target - J)))
        S = np.pad(S, ((0, 0), (0, target - J)), constant_values=1.0)
        M = np.pad(M, ((0, 0), (0, target - J)))
    names = tuple(range(B)) if names is None else tuple(names)
    if len(names) != B:
        raise InputError(f"{len(names)} dataset names for {B} datasets")
    groups = (None,) * B if groups is None else tuple(groups)
    return Batch(Y, S, M, names, groups, width)


def min_groups(tau_prior: TauPrior, mu_prior: MuPrior) -> int:
    """Fewest groups giving a proper posterior: ``alpha = J - 2 + c > 0`` (flat mu) or
    ``J - 1 + c > 0`` (normal mu), at least one group, and at least what the tau prior
    itself needs (``tau_prior.min_groups_floor``, e.g. 2 for the uniform-I^2 prior)."""
    c = tau_prior.tail_power
    base = 1 if isinstance(mu_prior, NormalMu) else 2
    floor = int(getattr(tau_prior, "min_groups_floor", 1))
    if math.isinf(c):
        return max(1, floor)
    return max(1, floor, math.floor(base - c) + 1)


def validate(batch: Batch, need: int, prior_text: str = "") -> list:
    """Check every dataset; returns a list with one message (or ``None``) per dataset.

    Args:
        batch: the datasets.
        need: fewest groups a dataset may have (:func:`min_groups`).
        prior_text: how to name the priors in the "too few groups" message.
    """
    # vectorised first: only the datasets that fail a check get the loop below that
    # words the message (the loop over all of them cost ~15 us per dataset)
    mask, y_all, s_all = batch.mask, batch.y, batch.sigma
    with np.errstate(invalid="ignore"):
        fails = (
            (mask.sum(axis=1) < max(need, 1))
            | np.any(mask & ~np.isfinite(y_all), axis=1)
            | np.any(mask & ~(np.isfinite(s_all) & (s_all > 0)), axis=1)
        )
    problems: list[str | None] = [None] * y_all.shape[0]
    for b in np.flatnonzero(fails):
        m = batch.mask[b]
        y, s = batch.y[b][m], batch.sigma[b][m]
        name = batch.names[b]
        msg = None
        if m.sum() == 0:
            msg = "has no groups"
        elif not np.all(np.isfinite(y)):
            j = int(np.flatnonzero(~np.isfinite(y))[0])
            msg = f"y[{j + 1}] is {y[j]} (must be finite)"
        elif not np.all(np.isfinite(s)):
            j = int(np.flatnonzero(~np.isfinite(s))[0])
            msg = f"sigma[{j + 1}] is {s[j]} (must be finite)"
        elif np.any(s <= 0):
            j = int(np.flatnonzero(s <= 0)[0])
            msg = f"sigma[{j + 1}] is {s[j]} (must be > 0)"
        elif m.sum() < need:
            msg = (
                f"has {int(m.sum())} group(s); {prior_text or 'this model'} needs at least "
                f"{need} for a proper posterior"
            )
        problems[b] = None if msg is None else f"dataset {name!r}: {msg}"
    return problems


def describe_priors(tau_prior: TauPrior, mu_prior: MuPrior) -> str:
    """``"a uniform tau prior with a flat mu prior"`` and the like, for messages."""

    def name(p):
        return {"Uniform": "uniform", "FlatMu": "flat", "NormalMu": "normal"}.get(
            type(p).__name__, type(p).__name__
        )

    return f"a {name(tau_prior)} tau prior with a {name(mu_prior)} mu prior"


class Standardized(NamedTuple):
    """A batch mapped to standard units (float64, host side).

    Attributes:
        y: ``(y - loc) / scale``, ``[B, J]``.
        sigma2: ``(sigma / scale)^2``, ``[B, J]``.
        loc: precision-weighted mean per dataset, ``[B]``.
        scale: geometric mean of sigma per dataset, ``[B]``.
        threshold: ``(0 - loc) / scale``, where ``P(. > 0)`` is evaluated, ``[B]``.
    """

    y: np.ndarray
    sigma2: np.ndarray
    loc: np.ndarray
    scale: np.ndarray
    threshold: np.ndarray


def standardize(batch: Batch) -> Standardized:
    r"""Centre by the Fisher-weighted mean and scale by the geometric mean of sigma.

    .. math::
        s = \exp\Big(\frac{1}{J}\sum_j \log\sigma_j\Big), \qquad
        \hat\mu_0 = \frac{\sum_j y_j / (\sigma_j/s)^2}{\sum_j 1 / (\sigma_j/s)^2}

    The precisions are formed in units of ``s``, so ``sigma`` anywhere in float64's
    range (``1e-200`` or ``1e200``) neither overflows nor underflows ``1 / sigma^2``.
    """
    m = batch.mask
    n = np.maximum(m.sum(axis=1), 1)
    scale = np.exp(np.sum(np.where(m, np.log(np.where(m, batch.sigma, 1.0)), 0.0), axis=1) / n)
    s2 = np.where(m, (batch.sigma / scale[:, None]) ** 2, 1.0)
    prec = np.where(m, 1.0 / s2, 0.0)
    loc = np.sum(prec / np.sum(prec, axis=1, keepdims=True) * np.where(m, batch.y, 0.0), axis=1)
    y = np.where(m, (batch.y - loc[:, None]) / scale[:, None], 0.0)
    return Standardized(y, s2, loc, scale, -loc / scale)


def rescale_priors(tau_prior: TauPrior, mu_prior: MuPrior, st: Standardized, mask=None):
    """Priors for the standardised data, with ``[B]`` leaves (one scale per dataset).

    An unbound data-dependent tau prior (:class:`hierjax.model.priors.DataTauPrior`) is bound
    to each dataset's standardised ``sigma_j`` (``mask`` ``[B, J]`` marks the real groups;
    default all), giving ``[B]`` or ``[B, J]`` leaves: the priors are scale equivariant, so
    this is the prior bound to the raw ``sigma_j``, rescaled.
    """
    if isinstance(tau_prior, DataTauPrior) and not tau_prior.bound:
        tau_std = tau_prior.bind(np.sqrt(st.sigma2), mask)
    else:
        tau_std = tau_prior.rescaled(st.scale)
    mu_std = mu_prior.rescaled(st.loc, st.scale) if isinstance(mu_prior, NormalMu) else FlatMu()
    return tau_std, mu_std
