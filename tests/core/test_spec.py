"""The spec system: loading clip.toml with overrides, every bad-input message, cross-field checks,
get-spec round trips, TAO spec conversion and the three spec commands."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest
import yaml

from core import hookimpl, spec
from core.spec import load as spec_load
from core.spec import rules as spec_rules
from core.backbone import BackboneFamily
from core.cli.main import main
from core.spec.config import ExperimentConfig, at_least
from core.errors import ConfigError
from core.loss import LossSpec
from core.registry import ConfigSection, Provider, load_registry
from deploy import tensorrt
from exporters import onnx
from plugins import custom, wandb_logger, wds
from core.spec.load import action_dir, check, convert_tao_spec, get_spec, load_config

DATA = Path(__file__).parents[1] / "data"
SHARED_EXAMPLES = Path(__file__).parents[2].parent / "shared" / "examples"
TAO_EXAMPLES = ("tao_spec_siglip2.yaml", "tao_spec_radio_clip.yaml")
MODEL_TYPES = ("siglip2-so400m-patch16-256", "c-radio_v3-h", "fake-needs-adaptor")


# --------------------------------------------------------------------------- a fake plugin
@attrs.define(kw_only=True)
class FakeSection:
    window: int = attrs.field(default=4, validator=at_least(1), metadata={"help": "Window size."})
    mode: Literal["fast", "exact"] = attrs.field(default="fast", metadata={"help": "Mode."})


def _needs_adaptor(cfg: ExperimentConfig) -> None:
    if cfg.model.type == "fake-needs-adaptor" and cfg.model.adaptor_name is None:
        raise ConfigError("this model type needs a text adaptor", where="model.adaptor_name",
                          fix='set model.adaptor_name = "siglip"')


def _unused(*args: Any) -> Any:
    raise AssertionError("not called by the spec system")


@hookimpl
def register_backbones(register):
    register(BackboneFamily(name="fake", types=MODEL_TYPES, build=_unused, tiny=_unused,
                            config_sections=(ConfigSection("model.fake", FakeSection),), check=_needs_adaptor))


@hookimpl
def register_losses(register):
    register(LossSpec(name="siglip", build=_unused, init_logit_scale=2.3, init_logit_bias=-10.0))


FAKE_PLUGIN = types.SimpleNamespace(register_backbones=register_backbones, register_losses=register_losses)
#: The built-in plugins whose config sections and rules the spec tests exercise (light to import).
BUILTINS = {"custom": custom, "wds": wds, "onnx": onnx, "tensorrt": tensorrt, "wandb": wandb_logger}


@pytest.fixture(scope="module")
def registry():
    builtins = [(Provider(name, "clipcore", "test"), module) for name, module in BUILTINS.items()]
    return load_registry(plugins=[*builtins, (Provider("fake", "fake-dist", "1.0"), FAKE_PLUGIN)],
                         use_entry_points=False)


@pytest.fixture(scope="module")
def bare_registry():
    return load_registry(use_entry_points=False)


@pytest.fixture
def write(tmp_path):
    def write(text: str, name: str = "clip.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path
    return write


def load(registry, text: str | None = None, overrides=(), tmp: Path | None = None) -> ExperimentConfig:
    path = None
    if text is not None:
        path = tmp / "clip.toml"
        path.write_text(text)
    return load_config(path, overrides, registry=registry)


def error(registry, text: str | None, overrides=(), tmp: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(registry, text, overrides, tmp)
    return info.value.message


# --------------------------------------------------------------------------- loading and precedence
def test_defaults_without_a_file(registry):
    cfg = load_config(None, registry=registry)
    assert attrs.evolve(cfg, plugins={}) == ExperimentConfig()
    assert cfg.plugins == {path: section.cls() for path, section in registry.config_sections().items()}


def test_precedence_cli_over_file_over_defaults(registry, tmp_path):
    cfg = load(registry, "[train]\nnum_epochs = 5\nseed = 7\n", ["train.num_epochs=50"], tmp_path)
    assert cfg.train.num_epochs == 50  # command line beats the file
    assert cfg.train.seed == 7  # the file beats the default
    assert cfg.train.checkpoint_interval == 1  # default


def test_overrides(registry, tmp_path):
    cfg = load(registry, '[[dataset.train.datasets]]\nimage_dir = "/a"\n', [
        "results_dir=/x", "dataset.train.datasets.0.caption_dir=/caps", "dataset.train.datasets.1.image_dir=/d",
        "train.optim.betas=[0.9,0.99]", "train.optim.vision_lr=1e-5", "model.pretrained=false",
        "evaluate.results_dir=2024", "dataset.val.datasets.0.image_dir=/v"], tmp_path)
    assert cfg.results_dir == "/x"
    assert [(d.image_dir, d.caption_dir) for d in cfg.dataset.train.datasets] == [("/a", "/caps"), ("/d", None)]
    assert cfg.train.optim.betas == [0.9, 0.99] and cfg.train.optim.vision_lr == 1e-5
    assert cfg.model.pretrained is False
    assert cfg.evaluate.results_dir == "2024"  # a number given to a string field stays text
    assert cfg.dataset.val.datasets[0].image_dir == "/v"
    assert load(registry, None, ["model.pretrained=hf-org/model"]).model.pretrained == "hf-org/model"
    assert load(registry, '[train]\nkeep_last = 3\n', ["train.keep_last=null"], tmp_path).train.keep_last is None


@pytest.mark.parametrize("override, message", [
    ("train.num_epochs", "an override must be section.key=value"),
    ("train..num_epochs=3", "an override must be section.key=value"),
    ("dataset.train.datasets.2.image_dir=/d", "index 2 is past the end of dataset.train.datasets (0 entries)"),
    ("dataset.train.datasets.x=/d", "dataset.train.datasets is a list: expected an index, got 'x'"),
    ("train.num_epochs.x=3", "train.num_epochs is 10, not a table or list"),
])
def test_bad_override(registry, override, message):
    assert message in error(registry, None, ["train.num_epochs=10", override])


def test_override_errors_name_the_override(registry):
    message = error(registry, None, ["train.num_epoch=5"])
    assert "train.num_epoch (from override 'train.num_epoch=5'): unknown key 'num_epoch'" in message
    assert "did you mean 'num_epochs'?" in message


# --------------------------------------------------------------------------- bad input
def test_missing_spec_file(registry, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml", registry=registry)
    assert "nope.toml: spec file not found" in info.value.message
    assert "core get-spec -o clip.toml" in info.value.message


def test_malformed_toml_names_file_line_and_column(registry, tmp_path):
    message = error(registry, '[train]\nnum_epochs = = 5\n', tmp=tmp_path)
    assert "clip.toml, line 2, column 14: malformed TOML" in message
    assert "2 | num_epochs = = 5" in message


@pytest.mark.parametrize("toml, message", [
    ('[train]\nnum_epochs = "ten"', 'train.num_epochs: expected integer, got "ten" (string)'),
    ("[train]\nnum_epochs = 2.5", "train.num_epochs: expected integer, got 2.5 (number)"),
    ("[train]\nnum_epochs = true", "train.num_epochs: expected integer, got true (boolean)"),
    ('[train.optim]\nvision_lr = "fast"', 'train.optim.vision_lr: expected number, got "fast" (string)'),
    ('[model]\nfreeze_text_encoder = "yes"', 'model.freeze_text_encoder: expected true | false, got "yes"'),
    ("results_dir = 3", "results_dir: expected string, got 3 (integer)"),
    ('[train.optim]\nbetas = "0.9"', 'train.optim.betas: expected list of numbers, got "0.9" (string)'),
    ('[train]\ngpu_ids = [0, "1"]', 'train.gpu_ids.1: expected integer, got "1" (string)'),
    ("train = 5", "train: expected a table ([train]), got 5 (integer)"),
    ("[dataset.train]\ndatasets = 3", "expected a list of tables ([[dataset.train.datasets]]), got 3"),
])
def test_wrong_types(registry, tmp_path, toml, message):
    assert message in error(registry, toml, tmp=tmp_path)


def test_invalid_choice_lists_choices(registry, tmp_path):
    message = error(registry, '[train]\nprecision = "fp8"', tmp=tmp_path)
    assert 'train.precision: "fp8" is not a valid choice' in message
    assert 'valid: "fp32" | "bf16" | "fp16"' in message


def test_unknown_key_did_you_mean_and_valid_keys(registry, tmp_path):
    message = error(registry, "[train]\nnum_epoch = 5", tmp=tmp_path)
    assert "train.num_epoch: unknown key 'num_epoch'" in message
    assert "did you mean 'num_epochs'?" in message
    assert "valid keys of [train]: accum_steps, best_metric," in message


@pytest.mark.parametrize("toml, message", [
    ("num_epochs = 5", "num_epochs belongs under [train]"),
    ("[train]\nvision_lr = 1e-5", "vision_lr belongs under [train.optim]"),
    ("[model]\ninput_height = 224", "input_height belongs under [export]"),
    ("[model]\nbatch_size = 4", "batch_size belongs under [dataset.train], [dataset.val], [dataset.reference], "
                                "[evaluate], [inference], [export], [gen_trt_engine]"),
])
def test_key_at_the_wrong_level_says_where_it_belongs(registry, tmp_path, toml, message):
    assert message in error(registry, toml, tmp=tmp_path)


def test_tao_keys_in_toml_are_explained(registry, tmp_path):
    message = error(registry, "[dataset.augmentation]\ngrayscale_prob = 0.1\n[wandb]\nenable = true",
                    tmp=tmp_path)
    assert "2 problems" in message
    assert "'grayscale_prob' is TAO's old name of 'grayscale'" in message
    assert "wandb is the table [train.wandb]: write its keys under that header" in " ".join(message.split())


@pytest.mark.parametrize("override, valid", [
    ("train.num_epochs=0", ">= 1"),
    ("export.opset_version=10", ">= 11"),
    ("export.input_height=16", ">= 32"),
    ("export.input_width=31", ">= 32"),
    ("dataset.train.batch_size=0", ">= 1"),
    ("dataset.val.batch_size=0", ">= 1"),
    ("evaluate.batch_size=0", ">= 1"),
    ("export.batch_size=0", "-1 (dynamic batch) or >= 1"),
    ("gen_trt_engine.batch_size=-2", "-1 (dynamic batch) or >= 1"),
    ("dataset.augmentation.grayscale=1.5", "a probability in [0, 1]"),
    ("dataset.augmentation.scale=[1.0,0.5]", "an ordered pair [min, max]"),
    ("dataset.augmentation.scale=[0.5]", "an ordered pair [min, max]"),
    ("dataset.augmentation.color_jitter=[0.1,0.2,0.3]", "[] (off), [brightness, contrast, saturation, hue]"),
    ("dataset.augmentation.color_jitter=[1.5,0.2,0.3,0.3,0.1]", "[] (off)"),
    ("train.accum_steps=0", ">= 1"),
    ("train.optim.warmup_steps=-1", ">= 0"),
    ("train.optim.betas=[0.9,1.0]", "[beta1, beta2], each in [0, 1)"),
    ("train.val_check_interval=0", ">= 1"),
    ('gen_trt_engine.tensorrt.layers_precision=["attn:int4"]', 'items "layer_name:fp32"'),
])
def test_out_of_range(registry, override, valid):
    key = override.partition("=")[0]
    message = error(registry, None, [override])
    assert f"{key} (from override {override!r}): " in message and "is out of range" in message
    assert f"valid: {valid}" in message


def test_valid_edge_values_load(registry):
    cfg = load(registry, None, ["export.batch_size=-1", "dataset.augmentation.color_jitter=[]",
                                "dataset.augmentation.color_jitter=[0.3,0.3,0.3,0.1]",
                                "dataset.augmentation.scale=[1,1]", "dataset.augmentation.grayscale=0"])
    assert cfg.dataset.augmentation.scale == [1.0, 1.0]


def test_missing_required_key(registry, tmp_path):
    message = error(registry, '[[dataset.train.datasets]]\ncaption_dir = "/c"', tmp=tmp_path)
    assert "dataset.train.datasets.0.image_dir: required key is missing" in message


def test_every_problem_is_reported_at_once(registry, tmp_path):
    message = error(registry, '[train]\nnum_epochs = 0\n[export]\nencoder_type = "x"\n[model]\nfoo = 1',
                    tmp=tmp_path)
    assert message.startswith(f"{tmp_path / 'clip.toml'}: 3 problems")
    for problem in ("train.num_epochs: 0 is out of range", 'export.encoder_type: "x" is not a valid choice',
                    "model.foo: unknown key"):
        assert f"  - {problem}" in message


# --------------------------------------------------------------------------- plugin sections
def test_plugin_section_is_structured_by_the_plugin(registry, tmp_path):
    cfg = load(registry, '[model]\ntype = "fake-needs-adaptor"\n[model.fake]\nwindow = 8\n', tmp=tmp_path)
    assert cfg.plugins["model.fake"] == FakeSection(window=8)
    assert load(registry, None, ["model.fake.mode=exact"]).plugins["model.fake"].mode == "exact"


@pytest.mark.parametrize("toml, message", [
    ("[model.fake]\nwindw = 8", "model.fake.windw: unknown key 'windw'"),
    ("[model.fake]\nwindw = 8", "did you mean 'window'? valid keys of [model.fake]: mode, window"),
    ("[model.fake]\nwindow = 0", "model.fake.window: 0 is out of range"),
    ('[model.fake]\nmode = "slow"', 'model.fake.mode: "slow" is not a valid choice'),
    ("[model]\nfake = 3", "model.fake: expected a table ([model.fake]), got 3"),
])
def test_plugin_section_errors(registry, tmp_path, toml, message):
    assert message in error(registry, toml, tmp=tmp_path)


def test_undeclared_table_is_an_unknown_key(bare_registry, tmp_path):
    message = error(bare_registry, "[model.fake]\nwindow = 8", tmp=tmp_path)
    assert "model.fake: unknown key 'fake'" in message


# --------------------------------------------------------------------------- cross-field checks
@pytest.fixture
def data_dirs(tmp_path):
    for name in ("train", "val", "infer"):
        (tmp_path / name).mkdir()
    return tmp_path


def runnable(registry, root: Path, *overrides: str) -> ExperimentConfig:
    """A config whose data exists, plus ``overrides``."""
    return load_config(None, [f"dataset.train.datasets.0.image_dir={root / 'train'}",
                              f"dataset.val.datasets.0.image_dir={root / 'val'}",
                              f"inference.datasets.0.image_dir={root / 'infer'}",
                              f"linear_probe.train_dir={root / 'train'}", f"calibrate.val_dir={root / 'val'}",
                              *overrides], registry=registry)


def check_error(registry, cfg, action, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        check(cfg, action, registry, **kw)
    return info.value.message


def test_runnable_config_passes_every_action(registry, data_dirs):
    cfg = runnable(registry, data_dirs, f"gen_trt_engine.onnx_file={data_dirs / 'm.onnx'}")
    (data_dirs / "m.onnx").write_bytes(b"")
    for action in spec.ACTIONS:
        check(cfg, action, registry)


@pytest.mark.parametrize("overrides, action, message", [
    (["train.validation_interval=20"], "train",
     "train.validation_interval: 20 is larger than train.num_epochs (10)"),
    (["train.checkpoint_interval=11"], "train", "train.checkpoint_interval: 11 epochs is larger than"),
    (["model.type=siglip2-so400m-patch16-265"], "train",
     "model.type: unknown model type 'siglip2-so400m-patch16-265'"),
    (["model.type=fake-needs-adaptor"], "inference", "model.adaptor_name: this model type needs a text adaptor"),
    (["train.loss_type=sigclip"], "train", "train.loss_type: unknown loss 'sigclip'"),
    (["dataset.train.type=cutsom"], "train", "dataset.train.type: unknown dataset format 'cutsom'"),
    (["model.vision_unlocked_layers=2"], "train", "only applies when model.freeze_vision_encoder = true"),
    (["dataset.train.type=wds"], "train", "dataset.train.wds: no shards"),
    (["dataset.train.datasets.0.image_dir=/no/such/dir"], "train",
     "dataset.train.datasets.0.image_dir: path /no/such/dir does not exist"),
    (["train.pretrained_model_path=/no/w.pth"], "train", "train.pretrained_model_path: file /no/w.pth does not exist"),
    (["evaluate.checkpoint=/no/c.pth"], "evaluate", "evaluate.checkpoint: file /no/c.pth does not exist"),
    (["inference.text_file=/no/p.txt"], "inference", "inference.text_file: file /no/p.txt does not exist"),
    (["evaluate.classification_dir=/no/classes"], "evaluate",
     "evaluate.classification_dir: folder /no/classes does not exist"),
    (["linear_probe.train_dir=null"], "linear_probe", "linear_probe.train_dir: is unset"),
    (["calibrate.val_dir=null"], "calibrate", "calibrate.val_dir: is unset"),
    (["calibrate.classifier=/no/head.pt"], "calibrate", "calibrate.classifier: file /no/head.pt does not exist"),
    (["export.classifier=/no/head.pt"], "export", "export.classifier: file /no/head.pt does not exist"),
    (["linear_probe.test_dir=/no/test"], "linear_probe", "linear_probe.test_dir: folder /no/test does not exist"),
    (["gen_trt_engine.tensorrt.opt_batch_size=32"], "gen_trt_engine", "min <= opt <= max"),
    ([], "gen_trt_engine", "gen_trt_engine.onnx_file: not set"),
    (["gen_trt_engine.onnx_file=/no/m.onnx"], "gen_trt_engine",
     "/no/m.onnx does not exist (nor do /no/m_vision.onnx, /no/m_text.onnx)"),
])
def test_check_rules(registry, data_dirs, overrides, action, message):
    assert message in check_error(registry, runnable(registry, data_dirs, *overrides), action)


def test_probe_fractions_are_checked_on_load(registry):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["linear_probe.val_fraction=1.5"], registry=registry)
    assert "linear_probe.val_fraction" in info.value.message and "a fraction in (0, 1)" in info.value.message


def test_unknown_model_type_gets_did_you_mean(registry, data_dirs):
    cfg = runnable(registry, data_dirs, "model.type=siglip2-so400m-patch16-265")
    assert "did you mean 'siglip2-so400m-patch16-256'?" in check_error(registry, cfg, "export")


def test_checkpoint_interval_in_steps_may_exceed_epochs(registry, data_dirs):
    check(runnable(registry, data_dirs, "train.checkpoint_interval=500", "train.checkpoint_interval_unit=step"),
          "train", registry)


def test_actions_need_their_data(registry, tmp_path):
    cfg = load_config(None, registry=registry)
    assert "dataset.train.datasets: no training data" in check_error(registry, cfg, "train")
    assert "dataset.val.datasets: evaluate needs validation data" in check_error(registry, cfg, "evaluate")
    check(attrs.evolve(cfg, evaluate=attrs.evolve(cfg.evaluate, classification_dir=str(tmp_path))),
          "evaluate", registry)  # zero-shot classification alone is enough
    assert "inference: nothing to embed" in check_error(registry, cfg, "inference")


def test_one_weight_source(registry, data_dirs):
    (data_dirs / "c.pth").write_bytes(b"")
    (data_dirs / "m.onnx").write_bytes(b"")
    cfg = runnable(registry, data_dirs, f"evaluate.checkpoint={data_dirs / 'c.pth'}",
                   f"evaluate.onnx_file={data_dirs / 'm.onnx'}")
    assert "evaluate.checkpoint and evaluate.onnx_file are all set" in check_error(registry, cfg, "evaluate")


def test_export_refuses_to_overwrite_without_force(registry, data_dirs):
    (data_dirs / "m_vision.onnx").write_bytes(b"")
    cfg = runnable(registry, data_dirs, f"export.onnx_file={data_dirs / 'm.onnx'}", "export.encoder_type=separate")
    assert f"export.onnx_file: {data_dirs / 'm_vision.onnx'} already exists" in check_error(registry, cfg, "export")
    check(attrs.evolve(cfg, export=attrs.evolve(cfg.export, force=True)), "export", registry)


def test_path_checks_can_be_skipped(registry, data_dirs):
    cfg = runnable(registry, data_dirs, "dataset.train.datasets.0.image_dir=/elsewhere")
    assert "path /elsewhere does not exist" in check_error(registry, cfg, "train")
    check(cfg, "train", registry, check_paths=False)


def test_files_made_by_an_earlier_checked_action_need_not_exist(registry, data_dirs):
    cfg = runnable(registry, data_dirs, "evaluate.checkpoint=/results/train/model.pth",
                   "gen_trt_engine.onnx_file=/results/m.onnx")
    check(cfg, ["train", "evaluate", "export", "gen_trt_engine"], registry)
    message = check_error(registry, cfg, ["evaluate", "gen_trt_engine"])
    assert "evaluate.checkpoint: file /results/train/model.pth does not exist" in message
    assert "gen_trt_engine.onnx_file: /results/m.onnx does not exist" in message


def test_unknown_action(registry):
    with pytest.raises(ConfigError, match="unknown action 'fit'"):
        check(ExperimentConfig(), "fit", registry)


def test_action_dir(registry):
    cfg = load_config(None, ["results_dir=/r", "export.results_dir=/elsewhere"], registry=registry)
    assert action_dir(cfg, "train") == Path("/r/train")
    assert action_dir(cfg, "export") == Path("/elsewhere")
    assert action_dir(cfg, "gen_trt_engine") == Path("/r/gen_trt_engine")


# --------------------------------------------------------------------------- get-spec
@pytest.mark.parametrize("action", [None, *spec.ACTIONS])
def test_get_spec_round_trips(registry, tmp_path, action):
    text = get_spec(action, registry=registry)
    path = tmp_path / "clip.toml"
    path.write_text(text)
    assert load_config(path, registry=registry) == load_config(None, registry=registry)
    assert "# Number of epochs (>= 1).\n# valid: integer, >= 1\nnum_epochs = 10\n" in text
    assert '# valid: "fp32" | "bf16" | "fp16"\nprecision = "bf16"' in text
    assert "# val_check_interval = <integer>" in text  # unset: commented out
    assert "# [[dataset.train.datasets]]\n# image_dir = <string>  # required." in text
    assert "[model.fake]\n# Window size.\n# valid: integer, >= 1\nwindow = 4" in text
    if action:
        assert f"`core {action}` reads" in text


def test_get_spec_with_values_round_trips(registry, tmp_path):
    from core.spec.render import render

    cfg = load_config(None, ["dataset.train.datasets.0.image_dir=/d", "dataset.train.datasets.1.image_dir=/e",
                             'train.resume_training_checkpoint_path="quoted \\"path\\""', "model.fake.window=9",
                             "gen_trt_engine.tensorrt.layers_precision=[\"a:fp32\"]"], registry=registry)
    path = tmp_path / "clip.toml"
    path.write_text(render(cfg, {path: section.cls for path, section in registry.config_sections().items()}))
    assert load_config(path, registry=registry) == cfg


# --------------------------------------------------------------------------- convert-spec
def tao_example(name: str) -> Path:
    for folder in (DATA, SHARED_EXAMPLES):
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"{name} is in neither tests/data nor ../shared/examples")


def leaves(node: Any, parts: tuple = ()):
    """(path, value) of every non-null scalar or scalar list in a YAML mapping."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*parts, key))
    elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        for i, value in enumerate(node):
            yield from leaves(value, (*parts, i))
    elif node is not None:
        yield parts, node


def lookup(cfg: ExperimentConfig, parts: tuple) -> Any:
    """The value at ``parts``, reading plugin-owned tables from ``cfg.plugins``."""
    obj: Any = cfg
    for i, part in enumerate(parts):
        path = ".".join(map(str, parts[:i + 1]))
        obj = cfg.plugins[path] if path in cfg.plugins else obj[part] if isinstance(part, int) else getattr(obj, part)
    return obj


@pytest.mark.parametrize("name", TAO_EXAMPLES)
def test_convert_tao_examples_keep_every_value(registry, tmp_path, name):
    source = tao_example(name)
    text = convert_tao_spec(source, registry=registry)
    path = tmp_path / "clip.toml"
    path.write_text(text)
    cfg = load_config(path, registry=registry)
    tao = yaml.safe_load(source.read_text())
    for parts, value in leaves(tao):
        assert lookup(cfg, parts) == value, parts
    check(cfg, spec.TAO_ACTIONS, registry, check_paths=False)


def test_shared_examples_match_the_fixtures():
    for name in TAO_EXAMPLES:
        if not (SHARED_EXAMPLES / name).is_file():
            pytest.skip("../shared/examples is not present")
        assert (SHARED_EXAMPLES / name).read_text() == (DATA / name).read_text()


def test_convert_drops_inert_keys_renames_legacy_ones_and_reads_numbers(registry, tmp_path):
    source = tmp_path / "tao.yaml"
    source.write_text(yaml.safe_dump({
        "encryption_key": "nvidia_tlt", "wandb": {"enable": True, "project": "p"},
        "model": {"type": "c-radio_v3-h", "adaptor_name": "clip", "peft": {"enabled": False}},
        "train": {"num_epochs": None, "triplet_loss_weight": 0.5, "profiler_enabled": True,
                  "optim": {"vision_lr": "1e-5", "warmup_steps": "50"}},
        "dataset": {"augmentation": {"gray_scale_prob": 0.3},
                    "train": {"datasets": [{"image_dir": "/d", "train_pairs_file": "/p.json"}]}},
    }))
    text = convert_tao_spec(source, registry=registry)
    header = text.split("\nresults_dir")[0]
    for dropped in ('encryption_key = "nvidia_tlt": clipcore writes plain checkpoints',
                    "train.triplet_loss_weight = 0.5:", "train.profiler_enabled = true:",
                    'dataset.train.datasets.0.train_pairs_file = "/p.json":'):
        assert dropped in header
    assert "train.num_epochs is null in the TAO spec: clipcore uses its default 10." in header
    assert "train.precision is not set: TAO trained in fp16" in header
    assert "renamed TAO's dataset.augmentation.gray_scale_prob to dataset.augmentation.grayscale" in header
    assert "moved TAO's wandb table to train.wandb and added it to train.loggers" in header
    path = tmp_path / "clip.toml"
    path.write_text(text)
    cfg = load_config(path, registry=registry)
    assert cfg.train.optim.vision_lr == 1e-5 and cfg.train.optim.warmup_steps == 50
    assert cfg.dataset.augmentation.grayscale == 0.3 and cfg.model.adaptor_name == "clip"
    assert cfg.model.peft.enabled is False and "model.peft" not in header  # kept, not dropped
    assert cfg.train.loggers == ["wandb"] and cfg.plugins["train.wandb"].project == "p"


@pytest.mark.parametrize("content, message", [
    ("model:\n  type: [unclosed\n", "tao.yaml, line 3, column 1: malformed YAML"),
    ("- a\n- b\n", "a TAO experiment spec must be a mapping of sections"),
    ("dataset:\n  augmentation:\n    grayscale: 0.2\n    grayscale_prob: 0.5\n",
     "both grayscale_prob (0.5) and grayscale (0.2) are set"),
    ("train:\n  num_epohcs: 3\n", "train.num_epohcs: unknown key 'num_epohcs'"),
])
def test_convert_bad_tao_specs(registry, tmp_path, content, message):
    source = tmp_path / "tao.yaml"
    source.write_text(content)
    with pytest.raises(ConfigError) as info:
        convert_tao_spec(source, registry=registry)
    assert message in info.value.message


def test_convert_missing_file(registry, tmp_path):
    with pytest.raises(ConfigError, match="TAO spec file not found"):
        convert_tao_spec(tmp_path / "none.yaml", registry=registry)


# --------------------------------------------------------------------------- commands
@pytest.fixture
def cli(registry, monkeypatch, capsys):
    monkeypatch.setattr(spec_load, "get_registry", lambda: registry)
    monkeypatch.setattr(spec_rules, "get_registry", lambda: registry)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_get_spec_command_writes_atomically_and_refuses_to_overwrite(cli, tmp_path):
    target = tmp_path / "clip.toml"
    assert cli("get-spec", "--action", "export", "-o", target)[0] == 0
    assert target.read_text().startswith("# clipcore experiment spec for `core export`")
    target.write_text("mine")
    code, _, err = cli("get-spec", "-o", target)
    assert code == 2 and "already exists" in err and "--force" in err and target.read_text() == "mine"
    assert cli("get-spec", "-o", target, "--force")[0] == 0 and target.read_text() != "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.toml"]  # no temporary files left


def test_convert_spec_command(cli, tmp_path):
    code, _, err = cli("convert-spec", tao_example(TAO_EXAMPLES[1]), "-o", tmp_path / "clip.toml")
    assert code == 0 and 'type = "c-radio_v3-h"' in (tmp_path / "clip.toml").read_text()
    assert "Converted from the TAO experiment spec tao_spec_radio_clip.yaml" in err and "wrote " in err
    code, _, err = cli("convert-spec", tmp_path / "missing.yaml")
    assert code == 2 and "TAO spec file not found" in err


def test_validate_command(cli, data_dirs):
    path = data_dirs / "clip.toml"
    path.write_text(f'[[dataset.train.datasets]]\nimage_dir = "{data_dirs / "train"}"\n[train]\nnum_epochs = 2\n')
    code, out, _ = cli("validate", "-c", path)
    assert code == 0 and out.startswith(f"ok: {path}") and "train: checked" in out
    code, _, err = cli("validate", "-c", path, "train.validation_interval=3")
    assert code == 2 and "train.validation_interval: 3 is larger than train.num_epochs (2)" in err
    code, _, err = cli("validate", "-c", path, "--action", "evaluate")
    assert code == 2 and "evaluate needs validation data" in err
    code, _, err = cli("validate", "-c", data_dirs / "missing.toml")
    assert code == 2 and "spec file not found" in err and "Traceback" not in err


def test_example_spec_loads_and_checks(registry):
    example = Path(__file__).parents[2] / "clip.toml.example"
    cfg = load_config(example, registry=registry)
    assert cfg.model.type == "siglip2-so400m-patch16-256" and cfg.dataset.train.datasets[0].image_dir
    check(cfg, spec.TAO_ACTIONS, registry, check_paths=False)
