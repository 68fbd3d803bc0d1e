"""SigLIP2 plugin: tiny checkpoints saved the way Google's are published (transformers
``save_pretrained`` + Gemma-format tokenizer + ``preprocessor_config.json``) load through the
plugin and give the reference library's embeddings and token ids; weights are found in local
directories and the HF cache offline; every bad source gets one clear message."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import attrs
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: threads only add contention

from transformers import CLIPConfig, CLIPModel, Siglip2ImageProcessor, Siglip2Model, SiglipImageProcessor, SiglipModel

from backbones.siglip2 import architectures, loading
from backbones.siglip2.architectures import TYPES, hf_config
from backbones.siglip2.tokenizer import tiny_gemma_tokenizer
from core.runtime.checkpoint import model_checkpoint, save_atomic
from core.spec.config import ExperimentConfig
from core.errors import ClipcoreError

FIXED, NAFLEX = "siglip2-so400m-patch16-256", "siglip2-so400m-patch16-naflex"
TEXTS = ["A photo of a CAT, on the red car!", "", "the_dog's   photo", "ünïcödé 東京 🐱",
         " ".join(["photo of a dog"] * 40)]


def make_cfg(model_type: str = FIXED, **model) -> ExperimentConfig:
    cfg = ExperimentConfig()
    return attrs.evolve(cfg, model=attrs.evolve(cfg.model, type=model_type, **model))


def save_published(directory: Path, model_type: str, *, resample: int = 3) -> torch.nn.Module:
    """A tiny random checkpoint written as the hub's SigLIP2 repositories are."""
    torch.manual_seed(0)
    tokenizer = tiny_gemma_tokenizer()
    arch = TYPES[model_type]
    hf = (Siglip2Model if arch.naflex else SiglipModel)(hf_config(arch, tiny=True, vocab_size=len(tokenizer)))
    with torch.no_grad():
        hf.logit_scale.fill_(1.7)
        hf.logit_bias.fill_(-3.3)
    hf.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    processor = Siglip2ImageProcessor(max_num_patches=4) if arch.naflex else SiglipImageProcessor(resample=resample)
    processor.save_pretrained(directory)
    return hf.eval()


@pytest.fixture(scope="module")
def fixed_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("siglip_fixed")
    return directory, save_published(directory, FIXED)


@pytest.fixture(scope="module")
def naflex_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("siglip_naflex")
    return directory, save_published(directory, NAFLEX)


@pytest.fixture
def tiny_architectures(monkeypatch):
    """Random-init builds use the tiny architecture (a full So400m is 1.1B parameters)."""
    vocab = len(tiny_gemma_tokenizer())
    monkeypatch.setattr(loading, "hf_config", lambda arch: hf_config(arch, tiny=True, vocab_size=vocab))


def test_fixed_resolution_matches_transformers(fixed_dir):
    directory, reference = fixed_dir
    model = loading.build(make_cfg(pretrained=str(directory))).eval()
    images = torch.randn(3, 3, 32, 32)
    ids = model.tokenizer(TEXTS)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images), reference.get_image_features(pixel_values=images).pooler_output,
                              atol=1e-5, rtol=0)
        assert torch.allclose(model.encode_text(ids), reference.get_text_features(input_ids=ids).pooler_output,
                              atol=1e-5, rtol=0)
    assert model.logit_scale.item() == pytest.approx(1.7) and model.logit_bias.item() == pytest.approx(-3.3)
    assert model.preprocess.interpolation == "bicubic"  # read from preprocessor_config.json
    assert (model.preprocess.height, model.preprocess.mean, model.preprocess.resize_mode) == (32, (0.5,) * 3, "squash")
    assert model.export_refusal is None


def test_naflex_matches_transformers_processor(naflex_dir):
    directory, reference = naflex_dir
    model = loading.build(make_cfg(NAFLEX, pretrained=str(directory), image_size=32)).eval()
    pixels = torch.randint(0, 256, (2, 3, 32, 64), dtype=torch.uint8)
    inputs = Siglip2ImageProcessor(max_num_patches=8, do_resize=False)(list(pixels), return_tensors="pt")
    normalized = (pixels.float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        expected = reference.get_image_features(**inputs).pooler_output
        assert torch.allclose(model.encode_image(normalized), expected, atol=1e-5, rtol=0)
    assert model.export_refusal and "NaFlex" in model.export_refusal
    assert (model.preprocess.height, model.preprocess.interpolation) == (32, "bilinear")


def test_tokenization_matches_reference_and_big_vision(fixed_dir):
    from open_clip.tokenizer import canonicalize_text as open_clip_canonicalize
    from transformers import AutoTokenizer

    directory, _ = fixed_dir
    model = loading.build(make_cfg(pretrained=str(directory)))
    reference = AutoTokenizer.from_pretrained(directory)
    canonical = [open_clip_canonicalize(t) for t in TEXTS]
    expected = reference(canonical, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    ids = model.tokenizer(TEXTS)
    assert torch.equal(ids, expected["input_ids"])
    assert ids.shape == (len(TEXTS), 64)
    assert ids[-1, -1].item() == reference.eos_token_id  # EOS survives truncation of a >64-token caption
    assert ids[1, 0].item() == reference.eos_token_id and (ids[1, 1:] == reference.pad_token_id).all()

    raw = loading.build(make_cfg(pretrained=str(directory), canonicalize_text=False)).tokenizer
    assert raw.normalize("The_Dog, RUNS!") == "the_dog, runs!"  # lower-cased even without canonicalization
    assert raw.spec.to_dict() == {"context_length": 64, "pad_id": 0, "padding_side": "right", "lowercase": True,
                                  "canonicalize": False, "strip_sep_token": False, "mask_policy": "none",
                                  "pooling": "last"}


def test_saved_tokenizer_reproduces_ids(fixed_dir, tmp_path):
    from tokenizers import Tokenizer

    directory, _ = fixed_dir
    tokenizer = loading.build(make_cfg(pretrained=str(directory))).tokenizer
    tokenizer.save_pretrained(str(tmp_path))
    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    raw.enable_truncation(max_length=64)
    raw.enable_padding(length=64, pad_id=tokenizer.spec.pad_id)
    ids = torch.tensor([e.ids for e in raw.encode_batch([tokenizer.normalize(t) for t in TEXTS])])
    assert torch.equal(ids, tokenizer(TEXTS))


def test_dispatch_follows_checkpoint_config_not_type_name(fixed_dir, naflex_dir):
    fixed = loading.build(make_cfg(NAFLEX, pretrained=str(fixed_dir[0])))
    assert not fixed.naflex and fixed.export_refusal is None
    naflex = loading.build(make_cfg(FIXED, pretrained=str(naflex_dir[0]), image_size=32))
    assert naflex.naflex and naflex.export_refusal


def test_loads_from_hf_cache_offline(fixed_dir, tmp_path, monkeypatch):
    source, _ = fixed_dir
    snapshot = tmp_path / "hub" / "models--google--siglip2-so400m-patch16-256" / "snapshots" / "0123abcd"
    shutil.copytree(source, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = loading.build(make_cfg(pretrained=True))
    assert model.logit_bias.item() == pytest.approx(-3.3)
    assert model.preprocess.interpolation == "bicubic"
    assert model.tokenizer(["a cat"]).shape == (1, 64)


def test_missing_weights_offline_names_model_places_and_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipcoreError) as err:
        loading.build(make_cfg(pretrained=True))
    message = str(err.value)
    for part in (FIXED, str(tmp_path / "hub" / "models--google--siglip2-so400m-patch16-256"),
                 "HF_HUB_OFFLINE is set", "HF_HOME", "huggingface-cli download google/siglip2-so400m-patch16-256",
                 "model.pretrained = \"/path/to/dir\"", "checkpoint", "model.pretrained = false"):
        assert part in message, part

    with pytest.raises(ClipcoreError, match="no such directory"):
        loading.build(make_cfg(pretrained=str(tmp_path / "nowhere" / "model")))


def test_weights_file_inside_a_model_directory_points_at_the_directory(fixed_dir):
    directory, _ = fixed_dir
    with pytest.raises(ClipcoreError, match="weights file of a Hugging Face model directory") as err:
        loading.build(make_cfg(pretrained=str(directory / "model.safetensors")))
    assert f'model.pretrained = "{directory}"' in str(err.value)


def test_random_init_uses_loss_constants_and_overrides(tiny_architectures, fixed_dir):
    from core.registry import get_registry
    from core.runtime.build import with_loss_logit_init

    siglip = get_registry().get("losses", "siglip", key="train.loss_type")
    model = loading.build(with_loss_logit_init(make_cfg(pretrained=False, tokenizer_path=str(fixed_dir[0])), siglip))
    assert model.logit_scale.item() == pytest.approx(torch.log(torch.tensor(10.0)).item())
    assert model.logit_bias.item() == pytest.approx(-10.0)
    assert model.tokenizer(["a photo"]).shape == (1, 64)
    custom = loading.build(make_cfg(pretrained=False, init_logit_scale=2.3, init_logit_bias=-2.71))
    assert (custom.logit_scale.item(), custom.logit_bias.item()) == pytest.approx((2.3, -2.71))


def test_missing_tokenizer_is_reported_when_first_needed(tiny_architectures, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    model = loading.build(make_cfg(pretrained=False))
    assert model.encode_image(torch.randn(1, 3, 32, 32)).shape == (1, 32)  # image-only use needs no vocabulary
    with pytest.raises(ClipcoreError) as err:
        model.tokenizer(["a cat"])
    assert "no Gemma tokenizer for siglip2-so400m-patch16-256" in str(err.value)
    assert "model.tokenizer_path" in str(err.value) and "models--google--siglip2-so400m-patch16-256" in str(err.value)


def test_clipcore_checkpoint_as_pretrained(tiny_architectures, tmp_path):
    source = loading.build(make_cfg(pretrained=False, init_logit_bias=-4.0))
    path = save_atomic(model_checkpoint(source), tmp_path / "ckpt.pth")
    loaded = loading.build(make_cfg(pretrained=str(path)))
    assert loaded.logit_bias.item() == pytest.approx(-4.0)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ClipcoreError, match="saved for model type 'siglip2-so400m-patch16-256'"):
        loading.build(make_cfg("siglip2-so400m-patch14-224", pretrained=str(path)))


def test_foreign_checkpoint_directory_is_refused(tmp_path):
    config = CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "vocab_size": 50},
                        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
                        projection_dim=8)
    CLIPModel(config).save_pretrained(tmp_path)
    with pytest.raises(ClipcoreError, match="holds a 'clip' checkpoint, not SigLIP/SigLIP2"):
        loading.build(make_cfg(pretrained=str(tmp_path)))


def test_naflex_image_size_must_be_a_patch_multiple(naflex_dir):
    with pytest.raises(ClipcoreError, match="not a multiple of the NaFlex patch size 16"):
        loading.build(make_cfg(NAFLEX, pretrained=str(naflex_dir[0]), image_size=250))


def test_fixed_resolution_says_model_image_size_is_ignored(fixed_dir, caplog):
    with caplog.at_level("WARNING", logger="backbones.siglip2.loading"):
        model = loading.build(make_cfg(pretrained=str(fixed_dir[0]), image_size=384))
    assert model.preprocess.height == 32
    assert "model.image_size = 384 is ignored" in caplog.text and "takes 32x32 images" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="backbones.siglip2.loading"):
        loading.build(make_cfg(pretrained=str(fixed_dir[0])))  # the default is not the user's choice
    assert "is ignored" not in caplog.text


def test_wrong_image_size_is_one_clear_error(fixed_dir):
    model = loading.build(make_cfg(pretrained=str(fixed_dir[0])))
    with pytest.raises(ClipcoreError, match="takes 32x32 images, got 64x64"):
        model.encode_image(torch.randn(1, 3, 64, 64))


# Published parameter counts of the transformers checkpoints (safetensors, as listed by the MTEB
# model registry); NaFlex swaps the Conv2d patch embedding for a Linear of the same size.
PUBLISHED_PARAMETERS = {
    "siglip2-so400m-patch14-224": 1_135_463_602,
    "siglip2-so400m-patch14-384": 1_136_008_498,
    "siglip2-so400m-patch16-256": 1_135_670_962,
    "siglip2-so400m-patch16-384": 1_136_039_602,
    "siglip2-so400m-patch16-512": 1_136_555_698,
    "siglip2-so400m-patch16-naflex": 1_135_670_962,
}


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(TYPES))
def test_full_size_architecture_has_published_parameter_count(model_type):
    arch = TYPES[model_type]
    with torch.device("meta"):
        hf = loading.MODEL_CLASSES["siglip2" if arch.naflex else "siglip"](architectures.hf_config(arch))
    assert sum(p.numel() for p in hf.parameters()) == PUBLISHED_PARAMETERS[model_type]


# --------------------------------------------------------------------------- forward_intermediates
def test_intermediates_match_transformers_hidden_states(fixed_dir):
    directory, reference = fixed_dir
    model = loading.build(make_cfg(pretrained=str(directory))).eval()
    images, ids = torch.randn(2, 3, 32, 32), model.tokenizer(TEXTS[:2])
    with torch.no_grad():
        found = model.forward_intermediates(images, ids, image_output_fmt="NLC", normalize=False)
        vision = reference.vision_model(pixel_values=images, output_hidden_states=True)
        text = reference.text_model(input_ids=ids, output_hidden_states=True)
    assert len(found["image_intermediates"]) == len(vision.hidden_states) - 1
    for have, want in zip(found["image_intermediates"] + found["text_intermediates"],
                          vision.hidden_states[1:] + text.hidden_states[1:]):
        assert (have - want).abs().max() <= 1e-5
    assert (found["image_features"] - vision.pooler_output).abs().max() <= 1e-5
    assert (found["text_features"] - text.pooler_output).abs().max() <= 1e-5
    assert "image_intermediates_prefix" not in model.forward_intermediates(images, image_output_extra_tokens=True)


def test_naflex_intermediates_carry_the_patch_mask_and_match_transformers(naflex_dir):
    directory, reference = naflex_dir
    model = loading.build(make_cfg(NAFLEX, pretrained=str(directory), image_size=32)).eval()
    images = torch.randn(2, 3, 32, 64)
    patches, mask, shapes = model.patchify(images)
    with torch.no_grad():
        found = model.forward_intermediates(images, image_indices=[-1], normalize_intermediates=True)
        want = reference.vision_model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes,
                                      output_hidden_states=True)
    (grid,) = found["image_intermediates"]
    assert grid.shape[-2:] == (2, 4) and found["image_intermediates_mask"].all()
    have = grid.flatten(2).transpose(1, 2)
    assert (have - reference.vision_model.post_layernorm(want.hidden_states[-1])).abs().max() <= 1e-5
    assert (found["image_features"] - torch.nn.functional.normalize(want.pooler_output, dim=-1)).abs().max() <= 1e-5
