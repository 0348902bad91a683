"""The batch driver: fixed-shape blocks of datasets over every local device.

A batched kernel is a function of ``[b, ...]`` arrays (one row per dataset) whose
outputs are ``[b, ...]`` too: a jitted one, or Python composing jitted ones (with several
devices the driver jits it whole). The driver runs it on blocks of fixed shapes, so that each
kernel compiles once per block shape whatever ``B`` is, and returns NumPy arrays on the
host, in order (:func:`map_blocks`; :func:`in_blocks` cuts a batch into such blocks).

With one local device each block is one call of the kernel. With ``D`` devices, ``D``
blocks of one shape run as one SPMD program: the kernel under :func:`jax.shard_map` on
a 1-D :class:`~jax.sharding.Mesh` over :func:`jax.local_devices`, the ``D`` blocks
stacked along the dataset axis (a ``NamedSharding`` of it), one whole block per device.
Each device sees the block shape one device would, and a block is never split (XLA's code
depends on the block's width). The SPMD program is optimised apart from the one-device
kernel, so results agree with one device's to round-off (``BATCH_RTOL``), not bit for bit. A last group of fewer
than ``D`` blocks is filled with repeats of its last block, which the idle devices
compute and the driver drops.

On a CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=D``, set before JAX is
imported, splits the host into ``D`` devices. With one device a pool of host threads
(``workers``, by default :func:`host_workers`) keeps several blocks in flight instead.

Users: :func:`hierjax.fit` (:func:`map_blocks`; one piece shape per kernel on a CPU); the queries
(:mod:`hierjax.posterior`), :func:`hierjax.draws`, :func:`hierjax.evidence`,
:func:`hierjax.tau_curves` and :func:`hierjax.mu_density` (:func:`in_blocks`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hierjax.engine.cache import make_room, register

__all__ = ["AXIS", "Block", "block_size", "devices", "host_workers", "map_blocks", "in_blocks"]

#: The mesh axis the dataset axis is sharded over.
AXIS = "datasets"


class Block(NamedTuple):
    """One call of a batched kernel: ``kernel(*args, **static)``.

    Attributes:
        kernel: a jitted function (or one calling jitted ones) returning a pytree of
            ``[b, ...]`` arrays; the same object for every block of a shape.
        args: its positional arguments (pytrees); the batched ones, the first among them,
            have a leading ``[b]`` axis on every leaf.
        static: its keyword arguments (hashable values: they key the compiled program).
        batched: which of ``args`` are batched (None: all); the others are the same in
            every block of a shape and are replicated.
    """

    kernel: Callable
    args: tuple
    static: dict
    batched: tuple | None = None


def devices() -> tuple:
    """The devices blocks are spread over: :func:`jax.local_devices` of the default backend."""
    return tuple(jax.local_devices())


def host_workers() -> int:
    """Host threads that run blocks concurrently: the usable cores on a CPU backend (a
    block is mostly sequential small ops, so concurrent blocks fill idle cores), else 1."""
    if jax.default_backend() != "cpu":
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def block_size(B: int, size: int) -> int:
    """``size`` datasets per block, or for a smaller batch the power of two at or above
    ``B``: few compiled shapes, and a small batch is not padded to a large block."""
    return size if B >= size else 1 << max(0, B - 1).bit_length()


@functools.cache
def _sharded(kernel, batched: tuple, static: tuple, devs: tuple):
    """``kernel`` with ``static`` bound, as one jitted SPMD program over ``devs``: arguments
    flagged in ``batched`` are split along their leading axis, the others replicated."""
    mesh = Mesh(np.array(devs), (AXIS,))
    specs = tuple(PartitionSpec(AXIS) if b else PartitionSpec() for b in batched)
    body = jax.shard_map(
        functools.partial(kernel, **dict(static)),
        mesh=mesh,
        in_specs=specs,
        out_specs=PartitionSpec(AXIS),
        # no collectives (each device runs whole blocks alone), so no varying-axis checks:
        # the kernels start loops from constant carries that their data make vary by device
        check_vma=False,
    )
    return register(jax.jit(body, in_shardings=tuple(NamedSharding(mesh, s) for s in specs)))


def _rows(block: Block) -> int:
    """Datasets in ``block``: the leading axis of its first batched argument."""
    flags = block.batched or (True,) * len(block.args)
    return jax.tree.leaves([a for a, f in zip(block.args, flags) if f])[0].shape[0]


def _launch(blocks: list[Block], devs: tuple):
    """The kernel on ``blocks`` (one shape; one per device, or a single one on the default
    device), as JAX arrays stacked along the dataset axis."""
    first = blocks[0]
    if len(devs) == 1:
        return first.kernel(*first.args, **first.static)
    flags = (True,) * len(first.args) if first.batched is None else tuple(first.batched)
    blocks = blocks + [blocks[-1]] * (len(devs) - len(blocks))
    args = tuple(
        jax.tree.map(lambda *a: np.concatenate([np.asarray(x) for x in a]), *parts)
        if flag
        else parts[0]
        for flag, parts in zip(flags, zip(*(b.args for b in blocks)))
    )
    program = _sharded(first.kernel, flags, tuple(sorted(first.static.items())), devs)
    return program(*args)


def map_blocks(make: Callable[[Any], Block], pieces, workers: int = 1, shape=None):
    """The kernel of each ``make(p)`` for ``p`` in ``pieces``, over every local device.

    Pieces of one ``shape(p)`` must make blocks of one shape, kernel and ``static``; ``D``
    consecutive ones run as one program (see the module doc). The groups run on
    ``workers`` host threads, the first group of each shape before any other of that
    shape, so each shape is traced and compiled once (concurrent first calls of one shape
    could each trace it).

    Args:
        make: piece -> :class:`Block`, called when the piece is about to run.
        pieces: the blocks' descriptions, in order.
        workers: host threads with one device (a CPU's cores; 1 on an accelerator); with
            several devices the groups run one after another on this thread.
        shape: piece -> hashable shape key (default: the piece itself).

    Returns:
        A list with each piece's outputs as NumPy arrays, ``[b, ...]``, in order.
    """
    devs = devices()
    key = shape or (lambda p: p)
    by_shape: dict = {}
    for i, p in enumerate(pieces):
        by_shape.setdefault(key(p), []).append(i)
    # (indices of the pieces, whether the group is its shape's first)
    groups = [
        (idx[i : i + len(devs)], i == 0)
        for idx in by_shape.values()
        for i in range(0, len(idx), len(devs))
    ]
    out: list = [None] * len(pieces)

    def call(group):
        blocks = [make(pieces[i]) for i in group]
        res = jax.tree.map(np.asarray, _launch(blocks, devs))
        if len(devs) == 1:
            out[group[0]] = res
            return
        sizes = np.array([_rows(b) for b in blocks])
        ends = np.cumsum(sizes)
        for i, s, e in zip(group, ends - sizes, ends):
            out[i] = jax.tree.map(lambda a, s=s, e=e: a[s:e], res)

    # several devices: one host thread, the devices are the parallelism (more threads
    # oversubscribe the cores of host devices; see benchmarks/README.md)
    if workers <= 1 or len(groups) <= 1 or len(devs) > 1:
        for g, _ in groups:
            call(g)
        return out
    with ThreadPoolExecutor(min(workers, len(groups))) as pool:
        list(pool.map(call, [g for g, first in groups if first]))
        list(pool.map(call, [g for g, first in groups if not first]))
    return out


def in_blocks(
    kernel, args: tuple, size: int, *, workers: int | None = None, batched=None, **static
):
    """``kernel(*args, **static)`` over blocks of ``size`` datasets of the leading ``B``
    axis of every leaf of the batched ``args`` (NumPy), by :func:`map_blocks`.

    The last block is padded by repeating the last dataset (a valid one, so nothing in
    the padding can fail). ``workers``: host threads (default :func:`host_workers`);
    ``batched``: as :class:`Block` (the others, e.g. a PRNG key, go whole to every
    block). Returns NumPy, ``[B, ...]``.
    """
    make_room()  # (hierjax.engine.cache)
    flags = (True,) * len(args) if batched is None else tuple(batched)
    B = _rows(Block(kernel, args, static, flags))
    n_pad = -B % size

    def pad(a):
        a = np.asarray(a)
        return np.concatenate([a, np.repeat(a[-1:], n_pad, axis=0)]) if n_pad else a

    padded = tuple(jax.tree.map(pad, a) if f else a for a, f in zip(args, flags))

    def make(start):
        cut = tuple(
            jax.tree.map(lambda x: x[start : start + size], a) if f else a
            for a, f in zip(padded, flags)
        )
        return Block(kernel, cut, static, flags)

    outs = map_blocks(
        make,
        list(range(0, B + n_pad, size)),
        host_workers() if workers is None else workers,
        shape=lambda _: size,
    )
    return jax.tree.map(lambda *a: np.concatenate(a)[:B], *outs)
