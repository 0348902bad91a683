"""The tidy table of a :class:`~hierjax.Fit` (or of a :class:`~hierjax.Posterior`'s
:func:`~hierjax.summarize`): one row per dataset and parameter, typed columns.

Columns: ``dataset`` (string), ``parameter`` (``mu``, ``tau``, ``theta``, ``theta_new``:
the prediction for a new group, whose central quantiles are the prediction interval),
``group`` (the group's label, or its 1-based position; null except for ``theta``),
``mean``, ``sd``, ``q<level>...``, ``p_gt0`` (the Fit's float dtype), ``status`` (``ok`` or
the ``;``-joined flags of :mod:`hierjax.status`) and ``note`` (why a dataset was skipped,
else empty). The rows of a dataset come in the order mu, tau, theta (its groups in order),
theta_new. The table is built from whole arrays (``numpy`` index arithmetic and
``pyarrow.take``), never one Python object per row.

The CSV form is pyarrow's writer: numbers are the shortest decimal that reads back to the
same value of the Fit's dtype (at most 9 significant digits for float32, 17 for float64),
``nan``, ``inf`` and ``-inf`` as such, strings quoted only where needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "PARAMETERS",
    "csv_bytes",
    "fit_table",
    "format_level",
    "status_strings",
    "with_exp",
    "with_i2",
    "write_csv",
]

#: Parameters of the tidy table, in row order within a dataset.
PARAMETERS = ("mu", "tau", "theta", "theta_new")


def format_level(p: float) -> str:
    """Column name of a quantile level: ``0.025 -> 'q0.025'``."""
    return "q" + format(float(p), ".10g")


def status_strings(codes, mean_ok=None, sd_ok=None):
    """``[N]`` status texts from ``[N]`` status codes (and row flags), as a pyarrow array.

    Only the distinct (code, flags) pairs are worded in Python; the rows take them.
    """
    import pyarrow as pa

    from hierjax.engine.fitting import status_text

    codes = np.asarray(codes, np.int64)
    flags = np.zeros(codes.shape, np.int64)
    if mean_ok is not None:
        flags |= np.where(np.asarray(mean_ok, bool), 0, 1)
    if sd_ok is not None:
        flags |= np.where(np.asarray(sd_ok, bool), 0, 2)
    key = codes * 4 + flags
    uniq, inverse = np.unique(key, return_inverse=True)
    words = []
    for k in uniq.tolist():
        code, fl = divmod(k, 4)
        parts = [] if code == 0 else [status_text(code)]
        # a skipped dataset's moments are nan by choice, not undefined
        if not code & _invalid_bit():
            parts += [w for bit, w in ((1, "mean_undefined"), (2, "sd_undefined")) if fl & bit]
        words.append(";".join(parts) or "ok")
    return pa.array(words, pa.string()).take(pa.array(inverse.reshape(-1).astype(np.int64)))


def _invalid_bit() -> int:
    from hierjax.engine.fitting import STATUS

    return STATUS["invalid"]


def _check_params(params) -> tuple:
    if params is None:
        return PARAMETERS
    params = tuple(params)
    unknown = [p for p in params if p not in PARAMETERS]
    if unknown or not params:
        from hierjax.engine.batch import InputError

        raise InputError(
            f"unknown parameter(s) {', '.join(map(repr, unknown)) or '(none)'}; "
            f"choose from {', '.join(PARAMETERS)}"
        )
    return tuple(p for p in PARAMETERS if p in params)  # the table's own order


def fit_table(fit, params: Sequence[str] | None = None, *, group_labels=None, dataset_names=None):
    """The tidy table of ``fit`` as a :class:`pyarrow.Table`.

    Args:
        fit: a :class:`hierjax.Fit` or :class:`hierjax.PosteriorSummary` (``B`` datasets).
        params: which of :data:`PARAMETERS` to include (default all), kept in table order.
        group_labels: optional pyarrow string array of the real groups' labels, dataset by
            dataset in order (``sum(n_groups)`` entries; nulls fall back to the position);
            default ``fit.groups``.
        dataset_names: optional pyarrow string array of ``B`` names (default ``fit.names``).

    Returns:
        pyarrow.Table with the columns of the module docstring.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    params = _check_params(params)
    B = len(fit.names)
    theta_w = fit.theta.mean.shape[1] if fit.theta.mean.ndim == 2 else 0
    real = np.asarray(fit.mask, bool)[:, :theta_w]
    tb, tj = np.nonzero(real)  # theta rows: real groups, dataset-major
    per = np.zeros(B, np.int64)  # rows per dataset
    for p in params:
        per += np.bincount(tb, minlength=B) if p == "theta" else 1
    start = np.concatenate([[0], np.cumsum(per)[:-1]])
    N = int(per.sum())

    # each block: (dataset index [n], position within the dataset [n], Marginal, index)
    offset = np.zeros(B, np.int64)
    blocks: list[tuple] = []
    rank = np.arange(tb.size) - np.concatenate([[0], np.cumsum(np.bincount(tb, minlength=B))])[tb]
    for p in params:
        m = getattr(fit, p)
        if p == "theta":
            blocks.append((p, tb, offset[tb] + rank, m, (tb, tj)))
            offset = offset + np.bincount(tb, minlength=B)
        else:
            b = np.arange(B)
            blocks.append((p, b, offset.copy(), m, b))
            offset = offset + 1
    order = np.empty(N, np.int64)  # row of each block entry
    pos = 0
    for _, b, within, _, _ in blocks:
        order[pos : pos + b.size] = start[b] + within
        pos += b.size

    def gather(field, q=None):
        vals = []
        for _, _, _, m, idx in blocks:
            a = np.asarray(getattr(m, field))
            vals.append(a[idx] if q is None else a[idx][..., q])
        flat = np.concatenate(vals) if vals else np.zeros(0)
        out = np.empty_like(flat)
        out[order] = flat
        return out

    row_ds = np.empty(N, np.int64)
    row_ds[order] = np.concatenate([b for _, b, _, _, _ in blocks])
    idx = pa.array(row_ds)
    names = (
        dataset_names
        if dataset_names is not None
        else pa.array([str(n) for n in fit.names], pa.string())
    )
    cols = {"dataset": names.take(idx)}
    pname = np.empty(N, np.int8)
    pname[order] = np.concatenate(
        [np.full(b.size, PARAMETERS.index(p), np.int8) for p, b, _, _, _ in blocks]
    )
    cols["parameter"] = pa.array(list(PARAMETERS), pa.string()).take(pa.array(pname))
    # group: label (or 1-based position) on theta rows, null elsewhere
    is_theta = pname == PARAMETERS.index("theta")
    if "theta" in params:
        pos_label = (
            pa.array(np.char.mod("%d", tj + 1).astype(object), pa.string())
            if tj.size
            else pa.array([], pa.string())
        )
        if group_labels is None and any(g is not None for g in fit.groups):
            flat: list = []
            for bi in range(B):
                g = fit.groups[bi]
                n_b = int(real[bi].sum())
                flat.extend(list(g)[:n_b] if g is not None else [None] * n_b)
            group_labels = pa.array(
                [None if (v is None or v == "") else str(v) for v in flat], pa.string()
            )
        labels = (
            pos_label
            if group_labels is None
            else pc.coalesce(
                pc.if_else(pc.equal(group_labels, ""), pa.scalar(None, pa.string()), group_labels),
                pos_label,
            )
        )
        theta_rows = np.flatnonzero(is_theta)
        gidx = np.full(N, -1, np.int64)
        gidx[theta_rows] = np.arange(theta_rows.size)
        cols["group"] = labels.take(pa.array(gidx, mask=gidx < 0))
    else:
        cols["group"] = pa.nulls(N, pa.string())
    cols["mean"] = pa.array(gather("mean"))
    cols["sd"] = pa.array(gather("sd"))
    for q, level in enumerate(np.asarray(fit.levels, np.float64).reshape(-1)):
        cols[format_level(level)] = pa.array(gather("quantiles", q))
    cols["p_gt0"] = pa.array(gather("p_gt0"))
    code = np.asarray(fit.status, np.int64)[row_ds]
    cols["status"] = status_strings(code, gather("mean_exists"), gather("sd_exists"))
    notes = pa.array([str(n or "") for n in fit.notes], pa.string())
    cols["note"] = notes.take(idx)
    return pa.table(cols)


def with_exp(table):
    """``table`` with the quantiles of mu, theta and theta_new also back-transformed,
    ``exp_q<level>`` (exact: exp is monotone), and a ``transform`` column saying ``exp``
    on those rows (null on tau's, which is a scale). For log odds or risk ratios."""
    import pyarrow as pa
    import pyarrow.compute as pc

    loc = pc.is_in(table["parameter"], value_set=pa.array(["mu", "theta", "theta_new"]))
    at = table.column_names.index("p_gt0")
    for name in [c for c in table.column_names if c.startswith("q")]:
        col = pc.if_else(loc, pc.exp(table[name]), pa.scalar(None, table[name].type))
        table = table.add_column(at, "exp_" + name, col)
        at += 1
    word = pc.if_else(loc, pa.scalar("exp"), pa.scalar(None, pa.string()))
    return table.append_column("transform", word)


def with_i2(table, mean, quantiles, levels):
    """``table`` with one ``parameter = i2`` row per dataset after its ``tau`` row (or
    last): the posterior of ``I^2 = tau^2 / (tau^2 + s^2)`` (:func:`hierjax.i2`), ``mean``
    ``[B]`` and ``quantiles`` ``[B, Q]`` at ``levels``; its sd is not computed (nan) and
    ``P(I^2 > 0)`` is 1 as for tau. Datasets in the table's order, each once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    ds = table["dataset"].combine_chunks()
    starts = np.ones(n, bool)
    if n > 1:
        starts[1:] = pc.not_equal(ds[1:], ds[:-1]).to_numpy(zero_copy_only=False)
    first = np.flatnonzero(starts)
    B = first.size
    row_ds = np.cumsum(starts) - 1
    par = table["parameter"].to_numpy(zero_copy_only=False)
    after = np.append(first[1:], n)  # default: after the dataset
    tau_rows = np.flatnonzero(par == "tau")
    after[row_ds[tau_rows]] = tau_rows + 1
    dt = table.schema.field("mean").type
    cols = {}
    for name in table.column_names:
        typ = table.schema.field(name).type
        if name == "dataset":
            cols[name] = ds.take(pa.array(first))
        elif name == "parameter":
            cols[name] = pa.array(["i2"] * B, pa.string())
        elif name == "mean":
            cols[name] = pa.array(np.asarray(mean), dt)
        elif name.startswith("q") and name[1:2].isdigit():
            q = [format_level(v) for v in levels].index(name)
            cols[name] = pa.array(np.asarray(quantiles)[:, q], dt)
        elif name == "p_gt0":
            cols[name] = pa.array(np.ones(B), dt)
        elif name in ("sd",):
            cols[name] = pa.array(np.full(B, np.nan), dt)
        elif name in ("status", "note"):
            cols[name] = table[name].combine_chunks().take(pa.array(first))
        else:
            cols[name] = pa.nulls(B, typ)
    extra = pa.table(cols, schema=table.schema)
    # new order: each i2 row goes before the row at ``after``
    key = np.concatenate([np.arange(n) * 2 + 1, after * 2])
    order = np.argsort(key, kind="stable")
    return pa.concat_tables([table, extra]).take(pa.array(order))


def _write_options(header: bool):
    import pyarrow.csv as pcsv

    return pcsv.WriteOptions(include_header=header, quoting_style="needed")


def write_csv(table, sink, header: bool = True) -> None:
    """Write ``table`` as CSV to ``sink`` (a path or a binary file object)."""
    import pyarrow.csv as pcsv

    pcsv.write_csv(table, sink, write_options=_write_options(header))


def csv_bytes(table, header: bool = True) -> bytes:
    """``table`` as CSV bytes (see :func:`write_csv`)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    write_csv(table, sink, header)
    return sink.getvalue().to_pybytes()
