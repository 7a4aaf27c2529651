"""Process-wide logging: one line per event, plain tracebacks, level from FHIRGOAL_LOG_LEVEL.

structlog left unconfigured renders exceptions with rich's traceback formatter, every frame's
local variables included. On the event loop that is a synchronous stall: a client dropping its
connection mid-body took ~2.5 s and 300 KB of log per request, and a RecursionError from deeply
nested input took minutes and a gigabyte (issue 12). Here exceptions are rendered as plain text
without locals (Python's own formatter, which also folds repeated recursion frames), and the level
filter runs before anything is rendered.
"""

from __future__ import annotations

import logging
import sys

import structlog

_configured: str | None = None


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of writing: a logger bound to the stream
    of the moment would keep writing to it after it is replaced and closed (a test harness's
    capture, a daemon's redirection), and every log line would then raise."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "INFO") -> None:
    """Configure structlog once per level (create_app and the CLI both call it)."""
    global _configured
    if _configured == level.upper():
        return
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # plain traceback, no locals
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            ),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    _configured = level.upper()


__all__ = ["configure_logging"]
