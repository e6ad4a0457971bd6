import pytest

from attnsae.cli import COMMANDS, build_parser, main
from conftest import assert_one_line_error, run_cli


# the subcommands the README and docs promise, in the order `attnsae --help` lists them
COMMAND_NAMES = ["quickstart", "train", "cache", "eval", "dashboard", "attribute", "graph", "explore", "corpus", "info",
                 "models", "study"]


@pytest.mark.integration
def test_every_subcommand_has_help(capsys):
    """`attnsae --help` lists exactly the command table, each `attnsae CMD --help` works, and every module a
    command imports when it runs exists and holds the names it imports (a missing one must not go unnoticed)."""
    import ast
    import importlib
    import importlib.util
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
    import attnsae.cli.commands
    import attnsae.cli.flags

    imports = [n for module in (attnsae.cli, attnsae.cli.commands, attnsae.cli.flags)
               for n in ast.walk(ast.parse(inspect.getsource(module)))
               if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("attnsae")]
    assert len(imports) > 20
    for node in imports:
        module = importlib.import_module(node.module)
        for alias in node.names:
            submodule = importlib.util.find_spec(f"{node.module}.{alias.name}") if hasattr(module, "__path__") else None
            assert hasattr(module, alias.name) or submodule, f"{node.module}.{alias.name}"


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


@pytest.mark.integration
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


@pytest.mark.integration
def test_console_entry_point_runs():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("attnsae ")


def _options(command: str) -> dict[str, object]:
    """``{option string: argparse action}`` of ``attnsae COMMAND``."""
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    return {o: a for a in parser._actions for o in a.option_strings}


def test_train_has_a_flag_with_a_help_line_for_every_setting_and_nothing_else():
    """One flag per TrainConfig field (booleans also as --no-...), its help line the field's own, choices where the
    field has them; and `cache` offers only what a cache uses."""
    from dataclasses import fields

    from attnsae.training.config import CACHE_FIELDS, TrainConfig

    def flags(names):
        out = {"-h", "--help", "--config", "--debug"}
        for f in fields(TrainConfig):
            if f.name in names:
                out.add("--" + f.name.replace("_", "-"))
                if f.type in (bool, "bool"):
                    out.add("--no-" + f.name.replace("_", "-"))
        return out

    train = _options("train")
    names = [f.name for f in fields(TrainConfig)]
    assert set(train) == flags(names)
    for f in fields(TrainConfig):
        action = train["--" + f.name.replace("_", "-")]
        assert action.help.startswith(f.metadata["help"]) and len(f.metadata["help"]) > 15, f.name
        assert action.choices == f.metadata["rule"].get("choices"), f.name
    assert train["--architecture"].choices == ("relu", "topk", "jumprelu", "batchtopk", "matryoshka")
    assert train["--lr-schedule"].choices == ("constant", "cosine", "linear")
    assert train["--act-dtype"].choices == ("float32", "bfloat16")
    assert set(_options("cache")) == flags(CACHE_FIELDS) | {"--cache-out"}
    assert "--lr" not in _options("cache") and "--resume" not in _options("cache")


def test_every_sae_setting_reaches_the_sae_it_trains(capsys):
    """--aux-k, the JumpReLU bandwidth and starting threshold and apply_b_dec_to_input go from the command line
    through the config to the SAE's own config (two hops: TrainConfig -> SAESpec -> SAEConfig)."""
    from attnsae.cli import train_config

    parser = build_parser()
    args = parser.parse_args(["train", "--architecture", "jumprelu", "--jumprelu-bandwidth", "0.02",
                              "--jumprelu-init-threshold", "0.05", "--no-apply-b-dec-to-input", "--aux-k", "7"])
    (spec,) = train_config(args).specs(d_in=64)
    cfg = spec.sae_config(64, model_name="m")
    assert (cfg.jumprelu_bandwidth, cfg.jumprelu_init_threshold, cfg.apply_b_dec_to_input) == (0.02, 0.05, False)
    assert spec.aux_k == 7 and cfg.d_sae == 8 * 64 and cfg.hook_name == "blocks.0.attn.hook_z"
    assert main(["train", "--jumprelu-bandwidth", "0", "--out", "x"]) == 2
    assert "jumprelu_bandwidth must be > 0" in capsys.readouterr().err


@pytest.mark.integration
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
