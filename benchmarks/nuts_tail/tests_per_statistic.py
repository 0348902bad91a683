"""Per-statistic KS / chi^2 p-values of a pickled run (run200.py), worst first, and where
its divergences lie relative to the exact tau quantiles.

    PYTHONPATH=. python benchmarks/nuts_tail/tests_per_statistic.py OUT.pkl
"""

import pickle
import sys

import numpy as np

from hierjax.validation.nuts import compare

with open(sys.argv[1], "rb") as fh:
    f, run = pickle.load(fh)
c = compare(f, run)
print(f"combined p {c.p_value:.4g}; flagged {int(c.flagged.sum())}")
order = np.argsort(np.nan_to_num(np.fmin(c.ks_p, c.chi2_p), nan=1).ravel())[:6]
for k in order:
    p, t = np.unravel_index(k, c.ks_p.shape)
    zz = c.z[:, p, t][np.isfinite(c.z[:, p, t])]
    print(
        f"  {c.params[p]:9s} {c.stats[t]:6s} KS {c.ks_p[p, t]:.2e} chi2 {c.chi2_p[p, t]:.2e} "
        f"mean z {zz.mean():+.3f} rms z {np.sqrt(np.mean(zz**2)):.3f} max |z| {np.abs(zz).max():.2f}"
    )
d = run.diverging
if d.any():
    b = np.nonzero(d)[0]
    q = np.asarray(f.tau.quantiles)[b]
    lv = list(f.levels)
    print(
        f"divergent draws {int(d.sum())}: below tau's exact q0.05 {np.mean(run.tau[d] < q[:, lv.index(0.05)]):.1%}, "
        f"above q0.95 {np.mean(run.tau[d] > q[:, lv.index(0.95)]):.1%}"
    )
