"""Coverage studies (hierjax.validation.coverage) against cases with a known answer.

* The z interval for mu with tau known (``oracle``) has exact coverage ``level``.
* With (mu, tau) drawn from the priors the Bayesian intervals are fitted with, their
  coverage averaged over the prior is exactly ``level`` (the shape J = 5 with half-normal
  tau and normal mu is shared with tests/test_calibration.py).
* With equal sigma_j the Knapp-Hartung interval is Student's t interval of the y_j, exact
  at any tau (needs hierjax.model.frequentist).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import cli_argv

import hierjax
from hierjax.validation.coverage import COLUMNS, coverage, to_pandas


def _within(row, level=0.95, k=3.5):
    se = np.sqrt(level * (1 - level) / row["n"])
    return abs(row["coverage"] - level) < k * se


def test_oracle_z_interval_has_exact_coverage():
    sig = {"equal": 1.0, "mixed": {"uniform": [0.3, 3.0]}}
    rows = coverage(
        taus=[0.0, 2.0],
        Js=[5],
        sigmas=sig,
        replicates=4000,
        key=3,
        priors={},
        frequentist=(),
        oracle=True,
        chunk=4000,
    )
    assert len(rows) == 4 and all(set(r) == set(COLUMNS) for r in rows)
    for r in rows:
        assert (r["method"], r["interval"], r["parameter"], r["n"]) == (
            "oracle-z",
            "known-tau",
            "mu",
            4000,
        )
        assert _within(r), r
        # binary outcomes: the MCSE is sqrt(c (1 - c) / n) (up to n / (n - 1))
        c = r["coverage"]
        assert r["mcse"] == pytest.approx(np.sqrt(c * (1 - c) / 3999), rel=1e-9)
    # the width is 2 z / sqrt(sum 1 / (sigma^2 + tau^2)): known for equal sigma
    r = next(r for r in rows if r["sigma"] == "equal" and r["tau"] == 2.0 and r["J"] == 5)
    assert r["mean_width"] == pytest.approx(2 * 1.959963984540054 * np.sqrt(5.0 / 5), rel=1e-9)
    assert r["width_mcse"] < 1e-9
    # chunking changes nothing: each cell's replicates depend on (key, cell, index) only
    again = coverage(
        taus=[0.0, 2.0],
        Js=[5],
        sigmas=sig,
        replicates=4000,
        key=3,
        priors={},
        frequentist=(),
        oracle=True,
        chunk=1500,
    )
    for a, b in zip(again, rows):  # the same replicates; sums in another order
        assert {k: v for k, v in a.items() if "width" not in k} == {
            k: v for k, v in b.items() if "width" not in k
        }
        assert a["mean_width"] == pytest.approx(b["mean_width"], rel=1e-12)


def test_bayesian_coverage_is_nominal_under_the_generating_prior():
    rows = coverage(
        taus=["half-normal:1"],
        Js=[5],
        mu="normal:0,1",
        replicates=2000,
        key=5,
        priors={"gen": ("half-normal:1", "normal:0,1")},
        params=("mu",),
        kinds=("central",),
        frequentist=(),
    )
    assert [r["parameter"] for r in rows] == ["mu"]
    for r in rows:
        assert r["method"] == "bayes:gen" and r["n"] == 2000
        assert _within(r), r
        assert 0 < r["mean_width"] < 10


def test_bad_settings():
    with pytest.raises(hierjax.InputError, match="params"):
        coverage(taus=[0.0], Js=[3], replicates=10, params=("sigma",), frequentist=())
    with pytest.raises(hierjax.InputError, match="METHOD-TEST"):
        coverage(taus=[0.0], Js=[3], replicates=10, frequentist=("DL",))


def test_plot_and_pandas():
    pytest.importorskip("matplotlib")
    pytest.importorskip("pandas")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = coverage(taus=[0.0, 2.0], Js=[5], replicates=100, priors={}, frequentist=(), oracle=True)
    ax = hierjax.plot_coverage(rows, "mu")
    assert len(ax.containers) == 1
    plt.close("all")
    df = to_pandas(rows)
    assert list(df.columns) == list(COLUMNS) and len(df) == 2


def test_knapp_hartung_exact_with_equal_sigma():
    pytest.importorskip("hierjax.model.frequentist")
    rows = coverage(
        taus=[0.0, 1.0],
        Js=[3],
        replicates=4000,
        key=9,
        priors={},
        frequentist=("DL-knha", "DL-z"),
        params=("mu", "tau", "theta_new"),
    )
    kh = [r for r in rows if r["method"] == "DL-knha" and r["parameter"] == "mu"]
    assert len(kh) == 2 and all(_within(r) for r in kh), kh
    wald = [r for r in rows if r["method"] == "DL-z" and r["parameter"] == "mu"]
    assert wald[1]["coverage"] < 0.95 - 3.5 * wald[1]["mcse"]  # Wald undercovers at J = 3


def test_cli_coverage(tmp_path, capsys):
    import csv

    from hierjax.io.cli import main

    cfg = tmp_path / "grid.toml"
    cfg.write_text(
        "replicates = 500\nseed = 3\ntau = [0.0, 2.0]\nJ = 5\noracle = true\n"
        "[sigma]\nequal = 1.0\nmixed = {uniform = [0.3, 3.0]}\n[priors]\n"
    )
    out = tmp_path / "cov.csv"
    assert main(cli_argv(["coverage", str(cfg), "--out", str(out)])) == 0
    assert "oracle-z" in capsys.readouterr().out
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(COLUMNS) and len(rows) == 4
    ref = coverage(
        taus=[0.0, 2.0],
        Js=[5],
        replicates=500,
        key=3,
        priors={},
        frequentist=(),
        oracle=True,
        sigmas={"equal": 1.0, "mixed": {"uniform": [0.3, 3.0]}},
    )
    for r, e in zip(rows, ref):
        assert (float(r["tau"]), r["sigma"], int(r["n"])) == (e["tau"], e["sigma"], e["n"])
        assert float(r["coverage"]) == pytest.approx(e["coverage"], rel=1e-9)
    # a config with an unknown key stops with a message, status 2 and no file
    cfg.write_text("replicates = 10\ntau = 0.0\nJ = 3\ncolour = 'red'\n")
    bad = tmp_path / "bad.csv"
    assert main(cli_argv(["coverage", str(cfg), "--out", str(bad)])) == 2 and not bad.exists()
    assert "colour" in capsys.readouterr().err
