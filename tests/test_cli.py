"""The CLI: one function per verb, registered in one place; list options; clean failures."""

from __future__ import annotations

import typer.main

from deepmoney.cli import COMMANDS, app
from deepmoney.shell import expand_multi_value_options, hoist_root_options
from tests.conftest import assert_clean_error, run_cli


def _registered(group: typer.Typer | None = None, prefix: str = "") -> dict[str, object]:
    command = typer.main.get_command(group or app)
    found: dict[str, object] = {}
    for name, sub in command.commands.items():  # type: ignore[attr-defined]
        if hasattr(sub, "commands"):
            for verb, leaf in sub.commands.items():
                found[f"{prefix}{name} {verb}"] = leaf.callback
        else:
            found[f"{prefix}{name}"] = sub.callback
    return found


def test_command_table_and_parser_agree() -> None:
    registered = _registered()
    assert set(registered) == set(COMMANDS)
    for name, function in COMMANDS.items():
        assert registered[name].__name__ == function.__name__


def test_multi_value_options_accept_both_spellings() -> None:
    assert expand_multi_value_options(["data", "build-pt", "--input", "a", "b", "--output", "o"]) == [
        "data",
        "build-pt",
        "--input",
        "a",
        "--input",
        "b",
        "--output",
        "o",
    ]
    assert expand_multi_value_options(["--input", "a", "--input", "b"]) == ["--input", "a", "--input", "b"]


def test_help_lists_every_verb() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for group in ("config", "model", "data", "quickstart"):
        assert group in result.stdout


def test_quiet_after_any_verb_is_the_roots_unless_the_verb_has_its_own() -> None:
    evaluate = ["evaluate", "--model", "m", "--data", "d", "-q"]
    assert hoist_root_options(evaluate, app) == ["-q", *evaluate[:-1]]  # evaluate has no --quiet: the root's
    build = ["data", "build-pt", "--input", "a", "--quiet", "-v"]
    assert hoist_root_options(build, app) == ["-v", *build[:-1]]  # build-pt's own --quiet stays with it
    assert hoist_root_options(["-q", "promote"], app) == ["-q", "promote"]
    result = run_cli("config", "show", "-q")  # a verb without --quiet of its own accepts it after the verb
    assert result.returncode == 0, result.stderr


def test_unknown_option_is_a_usage_error_naming_the_options_the_command_takes() -> None:
    result = run_cli("data", "build-pt", "--model", "x")  # a hurried user's guess: the flag is --tokenizer
    assert_clean_error(result, "no such option: --model", "--tokenizer", "deepmoney data build-pt --help")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "Possible options: --help" not in result.stderr


def test_missing_tokenizer_directory(tmp_path) -> None:
    (tmp_path / "a.md").write_text("# A\n\n" + "text " * 100)
    result = run_cli(
        "-q",
        "data",
        "build-pt",
        "--input",
        str(tmp_path),
        "--tokenizer",
        str(tmp_path / "nope"),
        "--output",
        str(tmp_path / "out"),
    )
    assert_clean_error(result, "no Hugging Face tokenizer", str(tmp_path / "nope"))
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_usage_errors_are_one_line(tmp_path) -> None:
    for args in (["data", "build-pt", "--no-such-flag"], ["promote", "--name", "x", "--version", "abc"],
                 ["no-such-verb"], ["evaluate", "--model", "m"]):  # fmt: skip
        result = run_cli(*args)
        assert_clean_error(result, "error: ", "--help")
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_unknown_environment_section_is_an_error() -> None:
    result = run_cli("config", "show", env={"DEEPMONEY_DTA__BLOCK_SIZE": "512"})
    assert_clean_error(result, "DEEPMONEY_DTA__BLOCK_SIZE", "no field 'dta'", "data")
    assert result.returncode == 2 and not result.stdout


def test_quiet_stdout_carries_only_the_results(tmp_path, tiny_model, mlflow_server) -> None:
    """Under -q: stdout is each command's summary and nothing else; stderr has no INFO lines or progress bars."""
    from tests.conftest import SAMPLE_CORPUS

    tracking = {"MLFLOW_TRACKING_URI": mlflow_server, "DEEPMONEY_TRAIN__MLFLOW__LOG_MODEL": "none",
                "DEEPMONEY_DATA__HELDOUT_FRACTION": "0.3"}  # fmt: skip
    pt, out = tmp_path / "pt", tmp_path / "run"
    steps = {
        "data build-pt": (["data", "build-pt", "--input", str(SAMPLE_CORPUS), "--tokenizer", str(tiny_model),
                           "--output", str(pt), "--block-size", "128"], "pt corpus written:", 6),
        "train": (["train", "--model", str(tiny_model), "--data", str(pt), "--output", str(out), "--launcher",
                   "local", "--nproc", "1", "--zero", "0", "--max-steps", "2", "--micro-batch", "2"], "trained pt:", 3),
        "evaluate": (["evaluate", "--model", str(out / "final"), "--data", str(pt), "--output", str(tmp_path / "e"),
                      "--no-chain"], "evaluation written:", None),
    }  # fmt: skip
    for name, (args, first, lines) in steps.items():
        result = run_cli("-q", *args, env=tracking)
        assert result.returncode == 0, (name, result.stderr[-3000:])
        assert result.stdout.startswith(first), (name, result.stdout)
        assert "View run" not in result.stdout and "View experiment" not in result.stdout, name
        assert lines is None or len(result.stdout.strip().splitlines()) == lines, (name, result.stdout)
        noise = [line for line in result.stderr.splitlines() if " INFO " in line or "%|" in line]
        assert not noise, (name, noise[:5])
