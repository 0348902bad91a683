"""Per-dataset inference: the tau grid fitted to one dataset, the normal-mixture and tau
summaries, and their accuracy checks (one standardised dataset, no batch axis).

Imports: :mod:`hierjax.status`, :mod:`hierjax.model`, :mod:`hierjax.numerics`; never the
engine, io or validation layers.
"""
