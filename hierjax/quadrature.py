r"""Clenshaw-Curtis quadrature and Chebyshev series on ``[-1, 1]``.

Clenshaw-Curtis with ``N + 1`` points integrates the degree-``N`` Chebyshev
interpolant of ``f`` exactly. Its nodes ``z_k = cos(k pi / N)`` contain those of
the ``N / 2`` rule (every other node), which gives each dataset a free error
estimate, and the interpolant gives the tau density and CDF anywhere, not only at
the nodes (Trefethen, *Approximation Theory and Approximation Practice*, ch. 3, 19).

Tables are built once per ``N`` in float64 NumPy on the host.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

__all__ = ["clenshaw_curtis", "chebyshev_matrix", "cdf_coefficients"]


@functools.lru_cache(maxsize=None)
def clenshaw_curtis(n: int):
    r"""Nodes and weights of the ``(n + 1)``-point Clenshaw-Curtis rule on ``[-1, 1]``.

    .. math::
        z_k = \cos(k\pi/n),\quad
        w_k = \frac{c_k}{n}\Big(1 - \sum_{j=1}^{n/2} \frac{b_j}{4j^2 - 1}\cos(2jk\pi/n)\Big)

    with ``c_k = 1`` at the ends and ``2`` inside, ``b_j = 1`` for ``j = n/2`` and ``2``
    otherwise (Waldvogel 2006). ``n`` must be even.

    Returns:
        ``(z[n+1], w[n+1])`` as read-only float64 arrays, ``z`` decreasing from 1 to -1.
    """
    if n < 2 or n % 2:
        raise ValueError(f"Clenshaw-Curtis needs an even n >= 2, got {n}")
    theta = np.pi * np.arange(n + 1) / n
    j = np.arange(1, n // 2 + 1)
    b = np.where(j == n // 2, 1.0, 2.0)
    s = (b / (4.0 * j ** 2 - 1.0))[None, :] * np.cos(2.0 * j[None, :] * theta[:, None])
    c = np.where((np.arange(n + 1) == 0) | (np.arange(n + 1) == n), 1.0, 2.0)
    w = c / n * (1.0 - s.sum(axis=1))
    z = np.cos(theta)
    z.setflags(write=False)
    w.setflags(write=False)
    return z, w


@functools.lru_cache(maxsize=None)
def chebyshev_matrix(n: int):
    r"""Matrix ``M[m, k]`` taking values at the ``n + 1`` CC nodes to Chebyshev coefficients.

    .. math::
        a_m = \frac{2}{n}\sum_k{}'' f(z_k) \cos(m k \pi / n),\quad
        f(z) \approx \sum_m{}'' a_m T_m(z)

    (double primes halve the first and last terms). Here the halving of ``a_0``
    and ``a_n`` is folded into ``M``, so ``f(z) = sum_m a_m T_m(z)``.
    """
    k = np.arange(n + 1)
    M = (2.0 / n) * np.cos(np.pi * np.outer(k, k) / n)
    M[:, 0] *= 0.5
    M[:, -1] *= 0.5
    M[0, :] *= 0.5
    M[-1, :] *= 0.5
    M.setflags(write=False)
    return M


def cdf_coefficients(a):
    r"""Chebyshev coefficients of ``F(z) = int_{-1}^{z} f`` from those of ``f``, ``[n+1] -> [n+2]``.

    .. math::
        \int T_m = \frac{T_{m+1}}{2(m+1)} - \frac{T_{m-1}}{2(m-1)} \;(m \ge 2),\quad
        \int T_0 = T_1,\quad \int T_1 = T_2 / 4

    so ``b_m = (a_{m-1} - a_{m+1}) / (2m)`` for ``m >= 1`` (with ``a_0`` doubled in the
    ``m = 1`` term), and ``b_0`` makes ``F(-1) = 0``.
    """
    n1 = a.shape[-1]
    a_ext = jnp.concatenate([a, jnp.zeros(a.shape[:-1] + (2,), a.dtype)], axis=-1)
    m = jnp.arange(1, n1 + 1, dtype=a.dtype)
    a_prev = a_ext[..., :n1].at[..., 0].multiply(2.0)          # a_{m-1}, with a_0 doubled
    a_next = a_ext[..., 2:n1 + 2]                                # a_{m+1}
    b_rest = (a_prev - a_next) / (2.0 * m)
    sign = jnp.where(jnp.arange(1, n1 + 1) % 2 == 0, 1.0, -1.0).astype(a.dtype)  # T_m(-1)
    b0 = -jnp.sum(b_rest * sign, axis=-1, keepdims=True)
    return jnp.concatenate([b0, b_rest], axis=-1)
