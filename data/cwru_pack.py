"""Packs the real CWRU recordings (raw little-endian float32, one file per recording, as in
../shared/data/cwru) into data/cwru/<number>.gz, losslessly and about 2.3x smaller.

Each recording holds a few thousand distinct sample values, so it is stored as its sorted table of
distinct values and, per sample, the 16-bit index of its value in the table (low bytes of every
index, then high bytes: the two planes compress better apart), gzip-compressed:

    gzip( u32 LE: table length T | T x f32 LE: distinct values, ascending |
          N bytes: index low bytes | N bytes: index high bytes )

Unpacking gives back the float32 samples bit for bit: `recordings.csv` gives each one's sha256,
which `ember`'s tests check against what it unpacks. Stdlib Python only.

Usage: python3 data/cwru_pack.py SOURCE_DIR [OUT_DIR]   (OUT_DIR default: data/cwru)
"""

import csv
import gzip
import hashlib
import os
import shutil
import struct
import sys

source = sys.argv[1]
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "cwru")
os.makedirs(out, exist_ok=True)
with open(os.path.join(source, "recordings.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
for row in rows:
    raw = open(os.path.join(source, f"{row['number']}.f32"), "rb").read()
    assert hashlib.sha256(raw).hexdigest() == row["sha256_of_f32"], row["number"]
    # Distinct values by bit pattern (so -0.0 stays -0.0), ascending by value.
    words = [raw[i : i + 4] for i in range(0, len(raw), 4)]
    table = sorted(set(words), key=lambda w: struct.unpack("<f", w)[0])
    assert len(table) < 1 << 16, f"{row['number']}: {len(table)} distinct values"
    position = {w: i for i, w in enumerate(table)}
    indices = [position[w] for w in words]
    packed = (
        len(table).to_bytes(4, "little")
        + b"".join(table)
        + bytes(i & 0xFF for i in indices)
        + bytes(i >> 8 for i in indices)
    )
    with open(os.path.join(out, f"{row['number']}.gz"), "wb") as f:
        f.write(gzip.compress(packed, compresslevel=9, mtime=0))
for name in ("recordings.csv", "PROVENANCE.md"):
    shutil.copyfile(os.path.join(source, name), os.path.join(out, name))
print(f"packed {len(rows)} recordings into {out}")
