"""Compiled kernels: kept on disk between processes (JAX's persistent compilation cache),
and dropped from memory before they exhaust the process's memory maps.

Compiling hierjax's kernels costs seconds per block shape and prior family (about 25 s of
the ~38 s that ``hierjax fit`` takes on a 2-core CPU, where the fitting itself takes one).
JAX can keep the compiled executables on disk and load them in the next process.
:func:`use_compilation_cache` turns that on: an explicit call made at program start,
as for x64 (``import hierjax`` changes no JAX setting). The ``hierjax`` command calls it
unless given ``--no-cache`` or ``HIERJAX_CACHE_DIR=off``.

The entries are native code for the CPU that compiled them: on a shared home directory,
a node with other CPU features would load code it cannot run, with only a logged warning.
So the default directory is one per machine kind: ``<base>/<arch>-<hash>``, the hash
taken over the CPU's model and feature flags and the jax and jaxlib versions. The
directory is created private to the user (mode 0700): JAX runs whatever it finds there,
so it must not be writable by others.

In memory, each compiled kernel holds ~500-1,300 memory maps on a CPU (XLA maps the code,
constants and data of its hundreds of small loops apart), and Linux allows a process
``vm.max_map_count`` of them, 65,530 by default: about 60 kernels (a few dozen fits of
new prior families or widths in one process). At the limit XLA's next compile aborts the
process ("LLVM ERROR: Unable to allocate section memory"). hierjax's kernels are
registered here (:func:`register`); :func:`make_room`, called before they run, drops
their executables once the process uses :data:`MAP_SHARE` of its maps, and they
recompile when next needed.
"""

from __future__ import annotations

import gc
import hashlib
import os
import platform
import sys
import warnings
from pathlib import Path
from types import FrameType

__all__ = [
    "use_compilation_cache",
    "default_cache_dir",
    "machine_key",
    "register",
    "make_room",
    "memory_maps",
]

#: Environment variable for the cache's location (``off`` disables it in the CLI).
ENV = "HIERJAX_CACHE_DIR"


def machine_key() -> str:
    """``<arch>-<12 hex digits>``: the machine kind the compiled code is valid for.

    Hashes the CPU model and feature flags (``/proc/cpuinfo`` on Linux, else
    :func:`platform.processor`) with the jax and jaxlib versions.
    """
    import jax
    import jaxlib

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [
                ln
                for ln in f
                if ln.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")
            ]
        cpu = "".join(sorted(set(lines))) or cpu
    except OSError:
        pass
    text = "\n".join(
        [
            platform.machine(),
            platform.system(),
            cpu,
            jax.__version__,
            getattr(jaxlib, "__version__", ""),
        ]
    )
    return f"{platform.machine() or 'cpu'}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def default_cache_dir() -> Path:
    """``$HIERJAX_CACHE_DIR`` or ``$XDG_CACHE_HOME/hierjax`` (``~/.cache/hierjax``), with
    :func:`machine_key` appended."""
    base = os.environ.get(ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "hierjax",
    )
    return Path(base) / machine_key()


def use_compilation_cache(path=None) -> Path | None:
    """Keep compiled kernels on disk in ``path`` (default :func:`default_cache_dir`).

    Call at program start, before anything compiles (JAX reads the setting at its first
    compilation). Where JAX's cache is already configured (``JAX_COMPILATION_CACHE_DIR``
    or ``jax.config``) that setting is kept. A directory that cannot be created gives a
    warning and no cache.

    Args:
        path: the directory itself (no machine key appended), or None.

    Returns:
        The directory in use, or None when there is none.

    Example:
        >>> import hierjax
        >>> hierjax.use_compilation_cache()          # doctest: +SKIP
    """
    import jax

    current = jax.config.values["jax_compilation_cache_dir"]
    if current:
        return Path(current)
    where = Path(path) if path is not None else default_cache_dir()
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        warnings.warn(f"hierjax: no compilation cache ({where}: {e.strerror or e})", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(where))
    return where


# --------------------------------------------------------------------------- in memory
#: Share of the process's memory-map limit past which :func:`make_room` drops hierjax's
#: compiled kernels: leaves room for the kernels compiled between two checks, and others'.
MAP_SHARE = 0.75

#: ``(compiled count, drop)`` pairs: hierjax's kernels (see :func:`register`).
_KERNELS: list = []
_seen = {"compiled": -1}


def register(kernel=None, *, size=None, clear=None):
    """Register a jitted function (used as a decorator) or a ``size() / clear()`` pair
    (a dict of compiled executables) as hierjax's kernels, for :func:`make_room`.
    Returns ``kernel`` itself."""
    if kernel is not None:
        size, clear = kernel._cache_size, kernel.clear_cache
    _KERNELS.append((size, clear))
    return kernel


def memory_maps():
    """``(in use, limit)``: this process's memory maps and ``vm.max_map_count`` (Linux);
    None where ``/proc`` does not tell."""
    try:
        with open("/proc/sys/vm/max_map_count", "rb") as f:
            limit = int(f.read())
        with open("/proc/self/maps", "rb") as f:
            used = sum(1 for _ in f)
    except (OSError, ValueError):
        return None
    return used, limit


def make_room() -> None:
    """Drop the executables of hierjax's kernels when this process uses more than
    :data:`MAP_SHARE` of its memory maps (see the module doc); warns when it does.

    Cheap when nothing compiled since the last call (the maps are counted only then).
    Other JAX code's executables are left alone: where they hold the maps, the warning
    says so (``jax.clear_caches()`` frees them; a larger ``vm.max_map_count`` avoids it).
    """
    compiled = sum(size() for size, _ in _KERNELS)
    if compiled == _seen["compiled"]:
        return
    _seen["compiled"] = compiled
    usage = memory_maps()
    if usage is None or usage[0] <= MAP_SHARE * usage[1]:
        return
    used, limit = usage
    for _, clear in _KERNELS:
        clear()
    gc.collect()
    _seen["compiled"] = sum(size() for size, _ in _KERNELS)
    after = (memory_maps() or usage)[0]
    rest = (
        ""
        if after <= MAP_SHARE * limit
        else f"; {after} remain, held by other code: jax.clear_caches() frees JAX's, and a "
        "larger vm.max_map_count (sysctl) avoids this"
    )
    warnings.warn(
        f"hierjax: this process uses {used} of its {limit} memory maps "
        f"(vm.max_map_count; XLA aborts at the limit): dropped hierjax's compiled "
        f"kernels ({used - after} maps), which recompile when next needed{rest}",
        stacklevel=_caller_level(),
    )


def _caller_level() -> int:
    """``stacklevel`` for a warning from :func:`make_room` that names the first caller
    outside the hierjax package."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame: FrameType | None = sys._getframe(2)  # 1: make_room
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here):
        frame, level = frame.f_back, level + 1
    return level
