"""Validation: data simulation, the NumPyro NUTS cross-check, calibration (PIT, SBC) and
coverage studies.

Imports: the public API (:mod:`hierjax`) and any layer below it; numpyro, matplotlib
and scipy are imported lazily, inside the functions that need them.
"""
