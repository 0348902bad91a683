"""Embedded datasets (public, published numbers).

* Eight schools, BDA3 Table 5.2 (rounded), as used by the seed lecture, Stan and NumPyro.
* Eight schools with Rubin's (1981) unrounded values, as in R's bayesmeta (``Rubin1981``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["eight_schools", "rubin_eight_schools", "SCHOOLS"]

SCHOOLS = ("A", "B", "C", "D", "E", "F", "G", "H")


def eight_schools():
    """``(y[8], sigma[8])``: SAT coaching effects and their standard errors (BDA3 Table 5.2)."""
    y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    return y, sigma


def rubin_eight_schools():
    """``(y[8], sigma[8])``: Rubin (1981) unrounded values (bayesmeta's ``Rubin1981``)."""
    y = np.array([28.39, 7.94, -2.75, 6.82, -0.64, 0.63, 18.01, 12.16])
    sigma = np.array([14.9, 10.2, 16.3, 11.0, 9.4, 11.4, 10.4, 17.6])
    return y, sigma
