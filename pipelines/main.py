"""The `dgrpo` script's entry point: the typer app (`cli.app`) run with every error as one line.

It sits above both modules it joins: `cli` builds the app on `errors.OneLineErrors`, and this module runs that
app, reporting usage errors (raised by click before any command runs) through the same `errors` functions. Kept
apart from `errors` so that `errors` never imports `cli`: no import cycle inside `dgrpo_pipelines`.
"""

import logging
import os
import sys
import threading

import typer
from dgrpo_pipelines.cli import app
from dgrpo_pipelines.errors import click_errors, debugging, describe, reader_gone, report, wants_json


def main(argv: list[str] | None = None) -> int:
    """Run the `dgrpo` command line with `argv` (default: sys.argv[1:]) and return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or debugging()
    args = [a for a in args if a != "--debug"]
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    saved = threading.excepthook, os.environ.get("DGRPO_DEBUG")
    if debug:
        os.environ["DGRPO_DEBUG"] = "1"  # for OneLineErrors, inside the app
    else:  # a helper thread (the progress display) that dies says so in one line, not a traceback
        threading.excepthook = _thread_died
    try:
        return _run(args, debug)
    finally:
        threading.excepthook = saved[0]
        if saved[1] is None:
            os.environ.pop("DGRPO_DEBUG", None)
        else:
            os.environ["DGRPO_DEBUG"] = saved[1]


def _thread_died(hook: threading.ExceptHookArgs) -> None:
    what = describe(hook.exc_value) if hook.exc_value is not None else hook.exc_type.__name__
    print(f"warning: thread {hook.thread.name if hook.thread else '?'} stopped: {what}", file=sys.stderr)


def _run(args: list[str], debug: bool) -> int:
    try:
        code = typer.main.get_command(app).main(args=args, prog_name="dgrpo", standalone_mode=False)
        sys.stdout.flush()  # a reader that closed the pipe is found here, not at the interpreter's exit
        return code if isinstance(code, int) else 0
    except BrokenPipeError:
        return reader_gone()
    except click_errors.NoArgsIsHelpError as exc:
        exc.show()
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - usage errors, and anything raised outside a command
        report(exc, debug, wants_json(args))
        return exc.exit_code if isinstance(exc, click_errors.ClickException) else 1


if __name__ == "__main__":
    sys.exit(main())
