"""``hierjax calibrate`` and ``hierjax coverage``: simulation studies from the command line.

``hierjax calibrate`` draws replicates from proper generating priors, fits them with the
fit priors (default: the same) and writes the exact PIT and the SBC rank of every true
value (one row per replicate and parameter), printing KS and chi-square summaries.
``hierjax coverage CONFIG.toml`` scores interval coverage over the grid the TOML file
describes (:func:`hierjax.validation.coverage.coverage`). Output is written atomically; a progress
bar (tqdm, if installed) shows on stderr when it is a terminal.
"""

from __future__ import annotations

import sys

__all__ = ["register"]


def register(subparsers, common_parent) -> None:
    """Add the ``calibrate`` and ``coverage`` commands to ``hierjax``'s subparsers; each sets
    ``study_command`` (the function ``cli.main`` runs)."""
    from hierjax.io.cli import add_precision, positive_int

    c = subparsers.add_parser(
        "calibrate",
        help="PIT and SBC ranks of the exact posterior on simulated data",
        parents=[common_parent],
        description="Simulate replicates from proper generating priors, fit them (by default "
        "with the same priors) and write the PIT P(param <= truth | y) and the SBC rank of the "
        "truth among exact draws, one row per replicate and parameter.",
    )
    c.add_argument("--J", type=positive_int, required=True, help="groups per replicate")
    c.add_argument(
        "--tau-prior",
        required=True,
        metavar="SPEC",
        help="generating tau prior (proper: half-normal:S, half-cauchy:S, half-t:NU,S, "
        "exponential:RATE, half-logistic:S, lomax:A,S, rayleigh:S, log-normal:M,S, "
        "inv-gamma:A,B)",
    )
    c.add_argument(
        "--mu-prior", required=True, metavar="SPEC", help="generating mu prior (proper: normal:M,S)"
    )
    c.add_argument(
        "--fit-tau-prior",
        metavar="SPEC",
        help="tau prior of the fits (default: the generating one; any hierjax prior)",
    )
    c.add_argument(
        "--fit-mu-prior",
        metavar="SPEC",
        help="mu prior of the fits (default: the generating one; flat or normal:M,S)",
    )
    c.add_argument(
        "--sigma",
        default="1",
        metavar="SPEC",
        help="known standard errors: a number, or uniform:LO,HI (default 1)",
    )
    c.add_argument("--replicates", type=positive_int, required=True, metavar="N")
    c.add_argument(
        "--draws",
        type=int,
        default=99,
        metavar="D",
        help="exact posterior draws per replicate for the SBC rank (default 99; "
        "0: no ranks, the rank column left empty)",
    )
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument("--bins", type=positive_int, default=20, help="chi-square bins (default 20)")
    add_precision(c)
    c.add_argument("--out", required=True, metavar="PIT.csv", help="write the rows here")
    c.set_defaults(study_command=_calibrate)

    v = subparsers.add_parser(
        "coverage",
        help="coverage of Bayesian and frequentist intervals over a grid",
        parents=[common_parent],
        description="Score interval coverage over the grid of true tau, J and sigma "
        "configurations given in a TOML file (see hierjax.validation.coverage; keys: replicates, seed, "
        "level, mu, tau, J, params, kinds, frequentist, oracle, [sigma], [priors.NAME]).",
    )
    v.add_argument("config", metavar="CONFIG.toml")
    add_precision(v)
    v.add_argument("--out", required=True, metavar="COVERAGE.csv", help="write the table here")
    v.set_defaults(study_command=_coverage)


def _progress(total: int, what: str):
    """``(update, close)`` of a tqdm bar on stderr, quiet when stderr is not a terminal."""
    try:
        from tqdm import tqdm
    except ImportError:  # optional: no bar
        return (lambda n: None), (lambda: None)
    bar = tqdm(total=total, desc=what, unit="rep", file=sys.stderr, disable=not sys.stderr.isatty())
    return bar.update, bar.close


def _sigma(text: str):
    from hierjax.model.priors import InputError
    from hierjax.validation.simstudy import SigmaUniform

    name, _, rest = text.partition(":")
    try:
        if name == "uniform":
            lo, hi = (float(x) for x in rest.split(","))
            return SigmaUniform(lo, hi)
        return float(text)
    except ValueError:
        raise InputError(f"--sigma must be a number or uniform:LO,HI, got {text!r}") from None


def _fmt(x) -> str:
    return "" if x is None else (f"{x:.10g}" if isinstance(x, float) else str(x))


def _calibrate(args) -> int:
    from hierjax.io.tables import write_csv_atomic
    from hierjax.model.priors import InputError
    from hierjax.validation.calibration import calibrate, calibration_rows, rank_uniformity

    try:
        if args.draws < 0:
            raise InputError(f"--draws must be >= 0, got {args.draws}")
        update, close = _progress(args.replicates, "calibrate")
        try:
            cal = calibrate(
                args.replicates,
                key=args.seed,
                J=args.J,
                sigma=_sigma(args.sigma),
                tau_prior=args.tau_prior,
                mu_prior=args.mu_prior,
                fit_tau_prior=args.fit_tau_prior,
                fit_mu_prior=args.fit_mu_prior,
                num_draws=args.draws,
                bins=args.bins,
                progress=update,
            )
        finally:
            close()
    except InputError as e:
        msg = str(e)
        if msg.startswith(("tau: cannot simulate", "mu: cannot simulate")):
            msg = "calibrate needs proper generating priors (--tau-prior, --mu-prior): " + msg
        print(f"hierjax: error: {msg}", file=sys.stderr)
        return 2
    rows = [
        [i, p, _fmt(float(t)), _fmt(float(u)), "" if r < 0 else r]
        for i, p, t, u, r in calibration_rows(cal)
    ]
    write_csv_atomic(args.out, ["replicate", "parameter", "truth", "pit", "rank"], rows)
    fit_tau = args.fit_tau_prior or args.tau_prior
    fit_mu = args.fit_mu_prior or args.mu_prior
    print(
        f"{args.replicates} replicates, J = {args.J}: generated with tau ~ {args.tau_prior}, "
        f"mu ~ {args.mu_prior}; fitted with tau ~ {fit_tau}, mu ~ {fit_mu}"
    )
    print(
        f"{'check':<12}{'parameter':<10}{'n':>8}{'KS':>9}{'KS p':>10}{'chi2':>10}{'df':>4}"
        f"{'chi2 p':>10}"
    )
    table = [("PIT", k, u) for k, u in cal.summary.items()]
    if cal.ranks is not None:
        table += [
            (
                f"SBC rank/{args.draws}",
                k,
                rank_uniformity(getattr(cal.ranks, k), args.draws, args.bins),
            )
            for k in ("mu", "tau", "theta")
        ]
    for check, k, u in table:
        print(
            f"{check:<12}{k:<10}{u.n:>8}{u.ks:>9.4f}{u.ks_p:>10.3g}{u.chi2:>10.2f}"
            f"{u.chi2_df:>4}{u.chi2_p:>10.3g}"
        )
    flagged = int((cal.pit.status != 0).sum())
    if flagged:
        print(f"hierjax: {flagged} replicate(s) carry accuracy flags", file=sys.stderr)
    print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    return 0


def _load_toml(path):
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            from hierjax.model.priors import InputError

            raise InputError(
                "reading CONFIG.toml needs Python >= 3.11 (tomllib) or the tomli "
                "package: pip install tomli"
            ) from None
    with open(path, "rb") as fh:
        return tomllib.load(fh)


_KEYS = {
    "replicates",
    "seed",
    "level",
    "mu",
    "tau",
    "J",
    "params",
    "kinds",
    "frequentist",
    "oracle",
    "sigma",
    "priors",
    "chunk",
}


def coverage_config(cfg: dict) -> dict:
    """Keyword arguments of :func:`hierjax.validation.coverage.coverage` from a parsed TOML config."""
    from hierjax.model.priors import InputError

    unknown = set(cfg) - _KEYS
    if unknown:
        raise InputError(
            f"unknown key(s) in the coverage config: {sorted(unknown)}; expected {sorted(_KEYS)}"
        )
    for k in ("replicates", "tau", "J"):
        if k not in cfg:
            raise InputError(f"the coverage config needs {k!r}")

    def listify(v):
        return v if isinstance(v, list) else [v]

    priors = {
        name: (p.get("tau", "uniform"), p.get("mu", "flat"))
        for name, p in cfg.get("priors", {"uniform": {}}).items()
    }
    kw = {
        "taus": listify(cfg["tau"]),
        "Js": listify(cfg["J"]),
        "sigmas": cfg.get("sigma", 1.0),
        "replicates": cfg["replicates"],
        "key": int(cfg.get("seed", 0)),
        "mu": cfg.get("mu", 0.0),
        "priors": priors,
        "level": float(cfg.get("level", 0.95)),
        "frequentist": tuple(cfg.get("frequentist", ())),
        "oracle": bool(cfg.get("oracle", False)),
    }
    for k in ("params", "kinds"):
        if k in cfg:
            kw[k] = tuple(listify(cfg[k]))
    if "chunk" in cfg:
        kw["chunk"] = int(cfg["chunk"])
    return kw


def _coverage(args) -> int:
    import time

    from hierjax.io.tables import write_csv_atomic
    from hierjax.model.priors import InputError
    from hierjax.validation.coverage import COLUMNS, coverage, coverage_cells

    try:
        try:
            kw = coverage_config(_load_toml(args.config))
        except OSError as e:
            raise InputError(f"cannot read {args.config}: {e.strerror}") from None
        except ValueError as e:
            if isinstance(e, InputError):
                raise
            raise InputError(f"{args.config} is not valid TOML: {e}") from None
        n_cells = len(
            coverage_cells(
                kw["taus"], kw["Js"], kw["sigmas"] if isinstance(kw["sigmas"], dict) else 1.0
            )
        )
        update, close = _progress(n_cells * int(kw["replicates"]), "coverage")
        t0 = time.perf_counter()
        try:
            rows = coverage(progress=update, **kw)
        finally:
            close()
    except InputError as e:
        print(f"hierjax: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"hierjax: error: {e}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    write_csv_atomic(args.out, list(COLUMNS), [[_fmt(r[c]) for c in COLUMNS] for r in rows])
    print(
        f"{'tau':>6} {'J':>3} {'sigma':<8} {'method':<16} {'interval':<10} {'param':<10}"
        f"{'coverage':>9} {'mcse':>7} {'width':>8}"
    )
    for r in rows:
        print(
            f"{r['tau']!s:>6} {r['J']:>3} {r['sigma']:<8} {r['method']:<16} "
            f"{r['interval']:<10} {r['parameter']:<10}{r['coverage']:>9.4f} {r['mcse']:>7.4f} "
            f"{r['mean_width']:>8.3f}"
        )
    print(f"{n_cells} cells x {kw['replicates']} replicates in {wall:.1f} s", file=sys.stderr)
    print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    return 0
