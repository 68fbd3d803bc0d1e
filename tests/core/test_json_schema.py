"""``core get-spec --format json-schema``: a draft 2020-12 schema generated from the spec's attrs
classes (plugin sections included) that accepts the specs clipcore writes, reads and converts,
rejects each kind of invalid spec the loader rejects, and matches the loader field by field."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import typing
from pathlib import Path

import attrs
import jsonschema
import pytest
import tomli

from core.cli.main import main
from core.errors import ConfigError
from core.spec.json_schema import to_json, type_schema
from core.spec.load import ACTIONS, _plugin_sections, convert_tao_spec, get_json_schema, get_spec, load_config
from core.spec.render import comment_text
from core.spec.schema import choices, default_of, fields_of, fits, is_required, walk_tables

REPO = Path(__file__).resolve().parents[2]
TAO_SPECS = sorted((REPO / "tests" / "data").glob("tao_spec_*.yaml")) + sorted(
    (REPO.parent / "shared" / "examples").glob("tao_spec_*.yaml"))


@pytest.fixture(scope="module")
def schema():
    found = json.loads(get_json_schema())
    jsonschema.Draft202012Validator.check_schema(found)
    return found


def validator(schema):
    return jsonschema.Draft202012Validator(schema)


def repo_specs() -> list[Path]:
    """The spec files in the repository (``clip.toml.example`` and every tracked ``.toml`` but
    package metadata and templates)."""
    listed = subprocess.run(["git", "ls-files", "*.toml", "*.toml.example"], cwd=REPO, capture_output=True,
                            text=True).stdout.split()
    return [REPO / p for p in listed if Path(p).name != "pyproject.toml" and "{" not in (REPO / p).read_text()]


@pytest.fixture(scope="module")
def demo_specs(tmp_path_factory):
    """What ``core demo-data`` and ``core demo`` write: the dataset section and the demo spec."""
    from core.cli.demo import write_spec

    out = tmp_path_factory.mktemp("schema")
    assert main(["demo-data", str(out / "data"), "--n", "8", "--val", "4", "--class-images", "0",
                 "--detection-frames", "0"]) == 0
    return [out / "data" / "dataset.toml", write_spec(out, epochs=2, seed=0)]


def test_the_schema_is_draft_2020_12_with_types_defaults_descriptions_enums_ranges(schema):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    epochs = schema["properties"]["train"]["properties"]["num_epochs"]
    assert epochs["type"] == "integer" and epochs["minimum"] == 1 and "default" in epochs
    assert "Number of epochs" in epochs["description"] or "epoch" in epochs["description"].lower()
    precision = schema["properties"]["train"]["properties"]["precision"]
    assert precision["enum"] == ["fp32", "bf16", "fp16"] and precision["default"] == "bf16"
    entry = schema["properties"]["inference"]["properties"]["datasets"]["items"]
    assert entry["required"] == ["image_dir"] and entry["additionalProperties"] is False
    trt = schema["properties"]["gen_trt_engine"]["properties"]["tensorrt"]  # a plugin section
    assert trt["properties"]["data_type"]["enum"] == ["fp32", "fp16", "int8"]


def test_an_action_schema_puts_its_sections_first(tmp_path, capsys):
    target = tmp_path / "export.schema.json"
    assert main(["get-spec", "--format", "json-schema", "--action", "export", "-o", str(target)]) == 0
    found = json.loads(target.read_text())
    assert list(found["properties"])[:2] == ["model", "export"] and "`core export` reads" in found["description"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # shareable, as a plain open() creates files
    assert main(["get-spec", "--format", "json-schema", "-o", str(target)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("action", [None, *ACTIONS])
def test_the_schema_accepts_every_spec_get_spec_writes(schema, action):
    validator(schema).validate(tomli.loads(get_spec(action)))


@pytest.mark.parametrize("path", repo_specs(), ids=lambda p: str(p.relative_to(REPO)))
def test_the_schema_accepts_the_specs_in_the_repository(schema, path):
    load_config(path)  # the loader's verdict first: a spec the loader refuses is not a valid spec
    validator(schema).validate(tomli.loads(path.read_text()))


@pytest.mark.parametrize("path", TAO_SPECS, ids=lambda p: p.name)
def test_the_schema_accepts_converted_tao_specs(schema, path):
    validator(schema).validate(tomli.loads(convert_tao_spec(path)))


def test_the_schema_accepts_the_demo_specs(schema, demo_specs):
    assert repo_specs(), "the repository's specs are found"
    for spec in demo_specs:
        load_config(spec)
        validator(schema).validate(tomli.loads(spec.read_text()))


INVALID = {
    "an unknown top-level key": (["bogus"], 1),
    "an unknown key in a section": (["train", "num_epoch"], 10),
    "an unknown key in a plugin section": (["gen_trt_engine", "tensorrt", "workspace"], 10),
    "a wrong type": (["train", "num_epochs"], "ten"),
    "a bool for an integer": (["train", "num_epochs"], True),
    "a value outside the enum": (["train", "precision"], "fp8"),
    "a value below the minimum": (["train", "num_epochs"], 0),
    "a pair of the wrong length": (["train", "optim", "betas"], [0.9]),
    "a probability above 1": (["dataset", "train", "augmentation", "grayscale"], 1.5),
    "a bad item of a list": (["gen_trt_engine", "tensorrt", "layers_precision"], ["attn:int4"]),
    "a table entry without its required key": (["inference", "datasets"], [{}]),
    "a prompt template without its slot": (["evaluate", "templates"], ["a photo"]),
    "a prompt template with two slots": (["evaluate", "templates"], ["a {} or a {}"]),
}


@pytest.mark.parametrize("kind", INVALID)
def test_the_schema_rejects_each_invalid_kind_as_the_loader_does(schema, kind, tmp_path):
    import tomli_w

    path, value = INVALID[kind]
    doc = copy.deepcopy(tomli.loads(get_spec()))
    table = doc
    for part in path[:-1]:
        table = table.setdefault(part, {})
    table[path[-1]] = value
    errors = list(validator(schema).iter_errors(doc))
    assert errors, f"the schema accepts {kind}"
    spec = tmp_path / "clip.toml"
    spec.write_text(tomli_w.dumps(doc))
    with pytest.raises(ConfigError):
        load_config(spec)


SAMPLES = [True, 3, 0.5, "text", None, [], [1], ["a"], {}, {"a": 1}]


def enum_of(prop):
    """The enum of a field schema, also inside its ``anyOf`` / ``allOf`` (optional choices)."""
    if "enum" in prop:
        return prop["enum"]
    options = [enum_of(o) for o in prop.get("anyOf", []) + prop.get("allOf", [])]
    return next((o for o in options if o), None)


def test_the_schema_matches_the_loader_field_by_field(schema):
    sections = _plugin_sections(None)
    checked = 0
    for table in walk_tables(sections):
        node = schema
        for part in filter(None, table.path.split(".")):
            node = node["properties"][part]
            node = node["items"] if node.get("type") == "array" else node
        fields = fields_of(table.cls)
        children = {p.rpartition(".")[2] for p in sections if p.rpartition(".")[0] == table.path}
        assert set(node["properties"]) == {f.name for f in fields} | children, table.label
        assert set(node.get("required", [])) == {f.name for f in fields if is_required(f)}, table.label
        for f in fields:
            prop = node["properties"][f.name]
            if attrs.has(f.type) or any(attrs.has(a) for a in typing.get_args(f.type)):
                continue  # tables are compared as tables (the loader's type check sees only their container)
            where = f"{table.path}.{f.name}"
            assert prop.get("description") == comment_text(f), where
            default = default_of(f)
            if default is not attrs.NOTHING and default is not None:
                assert prop["default"] == to_json(default), where
            if choices(f.type):
                assert enum_of(prop) == list(choices(f.type)), where
            rule = getattr(f.validator, "schema", None) or {}
            assert rule.keys() <= prop.keys() or prop.get("allOf", [None, None])[1] == rule, where
            kind = jsonschema.Draft202012Validator(type_schema(f.type, where, sections))
            for sample in SAMPLES:
                assert kind.is_valid(sample) == fits(sample, f.type), f"{where}: {sample!r}"
            checked += 1
    assert checked > 150


def test_plugin_names_are_the_installed_ones(schema, tmp_path, capsys):
    import tomli_w

    from core.registry import get_registry

    train = schema["properties"]["train"]["properties"]["loss_type"]
    assert train["enum"] == sorted(get_registry().entries["losses"]) and "clip" in train["enum"]
    fmt = schema["properties"]["dataset"]["properties"]["val"]["properties"]["type"]
    assert fmt["enum"] == sorted(get_registry().entries["dataset_formats"])
    assert schema["properties"]["model"]["properties"]["type"]["type"] == "string"  # open-ended names stay strings
    doc = tomli.loads(get_spec())
    doc["train"]["loss_type"] = "clipp"
    assert not validator(schema).is_valid(doc)
    spec = tmp_path / "clip.toml"
    spec.write_text(tomli_w.dumps(doc))
    assert main(["validate", "-c", str(spec), "--action", "train", "--skip-path-checks"]) == 2
    assert "train.loss_type" in capsys.readouterr().err
