"""The conformance kit catches each deliberately broken fake plugin, naming plugin and rule,
and passes the example third-party plugin installed with pip."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.registry import load_registry
from core.testing import checks_for, run_checks

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
from core import hookimpl
from core.backbone import BackboneFamily
from clipcore_example_backbone.plugin import tiny, build
{extra}
@hookimpl
def register_backbones(register):
    register(BackboneFamily(name={name!r}, types=({type!r},), build=build, tiny=tiny,
                            description={description!r}{sections}))
"""


def failures_of(fake_plugin, plugin_source: str, name: str = "fakeplugin", version: str = "1.0") -> dict[str, str]:
    registry = load_registry(plugins=[fake_plugin(name, plugin_source, version)], use_entry_points=False)
    return {check.name: msg for check, msg in run_checks(checks_for(name, registry)) if msg}


def good(**kw) -> str:
    values = {"name": "fam", "type": "fam-small", "description": "a family", "sections": "", "extra": ""}
    return GOOD.format(**{**values, **kw})


def test_a_correct_fake_passes_registration_checks(fake_plugin):
    failures = failures_of(fake_plugin, good())
    assert not {k: v for k, v in failures.items() if k in {
        "check_loads", "check_registers_something", "check_distribution_metadata",
        "check_entry_metadata", "check_config_sections"}}


@pytest.mark.parametrize("source, version, rule, message", [
    ("from core import hookimpl\n@hookimpl\ndef register_losses(register):\n    raise KeyError('x')\n",
     "1.0", "check_loads", "plugin 'fakeplugin' failed to load: register_losses raised KeyError"),
    ("from core import hookimpl\n@hookimpl\ndef register_losses(register):\n    pass\n",
     "1.0", "check_registers_something", "plugin 'fakeplugin' registers nothing"),
    (good(), "?", "check_distribution_metadata", "plugin 'fakeplugin' has no distribution name/version"),
    (good(description=""), "1.0", "check_entry_metadata",
     "plugin 'fakeplugin', backbone 'fam': description is empty"),
    (good(name="My Family"), "1.0", "check_entry_metadata",
     "plugin 'fakeplugin', backbone 'My Family': name must match"),
    (good(type="two words"), "1.0", "check_entry_metadata", "model type 'two words' must be one word"),
    (good(extra="import attrs\nfrom core.registry import ConfigSection\n"
                "@attrs.define\nclass Section:\n    needed: int\n",
          sections=", config_sections=(ConfigSection('model.fam', Section),)"),
     "1.0", "check_config_sections", "config section 'model.fam': every field needs a default"),
    (good(extra="import attrs\nfrom core.registry import ConfigSection\n"
                "@attrs.define\nclass Section:\n    x: int = 1\n",
          sections=", config_sections=(ConfigSection('model.type', Section),)"),
     "1.0", "check_config_sections", "config section 'model.type' shadows the core field"),
    (good(extra="import attrs\nfrom core.registry import ConfigSection\n"
                "@attrs.define\nclass Section:\n    x: int = 1\n",
          sections=", config_sections=(ConfigSection('nowhere.fam', Section),)"),
     "1.0", "check_config_sections", "'nowhere' is not a core section"),
])
def test_each_broken_fake_is_caught_naming_plugin_and_rule(source, version, rule, message, fake_plugin):
    failures = failures_of(fake_plugin, source, version=version)
    assert rule in failures, f"{rule} did not catch the break; failures: {failures}"
    assert message in failures[rule]


def test_example_plugin_installed_with_pip_passes_the_kit(tmp_path):
    """The proof that third parties can ship plugins: pip-install the example package into a
    fresh folder, then `core plugins` lists it and the kit passes it, from its own test file."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT / "examples" / "clipcore-example-backbone")],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)]),
           "CLIPCORE_DISABLE_PLUGINS": ""}
    # The copy under `target` comes first on sys.path, so it is the one discovered and imported.
    listing = json.loads(subprocess.run([sys.executable, "-m", "core.cli.main", "plugins", "--json"], env=env,
                                        check=True, capture_output=True, text=True).stdout)
    [example] = [p for p in listing["plugins"] if p["plugin"] == "example_backbone"]
    assert example["distribution"] == "clipcore-example-backbone" and example["version"] == "0.3.0"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(ROOT / "examples" / "clipcore-example-backbone" / "tests")],
                            env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout
    check = subprocess.run([sys.executable, "-m", "core.cli.main", "plugins", "check", "example_backbone"],
                           env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "0 failed" in check.stdout
