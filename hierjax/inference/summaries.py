r"""Posterior summaries of one dataset from its tau grid.

Given tau, ``mu``, each ``theta_j`` and ``theta_new`` are normal, so each marginal
is a normal mixture over the tau nodes with weights ``w_k``:

.. math::
    p(\phi \mid y) = \sum_k w_k\, N(\phi \mid m_k, s_k^2),\quad
    E[\phi] = \sum_k w_k m_k,\quad
    Var[\phi] = \sum_k w_k s_k^2 + \sum_k w_k (m_k - E[\phi])^2

    F(q) = \sum_k w_k \Phi\big((q - m_k)/s_k\big),\qquad
    P(\phi > c) = \sum_k w_k \Phi\big((m_k - c)/s_k\big)

Quantiles solve ``F(q) = p`` by Newton's method safeguarded by bisection inside the
bracket ``[min_k q_k, max_k q_k]`` of the components' own quantiles. The tau
marginal uses the Chebyshev interpolant of its density on the grid (its integral
is the tau CDF). Moments that do not exist (heavy tails) are ``nan`` (means of
symmetric-ish parameters) or ``inf`` (tau's mean, every sd) with the matching
``*_exists`` flag False: never a grid-dependent number.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from hierjax.inference.grid import TauGrid, grid_tau_of_z, grid_z_of_tau
from hierjax.numerics.quadrature import clenshaw_curtis, integration_matrices
from hierjax.numerics.solvers import iterate, maximize

__all__ = [
    "DatasetFit",
    "Marginal",
    "mixture_summary",
    "mixture_mean_var",
    "component_above",
    "coarse_weights",
    "coarse_stages",
    "mixture_quantile",
    "quantile_error",
    "tau_summary",
    "tau_mean_var",
    "TauCdf",
    "tau_cdf_nodes",
    "tau_quantile",
    "tau_quantile_error",
    "tau_mode",
]

_MAX_ITER = 100
_COARSE_STEPS = 2  # Halley steps on the quarter-size nested rule
_MEDIUM_STEPS = 1  # then on the half-size one (float64)
_FAST_STEPS = 1  # then full Halley steps for mixture quantiles
_TAU_FAST_STEPS = 4  # Newton steps on the tau CDF
_MODE_FAST_STEPS = 4  # Newton steps for the tau mode (then a while loop)
_TOL_RES = 2e-10  # residual tolerance per unit of min(p, 1 - p), see mixture_quantile
_NEAR = 1e-3  # |F - p| / min(p, 1 - p) from which a Halley step's error model is trusted


class Marginal(NamedTuple):
    """Summary of one scalar posterior marginal (leading axes as documented by the caller).

    Attributes:
        mean: posterior mean; ``nan`` (``inf`` for tau) where it does not exist.
        sd: posterior sd; ``inf`` where it does not exist.
        quantiles: posterior quantiles at the requested levels, trailing axis ``[Q]``.
        p_gt0: ``P(parameter > 0 | y)``.
        mean_exists: whether the posterior mean is finite (a property of the
            model: priors and number of groups), bool.
        sd_exists: whether the posterior variance is finite, bool.
    """

    mean: jnp.ndarray
    sd: jnp.ndarray
    quantiles: jnp.ndarray
    p_gt0: jnp.ndarray
    mean_exists: jnp.ndarray
    sd_exists: jnp.ndarray


class DatasetFit(NamedTuple):
    """Posterior summaries of one dataset in standardised units (see
    :class:`hierjax.engine.fitting.Fit`), from any of the grids or the Legendre nodes."""

    mu: Marginal
    tau: Marginal
    theta: Marginal
    theta_new: Marginal
    tau_mode: jnp.ndarray
    log_evidence: jnp.ndarray
    grid_error: jnp.ndarray
    status: jnp.ndarray
    #: grid_unresolved set by the theta_j checks alone (which twice the nodes resolve in
    #: either dtype, see :func:`hierjax.fit`), scalar bool
    theta_only: jnp.ndarray


_INV_SQRT2 = 0.7071067811865476
_INV_SQRT2PI = 0.3989422804014327


def _Phi(t):
    """Standard normal CDF ``erfc(-t/sqrt 2)/2``, accurate in both tails."""
    return _Phi_phi(t)[0]


# Cephes' rational approximations of erf on |x| < 1 (x T(x^2)/U(x^2)) and of erfc on
# |x| >= 1 (e^{-x^2} P(|x|)/Q(|x|)), highest power first
_ERF_T = (
    9.60497373987051638749e0,
    9.00260197203842689217e1,
    2.23200534594684319226e3,
    7.00332514112805075473e3,
    5.55923013010394962768e4,
)
_ERF_U = (
    1.0,
    3.35617141647503099647e1,
    5.21357949780152679795e2,
    4.59432382970980127987e3,
    2.26290000613890934246e4,
    4.92673942608635921086e4,
)
_ERFC_P = (
    2.46196981473530512524e-10,
    5.64189564831068821977e-1,
    7.46321056442269912687e0,
    4.86371970985681366614e1,
    1.96520832956077098242e2,
    5.26445194995477358631e2,
    9.34528527171957607540e2,
    1.02755188689515710272e3,
    5.57535335369399327526e2,
)
_ERFC_Q = (
    1.0,
    1.32281951154744992508e1,
    8.67072140885989742329e1,
    3.54937778887819891062e2,
    9.75708501743205489753e2,
    1.82390916687909736289e3,
    2.24633760818710981792e3,
    1.65666309194161350182e3,
    5.57535340817727675546e2,
)


def _horner(coefs, x):
    acc = jnp.full_like(x, coefs[0])
    for c in coefs[1:]:
        acc = acc * x + c
    return acc


@jax.custom_jvp
def _Phi_phi(t):
    """``(Phi(t), phi(t))`` sharing one ``exp``: ``Phi(t) = erfc(x)/2``, ``x = -t/sqrt(2)``,
    and ``erfc``'s ``e^{-x^2}`` is ``phi``'s ``e^{-t^2/2}``; one division for either branch."""
    x = -t * _INV_SQRT2
    ax = jnp.abs(x)
    e = jnp.exp(-x * x)
    small = ax < 1.0
    xs = jnp.where(small, x, 0.0)  # each branch's argument kept finite for the other
    al = jnp.where(small, 1.0, jnp.minimum(ax, 64.0))
    r = jnp.where(small, xs * _horner(_ERF_T, xs * xs), e * _horner(_ERFC_P, al)) / jnp.where(
        small, _horner(_ERF_U, xs * xs), _horner(_ERFC_Q, al)
    )
    erfc_x = jnp.where(small, 1.0 - r, jnp.where(x < 0, 2.0 - r, r))
    return 0.5 * erfc_x, _INV_SQRT2PI * e


@_Phi_phi.defjvp
def _Phi_phi_jvp(primals, tangents):
    # the exact derivatives, not the rational approximation's
    (t,), (dt,) = primals, tangents
    Phi, phi = _Phi_phi(t)
    return (Phi, phi), (phi * dt, -t * phi * dt)


class _Moments(NamedTuple):
    mean: jnp.ndarray
    sd: jnp.ndarray
    skew: jnp.ndarray
    exkurt: jnp.ndarray


def _mixture_moments(w, m, s) -> _Moments:
    r"""Mean, sd, skewness and excess kurtosis of ``sum_k w_k N(m_k, s_k^2)`` on the grid.

    With ``c_k = m_k - mean``: ``mu_2 = sum w (c^2 + s^2)``, ``mu_3 = sum w (c^3 + 3 c s^2)``,
    ``mu_4 = sum w (c^4 + 6 c^2 s^2 + 3 s^4)``. (Only a starting point for the quantile
    search: for heavy tails these are finite grid numbers, never reported.)
    """
    mean = jnp.sum(w * m)
    c = m - mean
    s2 = s * s
    mu2 = jnp.sum(w * (c * c + s2))
    mu3 = jnp.sum(w * c * (c * c + 3.0 * s2))
    mu4 = jnp.sum(w * (c**4 + 6.0 * c * c * s2 + 3.0 * s2 * s2))
    sd = jnp.sqrt(mu2)
    return _Moments(mean, sd, mu3 / sd**3, mu4 / mu2**2 - 3.0)


def _halley_terms(x, p, w, m, inv_s, special_dtype=None):
    """``(F(x) - p, F', F'', F''')`` of the mixture CDF at ``x`` (``inv_s = 1/s``).

    ``special_dtype`` (static): evaluate ``Phi`` and ``phi`` of the standardised
    arguments in this lower precision (float32 for a float64 search: faster on a CPU),
    for the coarse starting steps only, which need ~1e-6 sd.
    """
    t = (x - m) * inv_s
    t_lo = t if special_dtype is None else t.astype(special_dtype)
    Phi, phi = (a.astype(t.dtype) for a in _Phi_phi(t_lo))
    wphi = w * inv_s * phi  # w_k phi(t_k) / s_k
    return (
        jnp.sum(w * Phi) - p,
        jnp.sum(wphi),
        -jnp.sum(wphi * t * inv_s),
        jnp.sum(wphi * (t * t - 1.0) * inv_s * inv_s),
    )


def _halley_step(F, f, fp):
    """Halley's step ``2 F f / (2 f^2 - F f')``; Newton's ``F / f`` where the Halley
    denominator is less than ``f^2`` (far from the root, where it can vanish)."""
    denom = 2.0 * f * f - F * fp
    return jnp.where(denom > f * f, 2.0 * F * f / denom, F / f)


def _quantile_start(p, w, m, s, mo: _Moments):
    """``(sign, p', sign m, x0, lo, hi)`` of a mixture quantile search: levels above 1/2 as the
    reflected mixture's lower tail, the start ``x0`` and the bracket ``[min_k q_k, max_k q_k]``
    of the components' own ``p'``-quantiles (of the live components). Components on axis 0
    of ``w, m, s``; any further axes are lanes, broadcast against ``p`` and ``mo``."""
    eps = float(jnp.finfo(m.dtype).eps)
    # Upper levels by reflection, q_p(m) = -q_{1-p}(-m): the search always works on a lower
    # tail, where F = sum w Phi keeps its relative precision (F near 1 would not).
    sign = jnp.where(p > 0.5, -1.0, 1.0).astype(m.dtype)
    p = jnp.where(p > 0.5, 1.0 - p, p)
    m = sign * m
    zp = ndtri(p)
    qk = m + s * zp
    live = w > eps * 1e-3
    lo = jnp.min(jnp.where(live, qk, jnp.inf), axis=0)
    hi = jnp.max(jnp.where(live, qk, -jnp.inf), axis=0)
    x_avg = jnp.sum(jnp.where(live, w * qk, 0.0), axis=0) / jnp.sum(jnp.where(live, w, 0.0), axis=0)
    return sign, p, m, _start_in(zp, sign, mo, x_avg, lo, hi), lo, hi


def _start_in(zp, sign, mo: _Moments, x_avg, lo, hi):
    """A quantile search's start in ``[lo, hi]``: Cornish-Fisher from the mixture's moments,
    or ``x_avg`` (the components' quantiles averaged) where the tails are heavy."""
    g1, g2 = sign * mo.skew, mo.exkurt
    z_cf = (
        zp
        + (zp * zp - 1.0) * g1 / 6.0
        + (zp**3 - 3.0 * zp) * g2 / 24.0
        - (2.0 * zp**3 - 5.0 * zp) * g1 * g1 / 36.0
    )
    x_cf = sign * mo.mean + mo.sd * z_cf
    # Cornish-Fisher is good for near-normal mixtures; with heavy tails (large grid
    # kurtosis) start from the weighted mean of the components' own quantiles instead.
    near_normal = (jnp.abs(g1) < 1.0) & (jnp.abs(g2) < 2.0) & jnp.isfinite(x_cf)
    return jnp.clip(jnp.where(near_normal, x_cf, x_avg), lo, hi)


def mixture_quantile(p, w, m, s, moments=None, coarse=None):
    r"""Solve ``F(q) = p`` for a normal mixture.

    Starts from the Cornish-Fisher expansion with the mixture's first four moments
    (near-normal mixtures) or the weighted mean of the components' quantiles (heavy
    tails); on the fast path Halley steps on the ``coarse`` mixtures (the nested
    quarter- and half-size rules) bring it to ~1e-6 sd of the root, and
    full Halley steps (cubic convergence; ``F' = f``, ``F'' = -sum w phi(t) t / s^2``)
    finish, kept inside the bracket ``[min_k q_k, max_k q_k]`` of the components'
    own ``p``-quantiles by bisection; levels above 1/2 are solved as the lower-tail
    quantile of the reflected mixture. Converged when ``|F(q) - p|`` is at round-off or
    a full step ``h`` from ``|F - p| <= 1e-3 min(p, 1 - p)`` leaves a residual
    ``f C |h|^3`` below ``2e-10 min(p, 1 - p)`` (``16 eps`` in float32), ``C h^3`` being
    Halley's error term: a quantile error of ~1e-10 sd. One fixed step first, a while
    loop for the stragglers.

    Args:
        p: level in (0, 1), scalar.
        w: weights summing to one, ``[K]``.
        m, s: component means and sds, ``[K]``.
        moments: precomputed :func:`_mixture_moments` (optional).
        coarse: stages ``(w_c, stride, steps)``: Halley steps on nested rules with
            weights ``w_c`` on the nodes ``::stride`` (see :func:`coarse_stages`).

    Returns:
        ``(q, converged)``.
    """
    dtype = m.dtype
    eps = float(jnp.finfo(dtype).eps)
    mo = _mixture_moments(w, m, s) if moments is None else moments
    sign, p, m, x, lo, hi = _quantile_start(p, w, m, s, mo)
    tol_f = 4.0 * eps  # |F - p| at round-off: q is within 4 eps / f of the root
    # After a Halley step h the error is C h^3, C = |F'''/(6F') - (F''/(2F'))^2|: its residual
    # f C |h|^3 below 2e-10 min(p, 1 - p) is ~1e-10 sd (docs/engine-checks.md).
    tol_res = jnp.maximum(16.0 * eps, _TOL_RES * jnp.minimum(p, 1.0 - p))
    inv_s = 1.0 / s

    # The coarse steps only start the search: in float64 their Phi and phi are evaluated
    # in float32 (the arguments and sums stay float64, so no offset or scale is lost).
    low = jnp.float32 if jnp.finfo(dtype).bits > 32 else None
    for w_c, stride, steps in coarse or ():
        m_c, inv_c = m[::stride], inv_s[::stride]
        for _ in range(steps):
            F, f, fp, _ = _halley_terms(x, p, w_c, m_c, inv_c, low)
            step = _halley_step(F, f, fp)
            x_c = jnp.clip(x - jnp.clip(step, -mo.sd, mo.sd), lo, hi)
            x = jnp.where(jnp.isfinite(x_c), x_c, x)

    def halley(state):
        i, x, lo, hi, done = state
        F, f, fp, fpp = _halley_terms(x, p, w, m, inv_s)
        lo = jnp.where(F < 0, x, lo)
        hi = jnp.where(F < 0, hi, x)
        step = _halley_step(F, f, fp)
        ok = (x - step > lo) & (x - step < hi) & jnp.isfinite(step)
        at_root = jnp.abs(F) <= tol_f
        x_new = jnp.where(at_root | done, x, jnp.where(ok, x - step, 0.5 * (lo + hi)))
        C = jnp.abs(fpp / (6.0 * f) - (fp / (2.0 * f)) ** 2)
        # The cubic error model holds near the root only, so the step must also start within
        # _NEAR p of the level (a far start stopped at a non-root: 92bc20f).
        small = (f * C * jnp.abs(step) ** 3 <= tol_res) & (jnp.abs(F) <= _NEAR * p)
        now = at_root | (ok & small) | (hi - lo <= 64.0 * eps * (jnp.abs(x) + 1.0 / f))
        return i + 1, x_new, lo, hi, done | now

    state = iterate(
        halley, (0, x, lo, hi, jnp.array(False)), fast_steps=_FAST_STEPS, max_iter=_MAX_ITER
    )
    return sign * state[1], state[4]


def quantile_error(q, levels, w, m, s, w_fine, m_fine, s_fine, scale, every_level=False):
    r"""Error estimate of mixture quantiles solved on the n-rule, in units of ``scale``.

    .. math::
        e_i = \frac{|F_{2n}(q_i) - p_i|}{f_n(q_i)\,\text{scale}},\qquad
        F_{2n}(q) = \sum_k w^{2n}_k \Phi\big((q - m^{2n}_k)/s^{2n}_k\big)

    the 2n-rule's CDF at the n-rule's quantile ``q_i`` (where ``F_n(q_i) = p_i``), turned
    into a quantile shift by the density. The grid's own nested-rule error checks the
    CDFs within two sds of the centre; far quantiles of heavy-tailed mixtures (mu and
    theta_new for J = 3 under a uniform prior: the 0.001 quantile sits thousands of sds
    out, where only the last few tau nodes contribute) need this direct check.

    Args:
        q: quantiles from the n-rule, ``[Q]``; levels: their levels ``p_i``, ``[Q]``.
        w, m, s: the n-rule's weights, means and sds, ``[K]``.
        w_fine, m_fine, s_fine: the 2n-rule's, ``[2n + 1]``.
        scale: the unit of the error (a typical component sd), scalar.
        every_level: static; False checks the lowest and the highest level only, for a
            mixture whose centre the grid's nested-rule error covers (mu, theta_new).

    Returns:
        ``max e_i`` over the levels checked, scalar (0 when ``Q = 0``).
    """

    def one(qq, p):
        t = (qq - m) / s
        f = jnp.sum(w * _INV_SQRT2PI * jnp.exp(-0.5 * t * t) / s)
        # the tail's own mass (the survival function above the median), as in the search
        sign = jnp.where(p > 0.5, -1.0, 1.0).astype(m.dtype)
        F = jnp.sum(w_fine * _Phi(sign * (qq - m_fine) / s_fine))
        return jnp.abs(F - jnp.where(p > 0.5, 1.0 - p, p)) / (f * scale)

    if levels.shape[0] == 0:
        return jnp.zeros((), m.dtype)
    if every_level:
        return jnp.max(jax.vmap(one)(q, levels))
    # the two outermost levels: F's quadrature error grows towards the tails, and the
    # nested-rule error already covers the centre
    ends = jnp.stack([jnp.argmin(levels), jnp.argmax(levels)])
    return jnp.max(jax.vmap(one)(q[ends], levels[ends]))


def component_above(m, s, threshold):
    r"""Each component's mass above the threshold, ``Phi((m_k - c) / s_k)``, shapes of ``m``."""
    return _Phi((m - threshold) / s)


def mixture_mean_var(w, m, v):
    """Mean and variance of ``sum_k w_k N(m_k, v_k)``, ``[K] -> ()``, summed about the
    heaviest component's mean: a mixture far from the origin in its own sds keeps its digits."""
    c = m[jnp.argmax(w)]
    d = m - c
    mean = jnp.sum(w * d)
    return c + mean, jnp.sum(w * v) + jnp.sum(w * (d - mean) ** 2)


def tau_mean_var(grid: TauGrid):
    """Mean and variance of ``p(tau | y)`` on the 2n-rule's nodes (scalars)."""
    w = jnp.exp(grid.log_weight_fine)
    mean = jnp.sum(w * grid.tau_fine)
    return mean, jnp.sum(w * (grid.tau_fine - mean) ** 2)


def mixture_summary(w, m, s, levels, threshold, mean_exists, sd_exists, coarse=None, above=None):
    r"""Summary of the normal mixture ``sum_k w_k N(m_k, s_k^2)``.

    .. math::
        P(\phi > c) = \sum_k w_k\, \Phi\big((m_k - c) / s_k\big)

    Args:
        w: weights, ``[K]``.
        m, s: component means and sds, ``[K]``.
        levels: quantile levels, ``[Q]``.
        threshold: ``c`` in ``P(phi > c)``, scalar (``0`` on the user's scale).
        mean_exists, sd_exists: scalar bools (see :class:`Marginal`).
        coarse: the nested rule's ``(weights, stride)`` for cheap first steps.
        above: ``Phi((m_k - c) / s_k)``, ``[K]``, when the caller has it already (the
            engine reuses it in its 2n-rule check); None computes it.

    Returns:
        ``(Marginal, quantiles_converged)`` with scalar fields and ``quantiles[Q]``.
    """
    # Solved relative to the heaviest component's mean c: a theta_j far from the origin
    # in its own sds keeps its digits; adding c back costs half an ulp.
    if above is None:
        above = component_above(m, s, threshold)
    p_gt = jnp.clip(jnp.sum(w * above), 0.0, 1.0)  # round-off can pass 1
    mean, var = mixture_mean_var(w, m, s * s)
    c = m[jnp.argmax(w)]
    m = m - c
    if levels.shape[0]:
        mo = _mixture_moments(w, m, s)
        q, conv = jax.vmap(lambda p: mixture_quantile(p, w, m, s, mo, coarse))(levels)
        q = c + q
    else:  # moments only
        q, conv = jnp.zeros((0,), m.dtype), jnp.array(True)
    mean = jnp.where(mean_exists, mean, jnp.nan)
    sd = jnp.where(sd_exists, jnp.sqrt(var), jnp.inf)
    return Marginal(mean, sd, q, p_gt, mean_exists, sd_exists), jnp.all(conv)


def coarse_weights(grid: TauGrid, stride: int = 4, steps: int = 1):
    """Normalised weights of the nested Clenshaw-Curtis rule on every ``stride``-th node
    of the n-rule (a cheap approximation of the mixtures for starting points), as a
    stage ``(weights, stride, steps)`` of :func:`mixture_quantile`."""
    n = grid.tau.shape[0] - 1
    _, w = clenshaw_curtis(n // stride)
    wc = jnp.asarray(w, grid.density_z.dtype) * grid.density_z[:: 2 * stride]
    return wc / jnp.sum(wc), stride, steps


def coarse_stages(grid: TauGrid):
    """The nested rules that start the mixture quantile searches: ``_COARSE_STEPS`` Halley
    steps on the ~17-node rule, then (float64's 65-node rule) one on the 33-node rule.
    The 17-node rule's quantiles can be 1e-2 sd off in the tails, the 33-node rule's
    ~1e-6 sd: close enough that one full-rule Halley step (error ~ C h^3) nearly always
    meets the ~1e-10 sd tolerance of :func:`mixture_quantile`."""
    n = grid.tau.shape[0] - 1
    if n >= 64 and n % 8 == 0:
        return (coarse_weights(grid, 4, _COARSE_STEPS), coarse_weights(grid, 2, _MEDIUM_STEPS))
    if n % 4 == 0:
        return (coarse_weights(grid, 2, _COARSE_STEPS),)
    return ()


def _barycentric(z, nodes, lam, values):
    """Barycentric interpolation of ``values [V, N+1]`` at Chebyshev points ``nodes``
    (sums, not a matmul: the result must not depend on how many lanes XLA vectorises
    together, so that exact draws are bitwise reproducible)."""
    d = z - nodes
    d = jnp.where(d == 0, jnp.finfo(d.dtype).tiny, d)
    c = lam / d
    return jnp.sum(values * c, axis=-1) / jnp.sum(c)


class TauCdf(NamedTuple):
    """The tau CDF from both ends at the 2n-rule's nodes (:func:`tau_cdf_nodes`).

    Attributes:
        lower: ``F(tau_k) = P(tau <= tau_k | y)``, ``[2n + 1]``.
        upper: ``S(tau_k) = P(tau > tau_k | y)``, ``[2n + 1]``.
        lam: barycentric weights of the nodes, ``[2n + 1]``.
    """

    lower: jnp.ndarray
    upper: jnp.ndarray
    lam: jnp.ndarray


@functools.cache
def _barycentric_weights(N: int):
    """Barycentric weights of the ``N + 1`` CC nodes: ``(-1)^k``, halved at the ends."""
    lam = np.where(np.arange(N + 1) % 2 == 0, 1.0, -1.0)
    lam[0] *= 0.5
    lam[-1] *= 0.5
    return lam


def tau_cdf_nodes(grid: TauGrid) -> TauCdf:
    r"""The tau CDF ``F`` and survival function ``S = 1 - F`` at the 2n-rule's nodes: the
    exact integrals of the density's Chebyshev interpolant from each end
    (:func:`hierjax.numerics.quadrature.integration_matrices`), and the barycentric weights (sums,
    not matmuls, as in :func:`_barycentric`).

    .. math::
        F(z_k) = \sum_j L_{kj}\, p(z_j \mid y),\qquad S(z_k) = \sum_j U_{kj}\, p(z_j \mid y)

    ``S`` is accurate relative to itself in tau's upper tail, where ``1 - F`` is not: in
    float32 a uniform prior with J = 2 (``p(tau | y) ~ tau^-2``) put the 0.975 quantile
    2.4e-4 of an interquartile range off through ``1 - F``.
    """
    N = grid.density_z.shape[0] - 1
    dtype = grid.density_z.dtype
    L, U = (jnp.asarray(a, dtype) for a in integration_matrices(N))
    # matrix products, not broadcast sums: XLA's CPU code for the sums, vmapped over 512
    # datasets and fused with their users, gave the last lanes wrong values (float32)
    return TauCdf(
        jnp.dot(L, grid.density_z, precision="highest"),
        jnp.dot(U, grid.density_z, precision="highest"),
        jnp.asarray(_barycentric_weights(N), dtype),
    )


def _between_nodes(target, G_nodes, nodes):
    """``z`` where ``G`` (increasing in ``z``; ``G_nodes`` at the decreasing ``nodes``)
    reaches ``target``, by linear interpolation between the nodes that bracket it."""
    z_inc, G_inc = nodes[::-1], G_nodes[::-1]
    j = jnp.clip(jnp.searchsorted(G_inc, target), 1, z_inc.shape[0] - 1)
    t = jnp.clip((target - G_inc[j - 1]) / (G_inc[j] - G_inc[j - 1]), 0.0, 1.0)
    return z_inc[j - 1] + t * (z_inc[j] - z_inc[j - 1])


def _dtau_dz(z, grid: TauGrid):
    """``(tau, dtau/dz)`` of the grid's map at ``z``: ``x = x0 + kappa logit(u)``, ``u``
    affine in ``z``, so ``dtau/dz = tau kappa (width / 2) (1/u + 1/(1 - u))``."""
    tau, _, u, omu = grid_tau_of_z(z, grid.x0, grid.u_lo, grid.one_minus_u_hi, grid.kappa)
    width = 1.0 - grid.u_lo - grid.one_minus_u_hi
    return tau, tau * grid.kappa * 0.5 * width * (1.0 / u + 1.0 / omu)


def tau_quantile_error(q, levels, grid: TauGrid, cdf: TauCdf, alpha, unit):
    r"""What round-off and the cut-off tail may move tau's quantiles by, in ``unit``.

    At ``z_q`` (the quantile in the grid's ``z``), with ``G`` the CDF ``F`` (``p <= 1/2``)
    or the survival function ``S`` (``p > 1/2``) and ``c_k = lam_k / (z_q - z_k)``:

    .. math::
        \delta\tau = \frac{\delta G}{p(\tau_q \mid y)},\quad
        \delta G_{\rm round} = \epsilon\,\frac{\sum_k |c_k G_k|}{|\sum_k c_k|}
            + (r + 8\epsilon)\, G,\quad
        \delta G_{\rm cut} = \frac{p(x_c \mid y)}{\alpha}\;(p > 1/2)

    The first term bounds the round-off of the barycentric sum (absolute, so it grows
    against ``S`` far out in a heavy tail: float32's 0.999 quantile of tau with J = 3
    under a uniform prior is ~1e-5 relative, 4e-3 of an IQR), the second the node
    values' own (``r``: :attr:`TauGrid.roundoff`). ``x_c`` is the grid's right end,
    beyond which the density of ``x = log tau`` falls at least like ``e^{-alpha x}``.
    The nodes' own error is the grid's (the nested rules of the mixtures).

    Args:
        q: tau's quantiles, ``[Q]``; levels: ``[Q]``.
        grid, cdf: the dataset's TauGrid and :func:`tau_cdf_nodes`.
        alpha: tail exponent (:func:`hierjax.inference.grid.tail_alpha`), scalar.
        unit: tau's sd, or a rough IQR where it does not exist, scalar.

    Returns:
        ``(round_off, cut)``: the largest of each over the levels, scalars.
    """
    dtype = grid.tau.dtype
    eps = float(jnp.finfo(dtype).eps)
    nodes = jnp.asarray(clenshaw_curtis(cdf.lower.shape[0] - 1)[0], dtype)
    # the density of x beyond the right end: p(z = 1) / (dx/dz at z = 1), falling like
    # e^{-alpha x} or faster
    tau_end, dtau_end = _dtau_dz(jnp.ones((), dtype), grid)
    cut_mass = grid.density_z[0] * tau_end / dtau_end / jnp.maximum(alpha, 0.25)

    def one(qq, p):
        z = jnp.clip(
            grid_z_of_tau(qq, grid.x0, grid.u_lo, grid.one_minus_u_hi, grid.kappa), -1.0, 1.0
        )
        upper = p > 0.5
        G_nodes = jnp.where(upper, cdf.upper, cdf.lower)
        d = z - nodes
        c = cdf.lam / jnp.where(d == 0, jnp.finfo(dtype).tiny, d)
        sum_c = jnp.sum(c)
        density = jnp.sum(c * grid.density_z) / sum_c  # p(z_q | y)
        G = jnp.where(upper, 1.0 - p, p)
        round_off = (
            eps * jnp.sum(jnp.abs(c * G_nodes)) / jnp.abs(sum_c) + (grid.roundoff + 8.0 * eps) * G
        )
        cut = jnp.where(upper, cut_mass, 0.0)
        _, dtau = _dtau_dz(z, grid)
        per_unit = dtau / (density * unit)
        return round_off * per_unit, cut * per_unit

    r, c = jax.vmap(one)(q, levels)
    # a nan estimate is no evidence of accuracy
    return (jnp.where(jnp.isnan(r), jnp.inf, r).max(), jnp.where(jnp.isnan(c), jnp.inf, c).max())


def tau_quantile(p, grid: TauGrid, cdf: TauCdf, fast_steps: int = _TAU_FAST_STEPS):
    """Solve ``F(tau) = p`` (``p <= 1/2``) or ``S(tau) = 1 - p`` (``p > 1/2``, the tail's
    own accuracy): Newton in ``z`` on the barycentric interpolants of the CDF (or survival
    function) and density through the 2n-rule's nodes (:func:`tau_cdf_nodes`), safeguarded
    by bisection in ``[-1, 1]`` and started by linear interpolation between the nodes whose
    values bracket the target. Stops when the residual is below ``4 eps`` of the target, a
    Newton step is below ``1e-2 sqrt(eps)`` (quadratic convergence: the next is below eps)
    or the bracket is below ``64 eps``. ``fast_steps`` fixed steps, then a while loop.

    Returns:
        ``(tau, converged)``.
    """
    dtype = grid.tau.dtype
    eps = float(jnp.finfo(dtype).eps)
    nodes = jnp.asarray(clenshaw_curtis(cdf.lower.shape[0] - 1)[0], dtype)
    # G increases with z: F below the median, -S above it; solve G(z) = target
    upper = p > 0.5
    target = jnp.where(upper, p - 1.0, p)
    G_nodes = jnp.where(upper, -cdf.upper, cdf.lower)
    values = jnp.stack([G_nodes, grid.density_z])
    z0 = _between_nodes(target, G_nodes, nodes)
    tol = 4.0 * eps * jnp.abs(target)

    def newton(state):
        i, z, lo, hi, done = state
        G, f = _barycentric(z, nodes, cdf.lam, values)
        G = G - target
        lo = jnp.where(G < 0, z, lo)
        hi = jnp.where(G < 0, hi, z)
        step = G / f
        ok = (f > 0) & (z - step > lo) & (z - step < hi)
        at_root = jnp.abs(G) <= tol
        z_new = jnp.where(at_root | done, z, jnp.where(ok, z - step, 0.5 * (lo + hi)))
        now = at_root | (ok & (jnp.abs(step) <= 1e-2 * eps**0.5)) | (hi - lo <= 64.0 * eps)
        return i + 1, z_new, lo, hi, done | now

    one = jnp.ones((), dtype)
    state = iterate(
        newton, (0, z0, -one, one, jnp.array(False)), fast_steps=fast_steps, max_iter=_MAX_ITER
    )
    tau, _, _, _ = grid_tau_of_z(state[1], grid.x0, grid.u_lo, grid.one_minus_u_hi, grid.kappa)
    return tau, state[4]


def tau_summary(grid: TauGrid, levels, mean_exists, sd_exists, alpha=None):
    """Summary of ``p(tau | y)`` from the 2n-rule: moments on its nodes, quantiles from the
    Chebyshev CDF (the exact integral of the density's interpolant).

    Args:
        grid: the dataset's TauGrid; levels: ``[Q]``.
        mean_exists, sd_exists: whether tau's mean and sd exist, scalar bools.
        alpha: tail exponent (:func:`hierjax.inference.grid.tail_alpha`) for the quantiles' error
            estimates (:func:`tau_quantile_error`); None skips them (zeros).

    Returns:
        ``(Marginal, quantiles_converged, (round_off, cut))``; ``p_gt0`` is 1 (tau > 0
        almost surely); ``round_off`` and ``cut`` in tau's sds (a rough IQR where the sd
        does not exist).
    """
    dtype = grid.tau.dtype
    mean, var = tau_mean_var(grid)
    zero = jnp.zeros((), dtype)
    errors = (zero, zero)
    if levels.shape[0]:
        cdf = tau_cdf_nodes(grid)
        q, conv = jax.vmap(lambda p: tau_quantile(p, grid, cdf))(levels)
        if alpha is not None:
            nodes = jnp.asarray(clenshaw_curtis(cdf.lower.shape[0] - 1)[0], dtype)
            z_lo = _between_nodes(0.25, cdf.lower, nodes)
            z_hi = _between_nodes(-0.25, -cdf.upper, nodes)
            iqr = (
                grid_tau_of_z(z_hi, grid.x0, grid.u_lo, grid.one_minus_u_hi, grid.kappa)[0]
                - grid_tau_of_z(z_lo, grid.x0, grid.u_lo, grid.one_minus_u_hi, grid.kappa)[0]
            )
            unit = jnp.where(sd_exists, jnp.sqrt(var), iqr)
            errors = tau_quantile_error(q, levels, grid, cdf, alpha, unit)
    else:  # moments only
        q, conv = jnp.zeros((0,), dtype), jnp.array(True)
    mean = jnp.where(mean_exists, mean, jnp.inf)
    sd = jnp.where(sd_exists, jnp.sqrt(var), jnp.inf)
    one = jnp.ones((), dtype)
    return Marginal(mean, sd, q, one, mean_exists, sd_exists), jnp.all(conv), errors


def tau_mode(grid: TauGrid, log_density_tau):
    r"""The posterior mode of tau, ``argmax_{tau >= 0} log p(tau) + log p(y | tau)``.

    The best node of the grid's 2n-rule is refined by safeguarded Newton in ``x = log tau``
    between its neighbours, then compared with ``tau = 0`` itself (the mode is 0 when
    ``p(tau | y)`` is largest there, as for the eight schools under a uniform prior).

    Args:
        grid: the dataset's TauGrid.
        log_density_tau: ``tau -> log p(tau) + log p(y | tau)`` (scalar function).

    Returns:
        ``(mode, converged)``.
    """
    # the best of the 2n-rule's nodes, where the grid has evaluated log p(tau) + log p(y |
    # tau); its value again by log_density_tau, which the comparisons below all use
    g_fine = jnp.where(jnp.isnan(grid.log_joint_fine), -jnp.inf, grid.log_joint_fine)
    k = jnp.argmax(g_fine)
    x = jnp.log(grid.tau_fine)
    K = x.shape[0]
    # nodes run from large tau (k = 0) to small tau (k = K - 1)
    hi = jnp.where(k > 0, x[jnp.maximum(k - 1, 0)], x[k] + 1.0)
    lo = jnp.where(k < K - 1, x[jnp.minimum(k + 1, K - 1)], x[k] - 30.0)

    def g(xx):
        return log_density_tau(jnp.exp(xx))

    eps = float(jnp.finfo(x.dtype).eps)
    g_zero = log_density_tau(jnp.zeros((), x.dtype))
    g_k = g(x[k])

    def zero_wins(g_best):
        # tau = 0 wins ties at round-off: p(tau | y) is flat to machine precision there.
        return g_zero >= g_best - 64.0 * eps * (1.0 + jnp.abs(g_best))

    # When tau = 0 beats every node the mode is 0 with no search: bisecting down the plateau
    # towards x = -inf would hold every lane's while loop. A maximiser is only ~sqrt(eps).
    xx, conv = maximize(
        g,
        x[k],
        lo,
        hi,
        4.0 * eps**0.5 * (1.0 + jnp.abs(x[k])),
        fast_steps=_MODE_FAST_STEPS,
        done=zero_wins(g_k),
    )
    g_xx = g(xx)
    g_inner = jnp.maximum(g_xx, g_k)
    # Newton's root of g' is kept unless lower than the node beyond round-off (near the
    # mode the two tie to round-off, and the node is the worse answer: a7c1012)
    x_best = jnp.where(g_xx >= g_k - 64.0 * eps * (1.0 + jnp.abs(g_k)), xx, x[k])
    at_zero = zero_wins(g_inner)
    return jnp.where(at_zero, 0.0, jnp.exp(x_best)), conv | at_zero
