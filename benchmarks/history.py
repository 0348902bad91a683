"""Result files: machine names, run metadata, the regression check and the plots.

Every run appends JSON lines to ``benchmarks/results/<machine>.jsonl``; one line per
measured row, each carrying the run's metadata (``run_id``, ``commit``, ``date``, ``jax``,
``device``, ``device_kind``, ``cpu``, ``cores``, ``preset``). Lines written by the older
``bench_fit.py`` (``"benchmark": "fit_default_summaries"``) are read as hierjax rows
(full summaries, end-to-end datasets/s) so the history keeps them.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import subprocess

__all__ = [
    "RESULTS",
    "commit",
    "compare",
    "cpu_model",
    "format_table",
    "load",
    "machine_name",
    "plot",
    "results_path",
    "run_metadata",
    "settings_key",
]

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
#: throughput ratio (new / previous) below which a row is a regression
REGRESSION = 0.9


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.node() or "unknown"


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.dirname(RESULTS)),
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!benchmarks/results",
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=os.path.dirname(os.path.dirname(RESULTS)),
        ).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_name(device_kind: str = "cpu") -> str:
    """``<cores>core-<first words of the CPU model>[-<accelerator>]`` (the name the older
    ``bench_fit.py`` used, so its results file continues)."""
    words = cpu_model().lower().replace("(r)", "").replace("(tm)", "").split()[:4]
    name = f"{os.cpu_count()}core-" + "-".join(words)
    if device_kind and device_kind.lower() != "cpu":
        name += "-" + device_kind.lower()
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-")


def results_path(device_kind: str = "cpu") -> str:
    return os.path.join(RESULTS, machine_name(device_kind) + ".jsonl")


def run_metadata(preset: str) -> dict:
    """Metadata shared by every row of one run (no JAX import: the workers add devices)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "run_id": now.strftime("%Y%m%dT%H%M%S"),
        "date": now.isoformat(timespec="seconds"),
        "commit": commit(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "preset": preset,
    }


def _normalise(rec: dict) -> dict:
    if rec.get("benchmark") == "fit_default_summaries":  # bench_fit.py (legacy) line
        return dict(
            rec,
            run_id=rec.get("date"),
            kind="hierjax",
            mode="full",
            B=rec.get("datasets"),
            J=rec.get("groups"),
            datasets_per_s=rec.get("end_to_end_datasets_per_s"),
            compile_s=rec.get("first_call_s"),
            device_kind="cpu",
            preset="bench_fit",
            status="ok",
        )
    return rec


def load(path: str) -> list:
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line:
                rows.append(_normalise(json.loads(line)))
    return rows


def settings_key(r: dict) -> tuple:
    """What must match for two rows to be compared."""
    return (
        r.get("kind"),
        r.get("dtype"),
        r.get("mode"),
        r.get("B"),
        r.get("J"),
        str(r.get("device_kind", "cpu")).lower(),
    )


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v == 0:
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-2:
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(v)


def format_table(rows: list, columns: list) -> str:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(x[i]) for x in cells]) for i, c in enumerate(columns)]
    out = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    out += ["| " + " | ".join(x.ljust(w) for x, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(out)


def _goal(dtype) -> float:
    return 1e-8 if dtype == "float64" else 1e-4


def compare(rows: list, run_id: str | None = None):
    """Each row of run ``run_id`` (default: the last run in the file) against the most
    recent earlier row with the same settings.

    Flags a throughput drop of more than 10 % (``new / old < 0.9``), and an accuracy loss
    (error over the precision's goal where it was within it, or 10x worse).

    Returns:
        ``(table_rows, n_flagged)``.
    """
    measured = [r for r in rows if r.get("datasets_per_s") and not r.get("quoted")]
    if not measured:
        return [], 0
    run_id = run_id or measured[-1]["run_id"]
    latest = [r for r in measured if r["run_id"] == run_id]
    table, flagged = [], 0
    for r in latest:
        key = settings_key(r)
        prev = [
            p
            for p in measured
            if p["run_id"] != run_id and settings_key(p) == key and p["run_id"] < run_id
        ]
        if not prev:
            continue
        p = prev[-1]
        ratio = r["datasets_per_s"] / p["datasets_per_s"]
        flags = []
        if ratio < REGRESSION:
            flags.append(f"throughput -{100 * (1 - ratio):.0f}%")
        a_new, a_old = r.get("acc_max"), p.get("acc_max")
        if a_new is not None and a_old is not None and r.get("kind") == "hierjax":
            goal = _goal(r.get("dtype"))
            if (a_new > goal >= a_old) or (a_new > 10 * a_old and a_new > 1e-3 * goal):
                flags.append("accuracy")
        flagged += bool(flags)
        table.append(
            {
                "kind": r.get("kind"),
                "dtype": r.get("dtype"),
                "mode": r.get("mode"),
                "B": r.get("B"),
                "J": r.get("J"),
                "prev_commit": p.get("commit"),
                "prev_per_s": p["datasets_per_s"],
                "commit": r.get("commit"),
                "per_s": r["datasets_per_s"],
                "ratio": ratio,
                "acc_prev": a_old,
                "acc": a_new,
                "flag": ",".join(flags) or "ok",
            }
        )
    return table, flagged


# --------------------------------------------------------------------------- plots
_STYLE = {
    "hierjax": ("C0", "o"),
    "nuts": ("C3", "s"),
    "quad": ("C2", "^"),
    "naive_grid": ("C1", "D"),
    "bayesmeta": ("0.4", "x"),
}


def _label(r):
    if r["kind"] == "hierjax":
        return f"hierjax {r['dtype']} {r['mode']}"
    if r["kind"] == "bayesmeta":
        return "bayesmeta (quoted)"
    return f"{r['kind']} {r['mode']}"


def _done(plt, fig, figs, keep):
    if keep:
        figs.append(fig)
    else:
        plt.close(fig)


def plot(rows: list, out_dir: str, stem: str, keep: bool = False):
    """Scaling (datasets/s vs B and vs J, latest commit) and history (over commits) PNGs.

    Returns the written paths, or ``(paths, figures)`` with ``keep`` (figures left open,
    for tests that read the plotted data back).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r.get("datasets_per_s") and r.get("status", "ok") == "ok"]
    suite_rows = [r for r in measured if r.get("preset") != "bench_fit"]
    paths, figs = [], []
    if suite_rows:
        # the newest row of each setting measured at the last commit (a run may be split
        # over several invocations, e.g. one per precision)
        last_commit = suite_rows[-1].get("commit")
        newest = {}
        for r in suite_rows:
            if r.get("commit") == last_commit or r.get("quoted"):
                newest[settings_key(r)] = r
        latest = list(newest.values())
        meta = suite_rows[-1]
        title_meta = (
            f"{meta.get('device_kind', 'cpu')}, {meta.get('cores')} cores, "
            f"commit {meta.get('commit')}, {meta.get('date', '')[:10]}"
        )
        quoted = [r for r in latest if r.get("quoted")]

        # throughput against B, one panel per J
        Js = sorted({r["J"] for r in latest if r["kind"] == "hierjax"})
        if Js:
            fig, axes = plt.subplots(
                1, len(Js), figsize=(4.2 * len(Js) + 1.5, 4.2), squeeze=False, sharey=True
            )
            for ax, J in zip(axes[0], Js):
                series = {}
                for r in latest:
                    if r["J"] == J and not r.get("quoted"):
                        series.setdefault(_label(r), []).append(r)
                for lab, rs in sorted(series.items()):
                    rs = sorted(rs, key=lambda r: r["B"])
                    kind = rs[0]["kind"]
                    col, mk = _STYLE.get(kind, ("k", "."))
                    ls = "-" if rs[0].get("mode") == "full" else "--"
                    if kind == "hierjax" and rs[0].get("dtype") == "float32":
                        mk = "v"
                    ax.plot(
                        [r["B"] for r in rs],
                        [r["datasets_per_s"] for r in rs],
                        marker=mk,
                        color=col,
                        ls=ls,
                        label=lab,
                    )
                for r in quoted:
                    ax.axhline(
                        r["datasets_per_s"],
                        color="0.4",
                        ls=":",
                        lw=1,
                        label="bayesmeta 1.37/s (quoted, not measured here)",
                    )
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_title(f"J = {J}")
                ax.set_xlabel("B (datasets in the batch)")
                ax.grid(True, which="major", alpha=0.3)
            axes[0][0].set_ylabel("datasets / s (after compile)")
            h, lab = [], []
            for ax in axes[0]:
                for hh, ll in zip(*ax.get_legend_handles_labels()):
                    if ll not in lab:
                        h.append(hh)
                        lab.append(ll)
            fig.legend(
                h, lab, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False
            )
            fig.suptitle(f"Throughput against batch size ({title_meta})", fontsize=10)
            fig.tight_layout()
            p = os.path.join(out_dir, f"{stem}-scaling-B.png")
            fig.savefig(p, dpi=110, bbox_inches="tight")
            _done(plt, fig, figs, keep)
            paths.append(p)

        # throughput against J at the largest B per series
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        series = {}
        for r in latest:
            if not r.get("quoted"):
                series.setdefault(_label(r), []).append(r)
        for lab, rs in sorted(series.items()):
            best = {}
            for r in rs:
                if r["J"] not in best or r["B"] > best[r["J"]]["B"]:
                    best[r["J"]] = r
            rs = [best[J] for J in sorted(best)]
            kind = rs[0]["kind"]
            col, mk = _STYLE.get(kind, ("k", "."))
            ls = "-" if rs[0].get("mode") == "full" else "--"
            if kind == "hierjax" and rs[0].get("dtype") == "float32":
                mk = "v"
            ax.plot(
                [r["J"] for r in rs],
                [r["datasets_per_s"] for r in rs],
                marker=mk,
                color=col,
                ls=ls,
                label=lab,
            )
        for r in quoted:
            ax.plot(
                [r["J"]],
                [r["datasets_per_s"]],
                "x",
                color="0.3",
                ms=9,
                label="bayesmeta (quoted, not measured here)",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("J (groups per dataset)")
        ax.set_ylabel("datasets / s (largest B measured)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        ax.set_title(f"Throughput against J ({title_meta})", fontsize=10)
        fig.tight_layout()
        p = os.path.join(out_dir, f"{stem}-scaling-J.png")
        fig.savefig(p, dpi=110, bbox_inches="tight")
        _done(plt, fig, figs, keep)
        paths.append(p)

    # history: hierjax at J = 8 per (dtype, mode, B), over runs in file order
    hist = [r for r in measured if r["kind"] == "hierjax" and r.get("J") == 8]
    if hist:
        # one x position per commit (a run split per precision shares its commit)
        hist = [dict(r, run_id=r.get("commit", r["run_id"])) for r in hist]
        runs = []
        for r in hist:
            if r["run_id"] not in runs:
                runs.append(r["run_id"])
        label_of = {}
        for r in hist:
            label_of.setdefault(
                r["run_id"], f"{r.get('commit', '?')}\n{str(r.get('date', ''))[5:10]}"
            )
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(runs) + 3), 4.5))
        series = {}
        for r in hist:
            series.setdefault((r["dtype"], r["mode"], r["B"]), {})[r["run_id"]] = r
        for (dt, mode, B), by_run in sorted(series.items()):
            xs = [i for i, rid in enumerate(runs) if rid in by_run]
            ax.plot(
                xs,
                [by_run[runs[i]]["datasets_per_s"] for i in xs],
                marker="v" if dt == "float32" else "o",
                ls="-" if mode == "full" else "--",
                label=f"{dt} {mode} B={B:g}",
            )
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels([label_of[r] for r in runs], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("datasets / s (J = 8)")
        ax.set_xlabel("commit (date)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        ax.set_title("hierjax throughput history (J = 8)", fontsize=10)
        fig.tight_layout()
        p = os.path.join(out_dir, f"{stem}-history.png")
        fig.savefig(p, dpi=110, bbox_inches="tight")
        _done(plt, fig, figs, keep)
        paths.append(p)
    return (paths, figs) if keep else paths
