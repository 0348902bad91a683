r"""Fit a population prior for tau by maximising the summed exact log evidence, with gradients.

Turner et al. (2015) derived empirical log-normal priors for the heterogeneity ``tau`` from
thousands of Cochrane meta-analyses. This script does that on simulated data with a known
answer: ``n`` meta-analyses with ``J`` from 3 to ``j_max`` groups, each with its own
``tau_i ~ LogNormal(m, s)`` (``log tau_i ~ N(m, s^2)``) and its own ``mu_i``, then

.. math::
    (\hat m, \hat s) = \arg\max_{m, s} \sum_i \log p(y_i \mid m, s),\qquad
    p(y_i \mid m, s) = \int_0^\infty \mathrm{LogNormal}(\tau; m, s)
        \int p(y_i \mid \mu, \tau)\, d\mu\, d\tau

with each ``log p(y_i | m, s)`` the exact (quadrature) log evidence of
:func:`hierjax.core.log_evidence`, a flat ``mu`` prior per meta-analysis (``mu_i`` is a
nuisance integrated against Lebesgue measure: the likelihood of the within-dataset
contrasts, so no prior for ``mu_i`` needs choosing) and the gradient from ``jax.grad``
through it. Damped Newton steps on ``(m, s)`` (no new dependency); standard errors from
the inverse Hessian of the summed negative log evidence (central differences of the exact
gradient: one compiled function serves everything), reported against the truth.

Usage::

    python scripts/population_prior.py                  # 2,000 meta-analyses, J = 3..20
    python scripts/population_prior.py --n 500 --j-max 10 --seed 1

Needs float64 (it turns on ``jax_enable_x64`` itself when run as a script).

References:
    Turner, Jackson, Wei, Thompson and Higgins (2015), Predictive distributions for
    between-study heterogeneity and simple methods for their application in Bayesian
    meta-analysis, *Statistics in Medicine* 34(6).
"""

from __future__ import annotations

import argparse
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import hierjax
from hierjax import core

#: Truth: log tau ~ N(M, S^2), about Turner et al.'s all-outcomes prior for log odds
#: ratios (log tau^2 ~ N(-2.56, 1.74^2), halved to the scale of tau).
TRUTH = (-1.28, 0.87)


class Simulated(NamedTuple):
    """Simulated meta-analyses, padded to ``j_max`` groups.

    Attributes:
        y, sigma: ``[B, J]`` (padded slots: 0 and 1); mask: ``[B, J]`` bool;
        tau: each meta-analysis' true tau, ``[B]``.
    """

    y: np.ndarray
    sigma: np.ndarray
    mask: np.ndarray
    tau: np.ndarray


def simulate(n_datasets: int, j_max: int = 20, truth=TRUTH, seed: int = 0) -> Simulated:
    """``n_datasets`` meta-analyses of log odds ratios: ``J ~ U{3..j_max}``, ``sigma_j ~
    U(0.1, 0.8)``, ``mu_i ~ N(0, 0.5^2)``, ``log tau_i ~ N(m, s^2)``, ``theta_ij ~ N(mu_i,
    tau_i^2)``, ``y_ij ~ N(theta_ij, sigma_ij^2)``."""
    rng = np.random.default_rng(seed)
    m, s = truth
    n_groups = rng.integers(3, j_max + 1, size=n_datasets)
    mask = np.arange(j_max)[None, :] < n_groups[:, None]
    sigma = np.where(mask, rng.uniform(0.1, 0.8, (n_datasets, j_max)), 1.0)
    mu = rng.normal(0.0, 0.5, n_datasets)
    tau = np.exp(rng.normal(m, s, n_datasets))
    theta = mu[:, None] + tau[:, None] * rng.normal(size=(n_datasets, j_max))
    y = np.where(mask, theta + sigma * rng.normal(size=(n_datasets, j_max)), 0.0)
    return Simulated(y, sigma, mask, tau)


def total_log_evidence(params, y, sigma, mask):
    """``sum_i log p(y_i | m, s)`` at ``params = (m, s)``, scalar."""
    m, s = params[0], params[1]
    prior = hierjax.LogNormal(m, s)
    each = jax.vmap(lambda a, b, c: core.log_evidence(a, b, c, prior, hierjax.FlatMu()))(
        y, sigma, mask
    )
    return jnp.sum(each)


class Result(NamedTuple):
    """Estimates ``(m, s)`` with standard errors, the truth, and timings in seconds."""

    estimate: np.ndarray
    std_error: np.ndarray
    truth: tuple
    converged: bool
    n_datasets: int
    iterations: int
    seconds_fit: float
    seconds_compile: float


_value_and_grad = jax.jit(jax.value_and_grad(total_log_evidence))


def _hessian(params, y, sigma, mask, h):
    r"""``d^2 (-sum log p) / d(m, s)^2`` by central differences of the exact gradient,
    ``H_{:i} = -(g(p + h_i e_i) - g(p - h_i e_i)) / (2 h_i)``, symmetrised (one compile
    serves the Newton steps and the standard errors)."""
    cols = []
    for i in range(2):
        e = np.zeros(2)
        e[i] = h[i]
        gp = np.asarray(_value_and_grad(params + e, y, sigma, mask)[1], np.float64)
        gm = np.asarray(_value_and_grad(params - e, y, sigma, mask)[1], np.float64)
        cols.append(-(gp - gm) / (2.0 * h[i]))
    H = np.stack(cols, axis=1)
    return 0.5 * (H + H.T)


def fit(y, sigma, mask, start=(0.0, 1.0), max_iter: int = 30):
    r"""Maximise ``sum_i log p(y_i | m, s)`` by damped Newton steps on ``(m, s)``.

    Each step solves ``H d = g`` (gradient ``g`` from ``jax.grad``, Hessian ``H`` from
    :func:`_hessian`), falls back to the gradient where ``H`` is not positive definite,
    and halves ``d`` until the log evidence rises and ``s`` stays positive.

    Returns:
        ``(params[2], hessian[2, 2], iterations, converged)``.
    """
    dt = y.dtype
    eps = float(np.finfo(dt).eps)
    p = np.asarray(start, np.float64)
    f, g = (
        np.float64(a) if np.ndim(a) == 0 else np.asarray(a, np.float64)
        for a in _value_and_grad(jnp.asarray(p, dt), y, sigma, mask)
    )
    converged = False
    for it in range(1, max_iter + 1):  # noqa: B007  (the count is returned)
        h = eps ** (1.0 / 3.0) * np.maximum(np.abs(p), 0.1)
        H = _hessian(jnp.asarray(p, dt), y, sigma, mask, h)
        try:
            np.linalg.cholesky(H)
            d = np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            d = g / max(np.abs(np.diag(H)).max(), 1.0)
        step = 1.0
        while step > 1e-6:
            q = p + step * d
            if q[1] > 0:
                fq, gq = _value_and_grad(jnp.asarray(q, dt), y, sigma, mask)
                if float(fq) >= f - 10 * eps * abs(f):
                    break
            step *= 0.5
        p, f, g = q, float(fq), np.asarray(gq, np.float64)
        if np.all(np.abs(step * d) <= 10 * np.sqrt(eps) * np.maximum(np.abs(p), 1.0)):
            converged = True
            break
    h = eps ** (1.0 / 3.0) * np.maximum(np.abs(p), 0.1)
    return p, _hessian(jnp.asarray(p, dt), y, sigma, mask, h), it, converged


def run(n_datasets: int = 2000, j_max: int = 20, truth=TRUTH, seed: int = 0) -> Result:
    """Simulate, fit and return the estimates with their standard errors (see module doc)."""
    sim = simulate(n_datasets, j_max, truth, seed)
    dt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    y, sigma, mask = jnp.asarray(sim.y, dt), jnp.asarray(sim.sigma, dt), jnp.asarray(sim.mask)
    t0 = time.perf_counter()
    jax.block_until_ready(_value_and_grad(jnp.asarray([0.0, 1.0], dt), y, sigma, mask))
    t1 = time.perf_counter()
    est, H, iters, ok = fit(y, sigma, mask)
    t2 = time.perf_counter()
    cov = np.linalg.inv(H)
    return Result(est, np.sqrt(np.diag(cov)), tuple(truth), ok, n_datasets, iters, t2 - t1, t1 - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="meta-analyses (default 2000)")
    ap.add_argument("--j-max", type=int, default=20, help="largest J (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    res = run(args.n, args.j_max, seed=args.seed)
    print(
        f"{res.n_datasets} simulated meta-analyses, J = 3..{args.j_max}, "
        f"log tau ~ N(m, s^2); {res.iterations} Newton steps, converged {res.converged}"
    )
    print(f"{'':4}{'truth':>10}{'estimate':>12}{'std error':>12}{'z':>8}")
    for name, t, e, se in zip(("m", "s"), res.truth, res.estimate, res.std_error):
        print(f"{name:4}{t:10.4f}{e:12.4f}{se:12.4f}{(e - t) / se:8.2f}")
    print(
        f"time: compile and first evaluation {res.seconds_compile:.1f} s, fit with "
        f"standard errors {res.seconds_fit:.1f} s; {jax.default_backend()}, "
        f"{jax.devices()[0].device_kind}"
    )


if __name__ == "__main__":
    main()
