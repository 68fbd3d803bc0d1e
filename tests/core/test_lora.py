"""LoRA through peft (``model.peft``): every built-in family adapts (open_clip's fused attention
included) and equals its base model at init, only the adapters and the logit scale / bias train,
merging gives back the base architecture with the adapted function, a LoRA training run's
checkpoint is evaluated and exported merged, and bad settings get one clear message."""

from __future__ import annotations

import pytest
import torch

from core.errors import ClipcoreError, ConfigError
from core.registry import get_registry
from core.runtime.lora import add_adapters, has_adapters, merge_adapters
from core.spec.load import load_config

torch.set_num_threads(1)
TYPES = ["siglip2-so400m-patch14-224", "c-radio_v3-b", "clipcore-demo-tiny", "example-tiny"]


def peft(*overrides: str):
    return load_config(None, ["model.peft.enabled=true", *overrides]).model.peft


def tiny(model_type: str):
    torch.manual_seed(0)
    return get_registry().backbone_for(model_type).tiny(model_type).eval()


def features(model, seed: int = 1):
    torch.manual_seed(seed)
    spec = model.preprocess
    images, ids = torch.randn(2, 3, spec.height, spec.width), model.tokenizer(["a red car", "two dogs"])
    with torch.no_grad():
        return torch.cat([model.encode_image(images), model.encode_text(ids)], dim=1)


@pytest.mark.parametrize("model_type", TYPES)
def test_adapted_model_equals_the_base_at_init_and_merges_back(model_type):
    model = tiny(model_type)
    base, base_keys = features(model), set(model.state_dict())
    add_adapters(model, peft())
    model.eval()
    assert torch.allclose(features(model), base, atol=1e-6)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n in ("logit_scale", "logit_bias") for n in trainable)
    assert any(n.startswith("vision_tower") for n in trainable) and any(n.startswith("text_tower") for n in trainable)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    adapted = features(model)
    assert not torch.allclose(adapted, base, atol=1e-3)  # the adapters take effect
    merge_adapters(model)
    assert not has_adapters(model) and set(model.state_dict()) == base_keys
    assert torch.allclose(features(model), adapted, atol=1e-5)


def test_open_clip_fused_attention_is_adapted_through_its_in_proj_weight():
    model = add_adapters(tiny("clipcore-demo-tiny"), peft("model.peft.text.rank=2"))
    adapted = {n: p for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n}
    fused = {n: p.shape[0] for n, p in adapted.items() if ".attn.lora_A.fused" in n}  # MultiheadAttention's in_proj
    assert fused and {r for n, r in fused.items() if n.startswith("text_tower")} == {2}
    assert {r for n, r in fused.items() if n.startswith("vision_tower")} == {8}
    assert any(".mlp.c_fc.lora_A.vision" in n for n in adapted) and any(".mlp.c_fc.lora_A.text" in n for n in adapted)


def test_only_the_last_blocks_and_chosen_towers_adapt():
    model = add_adapters(tiny("siglip2-so400m-patch14-224"), peft("model.peft.vision.num_last_blocks=1",
                                                                  "model.peft.text.enabled=false"))
    blocks = {name.split(".layers.")[1].split(".")[0] for name, p in model.named_parameters()
              if p.requires_grad and ".lora_" in name}
    last = str(len(model.vision_blocks()) - 1)
    assert blocks == {last}
    assert not any(".lora_" in n for n, _ in model.text_tower.named_parameters())


@pytest.mark.parametrize("overrides, message", [
    (["model.peft.vision.target_modules=[\"qkv_nope\"]"],
     "model.peft.vision.target_modules: LoRA target 'qkv_nope' matches no linear layer"),
    (["model.peft.vision.rank=100000"], "model.peft.vision.rank: LoRA rank 100000 is larger than"),
])
def test_bad_targets_and_ranks_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        add_adapters(tiny("siglip2-so400m-patch14-224"), peft(*overrides))
    assert message in str(err.value)
    if "qkv_nope" in message:
        assert "q_proj" in str(err.value) and "out_proj" in str(err.value)  # the family's module names


def test_the_output_projection_of_multihead_attention_is_refused():
    with pytest.raises(ConfigError, match="output projection of an nn.MultiheadAttention"):
        add_adapters(tiny("clipcore-demo-tiny"), peft("model.peft.text.target_modules=[\"out_proj\"]"))


def test_peft_and_tower_freezing_do_not_mix():
    from core.spec.load import check

    cfg = load_config(None, ["model.type=example-tiny", "model.pretrained=false", "model.peft.enabled=true",
                             "model.freeze_vision_encoder=true", "dataset.train.datasets.0.image_dir=/x"])
    with pytest.raises(ConfigError, match="model.freeze_vision_encoder: does not apply with model.peft.enabled"):
        check(cfg, "train", check_paths=False)


def test_a_lora_run_trains_only_adapters_and_its_checkpoint_evaluates_and_exports_merged(tmp_path, training, exports):
    from core.runtime.build import build_model
    from core.train.trainer import Trainer
    from core.weights import load_checkpoint

    cfg = load_config(None, [*training.overrides(tmp_path, num_epochs=1), "model.peft.enabled=true",
                             "model.peft.vision.rank=4", "model.peft.text.rank=4"])
    trainer = Trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.clip.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.clip.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all(".lora_" in n or n in ("logit_scale", "logit_bias") for n in changed)

    path = tmp_path / "train" / "latest.pth"
    assert any(".lora_" in k for k in load_checkpoint(path)["model"])
    trained = trainer.clip.eval()
    merged = build_model(cfg, str(path), key="evaluate.checkpoint").eval()
    assert not has_adapters(merged)
    assert torch.allclose(features(merged), features(trained), atol=1e-5)

    import onnx

    onnx_file = tmp_path / "m.onnx"
    exporter = get_registry().for_suffix("exporters", onnx_file, key="export.onnx_file")
    exporter.export(merged, exports.config(onnx_file))

    ops = {node.op_type for node in onnx.load(str(onnx_file)).graph.node}
    base_file = tmp_path / "base.onnx"
    exporter.export(tiny("example-tiny"), exports.config(base_file))
    assert ops == {node.op_type for node in onnx.load(str(base_file)).graph.node}  # the base graph's structure
    runner = exporter.open_runner(onnx_file)
    spec = merged.preprocess
    torch.manual_seed(1)
    images = torch.randn(2, 3, spec.height, spec.width)
    with torch.no_grad():
        want = merged.encode_image(images, normalize=True).numpy()
    exports.assert_close(runner.encode_images(images.numpy()), want, atol=1e-5)


def test_a_lora_checkpoint_needs_peft_enabled_to_load(tmp_path, training):
    from core.runtime.build import build_model
    from core.train.trainer import Trainer

    cfg = load_config(None, [*training.overrides(tmp_path, num_epochs=1), "model.peft.enabled=true"])
    Trainer(cfg).train()
    plain = load_config(None, training.overrides(tmp_path))
    with pytest.raises(ConfigError, match="holds LoRA adapters, but model.peft.enabled is false"):
        build_model(plain, str(tmp_path / "train" / "latest.pth"), key="evaluate.checkpoint")


def test_convert_spec_keeps_tao_peft_values(tmp_path):
    import yaml

    from core.spec.load import convert_tao_spec

    source = tmp_path / "tao.yaml"
    source.write_text(yaml.safe_dump({"model": {"type": "siglip2-so400m-patch16-256", "peft": {
        "enabled": True, "method": "lora",
        "vision": {"enabled": True, "target_modules": ["q_proj", "v_proj"], "num_last_blocks": 2, "rank": 4,
                   "alpha": 8, "dropout": 0.1},
        "text": {"enabled": False}}}}))
    out = tmp_path / "clip.toml"
    out.write_text(convert_tao_spec(source))
    got = load_config(out).model.peft
    assert got.enabled and got.method == "lora" and not got.text.enabled
    assert (got.vision.target_modules, got.vision.num_last_blocks, got.vision.rank, got.vision.alpha,
            got.vision.dropout) == (["q_proj", "v_proj"], 2, 4, 8.0, 0.1)


@pytest.fixture
def base_checkpoint(tmp_path, training):
    """A fully trained example-tiny checkpoint: the base weights a LoRA run starts from."""
    from core.train.trainer import Trainer

    Trainer(training.config(tmp_path / "base", num_epochs=1)).train()
    return tmp_path / "base" / "train" / "latest.pth"


def lora_run(training, results, base, *extra: str):
    return load_config(None, [*training.overrides(results, num_epochs=2), "model.peft.enabled=true",
                              f"train.pretrained_model_path={base}", *extra])


def test_checkpoints_of_a_run_with_findable_base_weights_hold_only_the_adapters(tmp_path, training, base_checkpoint):
    from core.runtime.build import build_model
    from core.train.trainer import Trainer
    from core.weights import load_checkpoint

    cfg = lora_run(training, tmp_path / "lora", base_checkpoint)
    trainer = Trainer(cfg)
    trainer.train()
    path = tmp_path / "lora" / "train" / "latest.pth"
    ckpt = load_checkpoint(path)  # weights_only
    assert ckpt["base"] == {"pretrained": False, "pretrained_model_path": str(base_checkpoint)}
    assert ckpt["model"] and all(".lora_" in k or k in ("logit_scale", "logit_bias") for k in ckpt["model"])
    assert path.stat().st_size < base_checkpoint.stat().st_size / 2
    merged = build_model(cfg, str(path), key="evaluate.checkpoint").eval()
    assert not has_adapters(merged)
    assert torch.allclose(features(merged), features(trainer.clip.eval()), atol=1e-5)

    resumed = Trainer(lora_run(training, tmp_path / "lora", base_checkpoint, "train.num_epochs=3",
                               "train.resume_training_checkpoint_path=auto"))
    assert resumed.step == trainer.step
    assert all(torch.equal(resumed.clip.state_dict()[k], v) for k, v in trainer.clip.state_dict().items())

    base_checkpoint.rename(base_checkpoint.with_name("moved.pth"))
    with pytest.raises(ClipcoreError) as err:
        build_model(cfg, str(path), key="evaluate.checkpoint")
    assert "the base weights of the LoRA checkpoint" in str(err.value) and "moved" not in str(err.value)


def test_a_lora_run_resumes_exactly(tmp_path, training, base_checkpoint):
    from core.train.trainer import Trainer

    every_step = ["train.checkpoint_interval_unit=step", "train.checkpoint_interval=1"]
    straight = Trainer(lora_run(training, tmp_path / "straight", base_checkpoint, *every_step))
    straight.train()
    middle = tmp_path / "straight" / "train" / "step_3.pth"  # mid-epoch: 4 steps per epoch
    resumed = Trainer(lora_run(training, tmp_path / "resumed", base_checkpoint, *every_step,
                               f"train.resume_training_checkpoint_path={middle}"))
    assert resumed.step == 3
    resumed.train()
    want, have = straight.clip.state_dict(), resumed.clip.state_dict()
    assert want.keys() == have.keys() and all(torch.equal(want[k], have[k]) for k in want)


def test_lora_with_gradient_checkpointing_accumulation_and_bf16(tmp_path, training):
    """Checkpointing leaves a LoRA run unchanged; exact accumulation of 2 × 8 equals batches of 16;
    bf16 trains the adapters."""
    from core.train.trainer import Trainer

    def run(name: str, *extra: str):
        cfg = load_config(None, [*training.overrides(tmp_path / name, num_epochs=1), "model.peft.enabled=true",
                                 "model.peft.vision.dropout=0", "model.peft.text.dropout=0", *extra])
        trainer = Trainer(cfg)
        trainer.train()
        return trainer.clip.state_dict()

    plain = run("plain")
    for name, extra in (("checkpointed", ["train.grad_checkpointing=true"]),
                        ("accumulated", ["train.accum_steps=2", "dataset.train.batch_size=8"])):
        other = run(name, *extra)
        worst = max((plain[k].float() - other[k].float()).abs().max().item() for k in plain)
        assert worst < 1e-5, (name, worst)
    bf16 = run("bf16", "train.precision=bf16")
    assert all(bf16[k].abs().sum() > 0 for k in bf16 if ".lora_B" in k)  # B starts at zero: the adapters trained


def test_dora_adapts_module_targets_and_merges_back():
    model = tiny("siglip2-so400m-patch14-224")
    base, keys = features(model), set(model.state_dict())
    add_adapters(model, peft("model.peft.method=dora"))
    model.eval()
    assert torch.allclose(features(model), base, atol=1e-5)
    assert any("lora_magnitude_vector" in n for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    adapted = features(model)
    merge_adapters(model)
    assert set(model.state_dict()) == keys and torch.allclose(features(model), adapted, atol=1e-4)
