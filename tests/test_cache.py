"""The on-disk cache of compiled kernels (:mod:`hierjax.cache`).

Each check runs in a subprocess: turning the cache on is a global JAX setting, which the
test process itself must not make.
"""
from __future__ import annotations

import os
import subprocess
import sys

import jax

from hierjax.cache import ENV, machine_key

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
    env = {k: v for k, v in os.environ.items()
           if k not in (ENV, "JAX_COMPILATION_CACHE_DIR")}
    env["JAX_ENABLE_X64"] = "1" if jax.config.jax_enable_x64 else "0"
    env.update(extra)
    return env


def test_kernels_are_reused_by_the_next_process(tmp_path):
    cache = tmp_path / "kernels"
    runs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", _SCRIPT, str(cache)], env=_env(),
                           capture_output=True, text=True, timeout=600)
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
    r = subprocess.run([sys.executable, "-c", "import hierjax, sys; "
                        "print(hierjax.use_compilation_cache(sys.argv[1]))", str(tmp_path / "x")],
                       env=_env(JAX_COMPILATION_CACHE_DIR=str(mine)), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(mine)
    assert not (tmp_path / "x").exists()


def test_unusable_directory_warns_and_runs_without(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = subprocess.run([sys.executable, "-c", "import hierjax, sys, jax; "
                        "print(hierjax.use_compilation_cache(sys.argv[1]), "
                        "jax.config.jax_compilation_cache_dir)", str(blocker / "sub")],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["None", "None"]
    assert "no compilation cache" in r.stderr


def test_cli_cache_location_and_off_switches(tmp_path):
    """``hierjax`` keeps its cache in ``$HIERJAX_CACHE_DIR/<machine key>``; ``--no-cache``
    and ``HIERJAX_CACHE_DIR=off`` keep none (a missing input stops each run early)."""
    cli = [sys.executable, "-m", "hierjax.cli", "fit", str(tmp_path / "missing.csv")]

    def run(argv, **env):
        r = subprocess.run(argv, env=_env(**env), capture_output=True, text=True,
                           timeout=300, cwd=tmp_path)
        assert r.returncode == 2 and "missing.csv" in r.stderr, r.stderr
    run(cli, **{ENV: str(tmp_path / "on")})
    assert (tmp_path / "on" / machine_key()).is_dir()
    run(cli + ["--no-cache"], **{ENV: str(tmp_path / "flag")})
    assert not (tmp_path / "flag").exists()
    run(cli, **{ENV: "off"})
    assert not (tmp_path / "off").exists()
