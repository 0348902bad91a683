"""Priors for the population sd ``tau`` and the population mean ``mu``.

A prior family is a pytree *type*; its continuous parameters are array *leaves*,
so changing a scale never recompiles (STYLE.md: discrete choices are types).

Every tau prior provides

* ``log_density(tau)``: the log density at a scalar ``tau >= 0`` (normalised
  where the prior is proper, ``0`` for the improper uniform);
* ``tail_power``: ``c`` with ``p(tau) ~ tau^(-c)`` as ``tau -> inf``
  (``inf`` for light tails).  It decides which posterior moments exist:
  with ``J`` groups ``p(tau | y) ~ tau^(-(alpha + 1))`` where
  ``alpha = J - 2 + c`` for a flat ``mu`` prior and ``J - 1 + c`` for a normal one
  (BDA3 eq. 5.21), so ``E[tau^k | y]`` exists iff ``alpha > k``;
* ``rescaled(scale)``: the same prior for ``tau / scale`` (used when the data
  are standardised on the host).

Spec strings (CLI and Python): ``uniform``, ``half-normal:S``, ``half-cauchy:S``,
``half-t:NU,S``, ``exponential:RATE``, and bayesmeta's (Röver 2020) ``sqrt``, ``jeffreys``,
``overall-jeffreys``, ``berger-deely``, ``conventional``, ``dumouchel``, ``shrinkage``, ``i2``,
``half-logistic:S``, ``lomax:SHAPE,SCALE``, ``rayleigh:S``, ``log-normal:MU,SIGMA`` (of log tau),
``log-normal-tau2:MU,SIGMA`` (of log tau^2, Turner et al. 2015's parametrisation),
``inv-gamma:A,B`` (tau^2 ~ IG(A, B)) for tau; ``flat``, ``normal:M,S`` for mu.

Data-dependent priors (:class:`DataTauPrior`: Jeffreys, overall Jeffreys, Berger-Deely,
conventional, DuMouchel, uniform shrinkage, uniform I^2) are functions of the dataset's
``sigma_j``. They are created *unbound* and bound to each dataset on the host
(:meth:`DataTauPrior.bind`, called by :func:`hierjax.engine.batch.rescale_priors` inside
:func:`hierjax.fit`), which gives them ``[B, J]`` or ``[B]`` leaves like any other prior.

References:
    Gelman et al. (2013), *Bayesian Data Analysis*, 3rd ed., sec. 5.4 and 5.7.
    Gelman (2006), Prior distributions for variance parameters in hierarchical
    models, *Bayesian Analysis* 1(3).
    Röver (2020), Bayesian random-effects meta-analysis using the bayesmeta R package,
    *J. Stat. Softw.* 93(6); bayesmeta's R help for ``bayesmeta`` (argument ``tau.prior``,
    "Prior specification details"), ``dhalflogistic``, ``dlomax``, ``drayleigh``,
    ``dinvchi`` and ``TurnerEtAlPrior``.
    Röver et al. (2021), On weakly informative prior distributions for the heterogeneity
    parameter in Bayesian random-effects meta-analysis, *Res. Synth. Methods* 12(4).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, logsumexp

from hierjax.status import InputError

__all__ = [
    "TauPrior",
    "MuPrior",
    "Uniform",
    "HalfNormal",
    "HalfCauchy",
    "HalfT",
    "Exponential",
    "CustomTau",
    "UniformSqrt",
    "HalfLogistic",
    "Lomax",
    "Rayleigh",
    "LogNormal",
    "InvGammaTau2",
    "DataTauPrior",
    "Jeffreys",
    "OverallJeffreys",
    "BergerDeely",
    "Conventional",
    "DuMouchel",
    "UniformShrinkage",
    "UniformI2",
    "FlatMu",
    "NormalMu",
    "parse_tau_prior",
    "parse_mu_prior",
]

_LOG2 = math.log(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _leaf(value):
    """Canonicalise a parameter to a float64 NumPy leaf (cast later with the data)."""
    return np.asarray(value, dtype=np.float64)


def _pytree(cls):
    """Register the frozen dataclass ``cls`` as a pytree: fields with ``metadata static``
    are static (part of the tree structure), the others are leaves.

    Not ``jax.tree_util.register_dataclass``: in jaxlib 0.10 the tree structures of two
    classes registered that way compare *equal* when their fields match (their hashes
    differ), and ``jax.jit``'s dispatch cache then runs one class's executable for the
    other when their hashes meet in its table. A half-normal fit came back, with status
    ok, as the half-Cauchy posterior of the same data. Nodes registered with
    ``register_pytree_with_keys`` compare by class (``tests/test_structure.py`` checks
    every pair of families).
    """
    fields = dataclasses.fields(cls)
    data = tuple(f.name for f in fields if not f.metadata.get("static", False))
    meta = tuple(f.name for f in fields if f.metadata.get("static", False))
    keys = tuple(jax.tree_util.GetAttrKey(k) for k in data)

    def flatten_with_keys(p):
        return (
            [(k, getattr(p, n)) for k, n in zip(keys, data)],
            tuple(getattr(p, n) for n in meta),
        )

    def flatten(p):
        return [getattr(p, n) for n in data], tuple(getattr(p, n) for n in meta)

    def unflatten(aux, leaves):
        return cls(**dict(zip(data, leaves)), **dict(zip(meta, aux)))

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    return cls


class TauPrior:
    """Base class of tau priors (documentation and ``isinstance`` only)."""

    proper: bool = True
    tail_power: float = math.inf
    #: ``b`` with ``p(tau) ~ tau^b`` as ``tau -> 0`` (``inf``: faster than any power; None:
    #: not known). The posterior of ``x = log tau`` then starts like ``e^{(1 + b) x}``.
    origin_power: float | None = None
    #: fewest groups the prior itself needs (beyond the tail condition), e.g. 2 for I^2
    min_groups_floor: int = 1

    def log_density(self, tau):
        raise NotImplementedError

    def rescaled(self, scale):
        raise NotImplementedError

    def _check(self):
        """Host-side parameter checks; raise ValueError on bad values."""


def _positive(name, value, prior):
    v = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise InputError(f"{prior}: {name} must be a positive finite number, got {value!r}")


@_pytree
@dataclasses.dataclass(frozen=True)
class Uniform(TauPrior):
    r"""Improper uniform prior :math:`p(\tau) \propto 1` on :math:`[0, \infty)` (BDA3's choice).

    Needs ``J >= 3`` groups with a flat mu prior (``J >= 2`` with a normal one)
    for a proper posterior.
    """

    proper = False
    tail_power = 0.0
    origin_power = 0.0

    def log_density(self, tau):
        return jnp.zeros_like(tau)

    def rescaled(self, scale):
        return self


@_pytree
@dataclasses.dataclass(frozen=True)
class HalfNormal(TauPrior):
    r"""Half-normal prior :math:`p(\tau) = \frac{2}{S\sqrt{2\pi}} e^{-\tau^2 / 2S^2}`."""

    scale: np.ndarray

    tail_power = math.inf
    origin_power = 0.0

    def log_density(self, tau):
        s = self.scale
        return _LOG2 - _LOG_SQRT_2PI - jnp.log(s) - 0.5 * (tau / s) ** 2

    def rescaled(self, scale):
        return HalfNormal(self.scale / scale)

    def _check(self):
        _positive("scale", self.scale, "half-normal")


@_pytree
@dataclasses.dataclass(frozen=True)
class HalfCauchy(TauPrior):
    r"""Half-Cauchy prior :math:`p(\tau) = \frac{2}{\pi S (1 + \tau^2/S^2)}` (Gelman 2006)."""

    scale: np.ndarray

    tail_power = 2.0
    origin_power = 0.0

    def log_density(self, tau):
        s = self.scale
        return _LOG2 - math.log(math.pi) - jnp.log(s) - jnp.log1p((tau / s) ** 2)

    def rescaled(self, scale):
        return HalfCauchy(self.scale / scale)

    def _check(self):
        _positive("scale", self.scale, "half-cauchy")


@_pytree
@dataclasses.dataclass(frozen=True)
class HalfT(TauPrior):
    r"""Half Student-t prior with ``df`` degrees of freedom and scale ``S``.

    .. math::
        p(\tau) = \frac{2\,\Gamma(\frac{\nu+1}{2})}{\Gamma(\frac{\nu}{2})\sqrt{\nu\pi} S}
                  \left(1 + \frac{\tau^2}{\nu S^2}\right)^{-\frac{\nu+1}{2}}
    """

    df: float = dataclasses.field(metadata=dict(static=True))
    scale: np.ndarray = None  # type: ignore[assignment]  # required; a default for field order
    origin_power = 0.0

    @property
    def tail_power(self):
        return self.df + 1.0

    def log_density(self, tau):
        nu, s = self.df, self.scale
        const = _LOG2 + gammaln(0.5 * (nu + 1.0)) - gammaln(0.5 * nu) - 0.5 * math.log(nu * math.pi)
        return const - jnp.log(s) - 0.5 * (nu + 1.0) * jnp.log1p((tau / s) ** 2 / nu)

    def rescaled(self, scale):
        return HalfT(self.df, self.scale / scale)

    def _check(self):
        _positive("df", self.df, "half-t")
        _positive("scale", self.scale, "half-t")


@_pytree
@dataclasses.dataclass(frozen=True)
class Exponential(TauPrior):
    r"""Exponential prior :math:`p(\tau) = \lambda e^{-\lambda \tau}`."""

    rate: np.ndarray

    tail_power = math.inf
    origin_power = 0.0

    def log_density(self, tau):
        return jnp.log(self.rate) - self.rate * tau

    def rescaled(self, scale):
        return Exponential(self.rate * scale)

    def _check(self):
        _positive("rate", self.rate, "exponential")


@_pytree
@dataclasses.dataclass(frozen=True)
class CustomTau(TauPrior):
    r"""A user-supplied JAX log-density ``logpdf(tau)`` for tau in the data's units.

    Under standardisation by ``scale`` the kernel sees
    :math:`\log p(\tau') = \mathrm{logpdf}(\tau' \cdot scale) + \log scale`.

    Args:
        logpdf: a jittable function of a scalar ``tau >= 0``. Need not be normalised;
            if it is, pass ``proper=True`` to get the log marginal likelihood.
        proper: whether ``logpdf`` is a normalised density.
        tail_power: ``c`` with ``p(tau) ~ tau^(-c)`` at infinity; estimated from
            ``logpdf`` at two large points when not given.
        origin_power: ``b`` with ``p(tau) ~ tau^b`` as ``tau -> 0`` (``inf``: faster than
            any power); estimated from ``logpdf`` at three tiny points when not given
            (None if they disagree). It picks the grid's map near ``tau = 0``
            (:func:`hierjax.inference.grid.general_kappa`): a Gamma(0.3) prior's ``tau^-0.7`` is
            integrated exactly. ``b <= -1`` is refused: the posterior would be improper.
    """

    logpdf: Callable = dataclasses.field(metadata=dict(static=True))
    proper: bool = dataclasses.field(default=False, metadata=dict(static=True))
    tail_power: float | None = dataclasses.field(  # type: ignore[assignment]
        default=None, metadata=dict(static=True)
    )  # None: estimated from logpdf
    scale: np.ndarray = dataclasses.field(default_factory=lambda: _leaf(1.0))
    origin_power: float | None = dataclasses.field(default=None, metadata=dict(static=True))

    def __post_init__(self):
        if self.tail_power is None:
            object.__setattr__(self, "tail_power", _estimate_tail_power(self.logpdf))
        if self.origin_power is None:
            object.__setattr__(self, "origin_power", _estimate_origin_power(self.logpdf))

    def log_density(self, tau):
        return self.logpdf(tau * self.scale) + jnp.log(self.scale)

    def rescaled(self, scale):
        return dataclasses.replace(self, scale=self.scale * scale)

    def _check(self):
        lp = np.asarray(jax.jit(self.logpdf)(jnp.asarray(1.0)))
        if lp.shape != ():
            raise InputError(f"custom tau prior: logpdf must return a scalar, got shape {lp.shape}")
        b = self.origin_power
        if b is not None and b <= -1:
            raise InputError(
                f"custom tau prior: p(tau) ~ tau^b near tau = 0 with b = {b:.6g} <= -1 is not "
                "integrable there, and p(y | tau) tends to a positive limit as tau -> 0: the "
                "posterior would be improper"
            )


def _estimate_tail_power(logpdf) -> float:
    """``c`` in ``p(tau) ~ tau^(-c)``: the log-log slope of ``logpdf`` far out (host side)."""
    t1, t2 = 1e12, 1e24  # representable in float32 as well
    with jax.ensure_compile_time_eval():
        a = float(logpdf(jnp.asarray(t1)))
        b = float(logpdf(jnp.asarray(t2)))
    if b == -math.inf or (
        math.isfinite(a) and math.isfinite(b) and (a - b) / math.log(t2 / t1) > 50
    ):
        return math.inf
    if not (math.isfinite(a) and math.isfinite(b)):
        raise InputError(
            "custom tau prior: logpdf is not finite at large tau; pass tail_power= explicitly"
        )
    return (a - b) / math.log(t2 / t1)


def _estimate_origin_power(logpdf) -> float | None:
    """``b`` in ``p(tau) ~ tau^b`` as ``tau -> 0``: the log-log slope of ``logpdf`` over
    1e-30..1e-25 and 1e-25..1e-20 (normal numbers in float32 too), when both agree (host
    side); ``inf`` for a density that vanishes faster than any power; None otherwise."""
    t = (1e-30, 1e-25, 1e-20)
    with jax.ensure_compile_time_eval():
        a, b, c = (float(logpdf(jnp.asarray(v))) for v in t)
    step = math.log(t[1] / t[0])
    if a == -math.inf or (math.isfinite(a) and math.isfinite(b) and (b - a) / step > 50):
        return math.inf
    if not all(math.isfinite(v) for v in (a, b, c)):
        return None
    s1, s2 = (b - a) / step, (c - b) / step
    if abs(s1 - s2) > 1e-4 * max(1.0, abs(s1)):
        return None
    return round(s1, 5)


# ----------------------------------------------------------------------------------------
# bayesmeta's families (Röver 2020; Röver et al. 2021): fixed priors with array leaves.
# ----------------------------------------------------------------------------------------
def _log(x):
    return jnp.log(x)


@_pytree
@dataclasses.dataclass(frozen=True)
class UniformSqrt(TauPrior):
    r"""Improper uniform prior on :math:`\sqrt\tau`: :math:`p(\tau) \propto \tau^{-1/2}`.

    bayesmeta's ``tau.prior = "sqrt"`` (Röver 2020, sec. 2.2). Integrable at
    ``tau = 0``; tail power ``c = 1/2``, so ``J >= 2`` groups with a flat mu prior.
    """

    proper = False
    tail_power = 0.5
    origin_power = -0.5

    def log_density(self, tau):
        return -0.5 * jnp.log(tau)

    def rescaled(self, scale):
        return self


@_pytree
@dataclasses.dataclass(frozen=True)
class HalfLogistic(TauPrior):
    r"""Half-logistic prior (bayesmeta ``dhalflogistic``; Johnson et al. 1994, ch. 23.11).

    .. math::
        p(\tau) = \frac{2\, e^{-\tau/S}}{S\,(1 + e^{-\tau/S})^2}, \qquad \tau \ge 0
    """

    scale: np.ndarray

    tail_power = math.inf
    origin_power = 0.0

    def log_density(self, tau):
        z = tau / self.scale
        return _LOG2 - jnp.log(self.scale) - z - 2.0 * jax.nn.softplus(-z)

    def rescaled(self, scale):
        return HalfLogistic(self.scale / scale)

    def _check(self):
        _positive("scale", self.scale, "half-logistic")


@_pytree
@dataclasses.dataclass(frozen=True)
class Lomax(TauPrior):
    r"""Lomax (Pareto II) prior (bayesmeta ``dlomax``), shape :math:`\alpha`, scale :math:`\lambda`.

    .. math::
        p(\tau) = \frac{\alpha}{\lambda} \left(1 + \frac{\tau}{\lambda}\right)^{-(\alpha + 1)}

    Tail power ``c = alpha + 1``; ``shape`` is static (it decides which moments exist).
    """

    shape: float = dataclasses.field(metadata={"static": True})
    scale: np.ndarray = None  # type: ignore[assignment]  # required; a default for field order
    origin_power = 0.0

    @property
    def tail_power(self):
        return self.shape + 1.0

    def log_density(self, tau):
        a, lam = self.shape, self.scale
        return math.log(a) - jnp.log(lam) - (a + 1.0) * jnp.log1p(tau / lam)

    def rescaled(self, scale):
        return Lomax(self.shape, self.scale / scale)

    def _check(self):
        _positive("shape", self.shape, "lomax")
        _positive("scale", self.scale, "lomax")


@_pytree
@dataclasses.dataclass(frozen=True)
class Rayleigh(TauPrior):
    r"""Rayleigh prior (bayesmeta ``drayleigh``): :math:`p(\tau) = \frac{\tau}{S^2} e^{-\tau^2/2S^2}`."""

    scale: np.ndarray

    tail_power = math.inf
    origin_power = 1.0

    def log_density(self, tau):
        s = self.scale
        return jnp.log(tau) - 2.0 * jnp.log(s) - 0.5 * (tau / s) ** 2

    def rescaled(self, scale):
        return Rayleigh(self.scale / scale)

    def _check(self):
        _positive("scale", self.scale, "rayleigh")


@_pytree
@dataclasses.dataclass(frozen=True)
class LogNormal(TauPrior):
    r"""Log-normal prior on tau: :math:`\log\tau \sim N(m, s^2)`.

    .. math::
        p(\tau) = \frac{1}{\tau s \sqrt{2\pi}} \exp\!\left(-\frac{(\log\tau - m)^2}{2 s^2}\right)

    Turner et al. (2015) and bayesmeta's ``TurnerEtAlPrior`` state their empirical priors
    for ``tau^2`` (``log tau^2 ~ N(m2, s2^2)``): that is this prior with ``m = m2 / 2``,
    ``s = s2 / 2`` (spec ``log-normal-tau2:M2,S2``). Its tail decays faster than any
    power (``tail_power = inf``).
    origin_power = math.inf
    """

    loc: np.ndarray
    sigma: np.ndarray

    tail_power = math.inf

    def log_density(self, tau):
        lt = jnp.log(tau)
        return -lt - jnp.log(self.sigma) - _LOG_SQRT_2PI - 0.5 * ((lt - self.loc) / self.sigma) ** 2

    def rescaled(self, scale):
        loc = self.loc - np.log(scale)
        # every leaf needs the per-dataset leading axis (the engine slices leaves by dataset)
        return LogNormal(
            loc, np.broadcast_to(np.asarray(self.sigma, np.float64), np.shape(loc)).copy()
        )

    def _check(self):
        if not np.all(np.isfinite(np.asarray(self.loc, dtype=np.float64))):
            raise InputError(f"log-normal: mu must be finite, got {self.loc!r}")
        _positive("sigma", self.sigma, "log-normal")


@_pytree
@dataclasses.dataclass(frozen=True)
class InvGammaTau2(TauPrior):
    r"""Inverse-gamma prior on the variance: :math:`\tau^2 \sim IG(a, b)`, as a density of tau.

    .. math::
        p(\tau) = 2\tau \, p_{IG}(\tau^2) = \frac{2\, b^a}{\Gamma(a)} \tau^{-2a-1} e^{-b/\tau^2}

    (Jacobian ``d tau^2 / d tau = 2 tau``). bayesmeta's scaled inverse-chi prior
    ``dinvchi(df = nu, scale = s)`` is the case ``a = nu/2``, ``b = s^2/2``. Tail power
    ``c = 2a + 1``; ``shape`` (``a``) is static.
    """

    shape: float = dataclasses.field(metadata={"static": True})
    scale: np.ndarray = None  # type: ignore[assignment]  # required; a default for field order
    origin_power = math.inf

    @property
    def tail_power(self):
        return 2.0 * self.shape + 1.0

    def log_density(self, tau):
        a, b = self.shape, self.scale
        return (
            _LOG2
            + a * jnp.log(b)
            - math.lgamma(a)
            - (2.0 * a + 1.0) * jnp.log(tau)
            - b / (tau * tau)
        )

    def rescaled(self, scale):
        return InvGammaTau2(self.shape, self.scale / np.asarray(scale, np.float64) ** 2)

    def _check(self):
        _positive("shape", self.shape, "inv-gamma")
        _positive("scale", self.scale, "inv-gamma")


# ----------------------------------------------------------------------------------------
# bayesmeta's data-dependent "non-informative" priors (functions of the sigma_j).
# ----------------------------------------------------------------------------------------
def _per_dataset(scale, leaf):
    """``scale`` (scalar or ``[B]``) shaped to broadcast against ``leaf`` (``[B]`` or ``[B, J]``)."""
    s = np.asarray(scale, np.float64)
    leaf = np.asarray(leaf)
    return s.reshape(s.shape + (1,) * max(0, leaf.ndim - s.ndim))


def _as_sigma_mask(sigma, mask, name):
    """Host side: ``sigma`` as float64 ``[..., J]`` and a bool mask of the same shape."""
    s = np.asarray(sigma, np.float64)
    if s.ndim == 0:
        s = s[None]
    m = np.ones(s.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), s.shape)
    if not np.all(np.isfinite(s[m])) or np.any(s[m] <= 0):
        raise InputError(f"{name} tau prior: sigma must be positive and finite to bind the prior")
    k = m.sum(axis=-1)
    if np.any(k < 1):
        raise InputError(f"{name} tau prior: a dataset has no groups")
    return np.where(m, s, 1.0), m, k


def _log_v(sigma2, tau):
    """``log(sigma_j^2 + tau^2)`` without overflow at large tau, ``[J]``."""
    return jnp.logaddexp(jnp.log(sigma2), 2.0 * jnp.log(tau))


def _host_log_integral(log_f_of_x, s2, m, h=0.125, left=22.0, right=45.0):
    r"""``log int_0^inf f(tau) dtau`` for ``[B, J]`` sigma^2 (host, float64, trapezoid in x = log tau).

    ``log_f_of_x(x[K, 1, 1], s2[1, B, J], m) -> log(tau f(tau)) [K, B]``. The integrands used here
    are analytic in the strip ``|Im x| < pi/4`` and decay like ``e^{2x}`` (left) and
    ``e^{-x}`` (right), so the trapezoid rule with step ``h`` has relative error about
    ``exp(-pi^2 / (2h))`` (4e-18 for ``h = 1/8``; Trefethen & Weideman 2014, SIAM Rev.
    56(3), thm. 5.1) plus the tails cut at ``e^{-44}``.
    """
    ls = 0.5 * np.log(s2)
    lo = np.min(np.where(m, ls, np.inf), axis=-1) - left  # [B]
    hi = np.max(np.where(m, ls, -np.inf), axis=-1) + right
    n = int(np.ceil(np.max(hi - lo) / h)) + 1
    out = np.empty(s2.shape[0])
    step = max(1, (1 << 21) // (n * s2.shape[1]))
    for a in range(0, s2.shape[0], step):
        sl = slice(a, a + step)
        x = lo[sl][None, :] + h * np.arange(n)[:, None]  # [K, b]
        lf = log_f_of_x(x[:, :, None], s2[None, sl], m[None, sl])  # [K, b]
        top = lf.max(axis=0)
        out[sl] = top + np.log(h * np.sum(np.exp(lf - top), axis=0))
    return out


class DataTauPrior(TauPrior):
    """A tau prior that is a function of the dataset's ``sigma_j`` (bayesmeta's defaults).

    Created unbound (``Jeffreys()``); :meth:`bind` computes its leaves from ``sigma``
    (``[J]`` or ``[B, J]``) and a mask on the host, in float64. :func:`hierjax.fit` binds
    it to each dataset's standardised ``sigma_j`` (the priors are scale equivariant:
    the prior bound to ``sigma / c`` is the prior for ``tau / c``).
    """

    def bind(self, sigma, mask=None):
        raise NotImplementedError

    @property
    def bound(self) -> bool:
        return all(getattr(self, f.name) is not None for f in dataclasses.fields(self))  # type: ignore[arg-type]

    def _need_bound(self):
        if not self.bound:
            raise InputError(
                f"{type(self).__name__} tau prior depends on the data's sigma; "
                "bind it first (fit does this for you)"
            )


class _VectorDataPrior(DataTauPrior):
    """Data priors holding the whole ``sigma2 [.., J]`` and ``mask [.., J]``."""

    def rescaled(self, scale):
        self._need_bound()
        c = _per_dataset(scale, self.sigma2)
        changes = {"sigma2": np.asarray(self.sigma2) / c**2}
        if hasattr(self, "log_norm"):
            changes["log_norm"] = np.asarray(self.log_norm) - np.log(
                _per_dataset(scale, self.log_norm)
            )
        return dataclasses.replace(self, **changes)

    def _parts(self, tau):
        mask = jnp.asarray(self.mask) > 0  # cast-proof: the engine casts leaves to floats
        k = jnp.sum(mask).astype(jnp.result_type(tau))
        return mask, k, _log_v(self.sigma2, tau)


@_pytree
@dataclasses.dataclass(frozen=True)
class Jeffreys(_VectorDataPrior):
    r"""Tibshirani's (1989) noninformative prior, the Berger-Bernardo reference prior for tau
    (Bodnar et al. 2016); bayesmeta's ``"Jeffreys"`` (Röver 2020, sec. 2.2):

    .. math::
        p(\tau) \propto \sqrt{\sum_j \left(\frac{\tau}{\sigma_j^2 + \tau^2}\right)^2}

    Improper: ``~ tau`` at 0 and ``~ sqrt(J) / tau`` at infinity (``c = 1``).
    """

    sigma2: np.ndarray | None = None
    mask: np.ndarray | None = None

    proper = False
    tail_power = 1.0

    def bind(self, sigma, mask=None):
        s, m, _ = _as_sigma_mask(sigma, mask, "jeffreys")
        return Jeffreys(s**2, m)

    def log_density(self, tau):
        mask, _, lv = self._parts(tau)
        return 0.5 * logsumexp(jnp.where(mask, 2.0 * (jnp.log(tau) - lv), -jnp.inf))


@_pytree
@dataclasses.dataclass(frozen=True)
class OverallJeffreys(_VectorDataPrior):
    r"""The "overall" Jeffreys prior of bayesmeta (``"overallJeffreys"``; Mathur 2025's
    "Jeffreys2"): the square root of the determinant of the Fisher information of
    ``(mu, tau)`` in ``y_j ~ N(mu, sigma_j^2 + tau^2)``, which is diagonal with entries
    ``sum_j 1/v_j`` and ``2 sum_j tau^2/v_j^2`` (``v_j = sigma_j^2 + tau^2``):

    .. math::
        p(\tau) \propto \sqrt{\sum_j \frac{1}{\sigma_j^2 + \tau^2}}
                        \sqrt{\sum_j \left(\frac{\tau}{\sigma_j^2 + \tau^2}\right)^2}

    It behaves like ``tau`` at 0 and like ``J / tau^2`` at infinity (``c = 2``), so it is
    integrable: :meth:`bind` normalises it numerically (``log_norm``) and it counts as proper.
    """

    sigma2: np.ndarray | None = None
    mask: np.ndarray | None = None
    log_norm: np.ndarray | None = None

    proper = True
    tail_power = 2.0

    @staticmethod
    def _log_unnorm(lt, lv, mask, xp):
        """log of the unnormalised density from log tau and log v_j (numpy or jax)."""
        lse = (lambda a, axis: logsumexp(a, axis=axis)) if xp is jnp else _np_logsumexp
        return 0.5 * (
            lse(xp.where(mask, -lv, -xp.inf), -1)
            + lse(xp.where(mask, 2.0 * (lt - lv), -xp.inf), -1)
        )

    def bind(self, sigma, mask=None):
        s, m, _ = _as_sigma_mask(sigma, mask, "overall-jeffreys")
        s2 = s**2
        shape = s2.shape[:-1]
        s2b, mb = s2.reshape(-1, s2.shape[-1]), m.reshape(-1, m.shape[-1])

        def log_f(x, s2_, m_):
            lv = np.logaddexp(np.log(s2_), 2.0 * x)
            return x[..., 0] + self._log_unnorm(x, lv, m_, np)

        log_z = _host_log_integral(log_f, s2b, mb).reshape(shape)
        return OverallJeffreys(s2, m, -log_z)

    def log_density(self, tau):
        mask, _, lv = self._parts(tau)
        return self.log_norm + self._log_unnorm(jnp.log(tau), lv, mask, jnp)


@_pytree
@dataclasses.dataclass(frozen=True)
class BergerDeely(_VectorDataPrior):
    r"""Berger and Deely's (1988) prior, bayesmeta's ``"BergerDeely"`` (improper):

    .. math::
        p(\tau) \propto \prod_j \left(\frac{\tau}{\sigma_j^2 + \tau^2}\right)^{1/J}

    ``~ tau`` at 0, ``~ 1/tau`` at infinity (``c = 1``). Equal to :class:`Jeffreys` (up to a
    constant) when all ``sigma_j`` are equal.
    """

    sigma2: np.ndarray | None = None
    mask: np.ndarray | None = None

    proper = False
    tail_power = 1.0

    def bind(self, sigma, mask=None):
        s, m, _ = _as_sigma_mask(sigma, mask, "berger-deely")
        return BergerDeely(s**2, m)

    def log_density(self, tau):
        mask, k, lv = self._parts(tau)
        return jnp.log(tau) - jnp.sum(jnp.where(mask, lv, 0.0)) / k


@_pytree
@dataclasses.dataclass(frozen=True)
class Conventional(_VectorDataPrior):
    r"""The "conventional" prior of bayesmeta (proper; for testing and model selection):

    .. math::
        p(\tau) \propto \prod_j \left(\frac{\tau}{(\sigma_j^2 + \tau^2)^{3/2}}\right)^{1/J}

    ``~ tau`` at 0, ``~ tau^-2`` at infinity (``c = 2``). The normalising constant has no
    closed form for unequal ``sigma_j`` (it is ``sigma`` when they are equal); :meth:`bind`
    computes it on the host (``log_norm``).
    """

    sigma2: np.ndarray | None = None
    mask: np.ndarray | None = None
    log_norm: np.ndarray | None = None

    proper = True
    tail_power = 2.0

    def bind(self, sigma, mask=None):
        s, m, k = _as_sigma_mask(sigma, mask, "conventional")
        s2 = s**2
        shape = s2.shape[:-1]
        s2b, mb = s2.reshape(-1, s2.shape[-1]), m.reshape(-1, m.shape[-1])
        kb = k.reshape(-1).astype(np.float64)

        def log_f(x, s2_, m_):
            lv = np.logaddexp(np.log(s2_), 2.0 * x)
            return 2.0 * x[..., 0] - 1.5 * np.sum(np.where(m_, lv, 0.0), axis=-1) / kb

        log_z = _host_log_integral(log_f, s2b, mb).reshape(shape)
        return Conventional(s2, m, -log_z)

    def log_density(self, tau):
        mask, k, lv = self._parts(tau)
        return self.log_norm + jnp.log(tau) - 1.5 * jnp.sum(jnp.where(mask, lv, 0.0)) / k


def _np_logsumexp(a, axis):
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(a - top), axis=axis))


def _harmonic_s02(s, m, k):
    """``s_0^2 = J / sum_j sigma_j^-2``: harmonic mean of the squared standard errors."""
    return k / np.sum(np.where(m, 1.0 / s**2, 0.0), axis=-1)


class _ScalarDataPrior(DataTauPrior):
    """Data priors holding one scale per dataset (``[B]`` leaf ``s2``, a variance)."""

    def rescaled(self, scale):
        self._need_bound()
        return dataclasses.replace(self, s2=np.asarray(self.s2) / _per_dataset(scale, self.s2) ** 2)

    def _check(self):
        if self.bound:
            _positive("s2", self.s2, type(self).__name__)


@_pytree
@dataclasses.dataclass(frozen=True)
class DuMouchel(_ScalarDataPrior):
    r"""DuMouchel's prior (Spiegelhalter et al. 2004, sec. 5.7.3; bayesmeta ``"DuMouchel"``):

    .. math::
        p(\tau) = \frac{s_0}{(s_0 + \tau)^2}, \qquad s_0^2 = \frac{J}{\sum_j \sigma_j^{-2}}

    (``s_0^2`` the harmonic mean of the ``sigma_j^2``). Proper, ``c = 2``. The leaf is
    ``s2 = s_0^2``; ``DuMouchel(s2=...)`` fixes it instead of binding it to the data.
    """

    s2: np.ndarray | None = None

    proper = True
    tail_power = 2.0

    def bind(self, sigma, mask=None):
        s, m, k = _as_sigma_mask(sigma, mask, "dumouchel")
        return DuMouchel(_harmonic_s02(s, m, k))

    def log_density(self, tau):
        ls0 = 0.5 * jnp.log(self.s2)
        return ls0 - 2.0 * jnp.logaddexp(ls0, jnp.log(tau))


@_pytree
@dataclasses.dataclass(frozen=True)
class UniformShrinkage(_ScalarDataPrior):
    r"""The uniform shrinkage prior (Spiegelhalter et al. 2004, sec. 5.7.3; bayesmeta
    ``"shrinkage"``): uniform on ``B = s_0^2 / (s_0^2 + tau^2)``,

    .. math::
        p(\tau) = \frac{2 s_0^2 \tau}{(s_0^2 + \tau^2)^2}, \qquad s_0^2 = \frac{J}{\sum_j \sigma_j^{-2}}

    Proper, ``c = 3``. Leaf ``s2 = s_0^2``.
    """

    s2: np.ndarray | None = None

    proper = True
    tail_power = 3.0

    def bind(self, sigma, mask=None):
        s, m, k = _as_sigma_mask(sigma, mask, "shrinkage")
        return UniformShrinkage(_harmonic_s02(s, m, k))

    def log_density(self, tau):
        ls2 = jnp.log(self.s2)
        return _LOG2 + ls2 + jnp.log(tau) - 2.0 * jnp.logaddexp(ls2, 2.0 * jnp.log(tau))


@_pytree
@dataclasses.dataclass(frozen=True)
class UniformI2(_ScalarDataPrior):
    r"""Uniform prior on ``I^2 = tau^2 / (hat sigma^2 + tau^2)`` (bayesmeta ``"I2"``):

    .. math::
        p(\tau) = \frac{2 \hat\sigma^2 \tau}{(\hat\sigma^2 + \tau^2)^2}, \qquad
        \hat\sigma^2 = \frac{(J - 1) \sum_j \sigma_j^{-2}}{(\sum_j \sigma_j^{-2})^2 - \sum_j \sigma_j^{-4}}

    (Higgins and Thompson 2002, eq. 9, the "typical" within-study variance). Proper,
    ``c = 3``; ``hat sigma^2`` needs ``J >= 2`` groups. Leaf ``s2 = hat sigma^2``.
    """

    s2: np.ndarray | None = None

    proper = True
    tail_power = 3.0
    min_groups_floor = 2

    def bind(self, sigma, mask=None):
        s, m, k = _as_sigma_mask(sigma, mask, "i2")
        if np.any(k < 2):
            raise InputError(
                "i2 tau prior: needs at least 2 groups per dataset (hat sigma^2 "
                "is undefined for one)"
            )
        w = np.where(m, 1.0 / s**2, 0.0)
        sw = w.sum(axis=-1)
        return UniformI2((k - 1) * sw / (sw**2 - np.sum(w**2, axis=-1)))

    def log_density(self, tau):
        ls2 = jnp.log(self.s2)
        return _LOG2 + ls2 + jnp.log(tau) - 2.0 * jnp.logaddexp(ls2, 2.0 * jnp.log(tau))


class MuPrior:
    """Base class of mu priors."""

    proper: bool = True

    def _check(self):
        pass


@_pytree
@dataclasses.dataclass(frozen=True)
class FlatMu(MuPrior):
    r"""Improper flat prior :math:`p(\mu) \propto 1` (BDA3 sec. 5.4, the default)."""

    proper = False

    def rescaled(self, loc, scale):
        return self


@_pytree
@dataclasses.dataclass(frozen=True)
class NormalMu(MuPrior):
    r"""Normal prior :math:`\mu \sim N(m, s^2)`."""

    loc: np.ndarray
    scale: np.ndarray

    def rescaled(self, loc, scale):
        return NormalMu((self.loc - loc) / scale, self.scale / scale)

    def _check(self):
        if not np.all(np.isfinite(np.asarray(self.loc, dtype=np.float64))):
            raise InputError(f"normal mu prior: loc must be finite, got {self.loc!r}")
        _positive("scale", self.scale, "normal mu prior")


def _numbers(spec: str, rest: str, n: int):
    parts = [p for p in rest.split(",")] if rest else []
    if len(parts) != n:
        raise InputError(f"prior spec {spec!r}: expected {n} number(s) after ':', got {len(parts)}")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise InputError(f"prior spec {spec!r}: parameters must be numbers") from None


_TAU_SPECS = {
    "uniform": (0, lambda: Uniform()),
    "half-normal": (1, lambda s: HalfNormal(_leaf(s))),
    "half-cauchy": (1, lambda s: HalfCauchy(_leaf(s))),
    "half-t": (2, lambda nu, s: HalfT(float(nu), _leaf(s))),
    "exponential": (1, lambda r: Exponential(_leaf(r))),
    # bayesmeta (Röver 2020): see the classes for the densities
    "sqrt": (0, lambda: UniformSqrt()),
    "jeffreys": (0, lambda: Jeffreys()),
    "overall-jeffreys": (0, lambda: OverallJeffreys()),
    "berger-deely": (0, lambda: BergerDeely()),
    "conventional": (0, lambda: Conventional()),
    "dumouchel": (0, lambda: DuMouchel()),
    "shrinkage": (0, lambda: UniformShrinkage()),
    "i2": (0, lambda: UniformI2()),
    "half-logistic": (1, lambda s: HalfLogistic(_leaf(s))),
    "lomax": (2, lambda a, s: Lomax(float(a), _leaf(s))),
    "rayleigh": (1, lambda s: Rayleigh(_leaf(s))),
    "log-normal": (2, lambda m, s: LogNormal(_leaf(m), _leaf(s))),
    "log-normal-tau2": (2, lambda m, s: LogNormal(_leaf(0.5 * m), _leaf(0.5 * s))),
    "inv-gamma": (2, lambda a, b: InvGammaTau2(float(a), _leaf(b))),
}
#: bayesmeta's own spellings (case-insensitive) and other common ones
_TAU_ALIASES = {
    "overalljeffreys": "overall-jeffreys",
    "bergerdeely": "berger-deely",
    "uniform-shrinkage": "shrinkage",
    "halflogistic": "half-logistic",
    "lognormal": "log-normal",
    "invgamma": "inv-gamma",
}


def parse_tau_prior(spec) -> TauPrior:
    """Turn a spec string (or a prior, or a callable log-density) into a checked tau prior.

    Examples:
        >>> parse_tau_prior("half-cauchy:5")
        HalfCauchy(scale=array(5.))
    """
    if isinstance(spec, TauPrior):
        prior = spec
    elif callable(spec):
        prior = CustomTau(spec)
    elif isinstance(spec, str):
        name, _, rest = spec.strip().lower().partition(":")
        name = _TAU_ALIASES.get(name, name)
        if name not in _TAU_SPECS:
            raise InputError(
                f"unknown tau prior {spec!r}; expected one of "
                + ", ".join(_TAU_SPECS)
                + " (or a JAX log-density)"
            )
        n, make = _TAU_SPECS[name]
        prior = make(*_numbers(spec, rest, n))  # type: ignore[operator]
    else:
        raise InputError(f"tau prior must be a spec string, a TauPrior or a callable, got {spec!r}")
    prior._check()
    return prior


def parse_mu_prior(spec) -> MuPrior:
    """Turn ``"flat"`` or ``"normal:M,S"`` (or a MuPrior) into a checked mu prior."""
    if isinstance(spec, MuPrior):
        prior = spec
    elif isinstance(spec, str):
        name, _, rest = spec.strip().lower().partition(":")
        if name == "flat":
            _numbers(spec, rest, 0)
            prior = FlatMu()
        elif name == "normal":
            m, s = _numbers(spec, rest, 2)
            prior = NormalMu(_leaf(m), _leaf(s))
        else:
            raise InputError(f"unknown mu prior {spec!r}; expected 'flat' or 'normal:M,S'")
    else:
        raise InputError(f"mu prior must be a spec string or a MuPrior, got {spec!r}")
    prior._check()
    return prior
