"""Build a SigLIP2 model from the experiment config: architecture from the type (offline),
weights from ``model.pretrained``, tokenizer from beside the weights or the HF cache."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import attrs
import torch
from transformers import AutoConfig, AutoTokenizer, Siglip2Model, SiglipModel

from core import (ClipcoreError, ConfigError, PreprocessSpec, hf_cache_dir, init_logit_values, load_hf,
                  load_model_weights, looks_like_path, missing_weights_error)

from backbones.siglip2.architectures import TYPES, Siglip2Type, hf_config
from backbones.siglip2.model import SiglipClip
from backbones.siglip2.tokenizer import SiglipTokenizer, tiny_gemma_tokenizer

log = logging.getLogger(__name__)
MODEL_CLASSES = {"siglip": SiglipModel, "siglip2": Siglip2Model}
RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL codes in preprocessor_config.json


def build(cfg: Any) -> SiglipClip:
    """The model for ``cfg.model.type``; see :class:`core.backbone.BackboneFamily` for ``pretrained``."""
    arch = TYPES[cfg.model.type]
    pretrained = cfg.model.pretrained
    clipcore_file = None
    if pretrained is False:
        hf_model, source = _random(arch, cfg), None
    elif isinstance(pretrained, str) and Path(pretrained).expanduser().is_file():
        folder = Path(pretrained).expanduser().parent
        if (folder / "config.json").is_file():
            raise ClipcoreError(f"{pretrained} is the weights file of a Hugging Face model directory",
                                where="model.pretrained", fix=f"set model.pretrained = \"{folder}\" (the directory)")
        hf_model, source, clipcore_file = _random(arch, cfg), None, pretrained
    else:
        source = arch.hf_id if pretrained is True else str(pretrained)
        hf_model = _load_pretrained(arch, source)
    model = SiglipClip(hf_model, model_type=arch.name, preprocess=_preprocess(arch, hf_model, source, cfg),
                       tokenizer=SiglipTokenizer(lambda: _load_tokenizer(arch, source, cfg),
                                                 canonicalize=_canonicalize(cfg)))
    if clipcore_file:
        load_model_weights(model, clipcore_file, key="model.pretrained")
    return model


def tiny(model_type: str) -> SiglipClip:
    """A random tiny model with the type's structure (patch size, NaFlex or not) and a tiny tokenizer."""
    arch = TYPES[model_type]
    tokenizer = tiny_gemma_tokenizer()
    hf_model = MODEL_CLASSES["siglip2" if arch.naflex else "siglip"](
        hf_config(arch, tiny=True, vocab_size=len(tokenizer)))
    _set_logits(hf_model, 2.0, -5.0)
    size = hf_model.config.vision_config.image_size if not arch.naflex else arch.patch_size * 2
    return SiglipClip(hf_model, model_type=model_type, preprocess=_spec(size, "bilinear"),
                      tokenizer=SiglipTokenizer(lambda: tokenizer, canonicalize=True))


def _canonicalize(cfg: Any) -> bool:
    return True if cfg.model.canonicalize_text is None else bool(cfg.model.canonicalize_text)


def _random(arch: Siglip2Type, cfg: Any) -> SiglipModel | Siglip2Model:
    hf_model = MODEL_CLASSES["siglip2" if arch.naflex else "siglip"](hf_config(arch))
    scale, bias = init_logit_values(cfg)
    _set_logits(hf_model, scale, SIGLIP_INIT_LOGIT_BIAS if bias is None else bias)  # SigLIP always has a bias
    return hf_model


SIGLIP_INIT_LOGIT_BIAS = -10.0  # the SigLIP paper's init


def _set_logits(hf_model: torch.nn.Module, scale: float, bias: float) -> None:
    with torch.no_grad():
        hf_model.logit_scale.fill_(scale)
        hf_model.logit_bias.fill_(bias)


def _load_pretrained(arch: Siglip2Type, source: str) -> SiglipModel | Siglip2Model:
    """Weights from a local directory or hub id, dispatched on the checkpoint's ``model_type``;
    every missing or unexpected tensor is an error (transformers would only warn)."""
    looked: list[str] = []
    config = load_hf(AutoConfig.from_pretrained, source, looked)
    if config is None:
        raise missing_weights_error(arch.name, looked, _ways(arch))
    cls = MODEL_CLASSES.get(config.model_type)
    if cls is None:
        raise ClipcoreError(f"{source} holds a {config.model_type!r} checkpoint, not SigLIP/SigLIP2",
                            where="model.pretrained",
                            fix="point model.pretrained at a SigLIP2 checkpoint, or choose the model.type "
                                "of the family this checkpoint belongs to (`core plugins` lists them)")
    loaded = load_hf(lambda src, **kw: cls.from_pretrained(src, config=config, dtype=torch.float32,
                                                           output_loading_info=True, **kw), source, looked)
    if loaded is None:
        raise missing_weights_error(arch.name, looked, _ways(arch))
    hf_model, info = loaded
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise ClipcoreError(f"{source} does not match its own config: "
                            + "; ".join(f"{k}: {sorted(map(str, v))[:3]}" for k, v in problems.items()),
                            where="model.pretrained", fix="re-download or re-save the checkpoint")
    _warn_if_other_architecture(arch, hf_model)
    return hf_model.eval()


def _warn_if_other_architecture(arch: Siglip2Type, hf_model: torch.nn.Module) -> None:
    vision = hf_model.config.vision_config
    expected = hf_config(arch).vision_config
    got = (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, getattr(vision, "image_size", None))
    want = (expected.hidden_size, expected.num_hidden_layers, expected.patch_size, getattr(expected, "image_size", None))
    if got != want:
        log.warning("model.pretrained holds a SigLIP architecture (width, depth, patch, size) %s that differs "
                    "from model.type %s %s; the checkpoint's own architecture is used", got, arch.name, want)


def _ways(arch: Siglip2Type) -> list[str]:
    return [f"download once with network access (`huggingface-cli download {arch.hf_id}`) into the Hugging Face "
            f"cache ({hf_cache_dir()}), or point HF_HOME / HF_HUB_CACHE at a copy of such a cache, and run with "
            "HF_HUB_OFFLINE=1",
            "set model.pretrained = \"/path/to/dir\" (a directory written by save_pretrained: config.json, "
            "model.safetensors, tokenizer files)"]


def _load_tokenizer(arch: Siglip2Type, source: str | None, cfg: Any) -> Any:
    looked: list[str] = []
    candidates = [cfg.model.tokenizer_path] if cfg.model.tokenizer_path else []
    candidates += [s for s in (source, arch.hf_id) if s and s not in candidates]
    for candidate in candidates:
        tokenizer = load_hf(AutoTokenizer.from_pretrained, candidate, looked)
        if tokenizer is not None:
            return tokenizer
    raise ClipcoreError(
        f"no Gemma tokenizer for {arch.name} found; looked in: " + "; ".join(looked), where="model.tokenizer_path",
        fix=f"set model.tokenizer_path to a directory holding the SigLIP2 tokenizer (tokenizer.json, "
            f"tokenizer_config.json, as published in {arch.hf_id}), or put {arch.hf_id} in the Hugging Face cache")


def _preprocess(arch: Siglip2Type, hf_model: torch.nn.Module, source: str | None, cfg: Any) -> PreprocessSpec:
    """Squash, mean/std 0.5; interpolation from the checkpoint's ``preprocessor_config.json``
    (``resample`` 2 bilinear, 3 bicubic) when there is one, else bilinear (what the published
    SigLIP2 processors use, and what TAO Deploy re-implements)."""
    if isinstance(hf_model, Siglip2Model):
        size, patch = cfg.model.image_size, hf_model.config.vision_config.patch_size
        if size % patch:
            raise ConfigError(f"model.image_size={size} is not a multiple of the NaFlex patch size {patch}",
                              where="model.image_size",
                              fix=f"use a multiple of {patch}; 256 matches the published 256-patch budget")
    else:
        size = hf_model.config.vision_config.image_size
        default = attrs.fields(type(cfg.model)).image_size.default
        if cfg.model.image_size not in (size, default):
            log.warning("model.image_size = %d is ignored: %s is a fixed-resolution model and takes %dx%d images",
                        cfg.model.image_size, arch.name, size, size)
    return _spec(size, _interpolation(source or arch.hf_id))


def _spec(size: int, interpolation: str) -> PreprocessSpec:
    return PreprocessSpec(height=size, width=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                          resize_mode="squash", interpolation=interpolation)


def _interpolation(source: str) -> str:
    path = _local_file(source, "preprocessor_config.json")
    if path is not None:
        resample = json.loads(path.read_text(encoding="utf-8")).get("resample")
        if resample in RESAMPLE:
            return RESAMPLE[resample]
    return "bilinear"


def _local_file(source: str, filename: str) -> Path | None:
    """``filename`` of a local directory or of a hub id's cached snapshot, without network."""
    if Path(source).expanduser().is_dir():
        path = Path(source).expanduser() / filename
        return path if path.is_file() else None
    if looks_like_path(source):
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source, filename, cache_dir=str(hf_cache_dir()))
    return Path(found) if isinstance(found, str) else None
