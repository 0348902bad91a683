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

import numpy as np

__all__ = ["clenshaw_curtis", "chebyshev_matrix", "integration_matrices"]


@functools.cache
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
    s = (b / (4.0 * j**2 - 1.0))[None, :] * np.cos(2.0 * j[None, :] * theta[:, None])
    c = np.where((np.arange(n + 1) == 0) | (np.arange(n + 1) == n), 1.0, 2.0)
    w = c / n * (1.0 - s.sum(axis=1))
    z = np.cos(theta)
    z.setflags(write=False)
    w.setflags(write=False)
    return z, w


@functools.cache
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


@functools.cache
def integration_matrices(n: int):
    r"""Matrices taking values at the ``n + 1`` CC nodes to the integrals of their
    interpolant from each end: ``(L, U)``, ``[n + 1, n + 1]`` each.

    .. math::
        F(z_k) = \int_{-1}^{z_k} p = \sum_j L_{kj} f(z_j),\qquad
        S(z_k) = \int_{z_k}^{1} p = \sum_j U_{kj} f(z_j)

    where ``p = sum_m a_m T_m`` is the interpolant (``a = M f``, :func:`chebyshev_matrix`)
    and, from ``int T_m = T_{m+1} / (2(m+1)) - T_{m-1} / (2(m-1))``, its integral has the
    coefficients ``b_m = (a_{m-1} - a_{m+1}) / (2m)`` (``m >= 1``, ``a_0`` doubled in
    ``b_1``). Then ``F(z) = sum_m b_m (T_m(z) - T_m(-1))`` and
    ``S(z) = sum_m b_m (1 - T_m(z))``, with ``1 - T_m(z_k) = 2 sin^2(m k pi / (2n))`` and
    ``T_m(z_k) - T_m(-1) = (-1)^{m+1} 2 sin^2(m (n - k) pi / (2n))`` formed without
    cancellation.

    Each matrix sums the values near its own end with small weights, so ``F`` is
    accurate relative to ``F`` where it is small (the lower tail) and ``S`` relative to
    ``S`` (the upper tail), where ``1 - F`` would keep only ``F``'s absolute accuracy.
    Built in float64 on the host.
    """
    M = chebyshev_matrix(n)  # a = M f,  [m, j]
    a = np.concatenate([M, np.zeros((2, n + 1))])  # a_0 .. a_{n+2}
    m = np.arange(1, n + 2)[:, None]
    a_prev = a[: n + 1].copy()
    a_prev[0] *= 2.0
    b = (a_prev - a[2 : n + 3]) / (2.0 * m)  # b_1 .. b_{n+1},  [m, j]
    k = np.arange(n + 1)[:, None]
    # 1 - T_m(z_k) and T_m(z_k) - T_m(-1) = (-1)^(m+1) (1 - T_m(z_{n-k})), no cancellation
    half_angle = m.T * np.pi / (2 * n)  # [1, m]
    one_minus_T = 2.0 * np.sin(half_angle * k) ** 2
    from_minus_one = np.where(m.T % 2 == 0, -2.0, 2.0) * np.sin(half_angle * (n - k)) ** 2
    L, U = from_minus_one @ b, one_minus_T @ b
    L.setflags(write=False)
    U.setflags(write=False)
    return L, U
