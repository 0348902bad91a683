"""Where the Legendre kernel's time goes: XLA's own per-fusion times from a profiler trace.

Fits ``hierjax.simulate(B, J)`` once to compile, then once under ``jax.profiler``, and
prints the heaviest thunks with each one's shape and the JAX operation it came from (read
from the compiled HLO). Pin it to one core for per-core figures:

    taskset -c 0 python benchmarks/profile_legendre.py [--B 4096] [--J 8] [--moments]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=4096)
    ap.add_argument("--J", type=int, default=8)
    ap.add_argument("--N", type=int, default=32, help="Legendre nodes")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--moments", action="store_true", help="moments only (no quantiles)")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    os.environ.setdefault("JAX_ENABLE_X64", "1")
    import jax
    import numpy as np

    import hierjax
    from hierjax.engine.prepare import prepare
    from hierjax.inference.legendre import fit_legendre

    sim = hierjax.simulate(args.B, args.J, seed=3)
    prep = prepare(np.asarray(sim.y), np.asarray(sim.sigma), tau_prior="uniform", mu_prior="flat")
    block = prep.block(slice(0, args.B))
    levels = prep.cast(np.asarray(() if args.moments else hierjax.DEFAULT_LEVELS, np.float64))
    kw = dict(N=args.N, chunk=args.chunk)

    def call():
        return jax.block_until_ready(fit_legendre(*block, levels, **kw))

    call()
    t = time.perf_counter()
    call()
    steady = time.perf_counter() - t
    hlo = fit_legendre.lower(*block, levels, **kw).compile().as_text()
    where = {}
    for m in re.finditer(r'%(\S+) = (\S+) .*?op_name="([^"]+)"', hlo):
        where.setdefault(m.group(1), (m.group(2), m.group(3).split("/")[-1]))
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        call()
        jax.profiler.stop_trace()
        (path,) = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)
        events = json.load(gzip.open(path))["traceEvents"]
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in where:
            total[e["name"]] += e.get("dur", 0)
    print(f"{args.B} datasets, J = {args.J}, N = {args.N}: {steady * 1e3:.1f} ms steady")
    for name, us in total.most_common(args.top):
        shape, op = where[name]
        print(f"{us / 1e3:8.1f} ms  {name:32s} {shape:28s} {op}")


if __name__ == "__main__":
    main()
