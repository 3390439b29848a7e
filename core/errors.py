"""User-facing errors: one clear line, no traceback, non-zero exit code; and the exit codes themselves.

Exit codes (docs/robustness.md): 0 every record ok; 3 the run completed and wrote error records (bad input records,
each named in samples.jsonl); 2 the run could not run or was stopped (usage error, unreadable file, bad profile,
``--strict`` stop, resume conflict, a folder locked by another run); 130 interrupted (Ctrl-C); 1 only for an
unexpected internal error (a bug: Python's traceback is shown).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_CANNOT_RUN = 2
EXIT_ERROR_RECORDS = 3
EXIT_INTERRUPTED = 130


def outcome_exit_code(errors: int | None) -> int:
    """The exit code of a completed run: 0, or EXIT_ERROR_RECORDS when it wrote ``errors`` > 0 error records."""
    return EXIT_ERROR_RECORDS if errors else EXIT_OK


class LatentcheckError(Exception):
    """An error caused by the user's input or environment, shown as one line by the CLI."""

    exit_code = EXIT_CANNOT_RUN


class RecordError(LatentcheckError):
    """A bad input record; names the record and the field."""

    def __init__(self, record: str, field: str, message: str):
        self.record, self.field, self.message = record, field, message
        super().__init__(f"record {record}: field '{field}': {message}")

    def to_dict(self) -> dict:
        return {"record": self.record, "field": self.field, "message": self.message}


class ModelLoadError(LatentcheckError):
    """The checkpoint cannot be found or does not fit the profile."""


class ProfileError(LatentcheckError):
    """A profile file is invalid or does not match the checkpoint."""
