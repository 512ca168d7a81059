"""Text corpora as ordered lists of named documents: the Python standard library, or local files.

Documents are split into pieces of at most ``PIECE_BYTES`` so that even a single large file can be divided
between training and evaluation. Which pieces are held out is decided by a hash of the piece name alone, so the
split is stable when documents are added or removed and never overlaps.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

PIECE_BYTES = 64 * 1024
TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst", ".c", ".h", ".json", ".yaml", ".yml", ".toml", ".html", ".tex", ".csv"}


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_documents() -> list[Document]:
    """Every ``.py`` file of the running interpreter's standard library (site-packages excluded), sorted by path."""
    root = stdlib_root()
    docs = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "dist-packages/")) or "/site-packages/" in rel:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            docs.append(Document(rel, text))
    return docs


def path_documents(path: Path) -> list[Document]:
    """Text files (any file under a directory with a text suffix), ``.jsonl`` (field ``text``) or ``.parquet``."""
    path = path.expanduser()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    docs: list[Document] = []
    for f in files:
        rel = f.relative_to(path).as_posix() if path.is_dir() else f.name
        if f.suffix == ".jsonl":
            with f.open(encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"data.source: {f}:{i + 1} is not valid JSON: {e}") from None
                    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                        raise ValueError(f"data.source: {f}:{i + 1} has no string field 'text'")
                    docs.append(Document(f"{rel}:{i}", rec["text"]))
        elif f.suffix == ".parquet":
            import pandas as pd

            df = pd.read_parquet(f)
            if "text" not in df.columns:
                raise ValueError(f"data.source: {f} has no column 'text' (columns: {list(df.columns)})")
            docs.extend(Document(f"{rel}:{i}", str(t)) for i, t in enumerate(df["text"]))
        elif f.suffix in TEXT_SUFFIXES or not path.is_dir():
            try:
                docs.append(Document(rel, f.read_text(encoding="utf-8")))
            except UnicodeDecodeError:
                if not path.is_dir():
                    raise ValueError(f"data.source: {f} is not UTF-8 text") from None
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise ValueError(f"data.source: no text documents found under {path}")
    return docs


def load_documents(source: str, max_bytes: int | None = None) -> list[Document]:
    docs = stdlib_documents() if source == "stdlib" else path_documents(Path(source))
    pieces: list[Document] = []
    total = 0
    for d in docs:
        raw = d.text.encode("utf-8")
        for k, start in enumerate(range(0, len(raw), PIECE_BYTES)):
            chunk = raw[start : start + PIECE_BYTES].decode("utf-8", errors="ignore")
            pieces.append(Document(f"{d.name}#{k}", chunk))
            total += len(chunk)
            if max_bytes is not None and total >= max_bytes:
                return pieces
    return pieces


def _unit_hash(name: str) -> float:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def split_documents(docs: list[Document], eval_fraction: float) -> tuple[list[Document], list[Document]]:
    """(train, eval): a piece is held out when the hash of its name falls below ``eval_fraction``.

    If no piece falls below it, the piece with the smallest hash is held out, so a small corpus still has an
    evaluation split."""
    if len(docs) < 2:
        raise ValueError("data.source: the corpus is too small to hold out an evaluation split (needs > 64 KiB or 2 documents)")
    hashes = [_unit_hash(d.name) for d in docs]
    held = [h < eval_fraction for h in hashes]
    if not any(held):
        held[min(range(len(docs)), key=hashes.__getitem__)] = True
    if all(held):
        held[max(range(len(docs)), key=hashes.__getitem__)] = False
    train = [d for d, h in zip(docs, held) if not h]
    evals = [d for d, h in zip(docs, held) if h]
    return train, evals


def fingerprint(docs: list[Document]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.name.encode())
        h.update(b"\0")
        h.update(hashlib.sha256(d.text.encode("utf-8")).digest())
    return h.hexdigest()[:16]
