"""RADIO-CLIP plugin: tiny checkpoints written in NVIDIA's published torch-hub layout (and teacher
text towers in their published formats) load through the plugin and give what timm, transformers
and open_clip compute from the same files; every bad input gets one clear message."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402

from backbones.radio import factory  # noqa: E402
from backbones.radio.config import RadioConfig  # noqa: E402
from backbones.radio.factory import TINY_TRUNK  # noqa: E402
from backbones.radio.sizes import SIZES  # noqa: E402
from core.config import ExperimentConfig  # noqa: E402
from core.errors import ClipcoreError, ConfigError  # noqa: E402
from tests import radio_layout as layout  # noqa: E402

torch.set_num_threads(1)
TEXTS = ["A photo of a CAT, on the red car!", "", "the_dog's   photo", "ünïcödé 東京 🐱", " ".join(["photo of a dog"] * 40)]


def make_cfg(model_type: str = "c-radio_v3-b", adaptor: str | None = "siglip", pretrained=False,
             text_tower: Path | None = None, **radio) -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.model.type, cfg.model.adaptor_name, cfg.model.pretrained = model_type, adaptor, pretrained
    if isinstance(pretrained, Path):
        cfg.model.pretrained = str(pretrained)
    cfg.plugins["model.radio"] = RadioConfig(text_tower=str(text_tower) if text_tower else None, **radio)
    return cfg


def build_tiny(cfg: ExperimentConfig):
    return factory.build(cfg, trunk_arch=TINY_TRUNK).eval()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    return {"siglip": (root / "siglip", layout.write_siglip_teacher(root / "siglip")),
            "clip": (root / "clip", layout.write_clip_teacher(root / "clip"))}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One published-layout .pth.tar per size (LayerScale and align_corners differ by size)."""
    root = tmp_path_factory.mktemp("radio")
    return {t: layout.write_radio_checkpoint(root / f"{t}.pth.tar", layout.random_trunk(t, seed=i))
            for i, t in enumerate(SIZES)}


# --------------------------------------------------------------------------- fidelity
@pytest.mark.parametrize("model_type", list(SIZES))
def test_image_embeddings_match_timm_on_published_layout(model_type, checkpoints, teachers):
    cfg = make_cfg(model_type, "siglip", checkpoints[model_type], teachers["siglip"][0])
    model = build_tiny(cfg)
    images = torch.randn(3, 3, 32, 48)  # non-square: the position grid is resized to 3x3 and cropped to 2x3
    with torch.no_grad():
        ours = model.encode_image(images)
    want = layout.reference_features(checkpoints[model_type], model_type, images, head="0", slot=0)
    assert (ours - want).abs().max() <= 1e-5
    assert ours.dtype == torch.float32 and model.embed_dim == layout.SIGLIP_DIM


def test_siglip_adaptor_matches_transformers_teacher(checkpoints, teachers):
    directory, hf = teachers["siglip"]
    model = build_tiny(make_cfg("c-radio_v3-b", "siglip2", checkpoints["c-radio_v3-b"], directory))
    ids = model.tokenizer(TEXTS)
    assert ids.shape == (len(TEXTS), 64) and (ids[:, -1] != 0).sum() == 1  # EOS kept on the long caption
    with torch.no_grad():
        want = hf.get_text_features(input_ids=ids)
        want = want if torch.is_tensor(want) else want.pooler_output
        assert (model.encode_text(ids) - want).abs().max() <= 1e-5
    assert model.logit_scale.item() == pytest.approx(2.5) and model.logit_bias.item() == pytest.approx(-7.5)
    spec = model.tokenizer.spec
    assert (spec.context_length, spec.padding_side, spec.canonicalize, spec.lowercase) == (64, "right", True, True)


def test_clip_adaptor_matches_open_clip_teacher(checkpoints, teachers):
    directory, reference = teachers["clip"]
    path = checkpoints["c-radio_v3-h"]
    model = build_tiny(make_cfg("c-radio_v3-h", "dfn_clip", path, directory))
    ids = model.tokenizer(TEXTS)
    assert torch.equal(ids, open_clip.get_tokenizer("ViT-H-14-378-quickgelu")(TEXTS))
    images = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        assert (model.encode_text(ids) - reference.encode_text(ids)).abs().max() <= 1e-5
        # head keyed by teacher name, CLS token from the teacher's token_slot (3)
        want = layout.reference_features(path, "c-radio_v3-h", images, head="dfn_clip", slot=3)
        assert (model.encode_image(images) - want).abs().max() <= 1e-5
    assert model.embed_dim == layout.CLIP_DIM and model.vision_tower.slot.item() == 3
    assert model.logit_scale.item() == pytest.approx(4.2)


def test_ema_weights_are_preferred_and_fp16_is_upcast(checkpoints, teachers):
    model = build_tiny(make_cfg("c-radio_v3-b", "siglip", checkpoints["c-radio_v3-b"], teachers["siglip"][0]))
    with torch.serialization.safe_globals([argparse.Namespace]):
        ema = torch.load(checkpoints["c-radio_v3-b"], weights_only=True)["state_dict_ema"]
    got = model.vision_tower.trunk.blocks[1].mlp.fc1.weight
    assert got.dtype == torch.float32 and torch.equal(got, ema["base_model.blocks.1.mlp.fc1.weight"].float())


def test_align_corners_pinned_per_size(checkpoints, teachers):
    """timm: C-RADIOv3 B and H were released with align_corners=True, L and g with False."""
    want = {"c-radio_v3-b": True, "c-radio_v3-l": False, "c-radio_v3-h": True, "c-radio_v3-g": False}
    assert {t: s.align_corners for t, s in SIZES.items()} == want
    tower = teachers["siglip"][0]
    for model_type, value in want.items():
        model = build_tiny(make_cfg(model_type, "siglip", checkpoints[model_type], tower))
        assert model.vision_tower.trunk.embeds.pos_embed_align_corners is value
        overridden = build_tiny(make_cfg(model_type, "siglip", checkpoints[model_type], tower, align_corners=not value))
        assert overridden.vision_tower.trunk.embeds.pos_embed_align_corners is (not value)


def test_align_corners_changes_embeddings(checkpoints, teachers):
    """The pin matters: the other mode moves the embedding of a released-weights model."""
    path, tower = checkpoints["c-radio_v3-l"], teachers["siglip"][0]
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pinned = build_tiny(make_cfg("c-radio_v3-l", "siglip", path, tower)).encode_image(images)
        other = build_tiny(make_cfg("c-radio_v3-l", "siglip", path, tower, align_corners=True)).encode_image(images)
    assert (pinned - other).abs().max() > 1e-3


def test_preprocess_is_openai_clip_shortest_side_bicubic(checkpoints, teachers):
    cfg = make_cfg("c-radio_v3-b", "siglip", checkpoints["c-radio_v3-b"], teachers["siglip"][0])
    cfg.model.image_size = 384
    spec = build_tiny(cfg).preprocess
    assert (spec.height, spec.width, spec.resize_mode, spec.interpolation) == (384, 384, "shortest", "bicubic")
    assert spec.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert spec.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
