"""Deterministic token streams: the batch at step t is a pure function of (seed, t).

Two sources share one interface (``train_batch``, ``eval_batch``):

* ``TokenDataset``: token shards on disk, memory-mapped (``scaling.data.shards``): a prepared directory, nanoGPT
  ``.bin`` / ``.npy`` shards, or a text corpus prepared once into the cache (``scaling.data.prepare``). Each split
  is its shards read as one stream. Training windows of seq_len + 1 tokens tile the train stream; the
  global sample index ``g = step * batch + row`` maps to window ``perm_epoch[g % n_windows]`` with one fresh
  permutation per epoch, so no window repeats within an epoch and resuming never replays or skips data.
* ``SyntheticMarkov``: a random sparse first-order Markov chain whose entropy rate is known exactly; sequences start
  in the stationary distribution, so the best achievable loss per predicted token is the entropy rate.

Evaluation batches do not depend on the training seed: runs with different seeds are scored on the same data.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from scaling.config import DataConfig, ModelConfig
from scaling.data import prepare as prepare_mod
from scaling.data import shards, sources
from scaling.data.prepare import PrepareSpec
from scaling.data.shards import TokenStore
from scaling.data.tokenizer import tokenizer_kind

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
    tokens: TokenStore  # memory-mapped shards read as one stream
    n_bytes: int | None  # UTF-8 bytes of text they encode (None: pre-tokenized, unknown)


class TokenDataset:
    """Token shards on disk with a held-out evaluation split (``scaling.data.shards``), read lazily."""

    kind = "corpus"
    entropy_rate = None

    def __init__(self, train: _Split, evals: _Split, vocab_size: int, fingerprint: str, meta: dict, id_limit: int | None = None):
        self.train, self.eval = train, evals
        self.vocab_size = vocab_size
        self.id_limit = id_limit or vocab_size  # every id must be below this (the vocabulary the ids were written for)
        self.fingerprint = fingerprint
        self.meta = meta
        self.bytes_per_token = evals.n_bytes / max(1, len(evals.tokens)) if evals.n_bytes else None

    # -- sampling --------------------------------------------------------------------------------------------
    def _n_windows(self, tokens: TokenStore, seq_len: int) -> int:
        n = (len(tokens) - 1) // seq_len
        if n < 1:
            raise ValueError(f"the corpus split has {len(tokens)} tokens, fewer than one sequence of {seq_len + 1}")
        return n

    @staticmethod
    @lru_cache(maxsize=4)
    def _perm(seed: int, epoch: int, n: int) -> np.ndarray:
        perm = np.random.default_rng([seed, 2, epoch]).permutation(n)
        return perm.astype(np.uint32) if n < 2**32 else perm  # half the memory of int64, the same values

    def _windows(self, tokens: TokenStore, idx: np.ndarray, seq_len: int) -> np.ndarray:
        out = tokens.windows(np.asarray(idx, np.int64) * seq_len, seq_len + 1)
        top = int(out.max()) if out.size else 0
        if top >= self.id_limit:
            raise ValueError(
                f"token id {top} in {self.meta.get('source')} is outside the vocabulary of {self.id_limit:,} "
                "(data.vocab_size / the tokenizer's); the shards were written with another tokenizer"
            )
        return out

    def train_windows(self, step: int, batch_size: int, seq_len: int, seed: int, rows: slice = slice(None)) -> np.ndarray:
        """Indices of the training windows (of seq_len + 1 tokens, stride seq_len) that make up batch ``step``."""
        n = self._n_windows(self.train.tokens, seq_len)
        g = step * batch_size + np.arange(batch_size)[rows]
        epochs, pos = g // n, g % n
        return np.array([self._perm(seed, int(e), n)[p] for e, p in zip(epochs, pos)], dtype=np.int64)

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
            **{k: self.meta[k] for k in ("source", "prepared", "tokenizer", "n_train_docs", "n_eval_docs", "eval_split") if self.meta.get(k) is not None},
        }


def _from_opened(o: shards.Opened, vocab_size: int, id_limit: int) -> TokenDataset:
    return TokenDataset(
        _Split(o.train, o.meta.get("train_bytes")), _Split(o.eval, o.meta.get("eval_bytes")), vocab_size, o.fingerprint, o.meta, id_limit
    )


def prepare_spec(data: DataConfig, vocab_size: int) -> PrepareSpec:
    """The preparation a text source of ``data`` needs (BPE trained to the model's vocabulary)."""
    kind = tokenizer_kind(data.tokenizer)
    return PrepareSpec(
        source=data.source, tokenizer=data.tokenizer, vocab_size=vocab_size if kind == "bpe" else data.vocab_size,
        eval_fraction=data.eval_fraction, max_chars=data.max_bytes, bpe_sample_bytes=data.bpe_sample_bytes, eos_token=data.eos_token,
    )


def prepared_dir(data: DataConfig, vocab_size: int) -> Path:
    """Where a text source is prepared in the cache: keyed by its files' names, sizes and times and the settings,
    so a run finds it without reading the corpus."""
    spec = prepare_spec(data, vocab_size)
    key = hashlib.sha256((sources.stat_key(data.source) + json.dumps(spec.as_dict(), sort_keys=True)).encode()).hexdigest()[:16]
    return cache_root(data) / "prepared" / key


def build_corpus_dataset(data: DataConfig, vocab_size: int, progress: bool = False) -> TokenDataset:
    """A text or token source as a ``TokenDataset``: a prepared directory or shards are opened in place; text is
    prepared once into the cache (one process prepares, the others of a job wait) and opened from there."""
    if prepare_mod.is_prepared(data.source):
        o = shards.open_prepared(data.source)
        _check_vocab(o.vocab_size, vocab_size, f"the dataset {data.source}")
        return _from_opened(o, vocab_size, o.vocab_size)
    if shards.is_shard_source(data.source):
        if data.vocab_size is None:
            raise ValueError(f"data.source {data.source!r} holds pre-tokenized shards: set data.vocab_size to their tokenizer's vocabulary (e.g. 50257 for GPT-2)")
        o = shards.open_shards(data.source, data.eval_source, data.eval_fraction)
        _check_vocab(data.vocab_size, vocab_size, "data.vocab_size")
        if max(o.meta["dtype_bytes"]) == 2 and data.vocab_size > 65536:
            raise ValueError(f"data.vocab_size={data.vocab_size:,} does not fit the uint16 shards of {data.source}")
        return _from_opened(o, vocab_size, data.vocab_size)
    out = prepared_dir(data, vocab_size)
    if not prepare_mod.is_prepared(out):
        from scaling.ui import RateMeter

        spec = prepare_spec(data, vocab_size)
        meter = RateMeter(f"preparing {data.source}", sources.estimated_bytes(data.source), enabled=progress)
        with meter:
            m = prepare_mod.prepare(spec, out, progress=meter, note=meter.note)
        if m.get("prepared_by", {}).get("pid") == os.getpid():  # an audit trail: one line per entry built here
            with open(cache_root(data) / "builds.jsonl", "a") as fh:
                fh.write(json.dumps({"key": out.name, "pid": os.getpid(), "time": time.time()}) + "\n")
    o = shards.open_prepared(out)
    _check_vocab(o.vocab_size, vocab_size, f"the {data.tokenizer} tokenizer")
    return _from_opened(o, vocab_size, o.vocab_size)


def _check_vocab(data_vocab: int, model_vocab: int, what: str) -> None:
    if data_vocab > model_vocab:
        raise ValueError(f"model.vocab_size={model_vocab} is smaller than the vocabulary of {what} ({data_vocab:,}); raise model.vocab_size to at least {data_vocab}")


def build_dataset(data: DataConfig, model: ModelConfig, progress: bool = False):
    """The data source a run config names (``progress``: show the preparation of a text source not yet prepared)."""
    if data.source == "synthetic":
        return SyntheticMarkov(model.vocab_size, data.synthetic_branching, data.synthetic_seed)
    return build_corpus_dataset(data, model.vocab_size, progress)


def unigram_entropy(ds: TokenDataset) -> float:
    """Entropy (nats) of the eval split's token frequencies: the loss of the best context-free model."""
    counts = ds.eval.tokens.bincount(ds.vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


__all__ = ["SyntheticMarkov", "TokenDataset", "build_dataset", "unigram_entropy"]
