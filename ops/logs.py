"""Where an operator's command sends the library's structlog lines: stderr, so that stdout holds ``--json``
output alone."""

from __future__ import annotations

import sys

import structlog


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (a test's capture may replace it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def logs_to_stderr() -> None:
    """The library's structlog lines go to stderr: stdout is for ``--json`` output alone."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(_Stderr()))  # type: ignore[arg-type]
