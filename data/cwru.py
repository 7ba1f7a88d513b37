#!/usr/bin/env python3
"""Prepares the CWRU bearing data's 12 kHz drive-end recordings for `ember train cwru --data DIR`.

Input: a folder of the Case Western Reserve University Bearing Data Center's `.mat` files, named by
their file number (`97.mat`, `105.mat`, ...) as the Data Center serves them. Output, in --out, the
layout of data/cwru: `<number>.f32` (the drive-end accelerometer signal `X<number>_DE_time`,
little-endian float32, g, as recorded: Ember decimates the 48 kHz healthy baselines 97-100 itself) and
`recordings.csv` (`number,label,load_hp,rpm,samples,sha256_of_f32`). Ember never downloads the files; no package registry it can reach
ships them (PyPI's `multivariate-cwru` and `cwru` download them from the Data Center at run time).

Reads MATLAB files with scipy (`pip install scipy`); preparation only, never at serve time.

Usage: python3 data/cwru.py --mat DIR --out DIR
"""

import argparse
import csv
import hashlib
import os
import sys

# 12 kHz drive-end data, motor loads 0-3 HP (1797/1772/1750/1730 rpm), by file number: the healthy
# baseline and each fault location at 7, 14 and 21 mils (outer race: centred, "@6").
FILES = {
    "normal": [97, 98, 99, 100],
    "inner_race": [105, 106, 107, 108, 169, 170, 171, 172, 209, 210, 211, 212],
    "ball": [118, 119, 120, 121, 185, 186, 187, 188, 222, 223, 224, 225],
    "outer_race": [130, 131, 132, 133, 197, 198, 199, 200, 234, 235, 236, 237],
}


def drive_end(path, number):
    """The drive-end signal and the shaft speed (rpm) recorded in one .mat file."""
    from scipy.io import loadmat

    variables = loadmat(path)
    # Most files name the signal after themselves; a few carry another number's name.
    names = [k for k in variables if k.endswith("_DE_time")]
    preferred = f"X{number:03d}_DE_time"
    name = preferred if preferred in variables else (names[0] if len(names) == 1 else None)
    if name is None:
        raise SystemExit(f"{path}: no single drive-end signal among {names}")
    rpms = [v for k, v in variables.items() if k.endswith("RPM")]
    rpm = int(round(float(rpms[0].ravel()[0]))) if rpms else ""
    return variables[name].ravel().astype("<f4").tobytes(), rpm


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mat", required=True, help="folder of the CWRU .mat files")
    parser.add_argument("--out", required=True, help="folder to write recordings.csv and *.f32")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows, missing = [], []
    for label, numbers in FILES.items():
        # Each label's files come in groups of four motor loads, 0-3 hp.
        for position, number in enumerate(numbers):
            path = os.path.join(args.mat, f"{number}.mat")
            if not os.path.exists(path):
                missing.append(f"{number}.mat")
                continue
            samples, rpm = drive_end(path, number)
            with open(os.path.join(args.out, f"{number}.f32"), "wb") as f:
                f.write(samples)
            digest = hashlib.sha256(samples).hexdigest()
            rows.append((number, label, position % 4, rpm, len(samples) // 4, digest))
            print(f"{number}.f32: {label}, {len(samples) // 4} samples", file=sys.stderr)
    if not rows:
        raise SystemExit(f"no CWRU .mat files in {args.mat}")
    with open(os.path.join(args.out, "recordings.csv"), "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["number", "label", "load_hp", "rpm", "samples", "sha256_of_f32"])
        writer.writerows(rows)
    if missing:
        print(f"missing (skipped): {' '.join(missing)}", file=sys.stderr)


if __name__ == "__main__":
    main()
