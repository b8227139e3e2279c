"""Reference images as the video APIs take them (JPEG, PNG, WebP): what a file is, judged by
its bytes (a client's Content-Type is a claim, not a fact), and its pixel size. Pure: used by
the HTTP service (producer/http/uploads.py) and the sandbox (ops/sandbox), no I/O."""

from __future__ import annotations

import struct

# What OpenAI's Videos API (and the routers relaying it) accept as an input_reference.
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG's start-of-frame markers (SOF0..SOF15 but DHT, JPG and DAC): they carry the size.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_type(data: bytes) -> str | None:
    """The image's type from its magic bytes: one of IMAGE_TYPES, or None."""
    if data.startswith(_PNG):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels read from the image's header; None when it cannot be read."""
    try:
        kind = image_type(data)
        if kind == "image/png":
            return _png_size(data)
        if kind == "image/jpeg":
            return _jpeg_size(data)
        if kind == "image/webp":
            return _webp_size(data)
    except (struct.error, IndexError):
        return None  # a truncated header
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    # The first chunk is IHDR: length(4) type(4) width(4) height(4).
    if data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill bytes before a marker
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        if marker == 0xDA:  # the scan begins: no frame header came before it
            return None
        at += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: the frame header after a 3-byte tag and the start code
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: 14 bits each, minus one, after the signature byte
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24 bits each, minus one
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None
