"""hierjax benchmark suite: throughput, compile time, memory and accuracy, against peers.

One entry point::

    python benchmarks/suite.py [run] --preset {smoke,quick,full} [--precision 32|64|both]
    python benchmarks/suite.py compare [--file F] [--run RUN_ID]
    python benchmarks/suite.py plot [--file F]

``run`` starts one worker subprocess per precision (``JAX_ENABLE_X64=0`` / ``=1``, set
before JAX is imported), collects their JSON lines, appends each row as it arrives to
``benchmarks/results/<machine>.jsonl`` (so an interrupted ``full`` run keeps what it
measured; ``--resume`` skips the settings this commit already has in the file) and
prints a table.

Per (precision, J, mode, B) the hierjax row holds: ``datasets_per_s`` (``hierjax.fit``
end to end after compile: host checks, standardisation, the jitted kernel, the map
back to user units; ``fit`` returns NumPy, so results are materialised), ``compile_s``
(first call minus a steady call on the same first chunk: 0 when an earlier row already
compiled that block shape, see ``compiled``), ``traces`` (new jit cache entries during
the steady calls: must be 0), ``peak_rss_mb`` (the process's resident-set high-water
during the row, reset per row through ``/proc/self/clear_refs``; includes the JAX
runtime, XLA's compile of a new shape, the row's data and its results;
``steady_peak_rss_mb`` is the high-water of the steady calls alone, ``base_rss_mb`` the
RSS at the row's start)
and the accuracy on the first ``ref_n`` datasets (iid simulated, so a random subset)
against the independent scipy-quad reference of tests/reference.py, in units of the
reference posterior sd (the IQR where the sd does not exist): ``acc_mean``, ``acc_sd``
(relative), ``acc_q`` (quantiles), ``acc_p`` (P(> 0), absolute), their max ``acc_max``,
and ``acc_false`` (moments that do not exist but were reported finite, or vice versa).

B above one call size is run in chunks (data simulated per chunk outside the timer),
so memory stays bounded whatever ``--max-b`` allows (up to 1e7). Nothing here is a test:
no timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import history  # noqa: E402  (from this folder, put on sys.path above)

__all__ = [
    "PRESETS",
    "accuracy",
    "config",
    "data",
    "hierjax_row",
    "main",
    "reference_records",
    "worker",
]

LEVELS = (0.025, 0.25, 0.5, 0.75, 0.975)
BLOCK = 1024  # datasets are simulated in blocks of this many (fixed seeds)
CALL_ELEMENTS = 1 << 21  # datasets x groups per hierjax.fit call (memory bound)

PRESETS = {
    "smoke": {
        "B": [32],
        "J": [8],
        "precisions": ["64", "32"],
        "modes": ["moments", "full"],
        "ref_n": 2,
        "naive_n": 32,
        "quad_n": 1,
        "nuts_n": 2,
        "nuts": (2, 50, 50),
        "cost": False,
        "ceiling_elements": 1 << 16,
        "min_time": 0.0,
        "max_passes": 1,
    },
    "quick": {
        "B": [1000, 10000],
        "J": [8, 50],
        "precisions": ["64", "32"],
        "modes": ["moments", "full"],
        "ref_n": 20,
        "naive_n": 1000,
        "quad_n": 5,
        "nuts_n": 100,
        "nuts": (4, 500, 1000),
        "cost": True,
        "ceiling_elements": 1 << 22,
        "min_time": 2.0,
        "max_passes": 3,
    },
    "full": {
        "B": [1000, 10000, 100000, 1000000],
        "J": [3, 8, 50, 500],
        "precisions": ["64", "32"],
        "modes": ["moments", "full"],
        "ref_n": 20,
        "naive_n": 10000,
        "quad_n": 20,
        "nuts_n": 100,
        "nuts": (4, 500, 1000),
        "cost": True,
        "ceiling_elements": 1 << 23,
        "min_time": 2.0,
        "max_passes": 3,
    },
}


def config(args) -> dict:
    cfg = dict(PRESETS[args.preset])
    if args.B:
        cfg["B"] = [int(float(b)) for b in args.B]
    if args.J:
        cfg["J"] = [int(j) for j in args.J]
    cfg["B"] = [b for b in cfg["B"] if b <= args.max_b]
    if args.precision != "both":
        cfg["precisions"] = [args.precision]
    if args.modes:
        cfg["modes"] = args.modes
    cfg["all"] = args.all
    cfg["peers"] = not args.no_peers
    cfg["seed"] = args.seed
    return cfg


def b_values(cfg, J):
    """B=1e6 and above only for J <= 50 unless --all (the full grid would take hours)."""
    return [b for b in cfg["B"] if cfg["all"] or b < 10**6 or J <= 50]


# --------------------------------------------------------------------------- data
def data(J: int, start: int, count: int, seed: int = 0):
    """Datasets ``[start, start + count)`` of the stream for ``J`` groups: blocks of
    :data:`BLOCK` from ``hierjax.simulate`` with fixed seeds, so dataset ``i`` is the same
    whatever B a row uses (peers and the reference see the same datasets)."""
    import numpy as np

    import hierjax

    ys, ss = [], []
    b0, b1 = start // BLOCK, (start + count - 1) // BLOCK
    for b in range(b0, b1 + 1):
        sim = hierjax.simulate(BLOCK, J, seed=seed * 1_000_003 + J * 1009 + b)
        ys.append(sim.y)
        ss.append(sim.sigma)
    y, s = np.concatenate(ys), np.concatenate(ss)
    off = start - b0 * BLOCK
    return y[off : off + count], s[off : off + count]


def check_groups(y, sigma):
    """Groups the reference checks: all for J <= 8, else first, last and the extremes."""
    import numpy as np

    J = len(y)
    if J <= 8:
        return list(range(J))
    return sorted(
        {
            0,
            J - 1,
            int(np.argmin(sigma)),
            int(np.argmax(sigma)),
            int(np.argmax(y)),
            int(np.argmin(y)),
        }
    )


# --------------------------------------------------------------------------- reference
def _ref_marginal(m) -> dict:
    return {
        "mean": m.mean,
        "sd": m.sd,
        "q": [float(v) for v in m.quantiles],
        "p_gt0": m.p_gt0,
        "mean_exists": bool(m.mean_exists),
        "sd_exists": bool(m.sd_exists),
        "scale": m.scale,
    }


def reference_records(J: int, n: int, seed: int = 0, cache_dir: str | None = None, log=print):
    """Reference summaries of the first ``n`` datasets for ``J`` (disk-cached: they do not
    depend on hierjax). Returns ``{i: record}``; a dataset whose reference fails its own
    error check is left out (and said)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from reference import Reference

    cache_dir = cache_dir or os.path.join(HERE, ".cache")
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"ref-J{J}-seed{seed}.json")
    recs = {}
    if os.path.exists(path):
        with open(path) as fh:
            recs = {int(k): v for k, v in json.load(fh).items()}
    y, s = data(J, 0, n, seed)
    missing = [i for i in range(n) if i not in recs]
    if missing:
        t0 = time.perf_counter()
        for i in missing:
            try:
                r = Reference(y[i], s[i])
                groups = check_groups(y[i], s[i])
                recs[i] = {
                    "groups": groups,
                    **{
                        name: _ref_marginal(r.marginal(name, None, LEVELS))
                        for name in ("mu", "tau", "theta_new")
                    },
                    "theta": {
                        str(j): _ref_marginal(r.marginal("theta", j, LEVELS)) for j in groups
                    },
                }
            except RuntimeError as e:  # the reference's own error check
                recs[i] = {"failed": str(e)}
        log(f"  reference J={J}: {len(missing)} datasets in {time.perf_counter() - t0:.1f} s")
        with open(path + ".tmp", "w") as fh:
            json.dump({str(k): v for k, v in recs.items()}, fh)
        os.replace(path + ".tmp", path)
    return {i: recs[i] for i in range(n) if "failed" not in recs[i]}


def accuracy(est: dict, refs: dict, levels, tau_q: bool = True) -> dict:
    """Errors of ``est`` against the reference records ``refs`` (``{i: record}``).

    ``est[name]`` holds ``mean, sd, p_gt0`` (``[n]``; theta ``[n, J]``) and ``q``
    (``[n(, J), Q]`` or None), optionally ``mean_exists``/``sd_exists``; names ``mu``,
    ``tau``, ``theta`` and optionally ``theta_new``. Rows ``i`` of ``est`` are the
    datasets ``i`` of ``refs``.
    """
    import numpy as np

    err = {"mean": 0.0, "sd": 0.0, "q": 0.0, "p": 0.0}
    false = 0
    n_used = 0

    def one(e, idx, r, is_tau=False):
        nonlocal false
        mean = float(e["mean"][idx])
        sd = float(e["sd"][idx])
        if r["mean_exists"]:
            err["mean"] = max(
                err["mean"], abs(mean - r["mean"]) / r["scale"] if math.isfinite(mean) else math.inf
            )
        elif math.isfinite(mean):
            false += 1
        if r["sd_exists"]:
            err["sd"] = max(
                err["sd"], abs(sd - r["sd"]) / r["sd"] if math.isfinite(sd) else math.inf
            )
        elif math.isfinite(sd):
            false += 1
        if e.get("q") is not None and len(levels) and (tau_q or not is_tau):
            q = np.asarray(e["q"][idx], np.float64)
            ref_q = np.asarray(r["q"])
            d = np.max(np.abs(q - ref_q)) / r["scale"]
            err["q"] = max(err["q"], float(d) if np.isfinite(d) else math.inf)
        if not is_tau:
            err["p"] = max(err["p"], abs(float(e["p_gt0"][idx]) - r["p_gt0"]))

    n_est = len(est["mu"]["mean"])
    for i, rec in refs.items():
        if i >= n_est:
            continue
        n_used += 1
        for name in ("mu", "tau", "theta_new"):
            if name in est:
                one(est[name], i, rec[name], is_tau=(name == "tau"))
        th = est["theta"]
        for j, r in rec["theta"].items():
            j = int(j)
            e = {
                k: (None if v is None else np.asarray(v)[:, j])
                for k, v in th.items()
                if k in ("mean", "sd", "p_gt0", "q")
            }
            one(e, i, r)
    out = {f"acc_{k}": v for k, v in err.items()}
    vals = [v for k, v in err.items()]
    out["acc_max"] = max(vals) if n_used else None
    out["acc_false"] = false
    out["acc_n"] = n_used
    return out


def fit_estimates(f) -> dict:
    """A ``hierjax.Fit`` as the dict :func:`accuracy` reads."""

    def m(x):
        return {
            "mean": x.mean,
            "sd": x.sd,
            "p_gt0": x.p_gt0,
            "q": x.quantiles if x.quantiles.shape[-1] else None,
        }

    return {"mu": m(f.mu), "tau": m(f.tau), "theta": m(f.theta), "theta_new": m(f.theta_new)}


# --------------------------------------------------------------------------- memory
def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _rss_mb():
    """``(current RSS, high-water RSS)`` in MB (Linux /proc; getrusage elsewhere)."""
    try:
        vals = {}
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS", "VmHWM")):
                    k, v = line.split(":")
                    vals[k] = float(v.split()[0]) / 1024.0
        return vals["VmRSS"], vals["VmHWM"]
    except (OSError, KeyError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return math.nan, peak


# --------------------------------------------------------------------------- hierjax rows
def _cache_size():
    from hierjax.engine.fitting import fit_standardized

    try:
        return fit_standardized._cache_size()
    except AttributeError:
        return -1


def call_size(J: int, B: int) -> int:
    """Datasets per ``hierjax.fit`` call: ~2**21 datasets x groups, whole blocks."""
    return min(B, max(BLOCK, (CALL_ELEMENTS // J) // BLOCK * BLOCK))


def hierjax_row(J: int, B: int, mode: str, dtype, refs: dict, cfg: dict, log=print) -> dict:
    """Measure ``hierjax.fit`` on ``B`` datasets of ``J`` groups (see the module doc)."""
    import numpy as np

    import hierjax

    levels = () if mode == "moments" else LEVELS
    row = {"kind": "hierjax", "mode": mode, "dtype": np.dtype(dtype).name, "B": B, "J": J}
    S = call_size(J, B)
    y0, s0 = data(J, 0, S, cfg["seed"])
    resettable = _reset_peak()
    base, _ = _rss_mb()
    c0 = _cache_size()
    t0 = time.perf_counter()
    try:
        f0 = hierjax.fit(y0, s0, quantiles=levels, dtype=dtype)
    except hierjax.InputError as e:
        if mode == "moments":
            return dict(row, status="unsupported", note=f"moments-only unsupported: {e}")
        raise
    t_first = time.perf_counter() - t0
    c1 = _cache_size()
    est = fit_estimates(f0)
    del f0
    _, peak_first = _rss_mb()  # includes XLA's compile of a new block shape
    _reset_peak()
    best, best_first, passes, spent = math.inf, math.inf, 0, 0.0
    while passes < max(1, cfg["max_passes"]):
        total = 0.0
        for start in range(0, B, S):
            n = min(S, B - start)
            if start == 0:
                y, s = y0[:n], s0[:n]
            else:
                y, s = data(J, start, n, cfg["seed"])
            t = time.perf_counter()
            f = hierjax.fit(y, s, quantiles=levels, dtype=dtype)
            dt = time.perf_counter() - t
            del f
            total += dt
            if start == 0:
                best_first = min(best_first, dt)
        best = min(best, total)
        passes += 1
        spent += total
        if spent >= cfg["min_time"]:
            break
    _, peak = _rss_mb()
    row.update(
        status="ok",
        seconds=best,
        datasets_per_s=B / best,
        passes=passes,
        first_call_s=t_first,
        compile_s=max(0.0, t_first - best_first),
        compiled=(c1 - c0) if c0 >= 0 else None,
        traces=(_cache_size() - c1) if c0 >= 0 else None,
        call_size=S,
        peak_rss_mb=round(max(peak, peak_first), 1),
        steady_peak_rss_mb=round(peak, 1),
        base_rss_mb=round(base, 1),
        rss_delta_mb=round(peak - base, 1),
        peak_kind="per-row VmHWM" if resettable else "process high-water (not reset)",
    )
    if refs:
        row.update(accuracy(est, refs, levels))
    log(
        f"  hierjax {row['dtype']} {mode} J={J} B={B}: {row['datasets_per_s']:.4g}/s "
        f"compile {row['compile_s']:.1f} s acc {row.get('acc_max')}"
    )
    return row


def limit_rows(cfg, dtype, measured: list, log=print) -> dict:
    """The limit analysis at J = 8 (or the first J): cost analysis, ceilings, fractions."""
    import limit
    import numpy as np

    from hierjax.inference.grid import default_nodes

    J = 8 if 8 in cfg["J"] else cfg["J"][0]
    K = default_nodes(dtype) + 1
    row = {
        "kind": "limit",
        "dtype": np.dtype(dtype).name,
        "J": J,
        "K": K,
        "status": "ok",
        "hand_count_per_element": limit.HAND_COUNT["total"],
    }
    if cfg["cost"]:
        for mode, levels in (("full", LEVELS), ("moments", ())):
            try:
                c = limit.kernel_cost(J, dtype, levels)
            except Exception as e:  # noqa: BLE001 -- an engine without quantiles=() fails anywhere
                row[f"cost_{mode}"] = f"unavailable: {type(e).__name__}: {str(e)[:200]}"
                continue
            row[f"cost_{mode}"] = c
            log(f"  cost {mode}: {c}")
    row.update(limit.ceiling(dtype, cfg["ceiling_elements"]))
    row.update(limit.moment_kernel_rate(J, dtype, K, B=min(4096, cfg["ceiling_elements"] // 64)))
    ceil = row["ceiling_mix_elements_per_s"]
    ops = row["op_elements_per_s"]
    for mode in ("full", "moments"):
        c = row.get(f"cost_{mode}")
        if isinstance(c, dict):
            # bounds on datasets/s from the counted work: every transcendental at the
            # erfc rate (pessimistic) or the exp rate (optimistic); flops at the FMA rate
            c["bound_erfc_datasets_per_s"] = ops["erfc"] / c["transcendentals_per_dataset"]
            c["bound_exp_datasets_per_s"] = ops["exp"] / c["transcendentals_per_dataset"]
            c["bound_flops_datasets_per_s"] = (
                row["ceiling_fma_flops_per_s"] / c["flops_per_dataset"]
            )
    for mode in ("moments", "full"):
        rs = [
            r
            for r in measured
            if r.get("kind") == "hierjax"
            and r.get("J") == J
            and r.get("mode") == mode
            and r.get("status") == "ok"
        ]
        if rs:
            r = max(rs, key=lambda r: r["B"])
            rate = r["datasets_per_s"] * K * J
            row[f"{mode}_B"] = r["B"]
            row[f"{mode}_elements_per_s"] = rate
            row[f"{mode}_fraction_of_mix_ceiling"] = rate / ceil
            row[f"{mode}_fraction_of_moment_kernel"] = rate / row["moment_kernel_elements_per_s"]
    log(f"  limit: {json.dumps({k: v for k, v in row.items() if not k.startswith('cost')})}")
    return row


# --------------------------------------------------------------------------- worker
def _emit(row: dict, meta: dict):
    print("ROW " + json.dumps({**meta, **row}, default=float), flush=True)


def _key(row) -> str:
    return "|".join(map(str, history.settings_key(row)))


def worker(args) -> int:
    """One precision (``JAX_ENABLE_X64`` set by the parent before JAX was imported)."""
    import jax
    import numpy as np

    cfg = config(args)
    x64 = bool(jax.config.jax_enable_x64)
    dtype = np.dtype(np.float64 if x64 else np.float32)
    dev = jax.devices()[0]
    meta = {
        "jax": jax.__version__,
        "device": str(dev),
        "device_kind": dev.device_kind,
        "platform": dev.platform,
    }
    meta.update(json.loads(args.meta))
    skip = set()
    if args.skip_file:
        with open(args.skip_file) as fh:
            skip = set(json.load(fh))

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    import peers

    measured = []
    for J in cfg["J"]:
        refs = reference_records(J, cfg["ref_n"], cfg["seed"], log=log) if cfg["ref_n"] else {}
        for mode in cfg["modes"]:
            for B in b_values(cfg, J):
                probe = {
                    "kind": "hierjax",
                    "dtype": dtype.name,
                    "mode": mode,
                    "B": B,
                    "J": J,
                    "device_kind": dev.device_kind,
                }
                if _key(probe) in skip:
                    log(f"  skip (done): {_key(probe)}")
                    continue
                row = hierjax_row(J, B, mode, dtype, refs, cfg, log)
                measured.append(row)
                _emit(row, meta)
        if cfg["peers"] and args.peers_here:
            n = min(cfg["naive_n"], max(cfg["B"]))
            y, s = data(J, 0, n, cfg["seed"])
            for mode in cfg["modes"]:
                lv = () if mode == "moments" else LEVELS
                r = peers.naive_row(
                    y, s, lv, mode, lambda e, tau_q, lv=lv, refs=refs: accuracy(e, refs, lv, tau_q)
                )
                _emit(r, meta)
                log(f"  naive {mode} J={J}: {r['datasets_per_s']:.4g}/s acc {r['acc_max']}")
            sys.path.insert(0, os.path.join(ROOT, "tests"))
            from reference import Reference

            yq, sq = data(J, 0, cfg["quad_n"], cfg["seed"])
            groups = list(range(J)) if J <= 8 else check_groups(yq[0], sq[0])
            for r in peers.quad_rows(yq, sq, LEVELS, groups, Reference):
                _emit(r, meta)
                log(f"  quad {r['mode']} J={J}: {r['datasets_per_s']:.4g}/s")
            nn = min(cfg["nuts_n"], max(2, (8 * cfg["nuts_n"]) // J))
            yn, sn = data(J, 0, nn, cfg["seed"])
            chains, warmup, samples = cfg["nuts"]
            r = peers.nuts_row(
                yn.astype(dtype),
                sn.astype(dtype),
                LEVELS,
                "full",
                lambda e, tau_q, refs=refs: accuracy(e, refs, LEVELS, tau_q),
                chains=chains,
                warmup=warmup,
                samples=samples,
            )
            _emit(r, meta)
            log(
                f"  nuts J={J}: {r.get('datasets_per_s')} /s acc {r.get('acc_max')} "
                f"{r.get('note', '')}"
            )
    if cfg["peers"] and args.peers_here:
        _emit(peers.bayesmeta_row(), meta)
    if not args.no_limit:
        _emit(limit_rows(cfg, dtype, measured, log), meta)
    return 0


# --------------------------------------------------------------------------- parent
TABLE_COLUMNS = [
    "kind",
    "dtype",
    "mode",
    "J",
    "B",
    "datasets_per_s",
    "compile_s",
    "peak_rss_mb",
    "acc_max",
    "acc_false",
    "status",
]


def run(args) -> int:
    cfg = config(args)
    meta = history.run_metadata(args.preset)
    out = args.file or history.results_path(args.device_kind)
    skip_file = None
    if args.resume and os.path.exists(out):
        done = [
            r
            for r in history.load(out)
            if r.get("commit") == meta["commit"]
            and r.get("preset") == args.preset
            and r.get("status") == "ok"
        ]
        skip_file = out + ".skip.tmp"
        with open(skip_file, "w") as fh:
            json.dump(sorted({_key(r) for r in done}), fh)
    rows = []
    for k, prec in enumerate(cfg["precisions"]):
        env = dict(
            os.environ,
            JAX_ENABLE_X64="1" if prec == "64" else "0",
            PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        cmd = [sys.executable, os.path.abspath(__file__), "_worker", "--meta", json.dumps(meta)]
        cmd += _forward(args)
        if k == 0:
            cmd.append("--peers-here")
        if skip_file:
            cmd += ["--skip-file", skip_file]
        print(f"[suite] float{prec}: {' '.join(cmd[2:4])} ...", file=sys.stderr, flush=True)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for line in proc.stdout:
            if line.startswith("ROW "):
                row = json.loads(line[4:])
                rows.append(row)
                if not args.no_record:
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    with open(out, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
            else:
                sys.stderr.write(line)
        if proc.wait() != 0:
            print(f"[suite] worker float{prec} failed (exit {proc.returncode})", file=sys.stderr)
            return proc.returncode
    if skip_file:
        os.remove(skip_file)
    print(history.format_table([r for r in rows if r.get("kind") != "limit"], TABLE_COLUMNS))
    for r in rows:
        if r.get("kind") == "limit":
            print(json.dumps(r, indent=1, default=float))
    if not args.no_record:
        print(f"[suite] appended {len(rows)} rows to {out}", file=sys.stderr)
    return 0


def _forward(args) -> list:
    out = ["--preset", args.preset, "--max-b", str(args.max_b), "--seed", str(args.seed)]
    if args.B:
        out += ["--B", *map(str, args.B)]
    if args.J:
        out += ["--J", *map(str, args.J)]
    if args.modes:
        out += ["--modes", *args.modes]
    for flag in ("all", "no_peers", "no_limit"):
        if getattr(args, flag):
            out.append("--" + flag.replace("_", "-"))
    return out


def cmd_compare(args) -> int:
    path = args.file or history.results_path(args.device_kind)
    table, flagged = history.compare(history.load(path), args.run)
    if not table:
        print(f"nothing to compare in {path} (needs two runs with common settings)")
        return 0
    print(
        history.format_table(
            table,
            [
                "kind",
                "dtype",
                "mode",
                "J",
                "B",
                "prev_commit",
                "prev_per_s",
                "commit",
                "per_s",
                "ratio",
                "acc_prev",
                "acc",
                "flag",
            ],
        )
    )
    print(f"{flagged} regression(s) beyond 10% (or accuracy loss)" if flagged else "no regression")
    return 1 if flagged else 0


def cmd_plot(args) -> int:
    path = args.file or history.results_path(args.device_kind)
    out_dir = args.out or os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    for p in history.plot(history.load(path), out_dir, stem):
        print(p)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="suite.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Commands: run (default), compare, plot. See benchmarks/README.md.",
    )
    p.add_argument(
        "command", nargs="?", default="run", choices=["run", "compare", "plot", "_worker"]
    )
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    p.add_argument("--precision", default="both", choices=["32", "64", "both"])
    p.add_argument("--B", nargs="+", help="override the preset's B values (e.g. 1e5 1e7)")
    p.add_argument("--J", nargs="+", help="override the preset's J values")
    p.add_argument("--modes", nargs="+", choices=["moments", "full"])
    p.add_argument(
        "--max-b",
        type=lambda v: int(float(v)),
        default=10**6,
        help="largest B to run (default 1e6; up to 1e7 works, chunked)",
    )
    p.add_argument("--all", action="store_true", help="B >= 1e6 for every J (default J <= 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--no-limit", action="store_true", help="skip the limit analysis")
    p.add_argument("--no-record", action="store_true", help="do not append to results/")
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip settings this commit and preset already have in the file",
    )
    p.add_argument("--file", help="results file (default results/<machine>.jsonl)")
    p.add_argument("--run", help="compare: the run_id to check (default the last)")
    p.add_argument("--out", help="plot: output folder (default next to the file)")
    p.add_argument(
        "--device-kind",
        default="cpu",
        help="accelerator name in the default results file name (e.g. nvidia-h200)",
    )
    # worker-only
    p.add_argument("--meta", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--skip-file", help=argparse.SUPPRESS)
    p.add_argument("--peers-here", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.command == "compare":
        return cmd_compare(args)
    if args.command == "plot":
        return cmd_plot(args)
    if args.command == "_worker":
        return worker(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
