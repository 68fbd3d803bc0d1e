"""Tiny RADIO-CLIP files written the way NVIDIA and the teachers publish theirs.

- ``write_radio_checkpoint``: a torch-hub ``.pth.tar`` (``args`` Namespace + ``state_dict`` +
  ``state_dict_ema``) with the published key names (``base_model.patch_generator.*``,
  ``base_model.blocks.*`` with LayerScale ``grandma`` and a parametrized weight, ``input_conditioner.*``,
  ``_heads.*``, ``_feature_projections.*``), made from a random tiny timm model;
- ``write_siglip_teacher``: a SigLIP2 model directory (``save_pretrained`` + Gemma-format tokenizer);
- ``write_clip_teacher``: an open_clip ``CLIP`` state dict as ``open_clip_model.safetensors``;
- ``reference_*``: what timm, transformers and open_clip compute from those files on their own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import open_clip
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.naflexvit import checkpoint_filter_fn
from transformers import Siglip2Config, Siglip2Model

from backbones.radio.factory import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, TINY_TRUNK
from backbones.radio.sizes import SIZES
from backbones.siglip2.tokenizer import tiny_gemma_tokenizer

SIGLIP_DIM, CLIP_DIM = 24, 20
TEACHERS = [
    {"name": "siglip2-g", "type": "siglip2"},
    {"name": "dfn_clip", "type": "open_clip", "token_slot": 3},
    {"name": "dino_v2", "type": "dino_v2"},
    {"name": "sam", "type": "sam", "use_summary": False},
]


def random_trunk(model_type: str, seed: int = 0) -> torch.nn.Module:
    """A tiny timm RADIO backbone with random, non-trivial weights and RADIO's bias-free patch embedding."""
    torch.manual_seed(seed)
    trunk = timm.create_model(SIZES[model_type].timm_name, num_classes=0, **TINY_TRUNK).eval()
    with torch.no_grad():
        for name, p in trunk.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
            elif name.startswith("embeds.") and "proj" not in name:
                p.normal_(std=0.5)
        trunk.embeds.proj.bias.zero_()
    return trunk


def random_head(in_dim: int, out_dim: int, *, hidden: int = 40, num_inner: int = 2) -> dict[str, torch.Tensor]:
    """An MLP2 summary head's state dict (published key names)."""
    def linear(prefix, i, o):
        return {f"{prefix}.weight": torch.randn(o, i) / i ** 0.5, f"{prefix}.bias": torch.randn(o) * 0.1}

    def norm(prefix, d):
        return {f"{prefix}.weight": 1 + 0.1 * torch.randn(d), f"{prefix}.bias": 0.1 * torch.randn(d)}

    state = linear("fc1", in_dim, hidden)
    for i in range(num_inner):
        state |= norm(f"blocks.{i}.0", hidden) | linear(f"blocks.{i}.2", hidden, hidden)
    return state | norm("final.0", hidden) | linear("final.2", hidden, out_dim)


def radio_backbone_keys(trunk: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The timm backbone as RADIO stores it (without the ``base_model.`` prefix)."""
    sd = trunk.state_dict()
    dim, patch = sd["embeds.pos_embed"].shape[-1], trunk.embeds.patch_size[0]
    out = {
        "patch_generator.embedder.weight":  # (ph, pw, C) flattening -> RADIO's (C, ph, pw)
            sd["embeds.proj.weight"].reshape(dim, patch, patch, 3).permute(0, 3, 1, 2).flatten(1),
        "patch_generator.pos_embed": sd["embeds.pos_embed"].flatten(1, 2),
        "patch_generator.cls_token.token": torch.cat([sd["embeds.cls_token"][0], sd["embeds.reg_token"][0]]),
    }
    out.update({k: v for k, v in sd.items() if k.startswith("blocks.")})
    return out


def published_state(trunk: torch.nn.Module, heads: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The full ``state_dict`` of a torch-hub checkpoint: backbone, conditioner, heads, feature heads."""
    state = {}
    for key, value in radio_backbone_keys(trunk).items():
        key = key.replace(".gamma", ".grandma")  # LayerScale as some RADIO releases name it
        if key == "blocks.0.attn.qkv.weight":
            key = "blocks.0.attn.qkv.parametrizations.weight.original"  # an identity (DAMP) parametrization
        state["base_model." + key] = value
    dim = trunk.embed_dim
    state["base_model.reg_token"] = torch.zeros(1, 4, dim)  # unused leftover of the timm ViT
    state["input_conditioner.norm_mean"] = torch.tensor(OPENAI_CLIP_MEAN).reshape(3, 1, 1)
    state["input_conditioner.norm_std"] = torch.tensor(OPENAI_CLIP_STD).reshape(3, 1, 1)
    for name, head in heads.items():
        state.update({f"_heads.{name}.{k}": v for k, v in head.items()})
    state.update({f"_feature_projections.0.{k}": v for k, v in random_head(dim, 12).items()})
    return state


def default_heads(dim: int) -> dict[str, dict[str, torch.Tensor]]:
    """Summary heads keyed both ways the releases use: by teacher index and by teacher name."""
    torch.manual_seed(1)
    return {"0": random_head(dim, SIGLIP_DIM), "dfn_clip": random_head(dim, CLIP_DIM, num_inner=1),
            "2": random_head(dim, 32)}


def radio_args(**overrides) -> argparse.Namespace:
    args = dict(model="vit_tiny_patch16_224", model_kwargs={}, cpe_max_size=128, cpe_num_registers=4,
                register_multiple=None, cls_token_per_teacher=True, teachers=TEACHERS, mlp_version="v2",
                spectral_reparam=False, spectral_heads=False, damp=None, dtype="float16", model_norm=False)
    return argparse.Namespace(**{**args, **overrides})


def write_radio_checkpoint(path: Path, trunk: torch.nn.Module, *, heads=None, half: bool = True,
                           state: dict | None = None, training_state: dict | None = None, **args) -> Path:
    """Save as the published ``.pth.tar``: EMA weights under ``state_dict_ema`` and different
    (non-EMA) values under ``state_dict``, fp16 when ``half``; ``training_state`` entries are
    added to both as they are (the releases also hold training-only entries)."""
    state = state if state is not None else published_state(trunk, heads or default_heads(trunk.embed_dim))
    dtype = torch.float16 if half else torch.float32
    ema = {k: v.to(dtype) for k, v in state.items()} | (training_state or {})
    raw = {k: (v + 1).to(dtype) for k, v in state.items()} | (training_state or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"args": radio_args(**args), "state_dict": raw, "state_dict_ema": ema, "epoch": 7}, path)
    return path


def reference_features(path: Path, model_type: str, images: torch.Tensor, *, head: str, slot: int) -> torch.Tensor:
    """timm's own model loaded with timm's own RADIO converter from the file, then the documented
    MLP2 head in plain functional ops on CLS token ``slot``."""
    trunk, ckpt = reference_trunk(path, model_type)
    head_state = {k[len(f"_heads.{head}."):]: v.float() for k, v in ckpt.items() if k.startswith(f"_heads.{head}.")}
    with torch.no_grad():
        return functional_head(head_state, trunk.forward_features(images)[:, slot])


def reference_trunk(path: Path, model_type: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """timm's RADIO backbone loaded from the file by timm's own converter (and the file's EMA state)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, weights_only=True)["state_dict_ema"]
    hf_layout = {}
    for key, value in ckpt.items():
        if key.startswith("base_model."):
            key = key.replace(".parametrizations.weight.original", ".weight")
            hf_layout["radio_model.model." + key[len("base_model."):]] = value.float()
    trunk = timm.create_model(SIZES[model_type].timm_name, num_classes=0, **TINY_TRUNK).eval()
    trunk.load_state_dict(checkpoint_filter_fn(hf_layout, trunk), strict=True)
    return trunk, ckpt


def functional_head(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """MLP2 as documented: fc1, residual [LayerNorm, GELU, Linear] blocks, final [LayerNorm, GELU, Linear]."""
    x = F.linear(x, state["fc1.weight"], state["fc1.bias"])
    hidden = x.shape[-1]
    i = 0
    while f"blocks.{i}.0.weight" in state:
        h = F.layer_norm(x, (hidden,), state[f"blocks.{i}.0.weight"], state[f"blocks.{i}.0.bias"])
        x = x + F.linear(F.gelu(h), state[f"blocks.{i}.2.weight"], state[f"blocks.{i}.2.bias"])
        i += 1
    h = F.layer_norm(x, (hidden,), state["final.0.weight"], state["final.0.bias"])
    return F.linear(F.gelu(h), state["final.2.weight"], state["final.2.bias"])


def write_siglip_teacher(directory: Path, out_dim: int = SIGLIP_DIM) -> Siglip2Model:
    """A tiny SigLIP2 NaFlex checkpoint directory as google/siglip2-* publishes it."""
    torch.manual_seed(2)
    tokenizer = tiny_gemma_tokenizer()
    dims = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = Siglip2Config(text_config={**dims, "vocab_size": len(tokenizer), "max_position_embeddings": 64,
                                        "projection_size": out_dim, "pad_token_id": 0, "eos_token_id": 1,
                                        "bos_token_id": 2},
                           vision_config={**dims, "patch_size": 16, "num_patches": 4})
    model = Siglip2Model(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
        model.logit_bias.fill_(-7.5)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def write_clip_teacher(directory: Path, out_dim: int = CLIP_DIM) -> open_clip.CLIP:
    """A tiny open_clip CLIP (QuickGELU, CLIP BPE vocabulary, 77 tokens) saved as open_clip_model.safetensors."""
    torch.manual_seed(3)
    model = open_clip.CLIP(
        embed_dim=out_dim, quick_gelu=True,
        vision_cfg=open_clip.CLIPVisionCfg(layers=1, width=32, head_width=32, patch_size=16, image_size=32),
        text_cfg=open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=128, heads=2, layers=2)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(4.2)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "open_clip_model.safetensors"))
    return model
