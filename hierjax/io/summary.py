"""A meta-analyst's summary: one row per dataset (``hierjax fit --summary``).

Columns: ``dataset``, ``k`` (groups), ``mu_mean``, ``mu_sd``, ``mu_lo``, ``mu_hi`` (central
95%), ``p_mu_gt0``, ``tau_mean``, ``tau_median``, ``tau_mode``, ``i2_mean``, ``i2_median``
(Higgins and Thompson's ``I^2 = tau^2 / (tau^2 + s^2)``), the 95% prediction interval of a
new group's effect (``theta_new``) central (``pred_lo``, ``pred_hi``) and shortest
(``pred_hdi_lo``, ``pred_hdi_hi``), and with proper priors on both tau and mu the Bayes
factors ``bf_tau0 = p(y | tau = 0) / p(y)`` and ``bf_mu0 = p(y | mu = 0) / p(y)`` (nan
otherwise, as bayesmeta), then ``status`` and ``note``. Built from whole arrays with
:func:`hierjax.posterior`, :func:`hierjax.i2`, :func:`hierjax.interval` and
:func:`hierjax.evidence`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PREDICTION", "SUMMARY_COLUMNS", "format_summary", "summary_table"]

#: The one description of the prediction interval (``hierjax fit --help`` prints it, the
#: README pastes it): the tidy rows keep Fit's name ``theta_new``; the interval is named.
PREDICTION = (
    "The prediction interval is the interval of theta_new, the effect of a new group: in "
    "the tidy table, theta_new's central quantiles (q0.025 and q0.975 by default); in the "
    "summary, pred_lo and pred_hi (95%, central) and pred_hdi_lo and pred_hdi_hi (95%, "
    "shortest)."
)

SUMMARY_COLUMNS = (
    "dataset",
    "k",
    "mu_mean",
    "mu_sd",
    "mu_lo",
    "mu_hi",
    "p_mu_gt0",
    "tau_mean",
    "tau_median",
    "tau_mode",
    "i2_mean",
    "i2_median",
    "pred_lo",
    "pred_hi",
    "pred_hdi_lo",
    "pred_hdi_hi",
    "bf_tau0",
    "bf_mu0",
    "status",
    "note",
)


def _stand_ins(fit, y, sigma, mask, pad_to=None):
    """Invalid datasets replaced by three benign groups (their results are reported nan);
    then, given ``pad_to``, the first dataset repeated up to ``pad_to`` datasets (the
    caller keeps the first ``B`` results) so that every chunk runs the same kernels."""
    import hierjax

    invalid = (np.asarray(fit.status) & hierjax.STATUS["invalid"]) != 0
    m = np.where(invalid[:, None], np.arange(y.shape[1]) < 3, mask)
    y = np.where(m & ~invalid[:, None], y, np.where(m, np.arange(y.shape[1]) - 1.0, 0.0))
    s = np.where(m & ~invalid[:, None], sigma, 1.0)
    pad = max(0, (pad_to or 0) - y.shape[0])
    if pad:
        y, s, m = (np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) for a in (y, s, m))
    return invalid, y, s, m


def i2_of(
    fit,
    y,
    sigma,
    mask,
    levels,
    *,
    tau_prior="uniform",
    mu_prior="flat",
    nodes=None,
    dtype=None,
    pad_to=None,
):
    """``(mean [B], quantiles [B, Q])`` of the posterior of I^2 for the datasets of ``fit``
    (nan for invalid ones), from :func:`hierjax.posterior` and :func:`hierjax.i2`;
    ``pad_to`` as :func:`summary_table`'s."""
    import hierjax

    B = len(fit.names)
    invalid, y, s, m = _stand_ins(fit, y, sigma, mask, pad_to)
    post = hierjax.posterior(
        y, s, mask=m, tau_prior=tau_prior, mu_prior=mu_prior, nodes=nodes, dtype=dtype
    )
    out = hierjax.i2(post, tuple(levels) or (0.5,))
    mean = np.where(invalid, np.nan, out.mean[:B])
    q = np.where(invalid[:, None], np.nan, out.quantiles[:B])[:, : len(tuple(levels))]
    return mean, q


def summary_table(
    fit,
    y,
    sigma,
    mask,
    names,
    *,
    tau_prior="uniform",
    mu_prior="flat",
    nodes=None,
    dtype=None,
    level: float = 0.95,
    pad_to: int | None = None,
):
    """The per-dataset summary of ``fit`` (a :class:`hierjax.Fit` of ``y, sigma, mask``,
    ``[B, J]``), as a :class:`pyarrow.Table`; ``names`` a pyarrow string array ``[B]``.

    Invalid datasets (status ``invalid``) are computed on stand-ins and reported nan.
    ``pad_to``: run the kernels on this many datasets (the first repeated), as the
    stream's full chunks do, so that a last, smaller chunk compiles nothing new.
    """
    import pyarrow as pa

    import hierjax
    from hierjax.io.tidy import status_strings

    B = len(fit.names)
    invalid, y, s, m = _stand_ins(fit, y, sigma, mask, pad_to)
    kw = {"tau_prior": tau_prior, "mu_prior": mu_prior, "nodes": nodes, "dtype": dtype}
    post = hierjax.posterior(y, s, mask=m, **kw)
    i2 = hierjax.i2(post, (0.5,))
    lo, hi = hierjax.interval(post, "theta_new", level, kind="central")
    hlo, hhi = hierjax.interval(post, "theta_new", level, kind="shortest")
    mlo, mhi = hierjax.interval(post, "mu", level, kind="central")
    if np.all(np.isfinite(fit.log_marginal_likelihood[~invalid])) and (~invalid).any():
        ev = hierjax.evidence(
            y, s, mask=m, tau_prior=tau_prior, mu_prior=mu_prior, nodes=nodes, dtype=dtype
        )
        bf_tau0, bf_mu0 = np.exp(ev.log_bf_tau0), np.exp(ev.log_bf_mu0)
    else:
        bf_tau0 = bf_mu0 = np.full(B, np.nan)
    dt = np.asarray(fit.mu.mean).dtype

    def col(a):
        a = np.asarray(a, np.float64).reshape(-1)[:B]  # the padding's results dropped
        return pa.array(np.where(invalid, np.nan, a).astype(dt))

    med = list(np.asarray(fit.levels)).index(0.5) if 0.5 in list(np.asarray(fit.levels)) else None
    tau_median = (
        fit.tau.quantiles[:, med] if med is not None else hierjax.quantile(post, "tau", 0.5)
    )
    status = status_strings(np.asarray(fit.status, np.int64))
    return pa.table(
        {
            "dataset": names,
            "k": pa.array(np.asarray(fit.n_groups, np.int64)),
            "mu_mean": col(fit.mu.mean),
            "mu_sd": col(fit.mu.sd),
            "mu_lo": col(mlo),
            "mu_hi": col(mhi),
            "p_mu_gt0": col(fit.mu.p_gt0),
            "tau_mean": col(fit.tau.mean),
            "tau_median": col(tau_median),
            "tau_mode": col(fit.tau_mode),
            "i2_mean": col(i2.mean),
            "i2_median": col(i2.quantiles[:, 0]),
            "pred_lo": col(lo),
            "pred_hi": col(hi),
            "pred_hdi_lo": col(hlo),
            "pred_hdi_hi": col(hhi),
            "bf_tau0": col(bf_tau0),
            "bf_mu0": col(bf_mu0),
            "status": status,
            "note": pa.array([str(n or "") for n in fit.notes], pa.string()),
        }
    )


def format_summary(row: dict) -> str:
    """Lines a reader reads, for one dataset's summary row."""
    import math

    def g(x):
        return "nan" if x is None or math.isnan(x) else f"{x:.4g}"

    out = [
        (
            f"  mu {g(row['mu_mean'])} (sd {g(row['mu_sd'])}, 95% {g(row['mu_lo'])} to "
            f"{g(row['mu_hi'])}), P(mu > 0) {g(row['p_mu_gt0'])}"
        ),
        (
            f"  tau mean {g(row['tau_mean'])}, median {g(row['tau_median'])}, mode "
            f"{g(row['tau_mode'])}; I^2 mean {g(row['i2_mean'])}, median {g(row['i2_median'])}"
        ),
        (
            f"  95% prediction interval (a new group's effect, theta_new): {g(row['pred_lo'])} "
            f"to {g(row['pred_hi'])} central, {g(row['pred_hdi_lo'])} to "
            f"{g(row['pred_hdi_hi'])} shortest"
        ),
    ]
    if row["bf_tau0"] is not None and not math.isnan(row["bf_tau0"]):
        out.append(
            f"  Bayes factors: BF(tau = 0) {g(row['bf_tau0'])}, BF(mu = 0) {g(row['bf_mu0'])}"
        )
    if row["status"] != "ok":
        out.append(f"  status: {row['status']}" + (f" ({row['note']})" if row["note"] else ""))
    return "\n".join(out)
