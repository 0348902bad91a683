"""Coverage of 95% intervals for mu: Bayesian (uniform and half-Cauchy tau) against
DerSimonian-Laird with a Wald interval and Hartung-Knapp-Sidik-Jonkman (issue 24).

Grid: J in {3, 5, 10, 20} x tau / sigma in {0, 0.5, 1, 2}, with sigma_j = 1 for every
group (so tau is tau / sigma) and mu = 0; ``--replicates`` in total (default 1e6), split
evenly over the 16 cells; every replicate is scored by every method. Prints the table
(coverage with its Monte Carlo standard error, mean width) and the wall time.

    python scripts/coverage_study.py                          # the full study (1e6)
    python scripts/coverage_study.py --bayes-only --replicates 10000

The frequentist intervals need ``hierjax.model.frequentist``; ``--bayes-only`` runs without it.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicates", type=float, default=1e6, help="in total (default 1e6)")
    p.add_argument("--bayes-only", action="store_true", help="skip DL-Wald and HKSJ")
    p.add_argument(
        "--half-cauchy-scale",
        type=float,
        default=1.0,
        help="scale of the half-Cauchy tau prior, in units of sigma (default 1)",
    )
    p.add_argument("--kinds", default="central", help="central,shortest (default central)")
    p.add_argument("--level", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=8192, help="replicates per batch")
    p.add_argument("--x64", action="store_true", help="float64 (default float32)")
    p.add_argument("--out", metavar="CSV", help="also write the tidy table here")
    args = p.parse_args(argv)

    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import hierjax
    from hierjax.validation.coverage import COLUMNS, coverage

    hierjax.use_compilation_cache()

    Js, taus = [3, 5, 10, 20], [0.0, 0.5, 1.0, 2.0]
    per_cell = int(args.replicates) // (len(Js) * len(taus))
    priors = {
        "uniform": ("uniform", "flat"),
        "half-cauchy": (f"half-cauchy:{args.half_cauchy_scale:g}", "flat"),
    }
    freq = () if args.bayes_only else ("DL-z", "DL-knha")
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    total = per_cell * len(Js) * len(taus)
    bar = None
    try:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="rep", file=sys.stderr, disable=not sys.stderr.isatty())
    except ImportError:
        pass
    t0 = time.perf_counter()
    rows = coverage(
        taus=taus,
        Js=Js,
        sigmas={"equal": 1.0},
        replicates=per_cell,
        key=args.seed,
        mu=0.0,
        priors=priors,
        params=("mu",),
        kinds=kinds,
        frequentist=freq,
        level=args.level,
        chunk=args.chunk,
        progress=bar.update if bar is not None else None,
    )
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()

    methods = []
    for r in rows:
        m = (r["method"], r["interval"])
        if m not in methods:
            methods.append(m)
    print(
        f"Coverage of {args.level:.0%} intervals for mu: {per_cell:,} replicates per cell, "
        f"{total:,} in all; sigma_j = 1, mu = 0; {jax.numpy.zeros(()).dtype}; "
        f"coverage (MCSE) [mean width]"
    )
    head = f"{'J':>3} {'tau':>4} " + " ".join(f"{m[0] + ' ' + m[1]:>30}" for m in methods)
    print(head)
    by = {(r["J"], r["tau"], r["method"], r["interval"]): r for r in rows}
    for J in Js:
        for tau in taus:
            cells = []
            for m in methods:
                r = by[(J, tau) + m]
                cells.append(f"{r['coverage']:.4f} ({r['mcse']:.4f}) [{r['mean_width']:6.3f}]")
            print(f"{J:>3} {tau:>4} " + " ".join(f"{c:>30}" for c in cells))
    flagged = sum(r["n_flagged"] for r in rows)
    print(f"replicates with a posterior status flag (scored all the same): {flagged}")
    print(
        f"wall time: {wall:.1f} s for {total:,} replicates x {len(methods)} methods "
        f"(compiles included)"
    )
    if args.out:
        from hierjax.io.tables import write_csv_atomic

        write_csv_atomic(args.out, list(COLUMNS), [[r[c] for c in COLUMNS] for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
