"""Per-dataset status flags, the default quantile levels and the accuracy goals: a leaf.

Every layer may import this module; it imports nothing from hierjax. :data:`STATUS_DOC`
is the one description of each flag: the README's status table, the ``Fit`` docstring
and the command line's help (:func:`status_help`) are generated from it (a test checks the
README).
"""

from __future__ import annotations

import textwrap

__all__ = [
    "DEFAULT_LEVELS",
    "EXIT_CODES",
    "GOAL",
    "ROUNDOFF_LIMIT",
    "ROW_FLAGS",
    "STATUS",
    "STATUS_DOC",
    "InputError",
    "status_help",
    "status_table",
    "status_text",
]

#: Quantile levels reported when none are asked for.
DEFAULT_LEVELS = (0.025, 0.25, 0.5, 0.75, 0.975)

#: The accuracy goal per dtype's bits, in posterior sds (README "Accuracy").
GOAL = {32: 1e-4, 64: 1e-8}

#: The largest log-likelihood round-off (:attr:`hierjax.inference.grid.TauGrid.roundoff`) a
#: fit leaves unflagged; calibrated against float64 fits in commit 6252865.
ROUNDOFF_LIMIT = 2.5e-5

#: Per-dataset status bits (0 = ok).
STATUS = {
    "grid_unresolved": 1,
    "tail_truncated": 2,
    "unconverged": 4,
    "invalid": 8,
    "roundoff_limited": 16,
    "output_rounded": 32,
}

#: What each status bit means and what to do about it (Markdown).
STATUS_DOC = {
    "grid_unresolved": (
        "the quadrature's own error check failed: `grid_error > 0.1 sqrt(eps)`, or a mean, sd, "
        "quantile or P(> 0) of mu, a theta_j or theta_new moves by more than 0.25 sqrt(eps) sd "
        "between the n- and the 2n-node rule (far tails, e.g. the 0.001 quantile with J = 3 or "
        "4 under a uniform prior; a group whose sigma_j is 1e3x the others'). `fit` refits "
        "such datasets with more nodes first; what stays flagged needs more `nodes`"
    ),
    "tail_truncated": (
        "mass beyond the largest representable tau (an improper posterior?), or the tail cut "
        "off at the grid's right end moves an upper quantile of tau by more than 0.25 sqrt(eps) "
        "of its sd (IQR where it has none)"
    ),
    "unconverged": "a root finder (quantile, mode, grid extent) hit its iteration limit",
    "invalid": "skipped input (`--skip-invalid`): the dataset's note says why",
    "roundoff_limited": (
        "float32 round-off may exceed the accuracy goal: a log-likelihood round-off estimate "
        "above 2.5e-5 (about 50 groups or more), or a quantile of tau far out in a heavy tail; "
        "use float64"
    ),
    "output_rounded": (
        "the result's dtype cannot hold a mean or quantile of mu, a theta_j or theta_new to the "
        "accuracy goal (float32 with an offset ~1e3 posterior sds or more); use float64"
    ),
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


class InputError(ValueError):
    """Bad input data or settings, with a message naming the dataset and field."""


def status_text(code: int) -> str:
    """``'ok'`` or the ``;``-joined names of the set status bits."""
    names = [k for k, v in STATUS.items() if int(code) & v]
    return ";".join(names) if names else "ok"


def status_table() -> str:
    """The status flags as a Markdown table (the README's), one row per flag."""
    rows = ["| status | meaning |", "|---|---|"]
    rows += [f"| `{name}` | {STATUS_DOC[name]} |" for name in STATUS]
    return "\n".join(rows)


def status_help() -> str:
    """The flags as plain text for ``--help``: ``ok`` first, then each flag and row flag."""
    rows = [("ok", "no flag set")] + list(STATUS_DOC.items()) + list(ROW_FLAGS.items())
    width = max(len(k) for k, _ in rows)
    pad = " " * (width + 4)
    return "\n".join(
        textwrap.fill(
            v.replace("`", ""), 88, initial_indent=f"  {k.ljust(width)}  ", subsequent_indent=pad
        )
        for k, v in rows
    )
