"""The dataset-format conformance checks pass on both built-in formats, through the kit."""

import pytest

from core.registry import load_registry
from core.testing import checks_for, run_checks


@pytest.fixture(scope="module")
def registry():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPCORE_PLUGINS", "custom,wds")  # only the formats: importing backbones is slow
        return load_registry()


@pytest.mark.parametrize("plugin", ["custom", "wds"])
def test_builtin_formats_pass_the_kit(plugin, registry):
    checks = checks_for(plugin, registry)
    names = {c.name for c in checks}
    assert {"check_batch_shapes", "check_same_seed_same_order", "check_ranks_disjoint", "check_epoch_length",
            "check_resume_position", "check_bad_sample_policy"} <= names
    failures = {check.id: message for check, message in run_checks(checks) if message}
    assert not failures
