"""How the moment arithmetic's speed on a CPU depends on how it is written for XLA.

The moments of one dataset at ``K`` fixed tau nodes (log p(y | tau), p(tau | y), mu and
theta_j moments; no grid search, no checks), written four ways and run over ``B``
datasets in ``lax.map`` chunks, as the engine runs its kernels:

* ``vmap``: one dataset per kernel, ``vmap`` at the edge (the engine's style);
* ``batch_last``: ``[K, J, C]`` arrays, the chunk's datasets on the minor axis;
* ``unrolled``: batch-last with the sums over the ``J`` groups written out;
* ``dots``: ``vmap`` with the sums over the tau nodes as one matrix-vector product.

Prints datasets/s (best of 3, after compile) and the fused loops per chunk
(:func:`limit.fused_loops`). Run: ``python benchmarks/xla_passes.py [--x64] [--K 73]``.
Results and what they mean: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time


def variants(J: int, K: int, dtype, chunk: int):
    """``name -> (jitted fn, layout)``: the moment arithmetic written four ways, mapped
    over chunks of ``chunk`` datasets (``[B, J]`` inputs for layout ``first``,
    ``[B / chunk, J, chunk]`` for ``last``)."""
    import jax
    import jax.numpy as jnp

    z = jnp.cos(jnp.pi * jnp.arange(K) / (K - 1)).astype(dtype)
    u = 0.5 * (1.0 + z) * 0.999 + 0.0005  # u in (0, 1), no end points

    def one(y, s2, dots=False):  # [J]: the engine's style
        x0 = 0.5 * jnp.log(jnp.var(y) + jnp.mean(s2) / J)
        t = jnp.exp(x0) * u / (1.0 - u)  # tau = c u / (1 - u)
        v = s2[None, :] + (t * t)[:, None]  # [K, J]
        w = 1.0 / v
        P = w.sum(1)
        swy, swyy = (w @ y, w @ (y * y)) if dots else ((w * y).sum(1), (w * y * y).sum(1))
        mh, vm = swy / P, 1.0 / P
        ll = (
            -0.5 * jnp.log(v).sum(1)
            - 0.5 * jnp.log(P)
            - 0.5 * (swyy - swy * mh)
            + jnp.log(t)
            - jnp.log(u)
            - jnp.log(1.0 - u)
        )
        p = jnp.exp(ll - ll.max())
        p = p / p.sum()
        B = s2[None, :] * w
        tm = y - B * (y - mh[:, None])
        tv = s2 * (1.0 - B) + B * B * vm[:, None]
        if dots:  # every sum over the nodes as one matrix-vector product
            r = p @ jnp.concatenate([mh[:, None], (vm + mh * mh)[:, None], tm, tv + tm * tm], 1)
            return r[0], r[1], r[2 : 2 + J], r[2 + J :]
        return (
            (p * mh).sum(),
            (p * (vm + mh * mh)).sum(),
            (p[:, None] * tm).sum(0),
            (p[:, None] * (tv + tm * tm)).sum(0),
        )

    def last(y, s2, unroll=False):  # [J, C]
        x0 = 0.5 * jnp.log(jnp.var(y, axis=0) + jnp.mean(s2, axis=0) / J)
        uu = u[:, None]
        t = jnp.exp(x0)[None, :] * uu / (1.0 - uu)  # [K, C]
        t2 = t * t
        if unroll:
            ws = [1.0 / (s2[j] + t2) for j in range(J)]
            P = sum(ws)
            swy = sum(ws[j] * y[j] for j in range(J))
            swyy = sum(ws[j] * y[j] * y[j] for j in range(J))
            logdet = -jnp.log(jnp.prod(jnp.stack(ws), 0))
        else:
            v = s2[None] + t2[:, None]  # [K, J, C]
            w = 1.0 / v
            P, swy, swyy = w.sum(1), (w * y).sum(1), (w * y * y).sum(1)
            logdet = jnp.log(v).sum(1)
        mh, vm = swy / P, 1.0 / P
        ll = (
            -0.5 * logdet
            - 0.5 * jnp.log(P)
            - 0.5 * (swyy - swy * mh)
            + jnp.log(t)
            - jnp.log(uu)
            - jnp.log(1.0 - uu)
        )
        p = jnp.exp(ll - ll.max(0))
        p = p / p.sum(0)
        B = s2[None] * (1.0 / (s2[None] + t2[:, None]))
        tm = y - B * (y - mh[:, None])
        tv = s2 * (1.0 - B) + B * B * vm[:, None]
        return (
            (p * mh).sum(0),
            (p * (vm + mh * mh)).sum(0),
            (p[:, None] * tm).sum(0),
            (p[:, None] * (tv + tm * tm)).sum(0),
        )

    def mapped(dots):
        return jax.jit(
            lambda y, s2: jax.lax.map(lambda a: one(*a, dots=dots), (y, s2), batch_size=chunk)
        )

    def mapped_last(unroll):
        return jax.jit(lambda y, s2: jax.lax.map(lambda a: last(*a, unroll=unroll), (y, s2)))

    return {
        "vmap": (mapped(False), "first"),
        "batch_last": (mapped_last(False), "last"),
        "unrolled": (mapped_last(True), "last"),
        "dots": (mapped(True), "first"),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--x64", action="store_true", help="float64 (default float32)")
    p.add_argument(
        "--K",
        type=int,
        default=73,
        help="tau nodes (default 73: the fast grid's 2n-rule in float64)",
    )
    p.add_argument("--J", type=int, default=8)
    p.add_argument("--B", type=int, default=65536)
    p.add_argument("--chunk", type=int, default=256)
    a = p.parse_args(argv)
    import jax

    if a.x64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from limit import fused_loops

    dtype = jnp.float64 if a.x64 else jnp.float32
    B, J, C = a.B - a.B % a.chunk, a.J, a.chunk
    rng = np.random.default_rng(0)
    y = rng.normal(size=(B, J))
    s2 = rng.uniform(0.5, 2.0, (B, J)) ** 2
    first = (jnp.asarray(y, dtype), jnp.asarray(s2, dtype))
    last = tuple(jnp.asarray(x.reshape(B // C, C, J).transpose(0, 2, 1), dtype) for x in (y, s2))
    ref = None
    for name, (fn, layout) in variants(J, a.K, dtype, C).items():
        args = first if layout == "first" else last
        compiled = fn.lower(*args).compile()
        out = jax.block_until_ready(compiled(*args))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - t0)
        theta = np.asarray(out[2])
        if layout == "last":
            theta = theta.transpose(0, 2, 1).reshape(B, J)
        ref = theta if ref is None else ref
        print(
            f"{name:11s} {np.dtype(dtype).name} K={a.K} J={J} chunk={C}: "
            f"{B / min(times):10.3g} datasets/s, {fused_loops(compiled):4d} fused loops, "
            f"E[theta] vs vmap {np.max(np.abs(theta - ref)):.1e}"
        )


if __name__ == "__main__":
    main()
