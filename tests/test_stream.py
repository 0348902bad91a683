"""Streaming jobs (:mod:`hierjax.io.stream`), the tidy table (:mod:`hierjax.io.tidy`) and the
``hierjax fit`` options that come with them.

Compiled shapes: every streamed fit runs in chunks of ``C = 2`` eight-group datasets (the
shape of ``tests/test_cli.py``'s two-dataset runs) in the suite's precision; the in-memory
reference is the session's simulated batch (``conftest.sim_fit``). Only the kill -9 test
starts other processes.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import BATCH_RTOL, DEFAULT_DTYPE, X64, read_table

import hierjax
import hierjax.io.cli
from hierjax.io.stream import fit_stream, read_chunks

C = 2  # datasets per chunk in every streamed test
N = 19  # datasets streamed: nine whole chunks and a partial one


def run(argv, capsys=None):
    """``hierjax.io.cli.main`` in-process in the suite's precision: ``(code, out, err)``."""
    argv = [str(a) for a in argv]
    if argv[:1] == ["fit"] and not X64 and "--float32" not in argv:
        argv.append("--float32")
    try:
        code = hierjax.io.cli.main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    if capsys is None:
        return code, "", ""
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def write_long(path, y, sigma, names=None, labels=None):
    """A long CSV of ``[B, J]`` arrays (values as ``repr``: exact)."""
    with open(path, "w") as fh:
        fh.write("dataset,y,sigma" + (",group" if labels else "") + "\n")
        for b in range(y.shape[0]):
            for j in range(y.shape[1]):
                g = f",{labels[j]}" if labels else ""
                name = names[b] if names else f"d{b}"
                fh.write(f"{name},{float(y[b, j])!r},{float(sigma[b, j])!r}{g}\n")
    return path


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory, sim):
    return write_long(tmp_path_factory.mktemp("stream") / "data.csv", sim.y[:N], sim.sigma[:N])


@pytest.fixture(scope="module")
def streamed(data_csv, tmp_path_factory):
    """The CLI's CSV output for :func:`data_csv` in chunks of ``C``, ``(path, bytes)``."""
    out = tmp_path_factory.mktemp("streamed") / "out.csv"
    code, _, _ = run(["fit", data_csv, "--out", out, "--chunk-size", C, "--quiet"])
    assert code == 0
    return out, out.read_bytes()


def read_frame(path):
    import pandas as pd

    return pd.read_csv(
        path, keep_default_na=False, na_values=["nan", ""], dtype={"group": str, "dataset": str}
    )


def strings(col):
    """A string column as a list, missing values as ''."""
    return ["" if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in col]


# --------------------------------------------------------------------------------------
# the tidy table
# --------------------------------------------------------------------------------------


def test_to_pandas_round_trips_the_csv(sim_fit, tmp_path):
    from hierjax.io.tidy import write_csv

    df = sim_fit.to_pandas()
    path = tmp_path / "t.csv"
    write_csv(sim_fit.to_arrow(), str(path))
    back = read_frame(path)
    assert list(back.columns) == list(df.columns)
    assert len(df) == sim_fit.mu.mean.shape[0] * (3 + 8)
    for c in df.columns:
        if df[c].dtype.kind == "f":
            assert df[c].dtype == DEFAULT_DTYPE, c
            # the shortest decimal that reads back to the same value of the result's dtype
            got = back[c].to_numpy(np.float64).astype(DEFAULT_DTYPE)
            np.testing.assert_array_equal(got, df[c].to_numpy(), err_msg=c)
        else:
            assert strings(back[c]) == strings(df[c]), c


def test_table_is_the_fit(sim_fit):
    """Every cell of the tidy table is the Fit's own number, rows in documented order."""
    t = sim_fit.to_arrow()
    B = sim_fit.mu.mean.shape[0]
    assert t.column_names == [
        "dataset",
        "parameter",
        "group",
        "mean",
        "sd",
        "q0.025",
        "q0.25",
        "q0.5",
        "q0.75",
        "q0.975",
        "p_gt0",
        "status",
        "note",
    ]
    par = np.array(t["parameter"].to_pylist()).reshape(B, 11)
    assert (par[:, 0] == "mu").all() and (par[:, 1] == "tau").all()
    assert (par[:, 2:10] == "theta").all() and (par[:, 10] == "theta_new").all()
    grp = np.array([g or "" for g in t["group"].to_pylist()]).reshape(B, 11)
    assert (grp[:, 2:10] == [str(j) for j in range(1, 9)]).all() and (grp[:, :2] == "").all()
    mean = t["mean"].to_numpy().reshape(B, 11)
    np.testing.assert_array_equal(mean[:, 0], sim_fit.mu.mean)
    np.testing.assert_array_equal(mean[:, 2:10], sim_fit.theta.mean)
    q = t["q0.975"].to_numpy().reshape(B, 11)
    np.testing.assert_array_equal(q[:, 1], sim_fit.tau.quantiles[:, 4])
    np.testing.assert_array_equal(q[:, 10], sim_fit.theta_new.quantiles[:, 4])
    sub = sim_fit.to_arrow(params=["theta_new", "mu"])  # table order, whatever asked
    assert sub["parameter"].to_pylist()[:4] == ["mu", "theta_new", "mu", "theta_new"]


# --------------------------------------------------------------------------------------
# chunked equals unchunked; no retrace for the last chunk
# --------------------------------------------------------------------------------------


def test_chunked_equals_unchunked(streamed, sim, sim_fit):
    """Chunks of C = 2 (the last one padded) against in-memory fits: bit for bit against
    ``hierjax.fit`` on the same blocks of C datasets, and within the batch round-off of
    conftest.BATCH_RTOL against one fit of all 20 (a batch's block shape moves results by
    round-off in the engine, see conftest)."""
    out, _ = streamed
    got = read_frame(out)
    blocks = []
    for i in range(0, N, C):
        idx = np.minimum(np.arange(i, i + C), N - 1)[: min(C, N - i)]
        idx = np.concatenate([idx, np.full(C - idx.size, idx[0])])  # the stream's padding
        f = hierjax.fit(sim.y[idx], sim.sigma[idx], dtype=DEFAULT_DTYPE).to_pandas()
        blocks.append(f[f["dataset"].astype(int) < min(C, N - i)])
    import pandas as pd

    same = pd.concat(blocks, ignore_index=True)
    whole = sim_fit.to_pandas()
    whole = whole[whole["dataset"].astype(int) < N].reset_index(drop=True)
    assert list(got["dataset"]) == [f"d{int(d)}" for d in whole["dataset"]]
    for c in ("mean", "sd", "q0.025", "q0.5", "q0.975", "p_gt0"):
        g = got[c].to_numpy().astype(DEFAULT_DTYPE)
        np.testing.assert_array_equal(g, same[c].to_numpy(), err_msg=c)
        w = whole[c].to_numpy()
        scale = np.maximum(np.abs(w), whole["sd"].to_numpy() if c != "sd" else 0)
        assert np.all(np.abs(g - w) <= BATCH_RTOL * scale), c
    assert (got["status"] == whole["status"]).all()


def test_last_partial_chunk_does_not_retrace(sim):
    from hierjax.engine.fitting import fit_standardized

    parts = [(sim.y[i : min(i + C, 5)], sim.sigma[i : min(i + C, 5)]) for i in range(0, 5, C)]
    sizes = []
    fits = []
    for f in fit_stream(iter(parts), dtype=DEFAULT_DTYPE):
        fits.append(f)
        sizes.append(fit_standardized._cache_size())
    assert [len(f.names) for f in fits] == [2, 2, 1]
    assert sizes[-1] == sizes[0], f"jit cache grew over the chunks: {sizes}"


def test_parquet_and_npz_inputs_give_the_same_table(streamed, sim, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, want = streamed
    names = np.repeat([f"d{b}" for b in range(N)], 8)
    pq.write_table(
        pa.table({"dataset": names, "y": sim.y[:N].ravel(), "sigma": sim.sigma[:N].ravel()}),
        tmp_path / "in.parquet",
    )
    np.savez(
        tmp_path / "in.npz",
        y=sim.y[:N],
        sigma=sim.sigma[:N],
        names=np.array([f"d{b}" for b in range(N)]),
    )
    for src in ("in.parquet", "in.npz"):
        out = tmp_path / f"{src}.csv"
        assert run(["fit", tmp_path / src, "--out", out, "--chunk-size", C, "--quiet"])[0] == 0
        assert out.read_bytes() == want, src
    # Parquet out: the same typed table, with the run recorded in its metadata
    out = tmp_path / "out.parquet"
    assert run(["fit", tmp_path / "in.parquet", "--out", out, "--chunk-size", C])[0] == 0
    t = pq.read_table(out)
    assert t.schema.field("mean").type == pa.from_numpy_dtype(DEFAULT_DTYPE)
    meta = json.loads(t.schema.metadata[b"hierjax"])
    assert meta["precision"] == DEFAULT_DTYPE.name and meta["tau_prior"] == "uniform"
    assert meta["hierjax"] == hierjax.__version__ and "jax" in meta
    back = read_frame(tmp_path / "in.parquet.csv")
    np.testing.assert_array_equal(
        t["mean"].to_numpy(), back["mean"].to_numpy().astype(DEFAULT_DTYPE)
    )


def test_stdout_output(streamed, data_csv, capsysbinary):
    _, want = streamed
    code = hierjax.io.cli.main(
        [str(a) for a in ["fit", data_csv, "--out", "-", "--chunk-size", C]]
        + ([] if X64 else ["--float32"])
    )
    cap = capsysbinary.readouterr()
    assert code == 0, cap.err
    assert cap.out == want


# --------------------------------------------------------------------------------------
# safe output
# --------------------------------------------------------------------------------------


def test_output_checks(data_csv, tmp_path, capsys):
    cases = [
        (tmp_path / "nodir" / "o.csv", "does not exist"),
        (tmp_path, "is a directory"),
        (tmp_path / "o.txt", "unknown extension"),
        (data_csv, "input file"),
    ]
    for out, frag in cases:
        code, _, err = run(["fit", data_csv, "--out", out], capsys)
        assert code == 2 and frag in err and len(err.strip().splitlines()) == 1, (out, err)
    before = data_csv.read_bytes()
    code, _, err = run(["fit", data_csv, "--out", data_csv, "--force"], capsys)
    assert code == 2 and "input" in err
    assert data_csv.read_bytes() == before
    existing = tmp_path / "exists.csv"
    existing.write_text("keep me\n")
    code, _, err = run(["fit", data_csv, "--out", existing], capsys)
    assert code == 2 and "--force" in err and existing.read_text() == "keep me\n"


def test_force_replaces_and_permissions_follow_umask(streamed, data_csv, tmp_path):
    _, want = streamed
    out = tmp_path / "o.csv"
    out.write_text("old\n")
    old = os.umask(0o027)
    try:
        code, _, _ = run(["fit", data_csv, "--out", out, "--force", "--chunk-size", C])
    finally:
        os.umask(old)
    assert code == 0 and out.read_bytes() == want
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(str(out) + ".json").st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.csv", "o.csv.json"]


def test_rows_of_a_dataset_must_be_contiguous(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("dataset,y,sigma\na,1,1\na,2,1\na,0,2\nb,1,1\nb,2,1\nb,3,1\na,3,1\n")
    code, _, err = run(["fit", path, "--out", tmp_path / "o.csv"], capsys)
    assert code == 2
    assert "'a'" in err and "line 2" in err and "line 8" in err and "contiguous" in err
    # also across chunks (checked with the names already streamed)
    code, _, err = run(["fit", path, "--out", tmp_path / "o.csv", "--chunk-size", "1"], capsys)
    assert code == 2 and "line 2" in err and "line 8" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]


def test_a_hash_collision_is_not_a_repeat(tmp_path, monkeypatch):
    # every name hashes alike: only the names themselves may decide, within and across chunks
    from hierjax.io import stream

    monkeypatch.setattr(stream._Seen, "hashes", staticmethod(lambda n: np.zeros(len(n), np.uint64)))
    path = tmp_path / "d.csv"
    path.write_text("dataset,y,sigma\na,1,1\na,2,1\nb,1,1\nb,2,1\nc,0,1\nc,3,1\n")
    for size in (1, 3):
        chunks = list(stream.read_chunks(path, size))
        assert [n for c in chunks for n in c.names.to_pylist()] == ["a", "b", "c"]
    path.write_text("dataset,y,sigma\na,1,1\nb,1,1\nc,2,1\na,2,1\n")
    for size in (1, 3):
        with pytest.raises(hierjax.InputError, match="'a' has rows at line 2 and again here"):
            list(stream.read_chunks(path, size))


# --------------------------------------------------------------------------------------
# --skip-invalid: every per-dataset defect
# --------------------------------------------------------------------------------------

DEFECTS = [  # (dataset, (row, column) -> cell, fragment of the note)
    ("x_text", {(1, "y"): "abc"}, "column 'y' is not a number: 'abc'"),
    ("x_nan", {(2, "y"): "nan"}, "y[3] is nan"),
    ("x_inf", {(0, "sigma"): "inf"}, "sigma[1] is inf"),
    ("x_zero", {(3, "sigma"): "0"}, "sigma[4] is 0.0 (must be > 0)"),
    ("x_negative", {(3, "sigma"): "-1"}, "sigma[4] is -1.0"),
    ("x_huge", {(1, "y"): "1e308"}, "y[2] is 1e+308"),
    ("x_tiny", {(0, "sigma"): "1e-320"}, "sigma[1] is 1e-320"),
]


@pytest.fixture(scope="module")
def mixed_csv(tmp_path_factory, sim):
    """Valid datasets d0, d1 around one dataset per defect, plus one with two groups."""
    rows = ["dataset,y,sigma"]

    def add(name, y, s, cells=None):
        for j in range(len(y)):
            cell = {"y": repr(float(y[j])), "sigma": repr(float(s[j]))}
            for (r, col), v in (cells or {}).items():
                if r == j:
                    cell[col] = v
            rows.append(f"{name},{cell['y']},{cell['sigma']}")

    add("d0", sim.y[0], sim.sigma[0])
    for name, cells, _ in DEFECTS:
        add(name, sim.y[2], sim.sigma[2], cells)
    add("few", sim.y[3][:2], sim.sigma[3][:2])
    add("d1", sim.y[1], sim.sigma[1])
    path = tmp_path_factory.mktemp("mixed") / "mixed.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_skip_invalid_marks_every_defect(mixed_csv, streamed, tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "o.csv"
    code, _, err = run(
        ["fit", mixed_csv, "--out", out, "--skip-invalid", "--chunk-size", C], capsys
    )
    assert code == 0, err
    df = read_frame(out)
    for name, _, frag in DEFECTS + [("few", None, "has 2 group(s)")]:
        rows = df[df["dataset"] == name]
        assert len(rows) > 0, name
        assert (rows["status"] == "invalid").all(), (name, rows["status"].tolist())
        assert rows["note"].str.contains(frag, regex=False).all(), (name, rows["note"].iloc[0])
        assert rows["note"].str.contains("line ").all(), name
        assert rows[["mean", "sd", "p_gt0"]].isna().all().all(), name
        assert f"'{name}'" in err
    # the valid datasets: exactly the clean run's rows, and never nan with status ok
    ref = read_frame(streamed[0])
    for name in ("d0", "d1"):
        got = df[df["dataset"] == name].reset_index(drop=True)
        want = ref[ref["dataset"] == name].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_dtype=False, obj=name)
    ok = df[df["status"] == "ok"]
    assert not ok[["mean", "sd"]].isna().any().any()


@pytest.mark.parametrize("name,cells,frag", DEFECTS, ids=[d[0] for d in DEFECTS])
def test_defect_without_skip_invalid_is_one_line(name, cells, frag, sim, tmp_path, capsys):
    lines = ["dataset,y,sigma"]
    for j in range(8):
        cell = {"y": repr(float(sim.y[2][j])), "sigma": repr(float(sim.sigma[2][j]))}
        for (r, col), v in cells.items():
            if r == j:
                cell[col] = v
        lines.append(f"{name},{cell['y']},{cell['sigma']}")
    path = tmp_path / "one.csv"
    path.write_text("\n".join(lines) + "\n")
    code, _, err = run(["fit", path, "--out", tmp_path / "o.csv"], capsys)
    assert code == 2
    msgs = [m for m in err.splitlines() if m.strip()]
    assert len(msgs) == 1 and frag in msgs[0] and f"'{name}'" in msgs[0], err
    row = 2 + next(iter(cells))[0]
    assert f"line {row}" in msgs[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv"]


# --------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------


def test_moments_only_and_params(data_csv, streamed, tmp_path):
    out = tmp_path / "m.csv"
    assert (
        run(
            [
                "fit",
                data_csv,
                "--out",
                out,
                "--chunk-size",
                C,
                "--moments-only",
                "--params",
                "mu,theta_new",
            ]
        )[0]
        == 0
    )
    header, rows = read_table(out)
    assert header == ["dataset", "parameter", "group", "mean", "sd", "p_gt0", "status", "note"]
    assert [r[1] for r in rows[:4]] == ["mu", "theta_new", "mu", "theta_new"]
    assert len(rows) == 2 * N
    # the moments are the full run's (a moments-only fit is the same integral)
    ref = read_frame(streamed[0])
    ref = ref[ref["parameter"].isin(["mu", "theta_new"])].reset_index(drop=True)
    got = read_frame(out)
    goal = 1e-8 if X64 else 1e-4  # the accuracy goal, in posterior sds (README)
    assert np.all(np.abs(got["mean"] - ref["mean"]) <= goal * ref["sd"])


def test_no_summary_is_computed_unless_asked(data_csv, streamed, tmp_path):
    # the CLI always hands run_job its summary function; it must run only for --summary
    from hierjax.io.stream import run_job

    def refuse(*args, **kwargs):
        raise AssertionError("summary computed without --summary")

    out = tmp_path / "o.csv"
    run_job(data_csv, out, chunk_size=C, summary_fn=refuse)
    assert out.read_bytes() == streamed[1]


def test_summary_of_a_last_smaller_chunk_compiles_nothing(sim, tmp_path, capsys, monkeypatch):
    """--summary in chunks of C = 2, the last of 1: the summary's posterior runs at C
    datasets every time (the last chunk padded as its fit is), and no hierjax kernel
    compiles for the last chunk (counted over every registered kernel)."""
    import hierjax.io.summary as summary
    from hierjax.engine import cache

    seen, counts = [], []
    posterior, table = hierjax.posterior, summary.summary_table

    def counting_posterior(y, *args, **kwargs):
        seen.append(np.shape(y)[0])
        return posterior(y, *args, **kwargs)

    def counting_table(*args, **kwargs):
        out = table(*args, **kwargs)
        counts.append(sum(size() for size, _ in cache._KERNELS))
        return out

    monkeypatch.setattr(hierjax, "posterior", counting_posterior)
    monkeypatch.setattr(summary, "summary_table", counting_table)
    data = write_long(tmp_path / "d.csv", sim.y[:3], sim.sigma[:3])
    argv = ["fit", data, "--out", tmp_path / "o.csv", "--summary", tmp_path / "s.csv"]
    code, _, err = run([*argv, "--chunk-size", C], capsys)
    assert code == 0, err
    assert seen == [C, C] and counts[1] == counts[0], (seen, counts)


def test_prediction_interval_is_named_in_one_place(capsys):
    """The prediction interval's one description (hierjax.io.summary.PREDICTION) is what
    ``hierjax fit --help`` prints and what the README says; the summary columns it names
    are the summary's, and the printed summary calls it so."""
    from hierjax.io.summary import PREDICTION, SUMMARY_COLUMNS, format_summary

    def words(text):
        return " ".join(text.split())

    code, out, _ = run(["fit", "--help"], capsys)
    assert code == 0 and words(PREDICTION) in words(out)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as fh:
        assert words(PREDICTION) in words(fh.read()), "README: paste summary.PREDICTION"
    pred = [c for c in SUMMARY_COLUMNS if c.startswith("pred_")]
    assert pred == ["pred_lo", "pred_hi", "pred_hdi_lo", "pred_hdi_hi"]
    assert all(c in PREDICTION for c in pred + ["theta_new"])
    row = dict.fromkeys(SUMMARY_COLUMNS, 1.0) | {"bf_tau0": float("nan"), "status": "ok"}
    assert "prediction interval (a new group's effect, theta_new)" in format_summary(row)


def test_bad_params_and_nodes(data_csv, tmp_path, capsys):
    code, _, err = run(["fit", data_csv, "--params", "mu,sigma"], capsys)
    assert code == 2 and "--params" in err
    code, _, err = run(["fit", data_csv, "--nodes", "0"], capsys)
    assert code == 2 and "positive" in err


def test_help_and_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and hierjax.__version__ in out and "jax" in out
    code, out, _ = run(["fit", "--help"], capsys)
    assert code == 0
    from hierjax.status import STATUS_DOC

    assert set(STATUS_DOC) == set(hierjax.STATUS)
    for flag in list(hierjax.STATUS) + [
        "examples:",
        "exit codes:",
        "theta_new",
        "--float32",
        "--resume",
        "--skip-invalid",
    ]:
        assert flag in out, flag
    assert out.count("hierjax fit ") >= 3


def test_float64_is_the_default(data_csv, tmp_path):
    out = tmp_path / "o.parquet"
    import pyarrow.parquet as pq

    code = hierjax.io.cli.main(
        [
            "fit",
            str(data_csv),
            "--out",
            str(out),
            "--chunk-size",
            str(C),
            "--moments-only",
            "--params",
            "mu",
        ]
    )
    assert code == 0
    assert pq.read_table(out).schema.field("mean").type.to_pandas_dtype() == np.float64
    import jax

    assert bool(jax.config.jax_enable_x64) == X64  # the caller's setting is kept


# --------------------------------------------------------------------------------------
# kill -9, then --resume
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jaxcache(tmp_path_factory):
    """One compilation cache for every subprocess here: the chunk shapes are the same, so
    only the first one compiles."""
    return tmp_path_factory.mktemp("jaxcache")


def _cli(cache):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        HIERJAX_CACHE_DIR=str(cache),
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
    )
    return [sys.executable, "-m", "hierjax.io.cli"], env


def _kill_when(proc, cond, timeout=600):
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            return False
        if time.time() - t0 > timeout:
            break
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def test_kill_9_then_resume_is_byte_identical(sim, tmp_path, jaxcache):
    """Killed as soon as its first part is recorded (a part boundary), then during the
    next part; ``--resume`` finishes with the bytes of an uninterrupted run, no stray file."""
    B = 16
    data = write_long(
        tmp_path / "in.csv",
        sim.y[np.arange(B) % 20],
        sim.sigma[np.arange(B) % 20],
        names=[f"s{b}" for b in range(B)],
    )
    cmd, env = _cli(jaxcache)
    prec = [] if X64 else ["--float32"]
    ref = tmp_path / "ref.csv"
    args = ["fit", str(data), "--chunk-size", str(C), "--quiet"] + prec
    assert hierjax.io.cli.main(args + ["--out", str(ref)]) == 0
    out = tmp_path / "out.csv"
    work = tmp_path / ".out.csv.hierjax-parts"

    def parts_done(n):
        def cond():
            try:
                return len(json.loads((work / "manifest.json").read_text())["done"]) >= n
            except (OSError, ValueError):
                return False

        return cond

    p = subprocess.Popen(cmd + args + ["--out", str(out)], env=env, stderr=subprocess.PIPE)
    killed = _kill_when(p, parts_done(1))
    assert killed, p.stderr.read().decode()
    assert not out.exists()
    p = subprocess.Popen(
        cmd + args + ["--out", str(out), "--resume"], env=env, stderr=subprocess.PIPE
    )
    done_before = len(json.loads((work / "manifest.json").read_text())["done"])
    _kill_when(
        p,
        lambda: (
            (work / f"part-{done_before:08d}.csv.tmp").exists() or parts_done(done_before + 1)()
        ),
    )
    r = subprocess.run(
        cmd + args + ["--out", str(out), "--resume"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == ref.read_bytes()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "jaxcache")
    assert left == ["in.csv", "out.csv", "out.csv.json", "ref.csv", "ref.csv.json"], left


def test_interrupted_run_needs_resume_or_force(data_csv, tmp_path, capsys):
    out = tmp_path / "o.csv"
    work = tmp_path / ".o.csv.hierjax-parts"
    work.mkdir()
    (work / "manifest.json").write_text("{}")
    code, _, err = run(["fit", data_csv, "--out", out], capsys)
    assert code == 2 and "--resume" in err and "--force" in err


def test_read_chunks_keeps_datasets_whole(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(
        "dataset,y,sigma,group\n"
        + "".join(f"x{b},{j},1,g{j}\n" for b in range(5) for j in range(b + 3))
    )
    chunks = list(read_chunks(path, 2))
    assert [c.y.shape[0] for c in chunks] == [2, 2, 1]
    assert [c.names.to_pylist() for c in chunks] == [["x0", "x1"], ["x2", "x3"], ["x4"]]
    assert chunks[1].mask.sum(axis=1).tolist() == [5, 6]
    assert chunks[2].labels.to_pylist() == [f"g{j}" for j in range(7)]
    assert chunks[2].line[0, 0] == 2 + 3 + 4 + 5 + 6


# --------------------------------------------------------------------------------------
# --measure: metafor's columns and escalc's conventions
# --------------------------------------------------------------------------------------

#: dat.bcg (REFERENCES.md): tpos, tneg, cpos, cneg
BCG = [
    (4, 119, 11, 128),
    (6, 300, 29, 274),
    (3, 228, 11, 209),
    (62, 13536, 248, 12619),
    (33, 5036, 47, 5761),
    (180, 1361, 372, 1079),
    (8, 2537, 10, 619),
    (505, 87886, 499, 87892),
    (29, 7470, 45, 7232),
    (17, 1699, 65, 1600),
    (186, 50448, 141, 27197),
    (5, 2493, 3, 2338),
    (27, 16886, 29, 17825),
]


def bcg_escalc_rr():
    """metafor's escalc(measure = "RR") of dat.bcg, written out: ``(yi, vi)``."""
    a, b, c, d = (np.array(col, np.float64) for col in zip(*BCG))
    yi = np.log((a / (a + b)) / (c / (c + d)))
    vi = 1 / a - 1 / (a + b) + 1 / c - 1 / (c + d)
    return yi, vi


def test_bcg_measure_rr_gives_escalc_and_the_same_posterior(tmp_path, capsys):
    rows = ["dataset,ai,n1i,ci,n2i,group"] + [
        f"bcg,{a},{a + b},{c},{c + d},trial{i + 1}" for i, (a, b, c, d) in enumerate(BCG)
    ]
    counts = tmp_path / "bcg.csv"
    counts.write_text("\n".join(rows) + "\n")
    yi, vi = bcg_escalc_rr()
    (chunk,) = read_chunks(counts, 4, measure="RR")
    np.testing.assert_allclose(chunk.y[0], yi, rtol=1e-12, atol=0)
    np.testing.assert_allclose(chunk.sigma[0] ** 2, vi, rtol=1e-12, atol=0)
    direct = tmp_path / "direct.csv"
    direct.write_text(
        "dataset,y,sigma,group\n"
        + "".join(
            f"bcg,{float(y)!r},{float(np.sqrt(v))!r},trial{i + 1}\n"
            for i, (y, v) in enumerate(zip(yi, vi))
        )
    )
    opts = ["--quantiles", "0.5", "--quiet"]
    assert run(["fit", counts, "--measure", "rr", "--out", tmp_path / "m.csv"] + opts)[0] == 0
    assert run(["fit", direct, "--out", tmp_path / "d.csv"] + opts)[0] == 0
    m, d = read_frame(tmp_path / "m.csv"), read_frame(tmp_path / "d.csv")
    assert list(m["group"].fillna("")) == list(d["group"].fillna(""))
    rtol = 1e-12 if X64 else 1e-5
    for c in ("mean", "sd", "q0.5", "p_gt0"):
        np.testing.assert_allclose(m[c], d[c], rtol=rtol, atol=rtol * d["sd"].max(), err_msg=c)
    # back-transformed, and labelled so, on the location rows only
    loc = m["parameter"] != "tau"
    np.testing.assert_allclose(m.loc[loc, "exp_q0.5"], np.exp(m.loc[loc, "q0.5"]), rtol=1e-6)
    assert (m.loc[loc, "transform"] == "exp").all() and m.loc[~loc, "transform"].isna().all()
    # E[mu | y], uniform tau and flat mu: -0.7170830790 by quadrature (REFERENCES.md)
    mu = m[m["parameter"] == "mu"].iloc[0]
    assert abs(mu["mean"] - -0.7170830790) <= (1e-8 if X64 else 1e-4) * mu["sd"]


def _effects_of(tmp_path, header, rows, measure, **kw):
    path = tmp_path / f"{measure}.csv"
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    (chunk,) = read_chunks(path, 8, measure=measure, **kw)
    m = chunk.mask[0]
    return chunk.y[0][m], chunk.sigma[0][m] ** 2


def test_measures_against_written_formulas(tmp_path):
    from scipy.special import gammaln

    tables = [(3, 20, 7, 25), (0, 15, 4, 16), (5, 30, 0, 30)]  # (ai, bi, ci, di)
    rows = [("s",) + t for t in tables]
    y, v = _effects_of(tmp_path, "dataset,ai,bi,ci,di", rows, "OR")
    a, b, c, d = (np.array(col, np.float64) for col in zip(*tables))
    zero = (a == 0) | (b == 0) | (c == 0) | (d == 0)  # escalc: add 1/2 to such tables
    a2, b2, c2, d2 = (x + 0.5 * zero for x in (a, b, c, d))
    np.testing.assert_allclose(y, np.log(a2 * d2 / (b2 * c2)), rtol=1e-13)
    np.testing.assert_allclose(v, 1 / a2 + 1 / b2 + 1 / c2 + 1 / d2, rtol=1e-13)
    # ai, n1i, ci, n2i columns; RR; and --no-correction on a table without zeros
    rows = [("s", t[0], t[0] + t[1], t[2], t[2] + t[3]) for t in tables[:1]]
    y, v = _effects_of(tmp_path, "dataset,ai,n1i,ci,n2i", rows, "RR", correction=False)
    np.testing.assert_allclose(y, np.log((3 / 23) / (7 / 32)), rtol=1e-13)
    np.testing.assert_allclose(v, 1 / 3 - 1 / 23 + 1 / 7 - 1 / 32, rtol=1e-13)
    y, v = _effects_of(tmp_path, "dataset,ai,n1i,ci,n2i", rows, "RD")
    p1, p2 = 3 / 23, 7 / 32
    np.testing.assert_allclose(y, p1 - p2, rtol=1e-13)
    np.testing.assert_allclose(v, p1 * (1 - p1) / 23 + p2 * (1 - p2) / 32, rtol=1e-13)
    means = [("s", 10.0, 2.0, 12, 8.5, 2.5, 15), ("s", -1.0, 1.0, 5, 0.5, 1.5, 6)]
    hdr = "dataset,m1i,sd1i,n1i,m2i,sd2i,n2i"
    y, v = _effects_of(tmp_path, hdr, means, "MD")
    mm = np.array([r[1:] for r in means], np.float64)
    np.testing.assert_allclose(y, mm[:, 0] - mm[:, 3], rtol=1e-13)
    np.testing.assert_allclose(v, mm[:, 1] ** 2 / mm[:, 2] + mm[:, 4] ** 2 / mm[:, 5], rtol=1e-13)
    y, v = _effects_of(tmp_path, hdr, means, "SMD")
    n1, n2 = mm[:, 2], mm[:, 5]
    df = n1 + n2 - 2
    sp = np.sqrt(((n1 - 1) * mm[:, 1] ** 2 + (n2 - 1) * mm[:, 4] ** 2) / df)
    cm = np.exp(gammaln(df / 2) - 0.5 * np.log(df / 2) - gammaln((df - 1) / 2))
    g = cm * (mm[:, 0] - mm[:, 3]) / sp
    np.testing.assert_allclose(y, g, rtol=1e-12)
    np.testing.assert_allclose(v, 1 / n1 + 1 / n2 + g**2 / (2 * (n1 + n2)), rtol=1e-12)


def test_measure_needs_its_columns(tmp_path, capsys):
    path = tmp_path / "c.csv"
    path.write_text("dataset,y,sigma\na,1,1\n")
    code, _, err = run(["fit", path, "--measure", "OR"], capsys)
    assert code == 2 and "ai" in err and "--measure OR" in err


# --------------------------------------------------------------------------------------
# --summary: a row per dataset for the meta-analyst
# --------------------------------------------------------------------------------------


def test_summary(data_csv, streamed, tmp_path, capsys):
    from hierjax.io.summary import SUMMARY_COLUMNS

    out, summ = tmp_path / "o.csv", tmp_path / "s.csv"
    code, _, err = run(
        ["fit", data_csv, "--out", out, "--summary", summ, "--chunk-size", C], capsys
    )
    assert code == 0, err
    assert out.read_bytes() == streamed[1]
    s = read_frame(summ)
    assert tuple(s.columns) == SUMMARY_COLUMNS
    assert list(s["dataset"]) == [f"d{b}" for b in range(N)]
    t = read_frame(out)
    mu = t[t["parameter"] == "mu"].reset_index(drop=True)
    new = t[t["parameter"] == "theta_new"].reset_index(drop=True)
    np.testing.assert_array_equal(s["mu_mean"], mu["mean"])
    np.testing.assert_array_equal(s["p_mu_gt0"], mu["p_gt0"])
    # the central 95% prediction interval is theta_new's 2.5% and 97.5% quantiles
    tol = (1e-8 if X64 else 2e-4) * new["sd"]  # each within the accuracy goal
    assert np.all(np.abs(s["pred_lo"] - new["q0.025"]) <= tol)
    assert np.all(np.abs(s["pred_hi"] - new["q0.975"]) <= tol)
    # the shortest interval is no longer than the central one, and I^2 lies in [0, 1)
    assert np.all(s["pred_hdi_hi"] - s["pred_hdi_lo"] <= s["pred_hi"] - s["pred_lo"] + tol)
    assert np.all((s["i2_mean"] >= 0) & (s["i2_mean"] < 1) & (s["i2_median"] >= 0))
    assert s["bf_tau0"].isna().all()  # improper priors: no Bayes factors
    assert (tmp_path / "s.csv.json").exists()
    # i2 rows in the tidy table, after each dataset's tau row; the same I^2 as the summary
    out2 = tmp_path / "i2.csv"
    assert (
        run(["fit", data_csv, "--out", out2, "--params", "tau,i2,theta_new", "--chunk-size", C])[0]
        == 0
    )
    t2 = read_frame(out2)
    assert list(t2["parameter"][:6]) == ["tau", "i2", "theta_new"] * 2
    i2 = t2[t2["parameter"] == "i2"].reset_index(drop=True)
    np.testing.assert_array_equal(i2["mean"], s["i2_mean"])
    np.testing.assert_allclose(i2["q0.5"], s["i2_median"], rtol=1e-12 if X64 else 1e-5)
    assert np.all(np.diff(i2[["q0.025", "q0.5", "q0.975"]].to_numpy(), axis=1) >= 0)


def _bayes_factors_by_quad(y, s, tau_scale, m0, s0):
    """``(BF(tau = 0), BF(mu = 0))`` for a half-normal tau prior and a normal mu prior, by
    scipy alone: ``p(y | tau)`` is the dense normal ``N(m0 1, diag(s^2 + tau^2) + s0^2 1
    1^T)``; ``p(y)`` and ``p(y | mu = 0)`` integrate tau against its prior by quad."""
    from scipy import integrate, stats

    def log_given_tau(tau):
        cov = np.diag(s**2 + tau**2) + s0**2
        return stats.multivariate_normal.logpdf(y, np.full(y.size, m0), cov)

    def log_given_tau_mu0(tau):
        return np.sum(stats.norm.logpdf(y, 0.0, np.sqrt(s**2 + tau**2)))

    def log_integral(f):
        c = max(f(t) for t in np.linspace(0.0, 4.0 * tau_scale, 41))
        val = sum(
            integrate.quad(
                lambda t: stats.halfnorm.pdf(t, scale=tau_scale) * np.exp(f(t) - c),
                a,
                b,
                epsabs=0,
                epsrel=1e-13,
                limit=200,
            )[0]
            for a, b in [(0, tau_scale), (tau_scale, 4 * tau_scale), (4 * tau_scale, np.inf)]
        )
        return np.log(val) + c

    log_py = log_integral(log_given_tau)
    return np.exp(log_given_tau(0.0) - log_py), np.exp(log_integral(log_given_tau_mu0) - log_py)


def test_summary_bayes_factors(sim, tmp_path, capsys):
    """``--summary``'s bf_tau0 and bf_mu0 with proper priors against scipy alone, to 1e-8
    (float64) or 1e-4 (float32) relative (absolute on the log); none (nan, and no line in
    the printed summary) with improper ones."""
    y8, s8 = (np.asarray(a, np.float64) for a in hierjax.eight_schools())
    y, s = np.stack([y8, sim.y[0]]), np.stack([s8, sim.sigma[0]])
    data = write_long(tmp_path / "d.csv", y, s)
    summ = tmp_path / "s.csv"
    proper = ["--tau-prior", "half-normal:10", "--mu-prior", "normal:0,50"]
    code, out, err = run(["fit", data, "--summary", summ, *proper], capsys)
    assert code == 0, err
    got = read_frame(summ)
    tol = 1e-8 if X64 else 1e-4
    for b in range(2):
        bf_tau0, bf_mu0 = _bayes_factors_by_quad(y[b], s[b], 10.0, 0.0, 50.0)
        assert abs(got["bf_tau0"][b] / bf_tau0 - 1) <= tol, (b, got["bf_tau0"][b], bf_tau0)
        assert abs(got["bf_mu0"][b] / bf_mu0 - 1) <= tol, (b, got["bf_mu0"][b], bf_mu0)
    assert out.count("Bayes factors: BF(tau = 0)") == 2
    # improper priors (the defaults: kernels shared with test_summary)
    code, out, err = run(["fit", data, "--summary", summ, "--force"], capsys)
    assert code == 0, err
    got = read_frame(summ)
    assert got["bf_tau0"].isna().all() and got["bf_mu0"].isna().all()
    assert "Bayes factors" not in out


# --------------------------------------------------------------------------------------
# one job split over processes (--processes, --process-id, --coordinator)
# --------------------------------------------------------------------------------------

SPLIT_B = 40  # in chunks of C: process 0 of 2 fits chunks 0, 2, ..., process 1 the others


@pytest.fixture(scope="module")
def split_job(sim, tmp_path_factory, jaxcache):
    """A 40-dataset CSV and its one-process output: ``(folder, argv, env)``."""
    d = tmp_path_factory.mktemp("split")
    idx = np.arange(SPLIT_B) % sim.y.shape[0]
    write_long(d / "in.csv", sim.y[idx], sim.sigma[idx], names=[f"s{b}" for b in range(SPLIT_B)])
    cmd, env = _cli(jaxcache)
    prec = [] if X64 else ["--float32"]
    args = ["fit", str(d / "in.csv"), "--chunk-size", str(C), "--quiet"] + prec
    assert hierjax.io.cli.main(args + ["--out", str(d / "ref.csv")]) == 0
    return d, cmd + args, env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _split_run(argv, env, out, extra=lambda i: [], n=2):
    """Every process of an ``n``-process job at once; their ``CompletedProcess``-like
    ``(returncode, stderr)``, in process order."""
    procs = [
        subprocess.Popen(
            argv + ["--out", str(out), "--processes", str(n), "--process-id", str(i)] + extra(i),
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    return [(p.communicate(timeout=600)[1], p.returncode)[::-1] for p in procs]


def _left(d):
    return sorted(
        p.name for p in d.iterdir() if p.name not in ("in.csv", "two.csv", "two.csv.json")
    )


def test_two_processes_give_the_one_process_bytes(split_job):
    """Two processes on localhost, split by the flags alone: the output the last of them
    assembles is the one-process run's, byte for byte, sidecar included; no parts left."""
    d, argv, env = split_job
    out = d / "two.csv"
    res = _split_run(argv, env, out)
    assert all(code == 0 for code, _ in res), res
    assert sum("assembled" in err for _, err in res) == 1, res
    assert out.read_bytes() == (d / "ref.csv").read_bytes()
    assert (d / "two.csv.json").read_bytes() == (d / "ref.csv.json").read_bytes()
    assert not (d / ".two.csv.hierjax-parts").exists()


def test_kill_9_then_resume_through_jax_distributed(split_job):
    """Process 0 killed as its first part is recorded; process 1 finishes its share and
    leaves the output to the last; both rerun with ``--resume`` joined through
    ``jax.distributed`` (a coordinator on a free localhost port): process 0 fits the rest
    of its share, and the output is the one-process run's bytes, with nothing left over.
    Process 1 fits nothing in the distributed run: its device there has another id, so
    JAX's compilation cache would miss and it would compile from scratch."""
    d, argv, env = split_job
    out = d / "killed.csv"
    work = d / ".killed.csv.hierjax-parts"

    def first_part():
        try:
            return len(json.loads((work / "p0-of-2" / "manifest.json").read_text())["done"]) >= 1
        except (OSError, ValueError):
            return False

    flags = ["--out", str(out), "--processes", "2", "--process-id"]
    p0 = subprocess.Popen(argv + flags + ["0"], env=env, stderr=subprocess.PIPE)
    p1 = subprocess.Popen(argv + flags + ["1"], env=env, stderr=subprocess.PIPE, text=True)
    assert _kill_when(p0, first_part), p0.stderr.read().decode()
    err = p1.communicate(timeout=600)[1]
    assert p1.returncode == 0 and "last process to finish" in err, err
    assert not out.exists()
    port = _free_port()
    res = _split_run(argv, env, out, lambda i: ["--resume", "--coordinator", f"127.0.0.1:{port}"])
    assert all(code == 0 for code, _ in res), res
    assert "from the interrupted run" in res[1][1], res
    assert out.read_bytes() == (d / "ref.csv").read_bytes()
    assert _left(d) == ["killed.csv", "killed.csv.json", "ref.csv", "ref.csv.json"]


def test_a_job_of_another_split_or_settings_is_refused(data_csv, tmp_path, capsys):
    """Parts of this output from a job with another --processes, or a sibling process with
    other settings, stop the process before any fit: one line, exit status 2."""
    out = tmp_path / "o.csv"
    work = tmp_path / ".o.csv.hierjax-parts"
    (work / "p0-of-2").mkdir(parents=True)
    base = ["fit", data_csv, "--out", out, "--chunk-size", C, "--quiet"]
    for argv in (base + ["--processes", 3, "--process-id", 0, "--resume"], base + ["--resume"]):
        code, _, err = run(argv, capsys)
        assert code == 2 and "run with 2 process(es)" in err, err
        assert err.count("\n") == 1
    (work / "p1-of-2").mkdir()
    (work / "p1-of-2" / "manifest.json").write_text('{"input": {}, "settings": {}}')
    code, _, err = run(base + ["--processes", 2, "--process-id", 0], capsys)
    assert code == 2 and "process 1 of 2 runs this job with another" in err, err
    code, _, err = run(base + ["--processes", 2, "--process-id", 2], capsys)
    assert code == 2 and "0..1" in err and err.count("\n") == 1
    code, _, err = run(["fit", data_csv, "--out", "-", "--processes", 2, "--process-id", 0], capsys)
    assert code == 2 and "--out FILE" in err
    assert sorted(p.name for p in work.iterdir()) == ["p0-of-2", "p1-of-2"]


def test_the_first_to_complete_the_job_assembles_it(tmp_path):
    """Only when every share is complete, and only one process: the first to take
    ``assemble.lock``, which keeps it when resumed after a kill; ``--force`` drops it."""
    from hierjax.io.stream import _check_split, _shares_to_assemble

    top = tmp_path / ".o.csv.hierjax-parts"
    share = {"complete": True, "chunks": 3, "input": {}, "settings": {}, "done": []}
    for i in range(2):
        (top / f"p{i}-of-2").mkdir(parents=True)
    (top / "p0-of-2" / "manifest.json").write_text(json.dumps(share))
    assert _shares_to_assemble(str(top), 2, 0) == (
        None,
        "the last process to finish writes the output",
    )
    (top / "p1-of-2" / "manifest.json").write_text(json.dumps(share))
    assert _shares_to_assemble(str(top), 2, 1)[0] is not None
    shares, note = _shares_to_assemble(str(top), 2, 0)
    assert shares is None and "process 1 assembles" in note and "--resume" in note
    assert _shares_to_assemble(str(top), 2, 1)[0] is not None
    _check_split(str(top), 2, force=True)
    assert sorted(p.name for p in top.iterdir()) == ["p0-of-2", "p1-of-2"]
