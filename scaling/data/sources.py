"""Streaming text sources: documents read one at a time and cut into pieces, with positions to resume from.

A source is ``stdlib`` (the running interpreter's standard-library ``.py`` files), a text file, a ``.jsonl`` file
(one JSON object per line with a string field ``text``), a ``.parquet`` file (a string column ``text``, read in
pyarrow record batches; or a list-of-integers column of token ids, see ``ID_COLUMNS``) or a directory of such files
(read in sorted order; plain files only with a text suffix). Nothing is read whole: a file larger than
``WHOLE_FILE_BYTES`` is read in ``PIECE_BYTES`` blocks, a ``.jsonl`` line by line, a ``.parquet`` a record batch at
a time, so memory is bounded whatever the corpus size.

Every document is cut into pieces of at most ``PIECE_BYTES`` of UTF-8 (a character cut at a piece boundary is
dropped) so that even one large file can be divided between training and evaluation; a piece is named
``DOCUMENT#k`` and held out for evaluation by a hash of that name alone (``held_out``), so the split is stable when
documents are added or removed and never overlaps. Each piece carries ``resume``: the position just after it where
reading can start again (``None`` inside a ``.jsonl`` / ``.parquet`` document), which is what makes preparation
resumable after a kill without re-reading what was done.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

PIECE_BYTES = 64 * 1024
WHOLE_FILE_BYTES = 64 * 1024 * 1024  # plain text files up to this size are read whole (strict UTF-8, universal newlines)
TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst", ".c", ".h", ".json", ".yaml", ".yml", ".toml", ".html", ".tex", ".csv"}
ID_COLUMNS = ("input_ids", "ids", "tokens")  # a parquet column of token ids (list<int>) under one of these names
PARQUET_BATCH_ROWS = 1024

Position = tuple[int, int]  # (index of the file in the source's sorted file list, offset: bytes for text, rows for parquet)


class SourceError(ValueError):
    """A corpus file that cannot be read as the format its name says (named, with the reason)."""


@dataclass(frozen=True)
class Piece:
    name: str
    text: Optional[str]  # None for pre-tokenized pieces
    ids: Optional[np.ndarray] = None
    resume: Optional[Position] = None  # where reading restarts just after this piece (None: inside a document)

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8")) if self.text is not None else 0

    @property
    def size(self) -> int:
        """Its share of a chunk: characters of text, or token ids."""
        return len(self.text) if self.text is not None else len(self.ids)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(source: str) -> tuple[Path, list[Path]]:
    """(root, the files the source reads in order): stdlib's ``.py`` files (site-packages excluded) or the files of a
    path (a directory's files sorted by relative path; a file alone)."""
    if source == "stdlib":
        root = stdlib_root()
        files = []
        for p in sorted(root.rglob("*.py")):
            rel = p.relative_to(root).as_posix()
            if rel.startswith(("site-packages/", "dist-packages/")) or "/site-packages/" in rel:
                continue
            files.append(p)
        return root, files
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
        files = [f for f in files if f.suffix in TEXT_SUFFIXES or f.suffix in (".jsonl", ".parquet")]
        return path, files
    if not path.exists():
        raise SourceError(f"data.source: {path} does not exist")
    return path, [path]


def stat_key(source: str) -> str:
    """A quick identity of the source's files (names, sizes, modification times), read without opening them: the
    key under which a prepared copy is cached."""
    root, files = source_files(source)
    h = hashlib.sha256(f"{source}\0".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root).as_posix() if root.is_dir() else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def estimated_bytes(source: str) -> int:
    """Text bytes the source holds, estimated without reading it (parquet: the text column's uncompressed size)."""
    _, files = source_files(source)
    total = 0
    for f in files:
        if f.suffix == ".parquet":
            total += _parquet_text_bytes(f)
        else:
            total += f.stat().st_size
    return total


def _parquet_text_bytes(f: Path) -> int:
    import pyarrow.parquet as pq

    md = pq.ParquetFile(f).metadata
    names = [md.schema.column(j).name for j in range(md.num_columns)]
    cols = [j for j, n in enumerate(names) if n == "text"] or list(range(md.num_columns))
    return sum(md.row_group(i).column(j).total_uncompressed_size for i in range(md.num_row_groups) for j in cols)


def held_out(name: str, eval_fraction: float) -> bool:
    return unit_hash(name) < eval_fraction


def unit_hash(name: str) -> float:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def iter_pieces(source: str, start: Position = (0, 0), max_chars: int | None = None) -> Iterator[Piece]:
    """The source's pieces in order from ``start`` (a ``resume`` position of an earlier piece), stopping after the
    piece that brings the characters read to ``max_chars`` (counted from the beginning of the source only when
    ``start`` is (0, 0))."""
    root, files = source_files(source)
    total = 0
    for fi in range(start[0], len(files)):
        f = files[fi]
        rel = f.relative_to(root).as_posix() if root.is_dir() else f.name
        offset = start[1] if fi == start[0] else 0
        if f.suffix == ".jsonl":
            gen = _jsonl_pieces(f, rel, fi, offset)
        elif f.suffix == ".parquet":
            gen = _parquet_pieces(f, rel, fi, offset)
        else:
            gen = _text_pieces(f, rel, fi, offset, strict=not root.is_dir(), skip_unreadable=source == "stdlib")
        for piece in gen:
            yield piece
            total += piece.size
            if max_chars is not None and total >= max_chars:
                return


def _cut(name: str, text: str, resume: Position | None) -> Iterator[Piece]:
    """A document's pieces (``PIECE_BYTES`` of UTF-8 each); the last one carries the document's resume position."""
    raw = text.encode("utf-8")
    starts = range(0, len(raw), PIECE_BYTES)
    for k, s in enumerate(starts):
        chunk = raw[s : s + PIECE_BYTES].decode("utf-8", errors="ignore")
        yield Piece(f"{name}#{k}", chunk, resume=resume if k == len(starts) - 1 else None)


def _text_pieces(f: Path, rel: str, fi: int, offset: int, strict: bool, skip_unreadable: bool = False) -> Iterator[Piece]:
    size = f.stat().st_size
    if size <= WHOLE_FILE_BYTES:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            if strict:
                raise SourceError(f"data.source: {f} is not UTF-8 text") from None
            return  # a file of a directory that is not text is skipped
        except OSError as e:
            if skip_unreadable:
                return
            raise SourceError(f"data.source: cannot read {f}: {e.strerror or e}") from None
        if text.strip():
            yield from _cut(rel, text, (fi + 1, 0))
        return
    # A large file: read in PIECE_BYTES blocks, each piece resumable (a character cut at a block edge is dropped,
    # as for a document read whole; newlines translated as a whole read would).
    with open(f, "rb") as fh:
        fh.seek(offset)
        k = offset // PIECE_BYTES
        while True:
            block = fh.read(PIECE_BYTES)
            if not block:
                return
            pos = fh.tell()
            text = block.decode("utf-8", errors="ignore").replace("\r\n", "\n")
            yield Piece(f"{rel}#{k}", text, resume=(fi + 1, 0) if pos >= size else (fi, pos))
            k += 1


def _jsonl_pieces(f: Path, rel: str, fi: int, offset: int) -> Iterator[Piece]:
    with open(f, "rb") as fh:
        fh.seek(offset)
        i = _line_index(f, offset)
        while True:
            line = fh.readline()
            if not line:
                return
            pos = fh.tell()
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SourceError(f"data.source: {f}:{i + 1} is not valid JSON: {e}") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                    raise SourceError(f"data.source: {f}:{i + 1} has no string field 'text'")
                if rec["text"].strip():
                    yield from _cut(f"{rel}:{i}", rec["text"], (fi, pos))
            i += 1


def _line_index(f: Path, offset: int) -> int:
    """The number of lines before byte ``offset`` (a resume position is always at a line start)."""
    if offset == 0:
        return 0
    n = 0
    with open(f, "rb") as fh:
        left = offset
        while left > 0:
            block = fh.read(min(left, 1 << 24))
            n += block.count(b"\n")
            left -= len(block)
    return n


def parquet_column(f: Path) -> tuple[str, str]:
    """('text' | 'ids', column name) of a parquet corpus file, or a one-line error naming the file and its columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(f)
    except (OSError, pa.ArrowException) as e:
        raise SourceError(f"data.source: {f} is not a readable parquet file: {e}") from None
    if "text" in schema.names:
        if not (pa.types.is_string(schema.field("text").type) or pa.types.is_large_string(schema.field("text").type)):
            raise SourceError(f"data.source: {f}: column 'text' is {schema.field('text').type}, not strings")
        return "text", "text"
    for name in ID_COLUMNS:
        if name in schema.names:
            t = schema.field(name).type
            if (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type):
                return "ids", name
    raise SourceError(
        f"data.source: {f} has no column 'text' (strings) or token ids ({' / '.join(ID_COLUMNS)}: lists of integers); "
        f"columns: {schema.names}"
    )


def _parquet_pieces(f: Path, rel: str, fi: int, offset: int) -> Iterator[Piece]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind, col = parquet_column(f)
    try:
        # no pre-buffering and no reader threads: with them pyarrow's memory grew to ~1 GB per 1.5 GB of text read
        # (2.7 GB at 4 GB); without, it stays at the batch in hand (200 MB), and reads faster (benchmarks/RESULTS.md)
        pf = pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20)
        md = pf.metadata
        # skip whole row groups before the resume row, then rows inside the first one read
        first, row0 = 0, 0
        while first < md.num_row_groups and row0 + md.row_group(first).num_rows <= offset:
            row0 += md.row_group(first).num_rows
            first += 1
        row = row0
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[col], row_groups=range(first, md.num_row_groups), use_threads=False):
            values = batch.column(0)
            for j in range(len(values)):
                if row < offset:
                    row += 1
                    continue
                v = values[j]
                name = f"{rel}:{row}"
                row += 1
                if not v.is_valid:
                    continue
                if kind == "text":
                    text = v.as_py()
                    if text.strip():
                        yield from _cut(name, text, (fi, row))
                else:
                    ids = np.asarray(v.values.to_numpy(zero_copy_only=False))
                    if len(ids):
                        yield Piece(f"{name}#0", None, ids=ids, resume=(fi, row))
    except (OSError, pa.ArrowException) as e:
        raise SourceError(f"data.source: {f}: cannot read row {row}: {e}") from None
