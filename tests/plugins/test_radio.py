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
from core.spec.config import ExperimentConfig  # noqa: E402
from core.errors import ClipcoreError, ConfigError  # noqa: E402
from tests.plugins import radio_layout as layout  # noqa: E402

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


def test_clip_tokenizer_export_reproduces_ids_without_clipcore(tmp_path):
    from core.preprocess import SidecarTokenizer

    tokenizer = factory.clip_bpe_tokenizer(canonicalize=False)
    assert (tokenizer.spec.context_length, tokenizer.spec.pad_id, tokenizer.spec.pooling) == (77, 0, "eos")
    tokenizer.save_pretrained(str(tmp_path))
    texts = TEXTS + ["wow!! it's 3 o'clock", "tab\tand\nnewline", "<end_of_text> inside"]
    runtime = SidecarTokenizer(tmp_path, tokenizer.spec.to_dict())
    assert (runtime(texts) == tokenizer(texts).numpy()).all()


# --------------------------------------------------------------------------- model contract
@pytest.fixture(scope="module")
def siglip_model(checkpoints, teachers):
    return build_tiny(make_cfg("c-radio_v3-b", "siglip", checkpoints["c-radio_v3-b"], teachers["siglip"][0]))


def test_parameter_groups_and_freezing(siglip_model):
    model = siglip_model
    groups = {k: {n for n, _ in v} for k, v in model.parameter_groups().items()}
    assert "vision_tower.head.fc1.weight" in groups["vision"] and "vision_tower.trunk.embeds.pos_embed" in groups["vision"]
    assert all(n.startswith("vision_tower.") for n in groups["vision"])
    assert groups["text"] and all(n.startswith("text_tower.") for n in groups["text"])
    assert groups["other"] == {"logit_scale", "logit_bias"}
    model.lock_image_tower()
    try:
        assert not any(p.requires_grad for p in model.vision_tower.parameters())
        model.train()
        assert not model.vision_tower.training and model.text_tower.training
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
    assert len(model.vision_blocks()) == TINY_TRUNK["depth"] and len(model.text_blocks()) == 2
    wrap = model.fsdp_wrap_classes
    assert all(any(isinstance(m, cls) for m in model.modules()) for cls in wrap)
    assert wrap[0] is type(model.vision_tower.trunk.blocks[0])


def test_head_shape_and_cls_slot_travel_with_the_state_dict(checkpoints, teachers):
    """A clipcore checkpoint of a loaded model fills a model built without weights (whose default
    head has another hidden width and depth, and another CLS slot) exactly."""
    source = build_tiny(make_cfg("c-radio_v3-h", "clip", checkpoints["c-radio_v3-h"], teachers["clip"][0]))
    target = factory.tiny("c-radio_v3-h", "clip")
    target.vision_tower.head = type(target.vision_tower.head)(TINY_TRUNK["embed_dim"], 8, layout.CLIP_DIM, num_inner=3)
    target.text_tower = source.text_tower.__class__(**{"embed_dim": layout.CLIP_DIM, "context_length": 77,
                                                        "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2,
                                                        "quick_gelu": True})
    # the weights decide whether there is a bias (core.runtime.build gives the built model one exactly when they have it)
    target.logit_bias = None if source.logit_bias is None else torch.nn.Parameter(torch.zeros(()))
    target.load_state_dict(source.state_dict(), strict=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target.eval().encode_image(images), source.encode_image(images))
    assert target.vision_tower.slot.item() == 3 and target.vision_tower.head.num_inner == 1


@pytest.mark.parametrize("adaptor", ["siglip", "clip"])
def test_onnx_export_fixed_size_dynamic_batch(tmp_path, adaptor):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = factory.tiny("c-radio_v3-b", adaptor).eval()

    class Encoder(torch.nn.Module):
        def __init__(self, tower: str):
            super().__init__()
            self.model, self.tower = model, tower

        def forward(self, x):
            return getattr(self.model, f"encode_{self.tower}")(x, normalize=True)

    inputs = {"image": lambda b: torch.randn(b, 3, 32, 48),
              "text": lambda b: model.tokenizer(["a photo of a cat", "", "dog"] * b)[:b]}
    for tower, make in inputs.items():
        path = tmp_path / f"{tower}.onnx"
        encoder = Encoder(tower)
        torch.onnx.export(encoder, (make(2),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch in (1, 3):
            x = make(batch)
            with torch.no_grad():
                want = encoder(x).numpy()
            got = session.run(None, {"x": x.numpy()})[0]
            assert got.shape == want.shape and abs(got - want).max() <= 1e-5, tower


# --------------------------------------------------------------------------- CPE train-time augmentation
def test_cpe_augmentation_is_off_by_default(siglip_model):
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        evaluated = siglip_model.encode_image(images)
        trained = siglip_model.train().encode_image(images)
    siglip_model.eval()
    assert type(siglip_model.vision_tower.trunk.embeds).__name__ == "NaFlexEmbeds"
    assert torch.equal(evaluated, trained)


def test_cpe_augmentation_randomises_positions_in_training_only(checkpoints, teachers, siglip_model):
    from backbones.radio.vision import RandomWindowCPE

    cfg = make_cfg("c-radio_v3-b", "siglip", checkpoints["c-radio_v3-b"], teachers["siglip"][0], cpe_train_augment=True)
    model = build_tiny(cfg)
    embeds = model.vision_tower.trunk.embeds
    assert isinstance(embeds, RandomWindowCPE) and model.state_dict().keys() == siglip_model.state_dict().keys()
    images = torch.randn(4, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), siglip_model.encode_image(images))  # eval: timm's path
        model.train()
        first, second = model.encode_image(images), model.encode_image(images)
    model.eval()
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("align_corners", [True, False])
def test_cpe_full_window_reproduces_eval_positions(align_corners):
    """The augmentation samples windows exactly as eval samples the whole grid (square resize, top-left crop)."""
    from backbones.radio.vision import create_trunk

    trunk = create_trunk(SIZES["c-radio_v3-b"].timm_name, align_corners=align_corners, cpe_train_augment=True,
                         **TINY_TRUNK)
    embeds = trunk.embeds
    for grid in ([2, 3], [5, 4], [12, 12]):
        want = torch.zeros(1, grid[0] * grid[1], TINY_TRUNK["embed_dim"])
        embeds.eval()._apply_learned_pos_embed(want, grid)
        ones, zeros = torch.ones(1), torch.zeros(1)
        got = embeds.window_pos_embed(grid, zeros, zeros, ones, ones)
        assert (got - want).abs().max() <= 1e-5, grid


def test_cpe_drop_zeroes_position_embeddings(monkeypatch):
    from backbones.radio.vision import RandomWindowCPE, create_trunk

    trunk = create_trunk(SIZES["c-radio_v3-b"].timm_name, align_corners=True, cpe_train_augment=True, **TINY_TRUNK)
    monkeypatch.setattr(RandomWindowCPE, "DROP", 1.0)
    x = torch.randn(3, 6, TINY_TRUNK["embed_dim"])
    before = x.clone()
    trunk.embeds.train()._apply_learned_pos_embed(x, [2, 3])
    assert torch.equal(x, before)


# --------------------------------------------------------------------------- offline discovery
def hf_cache_entry(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """Lay files out as the Hugging Face hub cache does (refs/main -> snapshots/<commit>/...)."""
    import shutil

    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0" * 40)
    for name, source in files.items():
        (shutil.copytree if source.is_dir() else shutil.copy)(source, snapshot / name)


def test_pretrained_true_finds_weights_and_teacher_in_hf_cache(tmp_path, monkeypatch, teachers):
    cache = tmp_path / "hub"
    size = SIZES["c-radio_v3-l"]
    ckpt = layout.write_radio_checkpoint(tmp_path / "l.pth.tar", layout.random_trunk("c-radio_v3-l"))
    hf_cache_entry(cache, size.hf_repo, {size.hub_file: ckpt})
    teacher_dir = teachers["siglip"][0]
    hf_cache_entry(cache, size.siglip_text.hf_repo, {p.name: p for p in teacher_dir.iterdir()})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build_tiny(make_cfg("c-radio_v3-l", "siglip", True))
    assert size.hub_file == "c-radio-v3_l_half.pth.tar"  # the published spelling differs from the other sizes
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = layout.reference_features(ckpt, "c-radio_v3-l", images, head="0", slot=0)
        assert (model.encode_image(images) - want).abs().max() <= 1e-5
    assert model.tokenizer(["a cat"]).shape == (1, 64)


@pytest.mark.parametrize("adaptor,repo,needed", [
    ("siglip", "google/siglip2-so400m-patch16-naflex", "config.json, model.safetensors, tokenizer files"),
    ("clip", "apple/DFN5B-CLIP-ViT-H-14-378", "open_clip_model.safetensors or open_clip_pytorch_model.bin")])
def test_missing_text_tower_names_the_teacher_and_where_to_put_it(tmp_path, monkeypatch, checkpoints, adaptor,
                                                                   repo, needed):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipcoreError) as err:
        build_tiny(make_cfg("c-radio_v3-b", adaptor, checkpoints["c-radio_v3-b"]))
    message = str(err.value)
    for part in ("model.radio.text_tower", f"{adaptor!r} adaptor of c-radio_v3-b", repo, needed,
                 f"huggingface-cli download {repo}", "HF_HUB_OFFLINE is set", str(tmp_path / "empty")):
        assert part in message, part


def test_missing_radio_checkpoint_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipcoreError) as err:
        build_tiny(make_cfg("c-radio_v3-g", "siglip", True))
    message = str(err.value)
    for part in ("model.pretrained", "c-radio_v3-g", "huggingface-cli download nvidia/C-RADIOv3-g c-radio_v3-g_half.pth.tar",
                 "model.pretrained = false"):
        assert part in message, part


# --------------------------------------------------------------------------- bad input, one message each
@pytest.mark.parametrize("model_type,adaptor,valid", [
    ("c-radio_v3-b", None, "siglip, siglip2, clip, dfn, dfn_clip"),
    ("c-radio_v3-b", "siglip2-g", "siglip, siglip2, clip, dfn, dfn_clip"),
    ("c-radio_v3-h", "siglip2", "siglip, siglip2-g, clip, dfn, dfn_clip"),
    ("c-radio_v3-g", "openai", "siglip, siglip2, siglip2-g, clip, dfn, dfn_clip")])
def test_missing_or_unsuitable_adaptor_lists_valid_ones(model_type, adaptor, valid):
    with pytest.raises(ConfigError) as err:
        factory.check(make_cfg(model_type, adaptor))
    assert "model.adaptor_name" in str(err.value) and valid in str(err.value) and model_type in str(err.value)


def test_image_size_must_be_a_multiple_of_16():
    cfg = make_cfg()
    cfg.model.image_size = 250
    with pytest.raises(ConfigError, match=r"model.image_size: model.image_size=250 is not a multiple of 16"):
        factory.check(cfg)


def test_clip_adaptor_refuses_a_tokenizer_override():
    cfg = make_cfg(adaptor="clip")
    cfg.model.tokenizer_path = "/some/tokenizer"
    with pytest.raises(ConfigError, match="model.tokenizer_path: the clip adaptor uses the CLIP BPE vocabulary"):
        factory.check(cfg)


def test_plugin_section_with_an_unknown_key():
    from core.spec.load import load_config

    with pytest.raises(ConfigError, match="(?s)text_towr.*did you mean 'text_tower'.*align_corners"):
        load_config(None, ["model.type=c-radio_v3-b", "model.radio.text_towr=/x"])


def save_variant(path: Path, trunk=None, **changes) -> Path:
    """A published-layout checkpoint with keys added (``add``), removed (``drop``) or args changed."""
    trunk = trunk or layout.random_trunk("c-radio_v3-b")
    state = layout.published_state(trunk, layout.default_heads(trunk.embed_dim))
    state.update(changes.pop("add", {}))
    for key in changes.pop("drop", ()):
        del state[key]
    return layout.write_radio_checkpoint(path, trunk, state=state, **changes)


def build_from(path: Path, teachers, model_type="c-radio_v3-b", adaptor="siglip"):
    return build_tiny(make_cfg(model_type, adaptor, path, teachers[adaptor][0]))


def test_unsafe_pickle_is_refused(tmp_path, teachers):
    import pathlib

    path = tmp_path / "evil.pth.tar"
    torch.save({"args": layout.radio_args(), "state_dict": {}, "hook": pathlib.PurePosixPath("/x")}, path)
    with pytest.raises(ClipcoreError, match="model.pretrained: .* needs the Python global `pathlib.PurePosixPath`"):
        build_from(path, teachers)


def training_only_entries() -> dict:
    """Entries the releases hold beside the model (names as third-party loaders report them;
    their shapes are not public), in arbitrary shapes and dtypes."""
    generator = torch.Generator().manual_seed(0)
    return {
        "_loss_states.0.ema_loss": torch.randn(3, 7, generator=generator, dtype=torch.float64),
        "_loss_states.siglip2-g.count": torch.tensor(12345, dtype=torch.int64),
        "_loss_states.2.history.0": torch.randn(0, 5, generator=generator),
        "adaloss": torch.randn(2, 3, 4, generator=generator).to(torch.bfloat16),
        "lean_in_expected_losses": torch.randn(6, generator=generator, dtype=torch.complex64),
        "weight_balance_mask": torch.rand(4, 1, 9, generator=generator) > 0.5,
        "module.adaloss.scale": torch.randint(-128, 127, (5,), generator=generator, dtype=torch.int8),
    }


def test_training_only_entries_and_args_are_logged_and_ignored(tmp_path, teachers, caplog):
    path = layout.write_radio_checkpoint(tmp_path / "release.pth.tar", layout.random_trunk("c-radio_v3-b", seed=0),
                                         training_state=training_only_entries(), lr=3e-4, adaloss_momentum=0.99)
    with caplog.at_level("DEBUG", logger="backbones.radio.weights"):
        model = build_from(path, teachers)
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        want = layout.reference_features(path, "c-radio_v3-b", images, head="0", slot=0)
        assert (model.encode_image(images) - want).abs().max() <= 1e-5
    assert (f"{path}: ignoring 21 state-dict entries the model does not use: _feature_projections (14), "
            "_loss_states (3), adaloss (2), lean_in_expected_losses (1), weight_balance_mask (1)") in caplog.text
    assert "ignoring args fields clipcore does not read: adaloss_momentum," in caplog.text and ", lr," in caplog.text


@pytest.mark.parametrize("key,message", [
    ("base_model.norm.weight", "1 base_model.* keys have no place in the timm C-RADIOv3 model: base_model.norm.weight"),
    ("input_conditioner.norm_scale", "input conditioner has keys ['norm_mean', 'norm_scale', 'norm_std'], "
                                     "expected norm_mean and norm_std"),
    ("_heads.0.fc3.weight", "the summary head of teacher 'siglip2-g' is not an mlp_version v2 head over 64-wide "
                            "tokens: 0 tensors missing (e.g. []), 1 unexpected (e.g. ['fc3.weight'])")])
def test_leftovers_inside_the_model_prefixes_are_refused(tmp_path, teachers, key, message):
    path = save_variant(tmp_path / "c.pth.tar", add={key: torch.ones(64)})
    with pytest.raises(ClipcoreError) as err:
        build_from(path, teachers)
    assert message in str(err.value) and str(err.value).startswith("model.pretrained: ")


def test_head_over_another_width_is_refused(tmp_path, teachers):
    trunk = layout.random_trunk("c-radio_v3-b")
    path = layout.write_radio_checkpoint(tmp_path / "c.pth.tar", trunk, heads={"0": layout.random_head(32, 24)})
    with pytest.raises(ClipcoreError, match=r"not an mlp_version v2 head over 64-wide tokens: .*1 of another shape "
                                            r"\(e.g. \['fc1.weight \(40, 32\) \(model: \(40, 64\)\)'\]\)"):
        build_from(path, teachers)


def test_spectral_norm_buffers_are_refused(tmp_path, teachers):
    path = save_variant(tmp_path / "c.pth.tar", add={"_heads.0.fc1.parametrizations.weight.0._u": torch.zeros(40)})
    with pytest.raises(ClipcoreError, match="spectrally reparametrised.*_heads.0.fc1.parametrizations.weight.0._u"):
        build_from(path, teachers)


def test_checkpoint_of_another_size_is_named(tmp_path, checkpoints, teachers):
    with pytest.raises(ClipcoreError) as err:
        build_from(checkpoints["c-radio_v3-h"], teachers, model_type="c-radio_v3-b")  # H has no LayerScale
    message = str(err.value)
    assert "does not fit c-radio_v3-b" in message and "blocks.0.ls1.gamma" in message
    assert "width 64 and depth 2" in message and "set model.type" in message


def test_adaptor_without_its_teacher_lists_the_teachers(tmp_path, teachers):
    path = save_variant(tmp_path / "c.pth.tar", teachers=[{"name": "siglip2-g", "type": "siglip2"},
                                                          {"name": "dino_v2", "type": "dino_v2"}])
    with pytest.raises(ClipcoreError, match=r"no teacher in args.teachers match the 'clip' adaptor.*dino_v2 \(type dino_v2\)"):
        build_from(path, teachers, adaptor="clip")


def test_teacher_without_head_is_named(tmp_path, teachers):
    path = save_variant(tmp_path / "c.pth.tar", drop=[k for k in layout.published_state(
        layout.random_trunk("c-radio_v3-b"), layout.default_heads(64)) if k.startswith("_heads.0.")])
    with pytest.raises(ClipcoreError, match=r"teacher 'siglip2-g' has no summary head \(_heads.0 or _heads.siglip2-g\)"):
        build_from(path, teachers)


def test_head_and_text_tower_of_different_teachers(tmp_path, teachers):
    other = tmp_path / "other_teacher"
    layout.write_siglip_teacher(other, out_dim=30)
    cfg = make_cfg("c-radio_v3-b", "siglip", save_variant(tmp_path / "c.pth.tar"), other)
    with pytest.raises(ClipcoreError, match="adaptor head outputs 24 dimensions but the text tower .* outputs 30"):
        build_tiny(cfg)


def test_old_mlp_version_is_refused(tmp_path, teachers):
    path = save_variant(tmp_path / "c.pth.tar", mlp_version="v1")
    with pytest.raises(ClipcoreError, match="mlp_version 'v1'; clipcore implements v2"):
        build_from(path, teachers)


def test_hf_backbone_only_safetensors_is_explained(tmp_path, teachers):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ClipcoreError, match="backbone-only export, which has no adaptor heads"):
        build_from(path, teachers)


def test_plain_state_dict_is_not_a_radio_checkpoint(tmp_path, teachers):
    path = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(ClipcoreError, match=r"not a RADIO torch-hub checkpoint \(no `args` \+ `state_dict`"):
        build_from(path, teachers)


def test_missing_checkpoint_file(tmp_path, teachers):
    with pytest.raises(ClipcoreError, match="RADIO checkpoint not found"):
        build_from(tmp_path / "nope.pth.tar", teachers)


# --------------------------------------------------------------------------- full size (slow)
PUBLISHED_TRUNK_PARAMS_M = {"c-radio_v3-b": 98.3, "c-radio_v3-l": 319.9, "c-radio_v3-h": 651.6, "c-radio_v3-g": 1159.6}
TEXT_DIMS = {("c-radio_v3-b", "siglip"): 1152, ("c-radio_v3-l", "siglip"): 1152, ("c-radio_v3-h", "siglip"): 1536,
             ("c-radio_v3-g", "siglip"): 1536}


@pytest.mark.slow
@pytest.mark.parametrize("model_type", list(SIZES))
@pytest.mark.parametrize("adaptor", ["siglip", "clip"])
def test_full_size_builds_offline_with_published_parameter_counts(model_type, adaptor):
    """Every size builds at full size without any file (meta device: shapes only), with timm's
    published backbone size (128x128 position grid included) and the teacher's embedding width."""
    with torch.device("meta"):
        model = factory.build(make_cfg(model_type, adaptor))
    trunk = model.vision_tower.trunk
    assert sum(p.numel() for p in trunk.parameters()) / 1e6 == pytest.approx(PUBLISHED_TRUNK_PARAMS_M[model_type], abs=0.05)
    assert trunk.embeds.pos_embed.shape[1:3] == (128, 128) and trunk.num_prefix_tokens == 8
    assert model.embed_dim == TEXT_DIMS.get((model_type, adaptor), 1024) == model.text_tower.out_dim
    if adaptor == "clip":  # bundled vocabulary (the SigLIP2 one is read from the teacher's files on first use)
        assert model.tokenizer.spec.context_length == 77 and model.text_tower.model.vocab_size == 49408


# --------------------------------------------------------------------------- conformance kit
from core.testing import PluginConformance  # noqa: E402


class TestRadioConformance(PluginConformance):
    """Every type at tiny size with the ``siglip`` adaptor (``family.tiny``), as a third party runs the kit."""

    plugin = "radio"


@pytest.mark.parametrize("check", __import__("core.testing.backbone_checks", fromlist=["x"]).BACKBONE_CHECKS,
                         ids=lambda fn: fn.__name__)
def test_clip_adaptor_passes_the_backbone_checks(check):
    import attrs

    from backbones.radio import FAMILY
    from core.registry import Entry, Provider

    family = attrs.evolve(FAMILY, tiny=lambda model_type: factory.tiny(model_type, "clip"))
    check(Entry("backbones", "radio", family, Provider("radio", "clipcore", "0")), "c-radio_v3-h")


# --------------------------------------------------------------------------- forward_intermediates
def test_intermediates_match_timm_and_the_teachers(checkpoints, teachers):
    path = checkpoints["c-radio_v3-b"]
    siglip = build_tiny(make_cfg("c-radio_v3-b", "siglip2", path, teachers["siglip"][0]))
    images, ids = torch.randn(2, 3, 32, 48), siglip.tokenizer(TEXTS[:2])
    trunk, _ = layout.reference_trunk(path, "c-radio_v3-b")
    with torch.no_grad():
        found = siglip.forward_intermediates(images, ids, image_indices=[0, -1], image_output_extra_tokens=True,
                                             intermediates_only=True)
        want = trunk.forward_intermediates(images, indices=[0, -1], return_prefix_tokens=True, output_fmt="NCHW",
                                           intermediates_only=True, output_dict=True)
        text = teachers["siglip"][1].text_model(input_ids=ids, output_hidden_states=True)
    for key in ("image_intermediates", "image_intermediates_prefix"):
        assert len(found[key]) == 2
        assert all((a - b).abs().max() <= 1e-5 for a, b in zip(found[key], want[key]))
    assert found["image_intermediates"][0].shape[-2:] == (2, 3) and found["image_intermediates_prefix"][0].shape[1] == 8
    assert all((a - b).abs().max() <= 1e-5 for a, b in zip(found["text_intermediates"], text.hidden_states[1:]))

    clip = build_tiny(make_cfg("c-radio_v3-h", "dfn_clip", checkpoints["c-radio_v3-h"], teachers["clip"][0]))
    ids = clip.tokenizer(TEXTS[:2])
    with torch.no_grad():
        found = clip.forward_intermediates(text=ids, text_indices=1)
        want = teachers["clip"][1].forward_intermediates(text=ids, text_indices=1)
    assert (found["text_intermediates"][0] - want["text_intermediates"][0]).abs().max() <= 1e-5
    assert (found["text_features"] - want["text_features"]).abs().max() <= 1e-5
