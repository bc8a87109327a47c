"""png_ink.py PNG MIN_FRACTION: exit 0 when at least MIN_FRACTION of the image's pixels differ from its
background (its most common colour) by more than 16 in some channel; prints the fraction. An 8-bit RGB or
RGBA PNG, decoded here with zlib alone (no imaging library on a minimal machine)."""
import collections
import struct
import sys
import zlib


def pixels(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6), f"{path}: bit depth {depth}, colour type {colour}"
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels
    prev, rows = bytearray(stride), []
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = prev[i], prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(line)
        prev = line
    return [tuple(row[x * channels:x * channels + 3]) for row in rows for x in range(width)]


def main():
    path, minimum = sys.argv[1], float(sys.argv[2])
    px = pixels(path)
    background = collections.Counter(px).most_common(1)[0][0]
    ink = sum(1 for p in px if max(abs(a - b) for a, b in zip(p, background)) > 16) / len(px)
    print(f"{path}: {ink:.4f} of the pixels differ from the background {background}")
    sys.exit(0 if ink >= minimum else 1)


if __name__ == "__main__":
    main()
