"""bad_samples.jsonl records say which phase met the sample (train, val, evaluate, inference) and,
in training, the epoch."""

from __future__ import annotations

import json
from pathlib import Path

from core.cli.main import main


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_phase_is_named_in_the_bad_sample_records(tmp_path, data_kit):
    data = tmp_path / "data"
    data_kit.write_folder(data, 12)
    (data / "broken.png").write_bytes(b"this is text, not an image; " * 8)
    (data / "broken.txt").write_text("a caption for a broken image")
    spec = tmp_path / "clip.toml"
    spec.write_text(f'''
results_dir = "{tmp_path / 'results'}"
[model]
type = "example-tiny"
pretrained = false
image_size = 32
[train]
num_epochs = 2
loss_type = "clip"
precision = "fp32"
[dataset.train]
type = "custom"
batch_size = 4
num_workers = 0
[[dataset.train.datasets]]
image_dir = "{data}"
[dataset.val]
type = "custom"
batch_size = 4
num_workers = 0
[[dataset.val.datasets]]
image_dir = "{data}"
[[inference.datasets]]
image_dir = "{data}"
''')
    assert main(["train", "-c", str(spec)]) == 0
    trained = records(tmp_path / "results" / "train" / "bad_samples.jsonl")
    train_records = [r for r in trained if r["phase"] == "train"]
    assert train_records and all(isinstance(r["epoch"], int) for r in train_records)
    assert any(r["phase"] == "val" for r in trained)
    assert all(Path(r["path"]).name == "broken.png" and r["reason"] == "corrupt-image" for r in trained)

    checkpoint = tmp_path / "results" / "train" / "latest.pth"
    assert main(["evaluate", "-c", str(spec), f"evaluate.checkpoint={checkpoint}"]) == 0
    assert {r["phase"] for r in records(tmp_path / "results" / "evaluate" / "bad_samples.jsonl")} == {"evaluate"}
    assert main(["inference", "-c", str(spec), f"inference.checkpoint={checkpoint}"]) == 0
    assert {r["phase"] for r in records(tmp_path / "results" / "inference" / "skipped.jsonl")} == {"inference"}
