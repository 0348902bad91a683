"""Smoke test of the benchmark suite (benchmarks/suite.py, not installed).

Runs the suite's own functions in-process on the smoke preset's shapes (B = 32, J = 8,
the default levels: the compiled kernel is the one conftest's ``sim_fit`` uses), checks
that every row has its fields with finite, positive values, and that the accuracy and
regression checks can fail (a shifted dataset index, a planted 20 % regression).
No timing is asserted anywhere. Run under both ``JAX_ENABLE_X64=0`` and ``=1``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hierjax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import compile_kernels
import history
import limit
import peers
import suite

X64 = bool(jax.config.jax_enable_x64)
DTYPE = np.dtype(np.float64 if X64 else np.float32)
GOAL = 1e-8 if X64 else 1e-4
N_REF = 2


def _quiet(*_a, **_k):
    pass


@pytest.fixture(scope="module")
def cfg():
    return suite.config(suite.parser().parse_args(["--preset", "smoke"]))


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    return suite.reference_records(
        8, N_REF, cache_dir=str(tmp_path_factory.mktemp("ref")), log=_quiet
    )


@pytest.fixture(scope="module")
def full_row(cfg, refs):
    return suite.hierjax_row(8, 32, "full", DTYPE, refs, cfg, log=_quiet)


def _finite_positive(row, keys):
    for k in keys:
        v = row[k]
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (k, v)


def test_hierjax_row_fields(full_row):
    r = full_row
    assert r["status"] == "ok" and r["kind"] == "hierjax" and r["dtype"] == DTYPE.name
    _finite_positive(r, ["datasets_per_s", "seconds", "first_call_s", "peak_rss_mb", "base_rss_mb"])
    assert r["compile_s"] >= 0 and r["traces"] == 0, r
    assert r["acc_n"] == N_REF and r["acc_false"] == 0
    for k in ("acc_mean", "acc_sd", "acc_q", "acc_p", "acc_max"):
        assert math.isfinite(r[k]) and r[k] >= 0
    # the plumbing compares the right datasets: hierjax meets its goal on them
    assert r["acc_max"] <= GOAL, r
    json.dumps(r)


def test_accuracy_detects_a_wrong_dataset(refs):
    """Test the test: estimates of other datasets must score far from the goal."""
    y, s = suite.data(8, 0, 32)
    est = suite.fit_estimates(hierjax.fit(y, s, dtype=DTYPE))  # the compiled shape
    assert suite.accuracy(est, refs, suite.LEVELS)["acc_max"] <= GOAL
    shifted = {0: refs[1]}  # dataset 0's estimates against dataset 1
    assert suite.accuracy(est, shifted, suite.LEVELS)["acc_max"] > 1e-2


def test_moments_only_fallback(cfg, refs, monkeypatch):
    """An engine without ``quantiles=()`` yields an 'unsupported' row, not a crash."""

    def fit(*a, quantiles=hierjax.DEFAULT_LEVELS, **k):
        if len(quantiles) == 0:
            raise hierjax.InputError("quantile levels must lie strictly between 0 and 1")
        raise AssertionError("not reached")

    monkeypatch.setattr(hierjax, "fit", fit)
    r = suite.hierjax_row(8, 32, "moments", DTYPE, refs, cfg, log=_quiet)
    assert r["status"] == "unsupported" and "moments-only unsupported" in r["note"]


def test_naive_and_quad_peers(refs):
    y, s = suite.data(8, 0, 8)
    for mode, lv in (("moments", ()), ("full", suite.LEVELS)):
        r = peers.naive_row(y, s, lv, mode, lambda e, tau_q, lv=lv: suite.accuracy(e, refs, lv))
        _finite_positive(r, ["datasets_per_s", "seconds"])
        assert r["acc_n"] == N_REF and math.isfinite(r["acc_max"])
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from reference import Reference

    rows = peers.quad_rows(y[:1], s[:1], suite.LEVELS, [0, 1], Reference)
    assert [r["mode"] for r in rows] == ["moments", "full"]
    for r in rows:
        _finite_positive(r, ["datasets_per_s", "seconds", "acc_max"])
        assert "scaled to J=8" in r["note"]
    b = peers.bayesmeta_row()
    assert b["quoted"] and b["datasets_per_s"] == 1.37 and "not measured" in b["note"]


def _fake_nuts(refs, shift=0.0):
    """A stand-in for hierjax.validation.nuts: normal draws with the reference's means and sds
    (mu's mean moved by ``shift`` sds)."""

    def run_nuts(y, sigma=None, *, chains=4, warmup=500, samples=1000, seed=0, **_):
        rng = np.random.default_rng(seed)
        B, J = y.shape

        def draw(r, extra=0.0):
            return r["mean"] + r["sd"] * (extra + rng.standard_normal((chains, samples)))

        mu = np.empty((B, chains, samples))
        tau = np.empty_like(mu)
        theta = np.empty((B, chains, samples, J))
        for i in range(B):
            r = refs[i]
            mu[i], tau[i] = draw(r["mu"], shift), draw(r["tau"])
            for j in range(J):
                theta[i, :, :, j] = draw(r["theta"][str(j)])
        return types.SimpleNamespace(
            mu=mu,
            tau=tau,
            theta=theta,
            diverging=np.zeros(mu.shape, bool),
            seconds=0.5,
            compile_seconds=0.1,
        )

    mod = types.ModuleType("hierjax.validation.nuts")
    mod.run_nuts = run_nuts
    return mod


def test_nuts_wrapper(refs, monkeypatch):
    y, s = suite.data(8, 0, N_REF)

    def acc(e, tau_q):
        return suite.accuracy(e, refs, suite.LEVELS, tau_q)

    monkeypatch.setitem(sys.modules, "hierjax.validation.nuts", _fake_nuts(refs))
    r = peers.nuts_row(y, s, suite.LEVELS, "full", acc, chains=2, warmup=10, samples=4000)
    _finite_positive(r, ["datasets_per_s", "seconds", "compile_s"])
    assert r["datasets_per_s"] == N_REF / 0.5 and r["divergent_frac"] == 0.0
    assert r["acc_n"] == N_REF
    # draws with the right means and sds: Monte-Carlo error ~ 0.011 sd
    assert r["acc_mean"] < 0.1 and r["acc_sd"] < 0.1
    monkeypatch.setitem(sys.modules, "hierjax.validation.nuts", _fake_nuts(refs, shift=1.0))
    r = peers.nuts_row(y, s, suite.LEVELS, "full", acc, chains=2, warmup=10, samples=4000)
    assert r["acc_mean"] > 0.5  # a wrong posterior is seen
    monkeypatch.setitem(sys.modules, "hierjax.validation.nuts", None)  # import fails
    r = peers.nuts_row(y, s, suite.LEVELS, "full", acc)
    assert r["status"] == "unavailable"


def test_limit_small():
    c = limit.ceiling(DTYPE, 1 << 12, fma_steps=8)
    _finite_positive(
        c, ["ceiling_mix_elements_per_s", "ceiling_exp_elements_per_s", "ceiling_fma_flops_per_s"]
    )
    _finite_positive(
        c["op_elements_per_s"],
        ["fma", "div", "log", "log1p", "log1p_kernel", "exp", "sqrt", "erfc", "ndtr"],
    )
    m = limit.moment_kernel_rate(8, DTYPE, 9, B=16)
    _finite_positive(
        m,
        [
            "moment_kernel_elements_per_s",
            "moment_kernel_datasets_per_s",
            "moment_kernel_fused_loops",
        ],
    )


def test_compile_kernels_second_shape_reuses_the_trace():
    """benchmarks/compile_kernels.py on a toy kernel with a jitted chunk body (as hierjax's):
    every stage timed, and the block shape's trace served by the chunk shape's."""

    traces = []

    @jax.jit
    def body(rows, lv):
        traces.append(rows.shape)  # runs only when JAX traces the body
        return jnp.sin(rows) + lv.sum()

    @functools.partial(jax.jit, static_argnames=("chunk",))
    def kernel(x, lv, *, chunk):
        return jax.lax.map(lambda c: body(c, lv), x.reshape(-1, chunk, x.shape[-1])).reshape(
            x.shape
        )

    row = compile_kernels.measure(
        "toy", kernel, {}, 4, lambda n: (np.ones((n or 16, 3), DTYPE),), np.ones(2, DTYPE), 2
    )
    _finite_positive(
        row,
        [f"{s}_{k}_s" for s in ("chunk", "block") for k in ("trace", "lower", "compile")]
        + ["block_run_ms"],
    )
    assert traces == [(4, 3)], traces


def test_xla_passes_variants_agree(capsys):
    """benchmarks/xla_passes.py: the four ways of writing the moment arithmetic compute the
    same E[theta_j] (to round-off) and report a rate and a loop count each."""
    import xla_passes

    xla_passes.main(["--B", "64", "--chunk", "16", "--K", "9"] + (["--x64"] if X64 else []))
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["vmap", "batch_last", "unrolled", "dots"]
    for ln in lines:
        rate, loops, diff = float(ln.split()[5]), int(ln.split()[7]), float(ln.split()[-1])
        assert rate > 0 and loops > 0
        assert diff < (1e-12 if X64 else 1e-4), ln


def _history(tmp_path, factor):
    """Two synthetic runs; the second's J=8 float64 row at ``factor`` x the throughput."""
    legacy = {
        "benchmark": "fit_default_summaries",
        "date": "2026-01-01T00:00:00+00:00",
        "commit": "aaaaaaa",
        "dtype": "float64",
        "datasets": 1000,
        "groups": 8,
        "end_to_end_datasets_per_s": 900.0,
        "first_call_s": 30.0,
    }
    rows = [legacy]
    for run, commit, f in (
        ("20260102T000000", "bbbbbbb", 1.0),
        ("20260103T000000", "ccccccc", factor),
    ):
        for dt, base in (("float64", 1000.0), ("float32", 3000.0)):
            for B in (1000, 10000):
                rows.append(
                    {
                        "run_id": run,
                        "commit": commit,
                        "date": run,
                        "preset": "quick",
                        "device_kind": "cpu",
                        "kind": "hierjax",
                        "mode": "full",
                        "dtype": dt,
                        "B": B,
                        "J": 8,
                        "status": "ok",
                        "datasets_per_s": base * (f if (dt, B) == ("float64", 1000) else 1.0),
                        "acc_max": 1e-10,
                    }
                )
        rows.append(
            {
                "run_id": run,
                "commit": commit,
                "date": run,
                "preset": "quick",
                "device_kind": "cpu",
                "kind": "naive_grid",
                "mode": "full",
                "dtype": "float64",
                "B": 1000,
                "J": 8,
                "status": "ok",
                "datasets_per_s": 50.0,
                "acc_max": 2.0,
            }
        )
        rows.append(
            dict(
                peers.bayesmeta_row(),
                run_id=run,
                commit=commit,
                date=run,
                preset="quick",
                device_kind="cpu",
            )
        )
    path = tmp_path / "hist.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def test_compare_flags_a_planted_regression(tmp_path, capsys):
    path, _ = _history(tmp_path, 0.8)
    table, flagged = history.compare(history.load(str(path)))
    assert flagged == 1
    bad = [t for t in table if t["flag"] != "ok"]
    assert len(bad) == 1 and bad[0]["dtype"] == "float64" and bad[0]["B"] == 1000
    assert bad[0]["ratio"] == pytest.approx(0.8)
    assert suite.main(["compare", "--file", str(path)]) == 1
    assert "throughput -20%" in capsys.readouterr().out


def test_compare_passes_within_noise(tmp_path):
    path, _ = _history(tmp_path, 0.95)
    table, flagged = history.compare(history.load(str(path)))
    assert flagged == 0 and len(table) == 5  # 4 hierjax + naive; quoted row skipped
    assert suite.main(["compare", "--file", str(path)]) == 0


def test_plot_draws_the_recorded_numbers(tmp_path):
    pytest.importorskip("matplotlib")
    path, _rows = _history(tmp_path, 0.8)
    paths, figs = history.plot(history.load(str(path)), str(tmp_path), "hist", keep=True)
    try:
        assert [os.path.basename(p) for p in paths] == [
            "hist-scaling-B.png",
            "hist-scaling-J.png",
            "hist-history.png",
        ]
        for p in paths:
            with open(p, "rb") as fh:
                assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
        lines = {ln.get_label(): ln for ln in figs[0].axes[0].get_lines()}
        f64 = lines["hierjax float64 full"]
        assert list(f64.get_xdata()) == [1000, 10000]
        assert list(f64.get_ydata()) == [800.0, 1000.0]  # the latest commit's values
        hist = {ln.get_label(): ln for ln in figs[2].axes[0].get_lines()}
        # legacy bench_fit line (B = 1000, full, float64) then the two runs
        assert list(hist["float64 full B=1000"].get_ydata()) == [900.0, 1000.0, 800.0]
    finally:
        import matplotlib.pyplot as plt

        for f in figs:
            plt.close(f)


def test_cli_help_and_machine_name():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "suite.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--preset" in out and "compare" in out
    name = history.machine_name("cpu")
    assert name.startswith(f"{os.cpu_count()}core-") and name == name.lower()
    assert history.machine_name("NVIDIA H200").endswith("nvidia-h200")
