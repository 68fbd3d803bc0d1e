"""Every bad-data case, on real files: skipped, counted and listed under on_bad_sample = "skip";
one clear DataError naming the path and reason under "error"."""

import io
import logging
import tarfile
from pathlib import Path

import pytest
import torch

from core.bad_samples import BadSample, BadSampleLog
from core.spec.config import DatasetEntry
from core.errors import DataError
from plugins import custom, wds
from plugins.wds.config import SECTION as WDS
from plugins.wds.config import WdsConfig
from plugins.wds.writer import write_shards
from core.data import RawSample

torch.set_num_threads(1)
GOOD = 7


def _bad_image(content, ext: str = ".png"):
    """A writer of ``bad<ext>`` holding ``content`` (bytes, or a function of the data fixture)."""
    def make(data_kit, root: Path) -> dict:
        (root / f"bad{ext}").write_bytes(content(data_kit) if callable(content) else content)
        (root / "bad.txt").write_text("a caption")
        return {}
    return make


def _bad_caption(caption: bytes):
    def make(data_kit, root: Path) -> dict:
        (root / "bad.png").write_bytes(data_kit.image_bytes(seed=99))
        (root / "bad.txt").write_bytes(caption)
        return {}
    return make


def _missing_caption(data_kit, root: Path) -> dict:
    (root / "bad.png").write_bytes(data_kit.image_bytes(seed=99))
    return {}


def _missing_listed_image(data_kit, root: Path) -> dict:
    listing = root.parent / "list.txt"
    listing.write_text("\n".join([f"img-{i:03d}.png" for i in range(GOOD)] + ["bad.png"]))
    return {"image_list_file": str(listing)}


def _truncated_jpeg(keep: float = 0.5):
    def content(data_kit) -> bytes:
        jpeg = data_kit.image_bytes("JPEG", size=(64, 64), quality=95)
        return jpeg[: int(len(jpeg) * keep)]
    return content


CASES = {  # name: (writer, reason, loaded lazily (True) or found while indexing (False), max_image_pixels)
    "corrupt image": (_bad_image(b"this is text, not an image; " * 8), "corrupt-image", True, None),
    "truncated jpeg": (_bad_image(_truncated_jpeg(), ".jpg"), "truncated-image", True, None),
    "jpeg cut in its headers": (_bad_image(_truncated_jpeg(0.1), ".jpg"), "truncated-image", True, None),
    "zero-byte image": (_bad_image(b""), "empty-file", True, None),
    "pixel limit": (_bad_image(lambda data_kit: data_kit.image_bytes(size=(40, 40))), "pixel-limit", True, 1000),
    "missing caption file": (_missing_caption, "missing-caption", False, None),
    "empty caption": (_bad_caption(b""), "empty-caption", True, None),
    "whitespace caption": (_bad_caption(b" \n\t \n"), "empty-caption", True, None),
    "non-utf8 caption": (_bad_caption(b"caf\xe9 au lait"), "caption-not-utf8", True, None),
    "listed image missing": (_missing_listed_image, "missing-image", False, None),
}


def _dataset(data_kit, tmp_path: Path, case: str, on_bad_sample: str):
    make, reason, lazy, max_pixels = CASES[case]
    root = tmp_path / "images"
    data_kit.write_folder(root, GOOD)
    entry = DatasetEntry(image_dir=str(root), **make(data_kit, root))
    cfg = data_kit.config(entry, on_bad_sample=on_bad_sample)
    if max_pixels:
        cfg.dataset.max_image_pixels = max_pixels
    return cfg, reason


@pytest.mark.parametrize("case", list(CASES))
def test_skip_counts_logs_and_lists_the_bad_sample(tmp_path, caplog, case, data_kit):
    cfg, reason = _dataset(data_kit, tmp_path, case, "skip")
    results = tmp_path / "results"
    loader = custom.build(data_kit.request(cfg, results, batch_size=2))
    with caplog.at_level(logging.WARNING, logger="clipcore.data"):
        for epoch in (0, 1):
            keys = data_kit.epoch_keys(loader, epoch)
            assert len(keys) == len(loader) * 2 and not any("bad" in Path(k).name for k in keys)
    records = data_kit.bad_records(results)
    assert records and all(r["reason"] == reason and Path(r["path"]).stem == "bad" for r in records)
    assert f"skipped 1 bad samples ({reason}: 1)" in caplog.text


@pytest.mark.parametrize("case", list(CASES))
def test_error_stops_at_the_first_bad_sample_naming_path_and_reason(tmp_path, case, data_kit):
    cfg, reason = _dataset(data_kit, tmp_path, case, "error")
    with pytest.raises(DataError) as err:
        for epoch in (0, 1):
            data_kit.epoch_keys(custom.build(data_kit.request(cfg, tmp_path / "results", batch_size=2, num_workers=2)), epoch)
    message = str(err.value)
    assert reason in message and "bad." in message and "on_bad_sample" in message
    assert "Traceback" not in message


def test_unreadable_member_of_a_truncated_tar(tmp_path, data_kit):
    archive = tmp_path / "images.tar"
    with tarfile.open(archive, "w") as tar:
        for i in range(5):
            for name, data in ((f"img-{i}.png", data_kit.image_bytes(size=(200, 200), seed=i)), (f"img-{i}.txt", b"cap")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size - 10240 - 60000])  # cut into img-4.png
    results = tmp_path / "results"
    loader = custom.build(data_kit.request(data_kit.config(DatasetEntry(image_dir=str(archive))), results, batch_size=2))
    assert sorted(Path(k).name for k in data_kit.epoch_keys(loader)) == [f"img-{i}.png" for i in range(4)]
    reasons = {(Path(r["path"]).name, r["reason"]) for r in data_kit.bad_records(results)}
    assert ("img-4.png", "unreadable-tar-member") in reasons
    with pytest.raises(DataError) as err:
        custom.build(data_kit.request(data_kit.config(DatasetEntry(image_dir=str(archive)), on_bad_sample="error"), batch_size=2))
    assert "unreadable-tar-member" in str(err.value) and "images.tar" in str(err.value)


def test_only_rank_zero_lists_problems_found_while_indexing(tmp_path, data_kit):
    cfg, _ = _dataset(data_kit, tmp_path, "missing caption file", "skip")
    results = tmp_path / "results"
    for rank in (0, 1):
        custom.build(data_kit.request(cfg, results, batch_size=2, rank=rank, world_size=2))
    assert len(data_kit.bad_records(results)) == 1


def test_dataset_smaller_than_the_global_batch(tmp_path, data_kit):
    data_kit.write_folder(tmp_path / "images", 5)
    with pytest.raises(DataError) as err:
        custom.build(data_kit.request(data_kit.config(DatasetEntry(image_dir=str(tmp_path / "images"))), batch_size=3, world_size=2))
    message = str(err.value)
    assert "5 usable samples" in message and "global batch of 6" in message
    assert "batch_size 3 × 2 process(es)" in message and "lower dataset.train.batch_size to at most 2" in message


def test_without_results_dir_skipped_samples_are_logged_one_by_one(tmp_path, caplog):
    log = BadSampleLog("skip", None)
    with caplog.at_level(logging.WARNING, logger="clipcore.data"):
        log.record("/data/x.png", "corrupt-image", "boom")
    assert "skipped bad sample /data/x.png (corrupt-image: boom)" in caplog.text


# ------------------------------------------------------------------ WebDataset shards
def _shards(data_kit, tmp_path: Path, samples_per_shard: int = 4, shards: int = 3, extra: list | None = None) -> Path:
    samples = [RawSample(key=f"s{i:03d}", image=data_kit.image_bytes(seed=i), caption=f"caption {i}".encode())
               for i in range(samples_per_shard * shards)]
    write_shards(tmp_path / "shards", samples, shards=shards)
    return tmp_path / "shards"


def _wds_config(data_kit, root: Path | None = None, list_file: Path | None = None, on_bad_sample: str = "skip"):
    cfg = data_kit.config(on_bad_sample=on_bad_sample)
    cfg.dataset.train.type = "wds"
    cfg.plugins[WDS.path] = WdsConfig(root_dir=None if root is None else str(root),
                                      shard_list_file=None if list_file is None else str(list_file), samples_per_shard=4)
    return cfg


def test_missing_shard_is_skipped_or_an_error(tmp_path, data_kit):
    root = _shards(data_kit, tmp_path)
    listing = tmp_path / "shards.txt"
    listing.write_text("shard-{000000..000002}.tar\nshard-000009.tar\n")
    results = tmp_path / "results"
    loader = wds.build(data_kit.request(_wds_config(data_kit, root, listing), results, batch_size=2))
    assert len(loader) == 6 and len(data_kit.epoch_keys(loader)) == 12
    assert [(Path(r["path"]).name, r["reason"]) for r in data_kit.bad_records(results)] == [("shard-000009.tar", "missing-shard")]
    with pytest.raises(DataError) as err:
        wds.build(data_kit.request(_wds_config(data_kit, root, listing, "error"), batch_size=2))
    assert "missing-shard" in str(err.value) and "shard-000009.tar" in str(err.value)


def test_unreachable_remote_shard_is_skipped(tmp_path, data_kit):
    root = _shards(data_kit, tmp_path, shards=2)
    listing = tmp_path / "shards.txt"
    listing.write_text(f"{root}/shard-000000.tar\n{root}/shard-000001.tar\npipe:exit 3\n")
    results = tmp_path / "results"
    cfg = _wds_config(data_kit, list_file=listing)
    cfg.plugins[WDS.path].samples_per_shard = 2  # 3 shards × 2 declared: the failing one is made up by the others
    loader = wds.build(data_kit.request(cfg, results, batch_size=2))
    assert len(data_kit.epoch_keys(loader)) == 6
    assert any(r["path"] == "pipe:exit 3" and r["reason"] in ("unreachable-shard", "unreadable-tar-member")
               for r in data_kit.bad_records(results))


def test_truncated_shard_and_bad_samples_inside_shards(tmp_path, data_kit):
    root = _shards(data_kit, tmp_path, shards=2)
    broken = [RawSample(key="nocap", image=data_kit.image_bytes(), caption=b"x"),
              RawSample(key="corrupt", image=b"garbage", caption=b"corrupt image"),
              RawSample(key="latin1", image=data_kit.image_bytes(), caption=b"caf\xe9")]
    write_shards(tmp_path / "extra", broken, shards=1)
    shard = tmp_path / "extra" / "shard-000000.tar"
    with tarfile.open(shard) as tar:  # drop the caption of "nocap"
        members = [(m, tar.extractfile(m).read()) for m in tar if m.name != "nocap.txt"]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
    (root / "shard-000002.tar").write_bytes(shard.read_bytes())
    truncated = (root / "shard-000001.tar").read_bytes()
    (root / "shard-000001.tar").write_bytes(truncated[: len(truncated) // 2 + 700])  # inside a member
    results = tmp_path / "results"
    cfg = _wds_config(data_kit, root)
    cfg.plugins[WDS.path].count_samples = True  # more samples than readable ones: every shard is read
    loader = wds.build(data_kit.request(cfg, results, batch_size=1))
    assert len(data_kit.epoch_keys(loader)) == len(loader)
    reasons = {(Path(r["path"]).name, r["reason"]) for r in data_kit.bad_records(results)}
    assert {("nocap", "missing-caption"), ("corrupt", "corrupt-image"), ("latin1", "caption-not-utf8"),
            ("shard-000001.tar", "unreadable-tar-member")} <= reasons


def test_fewer_shards_than_processes_and_too_small_epochs(tmp_path, data_kit):
    root = _shards(data_kit, tmp_path, shards=1)
    with pytest.raises(DataError) as err:
        wds.build(data_kit.request(_wds_config(data_kit, root), batch_size=2, world_size=2))
    assert "1 shard(s) for 2 processes" in str(err.value)
    with pytest.raises(DataError) as err:
        wds.build(data_kit.request(_wds_config(data_kit, root), batch_size=8))
    assert "4 usable samples" in str(err.value) and "global batch of 8" in str(err.value)


def test_bad_sample_details_carry_no_memory_addresses():
    from core.images import open_image

    with pytest.raises(BadSample) as err:
        open_image(b"\xff\xd8 not an image at all", 10**6)
    assert err.value.reason == "corrupt-image"
    assert "0x" not in err.value.detail and "object at" not in err.value.detail
