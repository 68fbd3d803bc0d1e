"""Build RADIO-CLIP from the experiment config.

``model.pretrained``: ``true`` → the size's published ``.pth.tar`` (HF cache, else the hub unless
offline) plus the teacher text tower (``model.radio.text_tower``, else the HF cache); a path → that
``.pth.tar`` (or a clipcore checkpoint of this type); a hub id → its ``.pth.tar``; ``false`` → random
weights with the published architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, SiglipTextConfig

from core import (ClipcoreError, ConfigError, PreprocessSpec, Tokenizer, init_logit_params, init_logit_values,
                  load_hf, load_model_weights)

from backbones.radio import locate
from backbones.radio.adaptor import AdaptorHead
from backbones.radio.config import SECTION
from backbones.radio.model import RadioClip
from backbones.radio.sizes import RadioSize, TextTowerSpec, resolve_adaptor, size_of
from backbones.radio.teachers import Teacher, select_teacher
from backbones.radio.text import ClipText, SiglipText, load_clip_text, load_siglip_text
from backbones.radio.vision import RadioVisionTower, create_trunk
from backbones.radio.weights import RadioCheckpoint, load_file, parse_checkpoint
from backbones.openclip.tokenizer import OpenClipTokenizer
from backbones.siglip2.tokenizer import SiglipTokenizer, tiny_gemma_tokenizer

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH = 16
CLIP_CONTEXT = 77
MAX_SIZE = 2048
# The CLS token an adaptor reads in a model without weights; checkpoints carry their own (``slot`` buffer).
DEFAULT_SLOT = {"siglip": 0, "clip": 1}

TINY_TRUNK = dict(embed_dim=64, depth=2, num_heads=2, pos_embed_grid_size=(8, 8))
TINY_EMBED = 16
TINY_SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   projection_size=TINY_EMBED)
TINY_CLIP = dict(embed_dim=TINY_EMBED, width=32, heads=2, layers=2)


def check(cfg: Any) -> None:
    """Family rules, checked before anything is built: a valid adaptor for the size, an image size
    the backbone accepts, no tokenizer override for the bundled CLIP vocabulary."""
    size = size_of(cfg.model.type)
    adaptor = resolve_adaptor(size, cfg.model.adaptor_name)
    image_size = cfg.model.image_size
    if image_size % PATCH or not PATCH <= image_size <= MAX_SIZE:
        raise ConfigError(f"model.image_size={image_size} is not a multiple of {PATCH} in [{PATCH}, {MAX_SIZE}]",
                          where="model.image_size", fix="use e.g. 224, 256, 384 or 512 (C-RADIOv3 prefers 512)")
    if adaptor == "clip" and cfg.model.tokenizer_path:
        raise ConfigError("the clip adaptor uses the CLIP BPE vocabulary bundled with open_clip",
                          where="model.tokenizer_path", fix="unset model.tokenizer_path")


def build(cfg: Any, *, trunk_arch: dict | None = None) -> RadioClip:
    """The model for ``cfg``. ``trunk_arch`` overrides timm architecture fields (tests build tiny
    RADIO-layout models through this same path)."""
    check(cfg)
    size = size_of(cfg.model.type)
    adaptor = resolve_adaptor(size, cfg.model.adaptor_name)
    options = SECTION.of(cfg)
    trunk = create_trunk(size.timm_name, cpe_train_augment=options.cpe_train_augment,
                         align_corners=size.align_corners if options.align_corners is None else options.align_corners,
                         **(trunk_arch or {}))
    if cfg.model.pretrained is False:
        return _random(cfg, size, adaptor, trunk)
    path = locate.radio_checkpoint(size, cfg.model.pretrained)
    raw = load_file(path, where="model.pretrained")
    if isinstance(raw, dict) and raw.get("format") == "clipcore":
        model = _random(cfg, size, adaptor, trunk)
        load_model_weights(model, path, key="model.pretrained")
        return model
    return _pretrained(cfg, size, adaptor, trunk, parse_checkpoint(raw, path, where="model.pretrained"))


def tiny(model_type: str, adaptor: str = "siglip") -> RadioClip:
    """A random tiny model with the size's structure (LayerScale, align_corners, 8 prefix tokens)."""
    size = size_of(model_type)
    spec = size.text_tower(adaptor)
    trunk = create_trunk(size.timm_name, align_corners=size.align_corners, **TINY_TRUNK)
    head = AdaptorHead(TINY_TRUNK["embed_dim"], 48, TINY_EMBED, num_inner=1)
    tokenizer: Tokenizer
    if spec.kind == "siglip":
        hf_tokenizer = tiny_gemma_tokenizer()
        text = SiglipText(SiglipTextConfig(**{**spec.config, **TINY_SIGLIP, "vocab_size": len(hf_tokenizer)}))
        tokenizer = SiglipTokenizer(lambda: hf_tokenizer, canonicalize=True)
    else:
        text, tokenizer = ClipText(**{**spec.config, **TINY_CLIP}), clip_bpe_tokenizer(canonicalize=False)
    return RadioClip(model_type=model_type, adaptor=adaptor, vision=RadioVisionTower(trunk, head, DEFAULT_SLOT[adaptor]),
                     text=text, tokenizer=tokenizer, preprocess=_preprocess(32), **_logits(2.0, -5.0))


def misfit(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str:
    """``""`` when ``got`` has exactly the names and shapes of ``expected``, else what differs."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [f"{k} {tuple(got[k].shape)} (model: {tuple(v.shape)})" for k, v in expected.items()
             if k in got and got[k].shape != v.shape]
    if not (missing or unexpected or wrong):
        return ""
    return (f"{len(missing)} tensors missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}), {len(wrong)} of another shape (e.g. {wrong[:2]})")


def load_trunk(trunk: nn.Module, ckpt: RadioCheckpoint, size: RadioSize) -> None:
    """Load the backbone strictly; any missing, unexpected or mis-shaped tensor is reported."""
    problems = misfit(trunk.state_dict(), ckpt.trunk)
    if problems:
        pos = ckpt.trunk.get("embeds.pos_embed")
        depth = len({k.split(".")[1] for k in ckpt.trunk if k.startswith("blocks.")})
        raise ClipcoreError(
            f"{ckpt.path} does not fit {size.model_type}: {problems}; "
            f"the checkpoint has width {pos.shape[-1] if pos is not None else '?'} and depth {depth}",
            where="model.pretrained",
            fix=f"set model.type to this checkpoint's size (c-radio_v3-b/l/h/g), or use the file published for "
                f"{size.model_type} ({size.hf_repo}, {size.hub_file})")
    trunk.load_state_dict(ckpt.trunk, strict=True)


def load_head(teacher: Teacher, ckpt: RadioCheckpoint, in_dim: int) -> AdaptorHead:
    """The teacher's summary head over ``in_dim``-wide CLS tokens, its hidden width, depth and
    output read from the stored shapes, loaded strictly: any other tensor is reported."""
    state = teacher.head
    shape = AdaptorHead.shape_of(state)[1:] if {"fc1.weight", "final.2.weight"} <= state.keys() else (1, 1, 0)
    head = AdaptorHead(in_dim, *shape)
    problems = misfit(head.state_dict(), state)
    if problems:
        raise ClipcoreError(
            f"{ckpt.path}: the summary head of teacher {teacher.name!r} is not an mlp_version v2 head over "
            f"{in_dim}-wide tokens: {problems}", where="model.pretrained",
            fix="this file's layout differs from the published C-RADIOv3 torch-hub checkpoints; "
                "please report it with these key names")
    head.load_state_dict(state, strict=True)
    return head


def _pretrained(cfg: Any, size: RadioSize, adaptor: str, trunk: nn.Module, ckpt: RadioCheckpoint) -> RadioClip:
    _check_conditioner(ckpt)
    teacher = select_teacher(ckpt, size, adaptor, where="model.pretrained")
    load_trunk(trunk, ckpt, size)
    head = load_head(teacher, ckpt, trunk.embed_dim)
    spec = size.text_tower(adaptor)
    source = locate.text_tower(spec, SECTION.of(cfg).text_tower, model_type=size.model_type, adaptor=adaptor)
    if spec.kind == "siglip":
        text, learned = load_siglip_text(source)
    else:
        text, learned = load_clip_text(source, quick_gelu=spec.config["quick_gelu"])
    if text.out_dim != head.out_dim:
        raise ClipcoreError(
            f"the {teacher.name!r} adaptor head outputs {head.out_dim} dimensions but the text tower at {source} "
            f"outputs {text.out_dim}", where="model.radio.text_tower",
            fix=f"point model.radio.text_tower at the text tower of {spec.hf_repo}, the head's teacher")
    scale, bias = init_logit_values(cfg)
    return RadioClip(model_type=size.model_type, adaptor=adaptor, vision=RadioVisionTower(trunk, head, teacher.slot),
                     text=text, tokenizer=_tokenizer(cfg, spec, source), preprocess=_preprocess(cfg.model.image_size),
                     **_logits(learned.get("logit_scale", scale), learned.get("logit_bias", bias)))


def _random(cfg: Any, size: RadioSize, adaptor: str, trunk: nn.Module) -> RadioClip:
    spec = size.text_tower(adaptor)
    head = AdaptorHead(trunk.embed_dim, trunk.embed_dim, spec.embed_dim, num_inner=1)
    text = SiglipText(SiglipTextConfig(**spec.config)) if spec.kind == "siglip" else ClipText(**spec.config)
    configured = SECTION.of(cfg).text_tower
    return RadioClip(model_type=size.model_type, adaptor=adaptor,
                     vision=RadioVisionTower(trunk, head, DEFAULT_SLOT[adaptor]), text=text,
                     tokenizer=_tokenizer(cfg, spec, Path(configured) if configured else None),
                     preprocess=_preprocess(cfg.model.image_size), **_logits(*init_logit_values(cfg)))


def _check_conditioner(ckpt: RadioCheckpoint) -> None:
    """The released models normalise with OpenAI CLIP mean/std; clipcore's preprocessing assumes it."""
    got = ckpt.mean + ckpt.std
    if any(abs(a - b) > 1e-3 for a, b in zip(got, OPENAI_CLIP_MEAN + OPENAI_CLIP_STD)):
        raise ClipcoreError(f"{ckpt.path} normalises inputs with mean {ckpt.mean} / std {ckpt.std}, not OpenAI "
                            "CLIP's", where="model.pretrained", fix="use a published C-RADIOv3 checkpoint")


def _tokenizer(cfg: Any, spec: TextTowerSpec, source: Path | None) -> Tokenizer:
    canonicalize = cfg.model.canonicalize_text
    if spec.kind == "clip":
        return clip_bpe_tokenizer(canonicalize=bool(canonicalize))
    return SiglipTokenizer(lambda: _gemma_tokenizer(cfg, spec, source),
                           canonicalize=True if canonicalize is None else bool(canonicalize))


def clip_bpe_tokenizer(*, canonicalize: bool) -> Tokenizer:
    """OpenAI CLIP BPE (bundled with open_clip), 77 tokens, pooled at the end token (open_clip's ``argmax``)."""
    from open_clip import SimpleTokenizer

    return OpenClipTokenizer(lambda: SimpleTokenizer(context_length=CLIP_CONTEXT), context_length=CLIP_CONTEXT,
                             pooling="argmax", canonicalize=canonicalize)


def _gemma_tokenizer(cfg: Any, spec: TextTowerSpec, source: Path | None) -> Any:
    """The SigLIP2 tokenizer: ``model.tokenizer_path``, else beside the text tower, else the teacher's repo."""
    looked: list[str] = []
    for candidate in [c for c in (cfg.model.tokenizer_path, source and str(source), spec.hf_repo) if c]:
        tokenizer = load_hf(AutoTokenizer.from_pretrained, candidate, looked)
        if tokenizer is not None:
            return tokenizer
    raise ClipcoreError("no SigLIP2 (Gemma) tokenizer found; looked in: " + "; ".join(looked),
                        where="model.tokenizer_path",
                        fix=f"set model.tokenizer_path (or model.radio.text_tower) to a directory with the tokenizer "
                            f"files of {spec.hf_repo}, or put that repository in the Hugging Face cache")


def _preprocess(image_size: int) -> PreprocessSpec:
    """The backbone's own normalisation (OpenAI CLIP), shortest-side bicubic resize + centre crop."""
    return PreprocessSpec(height=image_size, width=image_size, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
                          resize_mode="shortest", interpolation="bicubic")


def _logits(scale: float, bias: float | None) -> dict[str, Any]:
    logit_scale, logit_bias = init_logit_params(scale, bias)
    return {"logit_scale": logit_scale, "logit_bias": logit_bias}
