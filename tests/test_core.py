"""hierjax.core (one dataset, traceable) against the independent quadrature reference.

The log evidence and its derivatives are checked against ``tests/reference.py`` (scipy
``quad`` over tau, closed forms written again there): values to 1e-8 relative and
``jax.grad`` against central finite differences of the reference (a 4-point stencil) to
1e-6 relative in float64; values to 2e-6 relative in float32. The summaries under the
caller's ``jit(vmap(...))`` are checked against ``hierjax.fit`` (itself checked against
the reference elsewhere) within the accuracy goals. One compiled shape (``J = 8`` padded)
serves every dataset: the awkward ones (``J = 3``, a posterior mode at ``tau = 0``, units
of ``1e-3``) carry ``nan`` and ``sigma = 0`` in their padded slots, which must not matter.
"""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import Reference

import hierjax
from hierjax import core

X64 = bool(jax.config.jax_enable_x64)
J = 8
ES_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
ES_S = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)
# name, y, sigma, half-Cauchy scale, normal mu prior (loc, scale)
DATA = [
    ("eight schools", ES_Y, ES_S, 5.0, (0.0, 5.0)),
    ("J = 3", (1.0, -0.5, 2.0), (1.0, 1.5, 0.8), 1.0, (0.0, 2.0)),
    ("mode at tau = 0", (0.1, -0.1, 0.05, 0.0, -0.05), (1.0, 1.0, 1.2, 0.9, 1.0), 1.0, (0.0, 1.0)),
    (
        "units 1e-3",
        tuple(1e-3 * v for v in ES_Y),
        tuple(1e-3 * v for v in ES_S),
        5e-3,
        (1e-3, 2e-2),
    ),
    ("offset", tuple(v + 1e3 for v in ES_Y), ES_S, 25.0, (1e3, 50.0)),
]


def _batch(dtype):
    """``[B, J]`` arrays; padded slots hold nan and sigma 0 (masked out)."""
    B = len(DATA)
    Y = np.full((B, J), np.nan)
    S = np.zeros((B, J))
    M = np.zeros((B, J), bool)
    for b, (_, y, s, *_rest) in enumerate(DATA):
        Y[b, : len(y)], S[b, : len(s)], M[b, : len(y)] = y, s, True
    hc = np.array([d[3] for d in DATA])
    m0 = np.array([d[4][0] for d in DATA])
    s0 = np.array([d[4][1] for d in DATA])
    return tuple(
        jnp.asarray(a, dtype) if a.dtype != bool else jnp.asarray(a) for a in (Y, S, M, hc, m0, s0)
    )


def _total(Y, S, M, hc, m0, s0):
    """The summed log evidence of the batch, and each dataset's (aux)."""
    each = jax.vmap(
        lambda y, s, m, c, a, b: core.log_evidence(
            y, s, m, hierjax.HalfCauchy(c), hierjax.NormalMu(a, b)
        )
    )(Y, S, M, hc, m0, s0)
    return jnp.sum(each), each


_value_and_grad = jax.jit(jax.value_and_grad(_total, argnums=(0, 1, 3), has_aux=True))


@pytest.fixture(scope="module")
def run64():
    if not X64:
        pytest.skip("float64 needs JAX_ENABLE_X64=1")
    args = _batch(jnp.float64)
    return args, _value_and_grad(*args)


def _ref(y, s, hc, mu):
    return Reference(
        np.asarray(y, float),
        np.asarray(s, float),
        f"half-cauchy:{hc!r}",
        f"normal:{mu[0]!r},{mu[1]!r}",
    ).log_evidence


def _fd(f, x, h):
    """Central 4-point finite difference (error O(h^4))."""
    return (8.0 * (f(x + h) - f(x - h)) - (f(x + 2 * h) - f(x - 2 * h))) / (12.0 * h)


def test_log_evidence_matches_reference_float64(run64):
    _, ((_, each), _) = run64
    ref = np.array([_ref(y, s, hc, mu) for _, y, s, hc, mu in DATA])
    got = np.asarray(each)
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=0)


def _fd_derivatives(y, s, hc, mu, dy, ds):
    """Finite differences of the reference: d/d(scale), and along dy in y and ds in sigma."""

    def in_scale(c):
        return _ref(y, s, c, mu)

    def along_y(t):
        return _ref(y + t * dy, s, hc, mu)

    def along_sigma(t):
        return _ref(y, s + t * ds, hc, mu)

    return _fd(in_scale, hc, 1e-3 * hc), _fd(along_y, 0.0, 1e-3), _fd(along_sigma, 0.0, 1e-3)


def test_grad_matches_reference_finite_differences_float64(run64):
    """d/d(prior scale), and directional derivatives in y and sigma, per dataset."""
    _, (_, (gY, gS, ghc)) = run64
    rng = np.random.default_rng(0)
    worst = {}
    for b, (name, y, s, hc, mu) in enumerate(DATA):
        y, s = np.asarray(y), np.asarray(s)
        n = y.size
        dy, ds = rng.normal(size=n) * s, rng.normal(size=n) * s
        fds = _fd_derivatives(y, s, hc, mu, dy, ds)
        got = (
            float(ghc[b]),
            float(np.dot(np.asarray(gY[b, :n]), dy)),
            float(np.dot(np.asarray(gS[b, :n]), ds)),
        )
        for what, g, fd in zip(("scale", "y", "sigma"), got, fds):
            worst[(name, what)] = abs(g - fd) / abs(fd)
        # the padded slots hold nan and sigma 0: no gradient flows there
        assert np.all(np.asarray(gY[b, n:]) == 0) and np.all(np.asarray(gS[b, n:]) == 0)
    print("largest |grad - fd| / |fd|:", max(worst.values()))
    bad = {k: v for k, v in worst.items() if not v <= 1e-6}
    assert not bad, (bad, max(worst.values()))


def test_log_evidence_float32_value():
    args = _batch(jnp.float32)
    (_, each), grads = _value_and_grad(*args)
    assert each.dtype == jnp.float32
    ref = np.array([_ref(y, s, hc, mu) for _, y, s, hc, mu in DATA])
    np.testing.assert_allclose(np.asarray(each, float), ref, rtol=2e-6, atol=0)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_jit_vmap_summaries_equal_fit(sim, sim_fit):
    """The caller's jit(vmap(summaries)) against hierjax.fit on the same batch (uniform tau,
    flat mu, the default levels), plus one invalid dataset that is flagged, not raised."""
    dt = jnp.float64 if X64 else jnp.float32
    Y = np.concatenate([sim.y, [[1.0, np.nan] + [0.0] * (J - 2)]])
    S = np.concatenate([sim.sigma, np.ones((1, J))])
    M = np.ones(Y.shape, bool)
    out = jax.jit(jax.vmap(lambda y, s, m: core.summaries(y, s, m, levels=hierjax.DEFAULT_LEVELS)))(
        jnp.asarray(Y, dt), jnp.asarray(S, dt), jnp.asarray(M)
    )
    assert out.mu.mean.dtype == dt
    status = np.asarray(out.status)
    assert status[-1] & hierjax.STATUS["invalid"] and np.isnan(float(out.log_evidence[-1]))
    assert np.isnan(float(out.mu.mean[-1])) and np.all(np.isnan(np.asarray(out.theta.sd[-1])))
    ok = (np.asarray(sim_fit.status) == 0) & (status[:-1] == 0)
    assert ok.sum() >= 15
    goal = 1e-8 if X64 else 1e-4
    for name in ("mu", "tau", "theta", "theta_new"):
        a, f = getattr(out, name), getattr(sim_fit, name)
        unit = np.asarray(f.sd)[ok]
        for field in ("mean", "sd", "p_gt0"):
            x, r = np.asarray(getattr(a, field))[:-1][ok], np.asarray(getattr(f, field))[ok]
            scale = 1.0 if field == "p_gt0" else unit
            np.testing.assert_array_less(np.abs(x - r) / scale, 2 * goal, err_msg=f"{name}.{field}")
        x, r = np.asarray(a.quantiles)[:-1][ok], np.asarray(f.quantiles)[ok]
        np.testing.assert_array_less(
            np.abs(x - r) / unit[..., None], 2 * goal, err_msg=f"{name}.quantiles"
        )


def test_unbound_data_prior_and_batch_shapes_are_refused():
    with pytest.raises(ValueError, match="bind it first"):
        core.log_evidence(jnp.zeros(3), jnp.ones(3), None, hierjax.Jeffreys())
    with pytest.raises(ValueError, match="1-D"):
        core.log_evidence(jnp.zeros((2, 3)), jnp.ones((2, 3)))


def _population_script():
    path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "population_prior.py"
    spec = importlib.util.spec_from_file_location("population_prior", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_population_prior_recovers_lognormal_hyperparameters():
    """Small version of scripts/population_prior.py: the log-normal hyperparameters of tau
    maximising the summed exact log evidence lie within 3 standard errors of the truth."""
    pp = _population_script()
    res = pp.run(n_datasets=150, j_max=8, seed=1)
    assert res.converged
    z = np.abs(np.asarray(res.estimate) - np.asarray(res.truth)) / np.asarray(res.std_error)
    assert np.all(np.isfinite(res.std_error)) and np.all(np.asarray(res.std_error) > 0)
    assert np.all(z < 3.0), (res.estimate, res.truth, res.std_error)


@pytest.mark.slow
def test_population_prior_full_size():
    """scripts/population_prior.py's default: 2,000 meta-analyses with J = 3..20."""
    res = _population_script().run()
    z = np.abs(np.asarray(res.estimate) - np.asarray(res.truth)) / np.asarray(res.std_error)
    assert res.converged and np.all(z < 3.0), (res.estimate, res.truth, res.std_error)
    assert np.all(np.asarray(res.std_error) < 0.05)
