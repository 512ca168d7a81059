"""Read the records of a W&B offline run file (``run-*.wandb``).

The file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version), then 32 KiB blocks of chunks,
each with a 7-byte header (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last); a block tail shorter
than a chunk header is padding. Each reassembled payload is a ``wandb_internal_pb2.Record``.
"""

import struct

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7


def read_records(path):
    data = open(path, "rb").read()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, (ident, magic)
    pos, pending, records = HEADER, b"", []
    while pos + HEADER <= len(data):
        left = BLOCK - (pos % BLOCK)
        if left < HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind in (1, 2):
            pending = chunk
        else:
            pending += chunk
        if kind in (1, 4):
            r = wandb_internal_pb2.Record()
            r.ParseFromString(pending)
            records.append(r)
            pending = b""
    return records
