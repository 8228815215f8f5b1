"""The CLI: one function per verb, registered in one place; list options; clean failures."""

from __future__ import annotations

import typer.main

from deepmoney.cli import COMMANDS, app, expand_multi_value_options
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


def test_unknown_option_is_a_usage_error() -> None:
    result = run_cli("data", "build-pt", "--no-such-flag")
    assert_clean_error(result, "No such option")
    assert result.returncode == 2


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
