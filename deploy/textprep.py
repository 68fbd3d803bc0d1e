"""Tokenisation from the exported ``_tokenizer/`` and the sidecar's ``deploy.text`` rules alone
(the ``tokenizers`` library, no torch, no transformers).

Rules, in order (each from :class:`core.backbone.TextSpec`): ``canonicalize`` (big_vision: ``_``
to space, ASCII punctuation removed, lower-case, whitespace collapsed), ``lowercase``, encode with
the tokenizer's own normaliser and special tokens, truncate to ``context_length`` (special tokens
kept), ``strip_sep_token`` (``[SEP]`` removed, as NV-CLIP's training does), pad with ``pad_id`` on
``padding_side``.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tokenizers import Tokenizer

from core.errors import ClipcoreError

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize(text: str) -> str:
    """big_vision / open_clip text canonicalisation."""
    text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split())


def _special_token(tokenizer_dir: Path, name: str) -> str | None:
    """A special token's text from ``tokenizer_config.json`` / ``special_tokens_map.json``."""
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        path = tokenizer_dir / file
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get(name)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                return value
    return None


class SidecarTokenizer:
    """Callable ``texts -> int64 [N, context_length]`` equal to the model tokenizer's output."""

    def __init__(self, tokenizer_dir: str | Path, text_spec: dict[str, Any]):
        tokenizer_dir = Path(tokenizer_dir)
        file = tokenizer_dir / "tokenizer.json"
        if not file.is_file():
            raise ClipcoreError(f"{tokenizer_dir} has no tokenizer.json", where=str(tokenizer_dir),
                                fix="re-export the model: the exporter writes a fast-tokenizer directory")
        self.spec = dict(text_spec)
        self.length = int(self.spec["context_length"])
        self.pad_id = int(self.spec["pad_id"])
        self.tokenizer = Tokenizer.from_file(str(file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.length)
        self.sep_id = self._sep_id(tokenizer_dir) if self.spec.get("strip_sep_token") else None

    def _sep_id(self, tokenizer_dir: Path) -> int:
        token = _special_token(tokenizer_dir, "sep_token") or "[SEP]"
        sep = self.tokenizer.token_to_id(token)
        if sep is None:
            raise ClipcoreError(f"strip_sep_token is set but the tokenizer has no {token!r} token",
                                where=str(tokenizer_dir), fix="re-export the model with its own tokenizer")
        return sep

    def normalize(self, text: str) -> str:
        if self.spec.get("canonicalize"):
            text = canonicalize(text)
        if self.spec.get("lowercase"):
            text = text.lower()
        return text

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch([self.normalize(t) for t in texts])
        out = np.full((len(texts), self.length), self.pad_id, dtype=np.int64)
        left = self.spec.get("padding_side", "right") == "left"
        for row, enc in enumerate(encodings):
            ids = np.asarray(enc.ids, dtype=np.int64)
            if self.sep_id is not None:
                ids = ids[ids != self.sep_id]
            if left:
                out[row, self.length - len(ids):] = ids
            else:
                out[row, : len(ids)] = ids
        return out
