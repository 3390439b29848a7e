"""click's ``Abort`` follows the documented exit codes (docs/robustness.md): Ctrl-C (also inside a prompt) is 130;
any other abort -- a command's own ``typer.Abort()``, a declined confirmation, end of input at a prompt -- means the
command did not run: one line on stderr and exit 2, never 1 (which is reserved for bugs) and never a traceback."""

from __future__ import annotations

import sys

import click
import pytest
import typer

from latentcheck.cli.app import app, main
from latentcheck.core.errors import EXIT_CANNOT_RUN, EXIT_INTERRUPTED


def _ctrl_c_in_prompt() -> None:
    try:  # what click.prompt does when the user presses Ctrl-C at the prompt
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise click.Abort() from None


CASES = {
    "typer-abort": (lambda: (_ for _ in ()).throw(typer.Abort()), "", EXIT_CANNOT_RUN, "error: aborted"),
    "declined": (lambda: typer.confirm("Really?", abort=True), "n\n", EXIT_CANNOT_RUN, "error: aborted"),
    "eof-at-prompt": (lambda: typer.prompt("Name"), "", EXIT_CANNOT_RUN, "error: aborted: end of input at a prompt"),
    "ctrl-c-in-prompt": (_ctrl_c_in_prompt, "", EXIT_INTERRUPTED, "interrupted (rerun with --resume to continue)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_abort_exit_codes(case, monkeypatch, capsys):
    body, stdin, code, line = CASES[case]
    name = f"x-abort-{case}"
    app.command(name, hidden=True)(lambda: body())
    monkeypatch.setattr(app, "registered_commands", list(app.registered_commands))  # restored after the test
    monkeypatch.setattr(sys, "argv", ["latentcheck", name])
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(stdin))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == code, err
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("Really?") and not x.startswith("Name")]
    assert lines and lines[-1].startswith(line) and "Traceback" not in err, err
