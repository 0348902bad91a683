"""The ``hierjax fit`` command: tables, the tidy CSV, and how it fails.

Most tests call :func:`hierjax.io.cli.main` in-process (sharing compiled kernels with
the rest of the suite; ``--x64`` is never passed in-process because it changes
JAX's global configuration); one test runs the installed console script.

Compiled shapes used here: two datasets padded to ``J = 8`` (the main CSV, the
group-labelled CSV and every ``--skip-invalid`` CSV), one dataset (the eight
schools), and one run with other priors and levels.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import BATCH_RTOL, DEFAULT_DTYPE, cli_argv, long_rows, read_table

import hierjax
import hierjax.io.cli
from hierjax.datasets import SCHOOLS

#: the tidy table's columns (hierjax.io.tidy)
EXPECTED_HEADER = [
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
#: the table printed on stdout
PRINTED_HEADER = [
    "parameter",
    "mean",
    "sd",
    "q0.025",
    "q0.25",
    "q0.5",
    "q0.75",
    "q0.975",
    "p_gt0",
    "status",
]


def run_cli(argv, capsys):
    """``main(argv)`` in-process: ``(exit status, stdout, stderr)`` (argparse exits count)."""
    try:
        code = hierjax.io.cli.main(cli_argv(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture
def table_to_capsys(capsys, monkeypatch):
    """Send ``_print_table`` output to the current (captured) ``sys.stdout``.

    ``hierjax.io.cli._print_table(fit, b, out=sys.stdout)`` binds the stream when the
    module is imported, so its table bypasses ``capsys`` and ``redirect_stdout``;
    :func:`test_table_goes_to_the_current_stdout` pins that bug. The tests that
    check the table's *content* use this fixture so that they test only that.
    """
    orig = hierjax.io.cli._print_table
    params = inspect.signature(orig).parameters
    if "out" not in params or not hasattr(params["out"].default, "write"):
        return  # fixed: nothing to work around

    def print_table(*args, **kwargs):
        if len(args) < 3 and "out" not in kwargs:
            kwargs["out"] = sys.stdout  # looked up now, not at import
        return orig(*args, **kwargs)

    monkeypatch.setattr(hierjax.io.cli, "_print_table", print_table)


@pytest.fixture(scope="module")
def two_datasets():
    """``{name: (y, sigma)}``: the eight schools and a 5-group simulated dataset."""
    y, s = hierjax.eight_schools()
    sim = hierjax.simulate(1, 5, seed=7)
    return {"alpha": (y, s), "beta": (sim.y[0], sim.sigma[0])}


@pytest.fixture(scope="module")
def api_fit(two_datasets):
    """The Python API's fit of :func:`two_datasets` (the kernel the CLI run must share)."""
    names = list(two_datasets)
    return hierjax.fit(
        [two_datasets[n][0] for n in names], [two_datasets[n][1] for n in names], names=names
    )


def expected_parameters(n_groups, labels=None):
    """``[(parameter, group)]`` of a dataset's rows."""
    labels = labels or [str(j + 1) for j in range(n_groups)]
    return [("mu", ""), ("tau", "")] + [("theta", g) for g in labels] + [("theta_new", "")]


def key(r):
    """``(parameter, group)`` of a tidy row."""
    return (r[1], r[2])


def num(cell: str) -> float:
    """A cell as a number of the suite's precision (the CSV holds the shortest decimal that
    reads back to the same value of the result's dtype)."""
    return float(np.dtype(DEFAULT_DTYPE).type(cell))


def same_number(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def api_rows(f: hierjax.Fit, b: int):
    """``{parameter: [mean, sd, q..., p_gt0]}`` from a Fit (floats)."""

    def row(m, i):
        return [m.mean[i], m.sd[i], *m.quantiles[i], m.p_gt0[i]]

    labels = f.groups[b]
    out = {("mu", ""): row(f.mu, b), ("tau", ""): row(f.tau, b)}
    for j in range(int(f.n_groups[b])):
        label = labels[j] if labels else str(j + 1)
        out[("theta", label)] = row(f.theta, (b, j))
    out[("theta_new", "")] = row(f.theta_new, b)
    return {k: [float(v) for v in vals] for k, vals in out.items()}


def check_table_equals_fit(header, rows, f: hierjax.Fit):
    """Every numeric cell of the tidy table is exactly the Fit's number."""
    by_ds = {}
    for r in rows:
        by_ds.setdefault(r[0], []).append(r)
    assert list(by_ds) == [str(n) for n in f.names]
    for b, name in enumerate(f.names):
        want = api_rows(f, b)
        got = by_ds[str(name)]
        assert [key(r) for r in got] == list(want), f"dataset {name}: parameters"
        for r in got:
            vals = [num(c) for c in r[3:-2]]
            assert len(vals) == len(want[key(r)])
            for col, v, w in zip(header[3:-2], vals, want[key(r)]):
                assert same_number(v, w), f"dataset {name}, {r[1]}, {col}: CSV {v!r} != API {w!r}"


# --------------------------------------------------------------------------------------
# successful runs
# --------------------------------------------------------------------------------------


def _check_eight_schools_table(out):
    """The ``--simulate 0`` table: header, rows mu, tau, theta[A..H], theta_new; returns rows."""
    lines = out.splitlines()
    head = [i for i, line in enumerate(lines) if line.split()[:1] == ["parameter"]]
    assert len(head) == 1, f"no table header in stdout:\n{out}"
    cols = lines[head[0]].split()
    assert cols == PRINTED_HEADER, cols
    body = [line.split() for line in lines[head[0] + 1 : head[0] + 12]]
    params = [r[0] for r in body]
    assert params == ["mu", "tau"] + [f"theta[{s}]" for s in SCHOOLS] + ["theta_new"], out
    for r in body:
        assert len(r) == len(cols), r
        assert r[-1] == "ok", r
    assert "Simulated batch" not in out
    return [dict(zip(cols, r)) for r in body]


def test_table_goes_to_the_current_stdout():
    """``main`` prints through the ``sys.stdout`` of the moment (``redirect_stdout`` works)."""
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        code = hierjax.io.cli.main(["fit", "--simulate", "0"])
    assert code == 0, err.getvalue()
    assert "theta[A]" in buf.getvalue(), (
        f"the table did not go to the redirected stdout; it got only:\n{buf.getvalue()}"
    )


def test_simulate_0_prints_eight_schools_table(table_to_capsys, capsys):
    code, out, err = run_cli(["fit", "--simulate", "0"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    rows = _check_eight_schools_table(out)
    # the printed numbers are the API's (4 significant digits)
    f = hierjax.fit(*hierjax.eight_schools())
    assert float(rows[0]["mean"]) == pytest.approx(float(f.mu.mean[0]), rel=1e-3)
    assert float(rows[0]["q0.5"]) == pytest.approx(float(f.mu.quantiles[0, 2]), rel=1e-3)
    assert float(rows[2]["sd"]) == pytest.approx(float(f.theta.sd[0, 0]), rel=1e-3)
    assert float(rows[1]["q0.25"]) == pytest.approx(float(f.tau.quantiles[0, 1]), rel=1e-3)


def test_csv_out_matches_python_api(two_datasets, api_fit, write_csv, tmp_path, capsys):
    path = write_csv(long_rows(two_datasets))
    out = tmp_path / "out.csv"
    code, stdout, err = run_cli(["fit", path, "--out", out], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    header, rows = read_table(out)
    assert header == EXPECTED_HEADER
    params = {}
    for r in rows:
        assert len(r) == len(header), r
        params.setdefault(r[0], []).append(key(r))
        assert r[-2] == "ok" and r[-1] == "", r
    assert params == {"alpha": expected_parameters(8), "beta": expected_parameters(5)}
    check_table_equals_fit(header, rows, api_fit)
    # no stray temporary files next to the output (the sidecar records the run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "out.csv", "out.csv.json"]


def test_group_column_labels_theta(two_datasets, api_fit, write_csv, tmp_path, capsys):
    labels = {"alpha": list(SCHOOLS), "beta": ["north", "south", "east", "west", "x y"]}
    path = write_csv(long_rows(two_datasets, labels), header=("dataset", "y", "sigma", "group"))
    out = tmp_path / "out.csv"
    code, _, err = run_cli(["fit", path, "--out", out], capsys)
    assert code == 0, err
    header, rows = read_table(out)
    assert header == EXPECTED_HEADER
    got = {}
    for r in rows:
        got.setdefault(r[0], []).append(key(r))
    assert got == {n: expected_parameters(len(v), v) for n, v in labels.items()}
    # same numbers as the unlabelled run
    check_table_equals_fit(
        header, rows, api_fit._replace(groups=(tuple(labels["alpha"]), tuple(labels["beta"])))
    )


def test_stdout_table_without_out(two_datasets, write_csv, table_to_capsys, capsys):
    path = write_csv(long_rows(two_datasets))
    code, out, err = run_cli(["fit", path], capsys)
    assert code == 0, err
    assert "dataset alpha:" in out and "dataset beta:" in out
    firsts = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert firsts.count("theta_new") == 2
    assert "theta[5]" in firsts and "theta[8]" in firsts


def test_quantiles_and_priors_are_honoured(two_datasets, api_fit, write_csv, tmp_path, capsys):
    path = write_csv(long_rows(two_datasets))
    out = tmp_path / "out.csv"
    code, _, err = run_cli(
        [
            "fit",
            path,
            "--out",
            out,
            "--quantiles",
            "0.1,0.9",
            "--tau-prior",
            "half-cauchy:5",
            "--mu-prior",
            "normal:0,5",
        ],
        capsys,
    )
    assert code == 0, err
    header, rows = read_table(out)
    assert header == [
        "dataset",
        "parameter",
        "group",
        "mean",
        "sd",
        "q0.1",
        "q0.9",
        "p_gt0",
        "status",
        "note",
    ]
    names = list(two_datasets)
    want = hierjax.fit(
        [two_datasets[n][0] for n in names],
        [two_datasets[n][1] for n in names],
        names=names,
        tau_prior="half-cauchy:5",
        mu_prior="normal:0,5",
        quantiles=[0.1, 0.9],
    )
    check_table_equals_fit(header, rows, want)
    # and the priors made a difference (so the comparison above means something)
    assert abs(float(want.mu.mean[0]) - float(api_fit.mu.mean[0])) > 0.1
    assert abs(float(want.tau.mean[1]) - float(api_fit.tau.mean[1])) > 0.1
    # a proper prior pair gives the marginal likelihood; the default (improper) does not
    assert np.all(np.isfinite(want.log_marginal_likelihood))
    assert np.all(np.isnan(api_fit.log_marginal_likelihood))


# --------------------------------------------------------------------------------------
# bad input: one line, exit status 2, no traceback, no output file
# --------------------------------------------------------------------------------------


def _csv_rows(bad_cells=None, beta_rows=None):
    """The long CSV of a valid 'alpha' (4 groups) and a 'beta' with cells replaced."""
    rows = [
        ["alpha", "28", "15"],
        ["alpha", "8", "10"],
        ["alpha", "-3", "16"],
        ["alpha", "7", "11"],
    ]
    beta = beta_rows or [["beta", "1.5", "2"], ["beta", "2.5", "3"], ["beta", "-0.5", "1"]]
    beta = [list(r) for r in beta]
    for (i, col), val in (bad_cells or {}).items():
        beta[i][col] = val
    return rows + beta


# (id, file content spec, extra argv, fragments the one line must contain)
DATA_ERRORS = [
    ("nan-y", {(1, 1): "nan"}, ["'beta'", "y[2]", "nan", "finite"]),
    ("inf-y", {(1, 1): "inf"}, ["'beta'", "y[2]", "inf", "finite"]),
    ("minus-inf-y", {(0, 1): "-inf"}, ["'beta'", "y[1]", "inf"]),
    ("sigma-zero", {(2, 2): "0"}, ["'beta'", "sigma[3]", "> 0"]),
    ("sigma-negative", {(0, 2): "-2"}, ["'beta'", "sigma[1]", "> 0"]),
    ("sigma-nan", {(1, 2): "nan"}, ["'beta'", "sigma[2]", "nan"]),
    ("sigma-inf", {(1, 2): "inf"}, ["'beta'", "sigma[2]", "inf"]),
    ("non-numeric-y", {(1, 1): "abc"}, ["'beta'", "'y'", "abc", "line 7"]),
    ("non-numeric-sigma", {(2, 2): "ten"}, ["'beta'", "'sigma'", "ten", "line 8"]),
    ("empty-y-cell", {(0, 1): ""}, ["'beta'", "'y'", "line 6"]),
]


@pytest.mark.parametrize(
    "cells,fragments", [d[1:] for d in DATA_ERRORS], ids=[d[0] for d in DATA_ERRORS]
)
def test_bad_cell_fails_cleanly(cells, fragments, write_csv, tmp_path, capsys):
    path = write_csv(_csv_rows(cells))
    _expect_failure(["fit", path], fragments, tmp_path, capsys)


def _expect_failure(argv, fragments, tmp_path, capsys):
    out = tmp_path / "out.csv"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = run_cli(list(argv) + ["--out", out], capsys)
    assert code == 2, (code, err)
    assert "Traceback" not in err and "Traceback" not in stdout
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line message, got:\n{err}"
    msg = lines[0]
    assert "error" in msg.lower(), msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    assert not out.exists(), "an output file was written by a failed run"
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "stray files left behind"
    return msg


def test_missing_column(write_csv, tmp_path, capsys):
    path = write_csv([["a", "1"], ["a", "2"], ["a", "3"]], header=("dataset", "y"))
    _expect_failure(["fit", path], ["sigma", "missing"], tmp_path, capsys)


def test_missing_dataset_column(write_csv, tmp_path, capsys):
    path = write_csv([["1", "2"], ["2", "3"], ["3", "4"]], header=("y", "sigma"))
    _expect_failure(["fit", path], ["dataset", "missing"], tmp_path, capsys)


def test_empty_file(tmp_path, capsys):
    path = tmp_path / "empty.csv"
    path.write_text("")
    _expect_failure(["fit", path], ["empty.csv", "empty"], tmp_path, capsys)


def test_header_only_file(write_csv, tmp_path, capsys):
    path = write_csv([])
    _expect_failure(["fit", path], ["data.csv", "no data rows"], tmp_path, capsys)


def test_nonexistent_file(tmp_path, capsys):
    _expect_failure(["fit", tmp_path / "nope.csv"], ["nope.csv", "cannot read"], tmp_path, capsys)


def test_directory_as_input(tmp_path, capsys):
    d = tmp_path / "adir"
    d.mkdir()
    _expect_failure(["fit", d], ["adir", "cannot read"], tmp_path, capsys)


def test_empty_dataset_cell(write_csv, tmp_path, capsys):
    path = write_csv(_csv_rows({(1, 0): ""}))
    _expect_failure(["fit", path], ["line 7", "dataset"], tmp_path, capsys)


def test_two_groups_need_three_under_uniform_flat(write_csv, tmp_path, capsys):
    path = write_csv(_csv_rows(beta_rows=[["beta", "1", "1"], ["beta", "2", "1"]]))
    _expect_failure(["fit", path], ["'beta'", "2 group", "at least 3"], tmp_path, capsys)


def test_only_the_bad_dataset_is_named(write_csv, tmp_path, capsys):
    path = write_csv(_csv_rows({(1, 1): "nan"}))
    msg = _expect_failure(["fit", path], ["'beta'"], tmp_path, capsys)
    assert "alpha" not in msg


BAD_OPTIONS = [
    ("tau-no-scale", ["--tau-prior", "half-cauchy"], ["half-cauchy"]),
    ("tau-unknown", ["--tau-prior", "foo:1"], ["foo"]),
    ("tau-negative-scale", ["--tau-prior", "half-normal:-1"], ["half-normal", "-1"]),
    ("tau-zero-scale", ["--tau-prior", "half-cauchy:0"], ["half-cauchy"]),
    ("tau-not-a-number", ["--tau-prior", "half-cauchy:abc"], ["half-cauchy"]),
    ("mu-missing-sd", ["--mu-prior", "normal:0"], ["normal"]),
    ("mu-negative-sd", ["--mu-prior", "normal:0,-1"], ["normal"]),
    ("mu-unknown", ["--mu-prior", "cauchy:0,1"], ["cauchy"]),
    ("quantiles-out-of-range", ["--quantiles", "0,1.5"], ["quantile", "0,1.5"]),
    ("quantile-one", ["--quantiles", "0.5,1"], ["quantile"]),
    ("quantiles-not-numbers", ["--quantiles", "0.5,abc"], ["quantile"]),
]


@pytest.mark.parametrize(
    "extra,fragments", [b[1:] for b in BAD_OPTIONS], ids=[b[0] for b in BAD_OPTIONS]
)
def test_bad_option_fails_cleanly(extra, fragments, write_csv, tmp_path, capsys):
    path = write_csv(_csv_rows())
    _expect_failure(["fit", path] + extra, fragments, tmp_path, capsys)


@pytest.mark.parametrize(
    "extra",
    [[], ["--quantiles", "0,1.5"], ["--tau-prior", "foo:1"]],
    ids=["bad-data", "bad-quantiles", "bad-prior"],
)
def test_failed_run_does_not_clobber_existing_output(extra, write_csv, tmp_path, capsys):
    path = write_csv(_csv_rows({(1, 1): "nan"} if not extra else None))
    out = tmp_path / "out.csv"
    out.write_text("sentinel,do not touch\n")
    before = out.read_bytes(), os.stat(out).st_mtime_ns
    code, _, err = run_cli(["fit", path, "--out", out] + extra, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    assert (out.read_bytes(), os.stat(out).st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "out.csv"]


# --------------------------------------------------------------------------------------
# --skip-invalid
# --------------------------------------------------------------------------------------

SKIPPABLE = [
    ("nan-y", [["beta", "1", "2"], ["beta", "nan", "2"], ["beta", "3", "2"]], "y[2]"),
    ("sigma-zero", [["beta", "1", "2"], ["beta", "2", "0"], ["beta", "3", "2"]], "sigma[2]"),
    ("sigma-nan", [["beta", "1", "nan"], ["beta", "2", "1"], ["beta", "3", "2"]], "sigma[1]"),
    ("two-groups", [["beta", "1", "2"], ["beta", "2", "3"]], "2 group"),
]


@pytest.fixture(scope="module")
def alpha_only_rows(tmp_path_factory, two_datasets):
    """The table of a run on 'alpha' alone (no invalid dataset in the file)."""
    d = tmp_path_factory.mktemp("alpha_only")
    path = d / "alpha.csv"
    with open(path, "w") as fh:
        fh.write("dataset,y,sigma\n")
        fh.writelines(",".join(r) + "\n" for r in long_rows({"alpha": two_datasets["alpha"]}))
    out = d / "out.csv"
    assert hierjax.io.cli.main(cli_argv(["fit", path, "--out", out])) == 0
    return read_table(out)


@pytest.mark.parametrize(
    "beta_rows,fragment", [s[1:] for s in SKIPPABLE], ids=[s[0] for s in SKIPPABLE]
)
def test_skip_invalid(
    beta_rows, fragment, two_datasets, alpha_only_rows, write_csv, tmp_path, capsys
):
    rows = long_rows({"alpha": two_datasets["alpha"]}) + beta_rows
    path = write_csv(rows)
    out = tmp_path / "out.csv"
    code, _, err = run_cli(["fit", path, "--out", out, "--skip-invalid"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert "'beta'" in err and fragment in err
    header, table = read_table(out)
    assert header == EXPECTED_HEADER
    beta = [r for r in table if r[0] == "beta"]
    alpha = [r for r in table if r[0] == "alpha"]
    assert [key(r) for r in beta] == expected_parameters(len(beta_rows))
    for r in beta:
        assert r[-2] == "invalid", r
        assert fragment in r[-1] and "'beta'" in r[-1], r
        assert all(math.isnan(num(c)) for c in r[3:-2]), r
    # the valid dataset's rows equal those of a run without the invalid one
    a_header, a_rows = alpha_only_rows
    assert a_header == header
    assert [r[:3] for r in alpha] == [r[:3] for r in a_rows]
    assert [r[-2:] for r in alpha] == [r[-2:] for r in a_rows]
    for got, want in zip(alpha, a_rows):
        _same_row(header, got, want)


def _same_row(header, got, want):
    """Numbers equal up to the batch tolerance (relative to the row's sd for locations)."""
    g = [num(c) for c in got[3:-2]]
    w = [num(c) for c in want[3:-2]]
    sd = w[1]
    location = got[1] != "tau"
    for col, a, b in zip(header[3:-2], g, w):
        if col == "p_gt0":
            floor = 1.0
        elif col == "sd" or not location:
            floor = 0.0
        else:
            floor = sd if math.isfinite(sd) else 0.0
        ok = same_number(a, b) or abs(a - b) <= BATCH_RTOL * max(abs(b), floor)
        assert ok, f"{got[0]} {got[1]} {col}: {a!r} != {b!r}"


def test_skip_invalid_with_all_valid_is_a_plain_run(
    two_datasets, api_fit, write_csv, tmp_path, capsys
):
    path = write_csv(long_rows(two_datasets))
    out = tmp_path / "out.csv"
    code, _, err = run_cli(["fit", path, "--out", out, "--skip-invalid"], capsys)
    assert code == 0, err
    header, rows = read_table(out)
    check_table_equals_fit(header, rows, api_fit)
    assert all(r[-2] == "ok" for r in rows)


# --------------------------------------------------------------------------------------
# the installed console script
# --------------------------------------------------------------------------------------


def _console_script():
    here = os.path.join(os.path.dirname(sys.executable), "hierjax")
    if os.path.exists(here):
        return [here]
    found = shutil.which("hierjax")
    return [found] if found else [sys.executable, "-m", "hierjax.io.cli"]


def test_console_script_bad_input(write_csv, tmp_path):
    path = write_csv(_csv_rows({(1, 2): "-1"}))
    out = tmp_path / "out.csv"
    r = subprocess.run(
        _console_script() + ["fit", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "'beta'" in lines[0] and "sigma[2]" in lines[0]
    assert r.stdout == ""
    assert not out.exists()
