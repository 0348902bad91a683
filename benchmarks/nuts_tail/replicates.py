"""Bias of NUTS on single datasets: 32 independent runs each of simulated datasets 28 and
19 (the two largest tau-q0.95 |z| of the default-settings run whose bias replicated),
mean NUTS estimate minus exact, in units of the replicate standard error.

    PYTHONPATH=. JAX_ENABLE_X64=0 python benchmarks/nuts_tail/replicates.py MODE [SEED]
    MODE: default (4 x 1000, target_accept 0.8) | long (4 x 4000) | ta99 | centered
    SEED: default 13
"""

import sys

import numpy as np

import hierjax
from hierjax.validation.nuts import crosscheck

mode = sys.argv[1]
sim = hierjax.simulate(200, 8, seed=11)
sel = [28] * 32 + [19] * 32
kw = {
    "chains": 4,
    "warmup": 500,
    "samples": 1000,
    "seed": int(sys.argv[2]) if len(sys.argv) > 2 else 13,
    "datasets": sel,
    "chunk": 64,
}
kw.update(
    {
        "long": {"samples": 4000},
        "ta99": {"target_accept": 0.99},
        "centered": {"centered": True},
    }.get(mode, {})
)
_, run, c = crosscheck(sim.y, sim.sigma, **kw)
print(
    f"{mode}: divergent draws {int(c.divergences[:32].sum())} (ds 28), "
    f"{int(c.divergences[32:].sum())} (ds 19); mean leapfrog steps {run.num_steps.mean():.1f}"
)
for g in range(2):
    rows = slice(32 * g, 32 * g + 32)
    for p, t in [(1, 0), (1, 6), (0, 2), (1, 4)]:
        ex, nu, m = np.nanmean(c.exact[rows, p, t]), c.nuts[rows, p, t], c.mcse[rows, p, t]
        print(
            f"  ds {sel[32 * g]} {c.params[p]} {c.stats[t]}: exact {ex:.4g} NUTS {nu.mean():.4g} "
            f"bias {nu.mean() - ex:+.3f} = {(nu.mean() - ex) / (nu.std(ddof=1) / np.sqrt(32)):+.2f} se; "
            f"replicate sd {nu.std(ddof=1):.3g} vs mean MCSE {m.mean():.3g}"
        )
