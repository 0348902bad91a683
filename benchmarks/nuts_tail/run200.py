"""200 simulated datasets (uniform tau, flat mu, non-centered, 4 x 1000 after 500 warmup,
seed 5: the slow test's run) at a given NUTS target_accept; pickles (fit, run) for the
scripts next to this one and prints the combined p-value.

    PYTHONPATH=. JAX_ENABLE_X64=0 python benchmarks/nuts_tail/run200.py OUT.pkl 0.8
"""

import pickle
import sys
import time

import hierjax
from hierjax.validation.nuts import COMPARE_LEVELS, crosscheck

t0 = time.time()
ta = float(sys.argv[2])
sim = hierjax.simulate(200, 8, seed=11)
f, run, cmp = crosscheck(
    sim.y,
    sim.sigma,
    chains=4,
    warmup=500,
    samples=1000,
    seed=5,
    levels=COMPARE_LEVELS,
    target_accept=ta,
)
with open(sys.argv[1], "wb") as fh:
    pickle.dump((f, run), fh)
print(
    f"target_accept {ta}: combined p {cmp.p_value:.4g}, flagged {int(cmp.flagged.sum())}, "
    f"divergent draws {int(run.diverging.sum())} ({run.diverging.mean():.2e}), "
    f"mean leapfrog steps {run.num_steps.mean():.1f}, sampling {run.seconds:.0f} s, "
    f"total {time.time() - t0:.0f} s"
)
