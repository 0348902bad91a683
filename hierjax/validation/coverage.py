r"""Frequentist coverage of Bayesian and frequentist intervals over a grid of true values.

For each cell ``(tau*, J, sigma configuration)`` of the grid, replicates are drawn with
``tau = tau*`` (and ``mu`` fixed or from a prior), and each interval method is scored by

.. math::
    \hat c = \frac{1}{R} \sum_r c_r,\qquad
    \mathrm{MCSE}(\hat c) = \mathrm{sd}(c_r) / \sqrt{R}

where ``c_r`` is 1 when replicate ``r``'s interval holds the truth (for ``theta_j``: the
share of its groups whose interval holds theirs), with the mean width likewise. Bayesian
intervals are central or shortest (:func:`hierjax.interval`) for ``mu``, ``tau``,
``theta_j`` and ``theta_new``; frequentist ones come from :func:`hierjax.model.frequentist.rma`
(``mu``: Wald or Knapp-Hartung; ``tau``: from the Q-profile interval of ``tau^2``;
``theta_new``: the prediction interval), imported when asked for.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

import hierjax
from hierjax.model.priors import InputError
from hierjax.validation.simstudy import (
    SigmaLogNormal,
    SigmaResample,
    SigmaUniform,
    as_key,
    simulate_design,
)

__all__ = ["COLUMNS", "Cell", "coverage", "coverage_cells", "plot_coverage", "to_pandas"]

#: the columns of a coverage row, in order
COLUMNS = (
    "tau",
    "J",
    "sigma",
    "method",
    "interval",
    "parameter",
    "level",
    "n",
    "coverage",
    "mcse",
    "mean_width",
    "width_mcse",
    "n_flagged",
)
_PARAMS = ("mu", "tau", "theta", "theta_new")


class Cell(NamedTuple):
    """One cell of the grid: true ``tau`` (a number, or a prior spec it is drawn from),
    ``J`` groups, a named sigma configuration."""

    tau: object
    J: int
    sigma: str


class _Acc:
    """Running sums of per-replicate coverage and width (host, float64)."""

    def __init__(self):
        self.n = 0
        self.c = self.c2 = self.w = self.w2 = 0.0
        self.flagged = 0

    def add(self, cov, width, flagged):
        ok = np.isfinite(cov) & np.isfinite(width)
        cov, width = cov[ok], width[ok]
        self.n += cov.size
        self.c += cov.sum()
        self.c2 += (cov**2).sum()
        self.w += width.sum()
        self.w2 += (width**2).sum()
        self.flagged += int(np.sum(flagged[ok]))

    def row(self):
        n = max(self.n, 1)
        c, w = self.c / n, self.w / n
        sd_c = np.sqrt(max(self.c2 / n - c * c, 0.0) * n / max(n - 1, 1))
        sd_w = np.sqrt(max(self.w2 / n - w * w, 0.0) * n / max(n - 1, 1))
        nan = float("nan")
        return {
            "n": self.n,
            "coverage": c if self.n else nan,
            "mcse": sd_c / np.sqrt(n) if self.n else nan,
            "mean_width": w if self.n else nan,
            "width_mcse": sd_w / np.sqrt(n) if self.n else nan,
            "n_flagged": self.flagged,
        }


def _score(lo, hi, truth, mask=None):
    """Per-replicate coverage and width: ``[B]`` (groups averaged over ``mask``)."""
    inside = ((lo <= truth) & (truth <= hi)).astype(np.float64)
    width = hi - lo
    bad = ~(np.isfinite(lo) & np.isfinite(hi))
    inside = np.where(bad, np.nan, inside)
    if mask is None:
        return inside, width
    m = mask.sum(axis=1)
    return (np.where(mask, inside, 0.0).sum(axis=1) / m, np.where(mask, width, 0.0).sum(axis=1) / m)


def _sigma_spec(spec):
    """A sigma configuration from a number, a list, or ``{uniform|lognormal|resample: [...]}``."""
    if isinstance(spec, (SigmaUniform, SigmaLogNormal, SigmaResample)):
        return spec
    if isinstance(spec, dict):
        if len(spec) != 1:
            raise InputError(
                f"a sigma configuration has one key (uniform, lognormal or resample), got {spec!r}"
            )
        ((kind, v),) = spec.items()
        make = {"uniform": SigmaUniform, "lognormal": SigmaLogNormal}.get(kind)
        if make is not None:
            if len(v) != 2:
                raise InputError(f"sigma {kind} needs two numbers, got {v!r}")
            return make(float(v[0]), float(v[1]))
        if kind == "resample":
            return SigmaResample(tuple(float(x) for x in v))
        raise InputError(f"unknown sigma configuration {kind!r} (uniform, lognormal or resample)")
    return spec


def coverage_cells(taus: Sequence[float], Js: Sequence[int], sigmas) -> list:
    """The grid's cells in order: ``tau`` slowest, then ``J``, then the sigma names."""
    names = list(sigmas) if isinstance(sigmas, dict) else ["sigma"]

    def tau(t):
        return t if isinstance(t, str) or not np.isscalar(t) else float(t)

    return [Cell(tau(t), int(j), s) for t, j, s in itertools.product(taus, Js, names)]


def coverage(
    *,
    taus: Sequence[float],
    Js: Sequence[int],
    sigmas=1.0,
    replicates: int,
    key=0,
    mu=0.0,
    priors: dict | None = None,
    params=_PARAMS,
    kinds=("central", "shortest"),
    frequentist=("DL-z", "DL-knha"),
    oracle: bool = False,
    level: float = 0.95,
    chunk: int = 8192,
    progress=None,
) -> list:
    r"""Coverage of the intervals over the grid ``taus x Js x sigmas``.

    Args:
        taus: true tau values (or proper tau prior specs: tau drawn per replicate).
        Js: group counts.
        sigmas: a sigma configuration (number, ``[J]`` list, :class:`SigmaUniform` ...) or
            ``{name: configuration}`` (dict values may also be ``{"uniform": [lo, hi]}``,
            ``{"lognormal": [loc, scale]}``, ``{"resample": [...]}``).
        replicates: replicates per cell.
        key: JAX key or integer seed; cell ``c`` (in :func:`coverage_cells` order) uses
            ``fold_in(key, c)``, so its replicates do not depend on ``chunk``.
        mu: true mu (number or a proper prior spec).
        priors: ``{name: (tau_prior, mu_prior)}`` for the Bayesian intervals (default
            ``{"uniform": ("uniform", "flat")}``); ``{}`` for none.
        params: among ``mu, tau, theta, theta_new``.
        kinds: Bayesian interval kinds, ``central`` and/or ``shortest``.
        frequentist: ``"METHOD-TEST"`` strings for :func:`hierjax.model.frequentist.rma`
            (e.g. ``DL-z`` for DerSimonian-Laird with a Wald interval, ``DL-knha`` for
            Hartung-Knapp-Sidik-Jonkman); ``()`` for none.
        oracle: also score the z interval for mu with the true tau known (method
            ``oracle-z``): ``mu_hat(tau*) +- z sqrt(1 / P(tau*))``, exact coverage for a fixed
            mu and a flat prior (a check of the machinery).
        level: interval level.
        chunk: replicates per batch.
        progress: callable ``progress(n_done)`` after each batch, or None.

    Returns:
        A tidy list of dicts with the keys :data:`COLUMNS` (one per cell, method, interval
        kind and parameter; ``method`` is ``bayes:NAME`` or ``METHOD-TEST``). Replicates
        whose posterior has a status flag are still scored and counted in ``n_flagged``.

    Raises:
        InputError: bad settings; ImportError when frequentist intervals are asked for
        and :mod:`hierjax.model.frequentist` is not available.
    """
    priors = {"uniform": ("uniform", "flat")} if priors is None else dict(priors)
    bad = set(params) - set(_PARAMS)
    if bad:
        raise InputError(f"params must be among {_PARAMS}, got {sorted(bad)}")
    if set(kinds) - {"central", "shortest"}:
        raise InputError(f"kinds must be 'central' and/or 'shortest', got {kinds!r}")
    if not 0 < level < 1:
        raise InputError(f"level must lie strictly between 0 and 1, got {level!r}")
    if isinstance(replicates, bool) or int(replicates) != replicates or replicates < 2:
        raise InputError(f"replicates must be an integer >= 2, got {replicates!r}")
    freq = [_freq_method(f) for f in frequentist]
    rma: Any = None
    if freq:
        try:
            from hierjax.model.frequentist import rma
        except ImportError as e:
            raise ImportError(
                "frequentist intervals need hierjax.model.frequentist (rma); pass "
                "frequentist=() for Bayesian intervals only"
            ) from e
    sig = (
        {k: _sigma_spec(v) for k, v in sigmas.items()}
        if isinstance(sigmas, dict)
        else {"sigma": _sigma_spec(sigmas)}
    )
    key = as_key(key)
    rows = []
    for c, cell in enumerate(coverage_cells(taus, Js, sig)):
        accs: dict = {}
        for a in range(0, int(replicates), chunk):
            m = min(chunk, int(replicates) - a)
            s = simulate_design(
                m,
                key=jax.random.fold_in(key, c),
                tau=cell.tau,
                mu=mu,
                J=cell.J,
                sigma=sig[cell.sigma],
                start=a,
            )
            for name, (tp, mp) in priors.items():
                _bayes(accs, s, name, tp, mp, params, kinds, level)
            for method, test in freq:
                _frequentist(accs, s, rma, method, test, params, level)
            if oracle:
                _oracle(accs, s, level)
            if progress is not None:
                progress(m)
        for (method, interval, param), acc in accs.items():
            rows.append(
                dict(
                    tau=cell.tau,
                    J=cell.J,
                    sigma=cell.sigma,
                    method=method,
                    interval=interval,
                    parameter=param,
                    level=float(level),
                    **acc.row(),
                )
            )
    return rows


def _freq_method(spec: str):
    method, _, test = str(spec).partition("-")
    if not method or test not in ("z", "knha"):
        raise InputError(f"frequentist methods are 'METHOD-TEST' with TEST z or knha, got {spec!r}")
    return method.upper(), test


def _bayes(accs, s, name, tau_prior, mu_prior, params, kinds, level):
    post = hierjax.posterior(s.y, s.sigma, mask=s.mask, tau_prior=tau_prior, mu_prior=mu_prior)
    flagged = np.asarray(post.status) != 0
    truths = {"mu": s.mu, "tau": s.tau, "theta": s.theta, "theta_new": s.theta_new}
    for param in params:
        for kind in kinds:
            with warnings.catch_warnings():  # far-tail notices: counted in n_flagged
                warnings.simplefilter("ignore")
                lo, hi = hierjax.interval(post, param, level, kind=kind)
            cov, width = _score(
                np.asarray(lo, np.float64),
                np.asarray(hi, np.float64),
                truths[param],
                s.mask if param == "theta" else None,
            )
            accs.setdefault((f"bayes:{name}", kind, param), _Acc()).add(cov, width, flagged)


def _frequentist(accs, s, rma, method, test, params, level):
    res = rma(s.y, s.sigma, mask=s.mask, method=method, test=test, level=level)
    status = np.asarray(getattr(res, "status", np.zeros(s.y.shape[0])))
    flagged = status != 0 if status.dtype.kind in "iub" else np.zeros(s.y.shape[0], bool)
    label = f"{method}-{test}"
    fields = {
        "mu": ("mu_lo", "mu_hi", "wald" if test == "z" else "knha"),
        "tau": ("tau2_lo", "tau2_hi", "q-profile"),
        "theta_new": ("pi_lo", "pi_hi", "prediction"),
    }
    truths = {"mu": s.mu, "tau": s.tau, "theta_new": s.theta_new}
    for param in params:
        if param not in fields or not hasattr(res, fields[param][0]):
            continue
        f_lo, f_hi, interval = fields[param]
        lo, hi = (np.asarray(getattr(res, f), np.float64) for f in (f_lo, f_hi))
        if param == "tau":  # tau = sqrt(tau^2): the interval maps over
            lo, hi = np.sqrt(np.maximum(lo, 0.0)), np.sqrt(np.maximum(hi, 0.0))
        cov, width = _score(lo, hi, truths[param])
        accs.setdefault((label, interval, param), _Acc()).add(cov, width, flagged)


def _z(level):
    """``Phi^-1((1 + level) / 2)`` by bisection on ``erf`` (host, no scipy)."""
    import math

    lo, hi = 0.0, 40.0
    for _ in range(200):
        m = 0.5 * (lo + hi)
        lo, hi = (m, hi) if math.erf(m / math.sqrt(2.0)) < level else (lo, m)
    return 0.5 * (lo + hi)


def _oracle(accs, s, level):
    # P = sum_j 1 / (sigma_j^2 + tau^2),  mu_hat = sum_j y_j / v_j / P  (known tau)
    v = s.sigma**2 + s.tau[:, None] ** 2
    w = np.where(s.mask, 1.0 / v, 0.0)
    P = w.sum(axis=1)
    mu_hat = (w * s.y).sum(axis=1) / P
    half = _z(level) / np.sqrt(P)
    cov, width = _score(mu_hat - half, mu_hat + half, s.mu)
    accs.setdefault(("oracle-z", "known-tau", "mu"), _Acc()).add(
        cov, width, np.zeros(cov.size, bool)
    )


def to_pandas(rows):
    """The rows as a ``pandas.DataFrame`` (pandas imported here)."""
    import pandas as pd

    return pd.DataFrame(list(rows), columns=list(COLUMNS))


def plot_coverage(rows, parameter: str = "mu", *, ax=None, level: float | None = None):
    """Coverage of ``parameter`` against true tau, one line per (method, interval, J,
    sigma), with ±2 MCSE bars and the nominal level (needs matplotlib). Returns the axes."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plot_coverage needs matplotlib: pip install 'hierjax[plots]'") from None
    sel = [r for r in rows if r["parameter"] == parameter]
    if not sel:
        raise InputError(f"no rows for parameter {parameter!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    groups: dict = {}
    for r in sel:
        groups.setdefault((r["method"], r["interval"], r["J"], r["sigma"]), []).append(r)
    for (method, interval, J, sigma), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["tau"])
        ax.errorbar(
            [r["tau"] for r in rs],
            [r["coverage"] for r in rs],
            yerr=[2 * r["mcse"] for r in rs],
            marker="o",
            ms=3,
            capsize=2,
            label=f"{method} {interval}, J={J}, {sigma}",
        )
    nominal = level if level is not None else sel[0]["level"]
    ax.axhline(nominal, color="0.3", ls="--", lw=0.8)
    ax.set_xlabel("true tau")
    ax.set_ylabel(f"coverage of {parameter}")
    ax.legend(fontsize=6, loc="best")
    return ax
