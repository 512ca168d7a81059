"""Tokenizers: byte-level (vocab 256, nothing to train), byte-level BPE trained locally with HF ``tokenizers``, or
any HF ``tokenizer.json`` (GPT-2, Llama, a team's own) named by its path.

``data.tokenizer`` / ``scaling data prepare --tokenizer`` take ``byte``, ``bpe`` or a path; ``tokenizer_kind``
says which, and ``load_tokenizer_file`` loads a file with its end-of-document token (``EOS_CANDIDATES`` or an
explicit ``eos_token``), refusing in one line a file that is not a tokenizer or has no such token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

EOS_TEXT = "<|endoftext|>"
# End-of-document tokens of common tokenizers, tried in order when a tokenizer.json is named without eos_token:
# GPT-2 / GPT-NeoX / this toolkit's BPE, Llama 3, Llama 2 / Mistral / T5, Gemma.
EOS_CANDIDATES = (EOS_TEXT, "<|end_of_text|>", "</s>", "<eos>")


class TokenizerError(ValueError):
    """A tokenizer that cannot be used (named, with the reason)."""


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> np.ndarray: ...

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


def tokenizer_kind(spec: str) -> str:
    """'byte', 'bpe' or 'file' (a path to a tokenizer.json)."""
    return spec if spec in ("byte", "bpe") else "file"


class ByteTokenizer:
    """UTF-8 bytes as tokens. Byte 0 (NUL, absent from text corpora) separates documents."""

    vocab_size = 256
    eos_id = 0

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if 0 < int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """An HF ``tokenizers`` tokenizer with one end-of-document token that separates documents. Batches are encoded
    on every core (the library's own thread pool) without offsets (``encode_batch_fast``)."""

    def __init__(self, tok, eos_token: str | None = None, where: str = "tokenizer"):
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()
        names = (eos_token,) if eos_token else EOS_CANDIDATES
        ids = [tok.token_to_id(n) for n in names]
        found = [(n, i) for n, i in zip(names, ids) if i is not None]
        if not found:
            raise TokenizerError(
                f"{where} has no end-of-document token {names[0]!r}" if eos_token else
                f"{where} has none of the end-of-document tokens {', '.join(EOS_CANDIDATES)}; name one with data.eos_token (--eos-token)"
            )
        self.eos_token, self.eos_id = found[0]

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "HFTokenizer":
        """Byte-level BPE (GPT-2 style pre-tokenisation) with ``EOS_TEXT`` as its one special token."""
        from tokenizers import Tokenizer as _HF
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = _HF(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path, eos_token: str | None = None) -> "HFTokenizer":
        return load_tokenizer_file(path, eos_token)

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int32) for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])


BPETokenizer = HFTokenizer  # the name of the locally trained kind


def load_tokenizer_file(path: str | Path, eos_token: str | None = None) -> HFTokenizer:
    """A tokenizer.json, or a one-line ``TokenizerError`` naming the path and what is wrong with it."""
    from tokenizers import Tokenizer as _HF

    p = Path(path).expanduser()
    if not p.is_file():
        raise TokenizerError(f"tokenizer {str(p)!r} does not exist (allowed: 'byte', 'bpe' or the path of a tokenizer.json)")
    try:
        tok = _HF.from_file(str(p))
    except Exception as e:  # tokenizers raises a bare Exception for any unreadable file
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise TokenizerError(f"tokenizer {str(p)!r} is not an HF tokenizer.json: {reason}") from None
    return HFTokenizer(tok, eos_token, where=f"tokenizer {str(p)!r}")


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id of a vocabulary."""
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)
