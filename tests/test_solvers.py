"""Direct unit tests of :mod:`hierjax.numerics.solvers` against closed-form maxima."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import X64

from hierjax.numerics.solvers import iterate, maximize

TOL = 1e-12 if X64 else 1e-5


def _dtype():
    return jnp.float64 if X64 else jnp.float32


def test_maximize_finds_closed_form_maxima():
    """``h(x) = a log x - b x`` peaks at ``a / b``; lanes differ in a, b and start."""
    dt = _dtype()
    a = jnp.asarray([1.0, 3.0, 0.5, 10.0], dt)
    b = jnp.asarray([1.0, 0.5, 2.0, 0.1], dt)
    x0 = jnp.asarray([0.1, 50.0, 1.0, 2.0], dt)

    def one(a, b, x0):
        return maximize(
            lambda x: a * jnp.log(x) - b * x,
            x0,
            jnp.asarray(1e-3, dt),
            jnp.asarray(1e3, dt),
            jnp.asarray(TOL, dt),
            fast_steps=3,
        )

    x, ok = jax.jit(jax.vmap(one))(a, b, x0)
    np.testing.assert_allclose(np.asarray(x), np.asarray(a / b), rtol=10 * TOL)
    assert np.all(np.asarray(ok))


def test_maximize_bisects_where_newton_would_leave_the_bracket():
    """A convex start (``h'' > 0``) and a flat plateau force bisection; the answer holds."""
    dt = _dtype()

    def h(x):  # maximum at x = 2, convex for |x - 2| > 1 / sqrt(3)
        return -((x - 2.0) ** 4) / 4.0 + (x - 2.0) ** 2 / 2.0 - (x - 2.0) ** 2

    x, ok = jax.jit(
        lambda x0: maximize(
            h, x0, jnp.asarray(-10.0, dt), jnp.asarray(10.0, dt), jnp.asarray(TOL, dt), fast_steps=2
        )
    )(jnp.asarray(9.0, dt))
    np.testing.assert_allclose(float(x), 2.0, atol=1e3 * TOL)
    assert bool(ok)


def test_maximize_keeps_a_lane_that_starts_done():
    dt = _dtype()
    x, ok = maximize(
        lambda x: -((x - 1.0) ** 2),
        jnp.asarray(5.0, dt),
        jnp.asarray(0.0, dt),
        jnp.asarray(10.0, dt),
        jnp.asarray(TOL, dt),
        fast_steps=1,
        done=True,
    )
    assert float(x) == 5.0 and bool(ok)


def test_iterate_stops_at_max_iter_and_reports_it():
    """A step that never converges runs ``max_iter`` times in all, unrolled ones included."""

    def step(state):
        i, x, done = state
        return i + 1, x + 1.0, done

    i, x, done = iterate(step, (0, jnp.asarray(0.0), jnp.asarray(False)), fast_steps=3, max_iter=7)
    assert int(i) == 7 and float(x) == 7.0 and not bool(done)
