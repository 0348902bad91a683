"""The model: tau and mu priors, the closed-form conditionals given tau, effect sizes
and the frequentist estimators (one dataset per kernel, no batch axis).

Imports: jax, numpy, :mod:`hierjax.status` and :mod:`hierjax.numerics`; never the
inference, engine, io or validation layers.
"""
