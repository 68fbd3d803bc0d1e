"""Caption normalisation rules shared by tokenizers and deploy-time runtimes."""

from __future__ import annotations

import string

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize_text(text: str) -> str:
    """big_vision's caption canonicalisation: ``_`` becomes a space, ASCII punctuation is
    removed, the text is lower-cased and runs of whitespace collapse to one space."""
    text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split())
