r"""The per-dataset tau grid: where ``p(tau | y)`` lives and how to integrate over it.

The posterior of ``x = log tau``,

.. math::
    h(x) = \log p(\tau) + \log p(y \mid \tau) + x, \qquad \tau = e^x,

is smooth on the whole line and decays exponentially at both ends: like
``e^{(1+b)x}`` as ``tau -> 0`` for a prior ``p(tau) ~ tau^b`` (so ``tau = 0`` is the
limit ``x -> -inf``, included, not cut off) and like ``e^{-alpha x}`` as
``tau -> inf`` with ``alpha = J - 2 + c`` for a flat mu prior (``J - 1 + c`` for a
normal one; ``c`` is the prior's tail power). The grid for one dataset is built in
four steps, all inside ``jit`` with fixed work:

1. **Locate**: the maximum of ``h`` over a coarse scout grid, refined by
   safeguarded Newton (``jax.grad``) inside the scout bracket: mode ``x0`` and
   curvature width ``w = (-h''(x0))^{-1/2}``.
2. **Extent**: on each side, doubling then bisection for the distance where ``h``
   has fallen ``D = 0.8 log(1/eps) + 2`` below its peak (``eps`` of the dtype), so
   what is left out is negligible. Needle-sharp posteriors (``J = 3000``) get
   a narrow interval, heavy tails (``J = 3``, uniform prior) a long one.
3. **Map**: ``x = x0 + kappa * logit(u)`` with ``kappa = 2``, ``u`` on the extent's
   interval. A tail ``e^{-alpha x}`` becomes ``(1-u)^{2 alpha - 1}``, a polynomial for
   integer ``alpha``, so the compactified integrand stays smooth, and features far
   out in ``x`` (a group whose ``sigma_j`` is 1e6 times another's) keep room. A
   fractional tail whose moment integrand ``tau^k p(tau | y)`` would be unbounded at
   ``u = 1`` gets a wider stretch (:func:`_tail_kappa`).
4. **Integrate**: Clenshaw-Curtis in ``z in [-1, 1]`` (``u`` affine in ``z``) with
   ``2n + 1`` nodes for tau itself; the nested ``n``-rule on every other node carries
   the normal mixtures of mu and theta (half the work), and its difference from the
   ``2n``-rule is its error estimate.

Everything is in log space; weights are normalised with ``logsumexp``. The fast grid of
a moments-only fit skips steps 1 and 2: it centres its map on the data's spread and
spans the dtype's whole range of tau (``locate=False``, :func:`_whole_line`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import erfc, logsumexp

from hierjax.model.conditionals import MuGivenTau, mu_given_tau, mu_given_tau_near, reference_point
from hierjax.model.priors import MuPrior, NormalMu, TauPrior
from hierjax.numerics.quadrature import chebyshev_matrix, clenshaw_curtis
from hierjax.numerics.solvers import iterate, maximize

__all__ = [
    "TauGrid",
    "tau_grid",
    "tail_alpha",
    "log_posterior_x",
    "default_nodes",
    "grid_tau_of_z",
    "grid_z_of_tau",
    "KAPPA",
    "TAIL_LEVEL",
    "FAST_KAPPA",
    "fast_nodes",
    "general_kappa",
]

KAPPA = 2.0  # x = x0 + KAPPA * logit(u)
_SCOUT = 17  # scout points
_SCOUT_HALF = 14.0  # scout covers x0_guess +- 14 (tau over ~12 orders of magnitude)
_NEWTON_FAST = 8
_DOUBLINGS_FAST = 6
_BISECTIONS = 5


def general_kappa(origin_power) -> float:
    r"""The general grid's stretch for a prior with ``p(tau) ~ tau^b`` as ``tau -> 0``.

    Under ``x = x0 + kappa logit(u)`` the posterior of ``x`` starts like ``e^{(1+b)x}``,
    which is ``u^{kappa (1 + b) - 1}`` in ``u``: a polynomial (smooth for Clenshaw-Curtis)
    when ``kappa (1 + b)`` is a positive integer. ``KAPPA = 2`` gives that for every
    ``b`` in ``{-1/2, 0, 1/2, 1, ...}``; any other ``b > -1`` (a user's Gamma(0.3) prior,
    ``tau^-0.7``) gets the least stretch above ``KAPPA`` that does,
    ``kappa = ceil(2 (1 + b)) / (1 + b)``. ``b`` None (unknown), ``inf`` or ``<= -1``
    (improper, refused on the host): ``KAPPA``.
    """
    if origin_power is None or not math.isfinite(origin_power) or origin_power <= -1:
        return KAPPA
    e = KAPPA * (1.0 + origin_power)
    if abs(e - round(e)) < 1e-6:
        return KAPPA
    return math.ceil(e) / (1.0 + origin_power)


#: The largest stretch :func:`_tail_kappa` gives (a moment integrand decaying like
#: ``tau^{-1 - 1/8}`` or slower is left to the checks).
_KAPPA_MAX = 8.0


def _tail_kappa(kappa, alpha):
    r"""The general grid's stretch, widened where a reported moment's integrand has a
    heavy right tail.

    The slowest reported integrand, ``tau^k p(tau | y)`` with ``k`` the highest moment
    that exists (``k < alpha``), decays like ``e^{-a x}``, ``a = alpha - k``, which is
    ``(1 - u)^{kappa a - 1}`` in ``u``: unbounded at ``u = 1`` when ``kappa a < 1``
    (half-t(0.3) with J = 3: ``a = 0.3``, ``(1 - u)^{-0.4}`` under ``kappa = 2``, and
    tau's sd came out 6710 against quad's 19.44, flagged). There the stretch becomes
    ``1 / a`` (a bounded integrand, constant at ``u = 1``), at most :data:`_KAPPA_MAX`;
    elsewhere (every integer tail power: uniform, half-Cauchy, half-t with integer nu)
    it stays ``kappa``.

    Args:
        kappa: the stretch the prior's origin asks for (:func:`general_kappa`), float.
        alpha: :func:`tail_alpha` of the dataset, scalar.

    Returns:
        The stretch, scalar.
    """
    k_mom = jnp.where(alpha > 2.0, 2.0, jnp.where(alpha > 1.0, 1.0, 0.0))
    a = alpha - k_mom
    return jnp.where(kappa * a < 1.0, jnp.clip(1.0 / a, kappa, _KAPPA_MAX), kappa)


def default_nodes(dtype) -> int:
    """Clenshaw-Curtis ``n`` (``n + 1`` nodes) for the dtype's accuracy goal.

    64 in float64 (posterior means within ~1e-9 sd of quadrature references on
    simulated and published data), 32 in float32.
    """
    return 64 if jnp.finfo(dtype).bits > 32 else 32


#: The fast grid's map stretch: ``x = x0 + logit(u)`` (see :func:`fast_nodes`).
FAST_KAPPA = 1.0


def fast_nodes(dtype, whole_line: bool = False) -> int:
    """Clenshaw-Curtis ``n`` of the fast grid (``kappa = 1``) that :func:`hierjax.fit` tries
    first: 32 in float64, 16 in float32, half of :func:`default_nodes`.

    On the whole-line map of a moments-only fit (``whole_line``, :func:`_whole_line`)
    float64 takes 36: on simulated eight-school batches (J = 8, B = 1e5) that sends 2.6%
    of the datasets on to the general grid instead of 8.8%, for ~6% more datasets per
    second end to end. float32 keeps 16.

    With ``kappa = 1`` the map ``u = tau / (tau + c)`` (at ``c = e^{x0}``) turns the
    likelihood's algebraic tail into a polynomial in ``u`` of half the degree ``kappa = 2``
    gives, so half the nodes reach the same accuracy where the posterior's features sit
    near its mode (eight-schools-like data). A feature far out (a heavy tail with few
    groups; one ``sigma_j`` 1e6 times another) gets fewer nodes than under ``kappa = 2``;
    such datasets fail the error estimates and are fitted again on the general grid.
    """
    half = default_nodes(dtype) // 2
    return half + 4 if whole_line and jnp.finfo(dtype).bits > 32 else half


class TauGrid(NamedTuple):
    """The tau quadrature grid of one dataset: the ``n``-rule (``K = n + 1`` nodes) for the
    normal mixtures, and the nested ``2n``-rule (``2n + 1`` nodes) for tau itself.

    Attributes:
        tau: nodes ``tau_k`` of the n-rule, ``[K]``.
        log_weight: normalised log weights of the n-rule, ``[K]``;
            ``E[g(tau) | y] ~= sum_k exp(log_weight_k) g(tau_k)``.
        mu: ``mu | tau_k, y`` and ``log p(y | tau_k)`` at the n-rule's nodes (fields ``[K]``).
        mu_fine: the same at the 2n-rule's nodes (fields ``[2n + 1]``; its even nodes are ``mu``).
        tau_fine: nodes of the 2n-rule (its even nodes are ``tau``), ``[2n + 1]``.
        log_weight_fine: normalised log weights of the 2n-rule, ``[2n + 1]``.
        log_joint_fine: ``log p(tau) + log p(y | tau)`` (unnormalised) at the 2n-rule's
            nodes, ``[2n + 1]``.
        density_z: normalised posterior density in ``z`` at the 2n-rule's nodes,
            ``[2n + 1]`` (its Chebyshev interpolant gives the tau CDF anywhere).
        log_evidence: ``log int p(tau) p(y | tau) dtau`` (2n-rule), scalar.
        error: the n-rule's error against the 2n-rule: the largest change of the CDFs
            of mu and theta_new at their centre and +-2 typical sds, scalar.
        truncated: ``True`` if the tail beyond the representable range of the dtype
            still carries non-negligible mass, scalar bool.
        converged: both extents were found within the iteration limit, scalar bool.
        roundoff: estimated round-off of ``log p(y | tau)`` differences, ``eps sum_j
            (|log v_j| + r_j^2 / v_j + 1)``, scalar.
        x0: centre of the map, scalar.
        kappa: the map's stretch (``x = x0 + kappa logit(u)``), scalar.
        u_lo: lower end of the ``u`` interval, scalar.
        one_minus_u_hi: ``1 - u_hi`` (kept separately for precision), scalar.
    """

    tau: jnp.ndarray
    log_weight: jnp.ndarray
    mu: MuGivenTau
    mu_fine: MuGivenTau
    tau_fine: jnp.ndarray
    log_weight_fine: jnp.ndarray
    log_joint_fine: jnp.ndarray
    density_z: jnp.ndarray
    log_evidence: jnp.ndarray
    error: jnp.ndarray
    truncated: jnp.ndarray
    converged: jnp.ndarray
    roundoff: jnp.ndarray
    x0: jnp.ndarray
    kappa: jnp.ndarray
    u_lo: jnp.ndarray
    one_minus_u_hi: jnp.ndarray


def tail_alpha(n_groups, tau_prior: TauPrior, mu_prior: MuPrior):
    r"""``alpha`` with ``p(tau | y) ~ tau^{-(alpha + 1)}``: ``E[tau^k | y]`` exists iff ``alpha > k``.

    ``alpha = J - 2 + c`` for a flat mu prior and ``J - 1 + c`` for a normal one, where
    ``p(tau) ~ tau^{-c}`` (BDA3 eq. 5.21: ``p(y | tau) ~ tau^{-(J-1)}`` with flat mu).
    """
    base = 1.0 if isinstance(mu_prior, NormalMu) else 2.0
    return n_groups - base + tau_prior.tail_power


def log_posterior_x(x, y, sigma2, mask, tau_prior: TauPrior, mu_prior: MuPrior):
    r"""``h(x) = log p(tau) + log p(y | tau) + x`` at ``tau = e^x`` (unnormalised), scalar."""
    tau = jnp.exp(x)
    lik = mu_given_tau(tau * tau, y, sigma2, mask, mu_prior).log_lik
    return tau_prior.log_density(tau) + lik + x


def _x_limits(dtype):
    """The range of ``x`` where ``tau^2 = e^{2x}`` stays normal and finite."""
    fi = jnp.finfo(dtype)
    return 0.45 * math.log(float(fi.tiny)), 0.45 * math.log(float(fi.max))


def _drop(dtype) -> float:
    """``D``: a fall in log density beyond which the tail mass is negligible.

    ``0.8 log(1/eps) + 2`` (29 in float64, 15 in float32): the tails left out
    weigh ~1e-13 (float64); cutting deeper only spends nodes on a plateau
    (``p(y | tau)`` flattens as ``tau -> 0``) that holds no mass.
    """
    return 0.8 * math.log(1.0 / float(jnp.finfo(dtype).eps)) + 2.0


#: The upper-tail mass down to which the grid keeps p(tau | y)'s right tail accurate for
#: quantiles (and what inherits it: mu's under a flat prior, theta_new's): the 0.999 levels.
TAIL_LEVEL = 1e-3


def _tail_drop(dtype, alpha, width, tail):
    r"""``D`` for the right tail: cutting ``p(x | y)`` where ``h`` has fallen ``D`` below its
    peak moves the ``1 - tail`` quantile by at most ``1e-2 sqrt(eps)`` of an IQR.

    Beyond the cut the density of ``x = log tau`` falls like ``e^{-alpha x}`` from
    ``p(x_0) e^{-D}``, with ``p(x_0) ~ 1 / (sqrt(2 pi) w)``, so the mass left out is
    ``T ~ p(x_0) e^{-D} / alpha``. Where ``S(q) = tail`` and ``S ~ q^{-alpha}`` that
    moves ``q`` by ``dq / q = T / (alpha tail)``, and ``q / IQR <= 2 (0.25 / tail)^{1/alpha}``:

    .. math::
        D = \log\frac{200\, p(x_0)}{\alpha^2 \sqrt{\epsilon}} + \log\frac{1}{tail}
            + \frac{1}{\alpha}\log\frac{0.25}{tail}

    A heavy tail needs more than :func:`_drop`: uniform tau with J = 3 and a flat mu
    (``alpha = 1``) puts the 0.999 quantile ~1e5 e^{-D} IQR off, 4e-9 in float64 at
    ``D = 30.8`` and 3e-2 in float32 at ``D = 14.7``; this gives 34.8 and 24.8. Light
    tails (``alpha >= 2`` in float64) keep :func:`_drop`.
    """
    alpha = jnp.maximum(alpha, 0.25)
    peak = 1.0 / (math.sqrt(2.0 * math.pi) * width)
    eps = float(jnp.finfo(dtype).eps)
    return (
        jnp.log(200.0 * peak / (alpha * alpha * math.sqrt(eps)))
        - jnp.log(tail)
        + jnp.log(0.25 / tail) / alpha
    )


def _extent(h, x0, h0, width, limit, drop, sign, slope=0.0, drop_flat=None):
    """Distance from ``x0`` (towards ``sign``) where ``h`` falls ``drop`` below ``h0``;
    with a ``slope``, where ``h(x) + slope |x - x0|`` does (the integrand ``tau^k p``
    of a moment, ``k = slope``), and, given ``drop_flat``, no nearer than where ``h``
    itself falls that much (the density, for quantiles): each test on the one ``h``.

    Doubling from the Laplace guess ``sqrt(2 drop) * width``, then bisection.
    Returns ``(distance, reached, converged)``; ``reached`` is False when ``h`` is
    still above ``h0 - drop`` at ``limit`` (mass beyond the dtype's range of tau),
    ``converged`` False when the fast path ran out of doublings.
    """
    dtype = x0.dtype
    most = drop if drop_flat is None else jnp.maximum(drop, drop_flat)
    start = jnp.minimum(jnp.sqrt(2.0 * most) * width, limit)

    def above(a):
        ha = h(x0 + sign * a)
        out = ha + slope * a > h0 - drop
        return out if drop_flat is None else out | (ha > h0 - drop_flat)

    def grow(state):
        i, lo, a, done = state
        go = ~done & above(a) & (a < limit)
        return (i + 1, jnp.where(go, a, lo), jnp.where(go, jnp.minimum(2.0 * a, limit), a), ~go)

    zero = jnp.zeros((), dtype)
    _, lo, a, grown = iterate(
        grow, (0, zero, start, jnp.array(False)), fast_steps=_DOUBLINGS_FAST, max_iter=64
    )
    reached = ~above(a)

    def bisect(_, state):
        lo, a = state
        mid = 0.5 * (lo + a)
        out = above(mid)
        return jnp.where(out, mid, lo), jnp.where(out, a, mid)

    _, a = jax.lax.fori_loop(0, _BISECTIONS, bisect, (lo, a), unroll=True)
    return a, reached, grown | ~reached


def grid_tau_of_z(z, x0, u_lo, one_minus_u_hi, kappa=KAPPA):
    """Map ``z in [-1, 1]`` to ``(tau, x, u, 1 - u)`` (``u`` and ``1 - u`` each to full precision)."""
    width = 1.0 - u_lo - one_minus_u_hi
    u = u_lo + width * 0.5 * (1.0 + z)
    omu = one_minus_u_hi + width * 0.5 * (1.0 - z)
    x = x0 + kappa * (jnp.log(u) - jnp.log(omu))
    return jnp.exp(x), x, u, omu


def grid_z_of_tau(tau, x0, u_lo, one_minus_u_hi, kappa=KAPPA):
    """The inverse of :func:`grid_tau_of_z`: ``z`` of ``tau > 0`` (outside ``[-1, 1]`` beyond
    the grid's ends), each side from its own end of ``u`` for precision."""
    a = (jnp.log(tau) - x0) / kappa
    u, omu = jax.nn.sigmoid(a), jax.nn.sigmoid(-a)
    width = 1.0 - u_lo - one_minus_u_hi
    return jnp.where(
        u < 0.5, 2.0 * (u - u_lo) / width - 1.0, 1.0 - 2.0 * (omu - one_minus_u_hi) / width
    )


def _spread(y, mask):
    """``(J, (1/J) sum_j (y_j - ybar)^2)`` over the real groups (``J >= 1``), scalars."""
    n_obs = jnp.maximum(jnp.sum(mask), 1)
    ybar = jnp.sum(jnp.where(mask, y, 0.0)) / n_obs
    return n_obs, jnp.sum(jnp.where(mask, (y - ybar) ** 2, 0.0)) / n_obs


def _locate(h, y, mask, tau_prior: TauPrior, mu_prior: MuPrior, kappa: float, tail):
    """Steps 1-3 of the module doc: the map ``x = x0 + kappa logit(u)`` on ``[u_lo, u_hi]``.

    Returns:
        ``(x0, u_lo, 1 - u_hi, truncated, converged)``, scalars.
    """
    dtype = y.dtype
    x_min, x_max = _x_limits(dtype)
    drop = _drop(dtype)
    # 1. Locate: scout grid around the data's spread, then Newton inside the bracket.
    _, spread = _spread(y, mask)
    centre = 0.5 * jnp.log(spread + 1e-2)
    scout = centre + jnp.linspace(-_SCOUT_HALF, _SCOUT_HALF, _SCOUT, dtype=dtype)
    h_scout = jax.vmap(h)(scout)
    h_scout = jnp.where(jnp.isnan(h_scout), -jnp.inf, h_scout)
    i = jnp.argmax(h_scout)
    step = scout[1] - scout[0]
    lo = jnp.where(i > 0, scout[i] - step, x_min)
    hi = jnp.where(i < _SCOUT - 1, scout[i] + step, x_max)
    # x0 only centres the map: a coarse tolerance is enough.
    x0, _ = maximize(h, scout[i], lo, hi, 1e-3, fast_steps=_NEWTON_FAST)
    h0 = h(x0)
    curv = jax.grad(jax.grad(h))(x0)
    width = jnp.where(curv < 0, jax.lax.rsqrt(jnp.maximum(-curv, 1e-30)), 1.0)
    width = jnp.clip(width, 1e-6, 10.0)

    # 2. Extent on each side. On the right the integrands of the reported moments,
    # tau^k p(tau | y) with k = 1, 2 where E[tau^k] exists, decay more slowly than the
    # density itself: follow the slowest of them.
    alpha = tail_alpha(jnp.sum(mask).astype(dtype), tau_prior, mu_prior)
    # The density itself must fall further where a far upper quantile is asked for (a
    # heavy tail, _tail_drop), but not the moment integrands: each has its own test.
    k_mom = jnp.where(alpha > 2.0, 2.0, jnp.where(alpha > 1.0, 1.0, 0.0))
    right, ok_right, conv_right = _extent(
        h, x0, h0, width, x_max - x0, drop, 1.0, k_mom, _tail_drop(dtype, alpha, width, tail)
    )
    left, ok_left, conv_left = _extent(h, x0, h0, width, x0 - x_min, drop, -1.0)

    # 3. Map: u in [u_lo, u_hi] with x = x0 + kappa * logit(u).
    u_lo = jax.nn.sigmoid(-left / kappa)
    one_minus_u_hi = jax.nn.sigmoid(-right / kappa)
    return x0, u_lo, one_minus_u_hi, ~(ok_left & ok_right), conv_left & conv_right


def _whole_line(y, sigma2, mask, kappa: float):
    r"""The map without a search: ``x = x0 + kappa logit(u)`` over the dtype's whole range.

    .. math::
        e^{2 x_0} = c^2 = \frac1J \sum_j (y_j - \bar y)^2 + \frac1J \overline{\sigma^2}

    (the spread of the estimates, kept away from 0 by the groups' own variance). On the
    fast grid (``kappa = 1``, ``tau = c u / (1 - u)``) the posteriors it serves
    (``alpha >= 3.5``; ``p(tau) ~ tau^b`` at 0 for an integer ``b >= 0``) go like ``u^b``
    at ``u = 0`` and like ``(1 - u)^{alpha - 1 - k}`` at ``u = 1`` for ``tau^k p(tau | y)``
    (``k <= 2``): polynomials for an integer ``alpha`` (uniform and half-Cauchy priors),
    or faster-decaying for light-tailed priors. So nothing is cut off but the dtype's own
    range, ``tau / c`` from ~1e-138 to ~1e138 in float64 (~1e-17 to ~1e17 in float32),
    whose mass outside is ~1e-138 (~1e-17) of the density's scale. A centre away from the
    posterior's costs nodes, not accuracy: the nested rules flag what this map does not
    resolve. Measured on 4096 simulated eight-school datasets (float64, ``n = 32``), 8.8%
    are flagged against 2.6% on the searched map, at ~0.7x its cost per dataset.

    Returns:
        ``(x0, u_lo, 1 - u_hi, truncated, converged)`` as :func:`_locate`.
    """
    dtype = y.dtype
    x_min, x_max = _x_limits(dtype)
    n_obs, spread = _spread(y, mask)
    s2bar = jnp.sum(jnp.where(mask, sigma2, 0.0)) / n_obs
    x0 = 0.5 * jnp.log(spread + s2bar / n_obs)
    u_lo = jax.nn.sigmoid(-(x0 - x_min) / kappa)
    one_minus_u_hi = jax.nn.sigmoid(-(x_max - x0) / kappa)
    return x0, u_lo, one_minus_u_hi, jnp.array(False), jnp.array(True)


def tau_grid(
    y,
    sigma2,
    mask,
    tau_prior: TauPrior,
    mu_prior: MuPrior,
    n: int,
    kappa: float | None = None,
    relative: bool = True,
    locate: bool = True,
    tail=TAIL_LEVEL,
) -> TauGrid:
    """Build the quadrature grid for ``p(tau | y)`` of one dataset (see the module doc).

    Args:
        y: standardised group estimates, ``[J]``.
        sigma2: standardised sampling variances, ``[J]``.
        mask: real groups, ``[J]``.
        tau_prior, mu_prior: priors for the standardised data (scalar leaves).
        n: Clenshaw-Curtis order (even); the grid has ``K = n + 1`` nodes.
        kappa: the map's stretch (static): None for the general grid's,
            :func:`general_kappa` of the prior (``KAPPA = 2`` for every shipped prior);
            ``FAST_KAPPA = 1`` puts the nodes closer to the mode (see :func:`fast_nodes`).
        relative: evaluate the nodes as changes from the map centre
            (:func:`~hierjax.model.conditionals.mu_given_tau_near`, static). ``False`` uses the
            direct :func:`~hierjax.model.conditionals.mu_given_tau`, ~20% cheaper per dataset
            (fewer sums over the groups), whose ``log p(y | tau)`` carries a round-off of
            about ``roundoff`` itself rather than of its changes: fine for a few groups
            (the fast grid's at most 16), not for a needle posterior of 3000 in float32.
        locate: find the mode and the extents (steps 1 and 2, static). ``False`` (the
            fast grid of a moments-only fit) skips both: the map is centred at
            ``c^2 = spread(y) + mean(sigma^2) / J`` and covers the dtype's whole range of
            tau, ~30% cheaper per dataset at the same ``n`` but flagging more datasets
            (see :func:`_whole_line`; :func:`fast_nodes` gives it a few more nodes).
        tail: the upper-tail mass down to which the right end keeps tau's quantiles
            (:func:`_tail_drop`): ``1 -`` the highest quantile level, at most
            :data:`TAIL_LEVEL` (the default), scalar.

    Returns:
        TauGrid.
    """
    dtype = y.dtype
    if kappa is None:
        kappa = _tail_kappa(
            general_kappa(tau_prior.origin_power),
            tail_alpha(jnp.sum(mask).astype(dtype), tau_prior, mu_prior),
        )

    def h(x):
        return log_posterior_x(x, y, sigma2, mask, tau_prior, mu_prior)

    if locate:
        x0, u_lo, one_minus_u_hi, truncated, converged = _locate(
            h, y, mask, tau_prior, mu_prior, kappa, tail
        )
    else:
        x0, u_lo, one_minus_u_hi, truncated, converged = _whole_line(y, sigma2, mask, kappa)

    # 4. Clenshaw-Curtis in z on 2n + 1 nodes; its even nodes carry the n-rule.
    z_np, w_np = clenshaw_curtis(2 * n)
    z = jnp.asarray(z_np, dtype)
    tau, x, u, omu = grid_tau_of_z(z, x0, u_lo, one_minus_u_hi, kappa)
    # Node values as changes from the map centre keep their digits for needle posteriors.
    ref = reference_point(jnp.exp(2.0 * x0), y, sigma2, mask, mu_prior)
    if relative:
        mu = jax.vmap(lambda t: mu_given_tau_near(ref, t * t, sigma2, mask, mu_prior))(tau)
    else:
        mu = jax.vmap(lambda t: mu_given_tau(t * t, y, sigma2, mask, mu_prior))(tau)
    log_prior = jax.vmap(tau_prior.log_density)(tau)
    # density in z: p(tau|y) dtau/dz, with dtau/dx = tau, dx/du = KAPPA/(u(1-u)), du/dz = width/2
    du_dz = 0.5 * (1.0 - u_lo - one_minus_u_hi)
    log_joint = log_prior + mu.log_lik
    log_f = log_joint + x + jnp.log(kappa) - jnp.log(u) - jnp.log(omu) + jnp.log(du_dz)
    log_f = jnp.where(jnp.isnan(log_f), -jnp.inf, log_f)

    def rule(order, log_f):
        log_wf = jnp.log(jnp.asarray(clenshaw_curtis(order)[1], dtype)) + log_f
        log_z = logsumexp(log_wf)
        return log_wf - log_z, log_z

    log_weight_fine, log_z_fine = rule(2 * n, log_f)
    log_weight, log_z = rule(n, log_f[::2])

    # The n-rule's error, measured against the 2n-rule on what it is used for: the CDFs
    # of the mixtures of mu (variance V_mu) and theta_new (tau^2 + V_mu), at their
    # centre and two typical sds either side (bounded, so defined under any tail).
    k = jnp.argmax(log_weight_fine)
    errs = []
    for v in (mu.var, mu.var + tau * tau):
        centre = jnp.sum(jnp.exp(log_weight_fine) * mu.mean)
        for c in (centre - 2.0 * jnp.sqrt(v[k]), centre, centre + 2.0 * jnp.sqrt(v[k])):
            F = 0.5 * erfc((mu.mean - c) * jax.lax.rsqrt(2.0 * v))
            errs.append(
                jnp.abs(
                    jnp.sum(jnp.exp(log_weight) * F[::2]) - jnp.sum(jnp.exp(log_weight_fine) * F)
                )
            )
    error = jnp.max(jnp.stack(errs))

    # Round-off in log p(y | tau): each of the J terms (log v_j, r_j^2 / v_j) carries a
    # relative error ~eps, so differences between nodes are known to about this much.
    roundoff = float(jnp.finfo(dtype).eps) * jnp.sum(
        jnp.where(mask, jnp.abs(jnp.log(ref.v)) + ref.r2_over_v + 1.0, 0.0)
    )

    return TauGrid(
        tau=tau[::2],
        log_weight=log_weight,
        mu=jax.tree.map(lambda a: a[::2], mu),
        mu_fine=mu,
        roundoff=roundoff,
        tau_fine=tau,
        log_weight_fine=log_weight_fine,
        log_joint_fine=log_joint,
        density_z=jnp.exp(log_f - log_z_fine),
        log_evidence=log_z_fine,
        error=error,
        truncated=truncated,
        converged=converged,
        x0=x0,
        kappa=jnp.asarray(kappa, dtype),
        u_lo=u_lo,
        one_minus_u_hi=one_minus_u_hi,
    )


def chebyshev_density_coefficients(grid: TauGrid):
    """Chebyshev coefficients of the posterior density in ``z`` (2n-rule), ``[2n + 1]``."""
    N = grid.density_z.shape[0] - 1
    return jnp.asarray(chebyshev_matrix(N), grid.density_z.dtype) @ grid.density_z
