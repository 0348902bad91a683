"""Numerics: quadrature rules, Chebyshev series and safeguarded root finders.

Imports: jax and numpy only (no hierjax module): the bottom layer.
"""
