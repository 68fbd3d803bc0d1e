"""The wds format: finding shards, remote URLs, member keys, defined epochs, rank/worker
splitting with no repeats, and resuming in the middle of the stream."""

import io
import logging
import tarfile
from pathlib import Path

import fsspec
import pytest
import torch

from core.data import RawSample
from core.errors import ConfigError
from core.storage import Storage
from plugins import wds
from plugins.wds.config import SECTION, WdsConfig
from plugins.wds.shards import list_shards
from plugins.wds.writer import write_shards

LOCAL = Storage(Path("/nonexistent-cache"), 1 << 30)  # local lists: never used

torch.set_num_threads(1)


def samples(data_kit, n, start=0):
    return [RawSample(key=f"s{i:03d}", image=data_kit.image_bytes(seed=i), caption=f"caption {i}".encode())
            for i in range(start, start + n)]


def wds_config(data_kit, root=None, list_file=None, samples_per_shard=5, **wds_fields):
    cfg = data_kit.config()
    cfg.dataset.train.type = "wds"
    cfg.plugins[SECTION.path] = WdsConfig(root_dir=root and str(root), shard_list_file=list_file and str(list_file),
                                          samples_per_shard=samples_per_shard, **wds_fields)
    return cfg


def short(keys):
    return [k.rsplit("/", 1)[1] for k in keys]


def never(*args):
    raise AssertionError(f"unexpected bad shard {args}")


def test_root_dir_is_searched_recursively_in_sorted_order(tmp_path, data_kit):
    write_shards(tmp_path / "b", samples(data_kit, 4), shards=2)
    write_shards(tmp_path / "a" / "deep", samples(data_kit, 2), shards=1)
    (tmp_path / "a" / "notes.txt").write_text("not a shard")
    shards = list_shards(wds_config(data_kit, tmp_path).plugins[SECTION.path], never, LOCAL)
    assert [str(Path(s).relative_to(tmp_path)) for s in shards] == [
        "a/deep/shard-000000.tar", "b/shard-000000.tar", "b/shard-000001.tar"]


def test_shard_list_resolves_relative_lines_and_expands_braces(tmp_path, data_kit):
    write_shards(tmp_path / "data", samples(data_kit, 6), shards=3)
    listing = tmp_path / "lists" / "shards.txt"
    listing.parent.mkdir()
    listing.write_text(f"# comment\n\nshard-{{000000..000001}}.tar\n{tmp_path}/data/shard-000002.tar\n")
    shards = list_shards(wds_config(data_kit, tmp_path / "data", listing).plugins[SECTION.path], never, LOCAL)
    assert shards == [str(tmp_path / "data" / f"shard-00000{i}.tar") for i in range(3)]
    listing.write_text("../data/shard-00000{0,2}.tar\n")  # no root_dir: relative to the list's folder
    shards = list_shards(wds_config(data_kit, None, listing).plugins[SECTION.path], never, LOCAL)
    assert [Path(s).resolve() for s in shards] == [tmp_path / "data" / "shard-000000.tar",
                                                   tmp_path / "data" / "shard-000002.tar"]


def test_no_shards_configured_is_a_clear_error(data_kit):
    with pytest.raises(ConfigError) as err:
        wds.build(data_kit.request(wds_config(data_kit)))
    assert "dataset.train.wds" in str(err.value) and "root_dir" in str(err.value)


def test_pipe_and_fsspec_urls(tmp_path, data_kit):
    write_shards(tmp_path, samples(data_kit, 4), shards=2)
    with fsspec.open("memory://bucket/shard-000001.tar", "wb") as f:
        f.write((tmp_path / "shard-000001.tar").read_bytes())
    listing = tmp_path / "shards.txt"
    listing.write_text(f"pipe:cat {tmp_path / 'shard-000000.tar'}\nmemory://bucket/shard-000001.tar\n")
    loader = wds.build(data_kit.request(wds_config(data_kit, list_file=listing, samples_per_shard=2)))
    assert sorted(short(data_kit.epoch_keys(loader))) == ["s000", "s001", "s002", "s003"]


def test_text_and_image_member_names(tmp_path, data_kit):
    members = {"a.TEXT": b"upper text key", "a.JPEG": data_kit.image_bytes("JPEG"), "b.txt": b"webp image",
               "b.webp": data_kit.image_bytes("WEBP"), "c.text": b"line one\nline two", "c.jpg": data_kit.image_bytes("JPEG")}
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    loader = wds.build(data_kit.request(wds_config(data_kit, tmp_path, samples_per_shard=3, caption_mode="lines"), batch_size=3))
    loader.set_epoch(0)
    (batch,) = list(loader)
    assert sorted(short(batch["key"])) == ["a", "b", "c"]
    assert batch["image"].shape == (3, 3, 16, 16)


def test_two_ranks_two_workers_see_every_sample_once(tmp_path, data_kit):
    write_shards(tmp_path, samples(data_kit, 40), shards=8)
    cfg = wds_config(data_kit, tmp_path, samples_per_shard=5, shuffle_buffer=4)
    loaders = [wds.build(data_kit.request(cfg, batch_size=2, rank=r, world_size=2, num_workers=2, seed=3)) for r in (0, 1)]
    assert [len(l) for l in loaders] == [10, 10] and loaders[0].num_samples == 40
    for epoch in (0, 1):
        keys = [short(data_kit.epoch_keys(l, epoch)) for l in loaders]
        assert len(keys[0]) == len(keys[1]) == 20
        assert sorted(keys[0] + keys[1]) == [f"s{i:03d}" for i in range(40)]
    assert data_kit.epoch_keys(loaders[0], 0) != data_kit.epoch_keys(loaders[0], 1)


def test_uneven_shards_leave_samples_out_but_never_repeat(tmp_path, data_kit):
    write_shards(tmp_path, samples(data_kit, 15), shards=3)  # 3 shards for 2 ranks: one rank gets two
    cfg = wds_config(data_kit, tmp_path, samples_per_shard=5)
    loaders = [wds.build(data_kit.request(cfg, batch_size=2, rank=r, world_size=2)) for r in (0, 1)]
    assert len(loaders[0]) == len(loaders[1]) == 2
    keys = [k for l in loaders for k in data_kit.epoch_keys(l, 4)]
    assert len(keys) == 8 == len(set(keys))


def test_declared_size_larger_than_real_shards_still_gives_a_full_epoch(tmp_path, caplog, data_kit):
    write_shards(tmp_path, samples(data_kit, 6), shards=2)
    loader = wds.build(data_kit.request(wds_config(data_kit, tmp_path, samples_per_shard=5), batch_size=2))
    with caplog.at_level(logging.WARNING, logger="clipcore.data"):
        assert len(data_kit.epoch_keys(loader)) == 10 == len(loader) * 2
    assert "hold fewer samples than declared" in caplog.text and "count_samples = true" in caplog.text


def test_counted_samples_define_the_epoch(tmp_path, data_kit):
    write_shards(tmp_path, samples(data_kit, 9), shards=2)  # 5 + 4
    loader = wds.build(data_kit.request(wds_config(data_kit, tmp_path, samples_per_shard=100, count_samples=True), batch_size=3))
    assert len(loader) == 3 and sorted(short(data_kit.epoch_keys(loader))) == [f"s{i:03d}" for i in range(9)]


def _resume(data_kit, cfg, state_from, resume_with, batches_before=3):
    full = data_kit.epoch_keys(wds.build(data_kit.request(cfg, batch_size=2, **state_from)), 1)
    loader = wds.build(data_kit.request(cfg, batch_size=2, **state_from))
    loader.set_epoch(1)
    stream = iter(loader)
    head = [k for _ in range(batches_before) for k in next(stream)["key"]]
    state = loader.state_dict()
    del stream
    resumed = wds.build(data_kit.request(cfg, batch_size=2, **resume_with))
    resumed.set_epoch(1)
    resumed.load_state_dict(state)
    tail = [k for batch in resumed for k in batch["key"]]
    return full, head, tail, state


def test_resume_continues_exactly_where_the_stream_stopped(tmp_path, data_kit):
    write_shards(tmp_path, samples(data_kit, 24), shards=4)
    cfg = wds_config(data_kit, tmp_path, samples_per_shard=6, shuffle_buffer=5)
    full, head, tail, state = _resume(data_kit, cfg, {"num_workers": 2}, {"num_workers": 2})
    assert state["batch"] == 3 and sum(emitted for _, emitted in state["workers"]) == 6
    assert head + tail == full  # after an odd number of chunks too: the loader restarts at the next worker
    full, head, tail, _ = _resume(data_kit, cfg, {"num_workers": 0}, {"num_workers": 0})
    assert head + tail == full  # one worker: the very same order


def test_resume_with_another_worker_count_is_approximate_but_keeps_the_epoch_length(tmp_path, caplog, data_kit):
    write_shards(tmp_path, samples(data_kit, 24), shards=4)
    cfg = wds_config(data_kit, tmp_path, samples_per_shard=6)
    with caplog.at_level(logging.WARNING, logger="clipcore.data"):
        full, head, tail, _ = _resume(data_kit, cfg, {"num_workers": 2}, {"num_workers": 0})
    assert len(head) + len(tail) == len(full) == 24
    assert "resuming approximately" in caplog.text


@pytest.mark.parametrize("batches_before", [1, 2, 3, 5])
def test_resume_with_augmentation_gives_the_same_images_in_the_same_order(tmp_path, batches_before, data_kit):
    from core.spec.config import AugmentationConfig
    from core.runtime.transforms import train_transform

    write_shards(tmp_path, samples(data_kit, 26), shards=4)  # uneven quotas: chunks straddle batches at the end
    cfg = wds_config(data_kit, tmp_path, samples_per_shard=7, shuffle_buffer=5)
    augment = train_transform(data_kit.SPEC, AugmentationConfig(scale=[0.3, 1.0]))

    def loader():
        built = wds.build(data_kit.request(cfg, batch_size=3, num_workers=2, transform=augment))
        built.set_epoch(1)
        return built

    torch.manual_seed(0)
    full = list(loader())
    interrupted = loader()
    stream = iter(interrupted)
    head = [next(stream) for _ in range(batches_before)]
    state = interrupted.state_dict()
    del stream
    torch.manual_seed(123)  # the training process's RNG has moved on: it must not matter
    resumed = loader()
    resumed.load_state_dict(state)
    got = head + list(resumed)
    assert [b["key"] for b in got] == [b["key"] for b in full]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(got, full))


def test_group_and_cls_members_and_image_bytes_give_match_keys(tmp_path, data_kit):
    same = data_kit.image_bytes("PNG", seed=1)
    members = {"a.txt": b"one", "a.png": same, "a.group": b"red\n",
               "b.txt": b"two", "b.png": same, "b.cls": b"7",
               "c.txt": b"one", "c.png": data_kit.image_bytes("PNG", seed=2), "c.cls": b"red"}
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    loader = wds.build(data_kit.request(wds_config(data_kit, tmp_path, samples_per_shard=3), batch_size=3))
    loader.set_epoch(0)
    (batch,) = list(loader)
    keys = dict(zip(short(batch["key"]), batch["match_keys"].tolist()))
    assert keys["a"][0] == keys["b"][0] != keys["c"][0]  # the same image bytes
    assert keys["a"][1] == keys["c"][1] != keys["b"][1]  # the same text
    assert keys["a"][2] == keys["c"][2] != keys["b"][2] and keys["b"][2] >= 0  # group "red"; cls 7
