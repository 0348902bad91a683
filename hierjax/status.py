"""What each status flag means: one description per flag, for ``--help``, the README and the
tidy table's ``status`` column.

The bits themselves are :data:`hierjax.engine.STATUS`; this leaf module only words them, so
``hierjax fit --help`` and the README print the same table. ``ROW_FLAGS`` are the two flags the
tidy table adds per row (a moment that does not exist), not status bits.
"""
from __future__ import annotations

__all__ = ["EXIT_CODES", "ROW_FLAGS", "STATUS_DOC", "status_table"]

#: One line per status bit of :data:`hierjax.engine.STATUS` (same keys).
STATUS_DOC = {
    "grid_unresolved": "the tau quadrature's error estimate exceeds the accuracy goal even "
                       "after the finer grids; try --nodes with more nodes (or float64)",
    "tail_truncated": "posterior mass beyond the dtype's range of tau (an improper "
                      "posterior?), or the cut-off tail moves an upper quantile of tau",
    "unconverged": "a solver (quantile, mode, grid extent) hit its iteration limit",
    "invalid": "the dataset was skipped (--skip-invalid); the note column says why",
    "roundoff_limited": "float32 round-off of the likelihood limits tail quantiles "
                        "(about 50 groups or more); use float64",
    "output_rounded": "the result dtype cannot hold a location to the accuracy goal "
                      "(a large offset against the posterior sd); use float64",
}

#: Flags the tidy table adds to one row (not status bits).
ROW_FLAGS = {
    "mean_undefined": "the posterior mean does not exist (heavy tail); the cell is nan",
    "sd_undefined": "the posterior sd does not exist (heavy tail); the cell is nan",
}

#: Exit codes of the ``hierjax`` command.
EXIT_CODES = {
    0: "success (datasets may still carry status flags; skipped ones are marked invalid)",
    1: "an unexpected internal error (a bug: please report it)",
    2: "bad input, options or output path: one line on stderr names what and where",
}


def status_table() -> str:
    """The flags as an aligned plain-text table (``flag  meaning``), ``ok`` first."""
    rows = [("ok", "no flag set")] + list(STATUS_DOC.items()) + list(ROW_FLAGS.items())
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)
