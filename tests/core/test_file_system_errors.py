"""Outputs that cannot be written (a folder under a regular file, a read-only file system, a full
disk) give one message naming the path and the cause, in every action; interrupted atomic writes
leave no debris; written files follow the umask."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from core.runtime.checkpoint import save_atomic, write_text_atomic
from core.cli.main import main
from core.errors import ClipcoreError, ConfigError, file_system_error
from core.spec.load import ACTIONS, check, load_config
from core.train.trainer import Trainer


def test_results_dir_under_a_regular_file_is_reported_for_every_action(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    cfg = load_config(None, [f"results_dir={tmp_path / 'file' / 'out'}"])
    for action in ACTIONS:
        with pytest.raises(ConfigError) as err:
            check(cfg, action, check_paths=True)
        assert f"results_dir: {tmp_path / 'file' / 'out' / action} cannot be created: {tmp_path / 'file'} is a file, "\
               "not a folder" in str(err.value)


def test_validate_reports_a_read_only_results_dir(tmp_path, tmpfs, capsys):
    read_only = tmpfs("ro,size=64k")
    spec = tmp_path / "clip.toml"
    spec.write_text(f'results_dir = "{read_only}"\n')
    assert main(["validate", "-c", str(spec), "--action", "export"]) == 2
    err = capsys.readouterr().err
    assert f"cannot be written: {read_only} is on a read-only file system" in err
    assert "Traceback" not in err


def test_a_full_disk_says_no_space_left_and_leaves_no_temp_file(tmpfs):
    small = tmpfs("size=256k")
    with pytest.raises(ClipcoreError) as err:
        save_atomic({"weights": torch.randn(500_000)}, small / "model.pth")
    assert str(err.value).startswith(f"{small / 'model.pth'}: cannot write: no space left on {small}")
    assert "unexpected pos" not in str(err.value)
    assert list(small.iterdir()) == []


def test_a_write_failing_on_a_read_only_file_system_is_one_message(monkeypatch, capsys, tmp_path):
    def read_only(cfg, args):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "out" / "x.h5"))

    monkeypatch.setattr("core.cli.inference.run", read_only)
    spec = tmp_path / "clip.toml"
    spec.write_text(f'results_dir = "{tmp_path}"\n[inference]\ntext_file = "{spec}"\n'
                    '[model]\ntype = "example-tiny"\npretrained = false\n')
    assert main(["inference", "-c", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'out' / 'x.h5'}: cannot write: read-only file system" in err
    assert "Traceback" not in err


def test_other_errors_are_not_disguised_as_file_system_errors():
    assert file_system_error(RuntimeError("shape mismatch")) is None
    assert file_system_error(OSError(errno.ENOENT, "No such file")) is None


def test_an_interrupted_checkpoint_save_leaves_debris_that_the_next_run_removes(tmp_path, training):
    out = tmp_path / "run" / "train"
    out.mkdir(parents=True)
    debris = out / ".step_3.pth.k2j4h1.tmp"
    debris.write_bytes(b"\0" * 4096)  # what a SIGKILL during torch.save leaves
    Trainer(training.config(tmp_path / "run", num_epochs=1))
    assert not debris.exists()


@pytest.mark.parametrize("write", [lambda p: save_atomic({"x": torch.zeros(2)}, p),
                                   lambda p: write_text_atomic("text", p)], ids=["torch.save", "text"])
def test_atomic_writes_follow_the_umask(tmp_path, write):
    old = os.umask(0o022)
    try:
        path = write(tmp_path / "file")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644
