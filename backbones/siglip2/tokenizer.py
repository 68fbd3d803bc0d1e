"""The SigLIP2 caption tokenizer: Gemma vocabulary, 64 tokens, EOS appended, right padding.

Rules (identical in training, evaluation, inference and export; recorded in ``spec``):
captions are canonicalised (big_vision rules, ``model.canonicalize_text``, on by default) or at
least lower-cased (SigLIP2 was trained on lower-cased text, and the hub's ``GemmaTokenizer``
does not lower-case); encoded without special tokens; cut to 63 tokens so the EOS always
survives truncation; EOS appended; right-padded with ``<pad>`` to exactly 64. Mask policy
``none``: the text tower runs without an attention mask and pools the last position (usually a
pad token), which is how Google trained it (big_vision#157).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch

from core import ClipcoreError, TextSpec, canonicalize_text

from backbones.siglip2.architectures import CONTEXT_LENGTH


class SiglipTokenizer:
    """clipcore :class:`core.backbone.Tokenizer` over a Hugging Face Gemma tokenizer.

    ``load`` returns the Hugging Face tokenizer; it is called on first use, so a model can be
    built (e.g. for image-only inference) before its vocabulary is located.
    """

    def __init__(self, load: Callable[[], Any], *, canonicalize: bool, context_length: int = CONTEXT_LENGTH):
        self._load, self._hf = load, None
        self.canonicalize, self.context_length = canonicalize, context_length

    @property
    def hf(self) -> Any:
        """The underlying Hugging Face tokenizer (loaded on first access)."""
        if self._hf is None:
            tokenizer = self._load()
            if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
                raise ClipcoreError(
                    f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no EOS or pad token",
                    where="model.tokenizer_path", fix="use the Gemma tokenizer published with the SigLIP2 weights")
            self._hf = tokenizer
        return self._hf

    @property
    def spec(self) -> TextSpec:
        return TextSpec(context_length=self.context_length, pad_id=self.hf.pad_token_id, padding_side="right",
                        lowercase=True, canonicalize=self.canonicalize, mask_policy="none", pooling="last")

    def normalize(self, text: str) -> str:
        return canonicalize_text(text) if self.canonicalize else text.lower()

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        hf = self.hf
        encoded = hf([self.normalize(t) for t in texts], add_special_tokens=False, verbose=False)["input_ids"]
        out = torch.full((len(texts), self.context_length), hf.pad_token_id, dtype=torch.long)
        for row, ids in enumerate(encoded):
            ids = list(ids[: self.context_length - 1]) + [hf.eos_token_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def save_pretrained(self, directory: str) -> None:
        """Write the tokenizer set up as clipcore uses it: EOS appended by its post-processor,
        no BOS, right padding, ``model_max_length`` 64 (lower-casing/canonicalisation stay in
        ``spec``, applied before encoding)."""
        hf = copy.deepcopy(self.hf)
        hf.padding_side, hf.model_max_length = "right", self.context_length
        if hasattr(hf, "update_post_processor"):
            hf.add_bos_token, hf.add_eos_token = False, True
            hf.update_post_processor()
        hf.save_pretrained(directory)


def tiny_gemma_tokenizer() -> Any:
    """A Gemma-format tokenizer with a tiny vocabulary (special tokens, the 256 byte-fallback
    tokens, lower-case letters, digits and a few words), for tiny models and tests."""
    from transformers import GemmaTokenizer

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])}
    vocab.update({f"<0x{b:02X}>": len(vocab) + b for b in range(256)})
    merges: list[tuple[str, str]] = []
    for ch in "▁abcdefghijklmnopqrstuvwxyz0123456789":
        vocab.setdefault(ch, len(vocab))
    for word in ("▁a", "▁photo", "▁of", "▁the", "▁cat", "▁dog", "▁on", "▁red", "▁car"):
        piece = word[0]
        for ch in word[1:]:
            if piece + ch not in vocab:
                vocab[piece + ch] = len(vocab)
                merges.append((piece, ch))
            piece += ch
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=False, add_eos_token=True,
                          padding_side="right", model_max_length=CONTEXT_LENGTH)
