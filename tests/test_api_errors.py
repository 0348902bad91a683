"""Bad input through the Python API: a ValueError naming the dataset and the field,
or, with ``skip_invalid=True``, status ``invalid`` and nan results for those datasets.

Only the ``skip_invalid`` tests compile, and they reuse the session's simulated
batch shape (``B = 20``, ``J = 8``, uniform tau, flat mu).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import N_SIM
from test_structure import assert_fits_equal

import hierjax

INVALID = hierjax.STATUS["invalid"]


def _y_s():
    y, s = hierjax.eight_schools()
    return y.copy(), s.copy()


def _ragged():
    """Three datasets as ragged lists (8, 5 and 4 groups)."""
    y, s = hierjax.eight_schools()
    return [y.copy(), y[:5].copy(), y[2:6].copy()], [s.copy(), s[:5].copy(), s[2:6].copy()]


# (id, field, bad value, (dataset index, group index), fragments)
BAD_VALUES = [
    ("nan-y", "y", np.nan, "y[3]", "finite"),
    ("inf-y", "y", np.inf, "y[3]", "finite"),
    ("minus-inf-y", "y", -np.inf, "y[3]", "finite"),
    ("sigma-zero", "sigma", 0.0, "sigma[3]", "> 0"),
    ("sigma-negative", "sigma", -4.0, "sigma[3]", "> 0"),
    ("sigma-nan", "sigma", np.nan, "sigma[3]", "finite"),
    ("sigma-inf", "sigma", np.inf, "sigma[3]", "finite"),
]


def _dataset_named(msg, name):
    """The message names dataset ``name`` (as ``dataset 1``, ``dataset '1'`` or ``dataset 'b'``)."""
    return re.search(r"dataset \'?" + re.escape(str(name)) + r"\b\'?", msg) is not None


@pytest.mark.parametrize(
    "field,value,where,why", [b[1:] for b in BAD_VALUES], ids=[b[0] for b in BAD_VALUES]
)
@pytest.mark.parametrize("layout", ["single", "rectangular", "ragged", "named"])
def test_bad_value_raises_naming_dataset_and_field(layout, field, value, where, why):
    if layout == "single":
        y, s = _y_s()
        arrays = {"y": y, "sigma": s}
        arrays[field][2] = value
        target, kw = 0, {}
        args = (arrays["y"], arrays["sigma"])
    elif layout == "rectangular":
        y, s = _y_s()
        Y, S = np.stack([y, y + 1, y - 1]), np.stack([s, s, s])
        (Y if field == "y" else S)[1, 2] = value
        target, kw, args = 1, {}, (Y, S)
    else:
        ys, ss = _ragged()
        (ys if field == "y" else ss)[2][2] = value
        target = 2
        kw = {"names": ["first", "second", "third"]} if layout == "named" else {}
        if layout == "named":
            target = "third"
        args = (ys, ss)
    with pytest.raises(ValueError) as e:
        hierjax.fit(*args, **kw)
    msg = str(e.value)
    assert _dataset_named(msg, target), msg
    assert where in msg and why in msg, msg
    assert "\n" not in msg


def test_message_names_first_bad_dataset_and_counts_the_rest():
    ys, ss = _ragged()
    ys[1][0] = np.nan
    ss[2][1] = 0.0
    with pytest.raises(ValueError) as e:
        hierjax.fit(ys, ss, names=["a", "b", "c"])
    msg = str(e.value)
    assert _dataset_named(msg, "b") and "y[1]" in msg
    assert "1 more" in msg


def test_garbage_in_masked_slots_is_not_an_error():
    y, s = _y_s()
    mask = np.ones(8, bool)
    mask[5:] = False
    y[5], s[6], s[7] = np.nan, 0.0, -1.0
    probs = hierjax.engine.batch.validate(hierjax.as_batch(y, s, mask=mask), 3)
    assert probs == [None]


@pytest.mark.parametrize("layout", ["single", "ragged", "rectangular-object"])
def test_non_numeric_value(layout):
    y, s = _y_s()
    if layout == "single":
        yy = list(y)
        yy[3] = "abc"
        args, target = (yy, s), 0
    elif layout == "ragged":
        ys, ss = _ragged()
        ys = [list(v) for v in ys]
        ys[1][3] = "abc"
        args, target = (ys, ss), 1
    else:
        Y = np.stack([y, y, y]).astype(object)
        Y[1, 3] = "abc"
        args, target = (Y, np.stack([s, s, s])), 1
    with pytest.raises(ValueError) as e:
        hierjax.fit(*args)
    msg = str(e.value)
    assert "y" in msg and ("numeric" in msg or "number" in msg), msg
    assert _dataset_named(msg, target), msg
    assert len(msg) < 300, f"message too long ({len(msg)} characters): {msg[:300]}..."


def test_two_groups_need_three_under_uniform_flat():
    with pytest.raises(ValueError) as e:
        hierjax.fit(
            [[1.0, 2.0, 3.0], [1.0, 2.0]], [[1.0, 1.0, 1.0], [1.0, 1.0]], names=["ok", "short"]
        )
    msg = str(e.value)
    assert _dataset_named(msg, "short") and "2 group" in msg and "3" in msg, msg
    assert "uniform" in msg and "flat" in msg


@pytest.mark.parametrize(
    "tau_prior,mu_prior,need",
    [
        ("half-cauchy:5", "flat", 1),
        ("uniform", "normal:0,10", 2),
        ("half-normal:3", "normal:0,10", 1),
    ],
)
def test_min_groups_by_prior(tau_prior, mu_prior, need):
    """One fewer group than the prior pair needs is an error naming the dataset."""
    from hierjax.engine.batch import min_groups

    tp, mp = hierjax.parse_tau_prior(tau_prior), hierjax.parse_mu_prior(mu_prior)
    assert min_groups(tp, mp) == need
    if need > 1:
        with pytest.raises(ValueError, match="dataset 0.*1 group"):
            hierjax.fit([1.0], [1.0], tau_prior=tau_prior, mu_prior=mu_prior)


@pytest.mark.parametrize(
    "y,sigma,kw,fragment",
    [
        (np.zeros(8), np.ones(7), {}, "shape"),
        (np.zeros((2, 8)), np.ones((3, 8)), {}, "shape"),
        (np.zeros((2, 8)), np.ones(8), {}, "shape"),
        (np.zeros((2, 2, 8)), np.ones((2, 2, 8)), {}, "shape"),
        (np.zeros((2, 8)), np.ones((2, 8)), {"mask": np.ones((2, 7), bool)}, "mask"),
        (np.zeros((2, 8)), np.ones((2, 8)), {"names": ["a"]}, "names"),
        ([np.zeros(4), np.zeros(3)], [np.ones(4), np.ones(4)], {}, "dataset 1"),
        ([np.zeros(4), np.zeros(3)], [np.ones(4)], {}, "sigma"),
        ([np.zeros(4), np.zeros(3)], np.ones((2, 4)), {}, "sigma"),
        ([np.zeros(4)], [np.ones(4)], {"mask": np.ones((1, 4), bool)}, "mask"),
    ],
    ids=[
        "J-mismatch",
        "B-mismatch",
        "batch-vs-single",
        "3-d",
        "mask-shape",
        "names-length",
        "ragged-lengths",
        "ragged-count",
        "ragged-vs-array",
        "ragged-with-mask",
    ],
)
def test_mismatched_shapes(y, sigma, kw, fragment):
    with pytest.raises(ValueError) as e:
        hierjax.fit(y, sigma, **kw)
    msg = str(e.value)
    assert fragment in msg or fragment.replace("names", "name") in msg, msg


@pytest.mark.parametrize(
    "y,sigma,fragment",
    [
        ([], [], "no groups"),
        (np.zeros((0, 8)), np.ones((0, 8)), "no datasets"),
        (np.zeros((1, 0)), np.ones((1, 0)), "no groups"),
        ([np.zeros(3), np.zeros(0)], [np.ones(3), np.ones(0)], "no groups"),
    ],
    ids=["empty-list", "zero-datasets", "zero-groups", "ragged-empty-dataset"],
)
def test_empty_input(y, sigma, fragment):
    with pytest.raises(ValueError) as e:
        hierjax.fit(y, sigma)
    assert fragment in str(e.value), str(e.value)


def test_empty_ragged_dataset_is_named():
    with pytest.raises(ValueError) as e:
        hierjax.fit([np.zeros(3), np.zeros(0)], [np.ones(3), np.ones(0)], names=["a", "b"])
    assert _dataset_named(str(e.value), "b"), str(e.value)


@pytest.mark.parametrize(
    "levels",
    [[0.0, 0.5], [0.5, 1.0], [1.5], [-0.1, 0.5], [np.nan], [0.5, np.inf]],
    ids=["zero", "one", "above-one", "negative", "nan", "inf"],
)
def test_bad_quantile_levels(levels):
    y, s = _y_s()
    with pytest.raises(ValueError, match="quantile"):
        hierjax.fit(y, s, quantiles=levels)


@pytest.mark.parametrize("nodes", [0, 2, 3, 5, 7, -4, 47])
def test_bad_nodes(nodes):
    y, s = _y_s()
    with pytest.raises(ValueError, match="nodes"):
        hierjax.fit(y, s, nodes=nodes)


@pytest.mark.parametrize(
    "spec",
    [
        "half-cauchy",
        "foo:1",
        "half-normal:-1",
        "half-cauchy:0",
        "half-t:3",
        "half-t:-1,2",
        "exponential:0",
        "uniform:3",
        "half-cauchy:nan",
        "half-cauchy:inf",
        5.0,
    ],
)
def test_bad_tau_prior(spec):
    y, s = _y_s()
    with pytest.raises(ValueError):
        hierjax.fit(y, s, tau_prior=spec)


@pytest.mark.parametrize(
    "spec", ["normal", "normal:0", "normal:0,-1", "normal:nan,1", "cauchy:0,1", "flat:1", None]
)
def test_bad_mu_prior(spec):
    y, s = _y_s()
    with pytest.raises(ValueError):
        hierjax.fit(y, s, mu_prior=spec)


# --------------------------------------------------------------------------------------
# skip_invalid
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def skipped(sim):
    """The simulated batch with datasets 2, 7, 11 and 19 made invalid, fitted with skip_invalid."""
    y, s = sim.y.copy(), sim.sigma.copy()
    mask = np.ones(y.shape, bool)
    y[2, 4] = np.nan
    s[7, 0] = 0.0
    s[11, 3] = np.inf
    mask[19, 2:] = False  # two groups: too few under uniform / flat
    names = [f"d{b}" for b in range(N_SIM)]
    with pytest.raises(ValueError) as e:
        hierjax.fit(y, s, mask=mask, names=names)
    assert _dataset_named(str(e.value), "d2") and "3 more" in str(e.value)
    f = hierjax.fit(y, s, mask=mask, names=names, skip_invalid=True)
    return f, [2, 7, 11, 19]


def test_skip_invalid_marks_status_and_nans(skipped):
    f, bad = skipped
    good = [b for b in range(N_SIM) if b not in bad]
    assert np.all(f.status[bad] & INVALID)
    assert not np.any(f.status[good] & INVALID)
    assert all(hierjax.status_text(f.status[b]).split(";")[-1] == "invalid" for b in bad)
    for name in ("mu", "tau", "theta", "theta_new"):
        m = getattr(f, name)
        for field in ("mean", "sd", "quantiles", "p_gt0"):
            a = getattr(m, field)[bad]
            assert np.all(np.isnan(a)), f"{name}.{field} not nan for invalid datasets"
        assert not np.any(m.mean_exists[bad]) and not np.any(m.sd_exists[bad])
    for field in ("tau_mode", "log_marginal_likelihood", "grid_error"):
        assert np.all(np.isnan(getattr(f, field)[bad])), field
    notes = dict(enumerate(f.notes))
    assert "y[5]" in notes[2] and "d2" in notes[2]
    assert "sigma[1]" in notes[7] and "d7" in notes[7]
    assert "sigma[4]" in notes[11] and "d11" in notes[11]
    assert "2 group" in notes[19] and "d19" in notes[19]
    assert all(notes[b] == "" for b in good)
    np.testing.assert_array_equal(f.n_groups[bad], [8, 8, 8, 2])


def test_skip_invalid_leaves_valid_datasets_alone(skipped, sim_fit):
    f, bad = skipped
    good = np.array([b for b in range(N_SIM) if b not in bad])
    # The same inputs for these datasets, but not the same batches: the general grid's
    # pass (the fast grid's flagged datasets, and the invalid ones' stand-ins) has another
    # composition and shape, and XLA's vectorised round-off depends on the shape. So the
    # results agree to round-off (the structural tolerance), not bit for bit.
    assert_fits_equal(_subset(f, good), _subset(sim_fit, good), what="skip-invalid vs all valid: ")
    np.testing.assert_array_equal(f.status[good], sim_fit.status[good], err_msg="status")


def _subset(f: hierjax.Fit, idx) -> hierjax.Fit:
    """The datasets ``idx`` of a Fit."""

    def take(a):
        if isinstance(a, hierjax.Marginal):
            return hierjax.Marginal(*[x[idx] for x in a])
        if isinstance(a, tuple):
            return tuple(a[i] for i in idx)
        return a if a.ndim == 1 and a.shape[0] != len(f.names) else a[idx]

    return hierjax.Fit(*[a if k == "levels" else take(a) for k, a in zip(f._fields, f)])
