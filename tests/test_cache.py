"""Compiled kernels (:mod:`hierjax.engine.cache`): the on-disk cache, and dropping them from
memory before they exhaust the process's memory maps.

Each on-disk check runs in a subprocess: turning the cache on is a global JAX setting,
which the test process itself must not make.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import hierjax
from hierjax.engine import cache
from hierjax.engine import fitting as engine
from hierjax.engine.cache import ENV, machine_key

# Fits the eight schools in a fresh process with the cache in argv[1]; prints the cache
# directory, the number of kernels loaded from it, and the posterior median of mu.
_SCRIPT = """
import sys
import jax
import hierjax
where = hierjax.use_compilation_cache(sys.argv[1])
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
y, sigma = hierjax.eight_schools()
f = hierjax.fit(y, sigma, quantiles=(0.5,))
print(where, sum(e == "/jax/compilation_cache/cache_hits" for e in events),
      repr(float(f.mu.quantiles[0, 0])), int(f.status[0]))
"""


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "JAX_COMPILATION_CACHE_DIR")}
    env["JAX_ENABLE_X64"] = "1" if jax.config.jax_enable_x64 else "0"
    env.update(extra)
    return env


def test_kernels_are_reused_by_the_next_process(tmp_path):
    cache = tmp_path / "kernels"
    runs = []
    for _ in range(2):
        r = subprocess.run(
            [sys.executable, "-c", _SCRIPT, str(cache)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr
        runs.append(r.stdout.split())
    (where1, hits1, median1, status1), (where2, hits2, median2, status2) = runs
    assert where1 == where2 == str(cache)
    assert any(cache.iterdir()), "the first process wrote no compiled kernel"
    assert int(hits1) == 0 and int(hits2) >= 1, (hits1, hits2)
    # the loaded kernel computes what the compiled one did, bit for bit
    assert (median1, status1) == (median2, status2) and int(status1) == 0


def test_an_existing_jax_cache_setting_is_kept(tmp_path):
    mine = tmp_path / "jax-own"
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import hierjax, sys; print(hierjax.use_compilation_cache(sys.argv[1]))",
            str(tmp_path / "x"),
        ],
        env=_env(JAX_COMPILATION_CACHE_DIR=str(mine)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(mine)
    assert not (tmp_path / "x").exists()


def test_unusable_directory_warns_and_runs_without(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import hierjax, sys, jax; "
            "print(hierjax.use_compilation_cache(sys.argv[1]), "
            "jax.config.jax_compilation_cache_dir)",
            str(blocker / "sub"),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["None", "None"]
    assert "no compilation cache" in r.stderr


def test_cli_cache_location_and_off_switches(tmp_path):
    """``hierjax`` keeps its cache in ``$HIERJAX_CACHE_DIR/<machine key>``; ``--no-cache``
    and ``HIERJAX_CACHE_DIR=off`` keep none (a missing input stops each run early)."""
    cli = [sys.executable, "-m", "hierjax.io.cli", "fit", str(tmp_path / "missing.csv")]

    def run(argv, **env):
        r = subprocess.run(
            argv, env=_env(**env), capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        assert r.returncode == 2 and "missing.csv" in r.stderr, r.stderr

    run(cli, **{ENV: str(tmp_path / "on")})
    assert (tmp_path / "on" / machine_key()).is_dir()
    run(cli + ["--no-cache"], **{ENV: str(tmp_path / "flag")})
    assert not (tmp_path / "flag").exists()
    run(cli, **{ENV: "off"})
    assert not (tmp_path / "off").exists()


def _fit():
    y, sigma = hierjax.eight_schools()
    return hierjax.fit(y, sigma, tau_prior="half-normal:7", quantiles=())


def test_kernels_dropped_near_the_memory_map_limit(monkeypatch):
    """Past MAP_SHARE of ``vm.max_map_count`` (the counts faked here) hierjax drops its
    compiled kernels with a warning; the next fit recompiles and gives the same numbers.
    Below it nothing is dropped. (At the real limit XLA's next compile aborts the process:
    ``LLVM ERROR: Unable to allocate section memory``.)"""
    first = _fit()
    compiled = engine.fit_standardized._cache_size()
    assert compiled > 0
    used = {"maps": 1000}
    monkeypatch.setattr(cache, "memory_maps", lambda: (used["maps"], 65530))

    def frees(clear):  # dropping hierjax's kernels frees the maps
        def run():
            clear()
            used["maps"] = 5000

        return run

    monkeypatch.setattr(cache, "_KERNELS", [(size, frees(clear)) for size, clear in cache._KERNELS])
    cache._seen["compiled"] = -1
    cache.make_room()  # 2% in use: nothing dropped
    assert engine.fit_standardized._cache_size() == compiled

    used["maps"] = 60000  # 92%
    cache._seen["compiled"] = -1
    with pytest.warns(UserWarning, match="uses 60000 of its 65530 memory maps") as rec:
        cache.make_room()
    assert "55000 maps" in str(rec[0].message) and "other code" not in str(rec[0].message)
    assert engine.fit_standardized._cache_size() == 0
    second = _fit()
    assert engine.fit_standardized._cache_size() > 0
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)


def test_map_warning_names_other_code(monkeypatch):
    """Where the maps stay in use after hierjax's kernels are dropped, the warning says
    that other code holds them and what frees them; with nothing compiled since, the
    maps are not counted again."""
    import warnings

    monkeypatch.setattr(cache, "memory_maps", lambda: (60000, 65530))
    monkeypatch.setattr(cache, "_KERNELS", [(lambda: 1, lambda: None)])
    cache._seen["compiled"] = -1
    with pytest.warns(UserWarning, match="held by other code: jax.clear_caches"):
        cache.make_room()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.make_room()


def test_memory_maps_counts_this_process():
    """Twenty new mappings (alternate protections, so none merge) show in the count."""
    import mmap

    if not sys.platform.startswith("linux"):
        assert cache.memory_maps() is None or cache.memory_maps()[0] > 0
        return
    used, limit = cache.memory_maps()
    assert 0 < used < limit
    keep = [
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ if i % 2 else mmap.PROT_READ | mmap.PROT_WRITE)
        for i in range(20)
    ]
    assert cache.memory_maps()[0] >= used + 10
    for m in keep:
        m.close()
