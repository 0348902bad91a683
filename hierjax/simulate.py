"""Simulated batches from the model itself (for demos, benchmarks and calibration).

.. math::
    \\theta_{bj} \\sim N(\\mu, \\tau^2),\\qquad y_{bj} \\sim N(\\theta_{bj}, \\sigma_{bj}^2)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Simulated", "simulate"]


class Simulated(NamedTuple):
    """A simulated batch (float64 NumPy).

    Attributes:
        y: estimates, ``[B, J]``.
        sigma: standard errors, ``[B, J]``.
        theta: true group effects, ``[B, J]``.
        mu: true population mean, ``[B]``.
        tau: true population sd, ``[B]``.
    """

    y: np.ndarray
    sigma: np.ndarray
    theta: np.ndarray
    mu: np.ndarray
    tau: np.ndarray


def simulate(
    n_datasets: int,
    n_groups: int = 8,
    *,
    seed: int = 0,
    mu: float = 8.0,
    tau_scale: float = 5.0,
    sigma_range=(9.0, 18.0),
) -> Simulated:
    """Draw ``n_datasets`` eight-schools-like datasets.

    Per dataset ``tau ~ |Cauchy(0, tau_scale)|`` (clipped at 20 tau_scale) and
    ``sigma_j ~ Uniform(sigma_range)``; then ``theta`` and ``y`` from the model.

    Args:
        n_datasets: ``B``.
        n_groups: ``J``.
        seed: NumPy seed (reproducible).
        mu: population mean.
        tau_scale: scale of the half-Cauchy draw of tau.
        sigma_range: range of the known standard errors.
    """
    rng = np.random.default_rng(seed)
    B, J = int(n_datasets), int(n_groups)
    tau = np.minimum(np.abs(tau_scale * rng.standard_cauchy(B)), 20 * tau_scale)
    lo, hi = sigma_range
    sigma = rng.uniform(lo, hi, size=(B, J))
    theta = mu + tau[:, None] * rng.standard_normal((B, J))
    y = theta + sigma * rng.standard_normal((B, J))
    return Simulated(y, sigma, theta, np.full(B, float(mu)), tau)
