r"""An independent float64 reference for the normal-normal hierarchical model.

Nothing here imports hierjax: the model is re-derived from its textbook formulas
(BDA3 sec. 5.4) and integrated over tau with ``scipy.integrate.quad``.

Model::

    y_j | theta_j ~ N(theta_j, sigma_j^2),   theta_j | mu, tau ~ N(mu, tau^2),
    mu ~ flat or N(m0, s0^2),                tau ~ p(tau).

Given tau (``v_j = sigma_j^2 + tau^2``; a normal mu prior is one more observation
``m0`` with variance ``s0^2``)::

    P = sum_i 1/w_i,  mu_hat = sum_i x_i/w_i / P,  V_mu = 1/P,
    log p(y | tau) = -(n-1)/2 log 2pi - 1/2 sum_i log w_i - 1/2 log P
                     - 1/2 sum_i (x_i - mu_hat)^2 / w_i
    theta_j | tau, y ~ N((1-B_j) y_j + B_j mu_hat, (1-B_j) sigma_j^2 + B_j^2 V_mu),
    B_j = sigma_j^2 / v_j,   theta_new | tau, y ~ N(mu_hat, tau^2 + V_mu).

Every marginal of ``mu``, ``theta_j`` and ``theta_new`` is a normal mixture over
``p(tau | y)``; its CDF is one ``quad`` over tau, and quantiles are ``brentq``
roots of that CDF. All integrals run over ``[0, inf)`` split at breakpoints taken
from a dense tabulation of ``p(tau | y)`` in ``log tau`` (posterior quantiles from
1e-10 to 1 - 1e-10, the mode, the extreme sigmas), with ``epsabs=0``,
``epsrel=1e-13``, ``limit=500``; ``quad``'s own error estimates are checked.

The data are centred on their Fisher-weighted mean before anything is computed
(the model is translation equivariant), so a large offset costs no digits.

For a *fixed* tau, :func:`joint_gaussian_posterior` and :func:`precision_posterior`
give the posterior of ``(mu, theta)`` by dense linear algebra, independent of the
closed-form conditionals above.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import numpy as np
from scipy import integrate, optimize, special

__all__ = [
    "LEVELS",
    "Reference",
    "RefMarginal",
    "reference",
    "parse_tau",
    "parse_mu",
    "log_prior_tau",
    "joint_gaussian_posterior",
    "precision_posterior",
    "joint_log_evidence",
    "CallableTau",
    "bayesmeta_tau_prior",
]

LEVELS = (0.025, 0.25, 0.5, 0.75, 0.975)

_LOG_2PI = math.log(2.0 * math.pi)
_SQRT2 = math.sqrt(2.0)
EPSREL = 1e-13
_CHECK = 1e-10  # largest acceptable quad error estimate (relative to the scale)
_BREAK_LEVELS = (
    1e-10,
    1e-6,
    1e-3,
    0.02,
    0.1,
    0.25,
    0.5,
    0.75,
    0.9,
    0.98,
    0.999,
    1 - 1e-6,
    1 - 1e-10,
)


# --------------------------------------------------------------------------- priors
def parse_tau(spec):
    """``(kind, params)`` from a spec string like ``"half-t:3,5"``."""
    name, _, rest = spec.strip().lower().partition(":")
    params = tuple(float(p) for p in rest.split(",")) if rest else ()
    n = {"uniform": 0, "half-normal": 1, "half-cauchy": 1, "half-t": 2, "exponential": 1}
    if name not in n or len(params) != n[name]:
        raise ValueError(f"bad tau prior spec {spec!r}")
    return name, params


def parse_mu(spec):
    """``None`` for ``"flat"``, ``(m0, s0)`` for ``"normal:m0,s0"``."""
    name, _, rest = spec.strip().lower().partition(":")
    if name == "flat" and not rest:
        return None
    if name == "normal":
        m0, s0 = (float(p) for p in rest.split(","))
        return m0, s0
    raise ValueError(f"bad mu prior spec {spec!r}")


def log_prior_tau(kind, params, tau):
    """Normalised log density of tau (0 for the improper uniform); textbook formulas."""
    tau = np.asarray(tau, dtype=np.float64)
    if isinstance(kind, CallableTau):
        with np.errstate(divide="ignore"):
            return np.asarray(kind.logpdf(np.atleast_1d(tau)), dtype=np.float64).reshape(tau.shape)
    if kind == "uniform":
        return np.zeros_like(tau)
    if kind == "half-normal":
        (s,) = params
        return math.log(2.0) - 0.5 * _LOG_2PI - math.log(s) - 0.5 * (tau / s) ** 2
    if kind == "half-cauchy":
        (s,) = params
        return math.log(2.0 / math.pi) - math.log(s) - np.log1p((tau / s) ** 2)
    if kind == "half-t":
        nu, s = params
        c = (
            math.log(2.0)
            + math.lgamma(0.5 * (nu + 1))
            - math.lgamma(0.5 * nu)
            - 0.5 * math.log(nu * math.pi)
            - math.log(s)
        )
        return c - 0.5 * (nu + 1) * np.log1p(tau**2 / (nu * s * s))
    if kind == "exponential":
        (r,) = params
        return math.log(r) - r * tau
    raise ValueError(kind)


def dlog_prior_tau(kind, params, tau):
    """d/dtau of :func:`log_prior_tau`."""
    if isinstance(kind, CallableTau):
        # central difference in log tau (used only to locate the mode for breakpoints)
        t = np.asarray(tau, dtype=np.float64)
        h = 1e-5
        with np.errstate(divide="ignore", invalid="ignore"):
            d = (kind.logpdf(t * math.exp(h)) - kind.logpdf(t * math.exp(-h))) / (
                t * 2.0 * math.sinh(h)
            )
        return np.where(t > 0, d, 0.0)
    if kind == "uniform":
        return 0.0 * tau
    if kind == "half-normal":
        return -tau / params[0] ** 2
    if kind == "half-cauchy":
        s = params[0]
        return -2.0 * tau / (s * s + tau * tau)
    if kind == "half-t":
        nu, s = params
        return -(nu + 1) * tau / (nu * s * s + tau * tau)
    if kind == "exponential":
        return -params[0] + 0.0 * tau
    raise ValueError(kind)


def tail_power(kind, params):
    """``c`` with ``p(tau) ~ tau^-c`` at infinity."""
    if isinstance(kind, CallableTau):
        return kind.tail_power
    return {"uniform": 0.0, "half-cauchy": 2.0}.get(
        kind, params[0] + 1.0 if kind == "half-t" else math.inf
    )


@dataclasses.dataclass(frozen=True)
class CallableTau:
    """A tau prior given as a NumPy log density ``logpdf(tau[n]) -> [n]`` (normalised if proper).

    ``tail_power``: ``c`` with ``p(tau) ~ tau^-c`` at infinity (decides moment existence).
    """

    name: str
    logpdf: object
    tail_power: float
    proper: bool

    def __hash__(self):
        return hash((self.name, id(self.logpdf)))


def _normalised(name, log_unnorm, tail, scale):
    """A proper CallableTau from an unnormalised log density, normalised by ``quad``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        z = sum(
            integrate.quad(
                lambda t: math.exp(float(log_unnorm(np.array([t]))[0])),
                a,
                b,
                epsabs=0.0,
                epsrel=1e-13,
                limit=500,
            )[0]
            for a, b in ((0.0, scale), (scale, 100 * scale), (100 * scale, math.inf))
        )
    return CallableTau(name, lambda t: log_unnorm(t) - math.log(z), tail, True)


def bayesmeta_tau_prior(name, sigma, *params) -> CallableTau:
    r"""bayesmeta's named tau priors for a dataset's ``sigma``, written from Röver (2020) and
    bayesmeta's R help (``tau.prior``; ``dhalflogistic``, ``dlomax``, ``drayleigh``) with
    NumPy/SciPy, independently of hierjax.

    ``name``: sqrt, jeffreys, overall-jeffreys, berger-deely, conventional, dumouchel,
    shrinkage, i2, half-logistic (S), lomax (A, L), rayleigh (S), log-normal (M, S),
    inv-gamma (A, B; on tau^2).
    """
    from scipy import stats

    s2 = np.asarray(sigma, np.float64) ** 2
    k = s2.size

    def col(t):
        return np.asarray(t, np.float64).reshape(-1, 1)

    if name == "sqrt":
        return CallableTau(name, lambda t: -0.5 * np.log(t), 0.5, False)
    if name == "jeffreys":
        return CallableTau(
            name,
            lambda t: 0.5 * np.log(np.sum((col(t) / (s2 + col(t) ** 2)) ** 2, axis=1)),
            1.0,
            False,
        )
    if name == "berger-deely":
        return CallableTau(
            name,
            lambda t: np.log(np.prod((col(t) / (s2 + col(t) ** 2)) ** (1.0 / k), axis=1)),
            1.0,
            False,
        )
    if name == "overall-jeffreys":

        def lu(t):
            v = s2 + col(t) ** 2
            return 0.5 * np.log(np.sum(1.0 / v, axis=1) * np.sum((col(t) / v) ** 2, axis=1))

        return _normalised(name, lu, 2.0, float(np.sqrt(s2.max())))
    if name == "conventional":

        def lu(t):
            return np.log(np.prod((col(t) / (s2 + col(t) ** 2) ** 1.5) ** (1.0 / k), axis=1))

        return _normalised(name, lu, 2.0, float(np.sqrt(s2.max())))
    if name == "dumouchel":
        s0 = math.sqrt(k / np.sum(1.0 / s2))
        return CallableTau(name, lambda t: np.log(s0 / (s0 + t) ** 2), 2.0, True)
    if name in ("shrinkage", "i2"):
        if name == "shrinkage":
            c2 = k / np.sum(1.0 / s2)
        else:  # Higgins and Thompson (2002), eq. 9
            w = 1.0 / s2
            c2 = (k - 1) * w.sum() / (w.sum() ** 2 - np.sum(w**2))
        return CallableTau(name, lambda t: np.log(2.0 * c2 * t / (c2 + t**2) ** 2), 3.0, True)
    if name == "half-logistic":
        (s,) = params
        return CallableTau(name, lambda t: stats.halflogistic(scale=s).logpdf(t), math.inf, True)
    if name == "lomax":
        a, lam = params
        return CallableTau(name, lambda t: stats.lomax(a, scale=lam).logpdf(t), a + 1.0, True)
    if name == "rayleigh":
        (s,) = params
        return CallableTau(name, lambda t: stats.rayleigh(scale=s).logpdf(t), math.inf, True)
    if name == "log-normal":
        m, s = params
        return CallableTau(
            name, lambda t: stats.lognorm(s, scale=math.exp(m)).logpdf(t), math.inf, True
        )
    if name == "inv-gamma":  # tau^2 ~ IG(a, b); p(tau) = 2 tau p_IG(tau^2)
        a, b = params
        return CallableTau(
            name,
            lambda t: (
                stats.invgamma(a, scale=b).logpdf(np.asarray(t) ** 2) + np.log(2.0 * np.asarray(t))
            ),
            2.0 * a + 1.0,
            True,
        )
    raise ValueError(name)


# --------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class RefMarginal:
    """Reference summary of one scalar marginal (quantiles aligned with ``levels``)."""

    mean: float
    sd: float
    quantiles: np.ndarray
    p_gt0: float
    mean_exists: bool
    sd_exists: bool
    levels: tuple
    scale: float  # sd where it exists, else the interquartile range


def _phi(z):
    return 0.5 * math.erfc(-z / _SQRT2)


# --------------------------------------------------------------------------- the reference
class Reference:
    """Exact posterior summaries of one dataset by adaptive quadrature over tau (float64)."""

    def __init__(self, y, sigma, tau_prior="uniform", mu_prior="flat"):
        self.y = np.asarray(y, dtype=np.float64)
        self.sigma = np.asarray(sigma, dtype=np.float64)
        if self.y.ndim != 1 or self.y.shape != self.sigma.shape:
            raise ValueError("y and sigma must be 1-D of equal length")
        self.J = J = self.y.size
        if isinstance(tau_prior, CallableTau):
            self.kind, self.params = tau_prior, ()
        else:
            self.kind, self.params = parse_tau(tau_prior)
        self.mu_prior = parse_mu(mu_prior)
        s2 = self.sigma**2
        # Centre: the model is translation equivariant (the mu prior's location moves too).
        self.c = float(np.sum(self.y / s2) / np.sum(1.0 / s2))
        self.yc = self.y - self.c
        self.s2 = s2
        if self.mu_prior is None:
            self.p0, self.m0c, self.logdet0, n = 0.0, 0.0, 0.0, J
        else:
            m0, s0 = self.mu_prior
            self.p0, self.m0c, self.logdet0, n = 1.0 / s0**2, m0 - self.c, 2.0 * math.log(s0), J + 1
        self.const = (n - 1) * _LOG_2PI + self.logdet0
        self.alpha = (
            J - (2.0 if self.mu_prior is None else 1.0) + tail_power(self.kind, self.params)
        )
        self.proper = (
            self.kind.proper if isinstance(self.kind, CallableTau) else self.kind != "uniform"
        ) and self.mu_prior is not None
        self._memo = {}
        self._setup()

    # ---- per-tau closed forms ------------------------------------------------
    def _vec(self, tau):
        """``(log p(tau) + log p(y|tau), mu_hat, V_mu)`` for an array of tau (centred units)."""
        tau = np.asarray(tau, dtype=np.float64).reshape(-1)
        out_lp = np.empty(tau.size)
        out_m = np.empty(tau.size)
        out_v = np.empty(tau.size)
        step = max(1, 2**20 // self.J)
        for a in range(0, tau.size, step):
            t = tau[a : a + step, None]
            v = self.s2[None, :] + t * t
            prec = 1.0 / v
            P = prec.sum(axis=1) + self.p0
            mh = (prec @ self.yc + self.p0 * self.m0c) / P
            r = self.yc[None, :] - mh[:, None]
            quadf = np.sum(r * r * prec, axis=1) + self.p0 * (self.m0c - mh) ** 2
            ll = -0.5 * (self.const + np.log(v).sum(axis=1) + np.log(P) + quadf)
            out_lp[a : a + step] = ll + log_prior_tau(self.kind, self.params, t[:, 0])
            out_m[a : a + step] = mh
            out_v[a : a + step] = 1.0 / P
        return out_lp, out_m, out_v

    def log_post(self, tau):
        """Unnormalised log posterior ``log p(tau) + log p(y | tau)`` (normalised pieces)."""
        return self._vec(tau)[0]

    def log_lik(self, tau):
        """``log p(y | tau)`` (against Lebesgue measure on mu when mu is flat)."""
        tau = np.asarray(tau, dtype=np.float64).reshape(-1)
        return self._vec(tau)[0] - log_prior_tau(self.kind, self.params, tau)

    def conditional(self, tau):
        """Given a scalar tau: ``(mu_hat, V_mu, theta_mean[J], theta_var[J])`` in data units."""
        _, mh, V = self._vec([tau])
        mh, V = float(mh[0]), float(V[0])
        t2 = tau * tau
        one_minus_B = t2 / (self.s2 + t2)
        B = self.s2 / (self.s2 + t2)
        mean = one_minus_B * self.yc + B * mh
        var = one_minus_B * self.s2 + B * B * V
        return mh + self.c, V, mean + self.c, var

    def _dlog_post(self, tau):
        """d/dtau of the log posterior (envelope theorem for the quadratic term)."""
        t = np.asarray(tau, dtype=np.float64).reshape(-1)[:, None]
        v = self.s2[None, :] + t * t
        prec = 1.0 / v
        P = prec.sum(axis=1) + self.p0
        mh = (prec @ self.yc + self.p0 * self.m0c) / P
        r = self.yc[None, :] - mh[:, None]
        d_t2 = (
            -0.5 * prec.sum(axis=1)
            + 0.5 * np.sum(r * r * prec * prec, axis=1)
            + 0.5 * np.sum(prec * prec, axis=1) / P
        )
        return 2.0 * t[:, 0] * d_t2 + dlog_prior_tau(self.kind, self.params, t[:, 0])

    def _node(self, tau):
        """``(f, mu_hat, V_mu)`` at one tau, ``f = exp(log post - log post at the mode)``; memoised."""
        r = self._memo.get(tau)
        if r is None:
            v = self.s2 + tau * tau
            prec = 1.0 / v
            P = float(prec.sum()) + self.p0
            mh = (float(prec @ self.yc) + self.p0 * self.m0c) / P
            rr = self.yc - mh
            quadf = float((rr * rr) @ prec) + self.p0 * (self.m0c - mh) ** 2
            ll = -0.5 * (self.const + float(np.log(v).sum()) + math.log(P) + quadf)
            lp = ll + float(log_prior_tau(self.kind, self.params, tau))
            r = (math.exp(lp - self.lmax), mh, 1.0 / P)
            self._memo[tau] = r
        return r

    # ---- setup: mode, tabulation, breakpoints, normaliser ----------------------
    def _setup(self):
        sig = self.sigma
        spread = float(np.std(self.yc)) if self.J > 1 else 0.0
        scales = [float(sig.min()), float(sig.max())] + ([spread] if spread > 0 else [])
        xlo, xhi = math.log(min(scales)) - 40.0, math.log(max(scales)) + 40.0
        x = np.linspace(xlo, xhi, 4001)
        h = self._vec(np.exp(x))[0] + x
        i = int(np.argmax(h))
        x = np.union1d(x, x[i] + np.linspace(-3.0, 3.0, 3001))
        lp = self._vec(np.exp(x))[0]
        h = lp + x

        # The mode of p(tau | y) in tau (>= 0): roots of d/dtau where it turns negative.
        tau_grid = np.concatenate([[0.0], np.exp(x)])
        d = self._dlog_post(tau_grid)
        with np.errstate(divide="ignore"):
            lp0 = float(self.log_post([0.0])[0])
        # a prior density infinite at 0 (e.g. tau^-1/2) has no mode there worth a candidate
        cands = [(lp0, 0.0)] if math.isfinite(lp0) or lp0 < 0 else []
        for k in np.flatnonzero((d[:-1] > 0) & (d[1:] <= 0)):
            a, b = tau_grid[k], tau_grid[k + 1]
            root = (
                optimize.brentq(
                    lambda t: float(self._dlog_post([t])[0]),
                    a,
                    b,
                    xtol=1e-300,
                    rtol=4 * np.finfo(float).eps,
                    maxiter=200,
                )
                if d[k + 1] < 0
                else b
            )
            cands.append((float(self.log_post([root])[0]), root))
        lmode, self.mode = max(cands) if cands else (-math.inf, 0.0)
        self.lmax = max(lmode, float(lp.max()))

        # Dense tabulation in x = log tau (trapezoid weights): breakpoints and start values.
        g = np.exp(h - h.max())
        dx = np.diff(x)
        cum = np.concatenate([[0.0], np.cumsum(0.5 * dx * (g[1:] + g[:-1]))])
        cum /= cum[-1]
        wts = np.zeros_like(g)
        wts[1:] += 0.5 * dx * g[1:]
        wts[:-1] += 0.5 * dx * g[:-1]
        wts /= wts.sum()
        keep = wts > 1e-300
        self._tab_tau = np.exp(x[keep])
        self._tab_w = wts[keep]
        _, self._tab_m, self._tab_v = self._vec(self._tab_tau)
        self._tab_x, self._tab_cum = x, cum

        bps = [float(np.exp(np.interp(p, cum, x))) for p in _BREAK_LEVELS]
        lo_b, hi_b = bps[0], bps[-1]
        bps += [self.mode, float(np.exp(x[int(np.argmax(h))]))]
        bps += [
            s
            for s in (float(sig.min()), float(np.median(sig)), float(sig.max()))
            if lo_b < s < hi_b
        ]
        bps = sorted(b for b in set(bps) if b > 0)
        merged = []
        for b in bps:  # drop breakpoints closer than 1e-6 relative
            if not merged or b > merged[-1] * (1 + 1e-6):
                merged.append(b)
        self.breaks = merged
        self.Z, err = self._integrate(lambda t: self._node(t)[0], check_scale=None)
        self.log_evidence = math.log(self.Z) + self.lmax

    def _pieces(self, lo=0.0, hi=math.inf):
        edges = [lo] + [b for b in self.breaks if lo < b < hi] + [hi]
        return list(zip(edges[:-1], edges[1:]))

    def _integrate(self, func, lo=0.0, hi=math.inf, check_scale=None):
        """Sum of ``quad`` over the pieces of ``[lo, hi]``; checks quad's error estimate.

        ``check_scale``: the size the error is judged against (default: ``|integral|``).
        """
        total, err = 0.0, 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", integrate.IntegrationWarning)
            for a, b in self._pieces(lo, hi):
                if b == math.inf and a > 0:
                    # tau = a w, w in [1, inf): quad's own map of an infinite range has a
                    # fixed unit scale, which a tail at tau ~ 1e9 would defeat
                    val, e = integrate.quad(
                        lambda w: a * func(a * w),
                        1.0,
                        math.inf,
                        epsabs=0.0,
                        epsrel=EPSREL,
                        limit=500,
                    )
                else:
                    val, e = integrate.quad(func, a, b, epsabs=0.0, epsrel=EPSREL, limit=500)
                total += val
                err += e
        scale = abs(total) if check_scale is None else check_scale
        if not err <= _CHECK * scale + 1e-300:
            raise RuntimeError(
                f"quad error estimate {err:.3g} too large for {scale:.3g} (breaks {self.breaks})"
            )
        return total, err

    def expect(self, g, check_scale=None):
        """``E[g(tau, mu_hat, V_mu) | y]`` (centred units)."""

        def f(t):
            w, m, v = self._node(t)
            return w * g(t, m, v)

        zs = None if check_scale is None else check_scale * self.Z
        return self._integrate(f, check_scale=zs)[0] / self.Z

    # ---- component functions for the marginals ---------------------------------
    def _component(self, name, j=None):
        """``(tau, mu_hat, V) -> (mean, sd)`` of the marginal's normal component (centred)."""
        if name == "mu":
            return lambda t, m, v: (m, math.sqrt(v))
        if name == "theta_new":
            return lambda t, m, v: (m, math.sqrt(t * t + v))
        if name == "theta":
            yj, s2j = float(self.yc[j]), float(self.s2[j])

            def comp(t, m, v):
                t2 = t * t
                omb, b = t2 / (s2j + t2), s2j / (s2j + t2)
                return omb * yj + b * m, math.sqrt(omb * s2j + b * b * v)

            return comp
        raise ValueError(name)

    def _tab_component(self, name, j=None):
        t, m, v = self._tab_tau, self._tab_m, self._tab_v
        if name == "mu":
            return m, np.sqrt(v)
        if name == "theta_new":
            return m, np.sqrt(t * t + v)
        yj, s2j = self.yc[j], self.s2[j]
        omb, b = t * t / (s2j + t * t), s2j / (s2j + t * t)
        return omb * yj + b * m, np.sqrt(omb * s2j + b * b * v)

    def mixture_cdf(self, name, q, j=None):
        """``P(phi <= q | y)`` for ``q`` in data units."""
        comp = self._component(name, j)
        qc = q - self.c
        return self.expect(
            lambda t, m, v: _phi((qc - comp(t, m, v)[0]) / comp(t, m, v)[1]), check_scale=1.0
        )

    def tau_cdf(self, q):
        """``P(tau <= q | y)``."""
        return self._integrate(lambda t: self._node(t)[0], 0.0, q, check_scale=self.Z)[0] / self.Z

    def tau_sf(self, q):
        """``P(tau > q | y)``."""
        return (
            self._integrate(lambda t: self._node(t)[0], q, math.inf, check_scale=self.Z)[0] / self.Z
        )

    # ---- distribution functions, predictive, shrinkage, weights, pairs -------------
    # (for tests/test_posterior.py; each is one quad over tau of a closed form given tau)
    def _general_component(self, name, j=None, sigma_new=None):
        """Components of ``mu``, ``theta``, ``theta_new``, ``y_new`` (a new group's new
        observation with sd ``sigma_new``) and ``y_rep`` (group ``j`` replicated)."""
        if name == "y_new":
            sn2 = float(sigma_new) ** 2
            return lambda t, m, v: (m, math.sqrt(t * t + v + sn2))
        if name == "y_rep":
            comp = self._component("theta", j)
            s2j = float(self.s2[j])

            def rep(t, m, v):
                mm, ss = comp(t, m, v)
                return mm, math.sqrt(ss * ss + s2j)

            return rep
        return self._component(name, j)

    def tau_density(self, q):
        """``p(tau = q | y)`` (scalar or array ``q >= 0``): the unnormalised posterior over
        its ``quad`` integral ``exp(log_evidence)``."""
        dens = np.exp(self.log_post(np.atleast_1d(np.asarray(q, float))) - self.log_evidence)
        return float(dens[0]) if np.ndim(q) == 0 else dens

    def density(self, name, q, j=None, sigma_new=None):
        """Posterior density at ``q`` (data units) of any marginal, tau included."""
        if name == "tau":
            return self.tau_density(q)
        comp = self._general_component(name, j, sigma_new)
        qc = q - self.c

        def f(t, m, v):
            mm, ss = comp(t, m, v)
            z = (qc - mm) / ss
            return math.exp(-0.5 * z * z) / (ss * math.sqrt(2.0 * math.pi))

        return self.expect(f)

    def cdf(self, name, q, j=None, sigma_new=None):
        """``P(phi <= q | y)`` of any marginal, tau included."""
        if name == "tau":
            return self.tau_cdf(q)
        comp = self._general_component(name, j, sigma_new)
        qc = q - self.c
        return self.expect(
            lambda t, m, v: _phi((qc - comp(t, m, v)[0]) / comp(t, m, v)[1]), check_scale=1.0
        )

    def sf(self, name, q, j=None, sigma_new=None):
        """``P(phi > q | y)`` of any marginal, tau included."""
        if name == "tau":
            return self.tau_sf(q)
        comp = self._general_component(name, j, sigma_new)
        qc = q - self.c
        return self.expect(
            lambda t, m, v: _phi((comp(t, m, v)[0] - qc) / comp(t, m, v)[1]), check_scale=1.0
        )

    def shrinkage(self, j):
        """``E[sigma_j^2 / (sigma_j^2 + tau^2) | y]``."""
        s2j = float(self.s2[j])
        return self.expect(lambda t, m, v: s2j / (s2j + t * t), check_scale=1.0)

    def _mu_weight(self, t, i):
        """Weight of ``y_i`` (``i = None``: of the prior mean) in ``mu_hat(tau)``."""
        prec = 1.0 / (self.s2 + t * t)
        P = float(prec.sum()) + self.p0
        return (self.p0 if i is None else float(prec[i])) / P

    def mu_weight(self, i=None):
        """``E[W_i(tau) | y]``, ``W_i = (1/v_i) / (sum 1/v + 1/s0^2)`` (prior: ``i = None``)."""
        return self.expect(lambda t, m, v: self._mu_weight(t, i), check_scale=1.0)

    def theta_weight(self, j, i=None):
        """Weight of ``y_i`` (prior mean: ``i = None``) in ``E[theta_j | y]``:
        ``E[(1 - B_j) [i == j] + B_j W_i | y]``."""
        s2j = float(self.s2[j])

        def f(t, m, v):
            b = s2j / (s2j + t * t)
            own = (1.0 - b) if i == j else 0.0
            return own + b * self._mu_weight(t, i)

        return self.expect(f, check_scale=1.0)

    def i2_s2(self):
        """Higgins-Thompson typical within-study variance."""
        w = 1.0 / self.s2
        return (self.J - 1) * w.sum() / (w.sum() ** 2 - (w * w).sum())

    def i2_cdf(self, x):
        """``P(I^2 <= x | y)`` with ``I^2 = tau^2 / (tau^2 + s^2)``."""
        return self.tau_cdf(math.sqrt(self.i2_s2() * x / (1.0 - x)))

    def i2_mean(self):
        s2 = self.i2_s2()
        return self.expect(lambda t, m, v: t * t / (t * t + s2), check_scale=1.0)

    def pairwise(self, i, j):
        """``P(theta_i > theta_j | y)``: given tau, ``(theta_i, theta_j)`` is bivariate
        normal with ``Cov = B_i B_j V_mu`` (both shrink towards the same ``mu_hat``)."""
        ci, cj = self._component("theta", i), self._component("theta", j)
        s2i, s2j = float(self.s2[i]), float(self.s2[j])

        def f(t, m, v):
            mi, si = ci(t, m, v)
            mj, sj = cj(t, m, v)
            bi, bj = s2i / (s2i + t * t), s2j / (s2j + t * t)
            var = si * si + sj * sj - 2.0 * bi * bj * v
            return _phi((mi - mj) / math.sqrt(var)) if var > 0 else 0.5

        return self.expect(f, check_scale=1.0)

    # ---- densities -------------------------------------------------------
    def mu_density(self, mu):
        """``p(mu | y) = int p(tau | y) N(mu | mu_hat(tau), V_mu(tau)) dtau`` (one ``quad``)."""
        mc = float(mu) - self.c
        return self.expect(
            lambda t, m, v: math.exp(-0.5 * (mc - m) ** 2 / v) / math.sqrt(2.0 * math.pi * v)
        )

    # ---- quantiles ---------------------------------------------------------
    @staticmethod
    def _root(fun, guess, delta):
        a, b = guess - delta, guess + delta
        fa, fb = fun(a), fun(b)
        for _ in range(60):
            if fa <= 0 <= fb:
                break
            if fa > 0:
                a, fa = a - delta, fun(a - delta)
            if fb < 0:
                b, fb = b + delta, fun(b + delta)
            delta *= 4.0
        else:
            raise RuntimeError("no bracket")
        if fa == 0:
            return a
        if fb == 0:
            return b
        return optimize.brentq(fun, a, b, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=200)

    def _tab_mixture_quantile(self, name, p, j):
        m, s = self._tab_component(name, j)
        w = self._tab_w

        def F(q):
            return float(np.sum(w * special.ndtr((q - m) / s))) - p

        lo = float(np.min(m - 40 * s))
        hi = float(np.max(m + 40 * s))
        return optimize.brentq(F, lo, hi, xtol=1e-12 * (hi - lo))

    def _mixture_quantile(self, name, p, j, scale):
        guess = self._tab_mixture_quantile(name, p, j)
        comp = self._component(name, j)
        if p <= 0.5:

            def fun(qc):
                return (
                    self.expect(
                        lambda t, m, v: _phi((qc - comp(t, m, v)[0]) / comp(t, m, v)[1]),
                        check_scale=1.0,
                    )
                    - p
                )
        else:  # survival function: no cancellation near 1

            def fun(qc):
                return (1.0 - p) - self.expect(
                    lambda t, m, v: _phi((comp(t, m, v)[0] - qc) / comp(t, m, v)[1]),
                    check_scale=1.0,
                )

        return self._root(fun, guess, 1e-3 * scale) + self.c

    def _tau_quantile(self, p):
        guess = float(np.exp(np.interp(p, self._tab_cum, self._tab_x)))
        lx = math.log(guess)
        # root in log tau: the tau posterior can span many orders of magnitude
        if p <= 0.5:

            def fun(x):
                return self.tau_cdf(math.exp(x)) - p
        else:

            def fun(x):
                return (1.0 - p) - self.tau_sf(math.exp(x))

        return math.exp(self._root(fun, lx, 1e-3))

    # ---- summaries ---------------------------------------------------------
    @functools.cache
    def moments(self, name, j=None):
        """``(mean, sd, mean_exists, sd_exists, p_gt0)`` of a marginal in data units."""
        has_mean, has_sd = self.alpha > 1.0, self.alpha > 2.0
        if name == "tau":
            mean = self.expect(lambda t, m, v: t) if has_mean else math.inf
            sd = math.sqrt(self.expect(lambda t, m, v: (t - mean) ** 2)) if has_sd else math.inf
            return mean, sd, has_mean, has_sd, 1.0
        if name == "mu" and self.mu_prior is not None:
            has_mean = has_sd = True
        if name == "theta":
            has_mean = has_sd = True
        comp = self._component(name, j)
        if has_mean:
            mean = self.expect(
                lambda t, m, v: comp(t, m, v)[0],
                check_scale=float(np.sqrt(np.sum(self._tab_w * self._tab_v))),
            )
        else:
            mean = math.nan
        if has_sd:

            def second(t, m, v):
                mm, ss = comp(t, m, v)
                return ss * ss + (mm - mean) ** 2

            sd = math.sqrt(self.expect(second))
        else:
            sd = math.inf
        thr = -self.c
        pgt = self.expect(
            lambda t, m, v: _phi((comp(t, m, v)[0] - thr) / comp(t, m, v)[1]), check_scale=1.0
        )
        return (mean + self.c if has_mean else mean), sd, has_mean, has_sd, pgt

    @functools.cache
    def quantile(self, name, p, j=None):
        """The ``p`` quantile of a marginal in data units (``name``: tau, mu, theta, theta_new)."""
        if name == "tau":
            return self._tau_quantile(p)
        mean, sd, _, has_sd, _ = self.moments(name, j)
        scale = sd if has_sd else self._rough_iqr(name, j)
        return self._mixture_quantile(name, p, j, scale)

    def _rough_iqr(self, name, j):
        return self._tab_mixture_quantile(name, 0.75, j) - self._tab_mixture_quantile(name, 0.25, j)

    @functools.cache
    def marginal(self, name, j=None, levels=LEVELS):
        """:class:`RefMarginal` of ``tau``, ``mu``, ``theta`` (group ``j``) or ``theta_new``."""
        mean, sd, has_mean, has_sd, pgt = self.moments(name, j)
        q = np.array([self.quantile(name, float(p), j) for p in levels])
        scale = sd if has_sd else self.quantile(name, 0.75, j) - self.quantile(name, 0.25, j)
        return RefMarginal(mean, sd, q, pgt, has_mean, has_sd, tuple(levels), scale)


@functools.cache
def reference(y, sigma, tau_prior="uniform", mu_prior="flat") -> Reference:
    """Cached :class:`Reference` (``y`` and ``sigma`` as tuples of floats)."""
    return Reference(
        np.array(y, dtype=np.float64), np.array(sigma, dtype=np.float64), tau_prior, mu_prior
    )


# --------------------------------------------------------------------------- fixed tau: dense
def joint_gaussian_posterior(y, sigma, tau, m0, s0):
    r"""Posterior mean and covariance of ``(mu, theta_1..J)`` given ``y`` and ``tau``.

    Builds the joint Gaussian of ``(mu, theta, y)`` under ``mu ~ N(m0, s0^2)`` and
    conditions on ``y`` with dense linear algebra
    (``E[a|b] = m_a + S_ab S_bb^{-1} (b - m_b)``, ``Cov = S_aa - S_ab S_bb^{-1} S_ba``).
    A flat mu prior is approached with a huge ``s0``.
    """
    y = np.asarray(y, np.float64)
    s2 = np.asarray(sigma, np.float64) ** 2
    J = y.size
    n = 1 + 2 * J
    # (mu, theta, y) = L @ (mu, eta, eps) + mean with independent standard pieces.
    L = np.zeros((n, n))
    L[0, 0] = s0
    L[1 : J + 1, 0] = s0
    L[1 : J + 1, 1 : J + 1] = tau * np.eye(J)
    L[J + 1 :, 0] = s0
    L[J + 1 :, 1 : J + 1] = tau * np.eye(J)
    L[J + 1 :, J + 1 :] = np.diag(np.sqrt(s2))
    S = L @ L.T
    mean = np.full(n, float(m0))
    a, b = slice(0, J + 1), slice(J + 1, n)
    d = np.sqrt(np.diag(S[b, b]))  # Jacobi equilibration of the solve
    K = (np.linalg.solve(S[b, b] / np.outer(d, d), S[b, a] / d[:, None]) / d[:, None]).T
    post_mean = mean[a] + K @ (y - mean[b])
    post_cov = S[a, a] - K @ S[b, a]
    return post_mean, post_cov


def precision_posterior(y, sigma, tau, m0=None, s0=None):
    r"""Posterior of ``(mu, theta)`` given ``y`` and ``tau > 0`` from the precision matrix.

    ``-2 log p(mu, theta | y, tau) = sum_j (theta_j - mu)^2/tau^2 + sum_j (y_j - theta_j)^2/sigma_j^2
    [+ (mu - m0)^2/s0^2] + const``; a flat mu prior contributes zero precision.
    """
    y = np.asarray(y, np.float64)
    s2 = np.asarray(sigma, np.float64) ** 2
    J = y.size
    Q = np.zeros((J + 1, J + 1))
    b = np.zeros(J + 1)
    t2 = tau * tau
    Q[0, 0] = J / t2
    Q[0, 1:] = Q[1:, 0] = -1.0 / t2
    Q[1:, 1:] = np.diag(1.0 / t2 + 1.0 / s2)
    b[1:] = y / s2
    if s0 is not None:
        Q[0, 0] += 1.0 / s0**2
        b[0] += m0 / s0**2
    # Jacobi equilibration: sigma_j spanning 1e6 would otherwise cost digits in inv()
    d = np.sqrt(np.diag(Q))
    Qs = Q / np.outer(d, d)
    cov = np.linalg.inv(Qs) / np.outer(d, d)
    cov = 0.5 * (cov + cov.T)
    return np.linalg.solve(Qs, b / d) / d, cov


def joint_log_evidence(y, sigma, tau, m0, s0):
    """``log N(y; m0 1, s0^2 11' + diag(sigma^2 + tau^2))`` by dense linear algebra."""
    y = np.asarray(y, np.float64)
    s2 = np.asarray(sigma, np.float64) ** 2
    J = y.size
    C = s0 * s0 * np.ones((J, J)) + np.diag(s2 + tau * tau)
    sign, logdet = np.linalg.slogdet(C)
    r = y - m0
    return -0.5 * (J * _LOG_2PI + logdet + r @ np.linalg.solve(C, r))
