"""Train, evaluate and embed from ``s3://`` (a real S3 API server on loopback), laid out as TAO's
job specs do: ``images.tar.gz``, ``captions.tar.gz`` and ``image_list.txt`` in a bucket. The data
cache is filled once and reused by the next run; a remote ``.tar`` larger than the cache is read
in place by range requests."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import pytest
import tomli_w

from core.cli.main import main
from tests.s3_server import tar_folder

MODEL = {"type": "example-tiny", "pretrained": False, "image_size": 32}
PROMPTS = b"a red circle\na small blue square\n"


@pytest.fixture(scope="module")
def bucket(s3_session, tmp_path_factory) -> dict[str, str]:
    """Demo data in the bucket: the URLs of each part."""
    root = tmp_path_factory.mktemp("remote")
    data = root / "data"
    assert main(["demo-data", str(data), "--n", "64", "--val", "16", "--class-images", "2", "--detection-frames", "0",
                 "--seed", "5"]) == 0
    train = data / "train"
    names = sorted(p.name for p in (train / "images").iterdir())
    (root / "image_list.txt").write_text("\n".join(names[:48]) + "\n")

    def archive(part: str, name: str) -> bytes:
        return tar_folder(train / part, root / name).read_bytes()

    urls = {"images": s3_session.put("job/train/images.tar.gz", archive("images", "i.tar.gz")),
            "captions": s3_session.put("job/train/captions.tar.gz", archive("captions", "c.tar.gz")),
            "image_list": s3_session.put("job/train/image_list.txt", (root / "image_list.txt").read_bytes()),
            "images_tar": s3_session.put("job/train/images.tar", archive("images", "i.tar")),
            "val": s3_session.upload(data / "val", "job/val"),
            "classes": s3_session.upload(data / "classes" / "test", "job/classes"),
            "prompts": s3_session.put("job/prompts.txt", PROMPTS)}
    return urls


def spec(tmp_path: Path, bucket: dict[str, str], **dataset) -> Path:
    lines = {"model": MODEL,
             "train": {"num_epochs": 1, "loss_type": "clip", "precision": "fp32", "checkpoint_interval": 1,
                       "validation_interval": 1, "loggers": []},
             "dataset": {"cache_dir": str(tmp_path / "cache"),
                         "train": {"batch_size": 16, "num_workers": 2, "datasets": [
                             {"image_dir": bucket["images"], "caption_dir": bucket["captions"],
                              "image_list_file": bucket["image_list"], "caption_mode": "lines"}]},
                         "val": {"batch_size": 16, "num_workers": 0, "datasets": [
                             {"image_dir": bucket["val"] + "/images", "caption_dir": bucket["val"] + "/captions",
                              "caption_mode": "lines"}]},
                         "augmentation": {"scale": [1.0, 1.0], "color_jitter": [], "grayscale": 0.0}, **dataset},
             "evaluate": {"num_workers": 0, "classification_dir": bucket["classes"]},
             "inference": {"num_workers": 0, "text_file": bucket["prompts"],
                           "datasets": [{"image_dir": bucket["val"] + "/images"}, {"image_dir": bucket["images"]}]}}
    path = tmp_path / "clip.toml"
    path.write_text(tomli_w.dumps(lines))
    return path


def fetched(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("data cache: fetched")]


def test_train_then_evaluate_from_s3_fill_the_cache_once(s3, bucket, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path, results = spec(tmp_path, bucket), tmp_path / "results"
    assert main(["train", "-e", str(path), "-r", str(results)]) == 0
    lines = [json.loads(line) for line in (results / "train" / "metrics.jsonl").read_text().splitlines()]
    assert any("val/t2i_R@1" in line for line in lines)
    assert max(line["step"] for line in lines) == 3  # the 48 images of image_list.txt, 16 a batch
    first = fetched(caplog)
    assert {m.split(" objects of ")[1].split(" into ")[0] for m in first} == {
        bucket["images"], bucket["captions"], bucket["image_list"], bucket["val"] + "/images",
        bucket["val"] + "/captions"}

    caplog.clear()
    checkpoint = results / "train" / "latest.pth"
    assert main(["evaluate", "-e", str(path), "-r", str(results), f"evaluate.checkpoint={checkpoint}"]) == 0
    found = json.loads((results / "evaluate" / "results.json").read_text())
    assert found["num_images"] == 16 and found["classification"]["num_images"] == 6
    assert [m.split(" objects of ")[1].split(" into ")[0] for m in fetched(caplog)] == [bucket["classes"]]


def test_inference_from_s3_folders_and_archives_records_the_images_urls(s3, bucket, tmp_path):
    results = tmp_path / "results"
    assert main(["inference", "-e", str(spec(tmp_path, bucket)), "-r", str(results)]) == 0
    with h5py.File(results / "inference" / "image_embeddings.h5") as f:
        paths = list(f["image_paths"].asstr())
    assert len(paths) == 16 + 64
    assert all(p.startswith(bucket["val"] + "/images/val-") for p in paths[:16])
    assert paths[16] == bucket["images"] + "/train-000000.png"  # TAO's inference spec: an images.tar.gz
    with h5py.File(results / "inference" / "text_embeddings.h5") as f:
        assert list(f["texts"].asstr()) == ["a red circle", "a small blue square"]


def test_a_tar_larger_than_the_cache_is_read_by_ranges(s3, bucket, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path = spec(tmp_path, bucket, cache_size_gb=3e-4)  # ~315 KiB: the 0.5 MiB image archive does not fit
    table = path.read_text().replace(bucket["images"], bucket["images_tar"])
    path.write_text(table)
    results = tmp_path / "results"
    assert main(["train", "-e", str(path), "-r", str(results)]) == 0
    assert (results / "train" / "latest.pth").is_file()
    assert any("reading it in place" in r.getMessage() and bucket["images_tar"] in r.getMessage()
               for r in caplog.records)
    assert bucket["images_tar"] not in " ".join(fetched(caplog))


def test_a_missing_archive_stops_training_with_the_url(s3, bucket, tmp_path, capsys):
    path = spec(tmp_path, bucket)
    missing = bucket["images"].replace("images.tar.gz", "imgs.tar.gz")
    path.write_text(path.read_text().replace(bucket["images"], missing))
    assert main(["train", "-e", str(path), "-r", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert f"dataset.train.datasets.0.image_dir: no object at {missing}" in err and "Traceback" not in err


def test_wds_shards_listed_on_s3_stream_with_the_spec_storage_options(s3, tmp_path, monkeypatch):
    """The seed's WDS job: root_dir and shard_list_file on S3; the endpoint from dataset.storage_options."""
    data = tmp_path / "wds"
    assert main(["demo-data", str(data), "--format", "wds", "--n", "64", "--val", "16", "--class-images", "0",
                 "--detection-frames", "0"]) == 0
    root = s3.upload(data / "train", "wds")
    s3.put("wds/shards.txt", b"shard-{000000..000007}.tar\n")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    table = {"model": MODEL, "train": {"num_epochs": 1, "loss_type": "clip", "precision": "fp32", "loggers": []},
             "dataset": {"cache_dir": str(tmp_path / "cache"), "storage_options": {"endpoint_url": s3.endpoint},
                         "train": {"type": "wds", "batch_size": 16, "num_workers": 2,
                                   "wds": {"root_dir": root, "shard_list_file": root + "/shards.txt",
                                           "samples_per_shard": 8, "caption_mode": "lines"}}}}
    path, results = tmp_path / "wds.toml", tmp_path / "results"
    path.write_text(tomli_w.dumps(table))
    assert main(["train", "-e", str(path), "-r", str(results)]) == 0
    lines = [json.loads(line) for line in (results / "train" / "metrics.jsonl").read_text().splitlines()]
    assert max(line["step"] for line in lines) == 4 and not (results / "train" / "bad_samples.jsonl").exists()
