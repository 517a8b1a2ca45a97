"""CSV and JSON files of a table of named per-sample columns with metadata (the files of a ``BoundReport``).

The CSV form is two leading ``#`` comment lines (the metadata and the column kinds, as JSON) followed by the table;
floats are written with ``repr`` so they are read back exactly. In JSON, non-finite floats are the strings
``"nan"``, ``"inf"`` and ``"-inf"``. Every file is written atomically (:mod:`art_jacreg._io`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any

import numpy as np

from art_jacreg._io import atomic_write_text

__all__ = ["encode", "write_csv", "read_csv", "decode_json_columns"]


def encode(value: Any) -> Any:
    """A JSON-safe scalar: numpy scalars as Python ones, non-finite floats as ``"nan"``, ``"inf"``, ``"-inf"``.

    :param value: A scalar.
    :return: The JSON-safe value.
    """
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return str(float(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


def _csv_value(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(int(value))


def write_csv(
    path: str | os.PathLike, meta: dict[str, Any], kinds: dict[str, str], columns: dict[str, np.ndarray]
) -> None:
    """Write the columns as CSV after two ``#`` lines holding ``meta`` and ``kinds``, atomically.

    :param path: Output file.
    :param meta: JSON-safe metadata.
    :param kinds: Kind of every column.
    :param columns: Column name -> array ``(N,)`` of bools, ints or floats, in table order.
    """
    buffer = io.StringIO(newline="")
    buffer.write("# " + json.dumps(meta) + "\n")
    buffer.write("# " + json.dumps(kinds) + "\n")
    writer = csv.writer(buffer)
    writer.writerow(columns)
    n = len(next(iter(columns.values()))) if columns else 0
    for i in range(n):
        writer.writerow([_csv_value(values[i]) for values in columns.values()])
    atomic_write_text(path, buffer.getvalue())


def read_csv(path: str | os.PathLike, dtypes: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], dict]:
    """Read a file written by :func:`write_csv`.

    :param path: The CSV file.
    :param dtypes: dtype of the columns that are not float64 (``bool`` columns hold ``True`` / ``False``).
    :return: ``(meta, kinds, columns)``.
    """
    with open(path, encoding="utf-8") as handle:
        meta = json.loads(handle.readline()[2:])
        kinds = json.loads(handle.readline()[2:])
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    columns: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        raw = [row[j] for row in body]
        if dtypes.get(name) is bool:
            columns[name] = np.array([v == "True" for v in raw], dtype=bool)
        else:
            columns[name] = np.array([float(v) for v in raw], dtype=dtypes.get(name, np.float64))
    return meta, kinds, columns


def decode_json_columns(data: dict[str, list[Any]], dtypes: dict[str, Any]) -> dict[str, Any]:
    """The arrays of the ``data`` part of a JSON file (non-finite float strings and ``None`` decoded).

    :param data: Column name -> list of JSON values.
    :param dtypes: dtype of the columns that are not float64.
    :return: Column name -> array.
    """
    columns: dict[str, np.ndarray] = {}
    for name, values in data.items():
        dtype = dtypes.get(name, np.float64)
        if dtype is np.float64:
            values = [float(v) if v is not None else float("nan") for v in values]
        columns[name] = np.array(values, dtype=dtype)
    return columns
