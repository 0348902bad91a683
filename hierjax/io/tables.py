"""Table I/O: the long CSV input and the tidy CSV output, written atomically.

Input: a CSV with header columns ``dataset, y, sigma`` and optionally ``group``;
the rows of a dataset are its groups in order; datasets keep their order of first
appearance. Output: one row per dataset and parameter with columns
``dataset, parameter, mean, sd, q<level>..., p_gt0, status``.

The standard library's ``csv`` module does the parsing and quoting; every value
is checked on the host, and errors name the file, line, dataset and column.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterable

import numpy as np

from hierjax.engine.batch import Batch, InputError, as_batch
from hierjax.engine.fitting import Fit
from hierjax.status import status_text

__all__ = [
    "read_long_csv",
    "fit_rows",
    "format_number",
    "write_csv_atomic",
    "write_table_atomic",
    "write_json_atomic",
    "format_level",
    "OUTPUT_COLUMNS",
]

REQUIRED = ("dataset", "y", "sigma")


def read_long_csv(path) -> Batch:
    """Read ``dataset,y,sigma[,group]`` rows into a padded :class:`~hierjax.engine.batch.Batch`.

    Raises:
        ValueError: missing file or columns, an empty file, non-numeric cells.
    """
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    with fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise InputError(f"{path}: the file is empty (expected a header 'dataset,y,sigma')")
        fields = [f.strip().lower() for f in reader.fieldnames]
        missing = [c for c in REQUIRED if c not in fields]
        if missing:
            raise InputError(
                f"{path}: missing column(s) {', '.join(missing)} "
                f"(found {', '.join(fields) or 'none'}; need dataset,y,sigma[,group])"
            )
        reader.fieldnames = fields
        order: list = []
        ys: dict = {}
        ss: dict = {}
        gs: dict = {}
        has_group = "group" in fields
        for row in reader:
            line = reader.line_num
            if all((v or "").strip() == "" for v in row.values() if isinstance(v, str)):
                continue
            name = (row.get("dataset") or "").strip()
            if name == "":
                raise InputError(f"{path}, line {line}: empty 'dataset' cell")
            vals = []
            for col in ("y", "sigma"):
                cell = (row.get(col) or "").strip()
                try:
                    vals.append(float(cell))
                except ValueError:
                    raise InputError(
                        f"{path}, line {line}, dataset {name!r}: column '{col}' "
                        f"is not a number: {cell!r}"
                    ) from None
            if name not in ys:
                order.append(name)
                ys[name], ss[name], gs[name] = [], [], []
            ys[name].append(vals[0])
            ss[name].append(vals[1])
            gs[name].append((row.get("group") or "").strip() if has_group else None)
    if not order:
        raise InputError(f"{path}: no data rows")
    groups = [tuple(gs[n]) if has_group else None for n in order]
    return as_batch(
        [np.array(ys[n]) for n in order],
        [np.array(ss[n]) for n in order],
        names=order,
        groups=groups,
    )


def format_level(p: float) -> str:
    """Column name of a quantile level: ``0.025 -> 'q0.025'``."""
    return "q" + format(float(p), ".10g")


def format_number(x) -> str:
    """A CSV cell: ``repr`` of the float (round-trips), ``nan``, ``inf`` or ``-inf``."""
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


OUTPUT_COLUMNS = ("dataset", "parameter", "mean", "sd")


def _moment_flags(mean_ok, sd_ok) -> list:
    flags = []
    if not mean_ok:
        flags.append("mean_undefined")
    if not sd_ok:
        flags.append("sd_undefined")
    return flags


def fit_rows(f: Fit) -> tuple:
    """``(header, rows)`` of the tidy output table for a :class:`~hierjax.engine.fitting.Fit`."""
    header = list(OUTPUT_COLUMNS) + [format_level(p) for p in f.levels] + ["p_gt0", "status"]
    rows = []
    for b, name in enumerate(f.names):
        base = status_text(f.status[b])
        if f.notes[b]:
            base = "invalid: " + f.notes[b]
        labels = f.groups[b]

        def row(param, m, idx):
            flags = [] if f.notes[b] else _moment_flags(m.mean_exists[idx], m.sd_exists[idx])
            status = ";".join(([] if base == "ok" else [base]) + flags) or "ok"
            return (
                [name, param, format_number(m.mean[idx]), format_number(m.sd[idx])]
                + [format_number(q) for q in m.quantiles[idx]]
                + [format_number(m.p_gt0[idx]), status]
            )

        rows.append(row("mu", f.mu, b))
        rows.append(row("tau", f.tau, b))
        for j in range(int(f.n_groups[b])):
            label = labels[j] if labels and labels[j] else str(j + 1)
            rows.append(row(f"theta[{label}]", f.theta, (b, j)))
        rows.append(row("theta_new", f.theta_new, b))
    return header, rows


def _write_atomic(path, write, newline=None) -> None:
    """Call ``write(fh)`` on a temporary file in the same folder, then ``os.replace`` it onto
    ``path``: a reader sees the old file or the whole new one, never half of it."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".hierjax-", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> the user's usual permissions
        with os.fdopen(fd, "w", newline=newline, encoding="utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_table_atomic(path, table) -> None:
    """Write a pyarrow table atomically: Parquet for ``.parquet``/``.pq``, CSV otherwise
    (:func:`hierjax.io.tidy.write_csv`)."""
    import pyarrow as pa

    if os.fspath(path).lower().endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
    else:
        from hierjax.io.tidy import csv_bytes

        data = csv_bytes(table)
        sink = None
    data = sink.getvalue().to_pybytes() if sink is not None else data
    _write_atomic(
        path,
        lambda fh: fh.buffer.write(data) if hasattr(fh, "buffer") else fh.write(data),
        newline="",
    )


def write_csv_atomic(path, header: list, rows: Iterable[list]) -> None:
    """Write a CSV atomically (see :func:`_write_atomic`)."""

    def write(fh):
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)

    _write_atomic(path, write, newline="")


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` as JSON (strict: no NaN) atomically, like :func:`write_csv_atomic`."""
    text = json.dumps(obj, indent=1, allow_nan=False)  # fails before any file is touched
    _write_atomic(path, lambda fh: fh.write(text + "\n"))
