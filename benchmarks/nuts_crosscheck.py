"""Figures for benchmarks/results/nuts_crosscheck.md: NUTS vs exact on the eight schools and
on simulated batches; divergence rates centered vs non-centered; datasets/s of run_nuts.

    PYTHONPATH=. JAX_ENABLE_X64=0 python benchmarks/nuts_crosscheck.py [B] [REPLICATES]
"""

import sys
import time

import numpy as np

import hierjax
from hierjax.validation.nuts import crosscheck

B = int(sys.argv[1]) if len(sys.argv) > 1 else 200
R = int(sys.argv[2]) if len(sys.argv) > 2 else 16
SET = {"chains": 4, "warmup": 500, "samples": 1000}

y, s = hierjax.eight_schools()
for tp, mp in [("uniform", "flat"), ("half-cauchy:25", "normal:0,100")]:
    _, run, c = crosscheck(
        y, s, tau_prior=tp, mu_prior=mp, seed=1, datasets=[0] * R, chunk=R, **SET
    )
    mx = np.nanmax(np.abs(c.z), axis=(0, 2))
    print(
        f"eight schools {tp}/{mp}, non-centered, {R} independent runs of 4x1000: max |z| per "
        "parameter over runs and statistics: "
        + ", ".join(f"{p} {v:.2f}" for p, v in zip(c.params, mx))
    )
    print(
        f"  run 0 alone: max |z| {c.max_abs_z[0]:.2f}; rms z {np.sqrt(np.nanmean(c.z**2)):.3f}; "
        f"combined p {c.p_value:.3g}; divergences per run {c.divergences.tolist()}"
    )
sim = hierjax.simulate(B, 8, seed=11)
for centered in (False, True):
    t0 = time.perf_counter()
    _, run, c = crosscheck(sim.y, sim.sigma, centered=centered, seed=5, **SET)
    tot = time.perf_counter() - t0
    print(
        f"{B} simulated datasets (J=8, uniform tau, flat mu), {'centered' if centered else 'non-centered'}: "
        f"divergence rate {run.diverging.mean():.4%} of draws, datasets with divergences "
        f"{int((c.divergences > 0).sum())}; sampling {run.seconds:.1f} s = {B / run.seconds:.2f} datasets/s; "
        f"compile {run.compile_seconds:.1f} s; total with fit and compare {tot:.1f} s; "
        f"mean leapfrog steps/draw {run.num_steps.mean():.1f}"
    )
    print(
        f"  z-test: combined p {c.p_value:.3g} ({'ok' if c.ok else 'FAIL'}); flagged {int(c.flagged.sum())} "
        f"(with divergences {int((c.flagged & (c.divergences > 0)).sum())}); rms z {np.sqrt(np.nanmean(c.z**2)):.3f}"
    )
