r"""Prior sensitivity sweeps: every summary under each of several priors, and its change
from a base prior, for a batch of datasets in one call.

.. math::
    \Delta_p s = s(y \mid \text{prior}_p) - s(y \mid \text{prior}_{\text{base}})

A prior's scale is an array leaf (:mod:`hierjax.model.priors`), so the priors of one family
with different scales share the compiled kernels: a sweep compiles at most once per
family (and grid kind), whatever the number of scales.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

import hierjax
from hierjax.model.priors import InputError

__all__ = ["Sweep", "sweep"]


class Sweep(NamedTuple):
    """A prior sweep over ``P`` priors and ``B`` datasets.

    Attributes:
        priors: labels of the tau priors (their specs), length ``P``.
        base: index of the base prior.
        summaries: ``{name: array [P, B, ...]}`` for ``mu.mean``, ``mu.sd``, ``mu.p_gt0``,
            ``mu.q<level>``, the same for ``tau`` and ``theta_new``, ``theta.mean`` and
            ``theta.sd`` (``[P, B, J]``), ``tau_mode`` and ``log_ml`` (the log marginal
            likelihood; nan unless both priors are proper).
        change: ``{name: summaries[name] - summaries[name][base]}``.
        status: status bits per prior and dataset, ``[P, B]``.
    """

    priors: tuple
    base: int
    summaries: dict
    change: dict
    status: np.ndarray


def _label(p):
    return p if isinstance(p, str) else repr(p)


def sweep(
    y,
    sigma=None,
    *,
    tau_priors: Sequence,
    mu_prior="flat",
    base=0,
    mask=None,
    quantiles=(0.025, 0.5, 0.975),
    **fit_kwargs,
) -> Sweep:
    """Fit every dataset under each tau prior and report each summary's change from the base.

    Args:
        y, sigma, mask: the datasets, as for :func:`hierjax.fit`.
        tau_priors: tau priors (spec strings or objects), length ``P``.
        mu_prior: the mu prior for all of them.
        base: index into ``tau_priors`` (or a prior equal to one of them) of the base prior.
        quantiles: levels reported for mu, tau and theta_new.
        **fit_kwargs: passed to :func:`hierjax.fit` (``nodes``, ``dtype`` ...).

    Returns:
        Sweep with ``[P, B, ...]`` arrays.

    Raises:
        InputError: no priors, or a base that is not one of them.

    Example:
        >>> import hierjax
        >>> y, s = hierjax.eight_schools()
        >>> sw = hierjax.sweep(y, s, tau_priors=["half-cauchy:5", "half-cauchy:25"])
        >>> sw.change["mu.mean"].shape
        (2, 1)
    """
    priors = list(tau_priors)
    if not priors:
        raise InputError("tau_priors must name at least one prior")
    if isinstance(base, (int, np.integer)) and not isinstance(base, bool):
        b = int(base)
        if not 0 <= b < len(priors):
            raise InputError(f"base must index tau_priors (0 .. {len(priors) - 1}), got {base}")
    elif base in priors:
        b = priors.index(base)
    else:
        raise InputError(f"base must be an index into tau_priors or one of them, got {base!r}")
    levels = tuple(float(q) for q in quantiles)
    rows: dict = {}
    status = []
    for p in priors:
        f = hierjax.fit(
            y, sigma, tau_prior=p, mu_prior=mu_prior, mask=mask, quantiles=levels, **fit_kwargs
        )
        out = {}
        for name in ("mu", "tau", "theta_new"):
            m = getattr(f, name)
            out[f"{name}.mean"], out[f"{name}.sd"] = m.mean, m.sd
            out[f"{name}.p_gt0"] = m.p_gt0
            for i, q in enumerate(levels):
                out[f"{name}.q{q:g}"] = m.quantiles[..., i]
        out["theta.mean"], out["theta.sd"] = f.theta.mean, f.theta.sd
        out["tau_mode"], out["log_ml"] = f.tau_mode, f.log_marginal_likelihood
        for k, v in out.items():
            rows.setdefault(k, []).append(np.asarray(v, np.float64))
        status.append(np.asarray(f.status))
    summaries = {k: np.stack(v) for k, v in rows.items()}
    with np.errstate(invalid="ignore"):  # inf - inf where a moment does not exist
        change = {k: v - v[b] for k, v in summaries.items()}
    return Sweep(tuple(_label(p) for p in priors), b, summaries, change, np.stack(status))
