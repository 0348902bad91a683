"""Old engine against new, side by side: ``hierjax.fit`` end to end, alternating processes.

Each round starts one fresh process per tree (``PYTHONPATH`` set to it) that fits the same
simulated batch twice (the first call compiles) and prints the second call's datasets/s;
rounds alternate old and new so both see the same machine state. Also the compile time of
``hierjax.fit`` on the eight schools in a fresh process with the on-disk cache off.

    python benchmarks/ab_fit.py OLD_TREE NEW_TREE [--B 100000] [--J 8] [--rounds 2] [--x32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import hierjax
t_import = time.perf_counter() - t0
mode, B, J = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if mode == "compile":
    y, s = hierjax.eight_schools()
    t = time.perf_counter(); hierjax.fit(y, s); t_fit = time.perf_counter() - t
    print(json.dumps(dict(import_s=t_import, first_fit_s=t_fit,
                          total_s=time.perf_counter() - t0, file=hierjax.__file__)))
else:
    sim = hierjax.simulate(B, J, seed=1)
    q = () if mode == "moments" else hierjax.DEFAULT_LEVELS
    t = time.perf_counter(); hierjax.fit(sim.y, sim.sigma, quantiles=q)
    first = time.perf_counter() - t
    t = time.perf_counter(); f = hierjax.fit(sim.y, sim.sigma, quantiles=q)
    dt = time.perf_counter() - t
    print(json.dumps(dict(first_s=first, steady_s=dt, per_s=B / dt,
                          flagged=int((f.status != 0).sum()), file=hierjax.__file__)))
"""


def child(tree, mode, B, J, x32):
    env = dict(
        os.environ, PYTHONPATH=tree, JAX_ENABLE_X64="0" if x32 else "1", HIERJAX_CACHE_DIR="off"
    )
    # cwd = the tree: ``python -c`` puts the working directory first on sys.path
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(B), str(J)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--B", type=float, default=1e5)
    ap.add_argument("--J", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", default="moments,full,compile")
    ap.add_argument("--x32", action="store_true")
    args = ap.parse_args(argv)
    for mode in args.modes.split(","):
        for r in range(args.rounds):
            for name, tree in (("old", args.old), ("new", args.new)):
                res = child(tree, mode, int(args.B), args.J, args.x32)
                print(
                    json.dumps(
                        dict(
                            mode=mode,
                            round=r,
                            tree=name,
                            B=int(args.B),
                            J=args.J,
                            dtype="float32" if args.x32 else "float64",
                            **res,
                        )
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
