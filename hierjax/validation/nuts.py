r"""Cross-check against NumPyro NUTS: the same model, sampled, and compared with the exact posterior.

The model of :func:`hierjax.fit`, written in NumPyro:

.. math::
    y_j \sim N(\theta_j, \sigma_j^2),\quad \theta_j \sim N(\mu, \tau^2),\quad
    \mu \sim \text{flat} \mid N(m, s^2),\quad \tau \sim p(\tau)

in the centered (``theta_j`` sampled) or non-centered (``eta_j ~ N(0, 1)``,
``theta_j = mu + tau eta_j``) parameterisation. The tau priors are NumPyro's own
distributions (``HalfNormal``, ``HalfCauchy``, a folded ``StudentT``, ``Exponential``;
the improper uniform is an ``ImproperUniform`` on ``tau > 0``; a :class:`CustomTau`
enters through ``numpyro.factor`` of its log-density), so the prior code is
independent of :mod:`hierjax.model.priors`. Densities are evaluated in the user's units;
the sampler works on a shifted and scaled copy of ``mu``, ``tau`` and ``theta``
(a constant-Jacobian reparameterisation, so the posterior is unchanged) for good
conditioning in any unit.

:func:`run_nuts` runs NUTS on many datasets at once: the NumPyro NUTS kernel
(``numpyro.infer.hmc.hmc`` with a potential-function generator, the functional API)
is ``vmap``-ed over chains and datasets inside one module-level ``jit``; warmup
adaptation (step size and diagonal mass matrix) is per dataset and chain.
:func:`compare` turns a run and an exact :class:`hierjax.Fit` into z-scores in Monte
Carlo standard errors, with tests that they are standard normal.

NumPyro and SciPy are imported inside the functions: this module imports without them.

References:
    Gelman et al. (2013), *Bayesian Data Analysis*, 3rd ed., sec. 5.4.
    Hoffman and Gelman (2014), The No-U-Turn Sampler, *JMLR* 15.
    Vehtari, Gelman, Simpson, Carpenter and Bürkner (2021), Rank-normalization, folding,
    and localization: an improved R-hat, *Bayesian Analysis* 16(2) (MCSE of quantiles).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from hierjax.engine.batch import (
    Batch,
    InputError,
    as_batch,
    describe_priors,
    min_groups,
    validate,
)
from hierjax.engine.cache import make_room, register
from hierjax.model.priors import (
    CustomTau,
    Exponential,
    HalfCauchy,
    HalfNormal,
    HalfT,
    MuPrior,
    NormalMu,
    TauPrior,
    Uniform,
    parse_mu_prior,
    parse_tau_prior,
)

__all__ = [
    "COMPARE_LEVELS",
    "TAU_KINDS",
    "Comparison",
    "MuPriorCode",
    "NutsRun",
    "TauPriorCode",
    "compare",
    "comparison_json",
    "comparison_rows",
    "crosscheck",
    "hierarchical_model",
    "print_report",
    "prior_codes",
    "run_nuts",
]

#: quantile levels compared by default (the crosscheck fits the exact posterior at these).
COMPARE_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


class TauPriorCode(NamedTuple):
    """A built-in tau prior as array leaves (one compiled sampler for all of them).

    Attributes:
        kind: index into :data:`TAU_KINDS`, int32 scalar.
        a: scale (half-normal, half-Cauchy, half-t) or rate (exponential); 1 for uniform.
        df: degrees of freedom of the half-t (1 otherwise).
    """

    kind: ArrayLike
    a: ArrayLike
    df: ArrayLike


class MuPriorCode(NamedTuple):
    """The mu prior as array leaves: ``normal`` (bool), ``loc``, ``scale`` (unused when flat)."""

    normal: ArrayLike
    loc: ArrayLike
    scale: ArrayLike


#: tau prior families that :class:`TauPriorCode` covers, in ``kind`` order.
TAU_KINDS = (Uniform, HalfNormal, HalfCauchy, HalfT, Exponential)


def prior_codes(tau_prior: TauPrior, mu_prior: MuPrior):
    """``(TauPriorCode or the CustomTau itself, MuPriorCode)`` with float64 NumPy leaves.

    Discrete choices are normally pytree types (STYLE.md); here the family is a leaf
    because every family would otherwise cost a ~30 s compile of the vmapped NUTS
    kernel. A :class:`CustomTau` stays a type (its log-density is code)."""
    one = np.float64(1.0)
    if isinstance(tau_prior, CustomTau):
        tau_code: TauPriorCode | CustomTau = tau_prior
    elif isinstance(tau_prior, Uniform):
        tau_code = TauPriorCode(np.int32(0), one, one)
    elif isinstance(tau_prior, HalfNormal):
        tau_code = TauPriorCode(np.int32(1), np.float64(tau_prior.scale), one)
    elif isinstance(tau_prior, HalfCauchy):
        tau_code = TauPriorCode(np.int32(2), np.float64(tau_prior.scale), one)
    elif isinstance(tau_prior, HalfT):
        tau_code = TauPriorCode(np.int32(3), np.float64(tau_prior.scale), np.float64(tau_prior.df))
    elif isinstance(tau_prior, Exponential):
        tau_code = TauPriorCode(np.int32(4), np.float64(tau_prior.rate), one)
    else:
        raise InputError(f"no NumPyro version of the tau prior {tau_prior!r}")
    if isinstance(mu_prior, NormalMu):
        mu_code = MuPriorCode(np.bool_(True), np.float64(mu_prior.loc), np.float64(mu_prior.scale))
    else:
        mu_code = MuPriorCode(np.bool_(False), np.float64(0.0), one)
    return tau_code, mu_code


def _tau_log_prior(prior, tau):
    """``log p(tau)`` from NumPyro's distributions (``None`` for the flat prior)."""
    import numpyro.distributions as dist

    if isinstance(prior, TauPriorCode):
        branches = [lambda t: jnp.zeros_like(t)] + [
            functools.partial(_tau_log_prior, fam(**kw))
            for fam, kw in (
                (HalfNormal, {"scale": prior.a}),
                (HalfCauchy, {"scale": prior.a}),
                (_HalfTCode, {"df": prior.df, "scale": prior.a}),
                (Exponential, {"rate": prior.a}),
            )
        ]
        return jax.lax.switch(prior.kind, branches, tau)
    if isinstance(prior, Uniform):
        return None
    if isinstance(prior, HalfNormal):
        return dist.HalfNormal(prior.scale).log_prob(tau)
    if isinstance(prior, HalfCauchy):
        return dist.HalfCauchy(prior.scale).log_prob(tau)
    if isinstance(prior, (HalfT, _HalfTCode)):
        return dist.FoldedDistribution(dist.StudentT(prior.df, 0.0, prior.scale)).log_prob(tau)
    if isinstance(prior, Exponential):
        return dist.Exponential(prior.rate).log_prob(tau)
    if isinstance(prior, CustomTau):
        return prior.log_density(tau)
    raise InputError(f"no NumPyro version of the tau prior {prior!r}")


class _HalfTCode(NamedTuple):
    df: jnp.ndarray  # a traced leaf here (static in hierjax.HalfT)
    scale: jnp.ndarray


def hierarchical_model(y, sigma, mask, tau_prior: TauPrior, mu_prior: MuPrior, centered=False):
    r"""The normal-normal hierarchical model of one dataset, in NumPyro.

    .. math::
        y_j \sim N(\theta_j, \sigma_j^2),\quad \theta_j = \mu + \tau\,\eta_j,\quad
        \eta_j \sim N(0, 1)\ \text{(non-centered)}\quad\text{or}\quad
        \theta_j \sim N(\mu, \tau^2)\ \text{(centered)}

    Latent sites are in standard units ``(. - loc) / scale`` (``loc`` the mean of ``y``,
    ``scale`` the geometric mean of ``sigma``, both over real groups): ``mu_z``,
    ``tau_z`` and ``eta`` or ``theta_z``; the deterministic sites ``mu``, ``tau``,
    ``theta`` are in the data's units. The priors are densities of ``mu`` and ``tau``
    in the data's units (the map has a constant Jacobian). Padded groups
    (``mask = False``) have no likelihood and a standard-normal latent that touches
    nothing else.

    Args:
        y, sigma: ``[J]`` estimates and standard errors (padded entries arbitrary but finite).
        mask: ``[J]`` bool, real groups.
        tau_prior, mu_prior: hierjax priors in the data's units, or their array
            encodings (:func:`prior_codes`, used by :func:`run_nuts`).
        centered: sample ``theta`` directly (``True``) or ``eta`` (``False``).

    Example:
        >>> from numpyro.infer import MCMC, NUTS
        >>> import jax, jax.numpy as jnp, hierjax
        >>> y, s = map(jnp.asarray, hierjax.eight_schools())
        >>> mcmc = MCMC(NUTS(hierarchical_model), num_warmup=200, num_samples=200, progress_bar=False)
        >>> mcmc.run(jax.random.PRNGKey(0), y, s, jnp.ones(8, bool), hierjax.Uniform(), hierjax.FlatMu())
    """
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    dtype = y.dtype
    n = jnp.sum(mask).astype(dtype)
    loc = jnp.sum(jnp.where(mask, y, 0.0)) / n
    scale = jnp.exp(jnp.sum(jnp.where(mask, jnp.log(sigma), 0.0)) / n)
    if isinstance(mu_prior, MuPriorCode):
        mu_z = numpyro.sample("mu_z", dist.ImproperUniform(constraints.real, (), ()))
        mu_lp = dist.Normal(mu_prior.loc, mu_prior.scale).log_prob(loc + scale * mu_z)
        numpyro.factor("mu_prior", jnp.where(mu_prior.normal, mu_lp, 0.0))
    elif isinstance(mu_prior, NormalMu):
        mu_z = numpyro.sample(
            "mu_z", dist.Normal((mu_prior.loc - loc) / scale, mu_prior.scale / scale)
        )
    else:
        mu_z = numpyro.sample("mu_z", dist.ImproperUniform(constraints.real, (), ()))
    tau_z = numpyro.sample("tau_z", dist.ImproperUniform(constraints.positive, (), ()))
    numpyro.deterministic("mu", loc + scale * mu_z)
    tau = numpyro.deterministic("tau", scale * tau_z)
    log_prior = _tau_log_prior(tau_prior, tau)
    if log_prior is not None:
        numpyro.factor("tau_prior", log_prior)
    J = y.shape[-1]
    if centered:
        # padded groups: N(0, 1), independent of mu and tau
        theta_z = numpyro.sample(
            "theta_z",
            dist.Normal(jnp.where(mask, mu_z, 0.0), jnp.where(mask, tau_z, 1.0)).to_event(1),
        )
    else:
        eta = numpyro.sample("eta", dist.Normal(jnp.zeros(J, dtype), 1.0).to_event(1))
        theta_z = mu_z + tau_z * eta
    numpyro.deterministic("theta", loc + scale * theta_z)
    # likelihood in standard units: N(y | theta, sigma) up to the constant log scale per group
    y_z = jnp.where(mask, (y - loc) / scale, 0.0)
    with numpyro.handlers.mask(mask=mask):
        numpyro.sample("y", dist.Normal(theta_z, sigma / scale), obs=y_z)


def _init_params(key, J, dtype, centered):
    """NumPyro's ``init_to_uniform``: every unconstrained coordinate uniform on (-2, 2)."""
    k = jax.random.split(key, 3)
    u = functools.partial(jax.random.uniform, minval=-2.0, maxval=2.0, dtype=dtype)
    params = {"mu_z": u(k[0], ()), "tau_z": u(k[1], ())}
    params["theta_z" if centered else "eta"] = u(k[2], (J,))
    return params


class _Chain(NamedTuple):
    mu: jnp.ndarray  # [S]
    tau: jnp.ndarray  # [S]
    theta: jnp.ndarray  # [S, J]
    diverging: jnp.ndarray  # [S]
    num_steps: jnp.ndarray  # [S]
    step_size: jnp.ndarray  # scalar
    accept_prob: jnp.ndarray  # scalar


def _one_chain(
    key,
    y,
    sigma,
    mask,
    tau_prior,
    mu_prior,
    target_accept,
    *,
    centered,
    warmup,
    samples,
    max_tree_depth,
) -> _Chain:
    """NUTS on one dataset, one chain: warmup with adaptation, then ``samples`` draws."""
    from numpyro.infer.hmc import hmc
    from numpyro.infer.util import constrain_fn, potential_energy

    model = functools.partial(hierarchical_model, centered=centered)
    args = (y, sigma, mask, tau_prior, mu_prior)

    def potential_fn_gen(*model_args):
        return functools.partial(potential_energy, model, model_args, {})

    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_fn_gen, algo="NUTS")
    k_init, k_run = jax.random.split(key)
    state = init_kernel(
        _init_params(k_init, y.shape[-1], y.dtype, centered),
        warmup,
        target_accept_prob=target_accept,
        max_tree_depth=max_tree_depth,
        model_args=args,
        rng_key=k_run,
    )

    def step(s, _):
        s = sample_kernel(s, model_args=args)
        return s, (s.z, s.diverging, s.num_steps)

    # one scan over warmup and sampling (one copy of the NUTS kernel to compile);
    # the warmup part of its output is dropped
    state, (z, div, nsteps) = jax.lax.scan(step, state, None, length=warmup + samples)
    z, div, nsteps = jax.tree.map(lambda a: a[warmup:], (z, div, nsteps))
    values = jax.vmap(lambda p: constrain_fn(model, args, {}, p, return_deterministic=True))(z)
    theta = jnp.where(mask, values["theta"], jnp.nan)
    return _Chain(
        values["mu"],
        values["tau"],
        theta,
        div,
        nsteps,
        state.adapt_state.step_size,
        state.mean_accept_prob,
    )


def _nuts_block(
    keys,
    y,
    sigma,
    mask,
    tau_prior,
    mu_prior,
    target_accept,
    *,
    centered,
    warmup,
    samples,
    max_tree_depth,
) -> _Chain:
    """:func:`_one_chain` vmapped over chains (``keys[B, C]``) and datasets (``y[B, J]``).

    One ``vmap`` over the flattened ``B * C`` lanes (half the tracing of two nested ones)."""
    B, C = keys.shape[:2]
    one = functools.partial(
        _one_chain, centered=centered, warmup=warmup, samples=samples, max_tree_depth=max_tree_depth
    )
    lanes = jax.tree.map(lambda a: jnp.repeat(a, C, axis=0), (y, sigma, mask))
    flat = jax.vmap(
        one, in_axes=(0, 0, 0, 0, None, None, None)
    )(  # type: ignore[call-arg]
        keys.reshape((B * C,) + keys.shape[2:]), *lanes, tau_prior, mu_prior, target_accept
    )
    return jax.tree.map(lambda a: a.reshape((B, C) + a.shape[1:]), flat)


_nuts_block_jit = jax.jit(
    _nuts_block, static_argnames=("centered", "warmup", "samples", "max_tree_depth")
)
_COMPILED: dict = {}
register(size=_COMPILED.__len__, clear=_COMPILED.clear)


def _compiled(args, statics):
    """The compiled block for these shapes and settings: ``(executable, seconds to compile)``."""
    leaves, tree = jax.tree.flatten(args)
    sig = (tree, tuple((a.shape, a.dtype) for a in leaves), tuple(sorted(statics.items())))
    if sig in _COMPILED:
        return _COMPILED[sig], 0.0
    make_room()  # (hierjax.engine.cache)
    t0 = time.perf_counter()
    exe = _nuts_block_jit.lower(*args, **statics).compile()
    _COMPILED[sig] = exe
    return exe, time.perf_counter() - t0


# --------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------


class NutsRun(NamedTuple):
    """Posterior draws of ``B`` selected datasets, ``C`` chains, ``S`` draws each (data units).

    Attributes:
        mu: ``[B, C, S]``.
        tau: ``[B, C, S]``.
        theta: ``[B, C, S, J]`` (nan where padded).
        diverging: divergent transitions after warmup, ``[B, C, S]`` bool.
        num_steps: leapfrog steps per draw, ``[B, C, S]``.
        step_size: adapted step size per chain, ``[B, C]``.
        accept_prob: mean acceptance probability after warmup, ``[B, C]``.
        mask: real groups, ``[B, J]``.
        n_groups: real groups per dataset, ``[B]``.
        datasets: index of each selected dataset in the input batch, ``[B]``.
        names: dataset labels, length ``B``.
        tau_prior, mu_prior: the priors sampled under (data units).
        centered: parameterisation used.
        warmup: warmup iterations per chain.
        target_accept: NUTS's target acceptance probability (step-size adaptation).
        seconds: wall time of the sampling (compiled code only, excluding compile).
        compile_seconds: time spent compiling in this call (0 when cached).
    """

    mu: np.ndarray
    tau: np.ndarray
    theta: np.ndarray
    diverging: np.ndarray
    num_steps: np.ndarray
    step_size: np.ndarray
    accept_prob: np.ndarray
    mask: np.ndarray
    n_groups: np.ndarray
    datasets: np.ndarray
    names: tuple
    tau_prior: TauPrior
    mu_prior: MuPrior
    centered: bool
    warmup: int
    target_accept: float
    seconds: float
    compile_seconds: float


def _chain_keys(seed: int, datasets: np.ndarray, chains: int):
    """``[B, C]`` keys: dataset index, its repeat number (for repeated selections), chain.

    A dataset's chains do not depend on which other datasets are selected."""
    seen: dict = {}
    rep = []
    for d in datasets:
        rep.append(seen.get(int(d), 0))
        seen[int(d)] = rep[-1] + 1
    base = jax.random.PRNGKey(int(seed))
    ds = jnp.asarray(datasets, jnp.uint32)
    rp = jnp.asarray(rep, jnp.uint32)
    per = jax.vmap(lambda d, r: jax.random.fold_in(jax.random.fold_in(base, d), r))(ds, rp)
    return jax.vmap(
        lambda k: jax.vmap(lambda c: jax.random.fold_in(k, c))(jnp.arange(chains, dtype=jnp.uint32))
    )(per)


def run_nuts(
    y,
    sigma=None,
    *,
    tau_prior="uniform",
    mu_prior="flat",
    centered: bool = False,
    chains: int = 4,
    warmup: int = 500,
    samples: int = 1000,
    seed: int = 0,
    datasets: Sequence[int] | None = None,
    mask=None,
    names=None,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    chunk: int = 256,
    dtype=None,
) -> NutsRun:
    r"""NUTS on a batch of datasets: one compiled, ``vmap``-ed kernel over datasets and chains.

    .. math::
        p(\mu, \tau, \theta \mid y) \propto p(\tau)\, p(\mu)
            \prod_j N(\theta_j \mid \mu, \tau^2)\, N(y_j \mid \theta_j, \sigma_j^2)

    Args:
        y, sigma: as for :func:`hierjax.fit`: ``[J]``, ``[B, J]``, ragged lists, or a
            :class:`~hierjax.engine.batch.Batch` (then ``sigma`` is None).
        tau_prior, mu_prior: spec strings or prior objects, as for :func:`hierjax.fit`.
        centered: centered (``theta``) or non-centered (``eta``) parameterisation.
        chains, warmup, samples: ``C`` chains per dataset, warmup iterations (adaptation
            of step size and diagonal mass matrix, per dataset and chain), ``S`` kept draws.
        seed: the run is a deterministic function of ``seed`` and the selection.
        datasets: indices of the datasets to run (repeats allowed: independent runs of the
            same dataset); default all.
        mask: ``[B, J]`` bool for padded rectangular input.
        names: dataset labels (default ``0 .. B-1``).
        target_accept, max_tree_depth: NUTS settings (NumPyro's defaults).
        chunk: datasets per compiled block (the last block is padded with repeats of a
            selected dataset, whose results are dropped).
        dtype: compute dtype (default as :func:`hierjax.fit`).

    Returns:
        NutsRun (draws as float64 NumPy arrays).

    Raises:
        InputError: bad data or settings (checked on the host before anything compiles).

    Example:
        >>> import hierjax
        >>> from hierjax.validation.nuts import run_nuts
        >>> run = run_nuts(*hierjax.eight_schools(), chains=2, warmup=200, samples=200)
        >>> run.tau.shape
        (1, 2, 200)
    """
    from hierjax.engine.fitting import compute_dtype

    tp, mp = parse_tau_prior(tau_prior), parse_mu_prior(mu_prior)
    for name, v, lo in (
        ("chains", chains, 1),
        ("warmup", warmup, 0),
        ("samples", samples, 1),
        ("chunk", chunk, 1),
        ("max_tree_depth", max_tree_depth, 1),
    ):
        if int(v) != v or v < lo:
            raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not 0.0 < float(target_accept) < 1.0:
        raise InputError(f"target_accept must lie in (0, 1), got {target_accept!r}")
    dt = compute_dtype(y, sigma, dtype=dtype)
    batch = y if isinstance(y, Batch) else as_batch(y, sigma, mask=mask, names=names)
    B_all = batch.y.shape[0]
    sel = np.arange(B_all) if datasets is None else np.asarray(datasets).reshape(-1)
    if sel.size == 0 or sel.dtype.kind not in "iu" or np.any((sel < 0) | (sel >= B_all)):
        raise InputError(f"datasets must be indices in [0, {B_all}), got {datasets!r}")
    problems = validate(batch, min_groups(tp, mp), describe_priors(tp, mp))
    bad = [problems[i] for i in sel if problems[i] is not None]
    if bad:
        raise InputError(
            bad[0] + (f" (and {len(bad) - 1} more invalid datasets)" if len(bad) > 1 else "")
        )
    B = sel.size
    size = B if B < chunk else int(chunk)
    order = np.concatenate([sel, np.full(-B % size, sel[0])])
    keys = _chain_keys(seed, sel, int(chains))
    keys = jnp.concatenate([keys, jnp.repeat(keys[:1], -B % size, axis=0)])
    cast = functools.partial(jnp.asarray, dtype=dt)
    tau_code, mu_code = prior_codes(tp, mp)
    tp_c = jax.tree.map(lambda a: a if np.asarray(a).dtype.kind in "ib" else cast(a), tau_code)
    mp_c = jax.tree.map(lambda a: a if np.asarray(a).dtype.kind in "ib" else cast(a), mu_code)
    statics = {
        "centered": bool(centered),
        "warmup": int(warmup),
        "samples": int(samples),
        "max_tree_depth": int(max_tree_depth),
    }
    blocks, run_s, compile_s = [], 0.0, 0.0
    for start in range(0, order.size, size):
        idx = order[start : start + size]
        args = (
            keys[start : start + size],
            cast(batch.y[idx]),
            cast(batch.sigma[idx]),
            jnp.asarray(batch.mask[idx]),
            tp_c,
            mp_c,
            cast(target_accept),
        )
        exe, c = _compiled(args, statics)
        compile_s += c
        t0 = time.perf_counter()
        out = jax.block_until_ready(exe(*args))
        run_s += time.perf_counter() - t0
        blocks.append(jax.tree.map(np.asarray, out))
    out = jax.tree.map(lambda *a: np.concatenate(a)[:B], *blocks)
    f64 = functools.partial(np.asarray, dtype=np.float64)
    W = batch.width  # the input's own width: the padding for shapes never shows
    m = batch.mask[sel, :W]
    return NutsRun(
        mu=f64(out.mu),
        tau=f64(out.tau),
        theta=f64(out.theta[..., :W]),
        diverging=out.diverging.astype(bool),
        num_steps=out.num_steps,
        step_size=f64(out.step_size),
        accept_prob=f64(out.accept_prob),
        mask=m,
        n_groups=m.sum(axis=1),
        datasets=sel,
        names=tuple(batch.names[i] for i in sel),
        tau_prior=tp,
        mu_prior=mp,
        centered=bool(centered),
        warmup=int(warmup),
        target_accept=float(target_accept),
        seconds=run_s,
        compile_seconds=compile_s,
    )


# --------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------


class Comparison(NamedTuple):
    """Exact posterior vs NUTS, in Monte Carlo standard errors.

    ``P`` parameters (``mu``, ``tau``, ``theta[1..J]``), ``T`` statistics (``mean``,
    ``sd``, ``q<level>`` for each level of the exact fit).

    Attributes:
        names: dataset labels, length ``B``.
        params: parameter labels, length ``P``.
        stats: statistic labels, length ``T``.
        mask: real groups, ``[B, J]``.
        exact: exact values, ``[B, P, T]`` (nan where not compared).
        nuts: NUTS estimates, ``[B, P, T]``.
        mcse: their Monte Carlo standard errors, ``[B, P, T]``.
        z: ``(exact - nuts) / mcse``, ``[B, P, T]``; nan where not compared (padded
            groups, moments that do not exist or lack the finite higher moments their
            MCSE needs: with ``p(tau | y) ~ tau^-(alpha+1)``, the mean of tau (and of mu
            under a flat mu prior) is compared where ``alpha > 4``, the sd where
            ``alpha > 8``; theta_j's conditional variance is bounded, so always).
        rhat: split R-hat, ``[B, P]``.
        ess: split effective sample size of the draws (for the mean), ``[B, P]``.
        divergences: divergent transitions after warmup, ``[B]``.
        draws: kept draws per dataset (chains x samples).
        max_abs_z: largest ``|z|`` per dataset, ``[B]``.
        z_threshold: Bonferroni threshold for ``|z|`` over all compared values at ``alpha``.
        flagged: datasets with some ``|z| > z_threshold``, ``[B]``.
        ks_p: KS test of the ``B`` z-scores of each (parameter, statistic) against N(0, 1),
            p-value, ``[P, T]`` (nan where fewer than one value).
        chi2_p: ``sum z^2 ~ chi^2_B`` test (upper tail) per (parameter, statistic), ``[P, T]``.
        n_z: number of datasets compared per (parameter, statistic), ``[P, T]``.
        p_value: Bonferroni-combined p-value of all KS and chi^2 tests (``min(1, m * min p)``).
        alpha: the level used for ``z_threshold`` and :attr:`ok`.
        ok: ``p_value >= alpha`` (z-scores consistent with N(0, 1)).
    """

    names: tuple
    params: tuple
    stats: tuple
    mask: np.ndarray
    exact: np.ndarray
    nuts: np.ndarray
    mcse: np.ndarray
    z: np.ndarray
    rhat: np.ndarray
    ess: np.ndarray
    divergences: np.ndarray
    draws: int
    max_abs_z: np.ndarray
    z_threshold: float
    flagged: np.ndarray
    ks_p: np.ndarray
    chi2_p: np.ndarray
    n_z: np.ndarray
    p_value: float
    alpha: float
    ok: bool


def _split(x):
    """``[C, S, ...] -> [2C, S // 2, ...]``: split chains for split-ESS and split-R-hat."""
    _C, S = x.shape[:2]
    h = S // 2
    return np.concatenate([x[:, :h], x[:, S - h :]], axis=0)


def _ess(x):
    """Split effective sample size over the leading ``[C, S]`` axes (nan for constants)."""
    from numpyro.diagnostics import effective_sample_size

    xs = _split(x)
    const = np.all(xs == xs[:1, :1], axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        ess = effective_sample_size(xs)
    return np.where(const, np.nan, ess)


def _mcse_quantile(x, levels):
    """MCSE of quantiles of ``x[C, S, N]`` at ``levels[Q]``: ``(q[N, Q], mcse[N, Q])``.

    Vehtari et al. (2021, sec. 4.3): ESS of the indicator ``x <= q_p``, a Beta
    interval for the probability and the matching order statistics.
    """
    from scipy.stats import beta

    C, S, N = x.shape
    flat = np.sort(x.reshape(C * S, N), axis=0)
    n = C * S
    q = np.quantile(flat, levels, axis=0).T  # [N, Q]
    ind = (x[..., None] <= q[None, None]).astype(np.float64)  # [C, S, N, Q]
    ess = _ess(ind)  # [N, Q]
    p = np.asarray(levels)[None, :]
    lo = beta.ppf(0.1586553, ess * p + 1, ess * (1 - p) + 1)
    hi = beta.ppf(0.8413447, ess * p + 1, ess * (1 - p) + 1)
    ok = np.isfinite(lo) & np.isfinite(hi)
    i1 = np.clip(np.floor(np.where(ok, lo, 0) * n).astype(int), 1, n) - 1
    i2 = np.clip(np.ceil(np.where(ok, hi, 1) * n).astype(int), 1, n) - 1
    cols = np.arange(N)[:, None]
    mcse = (flat[i2, cols] - flat[i1, cols]) / 2
    return q, np.where(ok, mcse, np.nan)


def _stack_draws(run: NutsRun):
    """``[C, S, B, P]`` draws of (mu, tau, theta_1..J)."""
    x = np.concatenate([run.mu[..., None], run.tau[..., None], run.theta], axis=-1)  # [B,C,S,P]
    return np.moveaxis(x, 0, 2)


def _exact_table(fit, run: NutsRun, levels):
    """Exact ``[B, P, T]`` values for the selected datasets."""
    sel = run.datasets
    rows = []
    for m, is_theta in ((fit.mu, False), (fit.tau, False), (fit.theta, True)):
        mean, sd, qs = (np.asarray(a, np.float64)[sel] for a in (m.mean, m.sd, m.quantiles))
        if not is_theta:
            mean, sd, qs = mean[:, None], sd[:, None], qs[:, None, :]
        rows.append(np.concatenate([mean[..., None], sd[..., None], qs], axis=-1))
    return np.concatenate(rows, axis=1)


def compare(fit, run: NutsRun, *, alpha: float = 0.01) -> Comparison:
    """Z-scores of the exact posterior against NUTS, per dataset and across datasets.

    For each selected dataset and each of ``mu``, ``tau``, ``theta_j``: the posterior
    mean, sd and the quantiles at ``fit.levels``, as ``z = (exact - NUTS) / MCSE``.
    MCSEs come from split effective sample sizes (NumPyro's
    ``effective_sample_size``), as in Vehtari et al. (2021) and the posterior R
    package: ``sd / sqrt(ESS)`` for the mean; for the sd the delta method on the ESS
    of ``(x - mean)^2`` (posterior's ``mcse_sd``); for a quantile ``q_p`` the ESS of
    the indicator ``x <= q_p`` and the central 68 % interval of
    ``Beta(ESS p + 1, ESS (1 - p) + 1)`` mapped to order statistics (posterior's
    ``mcse_quantile``). If the exact values are right and NUTS works, each z is
    approximately N(0, 1), and independent across datasets. The ESS-based MCSE is
    trustworthy where the ESS is a few hundred or more (Vehtari et al. recommend
    > 400); with much shorter effective chains the split-ESS is optimistic and
    the z-scores are too wide.

    NUTS itself can be off in tau's upper tail: the non-centered model has a funnel
    at large tau, and at NumPyro's default ``target_accept=0.8`` its few divergences
    sit there and tau's upper quantiles come out low by a fraction of an MCSE
    (visible across 200 datasets); ``target_accept=0.99`` removes it
    (benchmarks/results/nuts_crosscheck.md).

    Args:
        fit: the exact :class:`hierjax.Fit` of the batch ``run`` was drawn from (same
            priors, same batch; ``run.datasets`` selects its rows), or any object with
            the same ``mu``, ``tau``, ``theta`` marginals and ``levels``.
        run: a :class:`NutsRun`.
        alpha: level of the Bonferroni flag threshold and of :attr:`Comparison.ok`.

    Returns:
        Comparison.
    """
    from numpyro.diagnostics import split_gelman_rubin
    from scipy import stats as st

    levels = np.asarray(fit.levels, np.float64)
    fmask = np.asarray(fit.mask)[run.datasets]
    if fmask.shape[1] < run.mask.shape[1]:
        fmask = np.pad(fmask, ((0, 0), (0, run.mask.shape[1] - fmask.shape[1])))
    if (
        not np.array_equal(fmask[:, : run.mask.shape[1]], run.mask)
        or fmask[:, run.mask.shape[1] :].any()
    ):
        raise InputError(
            "compare: the fit and the NUTS run have different groups "
            "(fit the same batch the run was drawn from)"
        )
    J = run.mask.shape[1]
    exact = _exact_table(fit, run, levels)[:, : 2 + J]  # [B, P, T]
    x = _stack_draws(run)  # [C, S, B, P]
    C, S, B, P = x.shape
    xf = np.where(np.isfinite(x), x, 0.0)  # padded theta: zeros
    mean = xf.mean(axis=(0, 1))
    xc = xf - mean
    var = (xc**2).mean(axis=(0, 1))
    sd = np.sqrt(var)
    ess = _ess(xf)
    ess2 = _ess(xc**2)
    mcse_mean = sd / np.sqrt(ess)
    var_x2 = (xc**2).var(axis=(0, 1))
    mcse_sd = np.sqrt(var_x2 / ess2) / (2 * sd)
    q, mcse_q = _mcse_quantile(xf.reshape(C, S, B * P), levels)
    q, mcse_q = q.reshape(B, P, -1), mcse_q.reshape(B, P, -1)
    nuts = np.concatenate([mean[..., None], sd[..., None], q], axis=-1)
    mcse = np.concatenate([mcse_mean[..., None], mcse_sd[..., None], mcse_q], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rhat = split_gelman_rubin(xf) if S >= 4 else np.full((B, P), np.nan)

    # which values are compared: real groups; moments whose MCSE has a finite variance
    c = float(run.tau_prior.tail_power)  # type: ignore[arg-type]  # CustomTau: __post_init__
    alpha_tail = run.n_groups - (1.0 if isinstance(run.mu_prior, NormalMu) else 2.0) + c  # [B]
    heavy = np.ones((B, P), bool)  # parameters with tau's polynomial tail
    heavy[:, 2:] = False  # theta_j | y: bounded conditional variance
    if isinstance(run.mu_prior, NormalMu):
        heavy[:, 0] = False
    real = np.concatenate([np.ones((B, 2), bool), run.mask], axis=1)
    # a statistic of x^k has a trustworthy MCSE (the variance of x^k estimated with a
    # finite variance of its own) where E|x|^(4k) exists: alpha > 4 (mean), alpha > 8 (sd)
    mean_ok = real & (~heavy | (alpha_tail[:, None] > 4))
    sd_ok = real & (~heavy | (alpha_tail[:, None] > 8))
    use = np.concatenate(
        [mean_ok[..., None], sd_ok[..., None], np.repeat(real[..., None], levels.size, axis=-1)],
        axis=-1,
    )
    use &= np.isfinite(exact) & np.isfinite(mcse) & (mcse > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(use, (exact - nuts) / np.where(use, mcse, 1.0), np.nan)

    n_total = int(use.sum())
    z_thr = float(st.norm.isf(alpha / (2 * max(n_total, 1))))
    absz = np.where(use, np.abs(z), 0.0)
    max_abs_z = absz.max(axis=(1, 2))
    flagged = max_abs_z > z_thr
    n_z = use.sum(axis=0)
    ks_p = np.full(n_z.shape, np.nan)
    chi2_p = np.full(n_z.shape, np.nan)
    for p_i, t_i in zip(*np.nonzero(n_z)):
        zz = z[:, p_i, t_i][use[:, p_i, t_i]]
        ks_p[p_i, t_i] = st.kstest(zz, "norm").pvalue
        chi2_p[p_i, t_i] = st.chi2.sf(np.sum(zz**2), zz.size)
    ps = np.concatenate([ks_p[np.isfinite(ks_p)], chi2_p[np.isfinite(chi2_p)]])
    p_value = float(min(1.0, ps.size * ps.min())) if ps.size else math.nan
    stats_ = ("mean", "sd") + tuple("q" + format(float(v), ".10g") for v in levels)
    params = ("mu", "tau") + tuple(f"theta[{j + 1}]" for j in range(J))
    return Comparison(
        names=run.names,
        params=params,
        stats=stats_,
        mask=run.mask,
        exact=np.where(use, exact, np.nan),
        nuts=nuts,
        mcse=mcse,
        z=z,
        rhat=rhat,
        ess=ess,
        divergences=run.diverging.sum(axis=(1, 2)),
        draws=C * S,
        max_abs_z=max_abs_z,
        z_threshold=z_thr,
        flagged=flagged,
        ks_p=ks_p,
        chi2_p=chi2_p,
        n_z=n_z,
        p_value=p_value,
        alpha=float(alpha),
        ok=bool(p_value >= alpha),
    )


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


def comparison_rows(cmp: Comparison, b: int) -> tuple:
    """``(header, rows)``: one row per parameter of dataset ``b`` with each statistic's
    exact value, NUTS estimate and z, then R-hat and ESS (strings)."""
    header = ["parameter"]
    for s in cmp.stats:
        header += [f"{s}", f"nuts_{s}", f"z_{s}"]
    header += ["rhat", "ess"]
    rows = []
    for p, name in enumerate(cmp.params):
        if p >= 2 and not cmp.mask[b, p - 2]:
            continue
        r = [name]
        for t in range(len(cmp.stats)):
            r += [_fmt(cmp.exact[b, p, t]), _fmt(cmp.nuts[b, p, t]), _fmt(cmp.z[b, p, t], 2)]
        r += [_fmt(cmp.rhat[b, p], 4), _fmt(cmp.ess[b, p], 0)]
        rows.append(r)
    return header, rows


def _fmt(v, digits=None) -> str:
    v = float(v)
    if math.isnan(v):
        return "-"
    if digits is None:
        return f"{v:.4g}"
    return f"{v:.{digits}f}"


def comparison_json(cmp: Comparison, run: NutsRun) -> dict:
    """A JSON-ready summary of a comparison and its run (nan -> None)."""

    def clean(a):
        a = np.asarray(a, dtype=np.float64)
        return [clean(v) for v in a] if a.ndim else (None if not np.isfinite(a) else float(a))

    datasets = []
    for b, name in enumerate(cmp.names):
        n = int(run.n_groups[b])
        keep = list(range(2)) + [2 + j for j in range(run.mask.shape[1]) if run.mask[b, j]]
        datasets.append(
            {
                "name": str(name),
                "index": int(run.datasets[b]),
                "n_groups": n,
                "divergences": int(cmp.divergences[b]),
                "max_abs_z": clean(cmp.max_abs_z[b]),
                "flagged": bool(cmp.flagged[b]),
                "parameters": {
                    cmp.params[p]: dict(
                        rhat=clean(cmp.rhat[b, p]),
                        ess=clean(cmp.ess[b, p]),
                        **{
                            s: {
                                "exact": clean(cmp.exact[b, p, t]),
                                "nuts": clean(cmp.nuts[b, p, t]),
                                "mcse": clean(cmp.mcse[b, p, t]),
                                "z": clean(cmp.z[b, p, t]),
                            }
                            for t, s in enumerate(cmp.stats)
                        },
                    )
                    for p in keep
                },
            }
        )
    tests = [
        {
            "parameter": cmp.params[p],
            "statistic": cmp.stats[t],
            "n": int(cmp.n_z[p, t]),
            "ks_p": clean(cmp.ks_p[p, t]),
            "chi2_p": clean(cmp.chi2_p[p, t]),
        }
        for p in range(len(cmp.params))
        for t in range(len(cmp.stats))
        if cmp.n_z[p, t]
    ]
    n_draws = run.diverging.size
    return {
        "tau_prior": repr(run.tau_prior),
        "mu_prior": repr(run.mu_prior),
        "centered": run.centered,
        "chains": int(run.mu.shape[1]),
        "warmup": run.warmup,
        "samples": int(run.mu.shape[2]),
        "target_accept": run.target_accept,
        "draws_per_dataset": cmp.draws,
        "sampling_seconds": run.seconds,
        "compile_seconds": run.compile_seconds,
        "datasets_per_second": (len(cmp.names) / run.seconds if run.seconds > 0 else None),
        "divergence_rate": float(run.diverging.sum() / n_draws),
        "alpha": cmp.alpha,
        "z_threshold": cmp.z_threshold,
        "p_value": clean(cmp.p_value),
        "ok": cmp.ok,
        "n_flagged": int(cmp.flagged.sum()),
        "datasets": datasets,
        "tests": tests,
    }


def crosscheck(
    y,
    sigma=None,
    *,
    tau_prior="uniform",
    mu_prior="flat",
    centered: bool = False,
    chains: int = 4,
    warmup: int = 500,
    samples: int = 1000,
    seed: int = 0,
    datasets=None,
    levels=COMPARE_LEVELS,
    alpha: float = 0.01,
    **kwargs,
):
    """Exact fit, NUTS run and their comparison for a batch: ``(Fit, NutsRun, Comparison)``.

    Args are those of :func:`run_nuts` (``kwargs`` go to it) plus the quantile
    ``levels`` compared and the test level ``alpha``.
    """
    from hierjax.engine.fitting import fit as exact_fit

    batch = (
        y
        if isinstance(y, Batch)
        else as_batch(y, sigma, mask=kwargs.pop("mask", None), names=kwargs.pop("names", None))
    )
    run = run_nuts(
        batch,
        tau_prior=tau_prior,
        mu_prior=mu_prior,
        centered=centered,
        chains=chains,
        warmup=warmup,
        samples=samples,
        seed=seed,
        datasets=datasets,
        **kwargs,
    )
    sel = sorted({int(i) for i in run.datasets})
    sub = Batch(
        batch.y[sel],
        batch.sigma[sel],
        batch.mask[sel],
        tuple(batch.names[i] for i in sel),
        tuple(batch.groups[i] for i in sel),
        batch.width,
    )
    f = exact_fit(
        sub,
        None,
        tau_prior=tau_prior,
        mu_prior=mu_prior,
        quantiles=levels,
        dtype=kwargs.get("dtype"),
    )
    # rows of the full batch for compare (run.datasets index the full batch)
    where = {d: k for k, d in enumerate(sel)}
    rows = np.array([where[int(d)] for d in run.datasets])
    f_sel = _take_rows(f, rows)
    cmp = compare(f_sel, run._replace(datasets=np.arange(len(rows))), alpha=alpha)
    return f, run, cmp


def _take_rows(f, rows):
    """A Fit restricted (or repeated) to ``rows``."""

    def take(m):
        return type(m)(*[np.asarray(a)[rows] for a in m])

    return f._replace(
        mu=take(f.mu),
        tau=take(f.tau),
        theta=take(f.theta),
        theta_new=take(f.theta_new),
        mask=np.asarray(f.mask)[rows],
        n_groups=np.asarray(f.n_groups)[rows],
        names=tuple(f.names[i] for i in rows),
    )


def print_report(cmp: Comparison, run: NutsRun, out=None) -> None:
    """A readable table per dataset (mean and sd with z-scores, the largest quantile
    |z|, R-hat, ESS) and the across-dataset test."""
    import sys

    out = sys.stdout if out is None else out
    qs = [t for t, s in enumerate(cmp.stats) if s.startswith("q")]
    cols = ["parameter", "mean", "nuts", "z", "sd", "nuts", "z", "max|z| q", "rhat", "ess"]
    for b, name in enumerate(cmp.names):
        print(
            f"dataset {name}: {int(cmp.divergences[b])} divergent of {cmp.draws} draws; "
            f"max |z| {cmp.max_abs_z[b]:.2f}" + ("  FLAGGED" if cmp.flagged[b] else ""),
            file=out,
        )
        rows = []
        for p, pname in enumerate(cmp.params):
            if p >= 2 and not cmp.mask[b, p - 2]:
                continue
            zq = np.abs(cmp.z[b, p, qs])
            rows.append(
                [
                    pname,
                    _fmt(cmp.exact[b, p, 0]),
                    _fmt(cmp.nuts[b, p, 0]),
                    _fmt(cmp.z[b, p, 0], 2),
                    _fmt(cmp.exact[b, p, 1]),
                    _fmt(cmp.nuts[b, p, 1]),
                    _fmt(cmp.z[b, p, 1], 2),
                    _fmt(np.nanmax(zq), 2) if np.isfinite(zq).any() else "-",
                    _fmt(cmp.rhat[b, p], 3),
                    _fmt(cmp.ess[b, p], 0),
                ]
            )
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths))
            ),
            file=out,
        )
        for r in rows:
            print(
                "  ".join(
                    v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))
                ),
                file=out,
            )
    n_div = int(run.diverging.sum())
    rate = n_div / run.diverging.size
    print(
        f"{len(cmp.names)} dataset(s), {'centered' if run.centered else 'non-centered'}, "
        f"{run.mu.shape[1]} chains x {run.mu.shape[2]} draws after {run.warmup} warmup: "
        f"{n_div} divergent transitions ({100 * rate:.2f}%); sampling {run.seconds:.2f} s "
        f"({len(cmp.names) / max(run.seconds, 1e-12):.3g} datasets/s), "
        f"compile {run.compile_seconds:.1f} s",
        file=out,
    )
    print(
        f"z-scores vs N(0, 1): {int(np.isfinite(cmp.z).sum())} compared; Bonferroni-combined "
        f"KS/chi^2 p-value {cmp.p_value:.3g} ({'ok' if cmp.ok else 'FAIL'} at {cmp.alpha}); "
        f"|z| threshold {cmp.z_threshold:.2f}; flagged datasets: {int(cmp.flagged.sum())}"
        + (
            f" ({int(np.sum(cmp.flagged & (cmp.divergences > 0)))} with divergences)"
            if cmp.flagged.any()
            else ""
        ),
        file=out,
    )
