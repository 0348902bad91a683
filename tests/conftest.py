"""Shared fixtures for the hierjax tests.

Nothing here touches JAX's global configuration: the suite runs under
``JAX_ENABLE_X64=0`` and ``JAX_ENABLE_X64=1`` set by the environment, and every
test reads the precision from ``jax.config.jax_enable_x64``.

Compiling a kernel costs seconds, so the fixtures share batch shapes: the
session-wide simulated batch (``B = 20``, ``J = 8``, uniform tau, flat mu, the
default levels) is one compiled kernel that several test modules reuse.
"""

from __future__ import annotations

import csv
import os

# One on-disk cache of compiled kernels for the whole test run (xdist workers and
# subprocess tests included): kernels compiled by one process load in the others.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_ROOT, ".jax_cache"))

import jax  # noqa: E402  (after the cache directory is set)
import numpy as np
import pytest

import hierjax

X64 = bool(jax.config.jax_enable_x64)
#: float dtype the engine computes in by default (float64 inputs).
DEFAULT_DTYPE = np.dtype(np.float64) if X64 else np.dtype(np.float32)
#: relative tolerance for "the same computation, differently batched". Batch size and
#: padding change XLA's vectorised code paths and reduction lengths, so results move by
#: round-off: ~1e-12 in float64; in float32 a few hundred ulps (3e-5), against float32's
#: own accuracy goal of 1e-4 of a posterior sd.
BATCH_RTOL = 1e-12 if X64 else 3e-5

# In-process CLI calls (tests/test_cli.py) must not turn on JAX's on-disk cache of compiled
# kernels for the test process: tests/test_cache.py checks it in subprocesses.
os.environ["HIERJAX_CACHE_DIR"] = "off"

N_SIM = 20
SIM_SEED = 3


@pytest.fixture(scope="session")
def eight_schools():
    """``(y[8], sigma[8])`` of BDA3 Table 5.2 (copies, safe to modify)."""
    y, sigma = hierjax.eight_schools()
    return y.copy(), sigma.copy()


@pytest.fixture(scope="session")
def sim():
    """20 simulated eight-school-sized datasets (float64 NumPy)."""
    return hierjax.simulate(N_SIM, 8, seed=SIM_SEED)


@pytest.fixture(scope="session")
def sim_fit(sim):
    """``hierjax.fit`` of the simulated batch with every default (one compile, shared)."""
    return hierjax.fit(sim.y, sim.sigma)


@pytest.fixture
def write_csv(tmp_path):
    """``write_csv(rows, name='data.csv', header=('dataset', 'y', 'sigma'))`` -> path.

    ``rows`` are sequences of cells written with the csv module (so any value,
    including ``'nan'`` or ``'abc'``, lands in the file verbatim). ``header=None``
    writes no header line.
    """

    def write(rows, name="data.csv", header=("dataset", "y", "sigma")):
        path = tmp_path / name
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            if header is not None:
                w.writerow(header)
            for r in rows:
                w.writerow(r)
        return path

    return write


def long_rows(datasets, groups=None):
    """Rows ``(dataset, y, sigma[, group])`` of a long CSV from ``{name: (y, sigma)}``."""
    rows = []
    for name, (y, s) in datasets.items():
        labels = groups.get(name) if groups else None
        for j, (yj, sj) in enumerate(zip(y, s)):
            cells = [name, repr(float(yj)), repr(float(sj))]
            if groups is not None:
                cells.append(labels[j])
            rows.append(cells)
    return rows


def read_table(path):
    """A tidy output CSV as ``(header, rows)`` (rows are lists of strings)."""
    with open(path, newline="", encoding="utf-8") as fh:
        r = list(csv.reader(fh))
    return r[0], r[1:]


def cli_argv(argv):
    """``argv`` as strings, computing in the suite's precision (the CLI defaults to float64)."""
    argv = [str(a) for a in argv]
    computes = argv[:1] in (
        ["fit"],
        ["plot"],
        ["crosscheck"],
        ["freq"],
        ["calibrate"],
        ["coverage"],
    )
    if computes and not X64 and not {"--float32", "--x64"} & set(argv):
        argv.append("--float32")
    return argv


def eps_of(dtype) -> float:
    return float(np.finfo(dtype).eps)
