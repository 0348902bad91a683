"""``hierjax freq``: metafor-style frequentist random-effects meta-analysis of every dataset.

``hierjax freq INPUT --method DL|HE|SJ|PM|EB|ML|REML [--test z|knha] [--level 0.95]
--out OUT.csv`` reads the long CSV ``hierjax fit`` reads (``dataset,y,sigma[,group]``) and
writes one row per dataset (:data:`COLUMNS`) with :func:`hierjax.model.frequentist.rma`'s results,
atomically (``--out -``: standard output). Bad input: a one-line error, exit status 2, and no
output file.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["COLUMNS", "freq_command", "freq_rows", "register"]

#: the output table's columns, in order.
COLUMNS = (
    "dataset",
    "method",
    "test",
    "k",
    "mu",
    "mu_se",
    "mu_lo",
    "mu_hi",
    "tau2",
    "tau2_lo",
    "tau2_hi",
    "i2",
    "h2",
    "q",
    "q_p",
    "pi_lo",
    "pi_hi",
    "status",
)


def _level(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < x < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return x


def register(subparsers, common_parent) -> argparse.ArgumentParser:
    """Add the ``freq`` command to ``subparsers`` (``common_parent``: the shared options)."""
    from hierjax.model.frequentist import TAU2_METHODS

    p = subparsers.add_parser(
        "freq",
        parents=[common_parent],
        help="frequentist random-effects meta-analysis (metafor's rma) of each dataset",
        description="Random-effects meta-analysis of every dataset of a long CSV (columns "
        "dataset,y,sigma[,group]) as metafor's rma.uni computes it: tau^2 by the chosen "
        "estimator, mu with Wald or Knapp-Hartung intervals, the Q-profile interval for tau^2, "
        "Cochran's Q, I^2 (percent), H^2 and the prediction interval; one row per dataset.",
    )
    p.add_argument("input", metavar="INPUT", help="CSV with columns dataset,y,sigma[,group]")
    p.add_argument(
        "--method", required=True, choices=TAU2_METHODS, type=str.upper, help="tau^2 estimator"
    )
    p.add_argument(
        "--test",
        default="z",
        choices=("z", "knha"),
        type=str.lower,
        help="z (Wald) or knha (Knapp-Hartung, t with k-1 df) (default: z)",
    )
    p.add_argument(
        "--level",
        type=_level,
        default=0.95,
        metavar="P",
        help="confidence level of every interval (default: 0.95)",
    )
    from hierjax.io.cli import add_precision

    add_precision(p)
    p.add_argument(
        "--out",
        required=True,
        metavar="OUT.csv",
        help="write the table here (atomically); '-' for standard output",
    )
    # main() checks the Bayesian priors of every command before dispatching
    p.set_defaults(tau_prior="uniform", mu_prior="flat")
    return p


def _status_text(bits: int) -> str:
    from hierjax.model.frequentist import FREQ_STATUS

    names = [name for name, bit in FREQ_STATUS.items() if bits & bit]
    return ";".join(names) or "ok"


def freq_rows(res, names) -> list:
    """Rows of the output table (:data:`COLUMNS`) for an :class:`~hierjax.RMAResult`."""
    from hierjax.io.tables import format_number

    rows = []
    for b, name in enumerate(names):
        rows.append(
            [str(name), res.method, res.test, str(int(res.k[b]))]
            + [format_number(getattr(res, c)[b]) for c in COLUMNS[4:-1]]
            + [_status_text(int(res.status[b]))]
        )
    return rows


def freq_command(args) -> int:
    """Run ``hierjax freq`` for parsed ``args``; errors in the input raise InputError."""
    import csv

    from hierjax.io.tables import read_long_csv, write_csv_atomic
    from hierjax.model.frequentist import rma

    batch = read_long_csv(args.input)
    res = rma(batch, None, method=args.method, test=args.test, level=args.level)
    rows = freq_rows(res, batch.names)
    if args.out == "-":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(rows)
    else:
        write_csv_atomic(args.out, list(COLUMNS), rows)
        print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    flagged = sum(int(s) != 0 for s in res.status)
    if flagged:
        print(f"hierjax: {flagged} dataset(s) carry flags (see the status column)", file=sys.stderr)
    return 0
