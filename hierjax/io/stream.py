"""Streaming batch jobs: long tables in, tidy tables out, in chunks of datasets.

Input is read with pyarrow in chunks of ``chunk_size`` datasets: a long CSV or Parquet
file (columns ``dataset, y, sigma`` and optionally ``group``; the rows of a dataset are
contiguous and are its groups in order) or an NPZ file (arrays ``y``, ``sigma`` ``[B, J]``
and optionally ``mask`` and ``names``). Each chunk is checked on the host, fitted with
:func:`hierjax.fit`, turned into the tidy table of :mod:`hierjax.io.tidy` and written: memory
is bounded by the chunk, not the input (plus 8 bytes per dataset for the check that no
dataset's rows come back later in the file).

:func:`run_job` writes each finished chunk as a part file, atomically (a temporary file,
then ``os.replace``), and records it in a manifest; ``resume=True`` continues a killed job
from its parts, and the assembled output is byte-identical to an uninterrupted run's. With
``processes=N, process_id=I`` a job is split over N processes (or hosts sharing the output's
folder): each fits every N-th chunk into parts of its own, and the last to finish assembles
the same bytes as one process.
:func:`fit_stream` is the same for research code: an iterator of :class:`hierjax.Fit`.

Every chunk after the first is padded to the first chunk's number of datasets (with
repeats of its first dataset, dropped from the results), so the kernels keep one shape.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from hierjax.engine.batch import InputError

__all__ = [
    "DEFAULT_CHUNK",
    "FORMATS",
    "Chunk",
    "check_chunk",
    "check_output_path",
    "fit_chunk",
    "fit_stream",
    "read_chunks",
    "run_job",
]

#: Datasets per chunk by default.
DEFAULT_CHUNK = 16384
#: Output formats by file extension.
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: Input formats by file extension (anything else is read as CSV).
INPUTS = {".parquet": "parquet", ".pq": "parquet", ".npz": "npz", ".csv": "csv"}
REQUIRED = ("dataset", "y", "sigma")
#: ``--measure``: metafor's column names, each choice of columns in order of preference.
MEASURES = {
    "OR": (("ai", "bi", "ci", "di"), ("ai", "n1i", "ci", "n2i")),
    "RR": (("ai", "bi", "ci", "di"), ("ai", "n1i", "ci", "n2i")),
    "RD": (("ai", "bi", "ci", "di"), ("ai", "n1i", "ci", "n2i")),
    "MD": (("m1i", "sd1i", "n1i", "m2i", "sd2i", "n2i"),),
    "SMD": (("m1i", "sd1i", "n1i", "m2i", "sd2i", "n2i"),),
}
#: Measures on the log scale (results also given back-transformed by exp).
RATIO_MEASURES = ("OR", "RR")
_FLOAT = r"^\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|nan|inf|infinity)\s*$"


class Chunk(NamedTuple):
    """Datasets read from a table (host side, float64).

    Attributes:
        names: dataset names, pyarrow string array ``[B]``.
        y, sigma: values ``[B, J]`` (nan where a cell was not a number; padding 0 and 1).
        mask: real groups ``[B, J]`` bool.
        labels: group labels of the real groups, dataset-major (pyarrow string array
            ``[sum n_b]``), or None.
        line: where each group's row is in the file (``[B, J]`` int, 0 where padded):
            the CSV line (the header is line 1) or the Parquet row (1-based).
        defects: ``{dataset index: message}`` for cells that are not numbers.
        where: ``'line'`` or ``'row'``: how ``line`` is worded.
        index: the chunk's number in the input (0-based).
    """

    names: Any  # pyarrow string array
    y: np.ndarray
    sigma: np.ndarray
    mask: np.ndarray
    labels: Any  # pyarrow string array, or None
    line: np.ndarray
    defects: dict
    where: str
    index: int  # type: ignore[assignment]  # a field, shadowing tuple.index


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------


def _kind(path) -> str:
    return INPUTS.get(os.path.splitext(os.fspath(path))[1].lower(), "csv")


def _csv_header(path) -> list:
    import csv

    try:
        fh = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 (closed below)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    with fh:
        try:
            first = next(csv.reader(fh), None)
        except (csv.Error, UnicodeDecodeError) as e:
            raise InputError(f"{path}: cannot parse the header ({e})") from None
    if not first:
        raise InputError(f"{path}: the file is empty (expected a header 'dataset,y,sigma')")
    return [f.strip().lower() for f in first]


def _check_columns(path, fields, measure=None) -> tuple:
    """The value columns to read (``y, sigma``, or the measure's metafor columns)."""
    if measure is None:
        missing = [c for c in REQUIRED if c not in fields]
        if missing:
            raise InputError(
                f"{path}: missing column(s) {', '.join(missing)} (found "
                f"{', '.join(fields) or 'none'}; need dataset,y,sigma[,group])"
            )
        return ("y", "sigma")
    choices = MEASURES[measure]
    for cols in choices:
        if "dataset" in fields and all(c in fields for c in cols):
            return cols
    want = " or ".join("dataset," + ",".join(c) for c in choices)
    missing = sorted({c for c in ("dataset",) + choices[0] if c not in fields})
    raise InputError(
        f"{path}: missing column(s) {', '.join(missing)} for --measure {measure} "
        f"(found {', '.join(fields) or 'none'}; need {want}[,group])"
    )


class _Counter:
    """A binary file that counts the bytes read (for the progress bar's ETA)."""

    def __init__(self, fh):
        self.fh, self.read_bytes = fh, 0

    def read(self, n=-1):
        b = self.fh.read(n)
        self.read_bytes += len(b)
        return b

    def __getattr__(self, k):
        return getattr(self.fh, k)


def _row_batches(path, progress=None, measure=None):
    """``(table of rows, first row's line, where)`` pieces of a long CSV or Parquet file; string
    columns ``dataset``, ``y``, ``sigma`` (y and sigma float64 where Parquet has numbers),
    ``group`` if present. ``progress(fraction)`` is told how much of the file is read."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if _kind(path) == "parquet":
        import pyarrow.parquet as pq

        try:
            # pre-buffering keeps every row group read so far: memory would grow with the file
            pf = pq.ParquetFile(path, pre_buffer=False)
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"cannot read {path}: {e}") from None
        fields = [f.lower() for f in pf.schema_arrow.names]
        value_cols = _check_columns(path, fields, measure)
        wanted = [
            n for n in pf.schema_arrow.names if n.lower() in ("dataset", "group") + value_cols
        ]
        total, row = max(pf.metadata.num_rows, 1), 1
        for rb in pf.iter_batches(batch_size=1 << 16, columns=wanted):
            t = pa.table({n.lower(): c for n, c in zip(rb.schema.names, rb.columns)})
            t = t.set_column(
                t.schema.get_field_index("dataset"), "dataset", pc.cast(t["dataset"], pa.string())
            )
            if "group" in t.column_names:
                t = t.set_column(
                    t.schema.get_field_index("group"), "group", pc.cast(t["group"], pa.string())
                )
            yield t, row, "row"
            row += t.num_rows
            if progress:
                progress((row - 1) / total)
        return
    import pyarrow.csv as pcsv

    fields = _csv_header(path)
    value_cols = _check_columns(path, fields, measure)
    if len(set(fields)) != len(fields):
        raise InputError(f"{path}: repeated column names in the header ({', '.join(fields)})")
    size = max(os.path.getsize(path), 1)
    fh = _Counter(open(path, "rb"))  # noqa: SIM115 (closed in the finally below)
    try:
        reader = pcsv.open_csv(
            fh,
            read_options=pcsv.ReadOptions(
                column_names=fields, skip_rows=1, block_size=1 << 22, encoding="utf-8"
            ),
            parse_options=pcsv.ParseOptions(newlines_in_values=False),
            convert_options=pcsv.ConvertOptions(
                column_types={f: pa.string() for f in fields},
                strings_can_be_null=False,
                include_columns=[f for f in fields if f in ("dataset", "group") + value_cols],
            ),
        )
        line = 2
        while True:
            try:
                rb = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as e:
                raise InputError(f"{path}: cannot parse the CSV ({e})") from None
            yield pa.Table.from_batches([rb]), line, "line"
            line += rb.num_rows
            if progress:
                progress(fh.read_bytes / size)
    except pa.ArrowInvalid as e:
        raise InputError(f"{path}: cannot parse the CSV ({e})") from None
    finally:
        fh.close()


def _numbers(col, name, path, first_line, where):
    """``(float64 values, {row: message})``: a string column parsed, non-numbers nan."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
        filled = pc.fill_null(pc.cast(col, pa.float64()), np.nan)
        return np.asarray(filled.to_numpy(zero_copy_only=False), np.float64), {}
    trimmed = pc.utf8_trim_whitespace(col)
    try:
        return np.asarray(
            pc.cast(trimmed, pa.float64()).to_numpy(zero_copy_only=False), np.float64
        ), {}
    except pa.ArrowInvalid:
        pass
    ok = pc.match_substring_regex(trimmed, _FLOAT, ignore_case=True).to_numpy(zero_copy_only=False)
    good = pc.if_else(pa.array(ok), trimmed, pa.scalar("nan"))
    vals = np.asarray(pc.cast(good, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    bad = {}
    cells = col.to_pylist() if (~ok).sum() else []
    for i in np.flatnonzero(~ok):
        bad[int(i)] = (
            f"{path}, {where} {first_line + int(i)}: column '{name}' is not a number: {cells[i]!r}"
        )
    return vals, bad


class _Seen:
    """Hashes of the dataset names met so far, sorted in a few runs of doubling sizes (8
    bytes per dataset), to tell a dataset whose rows come back later; a hit is confirmed
    by name (:func:`_earlier_line`), so a hash collision cannot fail a job."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    @staticmethod
    def hashes(names) -> np.ndarray:
        import pandas as pd

        return pd.util.hash_array(np.asarray(names.to_numpy(zero_copy_only=False), object))

    def find(self, h: np.ndarray) -> np.ndarray:
        """Whether each hash was met before, ``[n]`` bool."""
        out = np.zeros(h.shape, bool)
        for keys in self.runs:
            i = np.clip(np.searchsorted(keys, h), 0, keys.size - 1)
            out |= keys[i] == h
        return out

    def add(self, h: np.ndarray) -> None:
        self.runs.append(np.sort(h))
        while len(self.runs) > 1 and self.runs[-2].size <= 2 * self.runs[-1].size:
            k = np.concatenate([self.runs.pop(), self.runs.pop()])
            k.sort()  # in place: a merge holds the new run and the old ones, no more
            self.runs.append(k)


def _earlier_line(path, name: str, before: int, measure=None):
    """The first row (line) of dataset ``name`` in ``path`` before ``before``, or None: a
    second pass over the file, on the error path only."""
    import pyarrow.compute as pc

    for t, first, _ in _row_batches(path, None, measure):
        if first >= before:
            return None
        hit = pc.equal(pc.utf8_trim_whitespace(t["dataset"]), name).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(hit)
        if rows.size and first + rows[0] < before:
            return int(first + rows[0])
    return None


def read_chunks(
    path, chunk_size: int = DEFAULT_CHUNK, progress=None, measure=None, correction: bool = True
) -> Iterator[Chunk]:
    """The datasets of a long CSV/Parquet file or an NPZ file, ``chunk_size`` at a time.

    ``measure`` (``OR``, ``RR``, ``RD``, ``MD``, ``SMD``) reads metafor's columns instead of
    ``y, sigma`` (see :data:`MEASURES`) and computes them with :mod:`hierjax.model.effects`
    (metafor's ``escalc`` conventions; ``correction=False`` drops the 0.5 added to the
    cells of a 2x2 table with a zero).

    Raises:
        InputError: a missing file or column, an empty file, an empty dataset cell, rows of
            one dataset that are not contiguous (naming both lines).
    """
    if int(chunk_size) < 1:
        raise InputError(f"chunk size must be a positive integer, got {chunk_size}")
    path = os.fspath(path)
    check_input(path)
    if measure is not None and measure not in MEASURES:
        raise InputError(f"--measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    if _kind(path) == "npz":
        if measure is not None:
            raise InputError(f"{path}: --measure needs a long CSV or Parquet table")
        yield from _npz_chunks(path, int(chunk_size))
        return
    yield from _long_chunks(path, int(chunk_size), progress, measure, correction)


def check_input(path) -> None:
    """A readable input file, or :class:`InputError` ``cannot read PATH: why``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"cannot read {path}: Is a directory")
    if not os.path.exists(path):
        raise InputError(f"cannot read {path}: No such file or directory")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {path}: Permission denied")


def _npz_chunks(path, C):
    import pyarrow as pa

    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    if "y" not in data or "sigma" not in data:
        raise InputError(f"{path}: missing array(s) y, sigma (found {', '.join(data) or 'none'})")
    y, s = np.asarray(data["y"], np.float64), np.asarray(data["sigma"], np.float64)
    if y.ndim == 1:
        y, s = y[None], s[None]
    if y.ndim != 2 or s.shape != y.shape:
        raise InputError(f"{path}: y has shape {y.shape} and sigma {s.shape}; expected [B, J]")
    mask = np.asarray(data.get("mask", np.ones(y.shape, bool)), bool)
    if mask.shape != y.shape:
        raise InputError(f"{path}: mask has shape {mask.shape}; expected {y.shape}")
    B = y.shape[0]
    names = data.get("names")
    names = np.arange(B).astype(str) if names is None else np.asarray(names).astype(str)
    if names.shape != (B,):
        raise InputError(f"{path}: {names.size} names for {B} datasets")
    for k, a in enumerate(range(0, B, C)):
        sl = slice(a, min(a + C, B))
        line = np.where(mask[sl], np.arange(a, sl.stop)[:, None] + 1, 0)
        yield Chunk(
            pa.array(names[sl].astype(object), pa.string()),
            np.where(mask[sl], y[sl], 0.0),
            np.where(mask[sl], s[sl], 1.0),
            mask[sl],
            None,
            line,
            {},
            "dataset",
            k,
        )


def _long_chunks(path, C, progress, measure=None, correction=True):
    import pyarrow as pa
    import pyarrow.compute as pc

    pending, seen, k, any_rows = [], _Seen(), 0, False

    def emit(t, final):
        """Split ``t`` (rows with a ``_line`` column) into chunks; keep the tail."""
        nonlocal k
        ds = t["dataset"].combine_chunks()
        n = t.num_rows
        starts = np.ones(n, bool)
        if n > 1:
            starts[1:] = pc.not_equal(ds[1:], ds[:-1]).to_numpy(zero_copy_only=False)
        run = np.flatnonzero(starts)
        keep = run.size if final else run.size - 1  # the last may go on in the next batch
        out = []
        while keep >= C or (final and keep > 0):
            m = min(C, keep)
            end = run[m] if m < run.size else n
            out.append(t.slice(0, end))
            t, ds = t.slice(end), ds.slice(end)
            run, keep, n = run[m:] - end, keep - m, n - end
        for piece in out:
            yield _to_chunk(piece, path, seen, k, measure, correction)
            k += 1
        return t

    for t, first, where in _row_batches(path, progress, measure):
        if t.num_rows == 0:
            continue
        any_rows = True
        t = t.append_column("_line", pa.array(np.arange(first, first + t.num_rows)))
        empty = pc.equal(pc.utf8_trim_whitespace(t["dataset"]), "")
        if pc.any(empty).as_py():
            i = int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])
            raise InputError(f"{path}, {where} {first + i}: empty 'dataset' cell")
        t = t.set_column(
            0 if t.column_names[0] == "dataset" else t.schema.get_field_index("dataset"),
            "dataset",
            pc.utf8_trim_whitespace(t["dataset"]),
        )
        pending.append(t)
        total = pa.concat_tables(pending) if len(pending) > 1 else pending[0]
        rest = yield from emit(total, False)
        pending = [rest] if rest.num_rows else []
    if pending:
        yield from emit(pa.concat_tables(pending), True)
    if not any_rows:
        raise InputError(f"{path}: no data rows")


def _to_chunk(t, path, seen: _Seen, k: int, measure=None, correction=True) -> Chunk:
    """Rows of whole datasets -> a :class:`Chunk` (checks contiguity against ``seen``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    where = "row" if _kind(path) == "parquet" else "line"
    ds = t["dataset"].combine_chunks()
    n = t.num_rows
    lines = t["_line"].to_numpy()
    starts = np.ones(n, bool)
    if n > 1:
        starts[1:] = pc.not_equal(ds[1:], ds[:-1]).to_numpy(zero_copy_only=False)
    run = np.flatnonzero(starts)
    B = run.size
    names = ds.take(pa.array(run))
    # a dataset's rows must be contiguous: no name may start two runs
    h = _Seen.hashes(names)
    first_line = lines[run]
    o = np.argsort(h, kind="stable")
    cand = []
    for d in np.flatnonzero(h[o][1:] == h[o][:-1]):
        i, j = sorted((int(o[d]), int(o[d + 1])))
        if names[i].as_py() == names[j].as_py():  # not a hash collision
            cand.append((first_line[j], first_line[i], j))
            break
    for r in np.flatnonzero(seen.find(h)):
        prev = _earlier_line(path, names[int(r)].as_py(), int(lines[0]), measure)
        if prev is not None:
            cand.append((first_line[r], prev, int(r)))
            break
    if cand:
        now, before, at = min(cand)
        raise InputError(
            f"{path}, {where} {now}: dataset {names[at].as_py()!r} has rows "
            f"at {where} {before} and again here, with other datasets between "
            "(the rows of a dataset must be contiguous)"
        )
    seen.add(h)
    first: dict[int, tuple[int, str]] = {}  # per dataset: its first bad row and message
    if measure is None:
        ycol, ybad = _numbers(t["y"], "y", path, int(lines[0]), where)
        scol, sbad = _numbers(t["sigma"], "sigma", path, int(lines[0]), where)
        bads = (ybad, sbad)
    else:
        ycol, scol, bads = _effect_columns(t, measure, correction, path, lines, where)
    counts = np.diff(np.append(run, n))
    row_ds = np.repeat(np.arange(B), counts)
    for bad in bads:
        for r, msg in sorted(bad.items()):
            b = int(row_ds[r])
            if b not in first or r < first[b][0]:
                name = names[b].as_py()
                first[b] = (r, msg.replace(": column", f", dataset {name!r}: column", 1))
    defects = {b: m for b, (_, m) in first.items()}
    J = int(counts.max())
    pos = np.arange(n) - np.repeat(run, counts)
    y = np.zeros((B, J))
    s = np.ones((B, J))
    mask = np.zeros((B, J), bool)
    line = np.zeros((B, J), np.int64)
    y[row_ds, pos], s[row_ds, pos], mask[row_ds, pos], line[row_ds, pos] = ycol, scol, True, lines
    labels = t["group"].combine_chunks() if "group" in t.column_names else None
    return Chunk(names, y, s, mask, labels, line, defects, where, k)


def _effect_columns(t, measure, correction, path, lines, where):
    """``(y, sigma, defects)`` per row from metafor's columns (:mod:`hierjax.model.effects`)."""
    import hierjax.model.effects as fx

    names = _check_columns(path, t.column_names, measure)
    cols, bads = [], []
    for c in names:
        v, bad = _numbers(t[c], c, path, int(lines[0]), where)
        cols.append(v)
        bads.append(bad)
    if measure in ("OR", "RR", "RD"):
        a, x, c, z = cols
        n1, n2 = (a + x, c + z) if names[1] == "bi" else (x, z)
        args = (a, n1, c, n2)
        fn = {"OR": fx.log_odds_ratio, "RR": fx.log_risk_ratio, "RD": fx.risk_difference}[measure]
        kw = {} if measure == "RD" else {"cc": 0.5 if correction else 0.0}
    else:
        args = tuple(cols)
        fn = {"MD": fx.mean_difference, "SMD": fx.standardized_mean_difference}[measure]
        kw = {}
    n = t.num_rows
    y, s = np.full(n, np.nan), np.full(n, np.nan)
    good = np.all([np.isfinite(a) for a in args], axis=0) if n else np.zeros(0, bool)
    rows = np.flatnonzero(good)
    try:
        es = fn(*(a[rows] for a in args), **kw)
        y[rows], s[rows] = es.y, es.sigma
    except InputError:
        # only on the error path: find the rows the formula rejects, one at a time
        bad = {}
        for r in rows:
            try:
                es = fn(*(a[r : r + 1] for a in args), **kw)
                y[r], s[r] = es.y[0], es.sigma[0]
            except InputError as e:
                why = str(e).split(": ", 1)[-1]
                bad[int(r)] = (
                    f"{path}, {where} {int(lines[r])}: column(s) "
                    f"{','.join(names)}: {why} (--measure {measure})"
                )
        bads.append(bad)
    return y, s, bads


# --------------------------------------------------------------------------------------
# checks and fits
# --------------------------------------------------------------------------------------


def check_chunk(chunk: Chunk, dtype, need: int, prior_text: str, path="input") -> dict:
    """Every per-dataset defect of a chunk: ``{dataset index: message}`` naming the dataset,
    the line (or row) and the field. Defects: cells that are not numbers, nan or infinite
    values, ``sigma <= 0``, values out of the compute dtype's range or whose squares
    overflow it (in the standardised units the kernels use), too few groups."""
    out = dict(chunk.defects)
    fi = np.finfo(dtype)
    m = chunk.mask
    y, s = chunk.y, chunk.sigma
    with np.errstate(all="ignore"):
        n = np.maximum(m.sum(axis=1), 1)
        scale = np.exp(np.sum(np.where(m, np.log(np.where(m & (s > 0), s, 1.0)), 0.0), axis=1) / n)
        s_std = s / scale[:, None]
        prec = np.where(m, 1.0 / s_std**2, 0.0)
        loc = np.sum(prec * np.where(m, y, 0.0), axis=1) / np.sum(prec, axis=1)
        z = (y - loc[:, None]) / scale[:, None]
        checks = [
            ("y", ~np.isfinite(y), "{v!r} (must be finite)"),
            ("sigma", ~np.isfinite(s), "{v!r} (must be finite)"),
            ("sigma", ~(s > 0), "{v!r} (must be > 0)"),
            ("y", np.abs(y) > fi.max, "{v!r}: out of the range of " + fi.dtype.name),
            (
                "sigma",
                (s > fi.max) | (s < fi.tiny),
                "{v!r}: out of the range of normal " + fi.dtype.name + " numbers",
            ),
            (
                "y",
                ~np.isfinite(z * z) | (np.abs(z * z) > fi.max),
                "{v!r}: its square in the dataset's units overflows " + fi.dtype.name,
            ),
            (
                "sigma",
                ~np.isfinite(prec) | (prec > fi.max) | (s_std**2 > fi.max),
                "{v!r}: its square against the others' overflows " + fi.dtype.name,
            ),
        ]
        # the group to name: the first bad one, or for the squares the most extreme one
        extreme = {
            "y": np.where(m, np.abs(np.nan_to_num(z, nan=np.inf)), -1.0),
            "sigma": np.where(m, np.abs(np.log(np.where(s > 0, s_std, 1.0))), -1.0),
        }
    for i, (field, bad, text) in enumerate(checks):
        bad = bad & m
        for b in map(int, np.flatnonzero(bad.any(axis=1))):
            if b in out:
                continue
            j = int(np.flatnonzero(bad[b])[0]) if i < 5 else int(np.argmax(extreme[field][b]))
            v = float((y if field == "y" else s)[b, j])
            out[b] = (
                f"{path}, {chunk.where} {int(chunk.line[b, j])}, dataset "
                f"{chunk.names[b].as_py()!r}: {field}[{j + 1}] is " + text.format(v=v)
            )
    few = np.flatnonzero(m.sum(axis=1) < max(need, 1))
    for b in map(int, few):
        if b not in out:
            out[b] = (
                f"{path}, {chunk.where} {int(chunk.line[b, 0])}, dataset "
                f"{chunk.names[b].as_py()!r}: has {int(m[b].sum())} group(s); "
                f"{prior_text} needs at least {need} for a proper posterior"
            )
    return out


def _priors(fit_kwargs):
    from hierjax.engine.batch import describe_priors, min_groups
    from hierjax.model.priors import parse_mu_prior, parse_tau_prior

    tp = parse_tau_prior(fit_kwargs.get("tau_prior", "uniform"))
    mp = parse_mu_prior(fit_kwargs.get("mu_prior", "flat"))
    return min_groups(tp, mp), describe_priors(tp, mp)


def _dtype(fit_kwargs):
    import jax

    dt = fit_kwargs.get("dtype")
    return np.dtype(dt) if dt is not None else np.dtype(jax.dtypes.canonicalize_dtype(np.float64))


def fit_chunk(
    chunk: Chunk,
    *,
    skip_invalid: bool = False,
    pad_to: int | None = None,
    path="input",
    **fit_kwargs,
):
    """Check and fit one chunk: a :class:`hierjax.Fit` of its ``B`` datasets.

    Invalid datasets raise :class:`InputError` (the first in file order) or, with
    ``skip_invalid``, are marked ``invalid`` with the message as their note; so is a
    dataset whose results come back non-finite where they should exist. ``pad_to`` pads
    the batch with repeats of its first dataset (dropped again) to keep kernel shapes.
    """
    import hierjax
    from hierjax.engine.batch import as_batch

    need, text = _priors(fit_kwargs)
    dt = _dtype(fit_kwargs)
    defects = check_chunk(chunk, dt, need, text, path)
    if defects and not skip_invalid:
        b = min(
            defects,
            key=lambda b: int(chunk.line[b][chunk.mask[b]].min() if chunk.mask[b].any() else 0),
        )
        more = f" (and {len(defects) - 1} more invalid datasets)" if len(defects) > 1 else ""
        raise InputError(defects[b] + more)
    y, s, m = chunk.y.copy(), chunk.sigma.copy(), chunk.mask
    bad = np.zeros(y.shape[0], bool)
    bad[list(defects)] = True
    y[bad] = np.nan  # the engine marks these invalid; notes replaced below
    B = y.shape[0]
    pad = max(0, (pad_to or B) - B)
    if pad:
        y, s, m = (np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) for a in (y, s, m))
    names = tuple(range(B + pad))
    batch = as_batch(y, s, mask=m, names=names)
    f = hierjax.fit_batch(batch, skip_invalid=True, **fit_kwargs)
    if pad:
        f = _take(f, slice(0, B))
    notes = list(f.notes)
    for b, msg in defects.items():
        notes[b] = msg
    status = np.asarray(f.status).copy()
    broken = _non_finite(f) & ((status & hierjax.STATUS["invalid"]) == 0)
    for b in np.flatnonzero(broken):
        msg = (
            f"{path}, {chunk.where} {int(chunk.line[b, 0])}, dataset "
            f"{chunk.names[int(b)].as_py()!r}: the results are not finite (values too "
            f"extreme for {np.dtype(dt).name}?)"
        )
        if not skip_invalid:
            raise InputError(msg)
        notes[int(b)] = msg
    if broken.any():
        f = _blank(f, broken)
        status = np.where(broken, hierjax.STATUS["invalid"], status).astype(status.dtype)
    return f._replace(status=status, notes=tuple(notes), names=tuple(range(B)), groups=(None,) * B)


def _non_finite(f) -> np.ndarray:
    """Datasets with a nan or infinite summary where it should exist, ``[B]``."""
    bad = np.zeros(len(f.names), bool)
    for name in ("mu", "tau", "theta_new", "theta"):
        m = getattr(f, name)
        axes = tuple(range(1, np.ndim(m.mean)))
        real = f.mask[:, : m.mean.shape[1]] if name == "theta" else True
        for field, ok in (("mean", m.mean_exists), ("sd", m.sd_exists)):
            v = np.asarray(getattr(m, field))
            bad |= (
                np.any(real & ok & ~np.isfinite(v), axis=axes) if axes else (ok & ~np.isfinite(v))
            )
        q = np.asarray(m.quantiles)
        if q.size:
            qa = tuple(range(1, q.ndim))
            real_q = np.asarray(real)[..., None] if name == "theta" else True
            bad |= np.any(real_q & ~np.isfinite(q), axis=qa)
        p = np.asarray(m.p_gt0)
        bad |= np.any(real & ~np.isfinite(p), axis=axes) if axes else ~np.isfinite(p)
    return bad


def _take(f, sl):
    """Datasets ``sl`` of a Fit (a slice or index array)."""
    import jax

    def cut(m):
        return jax.tree.map(lambda a: a[sl], m)

    idx = np.arange(len(f.names))[sl]
    return f._replace(
        mu=cut(f.mu),
        tau=cut(f.tau),
        theta=cut(f.theta),
        theta_new=cut(f.theta_new),
        tau_mode=f.tau_mode[sl],
        log_marginal_likelihood=f.log_marginal_likelihood[sl],
        grid_error=f.grid_error[sl],
        status=f.status[sl],
        n_groups=f.n_groups[sl],
        mask=f.mask[sl],
        names=tuple(f.names[i] for i in idx),
        groups=tuple(f.groups[i] for i in idx),
        notes=tuple(f.notes[i] for i in idx),
    )


def _blank(f, which):
    """``f`` with the datasets ``which`` ``[B]`` set to nan (their moments not existing)."""

    def nan(m):
        def one(a):
            a = np.array(a)
            w = which.reshape((-1,) + (1,) * (a.ndim - 1))
            return np.where(w, False if a.dtype == bool else np.nan, a).astype(a.dtype)

        return type(m)(*[one(a) for a in m])

    return f._replace(mu=nan(f.mu), tau=nan(f.tau), theta=nan(f.theta), theta_new=nan(f.theta_new))


def _as_chunk(item, k):
    """A research-code chunk (a Batch, ``(y, sigma)`` or ``(y, sigma, mask)``) as a Chunk."""
    import pyarrow as pa

    from hierjax.engine.batch import Batch, as_batch

    if isinstance(item, Chunk):
        return item
    if isinstance(item, Batch):
        b = item
    elif isinstance(item, dict):
        b = as_batch(item["y"], item["sigma"], mask=item.get("mask"), names=item.get("names"))
    else:
        b = as_batch(*item)
    B = b.y.shape[0]
    line = np.where(b.mask, np.arange(1, B + 1)[:, None], 0)
    names = pa.array([str(n) for n in b.names], pa.string())
    return Chunk(names, b.y, b.sigma, b.mask, None, line, {}, "dataset", k)


def fit_stream(chunks: Iterable, *, skip_invalid: bool = False, **fit_kwargs) -> Iterator:
    """Fit a stream of batches, one :class:`hierjax.Fit` per chunk, in order.

    Every chunk is padded to the first chunk's size (so the last, partial chunk compiles
    nothing new), checked like ``hierjax fit`` input, and fitted with :func:`hierjax.fit`;
    memory holds one chunk at a time.

    Args:
        chunks: an iterable of :class:`hierjax.Batch`, ``(y, sigma)`` or
            ``(y, sigma, mask)`` tuples (``[B, J]`` or ragged), or the
            :class:`Chunk` objects of :func:`read_chunks`.
        skip_invalid: mark invalid datasets (status ``invalid``, a note) instead of raising.
        **fit_kwargs: passed to :func:`hierjax.fit` (priors, quantiles, nodes, dtype, ...).

    Yields:
        Fit of each chunk (names as given, or the chunk's positions).

    Example:
        >>> import hierjax
        >>> sim = hierjax.simulate(100, 8)
        >>> parts = ((sim.y[i:i + 40], sim.sigma[i:i + 40]) for i in range(0, 100, 40))
        >>> [len(f.names) for f in hierjax.fit_stream(parts)]
        [40, 40, 20]
    """
    size = None
    for k, item in enumerate(chunks):
        c = _as_chunk(item, k)
        B = c.y.shape[0]
        size = size or B
        f = fit_chunk(c, skip_invalid=skip_invalid, pad_to=max(size, B), **fit_kwargs)
        yield f._replace(names=tuple(c.names.to_pylist()))


# --------------------------------------------------------------------------------------
# jobs: parts, manifest, resume
# --------------------------------------------------------------------------------------


def check_output_path(out, inputs=(), force=False, resume=False) -> str:
    """The output's format (``'csv'``, ``'parquet'``, ``'stdout'``), checked before any work.

    Raises:
        InputError: a missing directory, a directory, an unknown extension, an input file,
            or an existing file without ``force`` (or ``resume``).
    """
    if out == "-":
        return "stdout"
    out = os.fspath(out)
    fmt = FORMATS.get(os.path.splitext(out)[1].lower())
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise InputError(f"--out {out} is a directory; give a file name (.csv or .parquet)")
    if not os.path.isdir(folder):
        raise InputError(f"--out {out}: the directory {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: the directory {folder} is not writable")
    if fmt is None:
        raise InputError(
            f"--out {out}: unknown extension (use .csv, .parquet or .pq, or - for CSV on stdout)"
        )
    for i in inputs:
        if i and os.path.exists(out) and os.path.exists(i) and os.path.samefile(out, i):
            raise InputError(f"--out {out} is the input file; refusing to overwrite it")
        if i and os.path.abspath(out) == os.path.abspath(os.fspath(i)):
            raise InputError(f"--out {out} is the input file; refusing to overwrite it")
    if os.path.exists(out) and not (force or resume):
        raise InputError(f"--out {out} exists; --force replaces it")
    return fmt


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path + '.tmp'``, fsync, then ``os.replace`` it onto ``path``."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _work_dir(out: str) -> str:
    d, name = os.path.split(os.path.abspath(out))
    return os.path.join(d, f".{name}.hierjax-parts")


def _fingerprint(path) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class JobResult(NamedTuple):
    """What :func:`run_job` did: datasets and rows written, chunks fitted now and resumed
    (this process's share), and whether this process assembled the output."""

    datasets: int
    rows: int
    fitted_chunks: int
    resumed_chunks: int
    flagged: int
    skipped: int
    assembled: bool = True
    note: str = ""  # when not assembled: who writes the output


def run_job(
    path,
    out,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    params=None,
    skip_invalid=False,
    force=False,
    resume=False,
    metadata: dict | None = None,
    progress=None,
    on_skip=None,
    table_hook=None,
    measure=None,
    correction=True,
    summary_out=None,
    summary_fn=None,
    processes: int = 1,
    process_id: int = 0,
    **fit_kwargs,
) -> JobResult:
    """Fit every dataset of ``path`` and write the tidy table to ``out`` (``.csv``,
    ``.parquet``, or ``'-'`` for CSV on stdout), chunk by chunk.

    Parts go to a folder next to ``out`` (``.<name>.hierjax-parts``) with a manifest of the
    settings and the parts done; the output is assembled from them atomically at the end
    and the folder removed. ``resume`` continues a killed job (its settings and input must
    be unchanged); ``force`` replaces an existing output (and a killed job's parts).

    Args:
        measure, correction: read metafor's columns (:func:`read_chunks`).
        metadata: recorded with the output (Parquet key-value metadata ``hierjax``; a
            ``<out>.json`` sidecar for CSV).
        progress: a tqdm-like object (``update(n)``, ``total``) or None.
        on_skip: called with each skipped dataset's note.
        table_hook: ``(table, fit, chunk, pad_to) -> table`` to add columns to each part;
            ``pad_to`` is the number of datasets the first chunk's kernels ran at (pad a
            smaller chunk to it, and it compiles nothing new).
        summary_out, summary_fn: also write ``summary_fn(fit, chunk, pad_to)`` (a table per
            chunk) to ``summary_out`` (CSV or Parquet), in parts like the main output.
        processes, process_id: split the job over ``processes`` processes (any hosts that
            share the output's folder): this one fits the chunks ``k`` with
            ``k % processes == process_id``, keeps its parts and manifest in its own
            subfolder ``p<I>-of-<N>`` of the parts folder (so it resumes on its own), and
            the process that completes the last share assembles the output, byte-identical
            to a one-process run's. A parts folder of another ``processes`` or other
            settings is refused.
    """
    check_input(path)
    fmt = check_output_path(out, [path], force=force, resume=resume)
    sfmt = None
    if summary_out is not None:
        sfmt = check_output_path(summary_out, [path, out], force=force, resume=resume)
        if sfmt == "stdout" or fmt == "stdout":
            raise InputError("--summary needs a file name and --out a file (not -)")
    C = int(chunk_size)
    if C < 1:
        raise InputError(f"--chunk-size must be a positive integer, got {chunk_size}")
    meta = dict(metadata or {})
    settings = {
        "chunk_size": C,
        "params": list(params) if params else None,
        "skip_invalid": bool(skip_invalid),
        "measure": measure,
        "correction": bool(correction),
        "fit": {
            k: (
                v
                if isinstance(v, (int, float, str, type(None)))
                else (list(v) if isinstance(v, (list, tuple)) else str(v))
            )
            for k, v in sorted(fit_kwargs.items())
        },
        "metadata": meta,
    }
    N, me = int(processes), int(process_id)
    if N < 1 or not 0 <= me < N:
        raise InputError(f"--process-id must lie in 0..{N - 1} for {N} process(es), got {me}")
    if N > 1 and fmt == "stdout":
        raise InputError("--processes needs --out FILE (each process writes its own parts)")
    work: Any = None
    top: Any = None
    manifest: Any = None
    done = set()
    if fmt != "stdout":
        top = _work_dir(out)
        work = top if N == 1 else os.path.join(top, _share(me, N))
        mpath = os.path.join(work, "manifest.json")
        _check_split(top, N, force)
        if N > 1 and not force:
            _check_siblings(top, N, me, path, settings)
        if os.path.exists(mpath) or (N == 1 and os.path.isdir(work)):
            if resume:
                try:
                    with open(mpath) as fh:
                        manifest = json.load(fh)
                except (OSError, ValueError):
                    manifest = None
                if manifest is not None:
                    if manifest.get("input") != _fingerprint(path) or manifest.get(
                        "settings"
                    ) != json.loads(json.dumps(settings)):
                        raise InputError(
                            f"--resume: the input or the settings differ from the "
                            f"interrupted run's (parts in {work}); --force starts over"
                        )
                    done = set(manifest.get("done", []))
                for f_ in os.listdir(work):  # a killed write's leftovers (this share's only)
                    if f_.endswith(".tmp"):
                        os.unlink(os.path.join(work, f_))
            elif force:
                shutil.rmtree(work)
            else:
                raise InputError(
                    f"an interrupted run left parts of {out} in {work}: --resume "
                    "finishes it, --force starts over"
                )
        elif resume and os.path.exists(out) and not force and not os.path.isdir(top):
            raise InputError(
                f"--resume: no interrupted run of {out} to resume ({out} exists; "
                "--force replaces it)"
            )
        if manifest is None:
            os.makedirs(work, exist_ok=True)
            manifest = {
                "version": 1,
                "input": _fingerprint(path),
                "settings": json.loads(json.dumps(settings)),
                "format": fmt,
                "done": [],
                "datasets": {},
                "rows": {},
            }
            if N > 1:
                manifest["processes"], manifest["process_id"] = N, me
            _write_file(mpath, json.dumps(manifest, indent=1).encode())
    sext = {"csv": ".csv", "parquet": ".parquet"}.get(sfmt or "")

    stdout = None
    if fmt == "stdout":
        stdout = getattr(sys.stdout, "buffer", None)
    ext = ".csv" if fmt in ("csv", "stdout") else ".parquet"
    size = None
    n_ds = rows = fitted = resumed = flagged = skipped = n_chunks = 0
    import hierjax

    def frac(x):
        if progress is not None and n_ds and x > 0:
            progress.total = max(n_ds, round(n_ds / min(max(x, 1e-9), 1.0)))
            progress.refresh()

    try:
        for chunk in read_chunks(path, C, progress=frac, measure=measure, correction=correction):
            B = chunk.y.shape[0]
            size = size or B  # every process pads to chunk 0's size: the same kernels, bits
            k = chunk.index
            n_chunks = k + 1
            if k % N != me:
                continue
            part = os.path.join(work, f"part-{k:08d}{ext}") if work else None
            if k in done and part and os.path.exists(part):
                n_ds += B
                rows += int(manifest["rows"].get(str(k), 0))
                resumed += 1
                if progress is not None:
                    progress.update(B)
                continue
            f = fit_chunk(
                chunk,
                skip_invalid=skip_invalid,
                pad_to=size if k else None,
                path=os.fspath(path),
                **fit_kwargs,
            )
            from hierjax.io.tidy import fit_table

            table = fit_table(f, params, group_labels=chunk.labels, dataset_names=chunk.names)
            if table_hook is not None:
                table = table_hook(table, f, chunk, size)
            inv = (np.asarray(f.status) & hierjax.STATUS["invalid"]) != 0
            skipped += int(inv.sum())
            flagged += int(((np.asarray(f.status) & ~hierjax.STATUS["invalid"]) != 0).sum())
            if on_skip is not None:
                for b in np.flatnonzero(inv):
                    on_skip(f.notes[int(b)])
            if fmt == "stdout":
                from hierjax.io.tidy import csv_bytes

                data = csv_bytes(table, header=(k == 0))
                if stdout is not None:
                    stdout.write(data)
                    stdout.flush()
                else:
                    sys.stdout.write(data.decode())
            else:
                if summary_out is not None and summary_fn is not None:
                    st = summary_fn(f, chunk, size)
                    _write_file(os.path.join(work, f"summary-{k:08d}{sext}"), _part_bytes(st, sfmt))
                    if sfmt == "csv" and "summary_header" not in manifest:
                        from hierjax.io.tidy import csv_bytes

                        manifest["summary_header"] = csv_bytes(st.schema.empty_table()).decode()
                _write_file(str(part), _part_bytes(table, fmt))
                if fmt == "csv" and "header" not in manifest:
                    from hierjax.io.tidy import csv_bytes

                    manifest["header"] = csv_bytes(table.schema.empty_table()).decode()
                manifest["done"].append(k)
                manifest["datasets"][str(k)] = B
                manifest["rows"][str(k)] = table.num_rows
                _write_file(mpath, json.dumps(manifest, indent=1).encode())
            n_ds += B
            rows += table.num_rows
            fitted += 1
            if progress is not None:
                progress.update(B)
    except InputError:
        if work and not resume and os.path.isdir(work):
            shutil.rmtree(work, ignore_errors=True)  # a failed run leaves nothing
            if top != work and os.path.isdir(top) and not os.listdir(top):
                os.rmdir(top)
        raise
    assembled, note = True, ""
    if fmt != "stdout":
        shares = [manifest]
        if N > 1:
            manifest["complete"], manifest["chunks"] = True, n_chunks
            _write_file(mpath, json.dumps(manifest, indent=1).encode())
            shares, note = _shares_to_assemble(top, N, me)
            assembled = shares is not None
        if shares is not None:
            folders = [top] if N == 1 else [os.path.join(top, _share(i, N)) for i in range(N)]
            if summary_out is not None:
                _assemble(
                    top,
                    summary_out,
                    sfmt,
                    _parts(folders, shares, "summary", sext),
                    shares[0].get("summary_header"),
                    meta,
                    prefix="summary",
                )
            _assemble(
                top, out, fmt, _parts(folders, shares, "part", ext), shares[0].get("header"), meta
            )
            shutil.rmtree(top, ignore_errors=True)
    return JobResult(n_ds, rows, fitted, resumed, flagged, skipped, assembled, note)


def _share(i: int, n: int) -> str:
    """The subfolder of process ``i`` of ``n`` in a job's parts folder."""
    return f"p{i}-of-{n}"


_SHARE = re.compile(r"^p(\d+)-of-(\d+)$")


def _check_split(top, N, force) -> None:
    """Refuse (or with ``force`` remove) parts left by the same output's job run with
    another number of processes: their chunks are split differently."""
    if not os.path.isdir(top):
        return
    names = os.listdir(top)
    if N == 1:
        other = [n for n in names if _SHARE.match(n) or n == "assemble.lock"]
    else:  # a one-process job's files, or another split's shares
        own = ("assemble.lock", "part-final.tmp", "summary-final.tmp")
        other = [
            n for n in names if n not in own and not ((m := _SHARE.match(n)) and m[2] == str(N))
        ]
    if force:  # a killed assembler's lock goes too: this job assembles afresh
        for n in set(other) | ({"assemble.lock"} & set(names)):
            q = os.path.join(top, n)
            if os.path.isdir(q):
                shutil.rmtree(q, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):  # another process's --force
                    os.unlink(q)
        return
    if not other:
        return
    was = {int(m.group(2)) for n in other if (m := _SHARE.match(n))} or {1}
    raise InputError(
        f"--processes {N}: the parts in {top} are of this job run with "
        f"{'/'.join(map(str, sorted(was)))} process(es); give the same --processes and "
        "--resume, or --force to start over"
    )


def _read_share(top, i, N):
    try:
        with open(os.path.join(top, _share(i, N), "manifest.json")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _check_siblings(top, N, me, path, settings) -> None:
    """Every other process of the job must read the same input with the same settings."""
    for i in range(N):
        m = _read_share(top, i, N) if i != me else None
        if m is None:
            continue
        if m.get("input") != _fingerprint(path) or m.get("settings") != json.loads(
            json.dumps(settings)
        ):
            raise InputError(
                f"process {i} of {N} runs this job with another input or settings "
                f"(parts in {top}); give every process the same command (--force on "
                "each starts over)"
            )


def _shares_to_assemble(top, N, me):
    """``(every process's manifest in process order, '')`` when all are complete and this
    process is the one to assemble, else ``(None, who does)``. The first to create
    ``assemble.lock`` assembles (and the process named in it, resumed after a kill)."""
    shares = [_read_share(top, i, N) for i in range(N)]
    if any(m is None or not m.get("complete") for m in shares):
        return None, "the last process to finish writes the output"
    if len({m["chunks"] for m in shares}) != 1 or any(
        m["input"] != shares[0]["input"] or m["settings"] != shares[0]["settings"] for m in shares
    ):
        raise InputError(f"the processes' parts in {top} are of different jobs; --force")
    lock = os.path.join(top, "assemble.lock")
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        with open(lock) as fh:
            holder = fh.read().strip()
        if holder == str(me):
            return shares, ""
        return None, f"process {holder} assembles the output (if it was killed, --resume it)"
    with os.fdopen(fd, "w") as fh:
        fh.write(str(me))
        fh.flush()
        os.fsync(fh.fileno())
    return shares, ""


def _parts(folders, shares, prefix, ext) -> list:
    """The part files of every share, in chunk order (the order of the input)."""
    found = sorted((k, folder) for folder, m in zip(folders, shares) for k in m["done"])
    return [os.path.join(folder, f"{prefix}-{k:08d}{ext}") for k, folder in found]


def _part_bytes(table, fmt) -> bytes:
    import pyarrow as pa

    if fmt == "csv":
        from hierjax.io.tidy import csv_bytes

        return csv_bytes(table, header=False)
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _assemble(work, out, fmt, parts, header, meta, prefix="part") -> None:
    """``parts`` (paths, in order) -> ``work/final.tmp`` -> ``os.replace`` onto ``out`` (the
    temporary sits in the parts folder, so a kill leaves nothing beside ``out``)."""
    tmp = os.path.join(work, f"{prefix}-final.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    os.close(fd)
    if fmt == "csv":
        if header is None:
            raise InputError("no datasets to write")
        with open(tmp, "wb") as fh:
            fh.write(header.encode())
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, fh, 1 << 20)
            fh.flush()
            os.fsync(fh.fileno())
        _write_file(sidecar(out), json.dumps(meta, indent=1, sort_keys=True).encode())
    else:
        import pyarrow.parquet as pq

        writer = None
        for part in parts:
            t = pq.read_table(part)
            if writer is None:
                sch = t.schema.with_metadata({"hierjax": json.dumps(meta, sort_keys=True)})
                writer = pq.ParquetWriter(tmp, sch)
            writer.write_table(t.replace_schema_metadata(writer.schema.metadata))
        if writer is None:
            raise InputError("no datasets to write")
        writer.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, out)


def sidecar(out) -> str:
    """The JSON file beside a CSV output that records how it was made: ``<out>.json``."""
    return os.fspath(out) + ".json"
