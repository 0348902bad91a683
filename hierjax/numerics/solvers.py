"""Safeguarded one-dimensional solvers: fixed steps, then a while loop for stragglers.

Under ``vmap`` a ``lax.while_loop`` runs until the slowest lane of the batch is done,
and each of its steps costs more than a loop of fixed trip count (no per-lane test).
So every solver takes a fixed number of steps first (enough for nearly every dataset,
with good starting points), then a ``while_loop`` that continues only while some lane
is not done: when all are, it costs one check. The fixed steps are a ``fori_loop``, not
unrolled: the step is traced and compiled once. One compiled program serves both, and
the result never depends on which other datasets share the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["iterate", "maximize"]


def iterate(step, state, *, fast_steps: int, max_iter: int):
    """Apply ``step`` to ``state`` (a tuple ``(i, ..., done)``): ``fast_steps`` steps in a
    ``fori_loop``, then a ``while_loop`` until ``done`` or ``i == max_iter``."""
    state = jax.lax.fori_loop(0, fast_steps, lambda _, st: step(st), state)
    return jax.lax.while_loop(lambda st: (st[0] < max_iter) & ~st[-1], step, state)


def maximize(h, x, lo, hi, tol, *, fast_steps: int, max_iter: int = 100, done=False):
    r"""A maximum of the scalar function ``h`` in ``[lo, hi]`` with ``h'(lo) > 0 > h'(hi)``.

    Newton steps ``x - h'(x)/h''(x)`` (``jax.grad``) while they stay inside the
    bracket and ``h'' < 0``; bisection on the sign of ``h'`` otherwise. A lane that
    starts ``done`` (scalar bool: its answer is known without a search) keeps ``x``
    and never holds the while loop up.

    Returns:
        ``(x, converged)``: converged when a step or the bracket is below ``tol``
        (False only if ``max_iter`` steps did not get there).
    """
    dh = jax.grad(h)
    d2h = jax.grad(dh)

    def step(state):
        i, x, lo, hi, done = state
        g, c = dh(x), d2h(x)
        lo = jnp.where(g > 0, x, lo)
        hi = jnp.where(g > 0, hi, x)
        newton = x - g / c
        ok = (c < 0) & (newton >= lo) & (newton <= hi) & jnp.isfinite(newton)
        x_new = jnp.where(ok, newton, 0.5 * (lo + hi))
        now = (ok & (jnp.abs(x_new - x) <= tol)) | (hi - lo <= tol) | (g == 0)
        return i + 1, jnp.where(done, x, x_new), lo, hi, done | now

    state = iterate(
        step, (0, x, lo, hi, jnp.asarray(done)), fast_steps=fast_steps, max_iter=max_iter
    )
    return state[1], state[4]
