"""The ``example-tiny`` family: a conv image tower and a transformer text tower.

Small enough to train on a CPU in seconds; built only on the public ``core`` API.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from core import (BackboneFamily, ClipcoreError, ClipModel, PreprocessSpec, TextSpec, TowerIntermediates, hookimpl,
                  init_logit_params, init_logit_values, load_model_weights, refuse_model_keys, run_blocks)

CONTEXT_LENGTH = 32
PAD, EOS = 0, 1
BYTE_OFFSET = 2  # ids 2..257 are the bytes of the UTF-8 text


class ByteTokenizer:
    """Lower-cased UTF-8 bytes, EOS appended (kept on truncation), right-padded with PAD."""

    spec = TextSpec(context_length=CONTEXT_LENGTH, pad_id=PAD, lowercase=True, pooling="eos")

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.full((len(texts), CONTEXT_LENGTH), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [b + BYTE_OFFSET for b in text.lower().encode("utf-8")][: CONTEXT_LENGTH - 1] + [EOS]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def save_pretrained(self, directory: str) -> None:
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        vocab = {"<pad>": PAD, "</s>": EOS}
        vocab.update({ch: byte + BYTE_OFFSET for byte, ch in bytes_to_unicode().items()})
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
        PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                model_max_length=CONTEXT_LENGTH).save_pretrained(directory)


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(4, cout), nn.GELU())


class TextBlock(nn.Module):
    """Pre-norm transformer block: attention, then an MLP (``fc1``, ``fc2``)."""

    def __init__(self, width: int, heads: int = 4):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class TinyClip(ClipModel):
    fsdp_wrap_classes = (ConvBlock, TextBlock)
    lora_targets = {"vision": ("0",), "text": ("in_proj_weight", "fc1", "fc2")}  # convs; attention and MLP

    def __init__(self, model_type: str, *, width: int = 32, embed_dim: int = 32, image_size: int = 32,
                 logit_scale: float = math.log(10.0), logit_bias: float | None = -10.0):
        super().__init__()
        self.model_type, self.embed_dim = model_type, embed_dim
        self.tokenizer = ByteTokenizer()
        self.preprocess = PreprocessSpec(height=image_size, width=image_size, mean=(0.5, 0.5, 0.5),
                                         std=(0.5, 0.5, 0.5), resize_mode="squash", interpolation="bilinear")
        self.vision_tower = nn.ModuleDict({
            "blocks": nn.Sequential(ConvBlock(3, width), ConvBlock(width, width), ConvBlock(width, width)),
            "proj": nn.Linear(width, embed_dim),
        })
        self.text_tower = nn.ModuleDict({
            "embed": nn.Embedding(256 + BYTE_OFFSET, width),
            "pos": nn.Embedding(CONTEXT_LENGTH, width),
            "blocks": nn.ModuleList([TextBlock(width), TextBlock(width)]),
            "proj": nn.Linear(width, embed_dim),
        })
        self.logit_scale, self.logit_bias = init_logit_params(logit_scale, logit_bias)
        self.grad_checkpointing = False

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training:
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for block in self.vision_tower["blocks"]:
            x = self._run(block, x)
        return self.vision_tower["proj"](x.mean(dim=(2, 3)))

    def text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = self.text_tower
        x = t["embed"](input_ids) + t["pos"].weight[: input_ids.shape[1]]
        for block in t["blocks"]:
            x = self._run(block, x)
        eos = (input_ids == EOS).int().argmax(dim=1)
        return t["proj"](x[torch.arange(x.shape[0]), eos])

    def image_intermediates(self, images: torch.Tensor, indices: Sequence[int], *, stop_early: bool,
                            features: bool) -> TowerIntermediates:
        """The conv blocks' maps as tokens (each block halves the grid); no extra tokens."""
        x, tokens, grids = images, [], []
        blocks = self.vision_blocks()
        for i, block in enumerate(blocks[: max(indices) + 1] if stop_early else blocks):
            x = block(x)
            if i in indices:
                tokens.append(x.flatten(2).transpose(1, 2))
                grids.append((x.shape[-2], x.shape[-1]))
        pooled = self.vision_tower["proj"](x.mean(dim=(2, 3))) if features else None
        return TowerIntermediates(tokens=tokens, grids=grids, features=pooled)

    def text_intermediates(self, input_ids: torch.Tensor, indices: Sequence[int], *, stop_early: bool,
                           features: bool) -> TowerIntermediates:
        t = self.text_tower
        x = t["embed"](input_ids) + t["pos"].weight[: input_ids.shape[1]]
        x, tokens = run_blocks(self.text_blocks(), x, indices, stop_early=stop_early)
        eos = (input_ids == EOS).int().argmax(dim=1)
        pooled = t["proj"](x[torch.arange(x.shape[0]), eos]) if features else None
        return TowerIntermediates(tokens=tokens, features=pooled)

    def vision_blocks(self) -> list[nn.Module]:
        return list(self.vision_tower["blocks"])

    def text_blocks(self) -> list[nn.Module]:
        return list(self.text_tower["blocks"])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable


def check(cfg) -> None:
    """The byte tokenizer has no vocabulary file and no canonicalisation; there is one text tower."""
    refuse_model_keys(cfg, "example", "adaptor_name", "tokenizer_path", "canonicalize_text")


def build(cfg) -> TinyClip:
    """Random init (``model.pretrained = false``) or a clipcore checkpoint's weights (a path); this
    example publishes no weights of its own."""
    if cfg.model.pretrained is True:
        raise ClipcoreError("example-tiny has no published weights", where="model.pretrained",
                            fix="set model.pretrained = false (random init) or to a clipcore checkpoint")
    scale, bias = init_logit_values(cfg)  # resolved by core: a bias only where training's loss adds one
    model = TinyClip("example-tiny", image_size=cfg.model.image_size, logit_scale=scale, logit_bias=bias)
    if cfg.model.pretrained is not False:
        load_model_weights(model, cfg.model.pretrained, key="model.pretrained")
    return model


def tiny(model_type: str) -> TinyClip:
    return TinyClip(model_type)


@hookimpl
def register_backbones(register):
    register(BackboneFamily(name="example", types=("example-tiny",), build=build, tiny=tiny, check=check,
                            description="Example third-party plugin: tiny conv + transformer CLIP."))
