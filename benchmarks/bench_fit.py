"""Throughput of ``hierjax.fit`` on simulated eight-school-sized datasets.

Measures, after compile and with ``block_until_ready``, datasets per second for the
default summaries (5 quantiles and P(> 0) for mu, tau, every theta_j and theta_new)
and for the jitted kernel alone (no host work), and appends a JSON line per run to
``benchmarks/results/<machine>.jsonl``. Not a test: nothing here asserts a time.

    python benchmarks/bench_fit.py --x64 --datasets 100000
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", type=int, default=100_000)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--x64", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-record", action="store_true", help="do not append to results/")
    args = p.parse_args(argv)

    import jax
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import hierjax
    from hierjax.batch import as_batch, rescale_priors, standardize
    from hierjax.engine import _default_chunk, fit_standardized
    from hierjax.grid import default_nodes
    from hierjax.priors import FlatMu, Uniform

    sim = hierjax.simulate(args.datasets, args.groups, seed=0)
    dtype = jnp.float64 if args.x64 else jnp.float32
    n = default_nodes(dtype)

    # End to end: host checks, standardisation, kernel, refits, map back.
    t0 = time.perf_counter()
    hierjax.fit(sim.y, sim.sigma)
    first = time.perf_counter() - t0
    ends = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res = hierjax.fit(sim.y, sim.sigma)
        ends.append(time.perf_counter() - t0)

    # The jitted kernel alone.
    batch = as_batch(sim.y, sim.sigma)
    st = standardize(batch)
    tp, mp = rescale_priors(Uniform(), FlatMu(), st)
    cast = lambda a: jnp.asarray(a, dtype)
    kargs = (cast(st.y), cast(st.sigma2), jnp.asarray(batch.mask), cast(st.threshold), tp, mp,
             cast(np.array(hierjax.DEFAULT_LEVELS)))
    chunk = _default_chunk(n + 1, batch.y.shape[1])
    jax.block_until_ready(fit_standardized(*kargs, n=n, chunk=chunk))
    kern = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fit_standardized(*kargs, n=n, chunk=chunk))
        kern.append(time.perf_counter() - t0)

    record = {
        "benchmark": "fit_default_summaries",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "dtype": np.dtype(dtype).name,
        "datasets": args.datasets,
        "groups": args.groups,
        "nodes": n + 1,
        "first_call_s": round(first, 3),
        "end_to_end_datasets_per_s": round(args.datasets / min(ends), 1),
        "kernel_datasets_per_s": round(args.datasets / min(kern), 1),
        "flagged": int(np.sum(res.status != 0)),
    }
    print(json.dumps(record, indent=2))
    if not args.no_record:
        machine = "-".join(_cpu_model().lower().replace("(r)", "").replace("(tm)", "").split()[:4])
        out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                           f"{os.cpu_count()}core-{machine}.jsonl")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "a") as fh:
            fh.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
