"""The batch driver (hierjax.engine.driver): blocks over every local device.

A process's device count is fixed when JAX starts, and this suite's conftest imports JAX
with one CPU device: the multi-device fit (and a Posterior query, draws and evidence)
runs in a subprocess started with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(precision and compilation cache inherited), and its results are compared here with the
same calls on one device.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import BATCH_RTOL
from test_structure import assert_fits_equal

import hierjax
from hierjax.engine import driver

#: Fits the pickled ragged batch on 8 host devices (with "all", also queries, draws and
#: evidence); records each launch's real blocks and the devices its outputs sit on.
EIGHT_DEVICES = """
import os, pickle, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax
import hierjax
from hierjax.engine import driver

launches = []
real = driver._launch

def spy(blocks, devs):
    out = real(blocks, devs)
    leaf = jax.tree.leaves(out)[0]
    launches.append((len(blocks), sorted(d.id for d in leaf.sharding.device_set)))
    return out

driver._launch = spy
with open(sys.argv[1], "rb") as f:
    ys, ss, valid, SMALL = pickle.load(f)
fit = hierjax.fit(ys, ss, skip_invalid=True)
q = d = e = None
if sys.argv[3] == "all":
    post = hierjax.posterior([ys[i] for i in valid], [ss[i] for i in valid])
    q = hierjax.quantile(post, "mu", [0.5])
    small = [ys[i] for i in SMALL], [ss[i] for i in SMALL]
    d = hierjax.draws(*small, key=jax.random.key(5), num_draws=8, chunk=2)
    e = hierjax.evidence(*small, chunk=2)
with open(sys.argv[2], "wb") as f:
    pickle.dump((len(jax.local_devices()), fit, q, d, e, launches), f)
"""

#: Valid datasets of the ragged batch that draws and evidence take in blocks of 2: three
#: blocks, one program over the 8 devices.
SMALL = [0, 1, 2, 3, 4]


def _ragged_batch(B: int = 501):
    """``B`` datasets of 6 to 8 groups, every 20th of 3 to 5, dataset 7 invalid (a sigma of
    0): a batch not a multiple of 8 whose fast-grid pass still fills eight blocks of 64."""
    sim = hierjax.simulate(B, 8, seed=23)
    rng = np.random.default_rng(23)
    sizes = rng.integers(6, 9, B)
    sizes[::20] = rng.integers(3, 6, sizes[::20].size)
    ys = [sim.y[b, :n].copy() for b, n in enumerate(sizes)]
    ss = [sim.sigma[b, :n].copy() for b, n in enumerate(sizes)]
    ss[7][1] = 0.0
    return ys, ss, [i for i in range(B) if i != 7]


def _on_eight_devices(tmp_path, what: str):
    """The ragged batch through :data:`EIGHT_DEVICES` (``what``: "fit" or "all"), with the
    launches checked and the fit compared with this process's one device."""
    ys, ss, valid = _ragged_batch()
    inputs, outputs = tmp_path / "in.pkl", tmp_path / "out.pkl"
    with open(inputs, "wb") as f:
        pickle.dump((ys, ss, valid, SMALL), f)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-c", EIGHT_DEVICES, str(inputs), str(outputs), what],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with open(outputs, "rb") as f:
        n_devices, got, got_q, got_d, got_e, launches = pickle.load(f)
    assert n_devices == 8
    assert launches and all(devs == list(range(8)) for _, devs in launches), launches
    assert max(n for n, _ in launches) == 8, launches  # eight real blocks at once

    want = hierjax.fit(ys, ss, skip_invalid=True)
    assert got.status[7] & hierjax.STATUS["invalid"]
    assert_fits_equal(got, want, what="8 devices vs 1: ")
    return ys, ss, valid, got_q, got_d, got_e


# float64 only: the driver's placement is the same code in either dtype, and these cold
# 8-device subprocesses are the suite's costliest tests (float32 is covered on one device)
@pytest.mark.skipif(not jax.config.jax_enable_x64, reason="dtype-independent; run in float64")
def test_eight_devices_equal_one(tmp_path):
    """The ragged batch on 8 simulated devices equals the fit on this process's one device
    (each device runs whole blocks of one device's shapes); eight different blocks ran in
    one program over all 8 devices.

    Not bit for bit: XLA optimises the 8-device SPMD program apart from the one-device
    one (other fusions), which moves theta's last bits (~1e-13 relative in float64)."""
    _on_eight_devices(tmp_path, "fit")


@pytest.mark.slow
@pytest.mark.skipif(not jax.config.jax_enable_x64, reason="dtype-independent; run in float64")
def test_eight_devices_equal_one_for_every_kernel(tmp_path):
    """As :func:`test_eight_devices_equal_one`, and the Posterior query, draws and evidence
    on 8 devices equal those on one too."""
    ys, ss, valid, got_q, got_d, got_e = _on_eight_devices(tmp_path, "all")
    post = hierjax.posterior([ys[i] for i in valid], [ss[i] for i in valid])
    want_q = hierjax.quantile(post, "mu", [0.5])
    assert got_q.dtype == want_q.dtype and got_q.shape == want_q.shape == (len(valid), 1)
    np.testing.assert_allclose(got_q, want_q, rtol=BATCH_RTOL, atol=0)

    # draws and evidence, blocks of 2 (the last padded) in one program over the devices;
    # draws to round-off too (the SPMD program is compiled apart), with the data's scale
    # as the floor of mu and theta's tolerance (values near 0)
    small = [ys[i] for i in SMALL], [ss[i] for i in SMALL]
    want_d = hierjax.draws(*small, key=jax.random.key(5), num_draws=8, chunk=2)
    want_e = hierjax.evidence(*small, chunk=2)
    atol = BATCH_RTOL * max(float(np.max(np.abs(y))) for y in small[0])
    for f in ("tau", "mu", "theta"):
        a, b = getattr(got_d, f), getattr(want_d, f)
        assert a.dtype == b.dtype and a.shape == b.shape, f
        np.testing.assert_allclose(a, b, rtol=BATCH_RTOL, atol=atol, err_msg=f)
    np.testing.assert_array_equal(got_d.status, want_d.status)
    for a, b in zip(jax.tree.leaves(got_e[:-1]), jax.tree.leaves(want_e[:-1])):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=BATCH_RTOL, atol=atol)


def test_one_device_runs_the_kernel_itself():
    """With one device each block is one call of the kernel as given, in order, the last
    block padded with the last dataset."""
    assert len(driver.devices()) == len(jax.local_devices()) == 1
    calls = []

    @jax.jit
    def kernel(x, *, scale):
        calls.append(x.shape)  # traces only
        return x * scale, x[:, 0]

    x = np.arange(22.0).reshape(11, 2)
    out = driver.in_blocks(kernel, (x,), 4, scale=2.0)
    np.testing.assert_array_equal(out[0], 2.0 * x)
    np.testing.assert_array_equal(out[1], x[:, 0])
    assert calls == [(4, 2)]  # three blocks of 4, one trace
