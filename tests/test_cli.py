import pytest

from attnsae.cli import build_parser, COMMANDS
from conftest import run_cli


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    assert {"info", "corpus", "train", "cache", "quickstart"} <= set(COMMANDS)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            parser.parse_args([name, "--help"])
        assert e.value.code == 0
        assert "usage: attnsae " + name in capsys.readouterr().out


def test_console_entry_point_runs():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("attnsae ")


def test_train_exposes_every_recipe_setting():
    from dataclasses import fields

    from attnsae.training.trainer import TrainConfig

    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in help_text


def test_unwritable_output_folder_is_one_line_error(tmp_path):
    from conftest import assert_one_line_error

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for cmd in ("quickstart", "train"):
        proc = run_cli(cmd, "--out", str(blocker / "out"))
        assert_one_line_error(proc, "cannot create output folder")
        assert not (blocker / "out").exists()
    assert blocker.read_text() == "not a folder"
