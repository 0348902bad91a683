"""The machine's limit for the kernel's operation mix, and how far the kernel is from it.

* :func:`kernel_cost`: XLA's ``cost_analysis()`` (flops, transcendentals, bytes) of the
  compiled ``hierjax.engine.fitting.fit_standardized`` at one block shape, per dataset. XLA
  counts the body of a ``while`` loop once, whatever its trip count (the solvers'
  straggler loops, the quantile and extent searches); the unrolled steps are counted.
* :data:`HAND_COUNT`: the moment arithmetic counted by hand per element
  (one tau node x one group).
* :func:`ceiling`: tight fused elementwise jitted loops over a large array -- the same
  mix of one divide, one log, one sqrt, one erfc and ~16 multiply-adds per element as
  the moment arithmetic; each of those operations alone; and a pure FMA loop (flops/s).
* :func:`moment_kernel_rate`: the moment arithmetic itself written as one fused jitted
  function over ``[B, K, J]`` with fixed tau nodes (no grid search, no solvers): what a
  moments-only kernel could reach in XLA on this machine.
* :func:`fused_loops`: the number of fused loops in a compiled executable. On a CPU, XLA
  fuses chains of elementwise operations into one loop, but a reduction (a sum over the
  groups or the tau nodes) usually ends one, and every loop re-reads its inputs from
  memory. Recorded beside the cost analysis; benchmarks/xla_passes.py measures how the
  moment arithmetic's speed depends on how it is written (benchmarks/README.md).
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["HAND_COUNT", "best_time", "ceiling", "fused_loops", "kernel_cost", "moment_kernel_rate"]

#: Moment arithmetic per (tau node k, group j) element, counted by hand from
#: conditionals.py / engine.fit_dataset / summaries.mixture_summary.
HAND_COUNT = {
    "log p(y|tau), mu_hat, V_mu": "v = s2 + t2 (1), 1/v (1 div), log v (1 log), "
    "y/v and sums (2), r = y - mu_hat, r^2/v and sum (3)",
    "theta | tau": "B = s2/v (1 mul), (1-B) y + B mu_hat (3), (1-B) s2 + B^2 V_mu (4)",
    "theta mixture moments": "w m, w (s^2 + m^2) accumulations (4)",
    "P(theta > 0)": "(m - c)/s (1 sqrt, 2), erfc (1), w * Phi (2)",
    "total": {"flops": 24, "div": 1, "log": 1, "sqrt": 1, "erfc": 1},
}


def best_time(fn, repeats=5, min_total=0.5):
    """Best wall time of ``fn()`` (which must block) over ``repeats`` calls."""
    best, total, i = np.inf, 0.0, 0
    while i < repeats or total < min_total:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, total, i = min(best, dt), total + dt, i + 1
        if i >= 50:
            break
    return best


def fused_loops(compiled) -> int:
    """Fused loops (``fusion`` instructions) in a compiled executable's optimised HLO: for
    a ``lax.map`` kernel, the loops each chunk runs (plus a few outside the map)."""
    return compiled.as_text().count(" fusion(")


def kernel_cost(J: int, dtype, levels, block: int | None = None):
    """cost_analysis of ``fit_standardized`` at ``[block, J]`` (one ``lax.map`` step).

    Returns a dict with per-dataset ``flops``, ``transcendentals``, ``bytes``, the compile
    time of this AOT compile, and the block size.
    """
    import jax
    import jax.numpy as jnp

    import hierjax
    from hierjax.engine.batch import as_batch, rescale_priors, standardize
    from hierjax.engine.fitting import _default_block, fit_standardized
    from hierjax.inference.grid import default_nodes
    from hierjax.model.priors import FlatMu, Uniform

    n = default_nodes(dtype)
    block = block or _default_block(n + 1, J)
    sim = hierjax.simulate(block, J, seed=0)
    batch = as_batch(sim.y, sim.sigma)
    st = standardize(batch)
    tp, mp = rescale_priors(Uniform(), FlatMu(), st)
    cast = lambda a: jnp.asarray(a, dtype)
    args = (
        cast(st.y),
        cast(st.sigma2),
        jnp.asarray(batch.mask),
        cast(st.threshold),
        jax.tree.map(cast, tp),
        jax.tree.map(cast, mp),
        cast(np.asarray(levels)),
    )
    t0 = time.perf_counter()
    compiled = fit_standardized.lower(*args, n=n, chunk=block).compile()
    t_compile = time.perf_counter() - t0
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0]
    ca = dict(ca or {})

    # cost_analysis counts one lax.map step, so it is taken with the block as one chunk;
    # the timing uses the default cache-sized chunk, as hierjax.fit does
    from hierjax.engine.fitting import _default_chunk

    chunk = _default_chunk(n + 1, J, len(levels), jax.default_backend())
    timed = fit_standardized.lower(*args, n=n, chunk=chunk).compile()

    def run():
        jax.block_until_ready(timed(*args))

    run()
    t = best_time(run, repeats=3, min_total=1.0)
    return {
        "block": block,
        "chunk": chunk,
        "K": n + 1,
        "Q": len(levels),
        "flops_per_dataset": float(ca.get("flops", np.nan)) / block,
        "transcendentals_per_dataset": float(ca.get("transcendentals", np.nan)) / block,
        "bytes_per_dataset": float(ca.get("bytes accessed", np.nan)) / block,
        "aot_compile_s": t_compile,
        "kernel_only_datasets_per_s": block / t,
        "fused_loops": fused_loops(timed),
    }


def ceiling(dtype, n_elements: int = 1 << 22, fma_steps: int = 64):
    """Elements/s and flops/s of tight fused elementwise loops on this machine.

    ``mix``: per element one divide, one log, one sqrt, one erfc and 16 multiply-adds
    (the moment arithmetic's mix, :data:`HAND_COUNT`), summed (as the moments are).
    ``exp``: one exp per element. ``fma``: ``fma_steps`` dependent FMAs per element
    (2 flops each) over an array that stays in cache.
    """
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import erfc, ndtr

    from hierjax.model.conditionals import _log1p_small

    key = jax.random.PRNGKey(0)
    a = jax.random.uniform(key, (n_elements,), dtype, 0.5, 2.0)
    b = jax.random.uniform(jax.random.PRNGKey(1), (n_elements,), dtype, 0.5, 2.0)

    @jax.jit
    def mix(a, b):
        v = b + a * a  # s2 + t2
        p = 1.0 / v  # precision
        lv = jnp.log(v)
        m = (1.0 - b * p) * a + b * p * 0.3  # theta mean
        var = (1.0 - b * p) * b + (b * p) ** 2 * 0.1
        s = jnp.sqrt(var)
        phi = erfc(-m / s * 0.7071067811865476)
        acc = m * 0.2 + var * 0.1 + m * m * 0.3 + lv * 0.5 + a * p * 0.7 + phi * 0.05
        return jnp.sum(acc)

    @jax.jit
    def exp_only(a):
        return jnp.sum(jnp.exp(-a))

    small = a[: 1 << 14]

    @jax.jit
    def fma(x):
        def body(_, x):
            return x * 0.999 + 0.001

        return jnp.sum(jax.lax.fori_loop(0, fma_steps, body, x, unroll=True))

    out = {}
    for name, fn, args, elems in (
        ("mix", mix, (a, b), n_elements),
        ("exp", exp_only, (a,), n_elements),
    ):
        fn(*args).block_until_ready()
        t = best_time(lambda fn=fn, args=args: fn(*args).block_until_ready())
        out[f"ceiling_{name}_elements_per_s"] = elems / t
    # one operation per element (summed, so nothing is stored): which one sets the mix's pace
    # (log1p_kernel: hierjax's vectorised log1p of the likelihood's near form; ndtr computes
    # both erf and erfc, which is why the engine writes Phi with erfc alone)
    single = {
        "fma": lambda x: x * 1.1 + 0.3,
        "div": lambda x: 1.0 / x,
        "log": jnp.log,
        "log1p": lambda x: jnp.log1p(x - 1.0),
        "log1p_kernel": lambda x: _log1p_small(0.4 * (x - 1.0)),
        "exp": lambda x: jnp.exp(-x),
        "sqrt": jnp.sqrt,
        "erfc": erfc,
        "ndtr": ndtr,
    }
    rates = {}
    for name, op in single.items():
        g = jax.jit(lambda x, op=op: jnp.sum(op(x)))
        g(a).block_until_ready()
        rates[name] = n_elements / best_time(lambda g=g: g(a).block_until_ready())
    out["op_elements_per_s"] = rates
    reps = max(1, n_elements // small.size)
    fma(small).block_until_ready()

    calls = max(1, reps // 16)

    def fma_many():
        r = [fma(small) for _ in range(calls)]
        jax.block_until_ready(r)

    t = best_time(fma_many, repeats=3)
    out["ceiling_fma_flops_per_s"] = 2.0 * fma_steps * small.size * calls / t
    return out


def moment_kernel_rate(J: int, dtype, K: int, B: int = 4096):
    """Elements/s (``B K J / t``) of the moment arithmetic as one fused jitted function
    over ``[B, K, J]`` with fixed tau nodes (log-likelihood, weights, mu, theta moments,
    P(theta > 0)): the moments-only work without the grid search or any solver."""
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import erfc

    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.normal(size=(B, J)), dtype)
    s2 = jnp.asarray(rng.uniform(0.5, 2.0, size=(B, J)), dtype)
    t2 = jnp.asarray(np.geomspace(1e-3, 1e2, K), dtype)
    lw = jnp.asarray(np.log(np.full(K, 1.0 / K)), dtype)

    def one(y, s2):
        v = s2[None, :] + t2[:, None]  # [K, J]
        p = 1.0 / v
        P = jnp.sum(p, axis=1)
        mh = jnp.sum(p * y[None, :], axis=1) / P
        Vmu = 1.0 / P
        r = y[None, :] - mh[:, None]
        ll = -0.5 * (jnp.sum(jnp.log(v), 1) + jnp.log(P) + jnp.sum(r * r * p, 1))
        lwk = lw + ll
        w = jnp.exp(lwk - jax.scipy.special.logsumexp(lwk))
        Bj = s2[None, :] * p
        m = (1.0 - Bj) * y[None, :] + Bj * mh[:, None]
        var = (1.0 - Bj) * s2[None, :] + Bj * Bj * Vmu[:, None]
        mean = w @ m
        second = w @ (var + m * m)
        pgt = w @ (0.5 * erfc(-m * jax.lax.rsqrt(var) * 0.7071067811865476))
        return mean, jnp.sqrt(second - mean * mean), pgt, w @ mh

    f = jax.jit(jax.vmap(one)).lower(y, s2).compile()
    jax.block_until_ready(f(y, s2))
    t = best_time(lambda: jax.block_until_ready(f(y, s2)))
    return {
        "moment_kernel_elements_per_s": B * K * J / t,
        "moment_kernel_datasets_per_s": B / t,
        "moment_kernel_fused_loops": fused_loops(f),
    }
