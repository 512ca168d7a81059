"""Token shards on disk, memory-mapped and read as one stream per split; nothing is read until a batch needs it.

Three layouts open here without a preparation step:

* a **prepared directory** (``scaling data prepare``): ``manifest.json`` with its train and eval shards;
* **nanoGPT / llm.c / modded-nanogpt ``.bin`` shards**: a header of 256 little-endian int32 (magic, version, token
  count) followed by the tokens (``HEADER_FORMATS``: GPT-2's uint16, Llama 3's uint32);
* **``.npy`` arrays**: one-dimensional arrays of integer token ids.

A file path, a directory of such files or a glob (``data/fineweb_train_*.bin``) names them. Every shard is checked
against what it declares before any step (the header's token count or the manifest's against the file size, the
dtype against the vocabulary), so an empty, truncated or foreign file is refused in one line naming it.
"""

from __future__ import annotations

import glob as _glob
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.data import prepare as _prepare

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
# magic -> (version, token dtype, name): the headers of llm.c's dev/data/data_common.py
HEADER_FORMATS = {20240520: (1, np.dtype("<u2"), "GPT-2 (uint16)"), 20240801: (7, np.dtype("<u4"), "Llama 3 (uint32)")}
SHARD_SUFFIXES = (".bin", ".npy")
FINGERPRINT_SAMPLE = 1 << 16  # bytes hashed at each end of a raw shard for its fingerprint


class ShardError(ValueError):
    """A shard that cannot be used (named, with the reason)."""


class TokenStore:
    """Shards (1-D arrays, usually memory-mapped) read as their concatenation."""

    def __init__(self, shards: list[np.ndarray], names: list[str] | None = None):
        keep = [i for i, s in enumerate(shards) if len(s)]
        self.shards = [shards[i] for i in keep]
        self.names = [names[i] for i in keep] if names else [str(i) for i in keep]
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate([np.asarray(s) for s in self.shards]) if self.shards else np.zeros(0, np.int32)
        return out.astype(dtype) if dtype is not None else out

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int32 (across shard ends when the range spans them)."""
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        local = start - int(self.offsets[i])
        s = self.shards[i]
        if local + length <= len(s):
            return np.asarray(s[local : local + length], dtype=np.int32)
        parts, left = [], length
        while left > 0:
            piece = np.asarray(self.shards[i][local : local + left], dtype=np.int32)
            parts.append(piece)
            left -= len(piece)
            i, local = i + 1, 0
        return np.concatenate(parts)

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        return np.stack([self.read(int(s), length) for s in starts])

    def max_id(self) -> int:
        return max(int(np.max(s)) for s in self.shards)

    def bincount(self, minlength: int) -> np.ndarray:
        out = np.zeros(minlength, np.int64)
        for s in self.shards:
            for a in range(0, len(s), 1 << 24):
                c = np.bincount(np.asarray(s[a : a + (1 << 24)]), minlength=minlength)
                out[: len(c)] += c
        return out


@dataclass
class Opened:
    """A split pair opened from disk: stores, the vocabulary the ids were written for, and what describes them."""

    train: TokenStore
    eval: TokenStore
    vocab_size: int | None
    fingerprint: str
    meta: dict


def _memmap(path: Path, dtype, offset: int, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


def open_prepared(path: str | Path) -> Opened:
    """A ``scaling data prepare`` directory; every shard checked present with the size its manifest gives."""
    root = Path(path).expanduser()
    m = _prepare.read_manifest(root)
    dtype = np.dtype(m["dtype"]).newbyteorder("<")
    if dtype.kind != "u" or dtype.itemsize not in (2, 4):
        raise ShardError(f"{root / _prepare.MANIFEST}: dtype {m['dtype']!r} is not uint16 or uint32")
    if m["vocab_size"] > (1 << (8 * dtype.itemsize)):
        raise ShardError(f"{root / _prepare.MANIFEST}: a vocabulary of {m['vocab_size']:,} does not fit {m['dtype']}")
    stores = {}
    for split in _prepare.SPLITS:
        arrays, names = [], []
        for s in m["splits"][split]["shards"]:
            f = root / s["file"]
            want = int(s["tokens"]) * dtype.itemsize
            if not f.is_file():
                raise ShardError(f"{f}: shard listed in {root / _prepare.MANIFEST} is missing")
            have = f.stat().st_size
            if have != want:
                raise ShardError(f"{f}: {have:,} bytes, the manifest says {s['tokens']:,} tokens ({want:,} bytes): truncated or replaced; prepare the dataset again")
            arrays.append(_memmap(f, dtype, 0, int(s["tokens"])))
            names.append(str(f))
        stores[split] = TokenStore(arrays, names)
    meta = {
        "source": m.get("source"), "prepared": str(root), "tokenizer": m["tokenizer"].get("kind"),
        "n_train_docs": m["splits"]["train"].get("pieces"), "n_eval_docs": m["splits"]["eval"].get("pieces"),
        "train_bytes": m["splits"]["train"].get("bytes"), "eval_bytes": m["splits"]["eval"].get("bytes"),
    }
    return Opened(stores["train"], stores["eval"], m["vocab_size"], m["fingerprint"], meta)


def expand(pattern: str) -> list[Path]:
    """The shard files a path, directory or glob names, sorted; none is an error naming the pattern."""
    p = Path(pattern).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in SHARD_SUFFIXES)
    elif any(c in pattern for c in "*?["):
        files = sorted(Path(f) for f in _glob.glob(str(p)) if Path(f).is_file())
    else:
        files = [p] if p.is_file() else []
    if not files:
        raise ShardError(f"data.source: {pattern!r} names no token shard (.bin with an llm.c header, or .npy)")
    return files


def is_shard_source(source: str) -> bool:
    """Whether ``data.source`` names pre-tokenized shards (by suffix; a directory whose files are all shards)."""
    if source in ("stdlib", "synthetic"):
        return False
    p = Path(source).expanduser()
    if p.is_dir():
        files = [f for f in p.iterdir() if f.is_file()]
        return bool(files) and all(f.suffix in SHARD_SUFFIXES for f in files)
    return Path(source).suffix in SHARD_SUFFIXES


def open_shard(f: Path) -> np.ndarray:
    """One ``.bin`` (llm.c header) or ``.npy`` shard, memory-mapped and checked against what it declares."""
    try:
        size = f.stat().st_size
    except OSError as e:
        raise ShardError(f"{f}: cannot read: {e.strerror or e}") from None
    if f.suffix == ".npy":
        try:
            a = np.load(f, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ShardError(f"{f}: not a readable .npy array ({str(e).splitlines()[0][:160]})") from None
        if a.ndim != 1 or a.dtype.kind not in "iu":
            raise ShardError(f"{f}: a token shard is a 1-D integer array, this one is {a.dtype} of shape {a.shape}")
        if len(a) == 0:
            raise ShardError(f"{f}: the shard is empty")
        return a
    if size < HEADER_BYTES:
        raise ShardError(f"{f}: {size} bytes, shorter than the {HEADER_BYTES}-byte header of an llm.c token shard")
    header = np.fromfile(f, dtype="<i4", count=HEADER_INTS)
    magic, version, n = (int(x) for x in header[:3])
    if magic not in HEADER_FORMATS:
        known = ", ".join(f"{k} ({v[2]})" for k, v in HEADER_FORMATS.items())
        raise ShardError(f"{f}: header magic {magic} is not an llm.c token shard's ({known})")
    want_version, dtype, name = HEADER_FORMATS[magic]
    if version != want_version:
        raise ShardError(f"{f}: header version {version}, a {name} shard has version {want_version}")
    if n <= 0:
        raise ShardError(f"{f}: the header declares {n} tokens (an empty shard)")
    want = HEADER_BYTES + n * dtype.itemsize
    if size != want:
        raise ShardError(f"{f}: {size:,} bytes, the header declares {n:,} tokens ({want:,} bytes): truncated or damaged")
    return _memmap(f, dtype, HEADER_BYTES, n)


def _fingerprint(files: list[Path]) -> str:
    """Names, sizes and the first and last ``FINGERPRINT_SAMPLE`` bytes of every shard: read in milliseconds, it
    changes whenever a shard is replaced, extended or truncated (a changed middle alone goes unseen)."""
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(FINGERPRINT_SAMPLE))
            fh.seek(max(0, size - FINGERPRINT_SAMPLE))
            h.update(fh.read(FINGERPRINT_SAMPLE))
    return h.hexdigest()[:16]


def open_shards(source: str, eval_source: str | None, eval_fraction: float) -> Opened:
    """Pre-tokenized shards. The eval split is ``eval_source`` when given; otherwise the shards whose name hashes
    below ``eval_fraction`` (at least one, never all) or, with a single shard, its last ``eval_fraction`` of tokens."""
    from scaling.data.sources import unit_hash

    files = expand(source)
    eval_files = expand(eval_source) if eval_source else []
    overlap = set(files) & set(eval_files)
    if overlap:
        raise ShardError(f"data.eval_source: {sorted(overlap)[0]} is also in data.source; the eval split must not be trained on")
    arrays = {f: open_shard(f) for f in files + eval_files}
    kinds = {a.dtype.itemsize for a in arrays.values()}
    if not eval_files:
        if len(files) == 1:
            a = arrays[files[0]]
            cut = len(a) - max(1, int(round(eval_fraction * len(a))))
            if cut < 1:
                raise ShardError(f"{files[0]}: {len(a)} tokens are too few to hold out an eval split")
            train, evals = TokenStore([a[:cut]], [str(files[0])]), TokenStore([a[cut:]], [f"{files[0]} (last {len(a) - cut:,} tokens)"])
            how = f"the last {eval_fraction:g} of its tokens"
        else:
            hashes = {f: unit_hash(f.name) for f in files}
            held = [f for f in files if hashes[f] < eval_fraction] or [min(files, key=hashes.__getitem__)]
            if len(held) == len(files):
                held.remove(max(held, key=hashes.__getitem__))
            train = TokenStore([arrays[f] for f in files if f not in held], [str(f) for f in files if f not in held])
            evals = TokenStore([arrays[f] for f in held], [str(f) for f in held])
            how = f"{len(held)} of {len(files)} shards, chosen by a hash of their names"
    else:
        train = TokenStore([arrays[f] for f in files], [str(f) for f in files])
        evals = TokenStore([arrays[f] for f in eval_files], [str(f) for f in eval_files])
        how = f"data.eval_source ({len(eval_files)} shards)"
    meta = {"source": source, "tokenizer": "pre-tokenized", "n_train_docs": None, "n_eval_docs": None, "eval_split": how,
            "shards": len(files) + len(eval_files), "dtype_bytes": sorted(kinds)}
    return Opened(train, evals, None, _fingerprint(files + eval_files), meta)


__all__ = ["Opened", "ShardError", "TokenStore", "expand", "is_shard_source", "open_prepared", "open_shard", "open_shards"]
