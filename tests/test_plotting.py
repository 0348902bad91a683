"""hierjax.io.plotting and ``hierjax plot``: every figure renders headless to a PNG, and what
is drawn is what was computed (the artists' data read back against the results and
against numbers worked out here independently: y_j +- 1.96 sigma_j, the Fisher-weighted mean).

Compiled shapes: one eight-schools dataset (J = 8), uniform tau / flat mu, default
quantile levels (shared with tests/test_cli.py and tests/test_curves.py).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from conftest import cli_argv  # noqa: E402

import hierjax  # noqa: E402
import hierjax.io.cli  # noqa: E402
from hierjax.curves import mu_density, tau_curves  # noqa: E402
from hierjax.datasets import SCHOOLS  # noqa: E402
from hierjax.io.plotting import (  # noqa: E402
    KINDS,
    plot_all,
    plot_densities,
    plot_forest,
    plot_impact,
    plot_shrinkage,
)

PNG = b"\x89PNG\r\n\x1a\n"
Z95 = 1.959963984540054


@pytest.fixture(scope="module")
def data():
    return hierjax.eight_schools()


@pytest.fixture(scope="module")
def fit8(data):
    return hierjax.fit(*data, groups=[SCHOOLS])


@pytest.fixture(scope="module")
def curves8(data):
    return tau_curves(*data)


@pytest.fixture(scope="module")
def mu8(data):
    return mu_density(*data)


def by_gid(fig, gid):
    found = fig.findobj(lambda a: a.get_gid() == gid)
    assert len(found) == 1, f"{len(found)} artists with gid {gid!r}"
    return found[0]


def is_png(path):
    with open(path, "rb") as fh:
        return fh.read(8) == PNG


def close(a, b, tol=1e-12):
    np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol
    )


def test_impact_figure(curves8, tmp_path):
    path = tmp_path / "impact.png"
    fig = plot_impact(curves=curves8, labels=SCHOOLS, units="points", path=path)
    assert is_png(path)
    tau = curves8.tau[0]
    for j, s in enumerate(SCHOOLS):
        xy = by_gid(fig, f"theta_mean:{s}").get_xydata()
        close(xy[:, 0], tau)
        close(xy[:, 1], curves8.theta_mean[0, :, j])
        xy = by_gid(fig, f"theta_sd:{s}").get_xydata()
        close(xy[:, 1], curves8.theta_sd[0, :, j])
    close(by_gid(fig, "mu_mean").get_xydata()[:, 1], curves8.mu_mean[0])
    xy = by_gid(fig, "tau_density").get_xydata()
    close(xy[:, 0], tau)
    close(xy[:, 1], curves8.density[0])
    # the three panels share the tau axis; every group is labelled
    axes = fig.get_axes()
    assert len(axes) == 3 and all(ax.get_xlim() == axes[0].get_xlim() for ax in axes)
    texts = {t.get_text() for t in axes[0].texts}
    assert set(SCHOOLS) <= texts
    assert "points" in axes[0].get_ylabel() and "tau" in axes[2].get_xlabel()


def test_shrinkage_figure(data, fit8, tmp_path):
    y, sigma = data
    path = tmp_path / "shrinkage.png"
    fig = plot_shrinkage(y, sigma, fit=fit8, path=path)
    assert is_png(path)
    post = fit8.theta.mean[0]
    lo, hi = fit8.theta.quantiles[0, :, 0], fit8.theta.quantiles[0, :, -1]  # 0.025, 0.975
    xy = by_gid(fig, "posterior_mean").get_xydata()
    close(xy[:, 0], y)
    close(xy[:, 1], post)
    seg = np.array(by_gid(fig, "posterior_interval").get_segments())
    close(seg[:, 0, 0], y)
    close(seg[:, 0, 1], lo)
    close(seg[:, 1, 1], hi)
    # no pooling: y_j +- 1.96 sigma_j; complete pooling: the Fisher-weighted mean
    close(by_gid(fig, "no_pooling").get_xydata()[:, 0], y)
    seg = np.array(by_gid(fig, "no_pooling_interval").get_segments())
    close(seg[:, 0, 0], y - Z95 * sigma, 1e-9)
    close(seg[:, 1, 0], y + Z95 * sigma, 1e-9)
    w = 1.0 / sigma**2
    pooled = np.sum(w * y) / w.sum()
    close(by_gid(fig, "complete_pooling").get_xydata()[:, 0], np.full(8, pooled), 1e-6)
    seg = np.array(by_gid(fig, "complete_pooling_interval").get_segments())
    close(seg[:, 1, 0] - seg[:, 0, 0], 2 * Z95 / math.sqrt(w.sum()), 1e-6)
    xy = by_gid(fig, "partial_pooling").get_xydata()
    close(xy[:, 0], post)
    # arrows run from y_j to E[theta_j | y] wherever the shrinkage is visible (A: 28 -> 11.4)
    arrow = by_gid(fig, "shrinkage_arrow:A")
    assert arrow.xyann[0] == pytest.approx(y[0]) and arrow.xy[0] == pytest.approx(post[0])
    labels = [t.get_text() for t in fig.get_axes()[1].get_yticklabels()]
    assert labels == list(SCHOOLS)  # group labels from the fit


def test_densities_figure(curves8, mu8, tmp_path):
    path = tmp_path / "densities.png"
    fig = plot_densities(curves=curves8, mu_marginal=mu8, path=path)
    assert is_png(path)
    xy = by_gid(fig, "tau_density").get_xydata()
    close(xy[:, 0], curves8.tau[0])
    close(xy[:, 1], curves8.density[0])
    xy = by_gid(fig, "mu_density").get_xydata()
    close(xy[:, 0], mu8.mu[0])
    close(xy[:, 1], mu8.density[0])
    # improper priors: a constant shape, labelled as such
    for gid in ("tau_prior", "mu_prior"):
        line = by_gid(fig, gid)
        assert np.ptp(line.get_xydata()[:, 1]) == 0 and "improper" in line.get_label()


def test_densities_proper_prior_is_drawn_as_its_density(data, mu8):
    """half-Cauchy(5) tau: the prior curve is 2 / (pi 5 (1 + (tau/5)^2)). (Same priors and
    axis shape as tests/test_curves.py, so no new compile; the mu panel is reused.)"""
    axis = np.linspace(0.0, 25.0, 11)
    c = tau_curves(*data, tau=axis, tau_prior="half-cauchy:5", mu_prior="normal:0,5")
    fig = plot_densities(curves=c, mu_marginal=mu8)
    line = by_gid(fig, "tau_prior")
    close(line.get_xydata()[:, 1], 2.0 / (math.pi * 5.0 * (1.0 + (axis / 5.0) ** 2)), 1e-6)
    assert "improper" not in line.get_label()


def test_forest_figure(data, fit8, tmp_path):
    y, sigma = data
    path = tmp_path / "forest.png"
    fig = plot_forest(y, sigma, fit=fit8, units="points", path=path)
    assert is_png(path)
    study = by_gid(fig, "study")
    close(study.get_offsets()[:, 0], y)
    seg = np.array(by_gid(fig, "study_interval").get_segments())
    close(seg[:, 0, 0], y - Z95 * sigma, 1e-9)
    close(seg[:, 1, 0], y + Z95 * sigma, 1e-9)
    # marker area grows with the Fisher weight: the most precise study (E, sigma 9) is largest
    assert np.argmax(study.get_sizes()) == int(np.argmin(sigma))
    close(by_gid(fig, "shrunken").get_xydata()[:, 0], fit8.theta.mean[0])
    seg = np.array(by_gid(fig, "shrunken_interval").get_segments())
    close(seg[:, 0, 0], fit8.theta.quantiles[0, :, 0])
    close(seg[:, 1, 0], fit8.theta.quantiles[0, :, -1])
    xs = by_gid(fig, "pooled_diamond").get_xy()[:, 0]
    close([xs.min(), xs.max()], [fit8.mu.quantiles[0, 0], fit8.mu.quantiles[0, -1]])
    assert np.any(np.isclose(xs, fit8.mu.mean[0]))
    seg = np.array(by_gid(fig, "prediction_interval").get_segments())
    close(seg[0, :, 0], [fit8.theta_new.quantiles[0, 0], fit8.theta_new.quantiles[0, -1]])
    # the prediction interval is wider than the mean's
    assert np.ptp(seg[0, :, 0]) > xs.max() - xs.min()


def test_forest_needs_the_interval_levels(data, fit8):
    with pytest.raises(ValueError, match="0.05 quantile"):
        plot_forest(*data, fit=fit8, level=0.9)


def test_plot_all_writes_every_kind(data, fit8, curves8, mu8, tmp_path):
    paths = plot_all(
        *data,
        tmp_path / "all",
        fit=fit8,
        curves=curves8,
        mu_marginal=mu8,
        labels=SCHOOLS,
        prefix="x-",
    )
    assert sorted(paths) == sorted(KINDS)
    for kind, p in paths.items():
        assert p.endswith(f"x-{kind}.png") and is_png(p)


def run_cli(argv, capsys):
    try:
        code = hierjax.io.cli.main(cli_argv(argv))
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_plot_writes_the_files(tmp_path, capsys):
    out = tmp_path / "figs"
    code, _, err = run_cli(["plot", "--kind", "all", "--out", out], capsys)
    assert code == 0, err
    for kind in KINDS:
        assert is_png(out / f"eight_schools-{kind}.png"), err


def test_cli_plot_csv_one_kind(tmp_path, capsys, write_csv):
    from conftest import long_rows

    y, s = hierjax.eight_schools()
    csv = write_csv(long_rows({"schools": (y, s)}))
    code, _, err = run_cli(["plot", csv, "--kind", "impact", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["schools-impact.png"]


def test_cli_plot_one_dataset_of_several(tmp_path, capsys, write_csv):
    """``--dataset NAME`` draws that dataset only (it once crashed slicing Batch.width)."""
    from conftest import long_rows

    y, s = hierjax.eight_schools()
    csv = write_csv(long_rows({"schools": (y, s), "other": (y[:5] + 1.0, s[:5])}))
    out = tmp_path / "o"
    code, _, err = run_cli(
        ["plot", csv, "--dataset", "other", "--kind", "impact", "--out", out], capsys
    )
    assert code == 0, err
    assert [p.name for p in out.iterdir()] == ["other-impact.png"]


def test_cli_plot_forest_on_the_ratio_scale(tmp_path, capsys, write_csv):
    """``--transform exp`` reaches the forest plot: a log x axis, the no-effect line at 1."""
    import matplotlib

    matplotlib.use("Agg")
    from conftest import long_rows
    from matplotlib import pyplot as plt

    b = hierjax.beta_blockers()
    es = hierjax.log_odds_ratio(
        b.treated_deaths, b.treated_total, b.control_deaths, b.control_total
    )
    csv = write_csv(long_rows({"bb": (es.y, es.sigma)}))
    seen = []
    orig = plt.Figure.savefig

    def spy(fig, *a, **k):
        seen.append([ax.get_xscale() for ax in fig.axes])
        return orig(fig, *a, **k)

    plt.Figure.savefig = spy
    try:
        code, _, err = run_cli(
            ["plot", csv, "--kind", "forest", "--transform", "exp", "--out", tmp_path / "o"],
            capsys,
        )
    finally:
        plt.Figure.savefig = orig
    assert code == 0, err
    assert len(seen) == 1 and "log" in seen[0]


def test_cli_plot_errors(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["plot", "--out", tmp_path, "--tau-prior", "bogus"], capsys)
    assert code == 2 and "unknown tau prior" in err
    code, _, err = run_cli(["plot", "--out", tmp_path, "--kind", "pie"], capsys)
    assert code == 2 and "invalid choice" in err
    # matplotlib missing: one line pointing at the extra
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code, _, err = run_cli(["plot", "--out", tmp_path], capsys)
    assert code == 2 and "pip install 'hierjax[plots]'" in err and err.count("\n") == 1


def test_plots_extra_lists_matplotlib():
    import pathlib

    import tomllib

    root = pathlib.Path(__file__).resolve().parents[1]
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert any(
        d.startswith("matplotlib") for d in meta["project"]["optional-dependencies"]["plots"]
    )


# --------------------------------------------------------------------------- issue 25, item 6
def test_forest_weights_column(data, fit8):
    """The weight column shows bayesmeta's weights E[W_i(tau) | y], W_i = (1/v_i) / P, here
    integrated by the independent quadrature reference; they sum to 100%."""
    from reference import Reference

    y, sigma = data
    fig = plot_forest(y, sigma, fit=fit8)
    texts = [a.get_text() for a in fig.findobj(lambda a: a.get_gid() == "weight")]
    shown = np.array([float(t.rstrip("%")) for t in texts])
    ref = Reference(y, sigma)
    want = 100.0 * np.array([ref.mu_weight(i) for i in range(len(y))])
    np.testing.assert_allclose(shown, want, atol=0.051)
    assert abs(want.sum() - 100.0) < 1e-6
    # the most precise study weighs most
    assert int(np.argmax(shown)) == int(np.argmin(sigma))
    fig = plot_forest(y, sigma, fit=fit8, weights=False)
    assert not fig.findobj(lambda a: a.get_gid() == "weight")
    with pytest.raises(ValueError, match="one value per study"):
        plot_forest(y, sigma, fit=fit8, weights=np.ones(3))


def test_forest_ratio_measure_on_log_axis(data, fit8, tmp_path):
    """transform='exp': exp of every position (medians for the points), a log axis, the
    line of no effect at 1."""
    y, sigma = data
    y, sigma = y / 40.0, sigma / 40.0  # log-odds-like sizes; fit8 is for data, so
    f = hierjax.fit(y, sigma, groups=[SCHOOLS])  # the fit of these (same compiled shape)
    path = tmp_path / "forest_or.png"
    fig = plot_forest(y, sigma, fit=f, transform="exp", weights=False, path=path)
    assert is_png(path)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    tol = 1e-9 if f.mu.mean.dtype == np.float64 else 1e-6  # y / 40 rounded to float32
    close(by_gid(fig, "study").get_offsets()[:, 0], np.exp(y), tol)
    seg = np.array(by_gid(fig, "study_interval").get_segments())
    close(seg[:, 0, 0], np.exp(y - Z95 * sigma), tol)
    close(seg[:, 1, 0], np.exp(y + Z95 * sigma), tol)
    close(by_gid(fig, "shrunken").get_xydata()[:, 0], np.exp(f.theta.quantiles[0, :, 2]), tol)
    xs = by_gid(fig, "pooled_diamond").get_xy()[:, 0]
    close([xs.min(), xs.max()], np.exp([f.mu.quantiles[0, 0], f.mu.quantiles[0, -1]]), tol)
    assert np.any(np.isclose(xs, np.exp(f.mu.quantiles[0, 2]), rtol=tol))
    assert any(np.allclose(line.get_xdata(), 1.0) for line in ax.get_lines())
    with pytest.raises(ValueError, match="transform"):
        plot_forest(y, sigma, fit=f, transform="log", weights=False)


def test_file_stems_never_collide():
    from hierjax.io.plotting import STEM_MAX, file_stem

    assert file_stem("schools") == "schools"
    assert file_stem("a_b") == "a_b"
    assert file_stem("a b") != file_stem("a_b") and file_stem("a b").startswith("a_b-")
    assert file_stem("a b") != file_stem("a/b") != file_stem("a_b")
    assert file_stem("", 3) == "dataset3"
    for bad in ("../../etc/passwd", ".hidden", "-rf", "a\\b", "x\x00y"):
        stem = file_stem(bad)
        assert "/" not in stem and "\\" not in stem and not stem.startswith((".", "-"))
    long_a, long_b = "trial " * 40 + "A", "trial " * 40 + "B"
    sa, sb = file_stem(long_a), file_stem(long_b)
    assert sa != sb and len(sa) <= STEM_MAX and len(sb) <= STEM_MAX
    assert len(file_stem("x" * 200)) <= STEM_MAX
    assert file_stem("é") != file_stem("è")


def test_cli_plot_names_that_sanitise_alike_get_distinct_files(tmp_path, capsys, write_csv):
    from conftest import long_rows

    y, s = hierjax.eight_schools()
    csv = write_csv(long_rows({"a b": (y, s), "a_b": (y, s)}))
    code, _, err = run_cli(["plot", csv, "--kind", "impact", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert len(names) == 2 and "a_b-impact.png" in names, names
