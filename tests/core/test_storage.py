"""The data cache (core.storage) against a real S3 API server on loopback: files and folders
fetched once and content-checked, concurrent fills, the size limit, range reads, and every
failure as one message naming the URL."""

from __future__ import annotations

import json
import logging
import multiprocessing
import socket
import time
from pathlib import Path

import pytest

from core.cli.main import main
from core.errors import DataError
from core.storage import Storage, TooLarge

KEY = "dataset.train.datasets.0.image_dir"


def storage(tmp_path: Path, limit: int = 1 << 30, **options) -> Storage:
    return Storage(tmp_path / "cache", limit, options)


def fetched(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "data cache: fetched" in r.getMessage()]


def test_a_file_is_fetched_once_and_again_when_it_changes(s3, tmp_path, caplog):
    caplog.set_level(logging.INFO, "clipcore.storage")
    url = s3.put("storage/list.txt", b"a.png\nb.png\n")
    cache = storage(tmp_path)
    path = cache.local(url, KEY)
    assert path.name == "list.txt" and path.read_bytes() == b"a.png\nb.png\n"
    assert len(fetched(caplog)) == 1
    inode = path.stat().st_ino
    assert cache.local(url, KEY) == path and path.stat().st_ino == inode  # warm: nothing fetched
    assert len(fetched(caplog)) == 1
    s3.put("storage/list.txt", b"c.png\nd.png\n")  # the same size: only the ETag tells
    assert cache.local(url, KEY).read_bytes() == b"c.png\nd.png\n"
    assert len(fetched(caplog)) == 2


def test_a_folder_is_mirrored_and_follows_the_store(s3, tmp_path, caplog):
    caplog.set_level(logging.INFO, "clipcore.storage")
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("A")
    (source / "sub" / "b.txt").write_text("BB")
    url = s3.upload(source, "mirror")
    cache = storage(tmp_path)
    root = cache.local(url + "/", KEY)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == ["a.txt", "sub/b.txt"]
    s3.client().delete_object(Bucket="clipcore-data", Key="mirror/a.txt")
    s3.put("mirror/sub/c.txt", b"C")
    root = cache.local(url, KEY)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == ["sub/b.txt", "sub/c.txt"]
    assert fetched(caplog)[-1].startswith("data cache: fetched 1 of 2 objects")
    manifest = json.loads((root.parent / "entry.json").read_text())
    assert manifest["url"] == url and manifest["bytes"] == 3 and set(manifest["objects"]) == {"sub/b.txt", "sub/c.txt"}


def _fill(args) -> tuple[bool, str]:
    """In a fresh process: fill the cache and report whether this process fetched."""
    cache_dir, url, env = args
    import os
    os.environ.update(env)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("clipcore.storage")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    root = Storage(Path(cache_dir), 1 << 30, {}).local(url, KEY)
    content = "".join(p.read_text() for p in sorted(root.rglob("*.txt")))
    return any("fetched" in r.getMessage() for r in records), content


def test_processes_filling_the_same_entry_at_once_fetch_it_once(s3, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for i in range(40):
        (source / f"{i:02d}.txt").write_text(str(i))
    url = s3.upload(source, "concurrent")
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_fill, [(str(tmp_path / "cache"), url, s3.env)] * 3)
    assert [fetched for fetched, _ in results].count(True) == 1
    assert {content for _, content in results} == {"".join(str(i) for i in range(40))}
    leftovers = [p.name for p in (tmp_path / "cache").rglob(".*")]
    assert leftovers == []


def _fetch(args) -> str:
    """In a fresh process (which then ends, releasing its use of the entry): fetch one URL."""
    cache_dir, url, limit, env = args
    import os
    os.environ.update(env)
    return str(Storage(Path(cache_dir), limit, {}).local(url, KEY))


def test_least_recently_used_unused_entries_go_when_the_cache_is_full(s3, tmp_path):
    one, two, three = (s3.put(f"lru/{name}.bin", name.encode() * 200) for name in ("one", "two", "six"))
    cache = str(tmp_path / "cache")

    def fetch(url: str, limit: int = 1300) -> Path:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return Path(pool.apply(_fetch, ((cache, url, limit, s3.env),)))

    first, second = fetch(one), fetch(two)
    time.sleep(0.05)
    assert fetch(one) == first  # used again: now the more recent of the two
    fetch(three)  # 1,800 bytes > 1,300: the least recently used unused entry goes
    assert first.is_file() and not second.exists()

    held = Storage(Path(cache), 700, {}).local(three, KEY)  # this process uses it until it ends
    fetch(two, limit=700)
    assert held.is_file() and second.is_file() and not first.exists()


def test_an_object_larger_than_the_cache_is_refused_and_read_in_place(s3, tmp_path):
    url = s3.put("big/archive.tar", bytes(range(256)) * 8)
    cache = storage(tmp_path, limit=1000)
    with pytest.raises(TooLarge) as err:
        cache.local(url, KEY)
    assert err.value.size == 2048 and "more than the cache's limit" in str(err.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    with cache.open(url, KEY) as f:
        f.seek(1000)
        assert f.read(4) == bytes([1000 % 256, 1001 % 256, 1002 % 256, 1003 % 256])


def test_a_missing_object_names_the_url(s3, tmp_path):
    url = "s3://clipcore-data/nothing/here.tar.gz"
    with pytest.raises(DataError) as err:
        storage(tmp_path).local(url, KEY)
    assert str(err.value).startswith(f"{KEY}: no object at {url}")
    assert "check the URL" in str(err.value)


def test_a_wrong_credential_is_refused_and_nothing_is_cached(s3, tmp_path, monkeypatch):
    url = s3.put("secret/list.txt", b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(DataError) as err:
        storage(tmp_path).local(url, KEY)
    assert f"access to {url} was refused" in str(err.value)
    assert "AWS_ACCESS_KEY_ID" in str(err.value) and "dataset.storage_options" in str(err.value)
    assert not (tmp_path / "cache").exists()


def test_an_unreachable_store_names_the_url_and_the_endpoint_setting(s3, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cache = storage(tmp_path, endpoint_url=f"http://127.0.0.1:{closed}", retries=1,
                    config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2})
    with pytest.raises(DataError) as err:
        cache.local("s3://clipcore-data/any.tar", KEY)
    assert f"{KEY}: cannot read s3://clipcore-data/any.tar" in str(err.value)
    assert "AWS_ENDPOINT_URL" in str(err.value)
    assert not (tmp_path / "cache").exists()


def test_a_protocol_without_its_package_says_what_to_install(tmp_path):
    with pytest.raises(DataError) as err:
        storage(tmp_path).local("nosuchproto://bucket/x.tar", KEY)
    assert "cannot open nosuchproto:// URLs" in str(err.value)


def test_a_read_only_cache_is_one_message(s3, tmp_path, tmpfs):
    url = s3.put("ro/list.txt", b"x")
    read_only = tmpfs("ro,size=64k")
    with pytest.raises(DataError) as err:
        Storage(read_only / "cache", 1 << 20, {}).local(url, KEY)
    assert str(err.value).startswith(f"dataset.cache_dir: the data cache {read_only / 'cache'} cannot be written "
                                      "(read-only file system)")


def test_a_full_cache_disk_is_one_message_and_leaves_no_partial_file(s3, tmp_path, tmpfs):
    url = s3.put("full/archive.tar", b"0" * (256 << 10))
    small = tmpfs("size=64k")
    with pytest.raises(DataError) as err:
        Storage(small / "cache", 1 << 30, {}).local(url, KEY)
    assert str(err.value).startswith(
        f"dataset.cache_dir: cannot fill the data cache {small / 'cache'} (no space left on")
    assert "lower dataset.cache_size_gb" in str(err.value)
    assert [p.name for p in (small / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []


def test_validate_reports_an_unwritable_cache_when_data_is_remote(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    spec = tmp_path / "clip.toml"
    spec.write_text(f'[dataset]\ncache_dir = "{tmp_path / "file" / "cache"}"\n'
                    '[[dataset.train.datasets]]\nimage_dir = "s3://bucket/train/images.tar.gz"\n')
    assert main(["validate", "-c", str(spec), "--action", "train"]) == 2
    err = capsys.readouterr().err
    assert f"dataset.cache_dir: {tmp_path / 'file' / 'cache'} cannot be created: {tmp_path / 'file'} is a file" in err


def test_an_archive_is_unpacked_once_for_folder_readers(tmp_path):
    import tarfile
    source = tmp_path / "src"
    (source / "a").mkdir(parents=True)
    (source / "a" / "x.png").write_bytes(b"png")
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "a", arcname="a")
        link = tarfile.TarInfo("../escape.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    cache = storage(tmp_path)
    folder = cache.folder(str(archive), KEY)
    assert [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()] == ["a/x.png"]
    inode = (folder / "a" / "x.png").stat().st_ino
    assert cache.folder(str(archive), KEY) == folder and (folder / "a" / "x.png").stat().st_ino == inode  # once
    assert cache.folder(str(source), KEY) == source  # a folder is itself
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError) as err:
        cache.folder(str(tmp_path / "broken.tar.gz"), KEY)
    assert f"{KEY}: {tmp_path / 'broken.tar.gz'} is not a readable tar archive" in str(err.value)


def test_credentials_in_storage_options_are_refused_without_echoing_them(tmp_path, capsys):
    spec = tmp_path / "clip.toml"
    spec.write_text('[dataset.storage_options]\nendpoint_url = "http://minio:9000"\n'
                    '[dataset.storage_options.client_kwargs]\naws_secret_access_key = "hunter2"\n')
    assert main(["validate", "-c", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "dataset.storage_options.client_kwargs.aws_secret_access_key: is a credential" in err
    assert "hunter2" not in err and "AWS_SECRET_ACCESS_KEY" in err
