"""``scaling data prepare``: a text corpus of any size to token shards and a manifest, streamed, resumable.

The source (``scaling.data.sources``) is read piece by piece and cut into *chunks* of about ``CHUNK_CHARS``
characters at a resumable position. Each chunk's pieces go to the training or the held-out split by a hash of their
names, are tokenized in batches of ``BATCH_CHARS`` on every core (HF ``tokenizers``' batch encoding), each piece
followed by the end-of-document token, and are written as one training and one eval shard (``train/00007.bin``:
raw little-endian ``uint16``, or ``uint32`` above 65,536 ids). A shard is written to a temporary name, synced and
renamed; then ``.partial/state.json`` records it with the source position after its chunk, atomically. A killed
preparation therefore leaves no torn shard that counts: rerunning removes what the state does not list and goes on
from the recorded position, producing byte-identical shards (chunk boundaries depend only on the source). Memory
holds one chunk and its tokens, whatever the corpus size. ``manifest.json`` is written last; its presence means the
dataset is complete.

The token stream of a split is its shards concatenated in order: exactly what one array of the whole split would
be, so a dataset prepared here trains like the same corpus tokenized in one piece.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from scaling.data import sources
from scaling.storage import write_atomic
from scaling.data.sources import Piece, SourceError
from scaling.data.tokenizer import ByteTokenizer, HFTokenizer, TokenizerError, load_tokenizer_file, token_dtype, tokenizer_kind

MANIFEST = "manifest.json"
FORMAT, VERSION = "scaling-tokens", 1
CHUNK_CHARS = 32 * 2**20  # characters (or token ids) of source per chunk: one train and one eval shard
BATCH_CHARS = 4 * 2**20  # characters per batch-encoding call (bounds the tokenizer's per-token buffers)
SPLITS = ("train", "eval")


class PrepareError(ValueError):
    """Preparation cannot go on (named, with the reason); what was prepared so far is kept."""


@dataclass(frozen=True)
class PrepareSpec:
    """Everything that determines the prepared tokens (a resumed or repeated preparation must match it)."""

    source: str
    tokenizer: str = "byte"  # byte | bpe | path to a tokenizer.json
    vocab_size: Optional[int] = None  # bpe: the vocabulary to train; token-id sources: the ids' vocabulary
    eval_fraction: float = 0.02
    max_chars: Optional[int] = None
    bpe_sample_bytes: int = 128 * 2**20
    eos_token: Optional[str] = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Chunk:
    index: int
    pieces: list[Piece]
    resume: Optional[list[int]]  # source position after the chunk (None: the source is done)
    last: bool


def is_prepared(path: str | Path) -> bool:
    return (Path(path).expanduser() / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict:
    """A prepared directory's manifest, checked, or a one-line ``PrepareError`` naming the file."""
    p = Path(path).expanduser() / MANIFEST
    try:
        m = json.loads(p.read_text())
    except OSError as e:
        raise PrepareError(f"{p}: cannot read the manifest: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PrepareError(f"{p} is damaged (not JSON: {e}); prepare the dataset again") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise PrepareError(f"{p} is not a manifest of a prepared dataset (format {FORMAT!r})")
    if m.get("version") != VERSION:
        raise PrepareError(f"{p}: manifest version {m.get('version')!r}, this toolkit reads version {VERSION}")
    for key, typ in (("vocab_size", int), ("dtype", str), ("splits", dict), ("fingerprint", str), ("tokenizer", dict)):
        if not isinstance(m.get(key), typ):
            raise PrepareError(f"{p} is damaged: field {key!r} missing or not a {typ.__name__}")
    if m["dtype"] not in ("uint16", "uint32"):
        raise PrepareError(f"{p} is damaged: dtype {m['dtype']!r} (a prepared dataset is uint16 or uint32)")
    if isinstance(m["vocab_size"], bool) or m["vocab_size"] < 2:
        raise PrepareError(f"{p} is damaged: vocab_size {m['vocab_size']!r}")
    for split in SPLITS:
        s = m["splits"].get(split)
        if not isinstance(s, dict) or not isinstance(s.get("shards"), list):
            raise PrepareError(f"{p} is damaged: split {split!r} has no list of shards")
        for i, sh in enumerate(s["shards"]):
            ok = (isinstance(sh, dict) and isinstance(sh.get("file"), str) and isinstance(sh.get("tokens"), int)
                  and not isinstance(sh.get("tokens"), bool) and sh["tokens"] >= 0 and (sh.get("sha256") is None or isinstance(sh["sha256"], str))
                  and ".." not in Path(sh["file"]).parts and not Path(sh["file"]).is_absolute())
            if not ok:
                raise PrepareError(f"{p} is damaged: shard {i} of split {split!r} is not {{file, tokens, sha256}} inside the dataset: {sh!r:.120}")
    return m


# -- tokenizers ----------------------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _bpe_sample(spec: PrepareSpec, chunk_chars: int, note) -> Iterator[str]:
    """Training pieces for BPE, split exactly as the shards will be: every one when the corpus is at most
    ``bpe_sample_bytes``, otherwise a hash-chosen fraction spread over the whole corpus (a sample of its start would
    be biased by its order)."""
    total = sources.estimated_bytes(spec.source)
    if spec.max_chars is not None:
        total = min(total, spec.max_chars)
    p = min(1.0, spec.bpe_sample_bytes / max(1, total))
    if p < 1:
        note(f"training BPE on a {100 * p:.2g}% sample (~{spec.bpe_sample_bytes / 1e6:.0f} MB) of the training split")
    for chunk in _chunks(spec, [0, 0], 0, 0, chunk_chars):
        for piece in _split(chunk, spec.eval_fraction)["train"]:
            if piece.text is None:
                raise PrepareError(f"data.source: {piece.name} holds token ids; a BPE tokenizer is trained on text")
            if p >= 1 or sources.unit_hash("bpe\0" + piece.name) < p:
                yield piece.text


def _tokenizer(spec: PrepareSpec, out: Path, ids_source: bool, chunk_chars: int, note):
    """(tokenizer or None for token-id sources, its manifest entry); a trained or named tokenizer.json is kept in
    ``out`` (a resumed preparation reuses it)."""
    kind = tokenizer_kind(spec.tokenizer)
    if ids_source:
        if not spec.vocab_size:
            raise PrepareError("the source holds token ids: give their vocabulary size (--vocab-size / data.vocab_size)")
        return None, {"kind": "ids", "vocab_size": spec.vocab_size, "eos_id": None}
    if kind == "byte":
        return ByteTokenizer(), {"kind": "byte", "vocab_size": 256, "eos_id": 0}
    path = out / "tokenizer.json"
    if kind == "bpe":
        if not spec.vocab_size or spec.vocab_size < 260:
            raise PrepareError(f"--tokenizer bpe needs --vocab-size >= 260 (256 bytes + specials), got {spec.vocab_size}")
        if path.exists():
            tok = load_tokenizer_file(path)
        else:
            t0 = time.time()
            tok = HFTokenizer.train(_bpe_sample(spec, chunk_chars, note), spec.vocab_size)
            tmp = out / f".tokenizer.json.tmp{os.getpid()}"
            tok.save(tmp)
            os.replace(tmp, path)
            note(f"trained a BPE tokenizer of {tok.vocab_size} tokens in {time.time() - t0:.0f}s")
    else:
        tok = load_tokenizer_file(spec.tokenizer, spec.eos_token)
        if not path.exists() or _sha256_file(path) != _sha256_file(Path(spec.tokenizer).expanduser()):
            write_atomic(path, Path(spec.tokenizer).expanduser().read_bytes())
    return tok, {"kind": kind, "file": "tokenizer.json", "sha256": _sha256_file(path), "vocab_size": tok.vocab_size,
                 "eos_id": tok.eos_id, "eos_token": getattr(tok, "eos_token", None)}


# -- chunks and shards ---------------------------------------------------------------------------------------------


def _chunks(spec: PrepareSpec, start: list[int], chars_done: int, first_index: int, chunk_chars: int) -> Iterator[_Chunk]:
    """The source from ``start`` in chunks that end at resumable positions (with a look-ahead to mark the last)."""
    left = None if spec.max_chars is None else spec.max_chars - chars_done
    it = sources.iter_pieces(spec.source, start=tuple(start), max_chars=left)
    pieces: list[Piece] = []
    size, index = 0, first_index
    nxt = next(it, None)
    while nxt is not None:
        piece, nxt = nxt, next(it, None)
        pieces.append(piece)
        size += piece.size
        if nxt is None:
            yield _Chunk(index, pieces, None, True)
        elif size >= chunk_chars and piece.resume is not None:
            yield _Chunk(index, pieces, list(piece.resume), False)
            pieces, size, index = [], 0, index + 1


def _split(chunk: _Chunk, eval_fraction: float) -> dict[str, list[Piece]]:
    held = [sources.held_out(p.name, eval_fraction) for p in chunk.pieces]
    if chunk.index == 0 and chunk.last:
        # the whole corpus is one chunk: make sure both splits have a piece (the smallest hash is held out, the
        # largest trained on), as for a corpus tokenized in one go
        if len(chunk.pieces) < 2:
            raise PrepareError("data.source: the corpus is too small to hold out an evaluation split (needs > 64 KiB or 2 documents)")
        hashes = [sources.unit_hash(p.name) for p in chunk.pieces]
        if not any(held):
            held[min(range(len(held)), key=hashes.__getitem__)] = True
        if all(held):
            held[max(range(len(held)), key=hashes.__getitem__)] = False
    return {"train": [p for p, h in zip(chunk.pieces, held) if not h], "eval": [p for p, h in zip(chunk.pieces, held) if h]}


def _tokenize(tok, pieces: list[Piece], dtype: np.dtype, vocab_size: int) -> np.ndarray:
    """The pieces' tokens, each text piece followed by the end-of-document token (token-id pieces as they are)."""
    parts: list[np.ndarray] = []
    batch: list[str] = []
    size = 0

    def flush():
        nonlocal batch, size
        for ids in tok.encode_batch(batch):
            parts.append(ids.astype(dtype, copy=False))
            parts.append(np.array([tok.eos_id], dtype))
        batch, size = [], 0

    for p in pieces:
        if p.ids is not None:
            bad = (p.ids < 0) | (p.ids >= vocab_size)
            if bad.any():
                raise PrepareError(f"data.source: {p.name} holds token id {int(p.ids[bad][0])}, outside the vocabulary [0, {vocab_size})")
            parts.append(p.ids.astype(dtype))
            continue
        batch.append(p.text)
        size += len(p.text)
        if size >= BATCH_CHARS:
            flush()
    if batch:
        flush()
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _write_shard(path: Path, tokens: np.ndarray) -> str:
    """Write ``tokens`` under ``path`` atomically (temporary name, fsync, rename); their sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    data = np.ascontiguousarray(tokens.astype(tokens.dtype.newbyteorder("<"), copy=False))
    with open(tmp, "wb") as f:
        data.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data.tobytes()).hexdigest()


# -- the preparation -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path, note):
    """An exclusive lock on ``path`` for the block; a second process waits (saying so) until the first is done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            note(f"waiting for another process preparing {path.parent}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _ids_source(spec: PrepareSpec) -> bool:
    """Whether the source holds token ids (parquet id columns) rather than text; a mix is refused."""
    _, files = sources.source_files(spec.source)
    kinds = {sources.parquet_column(f)[0] if f.suffix == ".parquet" else "text" for f in files}
    if len(kinds) > 1:
        raise PrepareError(f"data.source: {spec.source} mixes text and token-id files; prepare them separately")
    return kinds == {"ids"}


def prepare(spec: PrepareSpec, out: str | Path, progress=None, note=None, chunk_chars: int = CHUNK_CHARS) -> dict:
    """Prepare ``spec.source`` into ``out`` (resuming an interrupted preparation there); the manifest.

    ``progress``: an object with ``update(bytes_read, tokens)`` (``scaling.ui.RateMeter``). ``note``: a callable
    taking one line of news. Raises ``PrepareError`` / ``SourceError`` / ``TokenizerError`` (one line each) on bad
    input; what was prepared until then stays and a rerun goes on from it."""
    out = Path(out).expanduser()
    note = note or (lambda msg: None)
    if out.exists() and not out.is_dir():
        raise PrepareError(f"--out {out} exists and is not a directory")
    with _locked(out / ".lock", note):
        if is_prepared(out):
            m = read_manifest(out)
            if m.get("spec") != spec.as_dict():
                raise PrepareError(
                    f"{out} already holds a dataset prepared from {m.get('spec', {}).get('source')!r} with other settings "
                    f"({_diff(m.get('spec', {}), spec.as_dict())}); choose another --out or remove it"
                )
            note(f"{out} is already prepared ({_tokens_line(m)})")
            return m
        return _prepare_locked(spec, out, progress, note, chunk_chars)


def _diff(a: dict, b: dict) -> str:
    return ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def _tokens_line(m: dict) -> str:
    s = m["splits"]
    return f"{s['train']['tokens']:,} training and {s['eval']['tokens']:,} eval tokens, vocabulary {m['vocab_size']:,}, {m['dtype']}"


def _prepare_locked(spec: PrepareSpec, out: Path, progress, note, chunk_chars: int) -> dict:
    t0 = time.time()
    partial = out / ".partial"
    state_path = partial / "state.json"
    state = None
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PrepareError(f"{state_path} is damaged; remove {out} and prepare again") from None
        if state.get("spec") != spec.as_dict() or state.get("chunk_chars") != chunk_chars:
            raise PrepareError(
                f"{out} holds an interrupted preparation with other settings ({_diff(state.get('spec', {}), spec.as_dict())}); "
                "rerun it with the same settings to finish it, or choose another --out"
            )
        note(f"resuming the preparation of {out} after {len(state['chunks'])} chunks")
    ids_source = _ids_source(spec)
    partial.mkdir(parents=True, exist_ok=True)
    tok, tok_entry = _tokenizer(spec, out, ids_source, chunk_chars, note)
    if state is None:
        state = {"spec": spec.as_dict(), "chunk_chars": chunk_chars, "tokenizer": tok_entry, "chunks": [], "resume": [0, 0],
                 "chars": 0, "bytes": 0, "seconds": 0.0}
    elif state.get("tokenizer") != tok_entry:
        raise PrepareError(f"{out}: the tokenizer changed since the interrupted preparation started; remove {out} and prepare again")
    vocab = tok_entry["vocab_size"]
    dtype = token_dtype(vocab)
    _remove_uncommitted(out, state)
    bytes_done = state["bytes"]
    tokens_done = sum(c[s]["tokens"] for c in state["chunks"] for s in SPLITS)
    if progress is not None:
        progress.update(bytes_done, tokens_done)
    start_seconds = state["seconds"]
    if state["resume"] is not None:
        for chunk in _chunks(spec, state["resume"], state["chars"], len(state["chunks"]), chunk_chars):
            entry = {"index": chunk.index}
            for split, pieces in _split(chunk, spec.eval_fraction).items():
                tokens = _tokenize(tok, pieces, dtype, vocab)
                name = f"{split}/{chunk.index:05d}.bin"
                entry[split] = {"file": name, "tokens": int(len(tokens)), "pieces": len(pieces),
                                "documents": sum(p.name.endswith("#0") for p in pieces),
                                "bytes": sum(p.n_bytes for p in pieces), "sha256": _write_shard(out / name, tokens) if len(tokens) else None}
                tokens_done += len(tokens)
            chunk_bytes = entry["train"]["bytes"] + entry["eval"]["bytes"]
            bytes_done += chunk_bytes
            state["chunks"].append(entry)
            state["resume"] = chunk.resume
            state["chars"] += sum(p.size for p in chunk.pieces)
            state["bytes"] = bytes_done
            state["seconds"] = start_seconds + time.time() - t0
            write_atomic(state_path, json.dumps(state).encode())  # the chunk counts from here on
            if progress is not None:
                progress.update(bytes_done, tokens_done)
    manifest = _manifest(spec, state, dtype)
    write_atomic(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    shutil.rmtree(partial, ignore_errors=True)
    return manifest


def _remove_uncommitted(out: Path, state: dict) -> None:
    """Shards a killed preparation left that its state does not list (torn temporaries, a chunk not committed)."""
    keep = {c[s]["file"] for c in state["chunks"] for s in SPLITS if c[s]["sha256"]}
    for split in SPLITS:
        d = out / split
        if d.is_dir():
            for f in d.iterdir():
                if f"{split}/{f.name}" not in keep:
                    f.unlink()


def _manifest(spec: PrepareSpec, state: dict, dtype: np.dtype) -> dict:
    import tokenizers

    splits = {}
    for split in SPLITS:
        entries = [c[split] for c in state["chunks"] if c[split]["tokens"]]
        splits[split] = {
            "tokens": sum(e["tokens"] for e in entries),
            "pieces": sum(c[split]["pieces"] for c in state["chunks"]),
            "documents": sum(c[split]["documents"] for c in state["chunks"]),
            "bytes": sum(c[split]["bytes"] for c in state["chunks"]),
            "shards": [{"file": e["file"], "tokens": e["tokens"], "sha256": e["sha256"]} for e in entries],
        }
    if not splits["eval"]["tokens"]:
        raise PrepareError(f"data.source: no piece of {spec.source} fell in the evaluation split; raise --eval-fraction (now {spec.eval_fraction:g})")
    if not splits["train"]["tokens"]:
        raise PrepareError(f"data.source: no piece of {spec.source} fell in the training split; lower --eval-fraction (now {spec.eval_fraction:g})")
    tok = state["tokenizer"]
    h = hashlib.sha256(f"{tok.get('sha256') or tok['kind']}\0{tok['vocab_size']}\0{np.dtype(dtype).name}".encode())
    for split in SPLITS:
        for s in splits[split]["shards"]:
            h.update(f"{split}\0{s['sha256']}\n".encode())
    return {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.as_dict(),
        "source": spec.source,
        "tokenizer": tok,
        "vocab_size": int(tok["vocab_size"]),
        "dtype": np.dtype(dtype).name,
        "splits": splits,
        "fingerprint": h.hexdigest()[:16],
        "chunk_chars": state["chunk_chars"],
        "prepare_seconds": round(state["seconds"], 1),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "prepared_by": {"host": socket.gethostname(), "pid": os.getpid()},
        "versions": {"tokenizers": tokenizers.__version__},
    }


__all__ = ["MANIFEST", "PrepareError", "PrepareSpec", "SourceError", "TokenizerError", "is_prepared", "prepare", "read_manifest"]
