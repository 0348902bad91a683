r"""Frequentist random-effects meta-analysis as metafor's ``rma.uni`` defines it, batched.

The model is the one the rest of hierjax integrates over, ``y_i ~ N(mu, v_i + tau^2)`` with
``v_i = sigma_i^2`` known; here ``tau^2`` is estimated (DL, HE, SJ, PM, EB, ML, REML) and
``mu`` is its inverse-variance weighted mean, with Wald (``test="z"``) or Knapp-Hartung
(``test="knha"``) intervals, the Q-profile interval for ``tau^2``, Cochran's Q, I^2, H^2 and
the prediction interval: the numbers ``rma(yi, vi, method=..., test=...)``, ``confint()``
and ``predict()`` print.

.. math::
    w_i(\tau^2) = \frac{1}{v_i + \tau^2},\quad
    \hat\mu(\tau^2) = \frac{\sum_i w_i y_i}{\sum_i w_i},\quad
    Q(\tau^2) = \sum_i w_i (y_i - \hat\mu)^2,\quad Q = Q(0) \sim \chi^2_{k-1}

One kernel per dataset (``y[J]``, ``v[J]``, ``mask[J]``), vmapped over datasets under one
``jax.jit`` (:func:`_rma_batch`); the method and the test are unbatched traced indices, so a
single compiled program per (shape, dtype) serves every method and both tests. Datasets are
standardised on the host in float64 (centred by the fixed-effect mean, scaled by the geometric
mean of ``sigma``; every estimator is equivariant under this map) and mapped back there.

The chi-square and t quantiles come from ``jax.scipy.special.gammainc``/``betainc`` by
safeguarded Newton steps in log scale (:func:`chi2_quantile`, :func:`t_quantile`).

References:
    Viechtbauer W (2005). Bias and efficiency of meta-analytic variance estimators in the
    random-effects model. J Educ Behav Stat 30:261-293.
    Viechtbauer W (2007). Confidence intervals for the amount of heterogeneity in
    meta-analysis. Stat Med 26:37-52 (the Q-profile interval).
    Viechtbauer W (2010). Conducting meta-analyses in R with the metafor package. J Stat
    Softw 36(3).
    DerSimonian R, Laird N (1986); Hedges LV (1983); Sidik K, Jonkman JN (2005); Paule RC,
    Mandel J (1982); Morris CN (1983) (EB); Knapp G, Hartung J (2003).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betainc, gammainc, gammaincc, gammaln, ndtri

from hierjax.engine.batch import Batch, InputError, as_batch

__all__ = [
    "FREQ_STATUS",
    "TAU2_METHODS",
    "TESTS",
    "RMAResult",
    "chi2_quantile",
    "rma",
    "rma_one",
    "t_quantile",
]

#: tau^2 estimators, as metafor names them. EB (Morris 1983) is metafor's own iteration; its
#: fixed point is the PM root, but it stops at metafor's convergence rule, not at the root.
TAU2_METHODS = ("DL", "HE", "SJ", "PM", "EB", "ML", "REML")
#: tests for mu: Wald (``z``) and Knapp-Hartung (``knha``: t with k - 1 df, untruncated).
TESTS = ("z", "knha")

#: bits of :attr:`RMAResult.status` (0: all fine). Not flagged, because the numbers are
#: valid: a Q-profile interval of ``[0, 0]`` (``Q`` below the lower chi-square quantile:
#: metafor's "null/empty set"), and roots beyond metafor's search intervals (given exactly).
FREQ_STATUS = {
    "not_converged": 1,  # the tau^2 iteration did not converge: Fisher scoring (ML, REML,
    # EB) after 100 steps (metafor: an error; tau2 is the last
    # iterate), or PM's root search
    "one_study": 2,  # k = 1: tau^2 = 0 by convention; no Q-profile CI, no knha interval
    "ci_not_converged": 4,  # a root search (PM, a Q-profile bound) did not converge
}

#: metafor's ``con$tol`` (``.Machine$double.eps^0.25``) in its ``ll0check`` for ML and REML.
_LL0_TOL = float(np.finfo(np.float64).eps) ** 0.25
_MAXITER = 100


class RMAResult(NamedTuple):
    """What :func:`rma` returns: one entry per dataset (``[B]``, also for one dataset).

    Attributes:
        k: studies (unmasked groups), ``[B]`` int.
        mu: estimate of mu (weights ``1 / (v_i + tau2)``), ``[B]``.
        mu_se: its standard error (``test="knha"``: Knapp-Hartung's), ``[B]``.
        mu_lo, mu_hi: the ``level`` confidence interval for mu, ``[B]``.
        tau2: the estimate of tau^2 (never negative), ``[B]``.
        tau2_lo, tau2_hi: the Q-profile ``level`` confidence interval for tau^2, ``[B]``.
        i2: I^2 in percent, ``100 tau2 / (tau2 + s2)``, ``[B]``.
        h2: H^2, ``(tau2 + s2) / s2``, ``[B]``.
        q: Cochran's Q (fixed-effect weights), ``[B]``.
        q_df: its degrees of freedom ``k - 1``, ``[B]`` int.
        q_p: ``P(chi2_{k-1} > q)``, ``[B]``.
        pi_lo, pi_hi: the ``level`` prediction interval for a new study's effect, ``[B]``.
        converged: the tau^2 estimate converged (always True for closed forms), ``[B]`` bool.
        status: :data:`FREQ_STATUS` bits, ``[B]`` int (0: ok).
        method: the tau^2 estimator (one of :data:`TAU2_METHODS`).
        test: ``"z"`` or ``"knha"``.
    """

    k: np.ndarray
    mu: np.ndarray
    mu_se: np.ndarray
    mu_lo: np.ndarray
    mu_hi: np.ndarray
    tau2: np.ndarray
    tau2_lo: np.ndarray
    tau2_hi: np.ndarray
    i2: np.ndarray
    h2: np.ndarray
    q: np.ndarray
    q_df: np.ndarray
    q_p: np.ndarray
    pi_lo: np.ndarray
    pi_hi: np.ndarray
    converged: np.ndarray
    status: np.ndarray
    method: str
    test: str


# ---------------------------------------------------------------------------------------------
# Scalar root finding and the chi-square and t quantiles


def _solve_increasing(fg, x0, lo, hi, tol, skip=False):
    """Root of an increasing ``f`` in ``[lo, hi]`` (``f(lo) <= 0 <= f(hi)``): Newton steps
    from ``x0`` while they stay inside the bracket, bisection otherwise.

    ``fg(x) -> (f, f')``. Returns ``(x, converged)``: converged when a step or the bracket
    falls below ``tol * max(1, |x|)`` or ``f == 0`` within :data:`_MAXITER` steps. A lane
    that starts with ``skip`` (its answer is not needed) never holds a vmapped loop up.
    """

    def step(state):
        i, x, lo, hi, _ = state
        f, g = fg(x)
        lo = jnp.where(f < 0, x, lo)
        hi = jnp.where(f > 0, x, hi)
        newton = x - f / g
        ok = jnp.isfinite(newton) & (newton > lo) & (newton < hi)
        x_new = jnp.where(ok, newton, 0.5 * (lo + hi))
        scale = jnp.maximum(1.0, jnp.abs(x_new))
        done = (f == 0) | (jnp.abs(x_new - x) <= tol * scale) | (hi - lo <= tol * scale)
        return i + 1, jnp.where(f == 0, x, x_new), lo, hi, done

    x0 = jnp.clip(x0, lo, hi)
    init = (0, x0, lo, hi, jnp.asarray(skip))
    _, x, _, _, done = jax.lax.while_loop(lambda s: (s[0] < _MAXITER) & ~s[4], step, init)
    return x, done


def _zeroin(f, a, b, fa, fb, tol, maxiter=1000, skip=False):
    """Brent's zeroin as R's ``uniroot`` runs it (``R_zeroin2``): the root of ``f`` in
    ``[a, b]`` with ``f(a) f(b) <= 0`` to ``tol``; metafor's PM and Q-profile numbers are its
    iterates, so the same algorithm reproduces them, not just the root they approximate.

    Returns ``(root, converged)``; a lane that starts with ``skip`` returns ``b`` at once.
    """
    eps = jnp.finfo(jnp.result_type(a)).eps

    def step(state):
        i, a, b, c, fa, fb, fc, _ = state
        prev_step = b - a
        swap = jnp.abs(fc) < jnp.abs(fb)  # b: the best approximation so far
        a, b, c = jnp.where(swap, b, a), jnp.where(swap, c, b), jnp.where(swap, b, c)
        fa, fb, fc = jnp.where(swap, fb, fa), jnp.where(swap, fc, fb), jnp.where(swap, fb, fc)
        tol_act = 2 * eps * jnp.abs(b) + tol / 2
        new_step = (c - b) / 2
        done = (jnp.abs(new_step) <= tol_act) | (fb == 0)
        # interpolation: secant with two distinct points, inverse quadratic with three
        cb = c - b
        t1 = fb / fa
        p_lin, q_lin = cb * t1, 1.0 - t1
        qq, tt1, tt2 = fa / fc, fb / fc, fb / fa
        p_quad = tt2 * (cb * qq * (qq - tt1) - (b - a) * (tt1 - 1.0))
        q_quad = (qq - 1.0) * (tt1 - 1.0) * (tt2 - 1.0)
        p = jnp.where(a == c, p_lin, p_quad)
        q = jnp.where(a == c, q_lin, q_quad)
        q = jnp.where(p > 0, -q, q)
        p = jnp.abs(p)
        accept = (
            (jnp.abs(prev_step) >= tol_act)
            & (jnp.abs(fa) > jnp.abs(fb))
            & (p < 0.75 * cb * q - jnp.abs(tol_act * q) / 2)
            & (p < jnp.abs(prev_step * q / 2))
        )
        new_step = jnp.where(accept, p / q, new_step)
        new_step = jnp.where(
            jnp.abs(new_step) < tol_act, jnp.where(new_step > 0, tol_act, -tol_act), new_step
        )
        a2, fa2 = b, fb
        b2 = b + new_step
        fb2 = f(b2)
        same = ((fb2 > 0) & (fc > 0)) | ((fb2 < 0) & (fc < 0))
        c2, fc2 = jnp.where(same, a2, c), jnp.where(same, fa2, fc)
        keep = functools.partial(jnp.where, done)
        return (
            i + 1,
            keep(a, a2),
            keep(b, b2),
            keep(c, c2),
            keep(fa, fa2),
            keep(fb, fb2),
            keep(fc, fc2),
            done,
        )

    at_a, at_b = fa == 0, fb == 0
    init = (0, a, b, a, fa, fb, fa, at_a | at_b | skip)
    _, _, root, _, _, _, _, done = jax.lax.while_loop(
        lambda s: (s[0] <= maxiter) & ~s[7], step, init
    )
    return jnp.where(at_a, a, root), done


def _log_chi2_density_times_x(a, x):
    """``log(x f(x))`` for the chi-square density ``f`` with ``2 a`` df."""
    return a * jnp.log(0.5 * x) - 0.5 * x - gammaln(a)


def chi2_quantile(p, df, upper=False):
    r"""The chi-square quantile: ``P(X <= x) = p`` (or ``P(X > x) = p`` with ``upper``).

    .. math:: P(X \le x) = P(df/2, x/2) \quad\text{(regularised lower incomplete gamma)}

    Solved for ``s = log x`` by safeguarded Newton steps on ``log P`` (or ``log(1 - P)``),
    which is nearly linear in ``s`` in both tails. One scalar (vmap for more).

    Args:
        p: probability in ``(0, 1)``, scalar.
        df: degrees of freedom ``> 0``, scalar.
        upper: solve the upper tail (exact for small ``p``: no ``1 - p`` round-off).
    """
    dt = jnp.result_type(p, df, float)
    p = jnp.asarray(p, dt)
    a = 0.5 * jnp.asarray(df, dt)
    eps = jnp.finfo(dt).eps
    log_p = jnp.log(p)

    def fg(s):
        x = jnp.exp(s)
        if upper:
            tail = gammaincc(a, 0.5 * x)
            f = log_p - jnp.log(tail)
        else:
            tail = gammainc(a, 0.5 * x)
            f = jnp.log(tail) - log_p
        return f, jnp.exp(_log_chi2_density_times_x(a, x) - jnp.log(tail))

    # Wilson-Hilferty start; near 0 the lower tail P ~ (x/2)^a / Gamma(a + 1) instead
    z = -ndtri(p) if upper else ndtri(p)
    c = 2.0 / (9.0 * 2.0 * a)
    wh = 2.0 * a * (1.0 - c + z * jnp.sqrt(c)) ** 3
    small = 2.0 * jnp.exp((log_p + gammaln(a + 1.0)) / a)
    x0 = jnp.maximum(wh, small)
    big = -jnp.log(p) if upper else jnp.asarray(0.0, dt)
    hi = 2.0 * a + 2.0 * jnp.sqrt(2.0 * a * big) + 2.0 * big + 4.0  # Laurent-Massart bound
    s_lo = jnp.log(jnp.finfo(dt).tiny) + 2.0
    s, _ = _solve_increasing(fg, jnp.log(x0), s_lo, jnp.log(hi), 4 * eps)
    return jnp.exp(s)


def t_quantile(q, df):
    r"""The upper Student-t quantile: ``P(T > t) = q`` for ``q`` in ``(0, 0.5)``.

    .. math:: P(T > t) = \tfrac12 I_{df / (df + t^2)}(df/2, 1/2)

    Solved for ``s = log t`` by safeguarded Newton steps on ``log P(T > t)`` (nearly linear
    in ``s`` in the tail). One scalar (vmap for more).
    """
    dt = jnp.result_type(q, df, float)
    q = jnp.asarray(q, dt)
    nu = jnp.asarray(df, dt)
    eps = jnp.finfo(dt).eps
    log_q = jnp.log(q)
    log_c = gammaln(0.5 * (nu + 1.0)) - gammaln(0.5 * nu) - 0.5 * jnp.log(nu * jnp.pi)

    def fg(s):
        t = jnp.exp(s)
        sf = 0.5 * betainc(0.5 * nu, 0.5, nu / (nu + t * t))
        log_pdf = log_c - 0.5 * (nu + 1.0) * jnp.log1p(t * t / nu)
        return log_q - jnp.log(sf), jnp.exp(log_pdf + s - jnp.log(sf))

    z = -ndtri(q)
    # Cornish-Fisher expansion in 1/df (Abramowitz & Stegun 26.7.5): the start, and the answer
    # in float32 where its last term is negligible (float32 betainc loses digits at large df)
    z2 = z * z
    g = [
        z * (z2 + 1.0) / 4.0,
        z * ((5.0 * z2 + 16.0) * z2 + 3.0) / 96.0,
        z * (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) / 384.0,
        z * ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) / 92160.0,
    ]
    cf = z + g[0] / nu + g[1] / nu**2 + g[2] / nu**3 + g[3] / nu**4
    s_hi = jnp.asarray(0.5 * np.log(np.finfo(np.float32).max), dt)  # t^2 stays finite
    s, _ = _solve_increasing(
        fg, jnp.log(jnp.maximum(z + g[0] / nu, 1e-6)), jnp.asarray(-30.0, dt), s_hi, 4 * eps
    )
    if dt == jnp.float32:
        return jnp.where(jnp.abs(g[3]) / nu**4 <= 1e-7 * z, cf, jnp.exp(s))
    return jnp.exp(s)


# ---------------------------------------------------------------------------------------------
# One dataset


def _weighted(y, v, mask, tau2):
    """``(w, sum w, mu_hat, Q(tau2))`` with ``w_i = 1 / (v_i + tau2)`` (0 where masked)."""
    w = jnp.where(mask, 1.0 / (v + tau2), 0.0)
    sw = jnp.sum(w)
    mu = jnp.sum(w * y) / sw
    r = jnp.where(mask, y - mu, 0.0)
    return w, sw, mu, jnp.sum(w * r * r)


def _q_root(y, v, mask, target, vmin, s2, tau2_max, utol):
    r"""``tau2 >= 0`` with ``Q(tau2) = target``, where ``Q`` decreases from ``Q(0) > target``.

    As metafor: R's ``uniroot`` (:func:`_zeroin`) on ``[0, tau2_max]`` to ``utol``. A root
    beyond ``tau2_max`` (metafor: an error for PM, a ``>`` bound for the CI) is found exactly
    instead, by Newton steps on ``log Q`` in ``u = log(tau2 + vmin)``, where ``Q ~ A / (tau2 +
    v)`` is nearly linear; bracket ``Q(tau2) <= S / (tau2 + vmin)``, ``S = sum (y - ybar)^2``
    (``s2``). Returns ``(tau2, converged)``.
    """
    eps = jnp.finfo(y.dtype).eps
    log_t = jnp.log(target)

    def fg(u):
        tau2 = jnp.exp(u) - vmin
        w, _, mu, q = _weighted(y, v, mask, tau2)
        r = jnp.where(mask, y - mu, 0.0)
        dq = -jnp.sum(w * w * r * r)  # dQ/dtau2 (mu's term vanishes at its min)
        return log_t - jnp.log(q), -dq * jnp.exp(u) / q

    def excess(tau2):
        return _weighted(y, v, mask, tau2)[3] - target

    f_lo, f_hi = excess(jnp.zeros_like(tau2_max)), excess(tau2_max)
    none = ~(f_lo > 0)  # Q(0) <= target (or nan): no positive root
    beyond = f_hi > 0
    root, ok = _zeroin(
        excess,
        jnp.zeros_like(tau2_max),
        tau2_max,
        f_lo,
        jnp.minimum(f_hi, 0.0),
        utol,
        skip=none | beyond,
    )

    u_lo = jnp.log(vmin)
    u_hi = jnp.log(jnp.maximum(s2 / target, vmin)) + 4 * eps
    _, sw0, _, q0 = _weighted(y, v, mask, 0.0)
    k = jnp.sum(mask)
    vt = (k - 1) / (sw0 - jnp.sum(jnp.where(mask, 1.0 / v, 0.0) ** 2) / sw0)
    guess = vt * jnp.maximum(q0 / target - 1.0, 0.0)  # Q(tau2) ~ Q(0) vt / (vt + tau2)
    u, ok_far = _solve_increasing(
        fg, jnp.log(guess + vmin), u_lo, u_hi, 4 * eps, skip=none | ~beyond
    )
    far = jnp.maximum(jnp.exp(u) - vmin, 0.0)
    return (
        jnp.where(none, 0.0, jnp.where(beyond, far, root)),
        none | jnp.where(beyond, ok_far, ok),
    )


def _loglik(y, v, mask, tau2, reml):
    """metafor's ML or REML log-likelihood (its ``ll0check`` compares two of them)."""
    _, sw, _, q = _weighted(y, v, mask, tau2)
    ll = -0.5 * jnp.sum(jnp.where(mask, jnp.log(v + tau2), 0.0)) - 0.5 * q
    return ll - 0.5 * jnp.log(sw) if reml else ll


def _scoring(y, v, mask, tau2_0, which, threshold, skip):
    """metafor's Fisher scoring for ML (0), REML (1), EB (2) from ``tau2_0``: steps halved
    until ``tau2 >= 0``, stop when a step changes tau2 by at most ``threshold`` (or, below
    the dtype's round-off, by ``64 eps (1 + tau2)``)."""
    floor = 64 * jnp.finfo(y.dtype).eps
    k = jnp.sum(mask)

    def adjustment(tau2):
        w, sw, mu, q = _weighted(y, v, mask, tau2)
        r = jnp.where(mask, y - mu, 0.0)
        sw2, sw3 = jnp.sum(w * w), jnp.sum(w**3)
        ypp = jnp.sum(w * w * r * r)  # y' P P y
        tr_p = sw - sw2 / sw  # tr(P), P = W - w w' / sum w
        tr_pp = sw2 - 2.0 * sw3 / sw + (sw2 / sw) ** 2  # tr(P P)
        ml = (ypp - sw) / sw2
        reml = (ypp - tr_p) / tr_pp
        eb = (q * k / (k - 1) - k) / sw
        return jnp.select([which == 0, which == 1], [ml, reml], eb)

    def step(state):
        i, tau2, _ = state
        adj = adjustment(tau2)
        # step halving: the fewest halvings that keep tau2 + adj >= 0 (adj -> 0 at tau2 = 0)
        halvings = jnp.ceil(jnp.log2(-adj / jnp.where(tau2 > 0, tau2, 1.0)))
        halved = adj * jnp.exp2(-jnp.maximum(halvings, 0.0))
        halved = jnp.where(tau2 + halved < 0, 0.5 * halved, halved)
        adj = jnp.where(tau2 + adj >= 0, adj, jnp.where(tau2 > 0, halved, 0.0))
        new = jnp.maximum(tau2 + adj, 0.0)
        return i + 1, new, jnp.abs(new - tau2) <= jnp.maximum(threshold, floor * (1.0 + new))

    init = (0, tau2_0, jnp.asarray(skip))
    _, tau2, done = jax.lax.while_loop(lambda s: (s[0] < _MAXITER) & ~s[2], step, init)
    return tau2, done


def rma_one(y, v, mask, level, method, knha, threshold=1e-5, unit2=1.0, mad2=0.0):
    r"""metafor's ``rma.uni`` for one dataset (intercept-only random-effects model).

    .. math::
        \hat\mu = \frac{\sum w_i y_i}{\sum w_i},\quad
        \mathrm{se}^2_{z} = \frac{1}{\sum w_i},\quad
        \mathrm{se}^2_{knha} = \frac{\sum w_i (y_i - \hat\mu)^2}{(k-1) \sum w_i},\quad
        s^2 = \frac{(k-1)\sum v_i^{-1}}{(\sum v_i^{-1})^2 - \sum v_i^{-2}}

    Args:
        y: estimates, ``[J]`` (best standardised: :func:`rma` does it).
        v: sampling variances ``sigma^2``, ``[J]``, positive where ``mask``.
        mask: real studies, ``[J]`` bool (padding: any positive ``v``).
        level: confidence level in ``(0, 1)``, scalar.
        method: index into :data:`TAU2_METHODS`, int scalar (may be traced, unbatched).
        knha: Knapp-Hartung (True) or Wald (False), bool scalar (may be traced).
        threshold: metafor's convergence threshold on tau^2 for ML, REML, EB, in data units.
        unit2: the data's unit of tau^2 in the units of ``y`` (``scale^2`` when ``y`` was
            standardised): metafor's absolute tolerances are applied in data units.
        mad2: ``mad(y)^2`` (R's ``mad``) in the units of ``y``: PM's search interval.

    Returns:
        A dict of scalars: the numeric fields of :class:`RMAResult` (without method, test).
    """
    dt = y.dtype
    eps = jnp.finfo(dt).eps
    threshold = jnp.asarray(threshold, dt) / unit2
    utol = _LL0_TOL / unit2  # uniroot's tol, .Machine$double.eps^0.25
    hundred = 100.0 / unit2  # metafor's default tau2.max
    k = jnp.sum(mask)
    kf = k.astype(dt)
    df = jnp.maximum(kf - 1.0, 1.0)
    v = jnp.where(mask, v, 1.0)
    y = jnp.where(mask, y, 0.0)
    one = k < 2

    # fixed-effect pieces: Cochran's Q, the typical within-study variance s2 (I^2, H^2)
    w0, sw0, _, q_gen0 = _weighted(y, v, mask, 0.0)
    q = jnp.maximum(q_gen0, 0.0)
    s2 = (kf - 1.0) / (sw0 - jnp.sum(w0 * w0) / sw0)
    vmin = jnp.min(jnp.where(mask, v, jnp.inf))
    ybar = jnp.sum(y) / kf
    ss = jnp.sum(jnp.where(mask, (y - ybar) ** 2, 0.0))  # sum (y - ybar)^2, unweighted

    # the estimators (metafor's closed forms; the iterative ones report convergence)
    he = jnp.maximum(ss / df - jnp.sum(jnp.where(mask, v, 0.0)) / kf, 0.0)
    dl = jnp.maximum((q - (kf - 1.0)) / (sw0 - jnp.sum(w0 * w0) / sw0), 0.0)
    yes = jnp.asarray(True)

    def est_dl():
        return dl, yes

    def est_he():
        return he, yes

    def est_sj():
        tau2_0 = ss / kf  # var(y) (k - 1) / k
        return tau2_0 * _weighted(y, v, mask, tau2_0)[3] / df, yes

    def est_pm():
        tau2_max = jnp.maximum(hundred, 10.0 * mad2)
        root, ok = _q_root(y, v, mask, kf - 1.0, vmin, ss, tau2_max, utol)
        pos = q >= kf - 1.0  # metafor: Q(0) < k - 1 gives tau2 = 0
        return jnp.where(pos, root, 0.0), ok | ~pos

    def scoring(which):
        def est():
            tau2, ok = _scoring(y, v, mask, he, which, threshold, one)
            if which == 2:
                return tau2, ok
            # metafor's ll0check: a larger likelihood at tau2 = 0 resets the estimate to 0
            reml = which == 1
            worse = _loglik(y, v, mask, 0.0, reml) - _loglik(y, v, mask, tau2, reml) > _LL0_TOL
            return jnp.where(ok & worse & (tau2 > threshold), 0.0, tau2), ok

        return est

    branches = [est_dl, est_he, est_sj, est_pm, scoring(2), scoring(0), scoring(1)]
    tau2, converged = jax.lax.switch(method, branches)
    tau2 = jnp.where(one, 0.0, jnp.maximum(tau2, 0.0))
    converged = converged | one

    # mu and its interval
    _, sw, mu, rss = _weighted(y, v, mask, tau2)
    alpha = 1.0 - level
    z = -ndtri(0.5 * alpha)
    t = t_quantile(0.5 * alpha, df)
    # metafor: an RSS this small means equal y_i; the knha scale s2w is then 0
    s2w = jnp.where(rss <= eps, 0.0, rss / df)
    se = jnp.sqrt(jnp.where(knha, s2w, 1.0) / sw)
    crit = jnp.where(knha, jnp.where(one, jnp.nan, t), z)
    pi_se = jnp.sqrt(se * se + tau2)

    # Q-profile interval (Viechtbauer 2007): Q(tau2) at chi2_{k-1} quantiles, truncated at 0
    crit_u = chi2_quantile(0.5 * alpha, df, upper=True)
    crit_l = chi2_quantile(0.5 * alpha, df)
    ci_max = jnp.maximum(hundred, 10.0 * tau2)  # confint's tau2.max
    roots, ok = jax.vmap(lambda c: _q_root(y, v, mask, c, vmin, ss, ci_max, utol))(
        jnp.stack([crit_u, crit_l])
    )
    null = q < crit_l
    lo = jnp.where(q < crit_u, 0.0, roots[0])
    hi = jnp.where(null, 0.0, roots[1])
    ci_ok = (ok[0] | (q < crit_u)) & (ok[1] | null)
    lo = jnp.where(one, jnp.nan, lo)
    hi = jnp.where(one, jnp.nan, hi)

    i2 = jnp.where(one, 0.0, 100.0 * tau2 / (s2 + tau2))
    h2 = jnp.where(one, 1.0, tau2 / s2 + 1.0)
    q = jnp.where(one, 0.0, q)
    q_p = jnp.where(one, 1.0, gammaincc(0.5 * df, 0.5 * q))
    status = (
        jnp.where(converged, 0, FREQ_STATUS["not_converged"])
        | jnp.where(one, FREQ_STATUS["one_study"], 0)
        | jnp.where(ci_ok | one, 0, FREQ_STATUS["ci_not_converged"])
    )
    return {
        "k": k.astype(jnp.int32),
        "mu": mu,
        "mu_se": se,
        "mu_lo": mu - crit * se,
        "mu_hi": mu + crit * se,
        "tau2": tau2,
        "tau2_lo": lo,
        "tau2_hi": hi,
        "i2": i2,
        "h2": h2,
        "q": q,
        "q_df": (k - 1).astype(jnp.int32),
        "q_p": q_p,
        "pi_lo": mu - crit * pi_se,
        "pi_hi": mu + crit * pi_se,
        "converged": converged,
        "status": status.astype(jnp.int32),
    }


@jax.jit
def _rma_batch(y, v, mask, level, method, knha, threshold, unit2, mad2):
    """:func:`rma_one` over a ``[B, J]`` block (``unit2``, ``mad2``: ``[B]``); ``level``,
    ``method``, ``knha`` and ``threshold`` are shared (unbatched) traced scalars, so one
    program serves every method and test."""
    return jax.vmap(rma_one, in_axes=(0, 0, 0, None, None, None, None, 0, 0))(
        y, v, mask, level, method, knha, threshold, unit2, mad2
    )


# ---------------------------------------------------------------------------------------------
# Host entry point


def _dtype_of(y, sigma):
    """float64 when x64 is on and the inputs are not float32; float32 otherwise."""

    def is_f32(a):
        if isinstance(a, (np.ndarray, jax.Array, np.generic)):
            return a.dtype == np.float32
        if isinstance(a, (list, tuple)) and a:
            return all(is_f32(x) for x in a)
        return False

    if is_f32(y) or is_f32(sigma):
        return np.dtype(np.float32)
    return np.dtype(jax.dtypes.canonicalize_dtype(np.float64))


def _check(batch) -> None:
    """Raise InputError for the first bad dataset (vectorised test first: the loop that
    words the message runs only on datasets that fail)."""
    m = batch.mask
    with np.errstate(invalid="ignore"):
        fails = (
            (m.sum(axis=1) == 0)
            | np.any(m & ~np.isfinite(batch.y), axis=1)
            | np.any(m & ~(np.isfinite(batch.sigma) & (batch.sigma > 0)), axis=1)
        )
    for b in np.flatnonzero(fails):
        m = batch.mask[b]
        y, s = batch.y[b][m], batch.sigma[b][m]
        where = f"dataset {batch.names[b]!r}"
        if m.sum() == 0:
            raise InputError(f"{where}: has no studies")
        bad = np.flatnonzero(~np.isfinite(y))
        if bad.size:
            raise InputError(f"{where}: y[{bad[0] + 1}] is {y[bad[0]]} (must be finite)")
        bad = np.flatnonzero(~(np.isfinite(s) & (s > 0)))
        if bad.size:
            raise InputError(
                f"{where}: sigma[{bad[0] + 1}] is {s[bad[0]]} (must be finite and > 0)"
            )


def rma(
    y,
    sigma,
    mask=None,
    method: str = "REML",
    test: str = "z",
    level: float = 0.95,
    threshold: float = 1e-5,
) -> RMAResult:
    r"""Random-effects meta-analysis of each dataset, as metafor's ``rma.uni`` computes it.

    .. math::
        y_i \sim N(\mu, \sigma_i^2 + \tau^2), \qquad
        \mu \pm c \cdot \mathrm{se}, \qquad \mu \pm c \sqrt{\mathrm{se}^2 + \tau^2}

    with ``c`` the normal (``test="z"``) or ``t_{k-1}`` (``test="knha"``) quantile. tau^2 by
    ``method`` (truncated at 0): DL (DerSimonian-Laird), HE (Hedges), SJ (Sidik-Jonkman,
    started at ``var(y) (k-1)/k``), PM (Paule-Mandel: ``Q(tau2) = k - 1``), EB (metafor's
    empirical Bayes iteration), ML and REML (metafor's Fisher scoring from the HE estimate,
    with step halving and its check of ``tau2 = 0``).

    metafor's numbers are its algorithms' iterates, not the exact roots they approach, and
    they are reproduced as such: Fisher scoring stops at a change of ``threshold`` (metafor's
    ``control(threshold=1e-5)``, in the data's units; never below the dtype's round-off) after
    at most 100 steps; PM and the Q-profile bounds are R's ``uniroot`` (Brent's zeroin) to
    ``.Machine$double.eps^0.25`` on metafor's intervals ``[0, max(100, 10 mad(y)^2)]`` and
    ``[0, max(100, 10 tau2)]``. Beyond those intervals (where metafor stops with an error or
    prints ``>``) the exact root is given instead. A smaller
    ``threshold`` (1e-10) gives the ML, REML and EB roots themselves.

    Args:
        y: estimates, ``[k]``, ``[B, k]`` or a ragged list of ``[k_b]`` arrays (or a
            :class:`hierjax.Batch`, with ``sigma`` None).
        sigma: their standard errors (``v_i = sigma_i^2``), shaped like ``y``.
        mask: ``[B, k]`` bool for rectangular input (default all True).
        method: one of :data:`TAU2_METHODS`.
        test: ``"z"`` (Wald) or ``"knha"`` (Knapp-Hartung, no truncation).
        level: confidence level in ``(0, 1)`` for every interval.
        threshold: convergence threshold of the Fisher scoring (ML, REML, EB), in units of
            ``y^2``.

    Returns:
        :class:`RMAResult`, NumPy arrays ``[B]`` in the compute dtype (float64 when x64 is on
        and the inputs are not float32).

    Raises:
        InputError: (a ValueError) an unknown method or test, a level outside ``(0, 1)``,
            shapes that do not match, a dataset without studies, non-finite ``y`` or a
            ``sigma`` that is not finite and positive.

    Example:
        >>> import hierjax
        >>> y, sigma = hierjax.eight_schools()
        >>> res = hierjax.rma(y, sigma, method="DL")
        >>> float(res.tau2[0])   # doctest: +SKIP
        0.0
    """
    m = str(method).upper()
    if m not in TAU2_METHODS:
        raise InputError(f"method={method!r}: expected one of {', '.join(TAU2_METHODS)}")
    t = "knha" if str(test).lower() == "hksj" else str(test).lower()
    if t not in TESTS:
        raise InputError(f"test={test!r}: expected 'z' or 'knha'")
    lev = float(level)
    if not 0.0 < lev < 1.0:
        raise InputError(f"level={level!r}: expected a probability in (0, 1), e.g. 0.95")
    if not float(threshold) > 0:
        raise InputError(f"threshold={threshold!r}: expected a positive number")
    if isinstance(y, Batch):  # hierjax.io.tables.read_long_csv's batches
        batch, dt = y, _dtype_of(y.y, None)
    else:
        batch, dt = as_batch(y, sigma, mask=mask), _dtype_of(y, sigma)
    _check(batch)
    B = batch.y.shape[0]

    # standardise in float64: centre by the fixed-effect mean, scale by the geometric-mean sigma
    msk = batch.mask
    n = msk.sum(axis=1)
    scale = np.exp(np.sum(np.where(msk, np.log(batch.sigma), 0.0), axis=1) / n)
    v = np.where(msk, (batch.sigma / scale[:, None]) ** 2, 1.0)
    prec = np.where(msk, 1.0 / v, 0.0)
    loc = np.sum(prec * np.where(msk, batch.y, 0.0), axis=1) / np.sum(prec, axis=1)
    ys = np.where(msk, (batch.y - loc[:, None]) / scale[:, None], 0.0)
    yn = np.where(msk, ys, np.nan)
    dev = np.abs(yn - np.nanmedian(yn, axis=1, keepdims=True))
    mad2 = (1.4826 * np.nanmedian(dev, axis=1)) ** 2  # R's mad(), squared

    # pad the batch to a power of two (benign copies of dataset 0): few compiled shapes
    Bp = 1 << max(0, B - 1).bit_length()
    pad = np.zeros(Bp - B, dtype=int)
    ys, v, msk, unit2, mad2 = (np.concatenate([a, a[pad]]) for a in (ys, v, msk, scale**2, mad2))
    out = _rma_batch(
        jnp.asarray(ys, dt),
        jnp.asarray(v, dt),
        jnp.asarray(msk),
        jnp.asarray(lev, dt),
        jnp.asarray(TAU2_METHODS.index(m), jnp.int32),
        jnp.asarray(t == "knha"),
        jnp.asarray(threshold, dt),
        jnp.asarray(unit2, dt),
        jnp.asarray(mad2, dt),
    )
    out = {key: np.asarray(val)[:B] for key, val in out.items()}

    res = dict(out)
    for key in ("mu", "mu_lo", "mu_hi", "pi_lo", "pi_hi"):
        res[key] = (out[key].astype(np.float64) * scale + loc).astype(dt)
    res["mu_se"] = (out["mu_se"].astype(np.float64) * scale).astype(dt)
    for key in ("tau2", "tau2_lo", "tau2_hi"):
        res[key] = (out[key].astype(np.float64) * scale**2).astype(dt)
    return RMAResult(**res, method=m, test=t)
