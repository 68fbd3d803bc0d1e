"""Build open_clip models from the experiment config.

- NV-CLIP types (``ViT-{L,H}-14-SigLIP-CLIPA-*``) and ``clipcore-demo-tiny``: architecture from
  clipcore's open_clip configs; weights from ``model.pretrained`` = an NV-CLIP/open_clip weights
  file (or a directory holding one), a clipcore checkpoint, or ``false``. NV-CLIP weights are on NGC
  only, so ``true`` cannot be resolved automatically.
- ``openclip:<Name>``: any model open_clip knows, ``model.pretrained`` = an open_clip pretrained
  tag (found in the HF / open_clip cache, downloaded when online), a weights file, or ``false``.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from core import (WEIGHT_SUFFIXES, ClipcoreError, ConfigError, PreprocessSpec, hf_cache_dir, hf_offline,
                  init_logit_values, load_hf, load_model_weights, missing_weights_error, read_weights_file)

from backbones.openclip.configs import (DEMO_TYPE, NVCLIP_TYPES, OPENCLIP_PREFIX, model_config,
                                        register_with_open_clip, tiny_config)
from backbones.openclip.model import OpenClipModel
from backbones.openclip.tokenizer import TINY_BERT_VOCAB, OpenClipTokenizer, tiny_bert_tokenizer

log = logging.getLogger(__name__)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


def matches(model_type: str) -> bool:
    """``openclip:<Name>`` names any model open_clip knows."""
    return model_type.startswith(OPENCLIP_PREFIX)


def build(cfg: Any) -> OpenClipModel:
    """The model for ``cfg.model.type``; see :class:`core.backbone.BackboneFamily` for ``pretrained``."""
    register_with_open_clip()
    if matches(cfg.model.type):
        return _build_named(cfg, cfg.model.type[len(OPENCLIP_PREFIX):])
    return _build_clipcore_type(cfg)


def tiny(model_type: str) -> OpenClipModel:
    """A random tiny model with the type's tower kinds, pooling and position tables."""
    if model_type == DEMO_TYPE:
        model_cfg = tiny_config(model_type, vocab_size=49408)
        load = lambda: _clip_bpe(model_cfg["text_cfg"]["context_length"])
    else:
        model_cfg = tiny_config(model_type, vocab_size=len(TINY_BERT_VOCAB))
        load = lambda: _hf_tokenizer_from(_tiny_bert_dir().name, model_cfg["text_cfg"], local_files_only=True)
    clip = _create(model_cfg, scale=2.0, bias=-5.0)
    return _wrap(clip, model_type, model_cfg, _openai_spec(model_cfg["vision_cfg"]["image_size"]), load, False)


# --------------------------------------------------------------------------- clipcore types
def _build_clipcore_type(cfg: Any) -> OpenClipModel:
    model_type, pretrained = cfg.model.type, cfg.model.pretrained
    model_cfg = model_config(model_type)
    weights_path = None if pretrained is False else _weights_path(model_type, pretrained)
    weights = None if weights_path is None else read_weights_file(weights_path)
    state = None if weights is None or weights.clipcore_type else _custom_text_layout(weights.state_dict)
    if state is not None and "text.positional_embedding" in state:
        model_cfg["text_cfg"]["context_length"] = state["text.positional_embedding"].shape[0]
    _apply_image_size(model_cfg, cfg.model.image_size)
    scale, bias = init_logit_values(cfg)
    if bias is None and weights is not None and "logit_bias" in weights.state_dict:  # the weights bring a bias
        bias = model_cfg.get("init_logit_bias", 0.0)
    clip = _create(model_cfg, scale=scale, bias=bias)
    if state is not None:
        _load_state(clip, state, weights.path, model_type, model_cfg)
    text_cfg = model_cfg["text_cfg"]
    if "hf_tokenizer_name" in text_cfg:
        places = [cfg.model.tokenizer_path, *_beside(weights_path), text_cfg["hf_tokenizer_name"]]
        load = lambda: _find_hf_tokenizer(model_type, text_cfg, places)
    else:
        load = lambda: _clip_bpe(text_cfg["context_length"])
    model = _wrap(clip, model_type, model_cfg, _openai_spec(model_cfg["vision_cfg"]["image_size"]), load,
                  bool(cfg.model.canonicalize_text))
    if weights is not None and weights.clipcore_type:
        load_model_weights(model, weights.path, key="model.pretrained")
    return model


def _weights_path(model_type: str, pretrained: bool | str) -> Path:
    if pretrained is True and model_type == DEMO_TYPE:
        raise missing_weights_error(model_type, [f"{DEMO_TYPE} has no published weights"], [])
    if pretrained is True:
        raise missing_weights_error(model_type, [
            "NV-CLIP weights are published on NGC only (catalog.ngc.nvidia.com, nvidia/tao/nvclip_vit), which "
            "clipcore cannot download"], [
            "download the checkpoint yourself and set model.pretrained = \"/path/to/checkpoint.pth\" (put the "
            "bert-base-uncased tokenizer files in a `tokenizer/` folder beside it, or set model.tokenizer_path)"])
    path = Path(pretrained).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
        if len(files) != 1:
            raise ClipcoreError(f"{path} holds {len(files)} weights files ({', '.join(p.name for p in files)}); "
                                "expected exactly one", where="model.pretrained",
                                fix="point model.pretrained at the weights file itself")
        return files[0]
    if not path.is_file():
        raise ClipcoreError(f"model.pretrained={pretrained!r} is neither a weights file nor a directory",
                            where="model.pretrained",
                            fix=f"give the path of the {model_type} checkpoint file, or false for random weights")
    return path


def _beside(weights_path: Path | None) -> list[Path]:
    """Tokenizer directories next to a weights file: ``tokenizer/`` and the file's own folder."""
    if weights_path is None:
        return []
    folder = weights_path.parent
    return [folder / "tokenizer", folder]


def _apply_image_size(model_cfg: dict, image_size: int) -> None:
    """A 2-D sin-cos position table is exact at any grid, so such types (NV-CLIP) run at
    ``model.image_size`` when it is a multiple of the patch size; otherwise the type's own size."""
    vision = model_cfg["vision_cfg"]
    if vision.get("pos_embed_type") != "sin_cos_2d":
        return
    if image_size % vision["patch_size"] == 0:
        vision["image_size"] = image_size
    else:
        log.info("model.image_size=%d is not a multiple of the patch size %d; using the type's %d",
                 image_size, vision["patch_size"], vision["image_size"])


# --------------------------------------------------------------------------- openclip:<Name>
def _build_named(cfg: Any, name: str) -> OpenClipModel:
    import open_clip

    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        raise ConfigError(f"open_clip has no model {name!r}", where="model.type",
                          fix=(f"did you mean 'openclip:{close[0]}'? " if close else "")
                          + "`python -c \"import open_clip; print(open_clip.list_models())\"` lists them")
    model_cfg = open_clip.get_model_config(name)
    if "multimodal_cfg" in model_cfg:
        raise ConfigError(f"openclip:{name} is a captioning (CoCa) model, not a dual encoder", where="model.type",
                          fix="choose a CLIP/SigLIP model from open_clip")
    pretrained, tags = cfg.model.pretrained, open_clip.list_pretrained_tags_by_model(name)
    scale, bias = init_logit_values(cfg)
    if pretrained is True:
        raise ConfigError(f"openclip:{name} needs to know which weights: model.pretrained = true is ambiguous",
                          where="model.pretrained",
                          fix=f"set it to a pretrained tag ({', '.join(tags) or 'none published'}), a weights "
                              "file, or false")
    if pretrained is False:
        clip = _create_named(name, None, init_logit_scale=scale,
                             **({} if bias is None else {"init_logit_bias": bias}))
    elif pretrained in tags:
        clip = _create_named(name, pretrained)
    else:
        weights = read_weights_file(_weights_path(f"openclip:{name}", pretrained))
        clip = _create_named(name, None, init_logit_scale=scale,
                             **({} if bias is None else {"init_logit_bias": bias}))
        _load_state(clip, _custom_text_layout(weights.state_dict), weights.path, f"openclip:{name}", model_cfg)
    if getattr(clip, "logit_bias", None) is None and bias is not None:
        clip.logit_bias = torch.nn.Parameter(torch.tensor(float(bias)))
    pp = clip.visual.preprocess_cfg
    spec = _preprocess_from_open_clip(name, pp)
    load = lambda: open_clip.get_tokenizer(name)
    return _wrap(clip, f"openclip:{name}", model_cfg, spec, load, bool(cfg.model.canonicalize_text))


def _create_named(name: str, tag: str | None, **overrides: Any) -> torch.nn.Module:
    import open_clip

    if tag is None:
        return open_clip.create_model(name, force_custom_text=True, pretrained_text=False, **overrides)
    info = open_clip.get_pretrained_cfg(name, tag)
    cache = str(hf_cache_dir()) if info.get("hf_hub") else None
    try:
        return open_clip.create_model(name, pretrained=tag, force_custom_text=True, cache_dir=cache)
    except RuntimeError as exc:
        if info.get("hf_hub"):
            repo = info["hf_hub"].rstrip("/").split("/")
            place = f"the Hugging Face cache {hf_cache_dir() / ('models--' + '--'.join(repo[:2]))}"
        else:
            place = f"open_clip's cache {Path('~/.cache/clip').expanduser()} ({info.get('url')})"
        looked = [place, "the network (skipped: HF_HUB_OFFLINE is set)" if hf_offline()
                  else f"the network ({str(exc).splitlines()[0][:200]})"]
        raise missing_weights_error(f"openclip:{name}", looked, [
            f"run once with network access so open_clip caches tag {tag!r}, or point HF_HOME at a copy of "
            "that cache", "set model.pretrained to the downloaded weights file"]) from None


def _preprocess_from_open_clip(name: str, pp: dict) -> PreprocessSpec:
    size = pp["size"] if isinstance(pp["size"], (tuple, list)) else (pp["size"], pp["size"])
    if pp.get("resize_mode", "shortest") not in ("shortest", "squash") or pp["interpolation"] not in ("bicubic", "bilinear"):
        raise ClipcoreError(f"openclip:{name} preprocesses with resize mode {pp.get('resize_mode')!r} / "
                            f"interpolation {pp['interpolation']!r}, which clipcore's data layer does not offer",
                            where="model.type", fix="use a model preprocessed with shortest-side or squash resizing")
    return PreprocessSpec(height=size[0], width=size[1], mean=tuple(pp["mean"]), std=tuple(pp["std"]),
                          resize_mode=pp.get("resize_mode", "shortest"), interpolation=pp["interpolation"])


# --------------------------------------------------------------------------- shared
def _create(model_cfg: dict, *, scale: float, bias: float | None) -> torch.nn.Module:
    import open_clip

    kwargs = {k: v for k, v in model_cfg.items() if k not in ("custom_text", "init_logit_bias")}
    return open_clip.CustomTextCLIP(**kwargs, init_logit_scale=scale, init_logit_bias=bias)


def _wrap(clip: torch.nn.Module, model_type: str, model_cfg: dict, spec: PreprocessSpec, load: Any,
          canonicalize: bool) -> OpenClipModel:
    text_cfg = model_cfg["text_cfg"]
    tokenizer = OpenClipTokenizer(load, context_length=text_cfg.get("context_length", 77),
                                  pooling=text_cfg.get("pool_type", "argmax"), canonicalize=canonicalize)
    return OpenClipModel(clip.eval(), model_type=model_type, embed_dim=model_cfg["embed_dim"], tokenizer=tokenizer,
                         preprocess=spec)


def _openai_spec(image_size: int) -> PreprocessSpec:
    """TAO's NV-CLIP transform: OpenAI mean/std, shortest-side bicubic resize, centre crop."""
    return PreprocessSpec(height=image_size, width=image_size, mean=OPENAI_MEAN, std=OPENAI_STD,
                          resize_mode="shortest", interpolation="bicubic")


def _hf_tokenizer_from(source: str, text_cfg: dict, **kwargs: Any) -> Any:
    """open_clip's ``HFTokenizer`` over a tokenizer directory or hub id, as the config asks."""
    from open_clip.tokenizer import HFTokenizer

    return HFTokenizer(str(source), context_length=text_cfg["context_length"],
                       tokenizer_mode=text_cfg.get("tokenizer_mode"), **text_cfg.get("tokenizer_kwargs", {}), **kwargs)


@functools.cache
def _clip_bpe(context_length: int) -> Any:
    """open_clip's bundled CLIP BPE tokenizer (stateless; built once per length)."""
    import open_clip

    return open_clip.SimpleTokenizer(context_length=context_length)


@functools.cache
def _tiny_bert_dir() -> tempfile.TemporaryDirectory:
    """The tiny WordPiece tokenizer saved once per process (removed at exit)."""
    directory = tempfile.TemporaryDirectory(prefix="clipcore-tiny-bert-")
    tiny_bert_tokenizer().save_pretrained(directory.name)
    return directory


def _find_hf_tokenizer(model_type: str, text_cfg: dict, places: list) -> Any:
    looked: list[str] = []
    for place in places:
        if place is None:
            continue
        if isinstance(place, Path) and not any((place / f).is_file() for f in TOKENIZER_FILES):
            looked.append(f"{place} (no tokenizer files)")
            continue
        found = load_hf(lambda src, **kw: _hf_tokenizer_from(src, text_cfg, **kw), str(place), looked)
        if found is not None:
            return found
    name = text_cfg["hf_tokenizer_name"]
    raise ClipcoreError(
        f"no {name} tokenizer for {model_type} found; looked in: " + "; ".join(looked), where="model.tokenizer_path",
        fix=f"save the {name} tokenizer (`AutoTokenizer.from_pretrained('{name}').save_pretrained(DIR)` on a "
            f"machine with network access) and set model.tokenizer_path = DIR, or put it in a `tokenizer/` folder "
            f"beside the weights file, or in the Hugging Face cache")


def _custom_text_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as ``CustomTextCLIP`` names them: drop a wrapper prefix before ``visual.``
    (e.g. a Lightning ``model.``), move CLIP-layout text keys under ``text.``, 0-d logit params."""
    from open_clip.model import convert_to_custom_text_state_dict

    anchor = next((k for k in state_dict if k.endswith("visual.conv1.weight") or ".trunk." in k
                   or k.startswith("visual.")), None)
    if anchor is not None:
        prefix = anchor[: anchor.index("visual.")]
        if prefix:
            dropped = [k for k in state_dict if not k.startswith(prefix)]
            if dropped:
                log.info("ignoring %d entries outside %r (e.g. %s)", len(dropped), prefix, dropped[:3])
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    state = convert_to_custom_text_state_dict(dict(state_dict))
    for key in ("logit_scale", "logit_bias"):
        if key in state:
            state[key] = state[key].reshape(())
    return state


def _load_state(clip: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, model_type: str,
                model_cfg: dict) -> None:
    """Load strictly; a file for another architecture gets one message naming the types it fits."""
    expected = clip.state_dict()
    state = dict(state)
    for key in ("logit_scale", "logit_bias"):
        if key in expected:
            if key in state:
                state[key] = state[key].reshape(expected[key].shape)
            else:
                log.info("%s has no %s; keeping the initial value %.4f", path, key, expected[key].item())
                state[key] = expected[key]
    _accept_recomputed_sincos(state, expected, model_cfg)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: file {list(state[k].shape)} vs model {list(expected[k].shape)}"
             for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        fits = _types_fitting(state)
        raise ClipcoreError(
            f"{path} does not fit {model_type}: {len(wrong)} tensors differ in shape (e.g. {wrong[:2]}), "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})",
            where="model.pretrained",
            fix=(f"the file was saved for {' / '.join(fits)}: set model.type accordingly" if fits
                 else "use a checkpoint saved for this model type"))
    clip.load_state_dict(state, strict=True)


def _accept_recomputed_sincos(state: dict, expected: dict, model_cfg: dict) -> None:
    """At another image size the sin-cos table is rebuilt; accept the file's table of its own grid."""
    key = "visual.positional_embedding"
    vision = model_cfg["vision_cfg"]
    if vision.get("pos_embed_type") != "sin_cos_2d" or key not in state or key not in expected:
        return
    if state[key].shape == expected[key].shape:
        return
    from open_clip.pos_embed import get_2d_sincos_pos_embed

    grid = math.isqrt(state[key].shape[0] - 1)
    if grid * grid + 1 == state[key].shape[0] and state[key].shape[1] == expected[key].shape[1]:
        table = torch.from_numpy(get_2d_sincos_pos_embed(state[key].shape[1], grid, cls_token=True)).float()
        if torch.allclose(state[key].float(), table, atol=1e-5):
            state[key] = expected[key]


def _types_fitting(state: dict[str, torch.Tensor]) -> list[str]:
    """clipcore's NV-CLIP types whose towers have the file's widths, depths and grid."""
    def blocks(prefix: str) -> int:
        return len({k.split(".")[3] for k in state if k.startswith(prefix + "transformer.resblocks.")})

    conv = state.get("visual.conv1.weight")
    text_pos = state.get("text.positional_embedding")
    if conv is None or text_pos is None:
        return []
    fits = []
    for name in NVCLIP_TYPES:
        cfg = model_config(name)
        vision, text = cfg["vision_cfg"], cfg["text_cfg"]
        if (vision["width"], vision["layers"], text["width"], text["layers"]) == (
                conv.shape[0], blocks("visual."), text_pos.shape[1], blocks("text.")):
            fits.append(name)
    vision_pos = state.get("visual.positional_embedding")
    narrowing = [
        lambda cfg: vision_pos is not None and vision_pos.shape[0] == (
            cfg["vision_cfg"]["image_size"] // cfg["vision_cfg"]["patch_size"]) ** 2 + 1,
        lambda cfg: cfg["text_cfg"]["context_length"] == text_pos.shape[0],
    ]
    for rule in narrowing:  # the image grid, then the text length, when they tell types apart
        narrower = [name for name in fits if rule(model_config(name))]
        fits = narrower or fits
    return fits
