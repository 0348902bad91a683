"""``hierjax`` command line.

``hierjax fit`` with no input fits the embedded eight schools (printing a table) and
a simulated batch (printing throughput and interval coverage); with a CSV input
it fits every dataset in it. ``--out`` writes the tidy CSV atomically.
``hierjax crosscheck`` compares the exact posterior with NumPyro NUTS (the eight
schools, or every dataset of a CSV) and prints z-scores in Monte Carlo standard
errors; ``--json`` writes the full report atomically. Errors in
the input give one message naming the dataset and field, exit status 2, and no
output file.

``hierjax plot`` draws the figures of :mod:`hierjax.plotting` (impact of tau, shrinkage,
densities, forest) for each dataset of a CSV, or the eight schools, into ``--out``;
without matplotlib it says which extra to install and exits with status 2.

Every command keeps compiled kernels on disk between runs (:mod:`hierjax.cache`) unless
given ``--no-cache`` or ``HIERJAX_CACHE_DIR=off``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["main"]

#: ``HIERJAX_CACHE_DIR`` values that turn the compilation cache off.
_OFF = ("off", "0", "no", "false", "none")


def _levels(text: str):
    try:
        levels = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"quantile levels must be numbers, got {text!r}") from None
    if not levels or not all(0 < p < 1 for p in levels):
        raise argparse.ArgumentTypeError(f"quantile levels must lie strictly between 0 and 1, got {text!r}")
    return levels


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``hierjax: error: ...`` and exit status 2."""

    def error(self, message):
        self.exit(2, f"hierjax: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hierjax", description=(
        "Exact posterior of the normal-normal hierarchical model (eight schools), batched in JAX."))
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--no-cache", action="store_true",
                        help="do not keep compiled kernels on disk between runs (default: kept "
                        "in $HIERJAX_CACHE_DIR or ~/.cache/hierjax, one directory per machine "
                        "kind; HIERJAX_CACHE_DIR=off also turns it off)")
    f = sub.add_parser("fit", help="fit datasets from a CSV (or the embedded eight schools)",
                       parents=[common],
                       description="Fit every dataset of a long CSV (columns dataset,y,sigma[,group]); "
                       "with no INPUT, the eight schools and a simulated batch.")
    f.add_argument("input", nargs="?", metavar="INPUT", help="CSV with columns dataset,y,sigma[,group]")
    f.add_argument("--tau-prior", default="uniform", metavar="SPEC",
                   help="uniform | half-normal:S | half-cauchy:S | half-t:NU,S | exponential:RATE | "
                   "half-logistic:S | lomax:SHAPE,SCALE | rayleigh:S | log-normal:MU,SIGMA | "
                   "log-normal-tau2:MU,SIGMA | inv-gamma:A,B (on tau^2) | bayesmeta's sqrt, jeffreys, "
                   "overall-jeffreys, berger-deely, conventional, dumouchel, shrinkage, i2 "
                   "(default: uniform)")
    f.add_argument("--mu-prior", default="flat", metavar="SPEC", help="flat | normal:M,S (default: flat)")
    f.add_argument("--quantiles", type=_levels, default=[0.025, 0.25, 0.5, 0.75, 0.975],
                   metavar="LEVELS", help="comma-separated levels (default: 0.025,0.25,0.5,0.75,0.975)")
    f.add_argument("--x64", action="store_true", help="compute in float64 (default float32)")
    f.add_argument("--skip-invalid", action="store_true",
                   help="fit the valid datasets and mark invalid ones in the status column")
    f.add_argument("--out", metavar="OUT.csv", help="write the tidy results table here")
    f.add_argument("--simulate", type=int, default=20000, metavar="B",
                   help="with no INPUT: size of the simulated batch (default 20000; 0 to skip)")
    g = sub.add_parser("plot", help="draw figures of a dataset (needs matplotlib)", parents=[common],
                       description="Draw the figures of every dataset of a long CSV (columns "
                       "dataset,y,sigma[,group]); with no INPUT, the eight schools. Files are "
                       "written as OUT/<dataset>-<kind>.<format>.")
    g.add_argument("input", nargs="?", metavar="INPUT", help="CSV with columns dataset,y,sigma[,group]")
    g.add_argument("--kind", default="all", choices=("impact", "shrinkage", "densities", "forest", "all"),
                   help="which figure (default: all)")
    g.add_argument("--out", required=True, metavar="DIR", help="directory for the figures")
    g.add_argument("--tau-prior", default="uniform", metavar="SPEC", help="as for 'hierjax fit'")
    g.add_argument("--mu-prior", default="flat", metavar="SPEC", help="as for 'hierjax fit'")
    g.add_argument("--dataset", metavar="NAME", help="only this dataset of the CSV")
    g.add_argument("--units", metavar="TEXT", help="unit of y for axis labels (e.g. points)")
    g.add_argument("--format", default="png", choices=("png", "pdf", "svg"), help="file format")
    g.add_argument("--x64", action="store_true", help="compute in float64 (default float32)")
    _crosscheck_parser(sub, common)
    from hierjax import cli_study   # calibrate, coverage
    cli_study.register(sub, common)
    return p


def _plot(args) -> int:
    """``hierjax plot``: the figures of each dataset, written to ``--out``."""
    import re

    import hierjax
    from hierjax.batch import InputError
    try:
        from hierjax.plotting import KINDS, plot_all, require_matplotlib
        require_matplotlib()
    except ImportError:
        print("hierjax: error: plotting needs matplotlib: pip install 'hierjax[plots]'", file=sys.stderr)
        return 2
    if args.input:
        from hierjax.io import read_long_csv
        batch = read_long_csv(args.input)
        units = args.units
    else:
        y, sigma = hierjax.eight_schools()
        batch = hierjax.as_batch(y, sigma, names=["eight_schools"], groups=[hierjax.datasets.SCHOOLS])
        units = args.units or "points"
    names = [str(n) for n in batch.names]
    if args.dataset is not None:
        if args.dataset not in names:
            raise InputError(f"--dataset {args.dataset!r} is not in the input (datasets: "
                             + ", ".join(names[:10]) + (" ..." if len(names) > 10 else "") + ")")
        b = names.index(args.dataset)
        batch = type(batch)(*(a[b:b + 1] for a in batch))
        names = [names[b]]
    kinds = KINDS if args.kind == "all" else (args.kind,)
    pri = dict(tau_prior=args.tau_prior, mu_prior=args.mu_prior)
    fit = hierjax.fit_batch(batch, **pri) if {"shrinkage", "forest"} & set(kinds) else None
    curves = None
    if {"impact", "densities"} & set(kinds):
        from hierjax.curves import tau_curves
        curves = tau_curves(batch, **pri)
    for b, name in enumerate(names):
        m = batch.mask[b]
        y, sigma = batch.y[b][m], batch.sigma[b][m]
        labels = batch.groups[b]
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or f"dataset{b}"
        paths = plot_all(y, sigma, args.out, kinds=kinds, labels=labels, units=units,
                         prefix=f"{safe}-", fmt=args.format, fit=_one(fit, b), curves=_one(curves, b),
                         **pri)
        for p in paths.values():
            print(f"wrote {p}", file=sys.stderr)
    return 0


def _one(res, b):
    """Dataset ``b`` of a batched NamedTuple result (Fit, TauCurves) as a batch of one."""
    if res is None:
        return None
    unbatched = ("levels", "prior_proper")

    def take(a):
        if hasattr(a, "_fields"):
            return type(a)(*[v if k in unbatched else take(v) for k, v in zip(a._fields, a)])
        return a[b:b + 1]
    return take(res)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _crosscheck_parser(sub, common) -> None:
    c = sub.add_parser("crosscheck", help="compare the exact posterior with NumPyro NUTS",
                       parents=[common],
                       description="Run NumPyro NUTS (vmapped over datasets and chains) on the eight "
                       "schools or every dataset of a long CSV, and compare its means, sds and "
                       "quantiles with the exact posterior in Monte Carlo standard errors. "
                       "Needs numpyro and scipy.")
    c.add_argument("input", nargs="?", metavar="INPUT", help="CSV with columns dataset,y,sigma[,group] "
                   "(default: the eight schools)")
    c.add_argument("--tau-prior", default="uniform", metavar="SPEC", help="as for fit (default: uniform)")
    c.add_argument("--mu-prior", default="flat", metavar="SPEC", help="flat | normal:M,S (default: flat)")
    c.add_argument("--centered", action="store_true", help="centered parameterisation "
                   "(default: non-centered)")
    c.add_argument("--chains", type=_positive_int, default=4, help="chains per dataset (default 4)")
    c.add_argument("--warmup", type=_positive_int, default=500, help="warmup iterations (default 500)")
    c.add_argument("--samples", type=_positive_int, default=1000, help="draws per chain (default 1000)")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument("--target-accept", type=float, default=0.8, metavar="P",
                   help="NUTS target acceptance probability (default 0.8; 0.95-0.99 for a "
                   "smaller step and fewer divergences in the tails of tau)")
    c.add_argument("--x64", action="store_true", help="compute in float64 (default float32)")
    c.add_argument("--json", metavar="OUT.json", help="write the full report here (atomically)")


def _print_table(fit, b: int, out=None) -> None:
    from hierjax.io import fit_rows
    out = sys.stdout if out is None else out
    header, rows = fit_rows(fit._replace(names=fit.names[b:b + 1], groups=fit.groups[b:b + 1],
                                         notes=fit.notes[b:b + 1], status=fit.status[b:b + 1],
                                         n_groups=fit.n_groups[b:b + 1],
                                         mu=_take(fit.mu, b), tau=_take(fit.tau, b),
                                         theta=_take(fit.theta, b), theta_new=_take(fit.theta_new, b)))
    cols = header[1:]
    shown = [[r[1]] + [_short(v) for v in r[2:-1]] + [r[-1]] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in shown)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths))), file=out)
    for r in shown:
        print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))), file=out)


def _take(m, b):
    return type(m)(*[a[b:b + 1] for a in m])


def _short(v: str) -> str:
    try:
        x = float(v)
    except ValueError:
        return v
    return v if x != x or abs(x) == float("inf") else f"{x:.4g}"


def _default_job(args) -> int:
    import numpy as np

    import hierjax
    y, sigma = hierjax.eight_schools()
    fit = hierjax.fit(y, sigma, tau_prior=args.tau_prior, mu_prior=args.mu_prior,
                      quantiles=args.quantiles, names=["eight_schools"],
                      groups=[hierjax.datasets.SCHOOLS])
    print(f"Eight schools (BDA3 Table 5.2), tau prior {args.tau_prior}, mu prior {args.mu_prior}, "
          f"{np.dtype(fit.mu.mean.dtype).name}:")
    _print_table(fit, 0)
    print(f"posterior mode of tau: {float(fit.tau_mode[0]):.4g}; "
          f"grid error estimate: {float(fit.grid_error[0]):.1e}")
    if args.out:
        _write(fit, args.out)
    if args.simulate > 0:
        sim = hierjax.simulate(args.simulate, 8, seed=1)
        kw = dict(tau_prior=args.tau_prior, mu_prior=args.mu_prior, quantiles=args.quantiles)
        # compile first, on one block and one more dataset (the two piece shapes: a whole
        # block, and an eighth of one for the rest and for the general grid's pass over
        # the datasets the fast grid sends back)
        from hierjax._host import compute_dtype
        from hierjax.engine import _default_block
        from hierjax.grid import default_nodes
        block = _default_block(default_nodes(compute_dtype(sim.y, sim.sigma)) + 1, 8)
        hierjax.fit(sim.y[:block + 1], sim.sigma[:block + 1], **kw)
        t0 = time.perf_counter()
        res = hierjax.fit(sim.y, sim.sigma, **kw)
        dt = time.perf_counter() - t0
        levels = list(args.quantiles)
        print(f"\nSimulated batch: {args.simulate} eight-school-sized datasets "
              f"(tau ~ half-Cauchy(5), mu = 8) in {dt:.2f} s: {args.simulate / dt:,.0f} datasets/s "
              "(after compile, including host work).")
        if 0.025 in levels and 0.975 in levels:
            lo, hi = levels.index(0.025), levels.index(0.975)
            q = res.theta.quantiles
            cover = np.mean((q[..., lo] <= sim.theta) & (sim.theta <= q[..., hi]))
            print(f"95% central intervals cover the true theta_j in {100 * cover:.1f}% of "
                  f"{sim.theta.size} groups.")
        bad = int(np.sum(res.status != 0))
        print(f"datasets flagged: {bad}")
    return 0


def _write(fit, path) -> None:
    from hierjax.io import fit_rows, write_csv_atomic
    header, rows = fit_rows(fit)
    write_csv_atomic(path, header, rows)
    print(f"wrote {len(rows)} rows to {path}", file=sys.stderr)


def _fit_file(args) -> int:
    import numpy as np

    import hierjax
    from hierjax.io import read_long_csv
    batch = read_long_csv(args.input)
    fit = hierjax.fit_batch(batch, tau_prior=args.tau_prior, mu_prior=args.mu_prior,
                            quantiles=args.quantiles, skip_invalid=args.skip_invalid)
    for note in fit.notes:
        if note:
            print(f"hierjax: skipped {note}", file=sys.stderr)
    if args.out:
        _write(fit, args.out)
    else:
        for b, name in enumerate(fit.names):
            print(f"dataset {name}:")
            _print_table(fit, b)
    flagged = int(np.sum((fit.status & ~hierjax.STATUS["invalid"]) != 0))
    if flagged:
        print(f"hierjax: {flagged} dataset(s) carry accuracy flags (see the status column)",
              file=sys.stderr)
    return 0


def _crosscheck(args) -> int:
    import hierjax
    from hierjax.nuts import comparison_json, crosscheck, print_report
    if args.input:
        from hierjax.io import read_long_csv
        batch = read_long_csv(args.input)
    else:
        y, sigma = hierjax.eight_schools()
        batch = hierjax.as_batch(y, sigma, names=["eight_schools"])
    _, run, cmp = crosscheck(batch, tau_prior=args.tau_prior, mu_prior=args.mu_prior,
                             centered=args.centered, chains=args.chains, warmup=args.warmup,
                             samples=args.samples, seed=args.seed,
                             target_accept=args.target_accept)
    print(f"NUTS vs exact: tau prior {args.tau_prior}, mu prior {args.mu_prior}, "
          f"{'centered' if args.centered else 'non-centered'}, z = (exact - NUTS) / MCSE")
    print_report(cmp, run)
    if args.json:
        from hierjax.io import write_json_atomic
        write_json_atomic(args.json, comparison_json(cmp, run))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Entry point of the ``hierjax`` command: x64 if asked and the on-disk cache of
    compiled kernels (:mod:`hierjax.cache`) unless ``--no-cache``, both at program start;
    the priors checked before anything compiles; one-line errors with exit status 2."""
    args = _parser().parse_args(argv)
    import jax
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    from hierjax.cache import ENV, use_compilation_cache
    if not (args.no_cache or os.environ.get(ENV, "").strip().lower() in _OFF):
        use_compilation_cache()
    if getattr(args, "study_command", None):      # calibrate, coverage (hierjax.cli_study)
        return args.study_command(args)
    from hierjax.priors import InputError, parse_mu_prior, parse_tau_prior
    commands = {"fit": lambda a: _fit_file(a) if a.input else _default_job(a),
                "plot": _plot, "crosscheck": _crosscheck}
    try:
        parse_tau_prior(args.tau_prior)
        parse_mu_prior(args.mu_prior)
        return commands[args.command](args)
    except InputError as e:
        print(f"hierjax: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        if args.command != "crosscheck":
            raise
        print(f"hierjax: error: crosscheck needs numpyro and scipy ({e}); "
              "pip install 'hierjax[nuts,test]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
