"""What every command-line shell of deepmoney shares: global options, argument spelling, and how it ends.

`deepmoney …` (cli.py) and `python -m deepmoney.train …` (the pods' command) are both typer apps
run through `run_app`, so they end the same way: the command's result on stdout and nothing else;
a user mistake — a bad flag, path, value or input — as one `error: …` line on stderr with exit
code 2 (never a traceback); Ctrl-C as 130 and SIGTERM as 143, both after the command has cleaned
up (an interrupted run can be resumed by running the same command again).
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

try:  # typer vendors its own click (0.2x and later): its usage errors are these classes, not click's
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as click_errors

from deepmoney.errors import EXIT_SIGINT, EXIT_SIGTERM, EXIT_USER, UserError
from deepmoney.logs import setup_logging

# Options that take several values after one flag (`--input a b c`) as well as repeated flags.
MULTI_VALUE_OPTIONS = {"--input", "--tokenizer-corpus", "--benchmark", "--data"}


@dataclass
class GlobalOptions:
    """Options given before the verb, and what a shell hands its commands."""

    config: Path | None = None
    quiet: bool = False
    services: dict[str, Any] = field(default_factory=dict)  # e.g. the training runner of this shell


def global_options(ctx: typer.Context) -> GlobalOptions:
    """The root command's options (defaults when a command is invoked directly)."""
    return ctx.find_root().obj or GlobalOptions()


def make_app(name: str, help_text: str, services: dict[str, Any] | None = None) -> typer.Typer:
    """A typer app with the global options (--config, --quiet, --verbose) and deepmoney's settings."""
    app = typer.Typer(name=name, help=help_text, no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False, rich_markup_mode=None)  # fmt: skip

    @app.callback()
    def root(
        ctx: typer.Context,
        config: Annotated[
            Path | None, typer.Option("--config", "-c", help="YAML config file (also DEEPMONEY_CONFIG).")
        ] = None,
        quiet: Annotated[
            bool, typer.Option("--quiet", "-q", help="No progress bars; warnings and errors only.")
        ] = False,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    ) -> None:
        setup_logging(quiet=quiet, verbose=verbose)
        ctx.obj = GlobalOptions(config, quiet, dict(services or {}))

    root.__doc__ = help_text
    return app


ROOT_OPTIONS_WITH_VALUE = ("--config", "-c")
ROOT_FLAGS = ("--verbose", "-v")
# Hoisted only after a verb without a --quiet of its own (`data build-pt` and `synth` have one: no
# progress bar, logs kept); after any other verb, -q is the root's (warnings and errors only).
QUIET_FLAGS = ("--quiet", "-q")


def split_root_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """(root options, the rest): root options may come anywhere (`deepmoney train --config F`)."""
    root: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in ROOT_OPTIONS_WITH_VALUE and i + 1 < len(argv):
            root += argv[i : i + 2]
            i += 2
            continue
        if argv[i].startswith("--config=") or argv[i] in ROOT_FLAGS:
            root.append(argv[i])
        else:
            rest.append(argv[i])
        i += 1
    return root, rest


def hoist_root_options(argv: list[str], app: typer.Typer | None = None) -> list[str]:
    """`argv` with the root options first, where click wants them (before the verb).

    Given `app`, a -q/--quiet after a verb that has no --quiet of its own is hoisted too.
    """
    root, rest = split_root_options(argv)
    quiet = [a for a in rest if a in QUIET_FLAGS]
    # Only then is the command tree built to look the verb up (typer builds it again to run it).
    if quiet and app is not None and not _verb_has_quiet(app, rest):
        root += quiet
        rest = [a for a in rest if a not in QUIET_FLAGS]
    return [*root, *rest]


def _verb_has_quiet(app: typer.Typer, argv: list[str]) -> bool:
    """Whether the verb that `argv` names (after the root options) declares its own --quiet."""
    command: Any = typer.main.get_command(app)
    for token in argv:
        if token in QUIET_FLAGS:
            continue
        sub = getattr(command, "commands", {}).get(token)
        if sub is None:
            break
        command = sub
    if getattr(command, "commands", None):  # still a group: the root's own --quiet
        return True
    return any("--quiet" in getattr(param, "opts", []) for param in command.params)


def expand_multi_value_options(argv: list[str]) -> list[str]:
    """`--input a b --x` -> `--input a --input b --x`, so both spellings of a list option work."""
    out: list[str] = []
    current: str | None = None
    first = False
    for token in argv:
        if token in MULTI_VALUE_OPTIONS:
            current, first = token, True
            out.append(token)
        elif token.startswith("-"):
            current = None
            out.append(token)
        elif current and not first:
            out.extend([current, token])
        else:
            first = False
            out.append(token)
    return out


class Interrupted(BaseException):
    """SIGINT/SIGTERM. A BaseException so that no `except Exception` (ours or click's) swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.code = EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def handle_signals() -> None:
    """Make SIGTERM and SIGINT raise `Interrupted`, so that cleanup (finally blocks) runs before the process ends."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def _usage_line(exc: Any, prog: str) -> str:
    """Click's usage error as one line, naming the command's --help."""
    command = exc.ctx.command_path if exc.ctx is not None else prog
    if isinstance(exc, click_errors.NoSuchOption) and exc.ctx is not None:
        # click's fuzzy "Possible options" often offers only --help; name what the command takes.
        names = [opt for param in exc.ctx.command.params for opt in getattr(param, "opts", [])
                 if opt.startswith("--") and opt != "--help"]  # fmt: skip
        if names:
            takes = ", ".join(names)
            return f"error: no such option: {exc.option_name}; {command} takes {takes} (see: {command} --help)"
    return f"error: {exc.format_message()} (see: {command} --help)"


def run_app(app: typer.Typer, argv: list[str], prog: str) -> None:
    """Run `app` on `argv` and exit the deepmoney way (see the module docstring)."""
    handle_signals()
    try:
        args = expand_multi_value_options(hoist_root_options(argv, app))
        code = app(args=args, prog_name=prog, standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:  # a group without its verb: what it offers, as click does
        typer.echo(exc.ctx.get_help() if exc.ctx is not None else str(exc), err=True)
        sys.exit(EXIT_USER)
    except click_errors.UsageError as exc:
        typer.echo(_usage_line(exc, prog), err=True)
        sys.exit(EXIT_USER)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(EXIT_SIGINT)
    except UserError as exc:
        message = str(exc)
        typer.echo(message if message.startswith("config error") else f"error: {message}", err=True)
        sys.exit(getattr(exc, "exit_code", EXIT_USER))  # ServiceUnavailable: EXIT_TRANSIENT
    except Interrupted as exc:
        typer.echo(f"interrupted ({exc}): nothing was published; run the same command again to resume", err=True)
        sys.exit(exc.code)
    sys.exit(code if isinstance(code, int) else 0)
