"""Plugin discovery and registration: every bad input gives one clear message."""

import pytest

from core.cli.main import main
from core.errors import PluginError
from core.registry import ENV_ALLOW, ENV_BLOCK, load_registry

#: A family built on the example plugin's model, for registration tests.
TINY_BACKBONE = """
from core import BackboneFamily, hookimpl
from clipcore_example_backbone.plugin import tiny, build

@hookimpl
def register_backbones(register):
    register(BackboneFamily(name={family!r}, types={types!r}, build=build, tiny=tiny,
                            description="a fake family"))
"""


def test_builtin_and_example_plugins_are_discovered_with_versions():
    registry = load_registry()
    providers = {p.plugin: p for p in registry.plugins}
    assert providers["example_backbone"].distribution == "clipcore-example-backbone"
    assert providers["example_backbone"].version == "0.3.0"
    assert registry.backbone_for("example-tiny").name == "example"


def test_plugin_failing_at_import_is_reported_and_others_still_load(tmp_path, monkeypatch, distribution):
    distribution(tmp_path, "broken-plugin", "2.0", {"broken": "raise RuntimeError('boom in plugin')\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_registry()
    [failure] = [f for f in registry.failures if f.plugin == "broken"]
    assert failure.distribution == "broken-plugin"
    assert "RuntimeError: boom in plugin" in failure.error
    assert "example-tiny" in registry.model_types()


def test_hook_that_raises_is_reported_by_plugin_name(fake_plugin):
    bad = fake_plugin("raiser", """
        from core import hookimpl
        @hookimpl
        def register_losses(register):
            raise ValueError("cannot register")
    """)
    registry = load_registry(plugins=[bad], use_entry_points=False)
    [failure] = registry.failures
    assert failure.plugin == "raiser"
    assert "register_losses raised ValueError: cannot register" in failure.error


def test_misspelled_hook_is_reported(fake_plugin):
    bad = fake_plugin("typo", """
        from core import hookimpl
        @hookimpl
        def register_backbone(register):
            pass
    """)
    registry = load_registry(plugins=[bad], use_entry_points=False)
    [failure] = registry.failures
    assert "register_backbone" in failure.error and "valid hooks: register_backbones" in failure.error


def test_hook_with_wrong_arguments_is_reported(fake_plugin):
    bad = fake_plugin("badargs", """
        from core import hookimpl
        @hookimpl
        def register_backbones(register, extra):
            pass
    """)
    [failure] = load_registry(plugins=[bad], use_entry_points=False).failures
    assert failure.plugin == "badargs" and "extra" in failure.error


def test_the_second_plugin_registering_a_taken_name_fails_naming_both(fake_plugin):
    one = fake_plugin("one", TINY_BACKBONE.format(family="dup", types=("t-a",)))
    two = fake_plugin("two", TINY_BACKBONE.format(family="dup", types=("t-b",)), version="3.1")
    registry = load_registry(plugins=[one, two], use_entry_points=False)
    [failure] = registry.failures
    assert failure.plugin == "two"
    assert "backbone family 'dup' is registered twice" in failure.error
    assert "'one' (fake-one 1.0)" in failure.error and "'two' (fake-two 3.1)" in failure.error
    assert f"{ENV_BLOCK}=two" in failure.error
    assert [p.plugin for p in registry.plugins] == ["one"] and registry.model_types() == ["t-a"]


def test_two_families_claiming_one_model_type_fails_the_second(fake_plugin):
    one = fake_plugin("one", TINY_BACKBONE.format(family="a", types=("shared-type",)))
    two = fake_plugin("two", TINY_BACKBONE.format(family="b", types=("shared-type",)))
    [failure] = load_registry(plugins=[one, two], use_entry_points=False).failures
    assert failure.plugin == "two"
    assert "model type 'shared-type' is registered twice: by plugin 'one'" in failure.error


def test_a_third_party_plugin_taking_a_builtin_name_fails_and_the_builtin_keeps_working(tmp_path, monkeypatch, distribution):
    # "aaa" sorts before every built-in entry point, so it is discovered first and must still lose.
    distribution(tmp_path, "squatter", "0.9", {
        "aaa": TINY_BACKBONE.format(family="openclip", types=("clipcore-demo-tiny",))})
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_registry()
    [failure] = [f for f in registry.failures if f.plugin == "aaa"]
    assert failure.distribution == "squatter"
    assert "backbone family 'openclip' is registered twice" in failure.error
    assert "(clipcore " in failure.error and "(squatter 0.9)" in failure.error
    assert f"{ENV_BLOCK}=aaa" in failure.error and f"{ENV_BLOCK}=openclip" not in failure.error
    assert registry.entries["backbones"]["openclip"].provider.distribution == "clipcore"
    assert registry.backbone_for("clipcore-demo-tiny").name == "openclip"


@pytest.mark.parametrize("raise_it", ["raise SystemExit(3)", "raise GeneratorExit('odd')"])
def test_a_plugin_raising_a_base_exception_at_import_is_reported_like_any_failure(tmp_path, monkeypatch, raise_it,
                                                                                   capsys, distribution):
    distribution(tmp_path, "exiting-plugin", "1.0", {"exiter": raise_it + "\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("core.cli.plugins.get_registry", load_registry)
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "failed to load" in out and "exiter" in out and "import failed" in out


def test_a_hook_function_without_hookimpl_is_reported(fake_plugin):
    bad = fake_plugin("undecorated", """
        def register_losses(register):
            pass
    """)
    registry = load_registry(plugins=[bad], use_entry_points=False)
    [failure] = registry.failures
    assert failure.plugin == "undecorated"
    assert "register_losses is not marked as a hook implementation" in failure.error
    assert "@hookimpl" in failure.error


def test_registering_the_wrong_object_names_the_expected_class(fake_plugin):
    bad = fake_plugin("wrongtype", """
        from core import hookimpl
        @hookimpl
        def register_losses(register):
            register({"name": "x"})
    """)
    [failure] = load_registry(plugins=[bad], use_entry_points=False).failures
    assert failure.plugin == "wrongtype"
    assert "plugin 'wrongtype': register_losses received dict, expected core.loss.LossSpec" in failure.error


def test_empty_entry_point_group_fails_with_the_install_command(monkeypatch):
    monkeypatch.setattr("core.registry.metadata.entry_points", lambda group: [])
    with pytest.raises(PluginError) as err:
        load_registry()
    assert "no clipcore plugins are installed" in str(err.value)
    assert "pip install -e ." in str(err.value)


def test_allow_list_and_block_list(monkeypatch):
    monkeypatch.setenv(ENV_ALLOW, "example_backbone")
    assert [p.plugin for p in load_registry().plugins] == ["example_backbone"]
    monkeypatch.delenv(ENV_ALLOW)
    monkeypatch.setenv(ENV_BLOCK, "example_backbone")
    assert "example_backbone" not in [p.plugin for p in load_registry().plugins]


def test_unknown_model_type_suggests_the_closest():
    registry = load_registry()
    with pytest.raises(PluginError) as err:
        registry.backbone_for("example-tiyn")
    assert "model.type: unknown model type 'example-tiyn'" in str(err.value)
    assert "did you mean 'example-tiny'?" in str(err.value)


def test_open_ended_family_matches(fake_plugin):
    plugin = fake_plugin("openended", """
        from core import BackboneFamily, hookimpl
        from clipcore_example_backbone.plugin import tiny, build
        @hookimpl
        def register_backbones(register):
            register(BackboneFamily(name="any", types=("any-base",), build=build, tiny=tiny,
                                    matches=lambda t: t.startswith("any:")))
    """)
    registry = load_registry(plugins=[plugin], use_entry_points=False)
    assert registry.backbone_for("any:whatever").name == "any"


def test_cli_reports_a_plugin_collision_and_keeps_working(tmp_path, monkeypatch, capsys, distribution):
    distribution(tmp_path, "clash-plugin", "0.1", {
        "clash": TINY_BACKBONE.format(family="example", types=("clash-type",))})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("core.cli.plugins.get_registry", load_registry)
    assert main(["plugins"]) == 0
    captured = capsys.readouterr()
    assert "backbone family 'example' is registered twice" in captured.out
    assert "Traceback" not in captured.out + captured.err


def test_core_plugins_lists_the_example_plugin(capsys):
    assert main(["plugins", "--json"]) == 0
    import json

    listing = json.loads(capsys.readouterr().out)
    [example] = [p for p in listing["plugins"] if p["plugin"] == "example_backbone"]
    assert example["version"] == "0.3.0" and example["distribution"] == "clipcore-example-backbone"
    assert example["builtin"] is False
    assert example["registers"] == {"backbones": [{"name": "example", "types": ["example-tiny"], "open_ended": False}]}
    [openclip] = [p for p in listing["plugins"] if p["plugin"] == "openclip"]
    [family] = openclip["registers"]["backbones"]
    assert family["name"] == "openclip" and family["open_ended"] is True
    assert "clipcore-demo-tiny" in family["types"]
    [loss] = [p for p in listing["plugins"] if p["plugin"] == "siglip_loss"][0]["registers"]["losses"]
    assert loss == {"name": "siglip", "types": [], "open_ended": False}


def test_core_plugins_json_lists_failures(tmp_path, monkeypatch, capsys, distribution):
    distribution(tmp_path, "broken-plugin", "2.0", {"broken": "raise RuntimeError('boom')\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("core.cli.plugins.get_registry", load_registry)
    assert main(["plugins", "--json"]) == 0
    import json

    [failure] = json.loads(capsys.readouterr().out)["failures"]
    assert failure == {"plugin": "broken", "distribution": "broken-plugin",
                       "error": "import failed: RuntimeError: boom"}


def test_lazy_imports_its_target_on_first_call_only(monkeypatch):
    import sys

    from core.registry import lazy

    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    fn = lazy("colorsys:rgb_to_hsv")
    assert "colorsys" not in sys.modules and repr(fn) == "lazy('colorsys:rgb_to_hsv')"
    assert fn(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert "colorsys" in sys.modules


def test_plugin_discovery_does_not_import_model_libraries():
    import subprocess
    import sys

    code = ("import sys; from core.registry import load_registry; load_registry(); "
            "print(sorted(m for m in ('open_clip', 'timm', 'transformers', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_artifact_plugins_are_found_by_suffix_with_one_message_otherwise():
    registry = load_registry()
    assert registry.for_suffix("exporters", "out/model.onnx", key="export.onnx_file").name == "onnx"
    with pytest.raises(PluginError) as err:
        registry.for_suffix("exporters", "out/model.pt", key="export.onnx_file")
    assert str(err.value).startswith("export.onnx_file: no installed exporter writes .pt files: out/model.pt")
    assert "known suffixes: .onnx" in str(err.value)
