"""hierjax: the exact posterior of the normal-normal hierarchical model, batched in JAX.

``y_j ~ N(theta_j, sigma_j^2)``, ``theta_j ~ N(mu, tau^2)``, ``mu`` flat or normal, ``tau``
with a prior; tau is integrated out by quadrature, everything else is closed form.
Importing hierjax changes no global JAX setting: turn on float64 yourself at program
start (the ``jax_enable_x64`` config flag, or ``JAX_ENABLE_X64=1``), and keep compiled
kernels on disk between runs with :func:`use_compilation_cache` (the CLI does).

:mod:`hierjax.core` is the computation for one dataset as traceable functions (the log
evidence, differentiable, and the summaries) for use inside your own ``jit``/``vmap``/``grad``.

Optional parts, imported on use: :mod:`hierjax.io.plotting` (matplotlib, extra ``plots``),
:mod:`hierjax.validation.nuts` (NumPyro, extra ``nuts``), :func:`to_arviz` (ArviZ, extra ``arviz``);
the plots of :mod:`hierjax.validation.calibration` and :mod:`hierjax.validation.coverage`
(matplotlib, extra ``plots``).
"""

import importlib as _importlib
import sys as _sys

from hierjax import core
from hierjax.core import CoreMarginal, CoreSummary, log_evidence
from hierjax.core import summaries as dataset_summaries
from hierjax.curves import MuDensity, TauCurves, mu_density, tau_curves
from hierjax.datasets import beta_blockers, efron_morris, eight_schools, rubin_eight_schools
from hierjax.engine.batch import Batch, as_batch
from hierjax.engine.cache import use_compilation_cache
from hierjax.engine.fitting import DEFAULT_LEVELS, STATUS, Fit, fit, fit_batch, status_text
from hierjax.evidence import Estimate, Evidence, evidence
from hierjax.inference.summaries import Marginal
from hierjax.io.stream import fit_stream
from hierjax.model.effects import (
    EffectSizes,
    log_odds_ratio,
    log_risk_ratio,
    mean_difference,
    risk_difference,
    standardized_mean_difference,
)
from hierjax.model.frequentist import TAU2_METHODS, RMAResult, rma
from hierjax.model.priors import (
    BergerDeely,
    Conventional,
    CustomTau,
    DuMouchel,
    Exponential,
    FlatMu,
    HalfCauchy,
    HalfLogistic,
    HalfNormal,
    HalfT,
    InputError,
    InvGammaTau2,
    Jeffreys,
    LogNormal,
    Lomax,
    NormalMu,
    OverallJeffreys,
    Rayleigh,
    Uniform,
    UniformI2,
    UniformShrinkage,
    UniformSqrt,
    parse_mu_prior,
    parse_tau_prior,
)
from hierjax.pooling import (
    CompletePooling,
    PartialPooling,
    complete_pooling,
    complete_pooling_predictive,
    no_pooling,
    partial_pooling,
)
from hierjax.posterior import (
    PARAMS,
    I2Summary,
    Moments,
    Posterior,
    PosteriorSummary,
    PredictiveCheck,
    Weights,
    cdf,
    i2,
    interval,
    moments,
    pairwise_prob,
    pdf,
    posterior,
    predictive_check,
    predictive_prob,
    prob_greater,
    quantile,
    shrinkage,
    summarize,
    weights,
)
from hierjax.sampling import Draws, draws, to_arviz
from hierjax.simulate import simulate
from hierjax.validation.calibration import (
    PIT,
    Calibration,
    EcdfBands,
    Ranks,
    Uniformity,
    calibrate,
    ecdf_bands,
    ecdf_difference,
    pit,
    plot_ecdf_difference,
    rank_uniformity,
    sbc_ranks,
    uniformity,
)
from hierjax.validation.coverage import coverage, plot_coverage
from hierjax.validation.sensitivity import Sweep, sweep
from hierjax.validation.simstudy import (
    Choice,
    Grid,
    SigmaLogNormal,
    SigmaResample,
    SigmaUniform,
    SimData,
    simulate_design,
)

__all__ = [
    "fit",
    "fit_batch",
    "Fit",
    "Marginal",
    "Batch",
    "as_batch",
    "DEFAULT_LEVELS",
    "STATUS",
    "status_text",
    "no_pooling",
    "complete_pooling",
    "complete_pooling_predictive",
    "partial_pooling",
    "CompletePooling",
    "PartialPooling",
    "Uniform",
    "HalfNormal",
    "HalfCauchy",
    "HalfT",
    "Exponential",
    "CustomTau",
    "FlatMu",
    "NormalMu",
    "parse_tau_prior",
    "parse_mu_prior",
    "UniformSqrt",
    "Jeffreys",
    "OverallJeffreys",
    "BergerDeely",
    "Conventional",
    "DuMouchel",
    "UniformShrinkage",
    "UniformI2",
    "HalfLogistic",
    "Lomax",
    "Rayleigh",
    "LogNormal",
    "InvGammaTau2",
    "eight_schools",
    "rubin_eight_schools",
    "beta_blockers",
    "efron_morris",
    "simulate",
    "InputError",
    "EffectSizes",
    "log_odds_ratio",
    "log_risk_ratio",
    "risk_difference",
    "mean_difference",
    "standardized_mean_difference",
    "tau_curves",
    "TauCurves",
    "mu_density",
    "MuDensity",
    "draws",
    "Draws",
    "to_arviz",
    "evidence",
    "Evidence",
    "Estimate",
    "posterior",
    "Posterior",
    "PARAMS",
    "pdf",
    "cdf",
    "quantile",
    "prob_greater",
    "interval",
    "predictive_prob",
    "predictive_check",
    "PredictiveCheck",
    "shrinkage",
    "weights",
    "Weights",
    "i2",
    "I2Summary",
    "pairwise_prob",
    "moments",
    "Moments",
    "summarize",
    "PosteriorSummary",
    "use_compilation_cache",
    "rma",
    "RMAResult",
    "TAU2_METHODS",
    "core",
    "log_evidence",
    "dataset_summaries",
    "CoreSummary",
    "CoreMarginal",
    "fit_stream",
    "simulate_design",
    "SimData",
    "Grid",
    "Choice",
    "SigmaUniform",
    "SigmaLogNormal",
    "SigmaResample",
    "calibrate",
    "Calibration",
    "pit",
    "PIT",
    "sbc_ranks",
    "Ranks",
    "uniformity",
    "rank_uniformity",
    "Uniformity",
    "ecdf_bands",
    "EcdfBands",
    "ecdf_difference",
    "plot_ecdf_difference",
    "coverage",
    "plot_coverage",
    "sweep",
    "Sweep",
]
__version__ = "0.1.0"

# The former flat module paths (``hierjax.priors``, ``hierjax.nuts``, ...) keep working.
_FORMER = {
    "priors": "model.priors",
    "conditionals": "model.conditionals",
    "effects": "model.effects",
    "quadrature": "numerics.quadrature",
    "solvers": "numerics.solvers",
    "grid": "inference.grid",
    "summaries": "inference.summaries",
    "batch": "engine.batch",
    "cache": "engine.cache",
    "nuts": "validation.nuts",
    "plotting": "io.plotting",
}
for _old, _new in _FORMER.items():
    globals()[_old] = _sys.modules.setdefault(
        f"hierjax.{_old}", _importlib.import_module(f"hierjax.{_new}")
    )
del _old, _new
