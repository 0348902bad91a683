"""The peers hierjax is measured against, on the same datasets, each with its accuracy.

* ``naive_grid``: what a user writes by hand in NumPy: a uniform tau grid of ``K = 200``
  points on ``[0, 5 max(sigma)]``, the trapezoid rule, closed-form conditionals,
  vectorised over datasets; quantiles by interpolating the mixture CDF on a uniform
  grid of ``X = 400`` points. Accuracy against the reference: poor where ``p(tau | y)``
  has a heavy tail (the grid truncates it) -- that is the point.
* ``quad``: the scipy ``quad`` reference itself (tests/reference.py), timed per dataset.
  Its accuracy is its own error estimate, which the reference checks is below 1e-10
  (relative) on every integral.
* ``nuts``: NumPyro NUTS through ``hierjax.validation.nuts.run_nuts`` (imported lazily; a row marked
  unavailable when the module is absent). Accuracy: its Monte-Carlo error against the
  reference.
* ``bayesmeta``: a quoted figure (R, cannot run here), marked as such.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["bayesmeta_row", "draws_summary", "naive_grid", "naive_row", "nuts_row", "quad_rows"]

BAYESMETA = {
    "kind": "bayesmeta",
    "mode": "full",
    "dtype": "float64",
    "B": 1000,
    "J": 8,
    "datasets_per_s": 1.37,
    "quoted": True,
    "status": "ok",
    "acc_rel": 1e-3,
    "note": "quoted, not measured here: 2 processes, 1000 eight-school-sized datasets, "
    "uniform prior, ~1e-3 relative error on mu and theta",
}


def _ndtr(x):
    from scipy import special

    return special.ndtr(x)


def _mixture_quantiles(w, m, s, levels, X):
    """Quantiles of ``sum_k w_k N(m_k, s_k^2)`` by a CDF table on ``X`` points.

    ``w, m, s``: ``[n, K]`` (or broadcastable); returns ``[n, Q]``.
    """
    lo = np.min(m - 6 * s, axis=-1, keepdims=True)
    hi = np.max(m + 6 * s, axis=-1, keepdims=True)
    xs = lo + (hi - lo) * np.linspace(0.0, 1.0, X)  # [n, X]
    F = np.sum(w[:, None, :] * _ndtr((xs[:, :, None] - m[:, None, :]) / s[:, None, :]), -1)
    return np.stack(
        [np.array([np.interp(p, F[i], xs[i]) for i in range(len(F))]) for p in levels], axis=-1
    )


def naive_grid(y, sigma, levels=(), K=200, X=400):
    """The hand-written NumPy grid (see the module doc) for ``y, sigma`` ``[n, J]``.

    Returns ``{name: dict(mean, sd, q, p_gt0)}`` with theta fields ``[n, J(, Q)]``.
    """
    y = np.asarray(y, np.float64)
    s2 = np.asarray(sigma, np.float64) ** 2
    n, J = y.shape
    tau = np.linspace(0.0, 1.0, K)[None, :] * (5.0 * np.sqrt(s2.max(axis=1)))[:, None]  # [n,K]
    t2 = tau**2
    v = s2[:, None, :] + t2[:, :, None]  # [n, K, J]
    prec = 1.0 / v
    P = prec.sum(-1)
    mh = (prec * y[:, None, :]).sum(-1) / P
    Vmu = 1.0 / P
    r = y[:, None, :] - mh[:, :, None]
    ll = -0.5 * (np.log(v).sum(-1) + np.log(P) + (r * r * prec).sum(-1))  # [n, K]
    dens = np.exp(ll - ll.max(axis=1, keepdims=True))
    dt = tau[:, 1:2] - tau[:, 0:1]
    trap = np.ones(K)
    trap[[0, -1]] = 0.5
    w = dens * trap * dt
    w /= w.sum(axis=1, keepdims=True)

    def mix(m, var):
        mean = np.sum(w * m, axis=-1)
        sd = np.sqrt(np.maximum(np.sum(w * (var + m * m), axis=-1) - mean**2, 0.0))
        pgt = np.sum(w * _ndtr(m / np.sqrt(var)), axis=-1)
        return mean, sd, pgt

    out = {}
    m_mu, sd_mu, p_mu = mix(mh, Vmu)
    m_new, sd_new, p_new = mix(mh, t2 + Vmu)
    Bj = s2[:, None, :] / v  # [n, K, J]
    tm = (1.0 - Bj) * y[:, None, :] + Bj * mh[:, :, None]
    tv = (1.0 - Bj) * s2[:, None, :] + Bj * Bj * Vmu[:, :, None]
    wt = w[:, :, None]
    th_mean = np.sum(wt * tm, axis=1)
    th_sd = np.sqrt(np.maximum(np.sum(wt * (tv + tm * tm), axis=1) - th_mean**2, 0.0))
    th_p = np.sum(wt * _ndtr(tm / np.sqrt(tv)), axis=1)
    tau_mean = np.sum(w * tau, axis=1)
    tau_sd = np.sqrt(np.maximum(np.sum(w * t2, axis=1) - tau_mean**2, 0.0))
    out["mu"] = {"mean": m_mu, "sd": sd_mu, "p_gt0": p_mu, "q": None}
    out["theta_new"] = {"mean": m_new, "sd": sd_new, "p_gt0": p_new, "q": None}
    out["theta"] = {"mean": th_mean, "sd": th_sd, "p_gt0": th_p, "q": None}
    out["tau"] = {"mean": tau_mean, "sd": tau_sd, "p_gt0": np.ones(n), "q": None}
    if len(levels):
        out["mu"]["q"] = _mixture_quantiles(w, mh, np.sqrt(Vmu), levels, X)
        out["theta_new"]["q"] = _mixture_quantiles(w, mh, np.sqrt(t2 + Vmu), levels, X)
        out["theta"]["q"] = np.stack(
            [_mixture_quantiles(w, tm[:, :, j], np.sqrt(tv[:, :, j]), levels, X) for j in range(J)],
            axis=1,
        )
        cdf = np.concatenate([np.zeros((n, 1)), np.cumsum(0.5 * (w[:, 1:] + w[:, :-1]), 1)], 1)
        cdf /= cdf[:, -1:]
        out["tau"]["q"] = np.stack(
            [[np.interp(p, cdf[i], tau[i]) for i in range(n)] for p in levels], -1
        )
    return out


def naive_row(y, sigma, levels, mode, accuracy, chunk=64, budget_s=10.0):
    """Time :func:`naive_grid` over ``[n, J]`` in chunks of datasets (bounded memory);
    stops after the chunk that passes ``budget_s`` (``B`` in the row = datasets done)."""
    n = len(y)
    t0 = time.perf_counter()
    first, done = None, 0
    for a in range(0, n, chunk):
        est = naive_grid(y[a : a + chunk], sigma[a : a + chunk], levels)
        first = first or est
        done = min(n, a + chunk)
        if time.perf_counter() - t0 > budget_s:
            break
    t = time.perf_counter() - t0
    row = {
        "kind": "naive_grid",
        "mode": mode,
        "dtype": "float64",
        "B": done,
        "J": y.shape[1],
        "seconds": t,
        "datasets_per_s": done / t,
        "status": "ok",
        "note": "NumPy, uniform tau grid K=200 on [0, 5 max sigma], trapezoid; "
        "quantiles from a 400-point CDF table",
    }
    row.update(accuracy(first, tau_q=True))
    return row


def draws_summary(mu, tau, theta, levels):
    """Summaries from posterior draws: ``mu, tau`` ``[n, C, S]``, ``theta`` ``[n, C, S, J]``."""
    n = mu.shape[0]
    mu = np.asarray(mu, np.float64).reshape(n, -1)
    tau = np.asarray(tau, np.float64).reshape(n, -1)
    theta = np.asarray(theta, np.float64).reshape(n, mu.shape[1], -1)

    def summ(d, axis):
        q = np.moveaxis(np.quantile(d, levels, axis=axis), 0, -1) if len(levels) else None
        return {
            "mean": d.mean(axis),
            "sd": d.std(axis, ddof=1),
            "p_gt0": (d > 0).mean(axis),
            "q": q,
        }

    return {"mu": summ(mu, 1), "tau": summ(tau, 1), "theta": summ(theta, 1)}


def nuts_row(y, sigma, levels, mode, accuracy, chains=4, warmup=500, samples=1000):
    """NumPyro NUTS via ``hierjax.validation.nuts.run_nuts`` (lazy); 'unavailable' when absent."""
    base = {
        "kind": "nuts",
        "mode": mode,
        "dtype": str(np.dtype(y.dtype)),
        "B": len(y),
        "J": y.shape[1],
    }
    try:
        from hierjax.validation.nuts import run_nuts
    except ImportError as e:
        return dict(base, status="unavailable", note=f"hierjax.validation.nuts not importable: {e}")
    t0 = time.perf_counter()
    run = run_nuts(y, sigma, chains=chains, warmup=warmup, samples=samples, seed=0)
    wall = time.perf_counter() - t0
    secs = float(run.seconds)
    est = draws_summary(run.mu, run.tau, run.theta, levels)
    row = dict(
        base,
        status="ok",
        seconds=secs,
        compile_s=float(run.compile_seconds),
        wall_s=wall,
        datasets_per_s=len(y) / secs,
        divergent_frac=float(np.mean(np.asarray(run.diverging))),
        note=f"NumPyro NUTS {chains} chains x ({warmup} warmup + {samples} draws); "
        "accuracy = Monte-Carlo error vs the reference",
    )
    row.update(accuracy(est, tau_q=True))
    return row


def quad_rows(y, sigma, levels, groups, reference_cls):
    """Time the scipy-quad reference per dataset: one row for moments, one for full.

    For ``J > len(groups)`` the per-group cost is measured on ``groups`` and scaled to
    ``J`` (noted in the row).
    """
    n, J = y.shape
    t_mom, t_full = 0.0, 0.0
    for i in range(n):
        t0 = time.perf_counter()
        r = reference_cls(y[i], sigma[i])
        for name in ("mu", "tau", "theta_new"):
            r.moments(name)
        t1 = time.perf_counter()
        for j in groups:
            r.moments("theta", j)
        t2 = time.perf_counter()
        for name in ("mu", "tau", "theta_new"):
            for p in levels:
                r.quantile(name, float(p))
        t3 = time.perf_counter()
        for j in groups:
            for p in levels:
                r.quantile("theta", float(p), j)
        t4 = time.perf_counter()
        scale = J / len(groups)
        t_mom += (t1 - t0) + scale * (t2 - t1)
        t_full += (t1 - t0) + scale * (t2 - t1) + (t3 - t2) + scale * (t4 - t3)
    note = "scipy quad reference (epsrel 1e-13); accuracy = its checked error bound 1e-10"
    if len(groups) < J:
        note += f"; per-group cost measured on {len(groups)} groups, scaled to J={J}"
    rows = []
    for mode, t in (("moments", t_mom), ("full", t_full)):
        rows.append(
            {
                "kind": "quad",
                "mode": mode,
                "dtype": "float64",
                "B": n,
                "J": J,
                "seconds": t,
                "datasets_per_s": n / t,
                "status": "ok",
                "acc_max": 1e-10,
                "acc_note": "quad error estimate bound",
                "note": note,
            }
        )
    return rows


def bayesmeta_row() -> dict:
    return dict(BAYESMETA)
