"""Streamed ``hierjax fit`` (Parquet -> Parquet) against in-memory ``hierjax.fit``.

Each side runs in a fresh process (peak RSS from ``resource.getrusage(RUSAGE_CHILDREN)``
after it exits, so neither inherits the other's memory); both compute in float64 with the
default priors and levels on ``B`` simulated eight-group datasets. The in-memory side
times the data preparation, the fit and the tidy table (``Fit.to_arrow``), and writes it
to Parquet; both include compiling.

    python benchmarks/stream.py --datasets 100000 --chunk-size 16384
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

IN_MEMORY = """
import sys, time
import jax; jax.config.update("jax_enable_x64", True)
import pyarrow.parquet as pq, numpy as np
import hierjax
t0 = time.perf_counter()
t = pq.read_table(sys.argv[1])
y = t["y"].to_numpy().reshape(-1, 8); s = t["sigma"].to_numpy().reshape(-1, 8)
f = hierjax.fit(y, s)
pq.write_table(f.to_arrow(), sys.argv[2])
print(time.perf_counter() - t0)
"""


def child(cmd):
    """``(wall seconds, peak RSS in MB)`` of a command run in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of the children is the largest so far: run the smaller job first
    return wall, max(peak, before) / 1024, r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", type=int, default=100_000)
    ap.add_argument("--chunk-size", type=int, default=16384)
    a = ap.parse_args()
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import hierjax

    d = tempfile.mkdtemp(prefix="hierjax-bench-")
    sim = hierjax.simulate(a.datasets, 8, seed=0)
    src = os.path.join(d, "in.parquet")
    names = np.repeat(np.arange(a.datasets).astype(str), 8)
    pq.write_table(
        pa.table({"dataset": names, "y": sim.y.ravel(), "sigma": sim.sigma.ravel()}), src
    )
    env_cli = [
        sys.executable,
        "-m",
        "hierjax.io.cli",
        "fit",
        src,
        "--quiet",
        "--no-cache",
        "--chunk-size",
        str(a.chunk_size),
    ]
    ws, ms, _ = child(env_cli + ["--out", os.path.join(d, "stream.parquet")])
    wm, mm, inner = child([sys.executable, "-c", IN_MEMORY, src, os.path.join(d, "mem.parquet")])
    print(f"B = {a.datasets} eight-group datasets, float64, chunk {a.chunk_size}")
    print(
        f"streamed Parquet -> Parquet: {ws:.1f} s end to end ({a.datasets / ws:,.0f} datasets/s),"
        f" peak RSS {ms:,.0f} MB"
    )
    print(
        f"in-memory hierjax.fit + to_arrow + Parquet: {wm:.1f} s end to end "
        f"({a.datasets / wm:,.0f} datasets/s; {float(inner):.1f} s after imports), "
        f"peak RSS {mm:,.0f} MB (max over both runs)"
    )


if __name__ == "__main__":
    main()
