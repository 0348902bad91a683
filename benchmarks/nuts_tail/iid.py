"""The same comparison with i.i.d. draws from the exact posterior in place of NUTS: tau by
inverse CDF of p(tau | y) on a dense trapezoid grid (400001 points on [0, 200 rms sigma],
the tau^-7 tail beyond it added analytically), mu | tau, y and theta | mu, tau, y from
their closed-form normals (BDA3 5.4) -- written here from the equations, not with hierjax.

    PYTHONPATH=. python benchmarks/nuts_tail/iid.py OUT.pkl SEED
"""

import pickle
import sys

import numpy as np

import hierjax
from hierjax.validation.nuts import compare

with open(sys.argv[1], "rb") as fh:
    f, run = pickle.load(fh)
rng = np.random.default_rng(int(sys.argv[2]))
sim = hierjax.simulate(200, 8, seed=11)
B, C, S = run.mu.shape
mu, tau, th = np.empty((B, C, S)), np.empty((B, C, S)), np.empty((B, C, S, 8))
for b in range(B):
    y, s2 = sim.y[b].astype(float), sim.sigma[b].astype(float) ** 2
    t = np.linspace(0, 200 * np.sqrt(s2.mean()), 400001)
    w = 1 / (s2[None] + t[:, None] ** 2)
    vmu = 1 / w.sum(1)
    mhat = vmu * (w * y).sum(1)
    lp = 0.5 * np.log(vmu) + 0.5 * np.log(w).sum(1) - 0.5 * (w * (y - mhat[:, None]) ** 2).sum(1)
    d = np.exp(lp - lp.max())
    cdf = np.concatenate([[0], np.cumsum((d[1:] + d[:-1]) / 2 * np.diff(t))])
    cdf /= cdf[-1] + d[-1] * t[-1] / 6  # tail ~ tau^-(alpha+1), alpha = J - 2 = 6
    tt = np.interp(rng.uniform(size=C * S), cdf, t)
    ww = 1 / (s2[None] + tt[:, None] ** 2)
    vm = 1 / ww.sum(1)
    m = vm * (ww * y).sum(1) + np.sqrt(vm) * rng.standard_normal(C * S)
    vj = 1 / (1 / s2[None] + 1 / tt[:, None] ** 2)
    thj = vj * (y / s2 + m[:, None] / tt[:, None] ** 2) + np.sqrt(vj) * rng.standard_normal(
        (C * S, 8)
    )
    mu[b], tau[b], th[b] = m.reshape(C, S), tt.reshape(C, S), thj.reshape(C, S, 8)
c = compare(f, run._replace(mu=mu, tau=tau, theta=th, diverging=np.zeros_like(run.diverging)))
print(
    f"i.i.d. exact draws, seed {sys.argv[2]}: combined p {c.p_value:.4g}; flagged {int(c.flagged.sum())}"
)
for p, t_ in [(1, 0), (1, 2), (1, 6), (0, 2)]:
    zz = c.z[:, p, t_]
    print(
        f"  {c.params[p]} {c.stats[t_]}: mean z {zz.mean():+.3f} rms z {np.sqrt(np.mean(zz**2)):.3f}"
    )
