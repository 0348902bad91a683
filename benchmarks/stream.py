"""Streamed ``hierjax fit`` against in-memory ``hierjax.fit`` on the same datasets.

Each side runs in a fresh process with the on-disk compile cache off (both compile from
scratch), so neither inherits the other's memory; peak RSS comes from
``resource.getrusage(RUSAGE_CHILDREN)`` after each exits, streamed side first (the larger
in-memory run then reports the maximum over both). Both compute in float64 with the
default priors and levels on ``B`` simulated eight-group datasets.

The streamed side reads Parquet or CSV (``--format``) and writes Parquet, end to end. The
in-memory side reads the same file, fits, and (below ``--table-limit`` datasets) builds the
tidy table and writes it; above it only fits, since the whole table in memory is what
streaming exists to avoid. So the comparison favours the in-memory side. Where the
in-memory side would not fit in memory, ``--in-memory-datasets M`` fits only the first
``M`` datasets of the same file, and throughputs are compared.

    python benchmarks/stream.py --datasets 10000000               # Parquet -> Parquet
    python benchmarks/stream.py --datasets 1000000 --format csv   # CSV -> Parquet
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

IN_MEMORY = """
import sys, time
import jax; jax.config.update("jax_enable_x64", True)
import numpy as np, pyarrow as pa, pyarrow.csv as pc, pyarrow.parquet as pq
import hierjax
t0 = time.perf_counter()
src, out, table, m = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
t = pq.read_table(src) if src.endswith(".parquet") else pc.read_csv(src)
y = t["y"].to_numpy()[: 8 * m].reshape(-1, 8); s = t["sigma"].to_numpy()[: 8 * m].reshape(-1, 8)
del t
f = hierjax.fit(y, s)
if table:
    pq.write_table(f.to_arrow(), out)
print(time.perf_counter() - t0)
"""


def child(cmd):
    """``(wall seconds, peak RSS in MB so far over children, stdout)`` of a command run in
    a fresh process with the compile cache off."""
    env = dict(os.environ, HIERJAX_CACHE_DIR="off")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    # ru_maxrss of the children is the largest so far: run the smaller job first
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, peak / 1024, r.stdout


def write_input(path, B: int, fmt: str, block: int = 1_000_000):
    """``B`` simulated eight-group datasets in the long format, written in blocks."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pc
    import pyarrow.parquet as pq

    import hierjax

    writer = None
    for a in range(0, B, block):
        m = min(block, B - a)
        sim = hierjax.simulate(m, 8, seed=a)
        names = np.repeat(np.arange(a, a + m).astype(str), 8)
        t = pa.table({"dataset": names, "y": sim.y.ravel(), "sigma": sim.sigma.ravel()})
        if writer is None:
            writer = (pq.ParquetWriter if fmt == "parquet" else pc.CSVWriter)(path, t.schema)
        writer.write_table(t)
    writer.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", type=int, default=100_000)
    ap.add_argument("--chunk-size", type=int, default=16384)
    ap.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    ap.add_argument("--table-limit", type=int, default=1_000_000)
    ap.add_argument("--in-memory-datasets", type=int, default=None)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a new temp one)")
    a = ap.parse_args()
    d = a.dir or tempfile.mkdtemp(prefix="hierjax-bench-")
    src = os.path.join(d, f"in.{a.format}")
    t0 = time.perf_counter()
    write_input(src, a.datasets, a.format)
    print(f"wrote {src} ({os.path.getsize(src) / 1e6:,.0f} MB) in {time.perf_counter() - t0:.0f} s")
    cli = [sys.executable, "-m", "hierjax.io.cli", "fit", src, "--quiet", "--force"]
    cli += ["--chunk-size", str(a.chunk_size), "--out", os.path.join(d, "stream.parquet")]
    ws, ms, _ = child(cli)
    M = a.in_memory_datasets or a.datasets
    table = M <= a.table_limit
    mem = os.path.join(d, "mem.parquet")
    wm, mm, inner = child([sys.executable, "-c", IN_MEMORY, src, mem, str(int(table)), str(M)])
    B = a.datasets
    print(f"B = {B:,} eight-group datasets, float64, chunk {a.chunk_size}, cache off")
    print(
        f"streamed {a.format} -> Parquet: {ws:.1f} s end to end ({B / ws:,.0f} datasets/s),"
        f" peak RSS {ms:,.0f} MB"
    )
    what = "fit + to_arrow + Parquet" if table else "read + fit (no table)"
    print(
        f"in-memory hierjax.fit on the first {M:,}, {what}: {wm:.1f} s end to end "
        f"({M / wm:,.0f} datasets/s; {float(inner):.1f} s after imports), "
        f"peak RSS {mm:,.0f} MB (max over both runs)"
    )
    print(f"streamed / in-memory throughput: {(B / ws) / (M / wm):.2f}")
    if a.dir is None:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
