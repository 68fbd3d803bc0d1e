"""OpenAI CLIP's byte-level BPE tokenizer (the vocabulary bundled with open_clip), as a clipcore
:class:`core.backbone.Tokenizer`. Shared by the backbone plugins whose text towers use it.

Rules (open_clip ``SimpleTokenizer``, ``clean="lower"``): text cleaned (ftfy, HTML entities,
whitespace collapsed) and lower-cased — or canonicalised first when asked —, ``<start_of_text>`` +
BPE tokens + ``<end_of_text>``, cut to the context length with the end token kept, right-padded
with id 0. The text tower pools at the end token (the largest id), under a causal mask, so the
padding never changes an embedding.
"""

from __future__ import annotations

from typing import Sequence

import torch
from open_clip.tokenizer import SimpleTokenizer

from core.backbone import TextSpec
from core.text import canonicalize_text

PAD_ID = 0


class ClipBpeTokenizer:
    """``texts -> int64 [N, context_length]`` through open_clip's own ``SimpleTokenizer``."""

    def __init__(self, context_length: int = 77, *, canonicalize: bool = False):
        self.bpe = SimpleTokenizer(context_length=context_length)
        self.canonicalize = canonicalize
        self.spec = TextSpec(context_length=context_length, pad_id=PAD_ID, padding_side="right", lowercase=True,
                             canonicalize=canonicalize, mask_policy="none", pooling="eos")

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        texts = [canonicalize_text(t) if self.canonicalize else t for t in texts]
        return self.bpe(list(texts)).to(torch.long)

    def save_pretrained(self, directory: str) -> None:
        save_hf_tokenizer(self.bpe, directory, self.spec.context_length)


def save_hf_tokenizer(bpe: SimpleTokenizer, directory: str, context_length: int) -> None:
    """Write open_clip's ``SimpleTokenizer`` as a fast-tokenizer directory with the same vocabulary,
    merges, pre-tokenisation and start/end tokens, so ``tokenizers`` alone reproduces its ids.

    The normaliser reproduces the cleaning except ftfy's mojibake repair and HTML-entity decoding;
    truncation (special tokens kept) and padding with id 0 are left to the runtime (``TextSpec``).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    sot, eot = bpe.decoder[bpe.sot_token_id], bpe.decoder[bpe.eot_token_id]
    tok = Tokenizer(models.BPE(vocab=dict(bpe.encoder), merges=merges, end_of_word_suffix="</w>", unk_token=None))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Strip(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}", special_tokens=[(sot, bpe.sot_token_id), (eot, bpe.eot_token_id)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=sot, eos_token=eot,
                            model_max_length=context_length).save_pretrained(directory)
