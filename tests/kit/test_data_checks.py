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


BROKEN = """
import attrs
import torch
from core import hookimpl
from core.data import DatasetFormat
from plugins import custom


def build(request):
    {change}
    return custom.build(request)


class Loader:
    def __init__(self, inner):
        self.inner, self.num_samples = inner, inner.num_samples
    def __len__(self):
        return len(self.inner)
    def set_epoch(self, epoch):
        self.inner.set_epoch(epoch)
    def state_dict(self):
        return self.inner.state_dict()
    def load_state_dict(self, state):
        {load}
    def __iter__(self):
        for batch in self.inner:
            {batch}
            yield batch


def wrapped(request):
    return Loader(build(request))


def write(folder, samples, config):
    config = custom.write(folder, samples, config)
    config.dataset.train.type = "broken"
    return config


@hookimpl
def register_dataset_formats(register):
    register(DatasetFormat(name="broken", build=wrapped, write={write}, description="a broken format"))
"""


def broken(fake_plugin, change="pass", load="self.inner.load_state_dict(state)", batch="pass", write="write"):
    source = BROKEN.format(change=change, load=load, batch=batch, write=write)
    registry = load_registry(plugins=[fake_plugin("brokenformat", source)], use_entry_points=False)
    return {check.name: message for check, message in run_checks(checks_for("brokenformat", registry)) if message}


@pytest.mark.parametrize("kw, rule, message", [
    (dict(change="request = attrs.evolve(request, rank=0, world_size=1)"), "check_ranks_disjoint",
     "rule disjoint ranks: both ranks yielded"),
    (dict(change="request = attrs.evolve(request, seed=int(torch.randint(0, 10**6, ())))"),
     "check_same_seed_same_order", "rule same seed, same order"),
    (dict(batch='batch["input_ids"] = batch["input_ids"].float()'), "check_batch_shapes",
     "rule batch shapes: input_ids must be int64"),
    (dict(load="pass"), "check_resume_position", "rule resumable position"),
    (dict(batch="if self.inner.position == len(self.inner): break"), "check_epoch_length",
     "rule epoch length: epoch 0 with 0 workers yielded"),
    (dict(write="None"), "check_bad_sample_policy", "rule writable: DatasetFormat.write is not set"),
])
def test_the_kit_catches_broken_formats(kw, rule, message, fake_plugin):
    failures = broken(fake_plugin, **kw)
    assert rule in failures, failures
    assert "plugin 'brokenformat', dataset format 'broken'" in failures[rule]
    if message:
        assert message in failures[rule]
