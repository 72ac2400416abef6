"""Every error of the `dgrpo` command line as one clear line, with its secrets redacted.

An operator who mistypes a store, a config value or a run id needs to read what is wrong, not 60 to 440 lines of
traceback; `--debug` (anywhere on the command line, or DGRPO_DEBUG=1) prints the traceback as well. This module
is what the command line's two error paths share: `OneLineErrors`, the command group of the typer app
(`cli.app`), turns an exception raised by a command into that line and exit code 1; `dgrpo_pipelines.main`, the
`dgrpo` script's entry point, does the same for usage errors (unknown options, bad arguments: exit code 2), which
click raises before any command runs. It imports neither of them, so the imports go one way: main -> cli -> errors.
"""

import json
import os
import re
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 runs on its own copy of click; its exceptions are not click's
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - an older typer on click itself
    from click import exceptions as click_errors

from dgrpo.environment import check_environment
from dgrpo.runtime import termination
from dgrpo.runtime.redaction import redact_secrets
from dgrpo.store import redact

_TASK_LOGS = re.compile(r"\(task logs: (?P<path>[^)]+)\)")
_LAST_ERROR = re.compile(r"^(?:[\w.]+\.)?(?P<error>\w*(?:Error|Exception|Exit)\b.*)$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
"""Terminal colour codes, which kfp.local writes into its task logs."""
_NOT_OWN = re.compile(r'^(?:[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ |time=".*\bargo=true|Error: exit status \d+$'
                      r'|\[KFP Executor )')
"""Lines of a task's log that are not its code's own: KFP's launcher (glog), Argo's emissary (its log line and
its closing "Error: exit status N") and the KFP executor of a Python component."""
_TRACEBACK = "Traceback (most recent call last):"

OPERATOR_ERRORS = (ValueError, RuntimeError, OSError, LookupError)
"""What bad input, a bad store or a failed stage raises (ConfigError, StoreError, ContractError, ResumeError,
RegistryError and NonFiniteError are among their subclasses); anything else is a bug and says so."""


def one_line(text: str, limit: int = 600) -> str:
    """`text` on one line (whitespace collapsed), shortened to `limit` characters, secrets redacted."""
    flat = " ".join(redact(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def describe(exc: BaseException) -> str:
    """The line an operator reads for `exc`."""
    if isinstance(exc, click_errors.UsageError):
        command = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        return one_line(exc.format_message()) + command
    if isinstance(exc, click_errors.ClickException):
        return one_line(exc.format_message())
    message = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        message = f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, RuntimeError) and (found := _TASK_LOGS.search(message)):
        message += _last_task_error(Path(found["path"]))
    if isinstance(exc, OPERATOR_ERRORS):
        return one_line(message)
    return one_line(f"internal error, {type(exc).__name__}: {message} (a bug in dgrpo: rerun with --debug and "
                    "report the traceback)")


def _last_task_error(log: Path) -> str:
    """The last exception line a failed kfp.local task printed, so the one line says why it failed."""
    try:
        lines = log.read_text(errors="replace").splitlines()[-400:]
    except OSError:
        return ""
    for line in reversed(lines):
        if (found := _LAST_ERROR.match(line.strip())) is not None:
            return f"; the task's last error: {redact_secrets(found['error'])}"
    return ""


def own_last_error(lines: Iterable[str], limit: int = 300) -> str:
    """The last line of the error a task's own code wrote to its log, on one line, secrets redacted; "" if none.

    It is the last exception line after the last Python traceback (a message spanning lines, or an exception note,
    ends after it), else the last line the code wrote (a shell's or a compiled program's stderr). Lines of the
    machinery around it (`_NOT_OWN`) are skipped: their "exit status 1" says nothing a person can act on."""
    own = [s for line in lines if (s := ANSI.sub("", line).strip()) and not _NOT_OWN.match(s)]
    if _TRACEBACK in own:
        after = own[len(own) - own[::-1].index(_TRACEBACK):]
        own = [s for s in after if _LAST_ERROR.match(s)] or after or own
    return one_line(redact_secrets(own[-1]), limit) if own else ""


def debugging() -> bool:
    """Whether tracebacks are wanted (`--debug`, which `main` turns into DGRPO_DEBUG=1 for the app, or the
    variable itself)."""
    return os.environ.get("DGRPO_DEBUG", "") not in ("", "0")


def report(exc: BaseException, debug: bool, as_json: bool = False) -> None:
    """Print `exc` as the one `error:` line on stderr, after its (redacted) traceback when debugging; under
    `--json`, as one JSON object {"error", "type", "exit_code"} instead, so a script reads errors as it reads
    results."""
    if debug:
        print(redact("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
    if as_json:
        code = exc.exit_code if isinstance(exc, click_errors.ClickException) else 1
        print(json.dumps({"error": describe(exc), "type": type(exc).__name__, "exit_code": code}), file=sys.stderr)
    else:
        print(f"error: {describe(exc)}", file=sys.stderr)


def wants_json(args: list[str]) -> bool:
    """Whether the command line asks for JSON output (`--json`, before any `--` separator)."""
    return "--json" in (args[:args.index("--")] if "--" in args else args)


class OneLineErrors(TyperGroup):
    """The app's command group: an exception from a command becomes one line and exit code 1."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        as_json = wants_json([*ctx._protected_args, *ctx.args])
        try:
            check_environment()  # before any request: a misspelled DGRPO_* variable would be ignored
            return super().invoke(ctx)
        except (click_errors.ClickException, typer.Exit, typer.Abort, KeyboardInterrupt):
            raise  # usage errors and exits: click's (or `main`'s) to show
        except BrokenPipeError as exc:  # before typer's own handler, which exits 1
            raise typer.Exit(reader_gone()) from exc
        except Exception as exc:  # noqa: BLE001 - every error ends as one line; --debug shows where it came from
            report(exc, debugging(), as_json)
            raise typer.Exit(termination.EXIT_CODE if isinstance(exc, termination.Terminated) else 1) from exc


def reader_gone() -> int:
    """`dgrpo report RUN | head`: the reader has what it wanted, so no "Broken pipe" and exit code 0; what is left
    in stdout's buffer goes to /dev/null so that Python's own flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no file descriptor (captured by a test)
        pass
    finally:
        os.close(devnull)
    return 0

