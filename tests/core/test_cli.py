"""The `core` command line: TAO's options, complete --help, one message for bad input."""

import pytest

from core.cli.main import COMMANDS, action_overrides, build_parser, main


def test_every_command_is_available_and_documented(capsys):
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([name, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert f"usage: core {name}" in text and len(text.splitlines()) > 5, name


def test_tao_options_become_overrides_and_explicit_overrides_win():
    args = build_parser().parse_args(["train", "-e", "spec.toml", "-r", "/out", "-g", "2", "train.num_gpus=4"])
    assert args.config == "spec.toml"
    assert action_overrides(args, "train") == ["results_dir=/out", "train.num_gpus=2", "train.num_gpus=4"]
    args = build_parser().parse_args(["evaluate", "--experiment_spec_file", "s.toml", "-g", "3"])
    assert action_overrides(args, "evaluate") == ["evaluate.num_gpus=3"]


def test_gpu_shortcut_only_where_the_action_has_num_gpus(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "-g", "2"])
    assert "unrecognized arguments: -g" in capsys.readouterr().err


def test_bad_spec_is_one_message_and_exit_2(tmp_path, capsys):
    spec = tmp_path / "clip.toml"
    spec.write_text("[train]\nnum_epochs = \"ten\"\n")
    assert main(["validate", "-c", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train.num_epochs" in err and "Traceback" not in err


def test_process_count_must_match_the_actions_num_gpus(monkeypatch):
    from core.spec.config import ExperimentConfig
    from core.runtime.distributed import init_world
    from core.errors import ConfigError

    cfg = ExperimentConfig()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError) as err:
        init_world(cfg.evaluate, "evaluate")
    assert str(err.value).startswith("evaluate.num_gpus: torchrun started WORLD_SIZE=2 processes")
    assert "evaluate.num_gpus = 1" in str(err.value) and "-g 2" in str(err.value)


def test_commands_show_info_logs_of_clipcore_and_plugin_packages(capsys):
    import logging

    from core.cli.main import show_logs

    show_logs()
    show_logs()  # once per process: no second handler
    assert sum(getattr(h, "clipcore_cli", False) for h in logging.getLogger("clipcore").handlers) == 1
    logging.getLogger("clipcore.data").info("indexed 12 images")
    logging.getLogger("backbones.siglip2.loading").info("a plugin's note")
    logging.getLogger("urllib3.connectionpool").info("a library's chatter")
    err = capsys.readouterr().err
    assert "indexed 12 images" in err and "a plugin's note" in err and "chatter" not in err


def test_overrides_may_follow_an_actions_options(tmp_path, capsys):
    spec = tmp_path / "clip.toml"
    spec.write_text('[model]\ntype = "example-tiny"\npretrained = false\nimage_size = 32\n')
    assert main(["export", "-c", str(spec), "--encoder", "separate", "export.input_height=32",
                 "export.input_width=32", "results_dir=" + str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "export").glob("*.onnx")) == ["example-tiny_text.onnx",
                                                                          "example-tiny_vision.onnx"]
    with pytest.raises(SystemExit) as stopped:
        main(["export", "-c", str(spec), "--encoder", "separate", "--bogus"])
    assert stopped.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
