"""The model: tau and mu priors, the closed-form conditionals given tau, effect sizes
and the frequentist estimators (one dataset per kernel, no batch axis).

Imports: jax, numpy, chex and :mod:`hierjax.numerics`; never the inference, io or
validation layers. Host-side entry points (``rma``) may use :mod:`hierjax.engine.batch` for
input checks and padding; the kernels never do.
"""
