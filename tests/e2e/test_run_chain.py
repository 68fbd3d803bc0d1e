"""``core run``: the chain train → evaluate → export → (gen_trt_engine) on demo data from the
command line, each step on its parent's outputs; the skip rule (up-to-date outputs, changed
settings, newer inputs, ``--force``), the failure rule (the chain stops, names the step, keeps the
earlier outputs) and the ``run.json`` record."""

from __future__ import annotations

import json
import os
import time

import pytest
import tomli
import tomli_w
import torch

from core.cli.main import main
from deploy.tensorrt import unavailable

SPEC = """\
[model]
type = "example-tiny"
pretrained = false
image_size = 32

[train]
num_epochs = 1
loss_type = "clip"
precision = "fp32"

[evaluate]
num_workers = 0

[export]
input_height = 32
input_width = 32
encoder_type = "separate"
"""


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    data = root / "data"
    assert main(["demo-data", str(data), "--n", "48", "--val", "16", "--class-images", "0",
                 "--detection-frames", "0", "--seed", "4"]) == 0
    table = tomli.loads(SPEC)
    table["results_dir"] = str(root / "results")
    table["dataset"] = tomli.loads((data / "dataset.toml").read_text())["dataset"]
    for split in ("train", "val"):
        table["dataset"][split].update(batch_size=16, num_workers=0)
    spec = root / "clip.toml"
    spec.write_text(tomli_w.dumps(table))
    torch.manual_seed(0)
    assert main(["run", "-c", str(spec)]) == 0
    return spec, root / "results"


def record(results):
    return json.loads((results / "run.json").read_text())


def steps(results):
    return {s["name"]: s for s in record(results)["steps"]}


def test_the_chain_runs_end_to_end_on_its_parents_outputs(chain, capsys):
    spec, results = chain
    best = results / "train" / "best.pth"
    done = steps(results)
    assert record(results)["status"] == "ok"
    assert [s["status"] for s in done.values()][:3] == ["ran", "ran", "ran"]
    assert done["evaluate"]["picked"] == {"checkpoint": str(best)} == done["export"]["picked"]
    assert set(done["evaluate"]["metrics"]) >= {"i2t_R@1", "t2i_R@1"} and "val/t2i_mAP" in done["train"]["metrics"]
    assert done["export"]["outputs"] == [str(results / "export" / "best_vision.onnx"),
                                         str(results / "export" / "best_text.onnx")]
    assert all(os.path.isfile(p) for p in done["export"]["outputs"]) and done["train"]["seconds"] > 0
    engine = done["gen_trt_engine"]
    if unavailable():
        assert engine["status"] == "skipped" and "cannot run here" in engine["reason"]
        capsys.readouterr()
        assert main(["run", "-c", str(spec)]) == 0  # everything up to date; the reason printed as it is
        assert "pip install clipcore[trt]" in capsys.readouterr().err
    else:
        assert engine["status"] == "ran" and engine["picked"] == {"onnx_file": str(results / "export" / "best.onnx")}


def test_up_to_date_steps_are_skipped_and_newer_inputs_redo_what_follows(chain, capsys):
    spec, results = chain
    capsys.readouterr()
    assert main(["run", "-c", str(spec), "--until", "export"]) == 0
    assert [s["status"] for s in steps(results).values()] == ["skipped"] * 3
    assert "evaluate: picked" in capsys.readouterr().err  # every step logs what it picked, skipped or not
    now = time.time()
    os.utime(results / "train" / "best.pth", (now, now))  # a newer checkpoint: evaluate and export redo
    assert main(["run", "-c", str(spec), "--until", "export"]) == 0
    assert [s["status"] for s in steps(results).values()] == ["skipped", "ran", "ran"]
    # changed settings of one step redo it alone; --force redoes everything
    assert main(["run", "-c", str(spec), "--until", "export", "evaluate.batch_size=8"]) == 0
    assert [s["status"] for s in steps(results).values()] == ["skipped", "ran", "skipped"]
    before = (results / "train" / "best.pth").stat().st_mtime
    assert main(["run", "-c", str(spec), "--until", "evaluate", "--force"]) == 0
    assert [s["status"] for s in steps(results).values()] == ["ran", "ran"]
    assert (results / "train" / "best.pth").stat().st_mtime > before


def test_a_failing_step_stops_the_chain_and_keeps_earlier_outputs(chain, capsys):
    spec, results = chain
    exported = sorted((results / "export").iterdir())
    stamps = {p: p.stat().st_mtime for p in exported}
    capsys.readouterr()
    assert main(["run", "-c", str(spec), "export.input_height=48", "--until", "export"]) == 2
    err = capsys.readouterr().err
    assert "core run: the chain stopped at step export: export.input_height" in err and "input size 48x32" in err
    assert "the steps before export are kept" in err
    found = record(results)
    assert found["status"] == "failed" and [s["status"] for s in found["steps"]] == ["skipped", "skipped", "failed"]
    assert "input size 48x32" in found["steps"][-1]["error"]
    assert {p: p.stat().st_mtime for p in sorted((results / "export").iterdir())} == stamps  # nothing touched
    # a step its rules refuse changes nothing: the next run still skips what was done
    assert main(["run", "-c", str(spec), "--force", "train.validation_interval=5"]) == 2
    assert "train.validation_interval" in capsys.readouterr().err
    assert main(["run", "-c", str(spec), "--until", "evaluate"]) == 0
    assert [s["status"] for s in steps(results).values()] == ["skipped", "skipped"]
    assert set(record(results)["done"]) >= {"train", "evaluate"}


def test_a_step_that_fails_its_rules_stops_the_chain(chain, tmp_path, capsys):
    spec, _ = chain
    results = tmp_path / "results"
    assert main(["run", "-c", str(spec), "-r", str(results), f"dataset.train.datasets.0.image_dir={tmp_path}/none"]) == 2
    err = capsys.readouterr().err
    assert "the chain stopped at step train:" in err and "dataset.train.datasets.0.image_dir" in err
    assert record(results)["steps"][0]["status"] == "failed" and not (results / "train" / "latest.pth").exists()


@pytest.mark.skipif(unavailable() is None, reason="an engine builder can run here")
def test_asking_for_an_engine_without_a_builder_fails_the_chain_with_the_reason(chain, capsys):
    spec, results = chain
    capsys.readouterr()
    assert main(["run", "-c", str(spec), "--until", "gen_trt_engine"]) == 2
    assert "the chain stopped at step gen_trt_engine" in capsys.readouterr().err
    statuses = [s["status"] for s in steps(results).values()]
    assert statuses[:2] == ["skipped", "skipped"] and statuses[-1] == "failed" and len(statuses) == 4


def test_an_older_best_checkpoint_is_never_handed_on(chain, capsys):
    """A retraining that writes no best.pth (no validation data) hands on its latest.pth, not the
    best.pth an earlier run left in the folder."""
    spec, results = chain
    assert (results / "train" / "best.pth").is_file()
    assert main(["run", "-c", str(spec), "--until", "export", "--force", "dataset.val.datasets=[]"]) == 0
    done = steps(results)
    latest = str(results / "train" / "latest.pth")
    assert done["train"]["outputs"] == [latest] and done["train"]["metrics"] == {}
    assert done["evaluate"]["status"] == "skipped" and "nothing to evaluate" in done["evaluate"]["reason"]
    assert done["export"]["picked"] == {"checkpoint": latest}
    assert "(this training wrote no best.pth: no validation)" in capsys.readouterr().err
