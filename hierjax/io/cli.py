"""``hierjax`` command line.

``hierjax fit`` with no input fits the embedded eight schools (printing a table) and
a simulated batch (printing throughput and interval coverage); with a CSV input
it fits every dataset in it. ``--out`` writes the tidy CSV atomically.
``hierjax crosscheck`` compares the exact posterior with NumPyro NUTS (the eight
schools, or every dataset of a CSV) and prints z-scores in Monte Carlo standard
errors; ``--json`` writes the full report atomically. Errors in
the input give one message naming the dataset and field, exit status 2, and no
output file.

``hierjax plot`` draws the figures of :mod:`hierjax.io.plotting` (impact of tau, shrinkage,
densities, forest) for each dataset of a CSV, or the eight schools, into ``--out``;
without matplotlib it says which extra to install and exits with status 2.

Every command keeps compiled kernels on disk between runs (:mod:`hierjax.engine.cache`) unless
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
        raise argparse.ArgumentTypeError(
            f"quantile levels must lie strictly between 0 and 1, got {text!r}"
        )
    return levels


def add_precision(parser) -> None:
    """``--float32`` (speed) and ``--x64`` (the default, accepted) on a subcommand."""
    prec = parser.add_mutually_exclusive_group()
    prec.add_argument(
        "--float32",
        action="store_true",
        help="compute in float32 (faster; accuracy goal 1e-4 sd instead of 1e-8)",
    )
    prec.add_argument("--x64", action="store_true", help="compute in float64 (the default)")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``hierjax: error: ...`` and exit status 2."""

    def error(self, message):
        self.exit(2, f"hierjax: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="hierjax",
        description=(
            "Exact posterior of the normal-normal hierarchical model (eight schools), batched in JAX."
        ),
    )
    p.add_argument("--version", action="version", version=_version_text())
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--no-cache",
        action="store_true",
        help="do not keep compiled kernels on disk between runs (default: kept "
        "in $HIERJAX_CACHE_DIR or ~/.cache/hierjax, one directory per machine "
        "kind; HIERJAX_CACHE_DIR=off also turns it off)",
    )
    _fit_parser(sub, common)
    g = sub.add_parser(
        "plot",
        help="draw figures of a dataset (needs matplotlib)",
        parents=[common],  # type: ignore[list-item]  # argparse's stubs want the subclass
        description="Draw the figures of every dataset of a long CSV (columns "
        "dataset,y,sigma[,group]); with no INPUT, the eight schools. Files are "
        "written as OUT/<dataset>-<kind>.<format>.",
    )
    g.add_argument(
        "input", nargs="?", metavar="INPUT", help="CSV with columns dataset,y,sigma[,group]"
    )
    g.add_argument(
        "--kind",
        default="all",
        choices=("impact", "shrinkage", "densities", "forest", "all"),
        help="which figure (default: all)",
    )
    g.add_argument("--out", required=True, metavar="DIR", help="directory for the figures")
    g.add_argument("--tau-prior", default="uniform", metavar="SPEC", help="as for 'hierjax fit'")
    g.add_argument("--mu-prior", default="flat", metavar="SPEC", help="as for 'hierjax fit'")
    g.add_argument("--dataset", metavar="NAME", help="only this dataset of the CSV")
    g.add_argument("--units", metavar="TEXT", help="unit of y for axis labels (e.g. points)")
    g.add_argument("--format", default="png", choices=("png", "pdf", "svg"), help="file format")
    g.add_argument(
        "--transform",
        choices=("exp",),
        help="draw the forest plot on exp's scale with a log axis (y a log odds or risk ratio)",
    )
    add_precision(g)
    _crosscheck_parser(sub, common)
    from hierjax.io import cli_study  # calibrate, coverage

    cli_study.register(sub, common)
    from hierjax.io.cli_freq import register as register_freq

    register_freq(sub, common)
    return p


def _version_text() -> str:
    """``hierjax X (jax Y, jaxlib Z)`` without importing jax (its metadata only)."""
    from importlib import metadata

    def ver(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    from hierjax import __version__

    return f"hierjax {__version__} (jax {ver('jax')}, jaxlib {ver('jaxlib')})"


def _params(text: str):
    from hierjax.io.tidy import PARAMETERS

    params = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in params if t not in PARAMETERS + ("i2",)]
    if bad or not params:
        raise argparse.ArgumentTypeError(
            f"--params takes a comma-separated list of {', '.join(PARAMETERS)}, i2; got {text!r}"
        )
    return params


def _fit_epilog() -> str:
    import textwrap

    from hierjax.io.summary import PREDICTION
    from hierjax.status import EXIT_CODES, status_help

    codes = "\n".join(f"  {k}  {v}" for k, v in EXIT_CODES.items())
    prediction = textwrap.fill(
        PREDICTION, 88, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False
    )
    return f"""examples:
  hierjax fit data.csv --out results.parquet          # every dataset, streamed in chunks
  hierjax fit data.parquet --out res.csv --skip-invalid --quiet --tau-prior half-cauchy:25
  hierjax fit data.csv --out - --moments-only --params mu,tau   # CSV on stdout, fast path
  hierjax fit big.csv --out res.parquet --resume      # finish a job that was killed
  hierjax fit big.csv --out res.parquet --processes 2 --process-id 0 &   # two processes:
  hierjax fit big.csv --out res.parquet --processes 2 --process-id 1     # one output
  hierjax fit /shared/big.csv --out /shared/res.parquet --processes 2 --process-id 0 \\
      --coordinator host0:5555   # on host0; host1 the same with --process-id 1
  hierjax fit bcg.csv --measure RR --out bcg.csv      # 2x2 tables (ai,n1i,ci,n2i), log RR

input: a long table, one row per group: columns dataset,y,sigma[,group] (CSV or Parquet;
  the rows of a dataset contiguous and in order), or an NPZ with y, sigma [B, J]
  (optional mask, names).

output columns (one row per dataset and parameter):
  dataset      the dataset's name
  parameter    mu, tau, theta (one row per group), theta_new (a new group's effect:
               the prediction, see below), i2 (with --params ...,i2:
               I^2 = tau^2 / (tau^2 + s^2); its sd is not computed)
  group        theta rows: the group's label (or its 1-based position); empty otherwise
  mean, sd     posterior mean and sd (nan where they do not exist)
  q<level>     posterior quantiles (--quantiles; none with --moments-only)
  p_gt0        P(parameter > 0 | y)
  status       ok, or the flags below joined by ';'
  note         why a dataset was skipped (--skip-invalid), else empty
  exp_q<level>, transform   with --transform exp (default for OR, RR): the quantiles of
               mu, theta, theta_new back-transformed (odds or risk ratios)
  --summary OUT: one row per dataset: k, mu_mean, mu_sd, mu_lo, mu_hi (95%), p_mu_gt0,
  tau_mean, tau_median, tau_mode, i2_mean, i2_median, pred_lo, pred_hi (95% prediction
  interval, central), pred_hdi_lo, pred_hdi_hi (shortest), bf_tau0, bf_mu0 (Bayes factors
  for tau = 0 and mu = 0, with proper priors on both; else nan), status, note. Without
  --out the same is printed under each dataset's table.
{prediction}
  A CSV output gets a sidecar <out>.json with the priors, precision and versions;
  a Parquet output the same in its key-value metadata (key 'hierjax').

status flags:
{status_help()}

exit codes:
{codes}
"""


def _fit_parser(sub, common) -> None:
    f = sub.add_parser(
        "fit",
        help="fit datasets from a table (or the embedded eight schools)",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_fit_epilog(),
        description="Fit every dataset of a long table (CSV or Parquet, columns "
        "dataset,y,sigma[,group]; or NPZ), streamed in chunks with a bounded "
        "memory; with no INPUT, the eight schools and a simulated batch. "
        "Computes in float64 unless --float32.",
    )
    f.add_argument(
        "input", nargs="?", metavar="INPUT", help="CSV, Parquet (.parquet/.pq) or NPZ (.npz) input"
    )
    f.add_argument(
        "--tau-prior",
        default="uniform",
        metavar="SPEC",
        help="uniform | half-normal:S | half-cauchy:S | half-t:NU,S | exponential:RATE | "
        "half-logistic:S | lomax:SHAPE,SCALE | rayleigh:S | log-normal:MU,SIGMA | "
        "log-normal-tau2:MU,SIGMA | inv-gamma:A,B (on tau^2) | bayesmeta's sqrt, jeffreys, "
        "overall-jeffreys, berger-deely, conventional, dumouchel, shrinkage, i2 "
        "(default: uniform)",
    )
    f.add_argument(
        "--mu-prior", default="flat", metavar="SPEC", help="flat | normal:M,S (default: flat)"
    )
    f.add_argument(
        "--quantiles",
        type=_levels,
        default=[0.025, 0.25, 0.5, 0.75, 0.975],
        metavar="LEVELS",
        help="comma-separated levels (default: 0.025,0.25,0.5,0.75,0.975)",
    )
    f.add_argument(
        "--moments-only",
        action="store_true",
        help="means, sds and P(> 0) only: no quantile searches (several times faster)",
    )
    f.add_argument(
        "--params",
        type=_params,
        metavar="LIST",
        help="rows to write: a comma-separated subset of mu,tau,theta,theta_new "
        "(the default), and i2 (the posterior of I^2, computed on request)",
    )
    add_precision(f)
    f.add_argument(
        "--nodes",
        type=positive_int,
        metavar="N",
        help="Clenshaw-Curtis order of the tau grid for every dataset (even, >= 4; "
        "default: chosen per dataset, refined where the error estimate flags)",
    )
    f.add_argument(
        "--skip-invalid",
        action="store_true",
        help="fit the valid datasets and mark invalid ones (status invalid, a note)",
    )
    f.add_argument(
        "--measure",
        type=str.upper,
        choices=("OR", "RR", "RD", "MD", "SMD"),
        help="compute y, sigma from metafor's columns as escalc does: 2x2 tables "
        "ai,bi,ci,di or ai,n1i,ci,n2i (OR, RR on the log scale; RD); means "
        "m1i,sd1i,n1i,m2i,sd2i,n2i (MD; SMD = Hedges' g)",
    )
    f.add_argument(
        "--no-correction",
        action="store_true",
        help="with --measure OR/RR: do not add 0.5 to the cells of a table with a "
        "zero cell (escalc's add=1/2, to='only0' is the default)",
    )
    f.add_argument(
        "--transform",
        choices=("exp", "none"),
        default=None,
        help="also give quantiles back-transformed (exp_q... columns and a "
        "transform column); default: exp for --measure OR and RR",
    )
    f.add_argument(
        "--out",
        metavar="OUT",
        help="write the tidy table here: .csv or .parquet, or - for CSV on stdout",
    )
    f.add_argument(
        "--summary",
        metavar="OUT",
        help="also write one row per dataset: mu, tau (mode, median), I^2, the 95%% "
        "prediction interval (central and shortest), P(mu > 0), Bayes factors with "
        "proper priors (.csv or .parquet)",
    )
    f.add_argument("--force", action="store_true", help="replace an existing --out")
    f.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run of the same command from its parts",
    )
    f.add_argument(
        "--chunk-size",
        type=positive_int,
        default=None,
        metavar="B",
        help="datasets per chunk (default 16384): memory grows with it",
    )
    f.add_argument(
        "--processes",
        type=positive_int,
        default=None,
        metavar="N",
        help="split the job over N processes (one host, or hosts sharing --out's folder): "
        "each fits every N-th chunk into its own parts, and the last to finish writes --out, "
        "byte-identical to one process's",
    )
    f.add_argument(
        "--process-id",
        type=int,
        default=None,
        metavar="I",
        help="this process's number, 0..N-1 (with --processes)",
    )
    f.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="join jax.distributed at HOST:PORT (process 0's host) at program start and take "
        "N and I from it (from --processes/--process-id, or the cluster's environment)",
    )
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.add_argument(
        "--simulate",
        type=int,
        default=20000,
        metavar="B",
        help="with no INPUT: size of the simulated batch (default 20000; 0 to skip)",
    )


def _plot(args) -> int:
    """``hierjax plot``: the figures of each dataset, written to ``--out``."""
    import hierjax
    from hierjax.engine.batch import InputError

    try:
        from hierjax.io.plotting import KINDS, file_stem, plot_all, require_matplotlib

        require_matplotlib()
    except ImportError:
        print(
            "hierjax: error: plotting needs matplotlib: pip install 'hierjax[plots]'",
            file=sys.stderr,
        )
        return 2
    if args.input:
        from hierjax.io.tables import read_long_csv

        batch = read_long_csv(args.input)
        units = args.units
    else:
        y, sigma = hierjax.eight_schools()
        batch = hierjax.as_batch(
            y, sigma, names=["eight_schools"], groups=[hierjax.datasets.SCHOOLS]
        )
        units = args.units or "points"
    names = [str(n) for n in batch.names]
    if args.dataset is not None:
        if args.dataset not in names:
            raise InputError(
                f"--dataset {args.dataset!r} is not in the input (datasets: "
                + ", ".join(names[:10])
                + (" ..." if len(names) > 10 else "")
                + ")"
            )
        b = names.index(args.dataset)
        one = slice(b, b + 1)
        batch = batch._replace(
            y=batch.y[one],
            sigma=batch.sigma[one],
            mask=batch.mask[one],
            names=batch.names[one],
            groups=batch.groups[one],
        )
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
        safe = file_stem(name, b)
        paths = plot_all(
            y,
            sigma,
            args.out,
            kinds=kinds,
            labels=labels,
            units=units,
            prefix=f"{safe}-",
            fmt=args.format,
            fit=_one(fit, b),
            curves=_one(curves, b),
            transform=args.transform,
            **pri,
        )
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
        return a[b : b + 1]

    return take(res)


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _crosscheck_parser(sub, common) -> None:
    c = sub.add_parser(
        "crosscheck",
        help="compare the exact posterior with NumPyro NUTS",
        parents=[common],
        description="Run NumPyro NUTS (vmapped over datasets and chains) on the eight "
        "schools or every dataset of a long CSV, and compare its means, sds and "
        "quantiles with the exact posterior in Monte Carlo standard errors. "
        "Needs numpyro and scipy.",
    )
    c.add_argument(
        "input",
        nargs="?",
        metavar="INPUT",
        help="CSV with columns dataset,y,sigma[,group] (default: the eight schools)",
    )
    c.add_argument(
        "--tau-prior", default="uniform", metavar="SPEC", help="as for fit (default: uniform)"
    )
    c.add_argument(
        "--mu-prior", default="flat", metavar="SPEC", help="flat | normal:M,S (default: flat)"
    )
    c.add_argument(
        "--centered", action="store_true", help="centered parameterisation (default: non-centered)"
    )
    c.add_argument("--chains", type=positive_int, default=4, help="chains per dataset (default 4)")
    c.add_argument(
        "--warmup", type=positive_int, default=500, help="warmup iterations (default 500)"
    )
    c.add_argument(
        "--samples", type=positive_int, default=1000, help="draws per chain (default 1000)"
    )
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument(
        "--target-accept",
        type=float,
        default=0.8,
        metavar="P",
        help="NUTS target acceptance probability (default 0.8; 0.95-0.99 for a "
        "smaller step and fewer divergences in the tails of tau)",
    )
    add_precision(c)
    c.add_argument("--json", metavar="OUT.json", help="write the full report here (atomically)")


def _print_table(fit, b: int, out=None) -> None:
    from hierjax.io.tables import fit_rows

    out = sys.stdout if out is None else out
    header, rows = fit_rows(
        fit._replace(
            names=fit.names[b : b + 1],
            groups=fit.groups[b : b + 1],
            notes=fit.notes[b : b + 1],
            status=fit.status[b : b + 1],
            n_groups=fit.n_groups[b : b + 1],
            mu=_take(fit.mu, b),
            tau=_take(fit.tau, b),
            theta=_take(fit.theta, b),
            theta_new=_take(fit.theta_new, b),
        )
    )
    cols = header[1:]
    shown = [[r[1]] + [_short(v) for v in r[2:-1]] + [r[-1]] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in shown)) for i, c in enumerate(cols)]
    print(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths))),
        file=out,
    )
    for r in shown:
        print(
            "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))),
            file=out,
        )


def _take(m, b):
    return type(m)(*[a[b : b + 1] for a in m])


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
    dt = np.float32 if args.float32 else None
    fit = hierjax.fit(
        y,
        sigma,
        tau_prior=args.tau_prior,
        mu_prior=args.mu_prior,
        quantiles=args.quantiles,
        names=["eight_schools"],
        dtype=dt,
        groups=[hierjax.datasets.SCHOOLS],
    )
    print(
        f"Eight schools (BDA3 Table 5.2), tau prior {args.tau_prior}, mu prior {args.mu_prior}, "
        f"{np.dtype(fit.mu.mean.dtype).name}:"
    )
    _print_table(fit, 0)
    print(
        f"posterior mode of tau: {float(fit.tau_mode[0]):.4g}; "
        f"grid error estimate: {float(fit.grid_error[0]):.1e}"
    )
    if args.out:
        _write(fit, args.out)
    if args.simulate > 0:
        sim = hierjax.simulate(args.simulate, 8, seed=1)
        kw = dict(
            tau_prior=args.tau_prior,
            mu_prior=args.mu_prior,
            quantiles=args.quantiles,
            dtype=dt,
            nodes=args.nodes,
        )
        # compile first, on up to a block and one more dataset: every piece shape the timed
        # fit runs, the general grid's pass over what the fast grid sends back included
        from hierjax.engine.fitting import _default_block
        from hierjax.engine.prepare import compute_dtype
        from hierjax.inference.grid import default_nodes

        block = _default_block(default_nodes(compute_dtype(sim.y, sim.sigma, dtype=dt)) + 1, 8)
        hierjax.fit(sim.y[: block + 1], sim.sigma[: block + 1], **kw)
        t0 = time.perf_counter()
        res = hierjax.fit(sim.y, sim.sigma, **kw)
        elapsed = time.perf_counter() - t0
        levels = list(args.quantiles)
        print(
            f"\nSimulated batch: {args.simulate} eight-school-sized datasets "
            f"(tau ~ half-Cauchy(5), mu = 8) in {elapsed:.2f} s: {args.simulate / elapsed:,.0f} datasets/s "
            "(after compile, including host work)."
        )
        if 0.025 in levels and 0.975 in levels:
            lo, hi = levels.index(0.025), levels.index(0.975)
            q = res.theta.quantiles
            cover = np.mean((q[..., lo] <= sim.theta) & (sim.theta <= q[..., hi]))
            print(
                f"95% central intervals cover the true theta_j in {100 * cover:.1f}% of "
                f"{sim.theta.size} groups."
            )
        bad = int(np.sum(res.status != 0))
        print(f"datasets flagged: {bad}")
    return 0


def _write(fit, path) -> None:
    """The tidy table of ``fit`` to ``path`` (CSV or Parquet), atomically."""
    from hierjax.io.tables import write_table_atomic

    table = fit.to_arrow()
    if path == "-":
        from hierjax.io.tidy import csv_bytes

        sys.stdout.write(csv_bytes(table).decode())
        return
    write_table_atomic(path, table)
    print(f"wrote {table.num_rows} rows to {path}", file=sys.stderr)


def _fit_kwargs(args) -> dict:
    import numpy as np

    kw = dict(
        tau_prior=args.tau_prior,
        mu_prior=args.mu_prior,
        quantiles=() if args.moments_only else tuple(args.quantiles),
        dtype=np.float32 if args.float32 else np.float64,
    )
    if args.nodes is not None:
        kw["nodes"] = args.nodes
    return kw


def _metadata(args) -> dict:
    """What made an output: priors, precision, levels, versions (recorded with it)."""
    import jax

    import hierjax

    return {
        "hierjax": hierjax.__version__,
        "jax": jax.__version__,
        "precision": "float32" if args.float32 else "float64",
        "tau_prior": args.tau_prior,
        "mu_prior": args.mu_prior,
        "quantiles": [] if args.moments_only else list(args.quantiles),
        "nodes": args.nodes,
        "params": args.params,
        "measure": args.measure,
        "correction": not args.no_correction if args.measure else None,
        "transform": _transform(args),
        "input": os.path.basename(args.input) if args.input else None,
    }


def _transform(args):
    """``'exp'`` or None: asked for, or automatic for the log ratio measures."""
    if args.transform is not None:
        return None if args.transform == "none" else args.transform
    return "exp" if args.measure in ("OR", "RR") else None


def _progress(args):
    """A tqdm bar on stderr (datasets, datasets/s, ETA), or None when quiet or not a tty."""
    if args.quiet or not getattr(sys.stderr, "isatty", lambda: False)():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=None, unit=" datasets", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def _fit_file(args) -> int:
    from hierjax.io.stream import DEFAULT_CHUNK, check_input, check_output_path, run_job

    kw = _fit_kwargs(args)
    chunk = args.chunk_size or DEFAULT_CHUNK
    if args.out is None:
        return _fit_to_terminal(args, kw, chunk)
    check_input(args.input)
    check_output_path(args.out, [args.input], force=args.force, resume=args.resume)
    bar = _progress(args)
    n, i = args.processes or 1, args.process_id or 0
    try:
        res = run_job(
            args.input,
            args.out,
            processes=n,
            process_id=i,
            chunk_size=chunk,
            params=_table_params(args),
            skip_invalid=args.skip_invalid,
            force=args.force,
            resume=args.resume,
            metadata=_metadata(args),
            progress=bar,
            measure=args.measure,
            correction=not args.no_correction,
            table_hook=_hook(args, kw),
            summary_out=args.summary,
            summary_fn=_summary_fn(args, kw),
            on_skip=lambda note: print(f"hierjax: skipped {note}", file=sys.stderr),
            **kw,
        )
    finally:
        if bar is not None:
            bar.close()
    if args.out != "-":
        done = (
            f" ({res.resumed_chunks} chunk(s) from the interrupted run)"
            if res.resumed_chunks
            else ""
        )
        share = f"process {i} of {n}: " if n > 1 else ""
        print(
            f"{share}{'wrote' if n == 1 else 'fitted'} {res.rows} rows for {res.datasets} "
            f"datasets{' to ' + args.out if n == 1 else ''}{done}",
            file=sys.stderr,
        )
        if n > 1:
            print(
                f"{share}"
                + (
                    f"assembled {args.out} from every process's parts"
                    if res.assembled
                    else f"{args.out}: {res.note}"
                ),
                file=sys.stderr,
            )
    if res.flagged:
        print(
            f"hierjax: {res.flagged} dataset(s) carry accuracy flags (see the status column)",
            file=sys.stderr,
        )
    return 0


def _summary_fn(args, kw):
    """``(fit, chunk) -> summary table`` for --summary (and the terminal's summary)."""
    from hierjax.io.summary import summary_table

    opts = {k: kw[k] for k in ("tau_prior", "mu_prior", "dtype") if k in kw}
    opts["nodes"] = kw.get("nodes")
    return lambda fit, c, pad_to=None: summary_table(
        fit, c.y, c.sigma, c.mask, c.names, pad_to=pad_to, **opts
    )


def _hook(args, kw):
    """``(table, fit, chunk, pad_to) -> table``: i2 rows (--params ...,i2), back-transformed
    quantiles (--transform exp), or None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from hierjax.io.tidy import with_exp, with_i2

    want_i2 = bool(args.params and "i2" in args.params)
    exp = _transform(args) == "exp"
    if not (want_i2 or exp):
        return None

    def hook(table, fit, chunk, pad_to=None):
        if want_i2:
            from hierjax.io.summary import i2_of

            opts = {k: kw.get(k) for k in ("tau_prior", "mu_prior", "dtype", "nodes")}
            mean, q = i2_of(
                fit, chunk.y, chunk.sigma, chunk.mask, fit.levels, pad_to=pad_to, **opts
            )
            table = with_i2(table, mean, q, fit.levels)
            table = table.filter(pc.is_in(table["parameter"], value_set=pa.array(args.params)))
        return with_exp(table) if exp else table

    return hook


def _table_params(args):
    """--params for the tidy table itself (i2 rows come from the hook)."""
    if not args.params:
        return None
    p = [x for x in args.params if x != "i2"]
    return p or ["tau"]


def _fit_to_terminal(args, kw, chunk) -> int:
    """No --out: a table per dataset on stdout."""
    import numpy as np

    import hierjax
    from hierjax.io.stream import check_output_path, fit_chunk, read_chunks
    from hierjax.io.summary import format_summary

    if args.summary:
        check_output_path(args.summary, [args.input], force=args.force)
    summary = _summary_fn(args, kw)
    tables = []
    flagged = 0
    size = None
    for c in read_chunks(
        args.input, chunk, measure=args.measure, correction=not args.no_correction
    ):
        B = c.y.shape[0]
        size = size or B
        fit = fit_chunk(
            c,
            skip_invalid=args.skip_invalid,
            pad_to=size if c.index else None,
            path=args.input,
            **kw,
        )
        names = tuple(c.names.to_pylist())
        groups: list = [None] * B
        if c.labels is not None:
            flat = c.labels.to_pylist()
            ends = np.cumsum(c.mask.sum(axis=1))
            groups = [tuple(flat[e - n : e]) for e, n in zip(ends, c.mask.sum(axis=1))]
        fit = fit._replace(names=names, groups=tuple(groups))
        for note in fit.notes:
            if note:
                print(f"hierjax: skipped {note}", file=sys.stderr)
        st = summary(fit, c, size)
        rows = st.to_pylist()
        tables.append(st)
        for b, name in enumerate(fit.names):
            print(f"dataset {name}:")
            _print_table(fit, b)
            print(format_summary(rows[b]))
        flagged += int(np.sum((fit.status & ~hierjax.STATUS["invalid"]) != 0))
    if args.summary:
        import pyarrow as pa

        from hierjax.io.tables import write_table_atomic

        write_table_atomic(args.summary, pa.concat_tables(tables))
    if flagged:
        print(
            f"hierjax: {flagged} dataset(s) carry accuracy flags (see the status column)",
            file=sys.stderr,
        )
    return 0


def _crosscheck(args) -> int:
    import hierjax
    from hierjax.validation.nuts import comparison_json, crosscheck, print_report

    if args.input:
        from hierjax.io.tables import read_long_csv

        batch = read_long_csv(args.input)
    else:
        y, sigma = hierjax.eight_schools()
        batch = hierjax.as_batch(y, sigma, names=["eight_schools"])
    _, run, cmp = crosscheck(
        batch,
        tau_prior=args.tau_prior,
        mu_prior=args.mu_prior,
        centered=args.centered,
        chains=args.chains,
        warmup=args.warmup,
        samples=args.samples,
        seed=args.seed,
        target_accept=args.target_accept,
    )
    print(
        f"NUTS vs exact: tau prior {args.tau_prior}, mu prior {args.mu_prior}, "
        f"{'centered' if args.centered else 'non-centered'}, z = (exact - NUTS) / MCSE"
    )
    print_report(cmp, run)
    if args.json:
        from hierjax.io.tables import write_json_atomic

        write_json_atomic(args.json, comparison_json(cmp, run))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Entry point of the ``hierjax`` command: x64 if asked and the on-disk cache of
    compiled kernels (:mod:`hierjax.engine.cache`) unless ``--no-cache``, both at program start;
    the priors checked before anything compiles; one-line errors with exit status 2."""
    args = _parser().parse_args(argv)
    import jax

    x64_before = bool(jax.config.values["jax_enable_x64"])
    # float64 unless --float32 (the speed choice); --x64 is accepted and changes nothing
    if args.x64 or not args.float32:
        jax.config.update("jax_enable_x64", True)
    try:
        if args.command == "fit":
            err = _split(args)
            if err:
                print(f"hierjax: error: {err}", file=sys.stderr)
                return 2
        return _main(args)
    finally:  # in-process callers (tests, notebooks) keep their own setting
        jax.config.update("jax_enable_x64", x64_before)


def _split(args) -> str | None:
    """``--processes``, ``--process-id`` and ``--coordinator`` checked (an error text, or
    None); with a coordinator, ``jax.distributed`` joined here, before any JAX computation
    (it must be), and N and I taken from it."""
    n, i, coord = args.processes, args.process_id, args.coordinator
    if n is None and i is None and coord is None:
        return None
    if args.input is None or args.out in (None, "-"):
        return "--processes, --process-id and --coordinator need INPUT and --out FILE"
    if coord is None and (n is None or i is None):
        return "--processes N and --process-id I go together (or give --coordinator)"
    if coord is not None:
        import jax

        given = {"num_processes": n, "process_id": i}
        try:
            jax.distributed.initialize(
                coordinator_address=coord, **{k: v for k, v in given.items() if v is not None}
            )
        except Exception as e:  # noqa: BLE001 (JAX raises several kinds; one line for each)
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return f"--coordinator {coord}: cannot join jax.distributed ({why})"
        n, i = jax.process_count(), jax.process_index()
        args.processes, args.process_id = n, i
    if not 0 <= i < n:
        return f"--process-id must lie in 0..{n - 1} for --processes {n}, got {i}"
    return None


def _main(args) -> int:
    from hierjax.engine.cache import ENV, use_compilation_cache

    if not (args.no_cache or os.environ.get(ENV, "").strip().lower() in _OFF):
        use_compilation_cache()
    if getattr(args, "study_command", None):  # calibrate, coverage (hierjax.io.cli_study)
        return args.study_command(args)
    from hierjax.model.priors import InputError, parse_mu_prior, parse_tau_prior

    commands = {
        "fit": lambda a: _fit_file(a) if a.input else _default_job(a),
        "plot": _plot,
        "crosscheck": _crosscheck,
    }
    from hierjax.io.cli_freq import freq_command

    commands["freq"] = freq_command
    try:
        parse_tau_prior(args.tau_prior)
        parse_mu_prior(args.mu_prior)
        if args.command == "fit" and args.out and args.out != "-" and args.input is None:
            from hierjax.io.stream import check_output_path

            check_output_path(args.out, force=args.force)
        return commands[args.command](args)
    except InputError as e:
        print(f"hierjax: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        if args.command != "crosscheck":
            raise
        print(
            f"hierjax: error: crosscheck needs numpyro and scipy ({e}); "
            "pip install 'hierjax[nuts,test]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
