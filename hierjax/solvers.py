"""Safeguarded one-dimensional solvers, each with a fast path and an exact path.

Under ``vmap`` a ``lax.while_loop`` runs until the slowest lane is done and costs far
more per step than straight-line code, so every solver here has two modes:

* ``robust=False`` (the default path): a fixed number of unrolled steps, enough for
  nearly every dataset, returning a ``converged`` flag;
* ``robust=True``: a ``while_loop`` to convergence (or ``max_iter``).

The engine runs the fast path on the whole batch and re-runs only the datasets
whose flags say so on the exact path (:func:`hierjax.engine.fit`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["iterate", "maximize"]


def iterate(step, state, *, robust: bool, fast_steps: int, max_iter: int):
    """Apply ``step`` to ``state`` (a tuple ``(i, ..., done)``) as described above."""
    if robust:
        return jax.lax.while_loop(lambda st: (st[0] < max_iter) & ~st[-1], step, state)
    for _ in range(fast_steps):
        state = step(state)
    return state


def maximize(h, x, lo, hi, tol, *, robust: bool, fast_steps: int, max_iter: int = 100):
    r"""A maximum of the scalar function ``h`` in ``[lo, hi]`` with ``h'(lo) > 0 > h'(hi)``.

    Newton steps ``x - h'(x)/h''(x)`` (``jax.grad``) while they stay inside the
    bracket and ``h'' < 0``; bisection on the sign of ``h'`` otherwise.

    Returns:
        ``(x, converged)``: converged when a step or the bracket is below ``tol``.
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

    state = iterate(step, (0, x, lo, hi, jnp.array(False)), robust=robust,
                    fast_steps=fast_steps, max_iter=max_iter)
    return state[1], state[4]
