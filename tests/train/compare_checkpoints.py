#!/usr/bin/env python3
"""compare_checkpoints.py A B [--atol X] [--rtol Y] [--only PREFIX] [--skip PREFIX]: compares every tensor of two
checkpoint directories (all their .safetensors files, by name, whichever file holds it), so that
checkpoints of different world sizes and shardings compare. Fails (exit 1) naming the worst tensor when
|a - b| > atol + rtol * |b| anywhere, or when the names differ; prints the largest differences."""
import argparse
import glob
import json
import os
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U8": np.uint8, "BF16": np.uint16}


def load(directory, only, skip):
    tensors = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            data = f.read()
        for name, info in header.items():
            if name == "__metadata__" or not name.startswith(only) or (skip and name.startswith(skip)):
                continue
            begin, end = info["data_offsets"]
            a = np.frombuffer(data[begin:end], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
            if info["dtype"] == "BF16":
                a = (a.astype(np.uint32) << 16).view(np.float32)
            tensors[name] = a.astype(np.float64)
    return tensors


def main():
    p = argparse.ArgumentParser()
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--atol", type=float, default=0.0)
    p.add_argument("--rtol", type=float, default=0.0)
    p.add_argument("--only", default="")
    p.add_argument("--skip", default="")
    args = p.parse_args()
    a, b = load(args.a, args.only, args.skip), load(args.b, args.only, args.skip)
    if not a or set(a) != set(b):
        print(f"tensor names differ: {sorted(set(a) ^ set(b))[:5]} (of {len(a)} and {len(b)})")
        return 1
    worst_name, worst_excess, max_abs, max_rel, largest = None, -np.inf, 0.0, 0.0, 0.0
    for name in sorted(a):
        diff = np.abs(a[name] - b[name])
        bound = args.atol + args.rtol * np.abs(b[name])
        excess = float(np.max(diff - bound)) if diff.size else -np.inf
        if excess > worst_excess:
            worst_name, worst_excess = name, excess
        max_abs = max(max_abs, float(diff.max(initial=0)))
        largest = max(largest, float(np.abs(b[name]).max(initial=0)))
        max_rel = max(max_rel, float(np.max(diff / np.maximum(np.abs(b[name]), 1e-30), initial=0)))
    print(f"{len(a)} tensors{' ' + args.only if args.only else ''}: max |a-b| {max_abs:.3g}, max |a-b|/|b| "
          f"{max_rel:.3g}, max |b| {largest:.3g}; worst against atol {args.atol:g} + rtol {args.rtol:g}: {worst_name}")
    return 1 if worst_excess > 0 else 0


if __name__ == "__main__":
    sys.exit(main())
