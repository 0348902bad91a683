"""Compiled kernels kept on disk between processes (JAX's persistent compilation cache).

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
"""
from __future__ import annotations

import hashlib
import os
import platform
import warnings
from pathlib import Path
from typing import Optional

__all__ = ["use_compilation_cache", "default_cache_dir", "machine_key"]

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
            lines = [ln for ln in f if ln.split(":")[0].strip() in ("model name", "flags",
                                                                        "Features", "CPU part")]
        cpu = "".join(sorted(set(lines))) or cpu
    except OSError:
        pass
    text = "\n".join([platform.machine(), platform.system(), cpu, jax.__version__,
                      getattr(jaxlib, "__version__", "")])
    return f"{platform.machine() or 'cpu'}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def default_cache_dir() -> Path:
    """``$HIERJAX_CACHE_DIR`` or ``$XDG_CACHE_HOME/hierjax`` (``~/.cache/hierjax``), with
    :func:`machine_key` appended."""
    base = os.environ.get(ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "hierjax")
    return Path(base) / machine_key()


def use_compilation_cache(path=None) -> Optional[Path]:
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

    current = jax.config.jax_compilation_cache_dir
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
