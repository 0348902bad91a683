"""hierjax.numerics.quadrature against NumPy's Chebyshev module (an independent implementation)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.polynomial import chebyshev as C

from hierjax.numerics.quadrature import chebyshev_matrix, clenshaw_curtis, integration_matrices


@pytest.mark.parametrize("n", [2, 16, 64, 128])
def test_integration_matrices_integrate_the_interpolant(n):
    """``L f`` and ``U f`` are the integrals of the values' interpolant from -1 and to 1
    (numpy's ``chebint``), the full integral in the last row of ``L`` and the first of
    ``U`` is Clenshaw-Curtis, and ``L + U`` is that integral everywhere."""
    z, w = clenshaw_curtis(n)
    L, U = integration_matrices(n)
    rng = np.random.default_rng(n)
    for f in (np.exp(-3.0 * (z - 0.3) ** 2), rng.standard_normal(n + 1)):
        anti = C.chebint(C.chebfit(z, f, n), lbnd=-1)  # F(z) = int_{-1}^z p
        F, total = C.chebval(z, anti), C.chebval(1.0, anti)
        scale = np.sum(np.abs(f))
        np.testing.assert_allclose(L @ f, F, rtol=0, atol=1e-13 * scale)
        np.testing.assert_allclose(U @ f, total - F, rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(L[0], w, rtol=0, atol=1e-15)
    np.testing.assert_allclose(U[-1], w, rtol=0, atol=1e-15)
    np.testing.assert_allclose(L + U, np.broadcast_to(w, L.shape), rtol=0, atol=1e-14)
    assert np.all(L[-1] == 0) and np.all(U[0] == 0)


def test_survival_keeps_its_relative_accuracy_in_float32():
    """A density with a ``(1 - z)^2`` end (a ``tau^-2`` tail on the grid's map): ``S`` at the
    nodes next to ``z = 1`` (4e-9 to 1e-3), summed in float32, keeps 1e-5 of itself or
    better, where ``1 - F`` keeps only ``F``'s absolute accuracy (all of ``S`` at the
    last node, 3e-2 of it three nodes in)."""
    n = 64
    z, _ = clenshaw_curtis(n)
    f = (1.0 - z) ** 2 * np.exp(2.0 * z)
    L, U = integration_matrices(n)
    S64 = U @ f  # float64: the exact sums, to ~1e-16
    f32 = f.astype(np.float32)
    S32 = np.sum(U.astype(np.float32) * f32, axis=1, dtype=np.float32)
    one_minus_F32 = np.float32(np.sum(U[-1] * f)) - np.sum(
        L.astype(np.float32) * f32, axis=1, dtype=np.float32
    )
    near = slice(1, 8)
    rel = np.abs(S32[near] - S64[near]) / S64[near]
    rel_complement = np.abs(one_minus_F32[near] - S64[near]) / S64[near]
    assert rel.max() < 5e-5, rel
    assert rel_complement.max() > 0.5, rel_complement  # what the matrix U avoids


def test_chebyshev_matrix_gives_the_interpolant():
    n = 16
    z, _ = clenshaw_curtis(n)
    f = np.cos(3.0 * z) + z**5
    np.testing.assert_allclose(chebyshev_matrix(n) @ f, C.chebfit(z, f, n), atol=1e-13)
