"""OpenCLIP / NV-CLIP plugin: tiny NV-CLIP checkpoints saved the way TAO writes them (open_clip
``CLIP`` state dict under ``state_dict`` with DDP ``module.`` prefixes, bert-base-uncased tokenizer
files beside it) load through the plugin and give open_clip's own embeddings and token ids;
``openclip:<Name>`` works with tags from the cache, files and random init; bad input gets one
clear message."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import attrs
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: threads only add contention

import open_clip
from open_clip.tokenizer import HFTokenizer

from backbones.openclip import configs, loading
from backbones.openclip.configs import DEMO_TYPE, NVCLIP_TYPES
from backbones.openclip.tokenizer import TINY_BERT_VOCAB
from core.runtime.checkpoint import model_checkpoint, save_atomic
from core.spec.config import ExperimentConfig
from core.errors import ClipcoreError

NV_L, NV_H = "ViT-L-14-SigLIP-CLIPA-224", "ViT-H-14-SigLIP-CLIPA-224"
TEXTS = ["A photo of the RED car!", "", "dog_photo, cats; on-the car", "ünïcödé 東京",
         " ".join(["photo of a cat"] * 40)]


def make_cfg(model_type: str = NV_L, **model) -> ExperimentConfig:
    cfg = ExperimentConfig()
    return attrs.evolve(cfg, model=attrs.evolve(cfg.model, type=model_type, **model))


def tiny_nvclip_config(name: str) -> dict:
    """Tiny NV-CLIP configs; ViT-H ones are wider so the two sizes stay distinguishable."""
    cfg = configs.tiny_config(name, vocab_size=len(TINY_BERT_VOCAB))
    if "-H-" in name:
        cfg["vision_cfg"]["width"] = cfg["text_cfg"]["width"] = 48
    return cfg


@pytest.fixture(autouse=True)
def tiny_nvclip(monkeypatch):
    """The plugin builds NV-CLIP types at tiny size (full ViT-H is ~1B parameters)."""
    monkeypatch.setattr(loading, "model_config",
                        lambda name: tiny_nvclip_config(name) if name in NVCLIP_TYPES else configs.model_config(name))


def save_bert_tokenizer(directory: Path) -> None:
    """A WordPiece vocabulary in bert-base-uncased's published layout (vocab.txt, tokenizer.json,
    tokenizer_config.json), built with the `tokenizers` library."""
    from tokenizers import BertWordPieceTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(TINY_BERT_VOCAB) + "\n", encoding="utf-8")
    BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=True).save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "tokenizer_class": "BertTokenizer", "model_max_length": 512}))


def save_nvclip(directory: Path, name: str) -> torch.nn.Module:
    """A tiny NV-CLIP checkpoint as TAO writes it, with the tokenizer beside it."""
    torch.manual_seed(0)
    reference = open_clip.CLIP(**tiny_nvclip_config(name))
    with torch.no_grad():
        reference.logit_scale.fill_(1.9)
        reference.logit_bias.fill_(-6.5)
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, directory / "nvclip.ckpt")
    save_bert_tokenizer(directory / "tokenizer")
    return reference.eval()


@pytest.fixture
def nvclip_file(tmp_path):
    return tmp_path / "nvclip.ckpt", save_nvclip(tmp_path, NV_L)


def test_nvclip_checkpoint_matches_open_clip(nvclip_file):
    path, reference = nvclip_file
    model = loading.build(make_cfg(pretrained=str(path))).eval()
    assert (model.preprocess.height, model.preprocess.resize_mode, model.preprocess.interpolation) == (28, "shortest", "bicubic")
    assert model.preprocess.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    images = torch.randn(3, 3, 28, 28)
    ids = model.tokenizer(TEXTS)
    expected_ids = HFTokenizer(str(path.parent / "tokenizer"), context_length=77, strip_sep_token=True)(TEXTS)
    assert torch.equal(ids, expected_ids)
    assert ids.shape == (len(TEXTS), 77) and ids[0, 0].item() == TINY_BERT_VOCAB.index("[CLS]")
    assert not (ids == TINY_BERT_VOCAB.index("[SEP]")).any()  # [SEP] stripped, as NV-CLIP training does
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images), reference.encode_image(images), atol=1e-5, rtol=0)
        assert torch.allclose(model.encode_text(ids), reference.encode_text(ids), atol=1e-5, rtol=0)
    assert (model.logit_scale.item(), model.logit_bias.item()) == pytest.approx((1.9, -6.5))
    assert model.tokenizer.spec.to_dict() == {
        "context_length": 77, "pad_id": 0, "padding_side": "right", "lowercase": True, "canonicalize": False,
        "strip_sep_token": True, "mask_policy": "none", "pooling": "last"}


def test_nvclip_directory_and_image_size_from_config(nvclip_file):
    path, reference = nvclip_file
    model = loading.build(make_cfg(pretrained=str(path.parent), image_size=42)).eval()
    assert model.preprocess.height == 42  # the sin-cos table is rebuilt exactly for a 3x3 grid
    with torch.no_grad():
        ids = model.tokenizer(["a photo"])
        assert torch.allclose(model.encode_text(ids), reference.encode_text(ids), atol=1e-5, rtol=0)
        assert model.encode_image(torch.randn(1, 3, 42, 42)).shape == (1, 32)
    native = loading.build(make_cfg(pretrained=str(path), image_size=256))  # 256 is no multiple of 14
    assert native.preprocess.height == 28


def test_text_context_length_follows_the_checkpoint(tmp_path, monkeypatch):
    longer = tiny_nvclip_config(NV_L)
    longer["text_cfg"]["context_length"] = 40
    torch.save(open_clip.CLIP(**longer).state_dict(), tmp_path / "w.pth")
    save_bert_tokenizer(tmp_path / "tokenizer")
    model = loading.build(make_cfg(pretrained=str(tmp_path / "w.pth")))
    assert model.tokenizer(["a cat"]).shape == (1, 40)


def test_checkpoint_for_another_type_names_the_right_one(tmp_path):
    save_nvclip(tmp_path, NV_H)
    with pytest.raises(ClipcoreError) as err:
        loading.build(make_cfg(NV_L, pretrained=str(tmp_path / "nvclip.ckpt")))
    message = str(err.value)
    assert f"does not fit {NV_L}" in message and "differ in shape" in message
    assert f"saved for {NV_H}" in message and "ViT-L" not in message.split("saved for")[1]


def test_tokenizer_missing_names_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    torch.save(open_clip.CLIP(**tiny_nvclip_config(NV_L)).state_dict(), tmp_path / "w.pth")
    model = loading.build(make_cfg(pretrained=str(tmp_path / "w.pth")))
    with pytest.raises(ClipcoreError) as err:
        model.tokenizer(["a cat"])
    message = str(err.value)
    for part in ("no bert-base-uncased tokenizer for ViT-L-14-SigLIP-CLIPA-224", str(tmp_path / "tokenizer"),
                 "models--bert-base-uncased", "model.tokenizer_path", "save_pretrained"):
        assert part in message, part
    save_bert_tokenizer(tmp_path / "bert")
    configured = loading.build(make_cfg(pretrained=str(tmp_path / "w.pth"), tokenizer_path=str(tmp_path / "bert")))
    assert configured.tokenizer(["a cat"]).shape == (1, 77)


def test_pretrained_true_explains_ngc_and_alternatives():
    with pytest.raises(ClipcoreError) as err:
        loading.build(make_cfg(pretrained=True))
    message = str(err.value)
    for part in (NV_L, "NGC", "model.pretrained = \"/path/to/checkpoint.pth\"", "model.pretrained = false",
                 "clipcore checkpoint"):
        assert part in message, part


def test_unpicklable_checkpoint_is_refused(tmp_path):
    torch.save({"state_dict": {}, "hparams": argparse.Namespace(lr=1e-4)}, tmp_path / "lightning.ckpt")
    with pytest.raises(ClipcoreError, match="needs the Python global `argparse.Namespace`") as err:
        loading.build(make_cfg(pretrained=str(tmp_path / "lightning.ckpt")))
    assert str(err.value).startswith("model.pretrained: ") and "weights_only=False" not in str(err.value)


def test_random_init_and_clipcore_checkpoint(tmp_path):
    from core.registry import get_registry
    from core.runtime.build import with_loss_logit_init

    siglip = get_registry().get("losses", "siglip", key="train.loss_type")
    model = loading.build(with_loss_logit_init(make_cfg(pretrained=False, init_logit_bias=-3.0), siglip))
    assert model.logit_scale.item() == pytest.approx(2.302585, abs=1e-5) and model.logit_bias.item() == -3.0
    path = save_atomic(model_checkpoint(model), tmp_path / "ckpt.pth")
    again = loading.build(make_cfg(pretrained=str(path)))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ClipcoreError, match=f"saved for model type '{NV_L}'"):
        loading.build(make_cfg(NV_H, pretrained=str(path)))


def test_demo_tiny_trains_from_scratch_with_bundled_clip_bpe(tmp_path):
    model = loading.build(make_cfg(DEMO_TYPE, pretrained=False))
    reference = open_clip.get_tokenizer(DEMO_TYPE)
    assert torch.equal(model.tokenizer(TEXTS), reference(TEXTS))
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 1e7
    assert (model.preprocess.height, model.tokenizer.spec.pooling) == (64, "eos")
    model.tokenizer.save_pretrained(str(tmp_path))
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tmp_path)
    for text in ("a photo of a cat", "Two DOGS playing in the snow!"):
        ids = hf(text)["input_ids"]
        assert model.tokenizer([text])[0, : len(ids)].tolist() == ids
    with pytest.raises(ClipcoreError, match="has no published weights"):
        loading.build(make_cfg(DEMO_TYPE, pretrained=True))


# --------------------------------------------------------------------------- openclip:<Name>
TEST_MODEL = "clipcore-test-tiny"


@pytest.fixture(scope="module")
def test_model_registered(tmp_path_factory):
    path = tmp_path_factory.mktemp("oc_cfg") / f"{TEST_MODEL}.json"
    path.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                                 "head_width": 16, "patch_size": 16},
                                "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 16, "heads": 2,
                                             "layers": 1}}))
    open_clip.add_model_config(path)
    return TEST_MODEL


def test_openclip_name_with_a_cached_tag(test_model_registered, tmp_path, monkeypatch):
    import huggingface_hub.constants
    from open_clip import pretrained

    torch.manual_seed(1)
    reference = open_clip.create_model(TEST_MODEL).eval()
    snapshot = tmp_path / "hub" / "models--clipcore-test--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    torch.save(reference.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setitem(pretrained._PRETRAINED, TEST_MODEL,
                        {"cctest": pretrained._pcfg(hf_hub="clipcore-test/tiny/", interpolation="bilinear")})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    model = loading.build(make_cfg(f"openclip:{TEST_MODEL}", pretrained="cctest")).eval()
    images, ids = torch.randn(2, 3, 32, 32), model.tokenizer(TEXTS[:2])
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images), reference.encode_image(images), atol=1e-5, rtol=0)
        assert torch.allclose(model.encode_text(ids), reference.encode_text(ids), atol=1e-5, rtol=0)
    assert model.preprocess.interpolation == "bilinear"
    assert model.logit_bias is None  # the weights have none, and only training adds one

    (snapshot / "open_clip_pytorch_model.bin").unlink()
    with pytest.raises(ClipcoreError) as err:
        loading.build(make_cfg(f"openclip:{TEST_MODEL}", pretrained="cctest"))
    assert str(tmp_path / "hub" / "models--clipcore-test--tiny") in str(err.value)
    assert "model.pretrained = false" in str(err.value)


def test_openclip_name_from_file_and_random(test_model_registered, tmp_path):
    torch.manual_seed(2)
    reference = open_clip.create_model(TEST_MODEL).eval()
    torch.save(reference.state_dict(), tmp_path / "weights.pt")
    model = loading.build(make_cfg(f"openclip:{TEST_MODEL}", pretrained=str(tmp_path / "weights.pt"))).eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images), reference.encode_image(images), atol=1e-5, rtol=0)
    assert loading.build(make_cfg(f"openclip:{TEST_MODEL}", pretrained=False)).logit_bias is None
    random = loading.build(make_cfg(f"openclip:{TEST_MODEL}", pretrained=False, init_logit_bias=-10.0))
    assert random.logit_bias.item() == -10.0  # as training with a siglip loss resolves it


def test_openclip_name_errors(test_model_registered):
    with pytest.raises(ClipcoreError, match="did you mean 'openclip:ViT-B-32'"):
        loading.build(make_cfg("openclip:ViT-B-23", pretrained=False))
    with pytest.raises(ClipcoreError, match="model.pretrained = true is ambiguous") as err:
        loading.build(make_cfg("openclip:ViT-B-32", pretrained=True))
    assert "laion2b_s34b_b79k" in str(err.value)
    with pytest.raises(ClipcoreError, match="captioning \\(CoCa\\) model"):
        loading.build(make_cfg("openclip:coca_ViT-B-32", pretrained=False))


# --------------------------------------------------------------------------- full size
@pytest.mark.slow
def test_full_size_nvclip_parameter_counts(monkeypatch):
    """open_clip's model profile lists the CLIPA analogues (L-14 414M, L-14-336 415M, H-14 968M,
    H-14-336 969M); NV-CLIP differs only by a 77- instead of 32-token text table and a logit bias."""
    monkeypatch.undo()
    configs.register_with_open_clip()
    published_millions = {"ViT-L-14-SigLIP-CLIPA-224": 414, "ViT-L-14-SigLIP-CLIPA-336": 415,
                           "ViT-H-14-SigLIP-CLIPA-224": 968, "ViT-H-14-SigLIP-CLIPA-336": 969}
    analogue = {"ViT-L-14-SigLIP-CLIPA-224": "ViT-L-14-CLIPA", "ViT-L-14-SigLIP-CLIPA-336": "ViT-L-14-CLIPA-336",
                "ViT-H-14-SigLIP-CLIPA-224": "ViT-H-14-CLIPA", "ViT-H-14-SigLIP-CLIPA-336": "ViT-H-14-CLIPA-336"}
    for name in NVCLIP_TYPES:
        with torch.device("meta"):
            count = sum(p.numel() for p in open_clip.CustomTextCLIP(**{
                k: v for k, v in configs.model_config(name).items() if k != "init_logit_bias"}, init_logit_bias=-10).parameters())
        if name in published_millions:
            assert round(count / 1e6) == published_millions[name], name
            with torch.device("meta"):
                clipa = sum(p.numel() for p in open_clip.create_model(analogue[name], device="meta").parameters())
            text_width = configs.model_config(name)["text_cfg"]["width"]
            assert count == clipa + (77 - 32) * text_width + 1, name
        assert count > 4e8


@pytest.mark.parametrize("kwargs", [{}, {"image_indices": 1, "text_indices": [0, -1], "image_output_fmt": "NLC",
                                         "image_output_extra_tokens": True, "normalize_intermediates": True},
                                    {"image_indices": [0], "stop_early": True, "intermediates_only": True}])
def test_intermediates_match_open_clip(nvclip_file, kwargs):
    path, reference = nvclip_file
    model = loading.build(make_cfg(pretrained=str(path))).eval()
    images, ids = torch.randn(2, 3, 28, 28), model.tokenizer(TEXTS[:2])
    with torch.no_grad():
        found = model.forward_intermediates(images, ids, output_logit_scale_bias=True, **kwargs)
        want = reference.forward_intermediates(images, ids, output_logit_scale_bias=True, **kwargs)
    assert found.keys() == want.keys()
    for key, value in want.items():
        for have, expected in zip(found[key] if isinstance(value, list) else [found[key]],
                                  value if isinstance(value, list) else [value]):
            assert have.shape == expected.shape and (have - expected).abs().max() <= 1e-5, key
