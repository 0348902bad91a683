r"""Figures of a hierarchical-model analysis (matplotlib, the optional ``plots`` extra).

Each function takes computed results (a :class:`hierjax.Fit`,
:class:`hierjax.curves.TauCurves`, :class:`hierjax.curves.MuDensity`) or the data
and priors (then it computes them), draws one dataset of the batch (``dataset=b``)
and returns a :class:`matplotlib.figure.Figure`; with ``path`` it also saves it
(format from the suffix). Figures are built without ``pyplot`` (no global state,
headless-safe); display one in a notebook with ``display(fig)``.

* :func:`plot_impact`: ``E[theta_j | tau, y]`` and ``sd(theta_j | tau, y)`` against
  tau for every group, ``p(tau | y)`` beneath on the same axis (BDA3 figs 5.5-5.7).
* :func:`plot_shrinkage`: MLE ``y_j`` against the posterior mean with intervals;
  no, complete and partial pooling side by side with arrows for the shrinkage.
* :func:`plot_densities`: ``p(tau | y)`` and ``p(mu | y)`` with their priors.
* :func:`plot_forest`: studies with ``y_j +- z sigma_j``, shrunken estimates, the
  pooled-mean diamond and the prediction interval for a new group.

Artists carry ``gid`` labels (``"theta_mean:A"``, ``"tau_density"``, ...) so that
their data can be read back (the tests do).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

__all__ = [
    "plot_impact",
    "plot_shrinkage",
    "plot_densities",
    "plot_forest",
    "plot_all",
    "KINDS",
    "file_stem",
    "require_matplotlib",
]

#: Figure kinds of :func:`plot_all` and ``hierjax plot --kind``.
KINDS = ("impact", "shrinkage", "densities", "forest")

_BLUE, _ORANGE, _GREY, _RED = "#1f77b4", "#ff7f0e", "#555555", "#d62728"


def require_matplotlib():
    """Import matplotlib's ``Figure`` or raise ImportError with the install hint."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "hierjax plotting needs matplotlib: pip install 'hierjax[plots]'"
        ) from None
    return Figure


def _figure(**kwargs):
    Figure = require_matplotlib()
    return Figure(layout="constrained", **kwargs)


def _save(fig, path):
    if path is not None:
        fig.savefig(os.fspath(path), dpi=fig.dpi)
    return fig


def _labels(labels, groups, J):
    if labels is not None:
        out = [str(v) for v in labels]
    elif groups is not None:
        out = [str(v) for v in groups]
    else:
        out = [str(j + 1) for j in range(J)]
    if len(out) < J:
        raise ValueError(f"{len(out)} labels for {J} groups")
    return out[:J]


def _unit(units):
    return f" ({units})" if units else ""


def _z(level: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + 0.5 * level)


def _row(y, sigma, dataset):
    """``(y_j, sigma_j)`` of the real groups of one dataset (float64)."""
    from hierjax.engine.batch import as_batch

    batch = as_batch(y, sigma)
    m = batch.mask[dataset]
    return batch.y[dataset][m], batch.sigma[dataset][m]


def _levels_for(level: float):
    from hierjax.status import DEFAULT_LEVELS

    lo, hi = 0.5 - 0.5 * level, 0.5 + 0.5 * level
    extra = [p for p in (lo, hi) if not any(math.isclose(p, q) for q in DEFAULT_LEVELS)]
    return tuple(sorted(DEFAULT_LEVELS + tuple(extra)))


def _level_index(levels, p, what="fit"):
    idx = [
        i for i, q in enumerate(np.asarray(levels, np.float64)) if math.isclose(q, p, abs_tol=1e-12)
    ]
    if not idx:
        raise ValueError(
            f"the {what} has no {p:g} quantile (levels {list(levels)}); "
            f"fit with quantiles that include it"
        )
    return idx[0]


def _fit_for(y, sigma, fit, tau_prior, mu_prior, level):
    if fit is not None:
        return fit
    from hierjax.engine.fitting import fit as run_fit

    return run_fit(y, sigma, tau_prior=tau_prior, mu_prior=mu_prior, quantiles=_levels_for(level))


def _theta(f, b, J):
    """Posterior means ``[J]`` and quantiles ``[J, Q]`` of dataset ``b``'s real groups."""
    m = np.asarray(f.mask[b], bool)
    if int(m.sum()) != J:
        raise ValueError(f"the fit's dataset {b} has {int(m.sum())} groups, the data {J}")
    return (
        np.asarray(f.theta.mean[b], np.float64)[m],
        np.asarray(f.theta.quantiles[b], np.float64)[m],
    )


def _spread(values, gap):
    """Label positions near ``values`` at least ``gap`` apart (order kept)."""
    order = np.argsort(values)
    pos = np.asarray(values, np.float64)[order].copy()
    for i in range(1, pos.size):
        pos[i] = max(pos[i], pos[i - 1] + gap)
    shift = np.mean(np.asarray(values)[order] - pos)  # recentre on the values
    pos += shift
    out = np.empty_like(pos)
    out[order] = pos
    return out


# --------------------------------------------------------------------------- impact of tau
def plot_impact(
    y=None,
    sigma=None,
    *,
    curves=None,
    dataset: int = 0,
    tau_prior="uniform",
    mu_prior="flat",
    labels: Sequence[str] | None = None,
    units: str | None = None,
    title: str | None = None,
    path=None,
):
    r"""The impact of tau: conditional means and sds of every ``theta_j`` against tau, and
    ``p(tau | y)`` beneath on the same axis (BDA3 figs 5.5, 5.6, 5.7).

    .. math::
        E[\theta_j \mid \tau, y] = (1 - B_j) y_j + B_j \hat\mu(\tau),\qquad
        B_j = \sigma_j^2 / (\sigma_j^2 + \tau^2)

    Args:
        y, sigma: the data (ignored when ``curves`` is given).
        curves: precomputed :func:`hierjax.curves.tau_curves` (any batch).
        dataset: which dataset of the batch to draw.
        tau_prior, mu_prior: priors when the curves are computed here.
        labels: group labels (default: the curves' group labels, else 1..J).
        units: the data's unit for axis labels (e.g. ``"points"``).
        title: figure title.
        path: save the figure here as well.

    Returns:
        matplotlib Figure with three axes sharing the tau axis; gids ``theta_mean:<label>``,
        ``mu_mean``, ``theta_sd:<label>``, ``tau_density``.
    """
    require_matplotlib()
    if curves is None:
        from hierjax.curves import tau_curves

        curves = tau_curves(y, sigma, tau_prior=tau_prior, mu_prior=mu_prior)
    b = dataset
    J = int(curves.n_groups[b])
    m = curves.mask[b]
    tau = np.asarray(curves.tau[b], np.float64)
    mean = np.asarray(curves.theta_mean[b], np.float64)[:, m]
    sd = np.asarray(curves.theta_sd[b], np.float64)[:, m]
    names = _labels(labels, curves.groups[b], J)
    u = _unit(units)

    fig = _figure(figsize=(7.0, 8.4))
    ax_m, ax_s, ax_d = fig.subplots(3, 1, sharex=True, height_ratios=[3.0, 2.0, 1.4])
    colors = [f"C{j % 10}" for j in range(J)]
    for j in range(J):
        ax_m.plot(tau, mean[:, j], color=colors[j], lw=1.6, gid=f"theta_mean:{names[j]}")
        ax_s.plot(tau, sd[:, j], color=colors[j], lw=1.6, gid=f"theta_sd:{names[j]}")
    ax_m.plot(
        tau,
        np.asarray(curves.mu_mean[b], np.float64),
        color="k",
        lw=1.2,
        ls="--",
        gid="mu_mean",
        label=r"$E[\mu \mid \tau, y]$",
    )
    ax_m.legend(loc="upper left", frameon=False, fontsize=9)
    if J <= 20:  # label each line just right of its end, nudged apart where they crowd
        x_lab = tau[-1] + 0.012 * (tau[-1] - tau[0])
        for ax, vals in ((ax_m, mean[-1]), (ax_s, sd[-1])):
            lo, hi = ax.get_ylim()
            pos = _spread(vals, 0.06 * (hi - lo))
            for j in range(J):
                ax.text(
                    x_lab,
                    pos[j],
                    names[j],
                    va="center",
                    ha="left",
                    fontsize=9,
                    color=colors[j],
                    clip_on=False,
                )
    ax_m.set_ylabel(r"$E[\theta_j \mid \tau, y]$" + u)
    ax_m.set_title("Conditional posterior means of the group effects", fontsize=11)
    ax_s.set_ylabel(r"$\mathrm{sd}(\theta_j \mid \tau, y)$" + u)
    ax_s.set_title("Conditional posterior standard deviations", fontsize=11)
    dens = np.asarray(curves.density[b], np.float64)
    ax_d.fill_between(tau, dens, color=_BLUE, alpha=0.2, lw=0)
    ax_d.plot(tau, dens, color=_BLUE, lw=1.6, gid="tau_density")
    ax_d.set_ylim(bottom=0)
    ax_d.set_ylabel(r"$p(\tau \mid y)$")
    ax_d.set_title("Marginal posterior density of " + r"$\tau$", fontsize=11)
    ax_d.set_xlabel(
        r"$\tau$ (population sd of the group effects" + (f", {units})" if units else ")")
    )
    ax_d.set_xlim(tau[0], tau[-1])
    for ax in (ax_m, ax_s, ax_d):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# --------------------------------------------------------------------------- shrinkage
def plot_shrinkage(
    y,
    sigma,
    *,
    fit=None,
    dataset: int = 0,
    tau_prior="uniform",
    mu_prior="flat",
    labels: Sequence[str] | None = None,
    level: float = 0.95,
    units: str | None = None,
    title: str | None = None,
    path=None,
):
    r"""MLE against posterior mean, and no / complete / partial pooling side by side.

    Left: each group's ``y_j`` (MLE, no pooling) against ``E[theta_j | y]`` with its
    central ``level`` posterior interval; the diagonal is no pooling, the horizontal
    line ``E[mu | y]`` complete pooling. Right: per group, the three estimates with
    their intervals (``y_j +- z sigma_j``; the Fisher-weighted mean ``+- z sd``; the
    posterior quantiles), arrows from ``y_j`` to ``E[theta_j | y]``.

    Args:
        y, sigma: the data (``[J]`` or a batch).
        fit: a :func:`hierjax.fit` of the same data with quantiles ``(1 -+ level)/2``
            (computed here when None).
        dataset, tau_prior, mu_prior, labels, units, title, path: as :func:`plot_impact`.
        level: interval level.

    Returns:
        Figure; gids ``mle``, ``posterior_mean``, ``posterior_interval``, ``no_pooling``,
        ``no_pooling_interval``, ``partial_pooling``, ``partial_pooling_interval``,
        ``complete_pooling``, ``complete_pooling_interval``, ``shrinkage_arrow:<label>``.
    """
    require_matplotlib()
    from hierjax.pooling import complete_pooling

    yv, sv = _row(y, sigma, dataset)
    f = _fit_for(y, sigma, fit, tau_prior, mu_prior, level)
    b = dataset
    J = yv.size
    names = _labels(labels, f.groups[b], J)
    lo_i = _level_index(f.levels, 0.5 - 0.5 * level)
    hi_i = _level_index(f.levels, 0.5 + 0.5 * level)
    post, q = _theta(f, b, J)
    post_lo, post_hi = q[:, lo_i], q[:, hi_i]
    mu_mean = (
        float(f.mu.mean[b])
        if bool(f.mu.mean_exists[b])
        else float(f.mu.quantiles[b, _level_index(f.levels, 0.5)])
    )
    pooled = complete_pooling(yv, sv)
    cp_mean, cp_sd = float(pooled.mean[0]), float(pooled.sd[0])
    z = _z(level)
    u = _unit(units)
    pct = f"{100 * level:g}%"

    fig = _figure(figsize=(12.0, 5.6))
    ax_l, ax_r = fig.subplots(1, 2, width_ratios=[1.0, 1.15])
    # left: MLE vs posterior mean
    ax_l.vlines(
        yv,
        post_lo,
        post_hi,
        color=_BLUE,
        alpha=0.5,
        lw=1.5,
        gid="posterior_interval",
        label=f"{pct} posterior interval",
    )
    ax_l.plot(
        yv,
        post,
        "o",
        color=_BLUE,
        ms=6,
        gid="posterior_mean",
        label=r"posterior mean $E[\theta_j \mid y]$",
    )
    lim = [min(yv.min(), post_lo.min()), max(yv.max(), post_hi.max())]
    pad = 0.05 * (lim[1] - lim[0])
    lim = [lim[0] - pad, lim[1] + pad]
    ax_l.plot(
        lim, lim, color=_GREY, ls=":", lw=1.2, gid="mle", label=r"no pooling: $\theta_j = y_j$"
    )
    ax_l.axhline(
        mu_mean,
        color=_ORANGE,
        ls="--",
        lw=1.2,
        label=r"population mean $E[\mu \mid y]$ = " + f"{mu_mean:.3g}",
    )
    # labels right of the points; a point crowded by its left neighbour takes the left side
    order = np.argsort(yv)
    near = 0.04 * (lim[1] - lim[0])
    left = np.zeros(J, bool)
    for a, c in zip(order[:-1], order[1:]):
        if not left[a] and abs(yv[c] - yv[a]) < near and abs(post[c] - post[a]) < near:
            left[a] = True
    for j in range(J):
        ax_l.annotate(
            names[j],
            (yv[j], post[j]),
            xytext=(-6 if left[j] else 6, 4),
            textcoords="offset points",
            ha="right" if left[j] else "left",
            fontsize=9,
        )
    ax_l.set_xlim(lim)
    ax_l.set_ylim(lim)
    ax_l.set_aspect("equal", adjustable="box")
    ax_l.set_xlabel(r"MLE $y_j$" + u)
    ax_l.set_ylabel(r"posterior of $\theta_j$" + u)
    ax_l.set_title("MLE vs posterior mean", fontsize=11)
    ax_l.legend(loc="upper left", fontsize=8.5, frameon=False)
    ax_l.grid(alpha=0.3)

    # right: three estimates per group, arrows from y_j to the posterior mean
    rows = np.arange(J)[::-1].astype(np.float64)
    d = 0.22
    ax_r.hlines(rows + d, yv - z * sv, yv + z * sv, color=_GREY, lw=1.4, gid="no_pooling_interval")
    ax_r.plot(
        yv,
        rows + d,
        "s",
        color=_GREY,
        ms=5,
        gid="no_pooling",
        label=rf"no pooling: $y_j \pm {z:.2f}\,\sigma_j$",
    )
    ax_r.hlines(rows, post_lo, post_hi, color=_BLUE, lw=2.0, gid="partial_pooling_interval")
    ax_r.plot(
        post,
        rows,
        "o",
        color=_BLUE,
        ms=5.5,
        gid="partial_pooling",
        label=f"partial pooling: posterior mean, {pct} interval",
    )
    ax_r.hlines(
        rows - d,
        np.full(J, cp_mean - z * cp_sd),
        np.full(J, cp_mean + z * cp_sd),
        color=_ORANGE,
        lw=1.4,
        gid="complete_pooling_interval",
    )
    ax_r.plot(
        np.full(J, cp_mean),
        rows - d,
        "D",
        color=_ORANGE,
        ms=4.5,
        gid="complete_pooling",
        label=f"complete pooling: weighted mean $\\pm$ {z:.2f} sd",
    )
    span = max(float(np.max(yv + z * sv) - np.min(yv - z * sv)), 1e-300)
    for j in range(J):
        if abs(post[j] - yv[j]) < 0.015 * span:  # no visible shrinkage: an arrow would be a blot
            continue
        ax_r.annotate(
            "",
            xy=(post[j], rows[j]),
            xytext=(yv[j], rows[j] + d),
            arrowprops=dict(arrowstyle="->", color="k", lw=1.0, shrinkA=3, shrinkB=4),
            gid=f"shrinkage_arrow:{names[j]}",
        )
    ax_r.axvline(mu_mean, color=_GREY, ls="--", lw=1.0, label=r"$E[\mu \mid y]$")
    ax_r.set_yticks(rows, names)
    ax_r.set_ylim(-0.8, J - 0.2 + 1.2)  # headroom for the legend
    ax_r.set_xlabel(r"$\theta_j$" + u)
    ax_r.set_title("No, partial and complete pooling", fontsize=11)
    ax_r.legend(loc="upper center", fontsize=8.5, frameon=True, framealpha=0.95, edgecolor="none")
    ax_r.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# --------------------------------------------------------------------------- densities
def plot_densities(
    y=None,
    sigma=None,
    *,
    curves=None,
    mu_marginal=None,
    dataset: int = 0,
    tau_prior="uniform",
    mu_prior="flat",
    units: str | None = None,
    title: str | None = None,
    path=None,
):
    r"""``p(tau | y)`` and ``p(mu | y)`` with the priors overlaid.

    A proper prior is drawn as its density; an improper one (uniform tau, flat mu) as
    its constant shape, scaled to half the posterior's peak and labelled "not to scale".

    Args:
        y, sigma: the data (needed unless both results are given).
        curves: :func:`hierjax.curves.tau_curves` result (computed when None).
        mu_marginal: :func:`hierjax.curves.mu_density` result (computed when None).
        dataset, tau_prior, mu_prior, units, title, path: as :func:`plot_impact`.

    Returns:
        Figure; gids ``tau_density``, ``tau_prior``, ``mu_density``, ``mu_prior``.
    """
    require_matplotlib()
    from hierjax.curves import mu_density, tau_curves

    if curves is None:
        curves = tau_curves(y, sigma, tau_prior=tau_prior, mu_prior=mu_prior)
    if mu_marginal is None:
        mu_marginal = mu_density(y, sigma, tau_prior=tau_prior, mu_prior=mu_prior)
    b = dataset
    fig = _figure(figsize=(11.0, 4.2))
    ax_t, ax_m = fig.subplots(1, 2)
    u = _unit(units)
    for ax, x, dens, prior, proper, sym, gid in (
        (
            ax_t,
            curves.tau[b],
            curves.density[b],
            curves.prior[b],
            curves.prior_proper,
            r"\tau",
            "tau",
        ),
        (
            ax_m,
            mu_marginal.mu[b],
            mu_marginal.density[b],
            mu_marginal.prior[b],
            mu_marginal.prior_proper,
            r"\mu",
            "mu",
        ),
    ):
        x = np.asarray(x, np.float64)
        dens = np.asarray(dens, np.float64)
        prior = np.asarray(prior, np.float64)
        ax.fill_between(x, dens, color=_BLUE, alpha=0.2, lw=0)
        ax.plot(
            x,
            dens,
            color=_BLUE,
            lw=1.8,
            gid=f"{gid}_density",
            label=f"posterior $p({sym} \\mid y)$",
        )
        if proper:
            ax.plot(
                x,
                prior,
                color=_ORANGE,
                lw=1.5,
                ls="--",
                gid=f"{gid}_prior",
                label=f"prior $p({sym})$",
            )
        else:
            shape = prior / np.max(prior) * 0.5 * np.max(dens)
            ax.plot(
                x,
                shape,
                color=_ORANGE,
                lw=1.5,
                ls="--",
                gid=f"{gid}_prior",
                label=f"prior $p({sym}) \\propto 1$ (improper, not to scale)",
            )
        ax.set_xlim(x[0], x[-1])
        ax.set_ylim(0, 1.25 * max(np.max(dens), np.max(prior) if proper else 0.0))
        ax.set_xlabel(f"${sym}$" + u)
        ax.set_ylabel("density" + (f" (per {units})" if units else ""))
        ax.legend(loc="upper right", fontsize=9, frameon=False)
        ax.grid(alpha=0.3)
    ax_t.set_title(r"Population sd $\tau$", fontsize=11)
    ax_m.set_title(r"Population mean $\mu$", fontsize=11)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# --------------------------------------------------------------------------- forest
def plot_forest(
    y,
    sigma,
    *,
    fit=None,
    dataset: int = 0,
    tau_prior="uniform",
    mu_prior="flat",
    labels: Sequence[str] | None = None,
    level: float = 0.95,
    units: str | None = None,
    title: str | None = None,
    path=None,
    weights=None,
    transform: str | None = None,
):
    r"""A forest plot as meta-analysts draw it.

    One row per study: ``y_j +- z sigma_j`` (squares sized by the Fisher weight
    ``1/sigma_j^2``) and, beneath, the shrunken estimate ``E[theta_j | y]`` with its
    central ``level`` posterior interval; then the pooled mean ``mu`` as a diamond
    (posterior mean, or median where the mean does not exist, and interval) and the
    prediction interval for the effect of a new study ``theta_new``. Numbers on the right,
    with each study's weight in the posterior mean of ``mu``: bayesmeta's weights
    ``E[W_i(tau) | y]``, ``W_i = (1 / (sigma_i^2 + tau^2)) / P`` (:func:`hierjax.weights`).

    Args: as :func:`plot_shrinkage`, and
        weights: the studies' weights ``[J]``; None (default) computes them for the given
            priors (:func:`hierjax.posterior`, :func:`hierjax.weights`); False leaves the
            column out.
        transform: None, or ``"exp"`` for ratio measures (log odds, log risk ratios): every
            position and number is drawn as ``exp(.)`` on a log axis with the line of no
            effect at 1, and the points are posterior medians (the median of ``exp(theta)``
            is ``exp`` of theta's; its mean is not).

    Returns:
        Figure; gids ``study``, ``study_interval``, ``shrunken``, ``shrunken_interval``,
        ``pooled_diamond``, ``prediction_interval``; the weight column's texts ``weight``.
    """
    require_matplotlib()
    from matplotlib.patches import Polygon

    yv, sv = _row(y, sigma, dataset)
    f = _fit_for(y, sigma, fit, tau_prior, mu_prior, level)
    b = dataset
    J = yv.size
    names = _labels(labels, f.groups[b], J)
    lo_i = _level_index(f.levels, 0.5 - 0.5 * level)
    hi_i = _level_index(f.levels, 0.5 + 0.5 * level)
    med_i = _level_index(f.levels, 0.5)
    post, q = _theta(f, b, J)
    mq = np.asarray(f.mu.quantiles[b], np.float64)
    nq = np.asarray(f.theta_new.quantiles[b], np.float64)
    mu_c = float(f.mu.mean[b]) if bool(f.mu.mean_exists[b]) else mq[med_i]
    new_c = float(f.theta_new.mean[b]) if bool(f.theta_new.mean_exists[b]) else nq[med_i]
    z = _z(level)
    pct = f"{100 * level:g}%"
    if transform not in (None, "exp"):
        raise ValueError(f"transform must be None or 'exp', got {transform!r}")
    g = np.exp if transform == "exp" else (lambda a: np.asarray(a, np.float64))
    if transform == "exp":  # medians: exp maps quantiles, not means
        post, mu_c, new_c = q[:, med_i], mq[med_i], nq[med_i]
    if weights is None:
        from hierjax.posterior import posterior
        from hierjax.posterior import weights as study_weights

        weights = study_weights(posterior(yv, sv, tau_prior=tau_prior, mu_prior=mu_prior)).mu[0]
    show_w = weights is not False
    if show_w:
        weights = np.asarray(weights, np.float64).reshape(-1)
        if weights.shape != (J,):
            raise ValueError(f"weights must have one value per study ({J}), got {weights.shape}")
    yc, ylo, yhi = g(yv), g(yv - z * sv), g(yv + z * sv)
    post, q, mq, nq, mu_c, new_c = (g(a) for a in (post, q, mq, nq, mu_c, new_c))

    height = 1.6 + 0.42 * (J + 3)
    fig = _figure(figsize=(11.0 if show_w else 10.0, height))
    ax, tab = fig.subplots(1, 2, sharey=True, width_ratios=[1.8, 1.3 if show_w else 1.0])
    rows = np.arange(J, dtype=np.float64)[::-1] + 3.0  # studies on top, summaries below
    d = 0.18
    w = 1.0 / sv**2
    size = 4.0 + 8.0 * np.sqrt(w / w.max())
    ax.hlines(rows + d, ylo, yhi, color="k", lw=1.2, gid="study_interval")
    ax.scatter(
        yc,
        rows + d,
        s=size**2,
        marker="s",
        color="k",
        zorder=3,
        gid="study",
        label=(
            rf"study: $\exp(y_j \pm {z:.2f}\,\sigma_j)$"
            if transform
            else rf"study: $y_j \pm {z:.2f}\,\sigma_j$"
        )
        + r" (size $\propto 1/\sigma_j^2$)",
    )
    ax.hlines(rows - d, q[:, lo_i], q[:, hi_i], color=_BLUE, lw=1.6, gid="shrunken_interval")
    centre = "median" if transform else r"$E[\theta_j \mid y]$"
    ax.plot(
        post,
        rows - d,
        "o",
        color=_BLUE,
        ms=5,
        zorder=3,
        gid="shrunken",
        label=rf"shrunken: {centre}, {pct} interval",
    )
    r_mu, r_new = 1.5, 0.5
    diamond = Polygon(
        [(mq[lo_i], r_mu), (mu_c, r_mu + 0.3), (mq[hi_i], r_mu), (mu_c, r_mu - 0.3)],
        closed=True,
        color=_RED,
        gid="pooled_diamond",
        label=rf"pooled mean $\mu$, {pct} interval",
    )
    ax.add_patch(diamond)
    ax.hlines(
        [r_new],
        [nq[lo_i]],
        [nq[hi_i]],
        color=_RED,
        lw=2.2,
        gid="prediction_interval",
        label=rf"prediction: new study $\theta_{{new}}$, {pct} interval",
    )
    ax.plot([new_c], [r_new], "|", color=_RED, ms=12, mew=2.2)
    ax.axvline(float(g(0.0)), color=_GREY, lw=0.8)
    if transform == "exp":
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(mu_c, color=_RED, lw=0.8, ls=":")
    for a in (ax, tab):
        a.axhline(2.3, color=_GREY, lw=0.6)
    ax.set_yticks(
        list(rows) + [r_mu, r_new], names + [r"pooled mean $\mu$", r"new study $\theta_{new}$"]
    )
    ax.set_ylim(0.0, J + 3.6)
    ax.set_xlabel(("ratio, exp(effect)" if transform == "exp" else "effect") + _unit(units))
    ax.grid(axis="x", alpha=0.3)
    fig.legend(
        handles=ax.get_legend_handles_labels()[0],
        loc="outside lower center",
        ncols=2,
        fontsize=8.5,
        frameon=False,
    )

    # the numbers, in a table beside the plot
    digits = 2 if transform else 1

    def fmt(c, lo, hi):
        return f"{c:5.{digits}f} [{lo:5.{digits}f}, {hi:5.{digits}f}]"

    tab.set_xlim(0.0, 1.0)
    tab.axis("off")
    top = J + 3.0
    x_y = 0.40 if show_w else 0.46
    head = f"exp(y ± {z:.2f}σ)" if transform else f"y ± {z:.2f}σ"
    tab.text(x_y, top, head, fontsize=9, weight="bold", va="center", ha="right")
    tab.text(1.0, top, f"posterior ({pct})", fontsize=9, weight="bold", va="center", ha="right")
    if show_w:
        tab.text(0.54, top, "weight", fontsize=9, weight="bold", va="center", ha="right")
    for j in range(J):
        tab.text(
            x_y,
            rows[j],
            fmt(yc[j], ylo[j], yhi[j]),
            fontsize=8.5,
            va="center",
            ha="right",
            family="monospace",
        )
        if show_w:
            tab.text(
                0.54,
                rows[j],
                f"{100 * weights[j]:4.1f}%",
                fontsize=8.5,
                va="center",
                ha="right",
                family="monospace",
                gid="weight",
            )
        tab.text(
            1.0,
            rows[j],
            fmt(post[j], q[j, lo_i], q[j, hi_i]),
            fontsize=8.5,
            va="center",
            ha="right",
            family="monospace",
            color=_BLUE,
        )
    tab.text(
        1.0,
        r_mu,
        fmt(mu_c, mq[lo_i], mq[hi_i]),
        fontsize=8.5,
        va="center",
        ha="right",
        family="monospace",
        color=_RED,
    )
    tab.text(
        1.0,
        r_new,
        fmt(new_c, nq[lo_i], nq[hi_i]),
        fontsize=8.5,
        va="center",
        ha="right",
        family="monospace",
        color=_RED,
    )
    ax.set_title("Forest plot" + (f": {title}" if title else ""), fontsize=11)
    return _save(fig, path)


# --------------------------------------------------------------------------- all at once
def plot_all(
    y,
    sigma,
    out_dir,
    *,
    kinds: Sequence[str] = KINDS,
    dataset: int = 0,
    tau_prior="uniform",
    mu_prior="flat",
    labels=None,
    units=None,
    prefix: str = "",
    fmt: str = "png",
    fit=None,
    curves=None,
    mu_marginal=None,
    transform: str | None = None,
) -> dict:
    """Write the figures of one dataset to ``out_dir/<prefix><kind>.<fmt>``.

    ``transform``: the forest plot's (``"exp"`` for ratio measures, :func:`plot_forest`).
    Use :func:`file_stem` to make a ``prefix`` from a dataset's name.

    Returns:
        ``{kind: path}`` of the files written.
    """
    require_matplotlib()
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown figure kind(s) {bad}; expected some of {list(KINDS)}")
    os.makedirs(out_dir, exist_ok=True)
    pri = dict(tau_prior=tau_prior, mu_prior=mu_prior)
    if fit is None and ({"shrinkage", "forest"} & set(kinds)):
        fit = _fit_for(y, sigma, None, tau_prior, mu_prior, 0.95)
    if curves is None and ({"impact", "densities"} & set(kinds)):
        from hierjax.curves import tau_curves

        curves = tau_curves(y, sigma, **pri)
    out = {}
    for kind in kinds:
        path = os.path.join(out_dir, f"{prefix}{kind}.{fmt}")
        if kind == "impact":
            fig = plot_impact(curves=curves, dataset=dataset, labels=labels, units=units, path=path)
        elif kind == "shrinkage":
            fig = plot_shrinkage(
                y, sigma, fit=fit, dataset=dataset, labels=labels, units=units, path=path
            )
        elif kind == "densities":
            fig = plot_densities(
                y,
                sigma,
                curves=curves,
                mu_marginal=mu_marginal,
                dataset=dataset,
                units=units,
                path=path,
                **pri,
            )
        else:
            fig = plot_forest(
                y,
                sigma,
                fit=fit,
                dataset=dataset,
                labels=labels,
                units=units,
                path=path,
                transform=transform,
                **pri,
            )
        del fig
        out[kind] = path
    return out


# --------------------------------------------------------------------------- file names
#: The longest file stem :func:`file_stem` returns (a hash suffix included).
STEM_MAX = 64


def file_stem(name, index: int = 0, max_len: int = STEM_MAX) -> str:
    """A file-name stem for a dataset's figures: distinct names give distinct stems.

    Characters outside ``[A-Za-z0-9_.-]`` become ``_``, a leading ``.`` or ``-`` too (no
    hidden files or options). Where that changed the name, or it is longer than
    ``max_len``, a short hash of the full name is appended (``a b`` -> ``a_b-<hash>``,
    ``a_b`` stays ``a_b``), and a long name is cut to fit. An empty name gives
    ``dataset<index>``.
    """
    import hashlib
    import re

    name = str(name)
    if not name:
        return f"dataset{index}"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    safe = re.sub(r"^[.-]", "_", safe)
    if safe == name and len(safe) <= max_len:
        return safe
    tag = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe[: max_len - len(tag) - 1]}-{tag}"
