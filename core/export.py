"""Flat, pandas-friendly views of a results file: ``samples.csv`` / ``samples.parquet`` and ``provenance.json``.

``samples.jsonl`` keeps the nested per-sample records (and the provenance as line 1, which resume needs). Its nested
outcomes sit under keys such as ``noise:sigma=0.5`` that make poor column names, so every run also writes a tidy
(long) table with plain column names, one row per sample and condition:

=============  ==========================================================================================
``key``        the sample id
``section``    where the outcome sits: ``sample`` (a record without nested outcomes), ``baseline``,
               ``interventions``, ``mediation``, ``conditions`` ... (the record's own top-level key), or ``error``
``condition``  the condition inside the section, its path joined with ``/`` (``zero``, ``noise:sigma=0.5``,
               ``image/y11``); empty for a section that is itself the outcome (``baseline``). A record that is
               itself scored (bench: ``correct`` at top level) is the ``baseline`` row; an outcome's plain
               sub-dicts (``timing``, ``judge``) become ``timing_row_s``-style columns of its row
...            the record's top-level scalar fields (``gold``, ``category``, ...), then the outcome's own fields
               (``answer``, ``correct``, ``logp_gold`` ...); lists are kept as lists in parquet and JSON text in CSV
=============  ==========================================================================================

So ``pd.read_csv("samples.csv").query("section == 'interventions'").groupby("condition").correct.mean()`` is the
accuracy per intervention. Error records are rows with ``section == "error"`` and ``record`` / ``field`` /
``message``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

from latentcheck.core.records import ResultStream, file_mode, write_json_atomic

FIXED = ("key", "section", "condition")
EXPORTS = ("provenance.json", "samples.csv", "samples.parquet")  # written beside every merged samples.jsonl


def _is_outcome(d: dict) -> bool:
    """A dict whose values are all plain (no nested dict): one outcome."""
    return not any(isinstance(v, dict) for v in d.values())


def _is_scored(d: dict) -> bool:
    """An outcome that carries its own details in plain sub-dicts (bench: ``correct`` with ``timing`` / ``judge``)."""
    return "correct" in d and not isinstance(d["correct"], dict)


def _scored_fields(d: dict) -> dict[str, Any]:
    """A scored outcome as one row: its scalars, plain sub-dicts as ``NAME_field`` columns, anything deeper as a
    cell."""
    out = {k: v for k, v in d.items() if not isinstance(v, dict)}
    for k, v in d.items():
        if isinstance(v, dict):
            if _is_outcome(v):
                out.update({f"{k}_{kk}": vv for kk, vv in v.items()})
            else:
                out[k] = v
    return out


def _walk(d: dict, path: list[str], inherited: dict[str, Any], out: list[tuple[list[str], dict]]) -> None:
    if _is_scored(d):
        out.append((path, {**inherited, **_scored_fields(d)}))
        return
    scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
    nested = {k: v for k, v in d.items() if isinstance(v, dict) and v}
    if not nested:
        out.append((path, {**inherited, **scalars}))
        return
    carried = dict(inherited)
    for k, v in scalars.items():  # fields shared by the outcomes below (e.g. a mediation partner)
        name = k if k not in carried or carried[k] == v else f"{path[-1] if path else 'parent'}_{k}"
        carried[name] = v
    for k, v in nested.items():
        _walk(v, path + [str(k)], carried, out)


def _cell(v: Any) -> Any:
    """A plain cell value: dicts and lists of non-scalars become JSON text (no nested columns)."""
    if isinstance(v, dict) or (isinstance(v, (list, tuple)) and any(isinstance(x, (dict, list, tuple)) for x in v)):
        return json.dumps(v, sort_keys=True, default=str)
    return v


def flat_rows(records: Iterable[dict]) -> list[dict[str, Any]]:
    """Tidy rows (module docstring) of sample and error records."""
    return [{k: _cell(v) for k, v in row.items()} for row in _rows(records)]


def _rows(records: Iterable[dict]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for rec in records:
        key = rec.get("key", rec.get("id"))
        kind = rec.get("type", "sample")
        if kind == "error":
            rows.append({"key": key, "section": "error", "condition": "",
                         **{k: v for k, v in rec.items() if k not in ("type", "key")}})
            continue
        top = {k: v for k, v in rec.items() if k not in ("type", "key") and not isinstance(v, dict)}
        nested = {k: v for k, v in rec.items() if isinstance(v, dict) and v}
        if _is_scored(rec):  # the record is itself the baseline outcome (bench): one row, conditions below it
            fields = _scored_fields({k: v for k, v in rec.items() if k not in ("type", "key")})
            rows.append({"key": key, "section": "baseline", "condition": "",
                         **{k: v for k, v in fields.items() if not isinstance(v, dict)}})
            nested = {k: v for k, v in nested.items() if not _is_outcome(v)}
            # the condition rows below keep the record's descriptors (id, gold, category), not its outcome fields
            outcome_keys = {k for sec in nested.values() for o in sec.values() if isinstance(o, dict) for k in o}
            top = {k: v for k, v in top.items() if k not in outcome_keys}
        if not nested:
            rows.append({"key": key, "section": "sample", "condition": "", **top})
            continue
        for section, value in nested.items():
            found: list[tuple[list[str], dict]] = []
            _walk(value, [], {}, found)
            for path, fields in found:
                row = {"key": key, "section": section, "condition": "/".join(path), **top}
                for k, v in fields.items():
                    row[k if k not in row or k in top and row[k] == v else f"{section}_{k}"] = v
                rows.append(row)
    return rows


def _columns(rows: list[dict]) -> list[str]:
    cols: dict[str, None] = dict.fromkeys(FIXED)
    for r in rows:
        cols.update(dict.fromkeys(r))
    return list(cols)


def _csv_value(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return json.dumps(v)
    return "" if v is None else v


def write_flat(results_path: str | os.PathLike, folder: str | os.PathLike | None = None,
               parquet: bool = True) -> dict[str, str]:
    """Write ``samples.csv`` (always) and ``samples.parquet`` (when pyarrow is installed) next to ``results_path``
    (or into ``folder``); returns {format: path}. Files are replaced atomically and follow the umask."""
    src = Path(results_path)
    folder = Path(folder) if folder is not None else src.parent
    rows = flat_rows(ResultStream(src))
    cols = _columns(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: _csv_value(r.get(c)) for c in cols})
    written = {"csv": str(_atomic_bytes(folder / "samples.csv", buf.getvalue().encode("utf-8")))}
    if parquet:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            return written
        table = pa.table({c: _arrow_column(pa, [r.get(c) for r in rows]) for c in cols}) if rows else pa.table({})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        written["parquet"] = str(_atomic_bytes(folder / "samples.parquet", sink.getvalue().to_pybytes()))
    return written


def _arrow_column(pa, values: list[Any]):
    """One parquet column; a column whose values have mixed types (an id that is sometimes a number) is text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v, default=str)
                         for v in values], type=pa.string())


def _atomic_bytes(path: Path, data: bytes) -> Path:
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_provenance(results_path: str | os.PathLike, folder: str | os.PathLike | None = None) -> str:
    """``provenance.json``: the run's provenance record (command, config, model, versions, ...) in its own file."""
    src = Path(results_path)
    folder = Path(folder) if folder is not None else src.parent
    prov = {k: v for k, v in ResultStream(src).provenance.items() if k != "type"}
    return str(write_json_atomic(folder / "provenance.json", prov))
