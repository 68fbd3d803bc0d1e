"""open_clip tokenizers behind the clipcore :class:`core.backbone.Tokenizer` contract.

NV-CLIP: bert-base-uncased WordPiece through open_clip's ``HFTokenizer`` with ``[SEP]`` stripped
(``[CLS]`` first, ``[PAD]`` = 0 to the context length, last-position pooling, no text mask).
Other open_clip models use their own tokenizer (CLIP BPE bundled with open_clip, or an HF one).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from core import TextSpec, canonicalize_text

POOLING = {"argmax": "eos", "eos": "eos", "last": "last", "first": "first"}


class OpenClipTokenizer:
    """Wraps an open_clip tokenizer (``SimpleTokenizer`` or ``HFTokenizer``) returned by ``load``,
    which runs on first use (a model can be built, e.g. for image-only inference, before its
    vocabulary is located). With ``canonicalize`` captions are canonicalised (big_vision rules)
    before the tokenizer's own cleaning."""

    def __init__(self, load: Callable[[], Any], *, context_length: int, pooling: str, canonicalize: bool = False):
        self._load, self._tokenizer = load, None
        self.context_length, self.pooling, self.canonicalize = context_length, pooling, canonicalize

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = self._load()
        return self._tokenizer

    @property
    def spec(self) -> TextSpec:
        tokenizer = self.tokenizer
        clean = getattr(getattr(tokenizer, "clean_fn", None), "__name__", "")
        hf = getattr(tokenizer, "tokenizer", None)  # the transformers tokenizer inside an HFTokenizer
        return TextSpec(
            context_length=self.context_length,
            pad_id=0 if hf is None else hf.pad_token_id,
            padding_side="right",
            lowercase=clean in ("_clean_lower", "_clean_canonicalize") or bool(getattr(hf, "do_lower_case", False)),
            canonicalize=self.canonicalize or clean == "_clean_canonicalize",
            strip_sep_token=bool(getattr(tokenizer, "strip_sep_token", False)),
            mask_policy="none",
            pooling=POOLING.get(self.pooling, self.pooling))

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if self.canonicalize:
            texts = [canonicalize_text(t) for t in texts]
        return self.tokenizer(texts, context_length=self.context_length).long()

    def save_pretrained(self, directory: str) -> None:
        """The HF tokenizer directory (CLIP BPE is written as a transformers ``CLIPTokenizer``
        with open_clip's bundled vocabulary and merges)."""
        if hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(directory)
        else:
            clip_bpe_as_hf(self.tokenizer, self.context_length).save_pretrained(directory)


def clip_bpe_as_hf(tokenizer: Any, context_length: int) -> Any:
    """open_clip's ``SimpleTokenizer`` vocabulary as a transformers fast ``CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    merges = [tuple(pair) for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda item: item[1])]
    sot, eot = tokenizer.decoder[tokenizer.sot_token_id], tokenizer.decoder[tokenizer.eot_token_id]
    return CLIPTokenizer(vocab=dict(tokenizer.encoder), merges=merges, model_max_length=context_length,
                         bos_token=sot, eos_token=eot, unk_token=eot, pad_token=eot)


def tiny_bert_tokenizer() -> Any:
    """An uncased WordPiece tokenizer with a tiny vocabulary in BERT's layout ([PAD]=0, [UNK],
    [CLS], [SEP], [MASK]), for tiny NV-CLIP models and tests."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab={token: i for i, token in enumerate(TINY_BERT_VOCAB)}, do_lower_case=True)


TINY_BERT_VOCAB = (["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                   + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-_")
                   + ["photo", "of", "a", "the", "cat", "dog", "red", "car", "on", "##s", "##ing", "##ed"])
