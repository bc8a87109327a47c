"""Edits a checkpoint the way a bug or a hand could, keeping it consistent: the manifest is resealed
(each file's bytes and CRC-32, then its own manifest_crc32) so that only the loader's own checks can
catch what was changed.
  edit_checkpoint.py reseal DIR FILE              after FILE was edited by other means
  edit_checkpoint.py seal DIR                     after manifest.json itself was edited
  edit_checkpoint.py transpose DIR FILE TENSOR    the header gives TENSOR its two sizes swapped
  edit_checkpoint.py drop DIR FILE TENSOR         TENSOR leaves the safetensors file"""
import json
import struct
import sys
import zlib


def seal(d, m):
    """manifest_crc32: the CRC-32 of the manifest without it, compact, keys sorted (docs/checkpoint-format.md)."""
    m.pop("manifest_crc32", None)
    m["manifest_crc32"] = zlib.crc32(json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    json.dump(m, open(f"{d}/manifest.json", "w"), indent=2)


def reseal(d, name):
    blob = open(f"{d}/{name}", "rb").read()
    m = json.load(open(f"{d}/manifest.json"))
    for f in m["files"]:
        if f["path"] == name:
            f["bytes"], f["crc32"] = len(blob), zlib.crc32(blob)
    seal(d, m)


def rewrite(d, name, edit):
    blob = open(f"{d}/{name}", "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    header, data = json.loads(blob[8:8 + n]), blob[8 + n:]
    edit(header)
    out, offset = b"", 0  # the data re-packed in order, with no gaps
    for key in sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0]):
        begin, end = header[key]["data_offsets"]
        out += data[begin:end]
        header[key]["data_offsets"] = [offset, offset + end - begin]
        offset += end - begin
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    open(f"{d}/{name}", "wb").write(struct.pack("<Q", len(text)) + text + out)
    reseal(d, name)


command, d = sys.argv[1:3]
name = sys.argv[3] if len(sys.argv) > 3 else None
if command == "seal":
    seal(d, json.load(open(f"{d}/manifest.json")))
elif command == "reseal":
    reseal(d, name)
elif command == "transpose":
    tensor = sys.argv[4]
    rewrite(d, name, lambda h: h[tensor].update(shape=h[tensor]["shape"][::-1]))
elif command == "drop":
    rewrite(d, name, lambda h: h.pop(sys.argv[4]))
else:
    sys.exit(f"edit_checkpoint.py: unknown command {command}")
