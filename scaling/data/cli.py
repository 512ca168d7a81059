"""``scaling data prepare | inspect``: bring a corpus to token shards, and look at (or verify) what is on disk."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from scaling.data.prepare import CHUNK_CHARS
from scaling import exits


def _bad_input_types() -> tuple:
    from scaling.data.prepare import PrepareError
    from scaling.data.shards import ShardError
    from scaling.data.sources import SourceError
    from scaling.data.tokenizer import TokenizerError

    return PrepareError, ShardError, SourceError, TokenizerError


def cmd_prepare(args) -> int:
    from scaling.data import sources
    from scaling.data.prepare import PrepareSpec, prepare
    from scaling.data.tokenizer import tokenizer_kind
    from scaling.ui import RateMeter, human

    for name in ("vocab_size", "max_bytes", "bpe_sample_bytes", "shard_chars"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            return exits.fail(f"--{name.replace('_', '-')} must be > 0, got {v}")
    if not 0 < args.eval_fraction < 1:
        return exits.fail(f"--eval-fraction must be in (0, 1), got {args.eval_fraction}")
    if tokenizer_kind(args.tokenizer) == "bpe" and args.vocab_size is None:
        return exits.fail("--tokenizer bpe needs --vocab-size (the vocabulary to train, e.g. 8192)")
    spec = PrepareSpec(
        source=args.source, tokenizer=args.tokenizer, vocab_size=args.vocab_size, eval_fraction=args.eval_fraction,
        max_chars=args.max_bytes, bpe_sample_bytes=args.bpe_sample_bytes, eos_token=args.eos_token,
    )
    try:
        total = sources.estimated_bytes(args.source)
        if args.max_bytes:
            total = min(total, args.max_bytes)
        with RateMeter(f"prepare {args.source}", total, enabled=not args.no_progress) as meter:
            m = prepare(spec, args.out, progress=meter, note=meter.note, chunk_chars=args.shard_chars)
    except _bad_input_types() as e:
        return exits.fail(str(e))
    except OSError as e:
        return exits.fail(f"{getattr(e, 'filename', None) or args.out}: {e.strerror or e} (what was prepared is kept: rerun to go on)", exits.IOERR)
    except KeyboardInterrupt:
        return exits.fail(f"rerun the same command to go on from the last completed chunk in {args.out}", exits.STOPPED, prefix="stopped")
    s = m["splits"]
    print(
        f"prepared {args.out}: {s['train']['tokens']:,} training tokens in {len(s['train']['shards'])} shards, "
        f"{s['eval']['tokens']:,} eval tokens; tokenizer {m['tokenizer']['kind']} ({m['vocab_size']:,} ids, {m['dtype']}); "
        f"{human(s['train']['bytes'] + s['eval']['bytes'])}B of text, {(s['eval']['bytes'] or 0) / max(1, s['eval']['tokens']):.2f} bytes/token; "
        f"fingerprint {m['fingerprint']}"
    )
    return 0


def cmd_inspect(args) -> int:
    from scaling.data import prepare as prep
    from scaling.data import shards

    try:
        if prep.is_prepared(args.path):
            info = _inspect_prepared(Path(args.path).expanduser(), args.verify)
        else:
            o = shards.open_shards(args.path, args.eval_source, args.eval_fraction)
            info = {"kind": "shards", "fingerprint": o.fingerprint, "train_tokens": len(o.train), "eval_tokens": len(o.eval),
                    "eval_split": o.meta["eval_split"], "train_shards": o.train.names, "eval_shards": o.eval.names}
            if args.verify:
                info["max_id"] = max(o.train.max_id(), o.eval.max_id())
    except _bad_input_types() as e:
        return exits.fail(str(e))
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    for k, v in info.items():
        if isinstance(v, list) and len(v) > 6:
            v = v[:3] + [f"... {len(v) - 6} more ..."] + v[-3:]
        print(f"{k:>14}: {v}")
    return exits.FAILED if info.get("damaged") else exits.OK


def _inspect_prepared(root: Path, verify: bool) -> dict:
    from scaling.data import prepare as prep
    from scaling.data import shards

    m = prep.read_manifest(root)
    shards.open_prepared(root)  # sizes checked against the manifest
    info = {"kind": "prepared", "source": m.get("source"), "tokenizer": m["tokenizer"], "vocab_size": m["vocab_size"],
            "dtype": m["dtype"], "fingerprint": m["fingerprint"]}
    for split in prep.SPLITS:
        s = m["splits"][split]
        info[f"{split}_tokens"] = s["tokens"]
        info[f"{split}_shards"] = len(s["shards"])
        info[f"{split}_pieces"] = s.get("pieces")
    if verify:
        damaged = [s["file"] for split in prep.SPLITS for s in m["splits"][split]["shards"] if prep._sha256_file(root / s["file"]) != s["sha256"]]
        info["verified"] = not damaged
        if damaged:
            info["damaged"] = damaged
            print(f"error: {len(damaged)} shard(s) of {root} do not match their manifest checksums: {', '.join(damaged[:5])}", file=sys.stderr)
    return info


def add_data_parser(sub) -> None:
    d = sub.add_parser("data", help="prepare a corpus into token shards; inspect or verify prepared data")
    ds = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = ds.add_parser(
        "prepare",
        help="stream a text corpus (files, directory, .jsonl, .parquet) into token shards and a manifest",
        description=(
            "Stream SOURCE (a text file, a directory, .jsonl with a field 'text', .parquet with a column 'text' or a "
            "column of token ids, or 'stdlib') into OUT/train/*.bin and OUT/eval/*.bin (uint16 or uint32 tokens) and "
            "OUT/manifest.json, tokenizing on every core. Memory stays bounded whatever the corpus size; a killed "
            "preparation resumes where it stopped when rerun (byte-identical shards). Then point data.source at OUT."
        ),
    )
    p.add_argument("source", help="text file, directory, .jsonl, .parquet, or 'stdlib'")
    p.add_argument("--out", required=True, help="the prepared dataset's directory (created; rerun to resume)")
    p.add_argument("--tokenizer", default="byte", help="'byte' (default), 'bpe' (trained here, needs --vocab-size) or PATH/tokenizer.json")
    p.add_argument("--vocab-size", type=int, default=None, help="bpe: the vocabulary to train; token-id parquet: the ids' vocabulary")
    p.add_argument("--eval-fraction", type=float, default=0.02, help="fraction held out for evaluation, by a hash of each piece's name (default 0.02)")
    p.add_argument("--max-bytes", type=int, default=None, help="read at most this many characters of text")
    p.add_argument("--bpe-sample-bytes", type=int, default=128 * 2**20, help="bpe: train on about this many bytes of the training split (default 128 MiB)")
    p.add_argument("--eos-token", default=None, help="a tokenizer.json's end-of-document token (default: the first of <|endoftext|>, <|end_of_text|>, </s>, <eos>)")
    p.add_argument("--shard-chars", type=int, default=CHUNK_CHARS, help="characters of text per shard pair (default 32 Mi; the tokens do not depend on it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    p.set_defaults(func=cmd_prepare)

    i = ds.add_parser("inspect", help="summarise a prepared directory or token shards; --verify checks every shard")
    i.add_argument("path", help="prepared directory, or shards (.bin / .npy file, directory or glob)")
    i.add_argument("--eval-source", default=None, help="shards: the eval split's shards")
    i.add_argument("--eval-fraction", type=float, default=0.02)
    i.add_argument("--verify", action="store_true", help="prepared: check every shard's sha256 against the manifest; shards: read every id (largest id)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)


__all__ = ["add_data_parser"]
