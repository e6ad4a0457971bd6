import pytest

from attnsae.cli import COMMANDS, build_parser, main
from conftest import assert_one_line_error, run_cli


# the subcommands the README and docs promise, in the order `attnsae --help` lists them
COMMAND_NAMES = ["quickstart", "train", "cache", "eval", "dashboard", "attribute", "explore", "corpus", "info", "models",
                 "study"]


def test_every_subcommand_has_help(capsys):
    """`attnsae --help` lists exactly the command table, each `attnsae CMD --help` works, and every module a
    command imports when it runs exists and holds the names it imports (a missing one must not go unnoticed)."""
    import ast
    import importlib
    import inspect

    import attnsae.cli

    assert list(COMMANDS) == COMMAND_NAMES
    top = run_cli("--help")
    assert top.returncode == 0, top.stderr
    listed = [line.split()[0] for line in top.stdout.splitlines()
              if line.startswith("    ") and not line.startswith("     ")]
    assert listed == COMMAND_NAMES
    for name in COMMAND_NAMES:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert capsys.readouterr().out.startswith("usage: attnsae " + name)
    imports = [n for n in ast.walk(ast.parse(inspect.getsource(attnsae.cli)))
               if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("attnsae")]
    assert len(imports) > 20
    for node in imports:
        module = importlib.import_module(node.module)
        for alias in node.names:
            assert hasattr(module, alias.name), f"{node.module}.{alias.name}"


def _main(*argv: str):
    """The exit status of ``attnsae ARGV`` run in this process (what it prints goes to capsys)."""
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code
    return rc


# (argv, what the one error line must name); SAE and OUT stand for paths under tmp_path that do not exist
BAD_NUMBERS = [
    (["dashboard", "--out", "OUT", "--sae", "SAE", "--n-top", "0"], "--n-top"),
    (["dashboard", "--out", "OUT", "--sae", "SAE", "--n-bands", "0"], "--n-bands"),
    (["dashboard", "--out", "OUT", "--sae", "SAE", "--per-band", "-1"], "--per-band"),
    (["dashboard", "--out", "OUT", "--sae", "SAE", "--batch-size", "0"], "--batch-size"),
    (["dashboard", "--out", "OUT", "--sae", "SAE", "--n-tokens", "0"], "--n-tokens"),
    (["dashboard", "--out", "OUT", "--sae", "SAE", "--seed", "-1"], "--seed"),
    (["attribute", "--sae", "SAE", "--prompt", "x", "--feature", "0", "--top-k", "0"], "--top-k"),
    (["attribute", "--sae", "SAE", "--prompt", "x", "--feature", "0", "--depth", "-1"], "--depth"),
    (["attribute", "--sae", "SAE", "--prompt", "x", "--feature", "-1"], "--feature"),
    (["attribute", "--sae", "SAE", "--prompt", "x", "--feature", "1.5"], "--feature"),
    (["attribute", "--sae", "SAE", "--prompt", "x", "--feature", "0", "--position", "-2"], "--position"),
    (["eval", "--out", "OUT", "--sae", "SAE", "--batch-size", "0"], "--batch-size"),
    (["eval", "--out", "OUT", "--sae", "SAE", "--n-tokens", "-5"], "--n-tokens"),
    (["eval", "--out", "OUT", "--sae", "SAE", "--context-size", "1"], "--context-size"),
    (["quickstart", "--out", "OUT", "--train-tokens", "0"], "--train-tokens"),
    (["quickstart", "--out", "OUT", "--eval-tokens", "-1"], "--eval-tokens"),
    (["quickstart", "--out", "OUT", "--dashboard-tokens", "-1"], "--dashboard-tokens"),
    (["corpus", "--max-tokens", "0"], "--max-tokens"),
    (["train", "--out", "OUT", "--lr", "-1"], "lr"),
    (["train", "--out", "OUT", "--lr", "fast"], "lr"),
    (["train", "--out", "OUT", "--batch-size", "0"], "batch_size"),
    (["train", "--out", "OUT", "--log-every", "0"], "log_every"),
    (["train", "--out", "OUT", "--betas", "0.9"], "betas"),
    (["train", "--out", "OUT", "--threads", "-1"], "threads"),
    (["train", "--out", "OUT", "--total-tokens", "1.5"], "total_tokens"),
]


@pytest.mark.parametrize("argv,needle", BAD_NUMBERS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_numeric_flags_are_one_line_errors(argv, needle, tmp_path, capsys):
    paths = {"SAE": str(tmp_path / "no_sae"), "OUT": str(tmp_path / "out")}
    rc = _main(*(paths.get(a, a) for a in argv))
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [l for l in err.splitlines() if l.startswith("attnsae: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_bad_numeric_flag_through_the_console_entry_point(tmp_path):
    proc = run_cli("dashboard", "--sae", str(tmp_path / "no_sae"), "--n-top", "0", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert_one_line_error(proc, "--n-top", "must be positive, got 0")


def test_valid_numeric_flags_are_accepted():
    from attnsae.cli import train_config

    p = build_parser()
    a = p.parse_args(["dashboard", "--sae", "s", "--n-top", "1", "--n-bands", "1", "--per-band", "0",
                      "--batch-size", "1", "--n-tokens", "1", "--seed", "0"])
    assert (a.n_top, a.n_bands, a.per_band, a.batch_size, a.n_tokens, a.seed) == (1, 1, 0, 1, 1, 0)
    a = p.parse_args(["attribute", "--sae", "s", "--prompt", "x", "--feature", "0", "--top-k", "1", "--depth", "0",
                      "--position", "0"])
    assert (a.feature, a.top_k, a.depth, a.position) == (0, 1, 0, 0)
    a = p.parse_args(["eval", "--sae", "s", "--batch-size", "1", "--n-tokens", "1", "--context-size", "2"])
    assert (a.batch_size, a.n_tokens, a.context_size) == (1, 1, 2)
    a = p.parse_args(["quickstart", "--train-tokens", "1", "--eval-tokens", "1", "--dashboard-tokens", "0"])
    assert (a.train_tokens, a.eval_tokens, a.dashboard_tokens) == (1, 1, 0)
    assert p.parse_args(["corpus", "--max-tokens", "1"]).max_tokens == 1
    cfg = train_config(p.parse_args(["train", "--lr", "1e-3", "--batch-size", "1", "--buffer-size", "1",
                                     "--log-every", "1", "--betas", "0.9", "0.999", "--threads", "1",
                                     "--total-tokens", "4e3"]))
    assert (cfg.lr, cfg.batch_size, cfg.log_every, cfg.betas, cfg.threads, cfg.total_tokens) == (
        1e-3, 1, 1, [0.9, 0.999], 1, 4000)


def test_console_entry_point_runs():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("attnsae ")


def test_train_exposes_every_recipe_setting():
    from dataclasses import fields

    from attnsae.training.config import TrainConfig

    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in help_text


def test_unwritable_output_folder_is_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for cmd in ("quickstart", "train"):
        proc = run_cli(cmd, "--out", str(blocker / "out"))
        assert_one_line_error(proc, "cannot create output folder")
        assert not (blocker / "out").exists()
    assert blocker.read_text() == "not a folder"


def test_usage_errors_are_one_line_with_exit_2(capsys):
    for argv in (["train", "--no-such-flag"], ["eval"], ["no-such-command"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("attnsae: error:") and len(err.strip().splitlines()) == 1, err


def test_a_bug_is_one_line_with_exit_3_and_debug_shows_the_traceback(monkeypatch, capsys):
    def boom(args):
        raise ZeroDivisionError("oops")

    help, add_args, _ = COMMANDS["info"]
    monkeypatch.setitem(COMMANDS, "info", (help, add_args, boom))
    assert main(["info"]) == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("attnsae: error: internal error (a bug in attnsae)")
    assert "ZeroDivisionError: oops" in lines[0] and "--debug" in lines[0]
    for argv in (["--debug", "info"], ["info", "--debug"]):
        with pytest.raises(ZeroDivisionError):
            main(argv)
