"""Tiny real images for tests: a PNG of any size (zlib, no imaging library)."""

from __future__ import annotations

import struct
import zlib


def png(width: int, height: int, shade: int = 0) -> bytes:
    """A valid greyscale PNG of width x height pixels, all of one shade."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(b"\0" + bytes([shade]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))  # fmt: skip
