"""Caption files to captions, shared by every dataset format."""

from __future__ import annotations

from typing import Literal

from core.bad_samples import BadSample


def parse_captions(data: bytes, mode: Literal["file", "lines"] = "file") -> list[str]:
    """The captions in a caption file's bytes (UTF-8, a leading BOM ignored).

    ``file``: the whole file, stripped, is one caption (TAO's rule). ``lines``: each non-empty
    line, stripped, is one caption. Raises :class:`BadSample` for non-UTF-8 bytes and for a file
    with no caption (empty or only whitespace).
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadSample("caption-not-utf8", f"invalid byte 0x{data[exc.start]:02x} at offset {exc.start}") from None
    if mode == "lines":
        captions = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        captions = [text.strip()] if text.strip() else []
    if not captions:
        raise BadSample("empty-caption", f"{len(data)} bytes, no text")
    return captions
