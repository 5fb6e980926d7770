"""errors.py: the CLIs' one line per user error and per library warning."""

from __future__ import annotations

import warnings

import pytest

from layercascade.errors import fail, run_cli


def test_a_library_warning_is_one_line_in_a_cli_and_a_warning_outside(capsys: pytest.CaptureFixture) -> None:
    def main(argv: list[str] | None) -> int:
        warnings.warn("the first line\nand the rest", UserWarning)
        fail("what went wrong")

    showwarning = warnings.showwarning
    assert run_cli(main) == 1
    assert capsys.readouterr().err == "warning: the first line\nerror: what went wrong\n"
    assert warnings.showwarning is showwarning  # restored: a library user's handler stays theirs
    with pytest.warns(UserWarning, match="the first line"), pytest.raises(Exception, match="what went wrong"):
        main(None)
    assert capsys.readouterr().err == ""
