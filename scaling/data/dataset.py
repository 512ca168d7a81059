"""Deterministic token streams: the batch at step t is a pure function of (seed, t).

Two sources share one interface (``train_batch``, ``eval_batch``):

* ``TokenDataset``: a corpus tokenized once into memory-mapped ``uint16``/``uint32`` arrays (train and held-out
  eval), cached under a content fingerprint. Training windows of seq_len + 1 tokens tile the train array; the
  global sample index ``g = step * batch + row`` maps to window ``perm_epoch[g % n_windows]`` with one fresh
  permutation per epoch, so no window repeats within an epoch and resuming never replays or skips data.
* ``SyntheticMarkov``: a random sparse first-order Markov chain whose entropy rate is known exactly; sequences start
  in the stationary distribution, so the best achievable loss per predicted token is the entropy rate.

Evaluation batches do not depend on the training seed: runs with different seeds are scored on the same data.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from scaling.config import DataConfig, ModelConfig
from scaling.data import corpus
from scaling.data.tokenizer import BPETokenizer, ByteTokenizer

EVAL_STREAM = 0x5EED_E7A1
EVAL_CHUNK = 64  # synthetic eval sequences are drawn in chunks of this many, independent of any batch size


def cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("SCALING_CACHE") or Path.home() / ".cache" / "scaling").expanduser()


class SyntheticMarkov:
    """A sparse random Markov chain over ``vocab_size`` states with ``branching`` successors per state."""

    kind = "synthetic"
    bytes_per_token = None

    def __init__(self, vocab_size: int, branching: int = 4, seed: int = 1234):
        rng = np.random.default_rng(seed)
        V, k = vocab_size, min(branching, vocab_size)
        succ = np.empty((V, k), np.int64)
        for s in range(V):
            others = rng.choice(np.delete(np.arange(V), (s + 1) % V), size=k - 1, replace=False)
            succ[s] = np.concatenate([[(s + 1) % V], others])  # s -> s+1 keeps the chain irreducible
        if k > 1 and 0 not in succ[0]:
            succ[0, 1] = 0  # a self-loop makes it aperiodic (only if 0 is not a successor already: no duplicates)
        assert all(len(set(row)) == k for row in succ.tolist()), "successors of a state must be distinct"
        probs = rng.dirichlet(np.ones(k), size=V)
        self.vocab_size, self.successors, self.probs = V, succ, probs
        self.cum_probs = np.cumsum(probs, axis=1)
        self.cum_probs[:, -1] = 1.0
        P = np.zeros((V, V))
        np.add.at(P, (np.repeat(np.arange(V), k), succ.ravel()), probs.ravel())
        self.transition = P
        # Stationary distribution: left eigenvector of P for eigenvalue 1.
        w, vecs = np.linalg.eig(P.T)
        pi = np.real(vecs[:, np.argmin(np.abs(w - 1))])
        self.stationary = pi / pi.sum()
        self.cum_stationary = np.cumsum(self.stationary)
        self.cum_stationary[-1] = 1.0
        # Entropy from the transition matrix itself (not the per-successor probabilities), so it is exact whatever
        # the successor lists hold.
        with np.errstate(divide="ignore", invalid="ignore"):
            row_entropy = -np.sum(np.where(P > 0, P * np.log(P), 0.0), axis=1)
        self.entropy_rate = float(self.stationary @ row_entropy)  # nats per token
        self.fingerprint = f"markov-v{V}-b{k}-s{seed}"

    def sample(self, rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        out = np.empty((n, length), np.int32)
        out[:, 0] = np.searchsorted(self.cum_stationary, rng.random(n), side="right")
        u = rng.random((n, length - 1))
        for t in range(1, length):
            prev = out[:, t - 1]
            j = (u[:, t - 1, None] >= self.cum_probs[prev]).sum(axis=1)
            out[:, t] = self.successors[prev, np.minimum(j, self.successors.shape[1] - 1)]
        return out

    def train_batch(self, step: int, batch_size: int, seq_len: int, seed: int, rows: slice = slice(None)) -> np.ndarray:
        rng = np.random.default_rng([seed, 0, step])
        return self.sample(rng, batch_size, seq_len + 1)[rows]

    def eval_windows(self, n: int, seq_len: int) -> tuple[np.ndarray, int | None]:
        """The first ``n`` held-out sequences (seq_len + 1 tokens each), drawn in fixed chunks of
        ``EVAL_CHUNK`` from a stream independent of every training seed: the same set whatever the batch size."""
        chunks = [self.sample(np.random.default_rng([EVAL_STREAM, 1, c]), EVAL_CHUNK, seq_len + 1) for c in range(-(-n // EVAL_CHUNK))]
        return np.concatenate(chunks)[:n], None

    def train_windows_per_epoch(self, seq_len: int) -> int | None:
        return None  # an endless source: no epochs

    def describe(self) -> dict:
        return {"kind": self.kind, "fingerprint": self.fingerprint, "entropy_rate_nats": self.entropy_rate}


@dataclass
class _Split:
    tokens: np.ndarray  # memory-mapped
    n_bytes: int


class TokenDataset:
    """A tokenized corpus with a held-out evaluation split, cached on disk by content fingerprint."""

    kind = "corpus"
    entropy_rate = None

    def __init__(self, train: _Split, evals: _Split, vocab_size: int, fingerprint: str, meta: dict):
        self.train, self.eval = train, evals
        self.vocab_size = vocab_size
        self.fingerprint = fingerprint
        self.meta = meta
        self.bytes_per_token = evals.n_bytes / max(1, len(evals.tokens))

    # -- sampling --------------------------------------------------------------------------------------------
    def _n_windows(self, tokens: np.ndarray, seq_len: int) -> int:
        n = (len(tokens) - 1) // seq_len
        if n < 1:
            raise ValueError(f"the corpus split has {len(tokens)} tokens, fewer than one sequence of {seq_len + 1}")
        return n

    @staticmethod
    @lru_cache(maxsize=4)
    def _perm(seed: int, epoch: int, n: int) -> np.ndarray:
        return np.random.default_rng([seed, 2, epoch]).permutation(n)

    def _windows(self, tokens: np.ndarray, idx: np.ndarray, seq_len: int) -> np.ndarray:
        starts = idx * seq_len
        return np.stack([np.asarray(tokens[s : s + seq_len + 1], dtype=np.int32) for s in starts])

    def train_windows(self, step: int, batch_size: int, seq_len: int, seed: int, rows: slice = slice(None)) -> np.ndarray:
        """Indices of the training windows (of seq_len + 1 tokens, stride seq_len) that make up batch ``step``."""
        n = self._n_windows(self.train.tokens, seq_len)
        g = step * batch_size + np.arange(batch_size)[rows]
        epochs, pos = g // n, g % n
        return np.array([self._perm(seed, int(e), n)[p] for e, p in zip(epochs, pos)])

    def train_batch(self, step: int, batch_size: int, seq_len: int, seed: int, rows: slice = slice(None)) -> np.ndarray:
        return self._windows(self.train.tokens, self.train_windows(step, batch_size, seq_len, seed, rows), seq_len)

    def eval_windows(self, n: int, seq_len: int) -> tuple[np.ndarray, int | None]:
        """The first ``min(n, available)`` windows of one fixed permutation of the eval split (no window twice),
        and how many windows the split has."""
        avail = self._n_windows(self.eval.tokens, seq_len)
        perm = self._perm(EVAL_STREAM, 0, avail)
        return self._windows(self.eval.tokens, perm[: min(n, avail)], seq_len), avail

    def train_windows_per_epoch(self, seq_len: int) -> int:
        return self._n_windows(self.train.tokens, seq_len)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "train_tokens": int(len(self.train.tokens)),
            "eval_tokens": int(len(self.eval.tokens)),
            "bytes_per_token": self.bytes_per_token,
            **{k: self.meta[k] for k in ("source", "tokenizer", "n_train_docs", "n_eval_docs") if k in self.meta},
        }


def _atomic_write_array(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        arr.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _tokenize(tok, docs: list[corpus.Document]) -> np.ndarray:
    if hasattr(tok, "encode_batch"):
        encoded = tok.encode_batch([d.text for d in docs])
    else:
        encoded = [tok.encode(d.text) for d in docs]
    parts = []
    for ids in encoded:
        parts.append(ids)
        parts.append(np.array([tok.eos_id], np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def build_corpus_dataset(data: DataConfig, vocab_size: int) -> TokenDataset:
    docs = corpus.load_documents(data.source, data.max_bytes)
    train_docs, eval_docs = corpus.split_documents(docs, data.eval_fraction)
    content = corpus.fingerprint(docs)
    key = f"{content}-{data.tokenizer}{vocab_size if data.tokenizer == 'bpe' else ''}-e{data.eval_fraction:g}"
    cdir = cache_root(data) / key
    dtype = np.uint16 if vocab_size <= 65536 else np.uint32
    meta_path = cdir / "meta.json"
    if not meta_path.exists():
        # One builder per cache entry: processes of a multi-host job, or sweep workers, wait for the first.
        with _file_lock(cache_root(data) / f".{key}.lock"):
            if not meta_path.exists():  # built by another process while this one waited
                _build_entry(data, vocab_size, train_docs, eval_docs, content, cdir, dtype)
    meta = json.loads(meta_path.read_text())
    if meta["vocab_size"] > vocab_size:
        raise ValueError(f"model.vocab_size={vocab_size} is smaller than the tokenizer's {meta['vocab_size']}")

    def load(name: str, n_bytes: int) -> _Split:
        return _Split(np.memmap(cdir / f"{name}.bin", dtype=meta["dtype"], mode="r"), n_bytes)

    return TokenDataset(load("train", meta["train_bytes"]), load("eval", meta["eval_bytes"]), vocab_size, content, meta)


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive advisory lock (fcntl) held for the block: other processes block until it is released."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_entry(data: DataConfig, vocab_size: int, train_docs, eval_docs, content: str, cdir: Path, dtype) -> None:
    """Tokenize a corpus into ``cdir`` (tokenizer, train.bin, eval.bin, then meta.json last)."""
    cdir.mkdir(parents=True, exist_ok=True)
    if data.tokenizer == "bpe":
        tok = BPETokenizer.train((d.text for d in train_docs), vocab_size)
        tmp = cdir / f"tokenizer.json.tmp{os.getpid()}"
        tok.save(tmp)
        os.replace(tmp, cdir / "tokenizer.json")
    else:
        tok = ByteTokenizer()
    for name, split in (("train", train_docs), ("eval", eval_docs)):
        _atomic_write_array(cdir / f"{name}.bin", _tokenize(tok, split).astype(dtype))
    meta = {
        "source": data.source,
        "tokenizer": data.tokenizer,
        "vocab_size": tok.vocab_size,
        "fingerprint": content,
        "n_train_docs": len(train_docs),
        "n_eval_docs": len(eval_docs),
        "train_bytes": sum(len(d.text.encode()) for d in train_docs),
        "eval_bytes": sum(len(d.text.encode()) for d in eval_docs),
        "dtype": np.dtype(dtype).name,
    }
    meta_path = cdir / "meta.json"
    tmp = meta_path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)  # meta.json last: its presence means the cache entry is complete
    with open(cdir.parent / "builds.jsonl", "a") as fh:  # an audit trail: one line per build of an entry
        fh.write(json.dumps({"key": cdir.name, "pid": os.getpid(), "time": time.time()}) + "\n")


def load_tokenizer(data: DataConfig, fingerprint: str, vocab_size: int):
    if data.tokenizer == "byte":
        return ByteTokenizer()
    for d in cache_root(data).glob(f"{fingerprint}-bpe{vocab_size}-*"):
        return BPETokenizer.load(d / "tokenizer.json")
    raise FileNotFoundError("no cached BPE tokenizer for this corpus")


def build_dataset(data: DataConfig, model: ModelConfig):
    """The data source a run config names."""
    if data.source == "synthetic":
        return SyntheticMarkov(model.vocab_size, data.synthetic_branching, data.synthetic_seed)
    return build_corpus_dataset(data, model.vocab_size)


def unigram_entropy(ds: TokenDataset) -> float:
    """Entropy (nats) of the eval split's token frequencies: the loss of the best context-free model."""
    counts = np.bincount(np.asarray(ds.eval.tokens), minlength=ds.vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


__all__ = ["SyntheticMarkov", "TokenDataset", "build_dataset", "unigram_entropy"]
