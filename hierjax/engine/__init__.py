"""The batch engine: data preparation on the host (checks, padding, standardisation),
the batch driver that maps the per-dataset kernels over blocks of datasets inside one
``jit``, and the cache of compiled kernels.

Imports: :mod:`hierjax.status`, :mod:`hierjax.model`, :mod:`hierjax.numerics`,
:mod:`hierjax.inference`; never the io or validation layers. The names below keep the
former module path ``hierjax.engine`` working.
"""

from hierjax.engine.fitting import (
    DEFAULT_LEVELS,
    MIN_BUCKET,
    ROUNDOFF_LIMIT,
    STATUS,
    DatasetFit,
    Fit,
    bucket_widths,
    compute_dtype,
    fit,
    fit_batch,
    fit_dataset,
    fit_standardized,
    status_text,
)

__all__ = [
    "Fit",
    "DatasetFit",
    "fit",
    "fit_batch",
    "fit_dataset",
    "fit_standardized",
    "bucket_widths",
    "DEFAULT_LEVELS",
    "STATUS",
    "ROUNDOFF_LIMIT",
    "MIN_BUCKET",
    "status_text",
    "compute_dtype",
]
