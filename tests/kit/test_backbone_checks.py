"""The backbone conformance checks: every built-in backbone type passes them at tiny size (through
the kit's umbrella class, as a third-party plugin would run them), and each check catches the
break it exists for."""

from __future__ import annotations

import os

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: threads only add contention

from core.backbone import BackboneFamily, ClipModel
from core.registry import Entry, Provider
from core.testing import PluginConformance
from core.testing import backbone_checks as checks


class TestSiglip2Conformance(PluginConformance):
    plugin = "siglip2"


class TestOpenclipConformance(PluginConformance):
    plugin = "openclip"


# --------------------------------------------------------------------------- the checks catch breaks
def broken(break_name: str):
    """The example plugin's tiny model with one rule of the contract broken."""
    from clipcore_example_backbone.plugin import TinyClip

    model = TinyClip("example-tiny").eval()
    if break_name == "embed_dim":
        model.embed_dim = 16
    elif break_name == "normalize_ignored":
        model.encode_image = lambda images, normalize=False: model.image_features(images)
    elif break_name == "batch_dependent":
        features = model.image_features
        model.image_features = lambda images: features(images) - features(images).mean(0)
    elif break_name == "nondeterministic":
        features = model.text_features
        model.text_features = lambda ids: F.dropout(features(ids), 0.5, training=True)
    elif break_name == "detached_text":
        features = model.text_features
        model.text_features = lambda ids: features(ids).detach()
    elif break_name == "lock_ignored":
        model.lock_image_tower = lambda unlocked_groups=0: None
    elif break_name == "checkpointing_changes_output":
        model.set_grad_checkpointing = lambda enable=True: enable and model.text_tower["proj"].weight.data.mul_(2)
    elif break_name == "unsaved_state":
        model.register_buffer("noise", torch.randn(4), persistent=False)
        features = model.image_features
        model.image_features = lambda images: features(images) + model.noise.sum()
    elif break_name == "variable_length":
        tokenize = model.tokenizer
        model.tokenizer = type("Short", (), {"spec": tokenize.spec, "save_pretrained": tokenize.save_pretrained,
                                             "__call__": lambda self, texts: tokenize(texts)[:, :8]})()
    elif break_name == "wrong_input_size":
        model.preprocess = attrs.evolve(model.preprocess, mean=(0.5, 0.5))
    elif break_name == "vector_logit_scale":
        model.logit_scale = nn.Parameter(torch.zeros(1))
    elif break_name == "no_fsdp_classes":
        model.fsdp_wrap_classes = (nn.Conv3d,)
    elif break_name == "empty_export_refusal":
        model.export_refusal = " "
    elif break_name == "traced_constant":  # a Python float from the data: frozen into the exported graph
        features = model.image_features
        model.image_features = lambda images: features(images) + float(images.mean())
    elif break_name == "spec_pad_id_wrong":
        tokenize = model.tokenizer
        model.tokenizer = type("Lying", (), {"spec": attrs.evolve(tokenize.spec, pad_id=7),
                                             "save_pretrained": tokenize.save_pretrained,
                                             "__call__": lambda self, texts: tokenize(texts)})()
    elif break_name == "checkpointing_flag_only":
        model.set_grad_checkpointing = lambda enable=True: None
    elif break_name == "lora_targets_missing":
        model.lora_targets = {"vision": ("conv_that_is_not_there",), "text": ("fc1",)}
    elif break_name == "forward_dict_only":
        model.forward = lambda image=None, text=None, output_dict=False: ClipModel.forward(model, image, text, True)
    elif break_name == "no_intermediates":
        model.text_intermediates = lambda *a, **k: ClipModel.text_intermediates(model, *a, **k)
    elif break_name == "stop_early_ignored":
        intermediates = model.text_intermediates
        model.text_intermediates = lambda ids, indices, *, stop_early, features: intermediates(
            ids, indices, stop_early=False, features=features)
    elif break_name == "layer_norm_lock_ignored":
        model.lock_text_tower = lambda unlocked_layers=0, freeze_layer_norm=True: ClipModel.lock_text_tower(
            model, unlocked_layers)
    return model


def family_build(break_name: str):
    """The example's real ``build``, or one that ignores ``model.pretrained`` for that break."""
    from clipcore_example_backbone.plugin import TinyClip, build

    if break_name == "pretrained_ignored":
        return lambda cfg: TinyClip(cfg.model.type)
    return build


BREAKS = {
    "embed_dim": (checks.check_output_shapes, "returns float [B, embed_dim]"),
    "normalize_ignored": (checks.check_normalize_gives_unit_vectors, "normalized image features have unit norm"),
    "batch_dependent": (checks.check_single_equals_batched, "alone equals it in a batch"),
    "nondeterministic": (checks.check_eval_is_deterministic, "eval mode is deterministic"),
    "detached_text": (checks.check_gradients_reach_both_towers, "gradients reach every trainable text parameter"),
    "lock_ignored": (checks.check_frozen_towers, "locked vision tower is frozen"),
    "checkpointing_changes_output": (checks.check_grad_checkpointing_matches, "gradient checkpointing keeps"),
    "unsaved_state": (checks.check_state_dict_round_trip, "state-dict round trip is exact"),
    "variable_length": (checks.check_tokenizer_fixed_length, "int64 [N, context_length]"),
    "wrong_input_size": (checks.check_preprocess_matches_input_size, "valid core.backbone.PreprocessSpec"),
    "vector_logit_scale": (checks.check_logit_parameters, "logit_scale is a finite 0-d parameter"),
    "no_fsdp_classes": (checks.check_fsdp_wrap_classes, "present and cover every transformer block"),
    "empty_export_refusal": (checks.check_export_flag, "None or a non-empty reason"),
    "traced_constant": (checks.check_export_matches_runtime, "runtime images embeddings match PyTorch"),
    "spec_pad_id_wrong": (checks.check_tokenizer_reproducible_without_torch, "saved tokenizer directory and TextSpec"),
    "checkpointing_flag_only": (checks.check_grad_checkpointing_recomputes, "recomputes both towers in backward"),
    "pretrained_ignored": (checks.check_build_from_spec, "a missing model.pretrained path raises ClipcoreError"),
    "lora_targets_missing": (checks.check_lora_adapters, "LoRA applies on the model's lora_targets"),
    "forward_dict_only": (checks.check_forward_outputs, "forward returns (image_features, text_features"),
    "stop_early_ignored": (checks.check_forward_intermediates, "stop_early runs no block after the last one taken"),
    "no_intermediates": (checks.check_forward_intermediates, "image_intermediates and text_intermediates are implemented"),
    "layer_norm_lock_ignored": (checks.check_lock_options, "freeze_layer_norm=False keeps only the text LayerNorms"),
}


@pytest.mark.parametrize("break_name", sorted(BREAKS))
def test_each_check_catches_its_break(break_name):
    check, rule = BREAKS[break_name]
    family = BackboneFamily(name="fake", types=("example-tiny",), build=family_build(break_name),
                            tiny=lambda model_type: broken(break_name))
    entry = Entry("backbones", "fake", family, Provider("fake_plugin", "fake-dist", "0.1"))
    with pytest.raises(AssertionError) as err:
        check(entry, "example-tiny")
    assert "backbone plugin 'fake_plugin', type 'example-tiny'" in str(err.value) and rule in str(err.value)


def test_the_unbroken_example_passes_every_check():
    family = BackboneFamily(name="fake", types=("example-tiny",), build=family_build("none"),
                            tiny=lambda model_type: broken("none"))
    entry = Entry("backbones", "fake", family, Provider("fake_plugin", "fake-dist", "0.1"))
    for check in checks.BACKBONE_CHECKS:
        check(entry, "example-tiny")
    assert {check for check, _ in BREAKS.values()} == set(checks.BACKBONE_CHECKS)  # every check has a break


def test_export_refusal_is_honoured_by_registered_exporters():
    """NaFlex refuses export with its reason; every registered exporter passes that reason on."""
    from core.registry import get_registry

    entry = get_registry().entries["backbones"]["siglip2"]
    checks.check_export_flag(entry, "siglip2-so400m-patch16-naflex")
    assert entry.obj.tiny("siglip2-so400m-patch16-naflex").export_refusal
    assert get_registry().entries["exporters"], "no exporter registered: the refusal rule would go untested"
