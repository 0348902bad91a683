"""Compile seconds per kernel: trace, lowering and XLA's compile of ``hierjax.fit``'s kernels.

For the Legendre nodes (``fit_legendre``) and the general grid (``fit_standardized``),
float64, J = 8, every default summary or moments only: the seconds JAX spends tracing
the chunk shape, then the block shape (which a jitted chunk body lets reuse the first
trace), lowering each to StableHLO, XLA compiling each, and the steady median time of a
call on a block. Run it pinned to one core for figures that do not depend on XLA's
parallel compile, and alternate trees (``PYTHONPATH``) to compare commits:

    JAX_ENABLE_X64=1 taskset -c 0 python benchmarks/compile_kernels.py [--moments] [--B 1024]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

import hierjax
from hierjax.engine.fitting import fit_standardized
from hierjax.engine.prepare import prepare
from hierjax.inference.grid import default_nodes
from hierjax.inference.legendre import LEGENDRE_NODES, fit_legendre


def measure(name, kernel, static, chunk, args_of, levels, reps):
    """Trace/lower/compile seconds at the chunk and the block shape; the block's run time."""
    row = dict(kernel=name)
    for label, size in (("chunk", chunk), ("block", None)):
        args = args_of(size)
        t = time.perf_counter()
        traced = kernel.trace(*args, levels, chunk=chunk, **static)
        row[f"{label}_trace_s"] = time.perf_counter() - t
        t = time.perf_counter()
        lowered = traced.lower()
        row[f"{label}_lower_s"] = time.perf_counter() - t
        t = time.perf_counter()
        compiled = lowered.compile()
        row[f"{label}_compile_s"] = time.perf_counter() - t
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args, levels))
        times.append(time.perf_counter() - t)
    row["block_run_ms"] = 1e3 * float(np.median(times))
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=1024, help="datasets in the block shape")
    ap.add_argument("--moments", action="store_true", help="moments only (no quantiles)")
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args(argv)
    if not jax.config.jax_enable_x64:
        raise SystemExit("run with JAX_ENABLE_X64=1 (the figures are float64)")
    sim = hierjax.simulate(a.B, 8, seed=1)
    prep = prepare(sim.y, sim.sigma, tau_prior="uniform", mu_prior="flat")
    levels = prep.cast(np.asarray(() if a.moments else hierjax.DEFAULT_LEVELS, np.float64))

    def args_of(size):
        return prep.block(np.arange(size or a.B), 8)

    kernels = [
        ("fit_legendre", fit_legendre, dict(N=LEGENDRE_NODES[64]), 64),
        ("fit_standardized", fit_standardized, dict(n=default_nodes(np.float64)), 32),
    ]
    for name, kernel, static, chunk in kernels:
        row = measure(name, kernel, static, chunk, args_of, levels, a.reps)
        row.update(B=a.B, moments=a.moments, file=hierjax.__file__)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
    main()
