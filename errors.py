"""The one exception type for user errors, and the helper every CLI uses to report it.

A user error (bad file, wrong shape, missing dependency, version mismatch) is raised as
:class:`LCError` with a one-line message that says what is wrong and what to do. Bugs
raise ordinary exceptions and keep their tracebacks. The library warns through ``warnings`` (a
library user silences or captures them); the CLIs print each as one line, ``warning: ...``.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from typing import NoReturn, TextIO


class LCError(Exception):
    """A problem the user can fix; the message is one line, shown without a traceback."""


def fail(message: str) -> NoReturn:
    """Raise :class:`LCError` with ``message``."""
    raise LCError(message)


def warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.showwarning`` for the CLIs: ``warning: <the message's first line>`` on stderr."""
    text = str(message).strip().splitlines() or [category.__name__]
    print(f"warning: {text[0]}", file=file or sys.stderr)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a CLI ``main``; an :class:`LCError` becomes one line on stderr and exit code 1, a warning one line
    ``warning: ...`` (each shown once per place that warns, as Python's default)."""
    with warnings.catch_warnings():
        warnings.showwarning = warning_line
        return _run(main, argv)


def _run(main: Callable[[list[str] | None], int | None], argv: list[str] | None) -> int:
    try:
        return int(main(argv) or 0)
    except LCError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, without a second error on exit.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - must outlive this function
        return 0
