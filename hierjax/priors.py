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
``half-t:NU,S``, ``exponential:RATE`` for tau; ``flat``, ``normal:M,S`` for mu.

References:
    Gelman et al. (2013), *Bayesian Data Analysis*, 3rd ed., sec. 5.4 and 5.7.
    Gelman (2006), Prior distributions for variance parameters in hierarchical
    models, *Bayesian Analysis* 1(3).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln


class InputError(ValueError):
    """Bad input data or settings, with a message naming the dataset and field."""

__all__ = [
    "TauPrior", "MuPrior",
    "Uniform", "HalfNormal", "HalfCauchy", "HalfT", "Exponential", "CustomTau",
    "FlatMu", "NormalMu",
    "parse_tau_prior", "parse_mu_prior",
]

_LOG2 = math.log(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _leaf(value):
    """Canonicalise a parameter to a float64 NumPy leaf (cast later with the data)."""
    return np.asarray(value, dtype=np.float64)


class TauPrior:
    """Base class of tau priors (documentation and ``isinstance`` only)."""

    proper: bool = True
    tail_power: float = math.inf

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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Uniform(TauPrior):
    r"""Improper uniform prior :math:`p(\tau) \propto 1` on :math:`[0, \infty)` (BDA3's choice).

    Needs ``J >= 3`` groups with a flat mu prior (``J >= 2`` with a normal one)
    for a proper posterior.
    """

    proper = False
    tail_power = 0.0

    def log_density(self, tau):
        return jnp.zeros_like(tau)

    def rescaled(self, scale):
        return self


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HalfNormal(TauPrior):
    r"""Half-normal prior :math:`p(\tau) = \frac{2}{S\sqrt{2\pi}} e^{-\tau^2 / 2S^2}`."""

    scale: np.ndarray

    tail_power = math.inf

    def log_density(self, tau):
        s = self.scale
        return _LOG2 - _LOG_SQRT_2PI - jnp.log(s) - 0.5 * (tau / s) ** 2

    def rescaled(self, scale):
        return HalfNormal(self.scale / scale)

    def _check(self):
        _positive("scale", self.scale, "half-normal")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HalfCauchy(TauPrior):
    r"""Half-Cauchy prior :math:`p(\tau) = \frac{2}{\pi S (1 + \tau^2/S^2)}` (Gelman 2006)."""

    scale: np.ndarray

    tail_power = 2.0

    def log_density(self, tau):
        s = self.scale
        return _LOG2 - math.log(math.pi) - jnp.log(s) - jnp.log1p((tau / s) ** 2)

    def rescaled(self, scale):
        return HalfCauchy(self.scale / scale)

    def _check(self):
        _positive("scale", self.scale, "half-cauchy")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HalfT(TauPrior):
    r"""Half Student-t prior with ``df`` degrees of freedom and scale ``S``.

    .. math::
        p(\tau) = \frac{2\,\Gamma(\frac{\nu+1}{2})}{\Gamma(\frac{\nu}{2})\sqrt{\nu\pi} S}
                  \left(1 + \frac{\tau^2}{\nu S^2}\right)^{-\frac{\nu+1}{2}}
    """

    df: float = dataclasses.field(metadata=dict(static=True))
    scale: np.ndarray = None

    @property
    def tail_power(self):
        return self.df + 1.0

    def log_density(self, tau):
        nu, s = self.df, self.scale
        const = (_LOG2 + gammaln(0.5 * (nu + 1.0)) - gammaln(0.5 * nu)
                 - 0.5 * math.log(nu * math.pi))
        return const - jnp.log(s) - 0.5 * (nu + 1.0) * jnp.log1p((tau / s) ** 2 / nu)

    def rescaled(self, scale):
        return HalfT(self.df, self.scale / scale)

    def _check(self):
        _positive("df", self.df, "half-t")
        _positive("scale", self.scale, "half-t")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Exponential(TauPrior):
    r"""Exponential prior :math:`p(\tau) = \lambda e^{-\lambda \tau}`."""

    rate: np.ndarray

    tail_power = math.inf

    def log_density(self, tau):
        return jnp.log(self.rate) - self.rate * tau

    def rescaled(self, scale):
        return Exponential(self.rate * scale)

    def _check(self):
        _positive("rate", self.rate, "exponential")


@jax.tree_util.register_dataclass
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
    """

    logpdf: Callable = dataclasses.field(metadata=dict(static=True))
    proper: bool = dataclasses.field(default=False, metadata=dict(static=True))
    tail_power: Optional[float] = dataclasses.field(default=None, metadata=dict(static=True))
    scale: np.ndarray = dataclasses.field(default_factory=lambda: _leaf(1.0))

    def __post_init__(self):
        if self.tail_power is None:
            object.__setattr__(self, "tail_power", _estimate_tail_power(self.logpdf))

    def log_density(self, tau):
        return self.logpdf(tau * self.scale) + jnp.log(self.scale)

    def rescaled(self, scale):
        return dataclasses.replace(self, scale=self.scale * scale)

    def _check(self):
        lp = np.asarray(jax.jit(self.logpdf)(jnp.asarray(1.0)))
        if lp.shape != ():
            raise InputError(f"custom tau prior: logpdf must return a scalar, got shape {lp.shape}")


def _estimate_tail_power(logpdf) -> float:
    """``c`` in ``p(tau) ~ tau^(-c)``: the log-log slope of ``logpdf`` far out (host side)."""
    t1, t2 = 1e12, 1e24  # representable in float32 as well
    with jax.ensure_compile_time_eval():
        a = float(logpdf(jnp.asarray(t1)))
        b = float(logpdf(jnp.asarray(t2)))
    if b == -math.inf or (math.isfinite(a) and math.isfinite(b) and (a - b) / math.log(t2 / t1) > 50):
        return math.inf
    if not (math.isfinite(a) and math.isfinite(b)):
        raise InputError("custom tau prior: logpdf is not finite at large tau; "
                         "pass tail_power= explicitly")
    return (a - b) / math.log(t2 / t1)


class MuPrior:
    """Base class of mu priors."""

    proper: bool = True

    def _check(self):
        pass


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FlatMu(MuPrior):
    r"""Improper flat prior :math:`p(\mu) \propto 1` (BDA3 sec. 5.4, the default)."""

    proper = False

    def rescaled(self, loc, scale):
        return self


@jax.tree_util.register_dataclass
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
        if name not in _TAU_SPECS:
            raise InputError(f"unknown tau prior {spec!r}; expected one of "
                             + ", ".join(_TAU_SPECS) + " (or a JAX log-density)")
        n, make = _TAU_SPECS[name]
        prior = make(*_numbers(spec, rest, n))
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
