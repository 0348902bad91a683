"""Structural properties of the batched engine.

* batching is invisible: a vmapped batch equals a Python loop of single fits,
  padding (via ``mask`` or ``pad_to``) and chunking change nothing;
* one compile per (shapes, prior types, dtype): prior *values* and ragged sizes
  that pad to the same ``J`` never recompile;
* dtype in equals dtype out; ``import hierjax`` leaves JAX's configuration alone;
* basic sanity of the summaries on ordinary data.

"Equal" for differently batched runs means: bit-for-bit on the kernel's
inputs where they are identical, otherwise within ``1e-12`` (float64) / ``1e-6``
(float32) relative to the quantity's natural scale (its own magnitude; for
locations at least the posterior sd, for probabilities and the relative
grid-error estimate at least 1).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import BATCH_RTOL, DEFAULT_DTYPE, X64, eps_of

import hierjax
from hierjax.engine import fitting as engine
from hierjax.engine.batch import as_batch
from hierjax.engine.fitting import fit_standardized

MARGINALS = ("mu", "tau", "theta", "theta_new")
LOCATIONS = ("mu", "theta", "theta_new")
FLOAT_FIELDS = ("tau_mode", "log_marginal_likelihood", "grid_error")


def _close(actual, expected, floor=None, rtol=None, err_msg=""):
    """``|a - e| <= rtol * max(|e|, floor)`` elementwise; nan/inf patterns must match."""
    rtol = BATCH_RTOL if rtol is None else rtol
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{err_msg}: shape {a.shape} != {e.shape}"
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=f"{err_msg}: nan pattern")
    inf = np.isinf(e)
    np.testing.assert_array_equal(a[inf], e[inf], err_msg=f"{err_msg}: infinities")
    fin = np.isfinite(e)
    scale = np.abs(e)
    if floor is not None:
        scale = np.fmax(scale, np.broadcast_to(np.asarray(floor, np.float64), e.shape))
    with np.errstate(invalid="ignore", over="ignore"):
        bad = fin & ~(np.abs(a - e) <= rtol * scale)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{err_msg}: {int(bad.sum())} of {int(fin.sum())} values differ beyond rtol={rtol}; "
            f"first at {idx}: {a[idx]!r} vs {e[idx]!r} (relative {abs(a[idx] - e[idx]) / scale[idx]:.2g})"
        )


def assert_fits_equal(got: hierjax.Fit, want: hierjax.Fit, rtol=None, width=None, what=""):
    """Every field of two Fits agrees (see the module doc for the tolerance).

    A location's natural scale is its posterior sd, or where that does not exist
    (heavy tails) the width of its outer quantile interval.
    """
    J = want.theta.mean.shape[1] if width is None else width
    for name in MARGINALS:
        g, w = getattr(got, name), getattr(want, name)
        if name == "theta":
            g = type(g)(*[a[:, :J] for a in g])
            w = type(w)(*[a[:, :J] for a in w])
        spread = w.quantiles[..., -1] - w.quantiles[..., 0]
        loc_floor = np.where(np.isfinite(w.sd), w.sd, spread) if name in LOCATIONS else None
        _close(g.mean, w.mean, loc_floor, rtol, f"{what}{name}.mean")
        _close(g.sd, w.sd, None, rtol, f"{what}{name}.sd")
        _close(
            g.quantiles,
            w.quantiles,
            None if loc_floor is None else loc_floor[..., None],
            rtol,
            f"{what}{name}.quantiles",
        )
        _close(g.p_gt0, w.p_gt0, 1.0, rtol, f"{what}{name}.p_gt0")
        np.testing.assert_array_equal(
            g.mean_exists, w.mean_exists, err_msg=f"{what}{name}.mean_exists"
        )
        np.testing.assert_array_equal(g.sd_exists, w.sd_exists, err_msg=f"{what}{name}.sd_exists")
        for a, b in zip(g, w):
            assert np.asarray(a).dtype == np.asarray(b).dtype, f"{what}{name}: dtype"
    _close(got.tau_mode, want.tau_mode, None, rtol, f"{what}tau_mode")
    _close(
        got.log_marginal_likelihood,
        want.log_marginal_likelihood,
        1.0,
        rtol,
        f"{what}log_marginal_likelihood",
    )
    _close(got.grid_error, want.grid_error, 1.0, rtol, f"{what}grid_error")
    np.testing.assert_array_equal(got.status, want.status, err_msg=f"{what}status")
    np.testing.assert_array_equal(got.n_groups, want.n_groups, err_msg=f"{what}n_groups")
    np.testing.assert_array_equal(got.mask[:, :J], want.mask[:, :J], err_msg=f"{what}mask")
    np.testing.assert_array_equal(got.levels, want.levels, err_msg=f"{what}levels")
    assert got.notes == want.notes
    for f in FLOAT_FIELDS:
        assert getattr(got, f).dtype == getattr(want, f).dtype, f"{what}{f}: dtype"


def concat_fits(fits) -> hierjax.Fit:
    """Stack single-dataset Fits along the batch axis (names etc. concatenated)."""

    def cat(*xs):
        return np.concatenate(xs, axis=0)

    out = {}
    for name in hierjax.Fit._fields:
        vals = [getattr(f, name) for f in fits]
        if name in MARGINALS:
            out[name] = type(vals[0])(*[cat(*parts) for parts in zip(*vals)])
        elif name == "levels":
            out[name] = vals[0]
        elif name in ("names", "groups", "notes"):
            out[name] = tuple(v for t in vals for v in t)
        else:
            out[name] = cat(*vals)
    return hierjax.Fit(**out)


def ragged(sim, sizes):
    return (
        [sim.y[b, :n].copy() for b, n in enumerate(sizes)],
        [sim.sigma[b, :n].copy() for b, n in enumerate(sizes)],
    )


# --------------------------------------------------------------------------------------
# batching is invisible
# --------------------------------------------------------------------------------------


def test_vmap_equals_python_loop(sim, sim_fit):
    loop = concat_fits([hierjax.fit(sim.y[b], sim.sigma[b]) for b in range(sim.y.shape[0])])
    assert sim_fit.theta.mean.shape == loop.theta.mean.shape == (sim.y.shape[0], 8)
    assert_fits_equal(sim_fit._replace(names=loop.names), loop, what="batch vs loop: ")


def test_chunked_equals_unchunked(sim, sim_fit):
    # 20 datasets in chunks of 3: six full chunks and a remainder of 2.
    chunked = hierjax.fit(sim.y, sim.sigma, chunk=3)
    assert_fits_equal(chunked, sim_fit, what="chunk=3 vs default: ")


def test_host_threads_change_nothing(sim, monkeypatch):
    """On a CPU, fit runs its pieces (here 20 datasets: eighths of a 32-dataset block, so
    five pieces of 4) on a pool of host threads; one thread or several, the pieces are
    the same and come back in order: bit for bit the same fit."""
    fits = []
    for workers in (1, 3):
        monkeypatch.setattr(engine, "_host_workers", lambda w=workers: w)
        fits.append(hierjax.fit(sim.y, sim.sigma))
    for a, b in zip(jax.tree.leaves(fits[0]), jax.tree.leaves(fits[1])):
        np.testing.assert_array_equal(a, b)


def test_fast_grid_choice():
    """The fast grid (kappa = 1) is tried only where its integrand is smooth at both ends
    and it usually suffices: few groups, a tau tail alpha >= 3.5, a prior with a known
    integer power (or faster decay) at tau = 0."""
    from hierjax.model.priors import CustomTau, FlatMu, HalfCauchy, NormalMu, UniformSqrt

    applies = engine._fast_grid_applies
    J = np.array([3, 5, 6, 8, 16, 17, 50])
    np.testing.assert_array_equal(
        applies(J, hierjax.Uniform(), FlatMu()), [False, False, True, True, True, False, False]
    )
    # half-Cauchy: alpha = J (flat mu) or J + 1 (normal mu)
    np.testing.assert_array_equal(
        applies(np.array([3, 4]), HalfCauchy(np.asarray(1.0)), FlatMu()), [False, True]
    )
    np.testing.assert_array_equal(
        applies(
            np.array([3]), HalfCauchy(np.asarray(1.0)), NormalMu(np.asarray(0.0), np.asarray(1.0))
        ),
        [True],
    )
    assert not applies(np.array([8]), UniformSqrt(), FlatMu()).any()  # tau^-1/2 at 0
    custom = CustomTau(lambda t: -t, tail_power=np.inf)  # tau^0 at 0
    assert custom.origin_power == 0 and applies(np.array([8]), custom, FlatMu()).all()
    spike = CustomTau(lambda t: -0.7 * jnp.log(t) - t)  # tau^-0.7 at 0
    assert not applies(np.array([8]), spike, FlatMu()).any()
    wobbly = CustomTau(lambda t: jnp.sin(jnp.log(t)) - t)  # no power at 0
    assert wobbly.origin_power is None
    assert not applies(np.array([8]), wobbly, FlatMu()).any()


def test_moments_only_equals_full_summaries(sim, sim_fit):
    """``quantiles=()`` skips the quantile searches and changes no other number, beyond
    the accuracy goal. The two fits use different grids for most datasets: moments only,
    the fast grid maps the whole tau line from the data's spread (no search for the mode),
    and a dataset either grid leaves unresolved is fitted again on the general grid (every
    grid is within ~4e-9 sd of the exact numbers in float64)."""
    m = hierjax.fit(sim.y, sim.sigma, quantiles=())
    assert m.mu.quantiles.shape == (sim.y.shape[0], 0)
    assert m.theta.quantiles.shape == sim.y.shape + (0,)
    goal = 1e-8 if X64 else 1e-4
    for name in ("mu", "tau", "theta", "theta_new"):
        a, b = getattr(m, name), getattr(sim_fit, name)
        sd = b.sd if name == "theta" else b.sd[:, None]
        for field in ("mean", "sd", "p_gt0"):
            x, y = getattr(a, field), getattr(b, field)
            unit = {"mean": sd.reshape(y.shape), "sd": y, "p_gt0": 1.0}[field]
            np.testing.assert_array_less(
                np.abs(x - y), goal * unit + 1e-300, err_msg=f"{name}.{field}"
            )
    np.testing.assert_allclose(m.tau_mode, sim_fit.tau_mode, rtol=goal)
    np.testing.assert_array_equal(m.status, sim_fit.status)


def test_mask_with_garbage_in_padded_slots_changes_nothing(sim):
    sizes = [3 + b % 6 for b in range(sim.y.shape[0])]  # 3..8 real groups
    ys, ss = ragged(sim, sizes)
    want = hierjax.fit(ys, ss)
    mask = np.arange(8)[None, :] < np.array(sizes)[:, None]
    y = np.where(mask, sim.y, np.nan)
    s = np.where(mask, sim.sigma, -1.0)
    y[~mask & (np.arange(8)[None, :] % 2 == 0)] = np.inf
    s[~mask & (np.arange(8)[None, :] % 3 == 0)] = 0.0
    y[0, 7], s[0, 7] = 1e300, np.nan
    got = hierjax.fit(y, s, mask=mask)
    # The kernel sees identical arrays: the results must be identical, bit for bit.
    assert_fits_equal(got, want, rtol=0.0, what="mask+garbage vs ragged: ")
    np.testing.assert_array_equal(got.n_groups, sizes)
    assert np.all(np.isnan(got.theta.mean[~mask]))
    assert np.all(np.isnan(got.theta.quantiles[~mask]))


# --------------------------------------------------------------------------------------
# one compile per shape; padding to a larger J
# --------------------------------------------------------------------------------------


class _Runs:
    """Results and compile counts of the half-Cauchy, ``B = 6`` sequence of fits."""


@pytest.fixture(scope="module")
def hc_runs(sim):
    """A sequence of fits with a half-Cauchy prior and ``B = 6``, counting compiles.

    Module-scoped so that the counts do not depend on test order: every key here
    (``B = 6``, half-Cauchy tau, flat mu, five levels) is compiled by no other test.
    ``r.traces`` records each trace of the per-dataset kernel as ``(step, n, kappa, J)``.
    """
    B = 6
    size = fit_standardized._cache_size
    y, s = sim.y[:B], sim.sigma[:B]
    # Start with no compiled kernels, so that hierjax.engine.cache.make_room has no reason to drop
    # them part-way: late in the whole suite the process nears its memory-map limit, and a
    # drop between two of the fits below recompiled a kernel (CI on e81779c, float32).
    jax.clear_caches()
    r = _Runs()
    r.traces = []
    step = ["first"]
    real = engine.fit_dataset

    def spy(*args, **kwargs):
        n = args[7] if len(args) > 7 else kwargs.get("n")
        kappa = args[8] if len(args) > 8 else kwargs.get("kappa")  # None: the general grid
        r.traces.append((step[0], n, kappa, int(args[0].shape[0])))
        return real(*args, **kwargs)

    engine.fit_dataset = spy
    try:
        r.n0 = size()
        hierjax.fit(y, s, tau_prior="half-cauchy:5")
        r.n_first = size()
        step[0] = "values"
        hierjax.fit(3.0 * y - 7.0, 2.0 * s, tau_prior="half-cauchy:7")
        hierjax.fit(y, s, tau_prior=hierjax.HalfCauchy(np.asarray(0.5)))
        hierjax.fit(y[::-1].copy(), s[::-1].copy(), tau_prior="half-cauchy:25")
        r.n_values = size()
        step[0] = "ragged8"
        r.sizes8 = [3, 4, 5, 6, 7, 8]
        ys, ss = ragged(sim, r.sizes8)
        r.ragged8 = hierjax.fit(ys, ss, tau_prior="half-cauchy:5")
        r.n_ragged8 = size()
        step[0] = "J16"
        big = hierjax.simulate(B, 12, seed=11)
        hierjax.fit(big.y, big.sigma, tau_prior="half-cauchy:5")
        r.n_J16 = size()
        step[0] = "ragged16"
        ys16 = [big.y[b, : 9 + b] for b in range(B - 2)] + [big.y[4], big.y[5, :10]]
        ss16 = [big.sigma[b, : 9 + b] for b in range(B - 2)] + [big.sigma[4], big.sigma[5, :10]]
        hierjax.fit(ys16, ss16, tau_prior="half-cauchy:3")
        r.n_ragged16 = size()
        step[0] = "padded16"
        # the 3..8-group datasets again, padded to J = 16 (the kernel compiled just above)
        r.wide = as_batch(ys, ss, pad_to=16)
        r.padded16 = hierjax.fit(r.wide, tau_prior="half-cauchy:5")
        r.n_padded16 = size()
    finally:
        engine.fit_dataset = real
    return r


def test_one_compile_per_shape(hc_runs):
    r = hc_runs
    why = f" (kernel traces as (step, n, kappa, J): {r.traces})"
    # A fit may run two kernels (the fast grid, then the general grid for the datasets
    # it flags), each compiled once per block shape: no kernel is ever traced twice.
    keys = [t[1:] for t in r.traces]
    assert len(keys) == len(set(keys)), "a kernel was traced twice for the same shape" + why
    assert r.n_first > r.n0, "the first fit of a new shape compiled nothing" + why
    # new prior values and data values compile only a kernel that had not been needed yet
    assert r.n_values - r.n_first == sum(t[0] == "values" for t in r.traces), why
    # ragged datasets padded to an already compiled J, and pad_to=16 on the J = 16 kernels
    # of the fit just before, compile only kernels not used before for that J
    for step, J in (("ragged8", 8), ("ragged16", 16), ("padded16", 16)):
        assert all(t[3] == J for t in r.traces if t[0] == step), why
    assert {t[3] for t in r.traces if t[0] == "J16"} == {16}, why
    np.testing.assert_array_equal(r.ragged8.n_groups, r.sizes8)


def test_pad_to_larger_J_changes_nothing(hc_runs):
    r = hc_runs
    assert r.wide.y.shape == (6, 16)
    got, want = r.padded16, r.ragged8
    # pad_to widens the kernels only (16 groups: see the trace test above); the results
    # keep the input's own width, 8
    assert got.theta.mean.shape == want.theta.mean.shape == (6, 8)
    assert got.theta.quantiles.shape == (6, 8, 5) and got.mask.shape == (6, 8)
    assert_fits_equal(got, want, width=8, what="pad_to=16 vs 8: ")


# One spec per prior family; the data-dependent ones are bound to three sigma_j.
TAU_SPECS = (
    "uniform",
    "half-normal:1",
    "half-cauchy:1",
    "half-t:3,1",
    "exponential:1",
    "sqrt",
    "half-logistic:1",
    "lomax:2,1",
    "rayleigh:1",
    "log-normal:0,1",
    "inv-gamma:2,1",
    "jeffreys",
    "overall-jeffreys",
    "berger-deely",
    "conventional",
    "dumouchel",
    "shrinkage",
    "i2",
)


def _one_of_each_family(scale=1.0):
    from hierjax.model.priors import DataTauPrior, parse_mu_prior, parse_tau_prior

    sigma = np.array([1.0, 2.0, 3.0]) * scale
    taus = [parse_tau_prior(s) for s in TAU_SPECS]
    taus = [p.bind(sigma) if isinstance(p, DataTauPrior) else p.rescaled(1.0 / scale) for p in taus]
    return taus + [
        parse_tau_prior(lambda t: -t),
        parse_mu_prior("flat"),
        parse_mu_prior(f"normal:0,{scale}"),
    ]


def test_prior_families_have_distinct_tree_structures():
    """A prior's family is part of its tree structure (so of every jit cache key), its
    values are not. With ``register_dataclass`` (jaxlib 0.10) a half-normal and a
    half-Cauchy prior had *equal* structures, and a half-normal fit once ran the
    half-Cauchy kernel compiled before it (status ok, the wrong posterior)."""
    import dataclasses

    from hierjax.model import priors as P

    priors = _one_of_each_family()
    families = {
        c
        for c in vars(P).values()
        if isinstance(c, type)
        and dataclasses.is_dataclass(c)
        and issubclass(c, (P.TauPrior, P.MuPrior))
    }
    assert {type(p) for p in priors} == families, "a prior family is missing here"
    structures = [jax.tree.structure(p) for p in priors]
    names = [type(p).__name__ for p in priors]
    assert len(set(names)) == len(names)
    for i in range(len(priors)):
        for k in range(i + 1, len(priors)):
            assert structures[i] != structures[k], (names[i], names[k])
    # other values, the same families: the same structures (no recompile); the custom
    # prior's structure holds its function, a new lambda here
    others = [jax.tree.structure(p) for p in _one_of_each_family(scale=2.5)]
    assert others[:-3] + others[-2:] == structures[:-3] + structures[-2:]


def test_jit_dispatch_tells_prior_classes_apart():
    """Many classes registered like the priors, with identical fields: ``jax.jit`` runs
    each one's own executable. Under ``register_dataclass`` 680 of 4000 such calls (2000
    classes, twice) ran another class's executable, the first at the 14th class."""
    import dataclasses

    from hierjax.model.priors import _pytree

    classes = []
    for i in range(300):
        cls = type(
            f"P{i}",
            (),
            {"__annotations__": {"scale": jax.Array}, "value": lambda self, i=i: self.scale * i},
        )
        classes.append(_pytree(dataclasses.dataclass(frozen=True)(cls)))

    f = jax.jit(lambda p: p.value())
    for _ in range(2):
        got = [int(f(cls(jnp.float32(1.0)))) for cls in classes]
        assert got == list(range(len(classes)))


def test_bucket_widths():
    """Each dataset's width holds its last real group (holes included); widths shared by
    fewer than ``min_bucket`` datasets join the next wider one, up to J."""
    J = 64
    last = np.array([3, 8, 9, 16, 17, 40, 64, 5, 2])
    mask = np.arange(J)[None, :] < last[:, None]
    mask[7, :] = False
    mask[7, [0, 1, 30]] = True  # three groups, the last in column 31
    np.testing.assert_array_equal(engine.bucket_widths(mask, 1), [8, 8, 16, 16, 32, 64, 64, 32, 8])
    np.testing.assert_array_equal(
        engine.bucket_widths(mask, 3),  # 16 joins 32
        [8, 8, 32, 32, 32, 64, 64, 32, 8],
    )
    np.testing.assert_array_equal(
        engine.bucket_widths(mask, 4),  # 8: 3, 16: 5, 32: 2
        [16, 16, 16, 16, 64, 64, 64, 64, 16],
    )
    np.testing.assert_array_equal(engine.bucket_widths(mask, 100), [J] * 9)
    np.testing.assert_array_equal(engine.bucket_widths(mask[:, :8] & False, 1), [8] * 9)


def test_narrow_kernels_change_nothing(hc_runs, sim, monkeypatch):
    """A ragged batch fitted by kernels of its datasets' own widths (``min_bucket=1``)
    agrees with the same batch at one width; the kernels see 8- and 16-wide blocks.
    (The half-Cauchy B = 6 shapes of ``hc_runs``: nothing new to compile.)"""
    big = hierjax.simulate(6, 12, seed=11)
    ys = [sim.y[0, :3], big.y[0], sim.y[1], big.y[1, :10], sim.y[2, :5], sim.y[3, :7]]
    ss = [
        sim.sigma[0, :3],
        big.sigma[0],
        sim.sigma[1],
        big.sigma[1, :10],
        sim.sigma[2, :5],
        sim.sigma[3, :7],
    ]
    want = hierjax.fit(ys, ss, tau_prior="half-cauchy:5")
    widths = []
    real = engine.fit_standardized

    def spy(y, *args, **kwargs):
        widths.append(int(y.shape[1]))
        return real(y, *args, **kwargs)

    monkeypatch.setattr(engine, "fit_standardized", spy)
    got = hierjax.fit(ys, ss, tau_prior="half-cauchy:5", min_bucket=1)
    assert set(widths) == {8, 16}, widths
    assert got.theta.mean.shape == want.theta.mean.shape == (6, 12)  # the longest: 12
    assert_fits_equal(got, want, what="widths 8 and 16 vs 16: ")
    assert np.all(np.isnan(got.theta.quantiles[0, 3:]))


def test_results_keep_the_inputs_width():
    """Kernels run on groups padded to a power of two; no result shows that padding.
    A ``[B, 13]`` array (13 studies, as BCG) gives ``[B, 13]`` groups in every result, as
    does a ragged list whose longest dataset has 13; padding the user gave with a mask
    stays (16 columns in, 16 out), and the 13 real groups agree with the trimmed input."""
    sim = hierjax.simulate(3, 13, seed=5)
    y, s = sim.y, sim.sigma
    key = jax.random.key(0)
    pad = ((0, 0), (0, 3))
    mask16 = np.pad(np.ones((3, 13), bool), pad)
    fits = {
        "[B, 13]": hierjax.fit(y, s),
        "ragged": hierjax.fit([y[0, :5], y[1], y[2, :9]], [s[0, :5], s[1], s[2, :9]]),
        "masked [B, 16]": hierjax.fit(
            np.pad(y, pad), np.pad(s, pad, constant_values=1.0), mask=mask16
        ),
    }
    for what, f in fits.items():
        J = 16 if what.startswith("masked") else 13
        assert f.theta.mean.shape == f.mask.shape == (3, J), what
        assert f.theta.quantiles.shape == (3, J, 5), what
    assert_fits_equal(fits["masked [B, 16]"], fits["[B, 13]"], width=13, what="mask vs own: ")
    assert np.all(np.isnan(fits["masked [B, 16]"].theta.mean[:, 13:]))

    post = hierjax.posterior(y, s)
    assert post.y.shape == post.mask.shape == (3, 13) and post.kernel_groups == 16
    q = hierjax.quantile(post, "theta", [0.25, 0.5])
    assert q.shape == (3, 13, 2)
    ref = fits["[B, 13]"].theta.quantiles[..., 1:3]
    np.testing.assert_allclose(q, ref, atol=1e-4 * float(np.max(fits["[B, 13]"].theta.sd)))
    assert hierjax.pdf(post, "theta", np.zeros((3, 13, 2))).shape == (3, 13, 2)
    assert hierjax.interval(post, "theta", 0.9)[0].shape == (3, 13)
    assert hierjax.predictive_check(post).p_value.shape == (3, 13)
    assert hierjax.shrinkage(post).shape == (3, 13)
    w = hierjax.weights(post)
    assert w.mu.shape == w.theta_prior.shape == (3, 13) and w.theta.shape == (3, 13, 13)
    np.testing.assert_allclose(np.sum(w.theta, axis=-1), 1.0, rtol=1e-5)
    assert hierjax.pairwise_prob(post).shape == (3, 13, 13)
    assert hierjax.predictive_prob(post, 0.0, 1.0, tau=1.0).shape == (3,)
    d = hierjax.draws(y, s, key=key, num_draws=4)
    assert d.theta.shape == (3, 4, 13) and d.mask.shape == (3, 13)
    c = hierjax.tau_curves(y, s, tau=[0.5, 1.0])
    assert c.theta_mean.shape == c.theta_sd.shape == (3, 2, 13) and c.mask.shape == (3, 13)


# --------------------------------------------------------------------------------------
# dtypes and global configuration
# --------------------------------------------------------------------------------------


def _float_dtypes(f: hierjax.Fit):
    out = {}
    for name in MARGINALS:
        m = getattr(f, name)
        for field in ("mean", "sd", "quantiles", "p_gt0"):
            out[f"{name}.{field}"] = np.asarray(getattr(m, field)).dtype
    for name in FLOAT_FIELDS:
        out[name] = np.asarray(getattr(f, name)).dtype
    return out


def test_float32_in_float32_out(eight_schools):
    y, s = eight_schools
    f = hierjax.fit(y.astype(np.float32), s.astype(np.float32))
    assert set(_float_dtypes(f).values()) == {np.dtype(np.float32)}, _float_dtypes(f)
    assert np.all(np.isfinite(f.mu.quantiles))


def test_float32_ragged_lists_give_float32(eight_schools):
    y, s = eight_schools
    f = hierjax.fit([y.astype(np.float32)], [s.astype(np.float32)])
    assert set(_float_dtypes(f).values()) == {np.dtype(np.float32)}, _float_dtypes(f)


def test_dtype_argument(eight_schools):
    y, s = eight_schools
    f = hierjax.fit(y, s, dtype=jnp.float32)
    assert set(_float_dtypes(f).values()) == {np.dtype(np.float32)}, _float_dtypes(f)


def test_float64_in_default_dtype_out(eight_schools):
    """float64 stays float64 under x64; without x64 it is computed in float32."""
    y, s = eight_schools
    f = hierjax.fit(y, s)
    assert set(_float_dtypes(f).values()) == {DEFAULT_DTYPE}, _float_dtypes(f)


@pytest.mark.skipif(not jax.config.jax_enable_x64, reason="float64 needs JAX_ENABLE_X64=1")
def test_float64_in_float64_out_under_x64(eight_schools):
    y, s = eight_schools
    f = hierjax.fit(y.astype(np.float64), s.astype(np.float64))
    assert set(_float_dtypes(f).values()) == {np.dtype(np.float64)}, _float_dtypes(f)


def test_import_changes_no_jax_setting():
    code = (
        "import jax\n"
        "before = {k: repr(v) for k, v in jax.config.values.items()}\n"
        "x64 = jax.config.jax_enable_x64\n"
        "import hierjax, hierjax.io.cli, hierjax.io.tables, hierjax.pooling\n"
        "assert jax.config.jax_enable_x64 == x64\n"
        "after = {k: repr(v) for k, v in jax.config.values.items()}\n"
        "changed = sorted(k for k in before if before[k] != after.get(k))\n"
        "assert not changed, changed\n"
    )
    for x64 in ("0", "1"):
        env = dict(os.environ, JAX_ENABLE_X64=x64, JAX_PLATFORMS="cpu")
        r = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, f"JAX_ENABLE_X64={x64}: {r.stderr}"


# --------------------------------------------------------------------------------------
# sanity of the summaries on ordinary data
# --------------------------------------------------------------------------------------


def _check_sane(f: hierjax.Fit, what):
    dtype = np.asarray(f.mu.mean).dtype
    limit = 10.0 * eps_of(dtype) ** 0.25  # README "Accuracy": the grid_unresolved threshold
    real = f.mask
    for name in MARGINALS:
        m = getattr(f, name)
        keep = real if name == "theta" else np.ones(m.mean.shape, bool)
        q = m.quantiles[keep]
        assert np.all(np.isfinite(q)), f"{what}{name}: non-finite quantiles"
        d = np.diff(q, axis=-1)
        bad = np.argwhere(~(d > 0))
        assert bad.size == 0, (
            f"{what}{name}: quantiles not increasing in level at "
            f"{[tuple(i) for i in bad[:5]]}: e.g. {q[tuple(bad[0][:-1])]}"
        )
        p = m.p_gt0[keep]
        assert np.all((p >= 0) & (p <= 1)), f"{what}{name}.p_gt0 outside [0, 1]"
        assert np.all(m.sd[keep] > 0), f"{what}{name}.sd not > 0"
        assert np.all(m.mean_exists[keep]) and np.all(m.sd_exists[keep])
        assert np.all(np.isfinite(m.mean[keep])) and np.all(np.isfinite(m.sd[keep]))
        # the median lies within the central interval, the mean within the outer quantiles
        assert np.all((m.mean[keep] > q[..., 0]) & (m.mean[keep] < q[..., -1])), (
            f"{what}{name}.mean"
        )
    np.testing.assert_array_equal(f.tau.p_gt0, 1.0)
    assert np.all(f.tau.quantiles > 0)
    assert np.all(np.isnan(f.theta.mean[~real]))
    assert np.all(f.grid_error >= 0)
    # the status bit and the estimate it is based on agree
    np.testing.assert_array_equal(
        (f.status & hierjax.STATUS["grid_unresolved"]) != 0,
        f.grid_error > limit,
        err_msg=f"{what}grid_unresolved bit",
    )
    flagged = {int(b): hierjax.status_text(f.status[b]) for b in np.flatnonzero(f.status)}
    assert not flagged, (
        f"{what}status != 0 on ordinary data: {flagged}, grid_error "
        f"{dict((b, float(f.grid_error[b])) for b in flagged)}"
    )
    assert np.all(f.grid_error <= limit), f"{what}grid_error {f.grid_error.max()} > {limit}"


def test_eight_schools_summaries_sane(eight_schools):
    y, s = eight_schools
    f = hierjax.fit(y, s)
    _check_sane(f, "eight schools: ")
    assert f.status[0] == 0
    assert hierjax.status_text(f.status[0]) == "ok"
    # BDA3 sec. 5.5: posterior mean of mu about 8, tau's posterior mode at 0
    assert 7.0 < float(f.mu.mean[0]) < 9.0
    assert float(f.tau_mode[0]) == 0.0


def test_simulated_summaries_sane(sim_fit):
    _check_sane(sim_fit, "simulated batch: ")
