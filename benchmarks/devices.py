"""``hierjax.fit`` on one device against several simulated host devices (the batch driver).

Run: ``python benchmarks/devices.py [--B 100000] [--J 8] [--devices 1 2] [--repeats 2]``.
Each setting runs in a fresh process (the device count is read when JAX starts), float64,
on the same simulated batch: one warm-up fit per quantile setting (compiles), then the best
of ``--repeats`` timed fits, with the default quantiles and with ``quantiles=()``. Settings
``D`` (D devices, host threads as fit chooses: the cores with one device, else one) and
``Dx1`` (one host thread).
Prints one line per setting and quantile choice: datasets/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(B: int, J: int, repeats: int, workers: int | None):
    import jax

    jax.config.update("jax_enable_x64", True)
    import hierjax
    from hierjax.engine import fitting

    if workers is not None:
        fitting._host_workers = lambda: workers
    sim = hierjax.simulate(B, J, seed=0)
    n = len(jax.local_devices())
    out = {"devices": n, "workers": fitting._host_workers() if n == 1 else 1}  # driver's rule
    for name, q in (("full", hierjax.DEFAULT_LEVELS), ("moments", ())):
        hierjax.fit(sim.y, sim.sigma, quantiles=q)  # compile
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            f = hierjax.fit(sim.y, sim.sigma, quantiles=q)  # NumPy results: already on host
            best = min(best, time.perf_counter() - t)
        out[name] = B / best
        out[name + "_status_ok"] = float((f.status == 0).mean())
    print(json.dumps(out))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, default=100_000)
    p.add_argument("--J", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--settings", nargs="+", default=["1", "2", "1x1"])
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child is not None:
        return child(a.B, a.J, a.repeats, None if a.child == "" else int(a.child))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"B = {a.B}, J = {a.J}, float64; load average before: {load}")
    for s in a.settings:
        d, _, w = s.partition("x")
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={d}")
        cmd = [sys.executable, __file__, "--B", str(a.B), "--J", str(a.J)]
        cmd += ["--repeats", str(a.repeats), "--child", w]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(
            f"{s:>4}: {res['devices']} device(s), {res['workers']} host thread(s): "
            f"full {res['full']:,.0f}/s, moments only {res['moments']:,.0f}/s"
        )


if __name__ == "__main__":
    main()
