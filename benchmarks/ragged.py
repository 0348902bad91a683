"""A ragged batch: many small datasets and a few large ones, fitted by width buckets or at
one width (``hierjax.fit``'s ``min_bucket``), against the small datasets alone.

Run: ``python benchmarks/ragged.py [--x64] [--B 10000] [--big-share 0.001] [--big-J 200]``.
Prints datasets/s end to end (after compile: each setting is called once before timing).
"""

from __future__ import annotations

import argparse
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--x64", action="store_true", help="float64 (default float32)")
    p.add_argument("--B", type=int, default=10_000)
    p.add_argument("--J", type=int, default=8, help="groups of the small datasets")
    p.add_argument("--big-J", type=int, default=200, help="groups of the large datasets")
    p.add_argument("--big-share", type=float, default=0.001)
    a = p.parse_args(argv)
    import jax

    if a.x64:
        jax.config.update("jax_enable_x64", True)
    import numpy as np

    import hierjax

    rng = np.random.default_rng(0)
    sizes = np.where(rng.uniform(size=a.B) < a.big_share, a.big_J, a.J)
    ys = [rng.normal(0.0, 5.0, n) + 10.0 * rng.normal(size=n) for n in sizes]
    ss = [np.full(n, 10.0) for n in sizes]
    small = sizes == a.J
    y_small = np.array([y for y, k in zip(ys, small) if k])
    s_small = np.full(y_small.shape, 10.0)
    print(
        f"B = {a.B}: {int((~small).sum())} datasets with {a.big_J} groups, the rest {a.J}; "
        f"{'float64' if a.x64 else 'float32'}"
    )
    for mode, q in (("moments", ()), ("full", hierjax.DEFAULT_LEVELS)):
        for label, args, kw in (
            ("buckets (default)", (ys, ss), {}),
            ("one width", (ys, ss), {"min_bucket": a.B + 1}),
            (f"the J = {a.J} datasets alone", (y_small, s_small), {}),
        ):
            hierjax.fit(*args, quantiles=q, **kw)
            t0 = time.perf_counter()
            f = hierjax.fit(*args, quantiles=q, **kw)
            dt = time.perf_counter() - t0
            print(
                f"{mode:8s} {label:28s} {len(f.names) / dt:10,.0f} datasets/s "
                f"({int((f.status != 0).sum())} flagged)"
            )


if __name__ == "__main__":
    main()
