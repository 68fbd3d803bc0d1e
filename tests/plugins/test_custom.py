"""The custom format: folder and archive layouts, ordering, retrieval captions, rank sharding, resume."""

import tarfile
from pathlib import Path

import pytest
import torch

from core.spec.config import DatasetEntry
from core.errors import DataError
from plugins.custom import build, retrieval

torch.set_num_threads(1)


def names(keys):
    return [Path(k).name for k in keys]


def test_captions_beside_images_recursive_any_case_sorted(tmp_path, data_kit):
    root = tmp_path / "images"
    data_kit.write_folder(root / "b", 2)
    (root / "a").mkdir()
    (root / "a" / "Z.JPG").write_bytes(data_kit.image_bytes("JPEG"))
    (root / "a" / "Z.txt").write_text("upper case extension")
    (root / "a" / "w.WebP").write_bytes(data_kit.image_bytes("WEBP"))
    (root / "a" / "w.txt").write_text("webp")
    (root / "a" / "notes.md").write_text("not an image")
    (root / ".hidden.png").write_bytes(data_kit.image_bytes())
    data = retrieval(data_kit.request(data_kit.config(DatasetEntry(image_dir=str(root)))))
    assert names(data.image_paths) == ["Z.JPG", "w.WebP", "img-000.png", "img-001.png"]
    assert data.captions == ["upper case extension", "webp", "caption 0", "caption 1"]


def test_caption_dir_and_suffix(tmp_path, data_kit):
    data_kit.write_folder(tmp_path / "images" / "sub", 3, captions=tmp_path / "captions" / "sub", suffix=".caption")
    entry = DatasetEntry(image_dir=str(tmp_path / "images"), caption_dir=str(tmp_path / "captions"),
                         caption_file_suffix=".caption")
    data = retrieval(data_kit.request(data_kit.config(entry)))
    assert data.captions == ["caption 0", "caption 1", "caption 2"]


def test_flat_caption_dir_for_nested_images(tmp_path, data_kit):
    data_kit.write_folder(tmp_path / "images" / "deep" / "er", 2, captions=tmp_path / "captions")
    entry = DatasetEntry(image_dir=str(tmp_path / "images"), caption_dir=str(tmp_path / "captions"))
    assert retrieval(data_kit.request(data_kit.config(entry))).captions == ["caption 0", "caption 1"]


def test_image_list_file_order_and_several_entries_concatenated(tmp_path, data_kit):
    data_kit.write_folder(tmp_path / "one", 3)
    data_kit.write_folder(tmp_path / "two", 2, start=10)
    listing = tmp_path / "list.txt"
    listing.write_text("img-002.png\n\n./img-000.png\n")
    entries = [DatasetEntry(image_dir=str(tmp_path / "one"), image_list_file=str(listing)),
               DatasetEntry(image_dir=str(tmp_path / "two"))]
    data = retrieval(data_kit.request(data_kit.config(*entries)))
    assert names(data.image_paths) == ["img-002.png", "img-000.png", "img-010.png", "img-011.png"]


def test_lines_mode_gives_several_captions_per_image(tmp_path, data_kit):
    root = tmp_path / "images"
    data_kit.write_folder(root, 2)
    (root / "img-000.txt").write_text("first\n\n  second  \nthird\n")
    data = retrieval(data_kit.request(data_kit.config(DatasetEntry(image_dir=str(root), caption_mode="lines"))))
    assert data.captions == ["first", "second", "third", "caption 1"]
    assert list(data.caption_image) == [0, 0, 0, 1]
    assert data.load_image(1).shape == (3, 16, 16)


def test_training_draws_one_of_the_lines(tmp_path, data_kit):
    root = tmp_path / "images"
    data_kit.write_folder(root, 4)
    for i in range(4):
        (root / f"img-{i:03d}.txt").write_text("alpha\nbeta\n")
    loader = build(data_kit.request(data_kit.config(DatasetEntry(image_dir=str(root), caption_mode="lines")), batch_size=4))
    seen = set()
    for epoch in range(4):
        loader.set_epoch(epoch)
        for batch in loader:
            seen.update(tuple(row[:4].tolist()) for row in batch["input_ids"])
    assert seen == {tuple(b + 1 for b in b"alph"), tuple(b + 1 for b in b"beta")}


def _tar(path: Path, files: dict[str, bytes], mode: str) -> None:
    import io

    with tarfile.open(path, mode) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz")])
def test_tar_archives_are_read_without_extracting(tmp_path, suffix, mode, data_kit):
    images = {f"./images/img-{i}.png": data_kit.image_bytes(seed=i) for i in range(4)}
    captions = {f"captions/img-{i}.txt": f"caption {i}".encode() for i in range(4)}
    _tar(tmp_path / f"images{suffix}", images, mode)
    _tar(tmp_path / f"captions{suffix}", captions, mode)
    entry = DatasetEntry(image_dir=str(tmp_path / f"images{suffix}"), caption_dir=str(tmp_path / f"captions{suffix}"))
    cfg = data_kit.config(entry)
    data = retrieval(data_kit.request(cfg))
    assert data.captions == [f"caption {i}" for i in range(4)]
    assert data.image_paths[0] == f"{tmp_path / f'images{suffix}'}/images/img-0.png"
    assert data.load_image(2).shape == (3, 16, 16)
    loader = build(data_kit.request(cfg, batch_size=2, num_workers=2))
    assert sorted(names(data_kit.epoch_keys(loader))) == [f"img-{i}.png" for i in range(4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"images{suffix}", f"captions{suffix}"])


def test_two_ranks_get_disjoint_full_batches_with_workers(tmp_path, data_kit):
    data_kit.write_folder(tmp_path / "images", 21)
    cfg = data_kit.config(DatasetEntry(image_dir=str(tmp_path / "images")))
    loaders = [build(data_kit.request(cfg, batch_size=3, rank=r, world_size=2, num_workers=2, seed=5)) for r in (0, 1)]
    keys = [data_kit.epoch_keys(loader, 3) for loader in loaders]
    assert len(loaders[0]) == len(loaders[1]) == 3 and loaders[0].num_samples == 18
    assert len(keys[0]) == len(keys[1]) == 9 and not set(keys[0]) & set(keys[1])


def test_mid_epoch_position_is_restored_exactly(tmp_path, data_kit):
    data_kit.write_folder(tmp_path / "images", 12)
    cfg = data_kit.config(DatasetEntry(image_dir=str(tmp_path / "images")))
    full = data_kit.epoch_keys(build(data_kit.request(cfg, batch_size=2, num_workers=2)), 1)
    loader = build(data_kit.request(cfg, batch_size=2, num_workers=2))
    loader.set_epoch(1)
    batches = iter(loader)
    head = [k for _ in range(2) for k in next(batches)["key"]]
    state = loader.state_dict()
    assert state == {"epoch": 1, "batch": 2, "global_batch": 2}
    resumed = build(data_kit.request(cfg, batch_size=2, num_workers=0))
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    assert head + [k for b in resumed for k in b["key"]] == full
    assert data_kit.epoch_keys(resumed, 1) == full  # the next pass over the epoch starts from its beginning
    wider = build(data_kit.request(cfg, batch_size=4))
    wider.load_state_dict(state)
    assert wider.state_dict()["batch"] == 1  # 4 samples done = one batch of 4


def test_missing_image_dir_is_a_clear_error(tmp_path, data_kit):
    with pytest.raises(DataError) as err:
        build(data_kit.request(data_kit.config(DatasetEntry(image_dir=str(tmp_path / "nope")))))
    assert "dataset.train.datasets.0.image_dir" in str(err.value) and "does not exist" in str(err.value)


def test_no_images_is_a_clear_error(tmp_path, data_kit):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.tiff").write_bytes(b"II*\0")
    with pytest.raises(DataError) as err:
        build(data_kit.request(data_kit.config(DatasetEntry(image_dir=str(tmp_path / "images")))))
    assert "no images found" in str(err.value) and ".jpg .jpeg .png .bmp .gif .webp" in str(err.value)


def test_no_datasets_is_a_clear_error(data_kit):
    with pytest.raises(DataError) as err:
        build(data_kit.request(data_kit.config()))
    assert "dataset.train.datasets" in str(err.value) and "image_dir" in str(err.value)


def test_augmented_resume_is_exact_with_any_worker_count(tmp_path, data_kit):
    """Random augmentation depends only on (seed, epoch, sample): a run resumed mid-epoch with
    another number of workers sees exactly the pixels the uninterrupted run saw."""
    from core.spec.config import AugmentationConfig
    from core.runtime.transforms import train_transform

    data_kit.write_folder(tmp_path / "images", 12)
    cfg = data_kit.config(DatasetEntry(image_dir=str(tmp_path / "images")))
    augment = train_transform(data_kit.SPEC, AugmentationConfig(scale=[0.3, 1.0], grayscale=0.5))

    def images(loader, start=0):
        loader.set_epoch(1)
        return [b["image"] for b in loader][start:]

    full = images(build(data_kit.request(cfg, batch_size=2, num_workers=2, transform=augment)))
    assert not torch.equal(full[0], full[1])
    resumed = build(data_kit.request(cfg, batch_size=2, num_workers=0, transform=augment))
    resumed.load_state_dict({"epoch": 1, "batch": 2, "global_batch": 2})
    torch.manual_seed(123)  # the global generator must not matter
    tail = images(resumed)
    assert len(tail) == len(full) - 2
    assert all(torch.equal(a, b) for a, b in zip(tail, full[2:]))


# --------------------------------------------------------------------------- compatible positives
def match_columns(batch, keys):
    """{sample name: (image key, text key, group key)} of a batch."""
    return {Path(k).name: tuple(row) for k, row in zip(keys, batch["match_keys"].tolist())}


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_carry_image_text_and_group_match_keys(tmp_path, data_kit, workers):
    root = tmp_path / "images"
    data_kit.write_folder(root, 4)
    (root / "img-003.png").write_bytes((root / "img-000.png").read_bytes())  # the same image, another name
    (root / "img-002.txt").write_text("caption   1 ")  # the same text as img-001 after whitespace
    groups = tmp_path / "groups.csv"
    groups.write_text("image,group\nimg-000.png,red\n./img-002.png,red\nimg-001.png,blue\n")
    cfg = data_kit.config(DatasetEntry(image_dir=str(root), group_file=str(groups)))
    loader = build(data_kit.request(cfg, batch_size=4, num_workers=workers))
    loader.set_epoch(0)
    (batch,) = list(loader)
    keys = match_columns(batch, batch["key"])
    assert keys["img-003.png"][0] == keys["img-000.png"][0] != keys["img-001.png"][0]
    assert keys["img-002.png"][1] == keys["img-001.png"][1] != keys["img-000.png"][1]
    assert keys["img-000.png"][2] == keys["img-002.png"][2] != keys["img-001.png"][2]
    assert keys["img-003.png"][2] == -1 and min(keys["img-000.png"]) >= 0


def test_group_file_lines_that_are_not_image_group_pairs_are_a_clear_error(tmp_path, data_kit):
    data_kit.write_folder(tmp_path / "images", 2)
    groups = tmp_path / "groups.csv"
    groups.write_text("img-000.png,red\nimg-001.png\n")
    cfg = data_kit.config(DatasetEntry(image_dir=str(tmp_path / "images"), group_file=str(groups)))
    with pytest.raises(DataError) as err:
        build(data_kit.request(cfg))
    assert str(err.value).startswith(
        f"dataset.train.datasets.0.group_file: line 2 of {groups} is not `image,group`: 'img-001.png'\n  fix: "
        "write one `image,group` row per line")
    cfg.dataset.train.datasets[0].group_file = str(tmp_path / "absent.csv")
    with pytest.raises(DataError, match=r"cannot read the group file \(FileNotFoundError.*\n  fix: point group_file "
                                        r"at an existing"):
        build(data_kit.request(cfg))
    groups.write_text("image,group\nimg-000,red\nimages/img-001.png,blue\n")  # names that match no image
    cfg.dataset.train.datasets[0].group_file = str(groups)
    with pytest.raises(DataError, match=r"none of the 2 images in .* is in this dataset \(e.g. 'images/img-001.png'; the "
                                        r"dataset's images are named like 'img-000.png'\)"):
        build(data_kit.request(cfg))


def test_group_file_images_outside_the_dataset_are_reported(tmp_path, data_kit, caplog):
    data_kit.write_folder(tmp_path / "images", 2)
    groups = tmp_path / "groups.csv"
    groups.write_text("img-000.png,red\nother/img-9.png,red\n")
    build(data_kit.request(data_kit.config(DatasetEntry(image_dir=str(tmp_path / "images"), group_file=str(groups)))))
    assert "1 of 2 images in" in caplog.text and "e.g. other/img-9.png" in caplog.text
