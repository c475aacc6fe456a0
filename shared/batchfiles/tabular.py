"""Reading and writing the three batch file formats (CSV, JSON Lines, Parquet) with pyarrow.

Everything streams in record batches, so memory stays bounded by a block or a row group
whatever the file's size. Plain functions, no I/O beyond the paths and streams handed in:

- :func:`sniff` tells the format from a file's first bytes (checked against Content-Type);
- :func:`inspect` makes the structural pass of an upload (columns, rows, duplicate names,
  ragged CSV rows, an empty or header-only file) and raises :class:`BadFile` with a detail a
  user can act on;
- :func:`read_batches` streams a file as record batches, features typed as the model wants;
- :func:`BatchWriter` writes record batches as any of the three formats.

pyarrow is imported lazily: the API's routes import this module only when a file is handled.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

Format = Literal["csv", "jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl", "parquet")
#: The canonical Content-Type of each format (answered on download).
MEDIA_TYPES: dict[Format, str] = {
    "csv": "text/csv",
    "jsonl": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}
#: Content-Types accepted on upload, and the format each one declares.
ACCEPTED_TYPES: dict[str, Format] = {
    "text/csv": "csv",
    "application/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
    "application/jsonlines": "jsonl",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
}
PARQUET_MAGIC = b"PAR1"
#: Bytes pyarrow's CSV and JSON readers parse per block (bounds their memory). The API's
#: structural pass of an upload uses small blocks: its RSS must stay flat whatever the size.
BLOCK_BYTES = 16 << 20
INSPECT_BLOCK_BYTES = 1 << 20
#: The model's feature types as Arrow types.
ARROW_TYPES = {"number": "float64", "integer": "int64", "boolean": "bool_", "string": "string"}
#: The one column of a JSON Lines chunk: its raw lines.
LINE_COLUMN = "__predq_line__"
_TRUE = ["true", "True", "TRUE"]
_FALSE = ["false", "False", "FALSE"]


class BadFile(ValueError):
    """A file that cannot be read as its format; the message says what and where."""


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What the structural pass learned of a file."""

    columns: list[str]
    n_rows: int
    #: Arrow type names per column when the format records them (Parquet, JSON Lines).
    types: dict[str, str] | None


def sniff(head: bytes) -> Format | None:
    """The format that ``head`` (a file's first bytes) looks like, or None (binary)."""
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"{"):
        return "jsonl"
    if b"\x00" in head:
        return None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # a multi-byte character cut at the end is fine
            return None
    return "csv"


def _pa() -> Any:
    import pyarrow as pa

    return pa


def _check_names(columns: list[str]) -> None:
    dupes = sorted(n for n, c in Counter(columns).items() if c > 1)
    if dupes:
        raise BadFile(f"duplicate column names: {', '.join(map(repr, dupes))}")


def inspect(path: Path, fmt: Format) -> FileInfo:
    """The structural pass of a stored file; raises :class:`BadFile`."""
    pa = _pa()
    try:
        if fmt == "parquet":
            return _inspect_parquet(path)
        if fmt == "csv":
            return _inspect_csv(path)
        return _inspect_jsonl(path)
    except BadFile:
        raise
    except (pa.ArrowInvalid, pa.ArrowException, OSError, UnicodeDecodeError) as e:
        raise BadFile(f"not a readable {fmt} file: {_arrow_message(e)}") from e


def _arrow_message(e: Exception) -> str:
    text = str(e).strip()
    return text if len(text) <= 500 else text[:497] + "..."


def _inspect_parquet(path: Path) -> FileInfo:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    columns = list(schema.names)
    _check_names(columns)
    if not columns:
        raise BadFile("the Parquet file has no columns")
    if pf.metadata.num_rows == 0:
        raise BadFile("the file holds no rows")
    return FileInfo(columns, pf.metadata.num_rows,
                    {f.name: str(f.type) for f in schema})


def _skip(row: Any) -> str:
    return "skip"


def _csv_header(path: Path) -> list[str]:
    import pyarrow.csv as pcsv

    reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 20),
                           parse_options=pcsv.ParseOptions(invalid_row_handler=_skip),
                           convert_options=pcsv.ConvertOptions(include_columns=[]))
    return list(reader.schema.names)


def _inspect_csv(path: Path) -> FileInfo:
    import pyarrow.csv as pcsv

    with open(path, "rb") as f:
        if not f.read(4096).strip():
            raise BadFile("the file is empty")
    try:
        columns = _csv_header(path)
    except _pa().ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            raise BadFile("the file is empty") from e
        raise
    _check_names(columns)
    ragged: list[Any] = []

    def on_invalid(row: Any) -> str:
        ragged.append(row)
        return "error"

    n = 0
    try:
        # Only the first column is converted: the parser still counts every row's fields.
        reader = pcsv.open_csv(
            path, read_options=pcsv.ReadOptions(block_size=INSPECT_BLOCK_BYTES,
                                                use_threads=False),
            parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(include_columns=[columns[0]],
                                                column_types={columns[0]: _pa().string()}))
        for batch in reader:
            n += batch.num_rows
    except _pa().ArrowInvalid as e:
        if ragged:
            row = ragged[0]
            where = f"data row {row.number - 2}" if row.number is not None else "a row"
            text = row.text if len(row.text) <= 200 else row.text[:197] + "..."
            raise BadFile(f"ragged CSV: {where} has {row.actual_columns} fields, the header "
                          f"{row.expected_columns} ({text!r})") from e
        raise
    if n == 0:
        raise BadFile("the file holds a header but no rows")
    return FileInfo(columns, n, None)


#: JSON Lines: the columns are the keys of the first lines (a key first seen later is an
#: extra field of that row: an error in the error file, as in a JSON job).
JSONL_SAMPLE_LINES = 1000


def _inspect_jsonl(path: Path) -> FileInfo:
    import orjson

    columns: dict[str, None] = {}
    n = 0
    for line in iter_lines(path):
        if n < JSONL_SAMPLE_LINES:
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise BadFile(f"line {n + 1} is not valid JSON: {e}") from e
            if not isinstance(obj, dict):
                raise BadFile(f"line {n + 1} is not a JSON object")
            columns.update(dict.fromkeys(obj))
        n += 1
    if n == 0:
        raise BadFile("the file holds no rows")
    return FileInfo(list(columns), n, None)


def iter_lines(path: Path, skip: int = 0) -> Iterator[bytes]:
    """The non-blank lines of a JSON Lines file, streamed, after the first ``skip``."""
    seen = 0
    with open(path, "rb") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if seen >= skip:
                yield line
            seen += 1


def arrow_type(kind: str) -> Any:
    return getattr(_pa(), ARROW_TYPES[kind])()


def type_mismatch(kind: str, arrow_name: str) -> bool:
    """Whether a column stored as ``arrow_name`` can never hold the feature type ``kind``
    (the JSON path's strict types: a number accepts integers, nothing else converts)."""
    t = arrow_name
    if t in ("null",):
        return False
    ints = t.startswith(("int", "uint"))
    floats = t in ("float", "double", "halffloat", "float16", "float32", "float64") \
        or t.startswith("decimal")
    if kind == "number":
        return not (ints or floats)
    if kind == "integer":
        return not ints
    if kind == "boolean":
        return t != "bool"
    return t not in ("string", "large_string", "string_view")


def read_batches(path: Path, fmt: Format, types: dict[str, str], *, as_text: bool = False,
                 skip_rows: int = 0, batch_rows: int = 65_536) -> Iterator[Any]:
    """Stream the file as record batches. ``types`` maps columns to feature types (CSV
    reads them as such; ``as_text`` reads them as strings, for a file whose values do not
    all convert: the chunk's validation then finds the bad ones). ``skip_rows`` data rows
    are skipped first."""
    pa = _pa()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        seen = 0
        for batch in pf.iter_batches(batch_size=batch_rows):
            if seen + batch.num_rows <= skip_rows:
                seen += batch.num_rows
                continue
            if seen < skip_rows:
                batch = batch.slice(skip_rows - seen)
            seen += batch.num_rows
            yield batch
        return
    if fmt == "jsonl":
        # The lines themselves, unparsed: each chunk parses its own
        # (predq.worker.batchfiles.chunks), so one
        # line of another shape never stops the file, and its row gets the JSON path's error.
        lines: list[bytes] = []
        for line in iter_lines(path, skip_rows):
            lines.append(line)
            if len(lines) >= batch_rows:
                yield pa.record_batch([pa.array(lines, pa.binary())], names=[LINE_COLUMN])
                lines = []
        if lines:
            yield pa.record_batch([pa.array(lines, pa.binary())], names=[LINE_COLUMN])
        return
    import pyarrow.csv as pcsv

    column_types = {name: pa.string() if as_text else arrow_type(kind)
                    for name, kind in types.items()}
    reader = pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(block_size=BLOCK_BYTES, skip_rows_after_names=skip_rows),
        convert_options=pcsv.ConvertOptions(column_types=column_types, true_values=_TRUE,
                                            false_values=_FALSE))
    yield from reader


class BatchWriter:
    """Writes record batches to a binary stream as CSV, JSON Lines or Parquet."""

    def __init__(self, sink: BinaryIO | io.RawIOBase, fmt: Format, schema: Any) -> None:
        self.fmt = fmt
        self.sink = sink
        self.schema = schema
        self._writer: Any = None
        if fmt == "csv":
            import pyarrow.csv as pcsv

            self._writer = pcsv.CSVWriter(sink, schema)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(sink, schema)

    def write(self, batch: Any) -> None:
        if self.fmt == "jsonl":
            import orjson

            lines = [orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE | _NAN_OK)
                     for row in batch.to_pylist()]
            self.sink.write(b"".join(lines))
        else:
            self._writer.write_batch(batch)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


_NAN_OK = 0  # orjson writes NaN as null already
