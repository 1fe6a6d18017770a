"""What the Celery app gets from operations: task counters, the task's study in the log
context, and JSON log lines when ``RDX_LOG_FORMAT=json`` (Celery replaces the root logger's
handlers when a worker starts, so the formatter is applied again after it has)."""

from __future__ import annotations

from typing import Any

_installed = False


def install_celery_hooks() -> None:
    global _installed
    if _installed:
        return
    from celery import signals

    from remote_dx.ops.metrics import install_task_metrics

    install_task_metrics()

    def json_formatting(logger: Any = None, **_: Any) -> None:
        from remote_dx.core.settings import get_settings
        from remote_dx.ops.logging import JsonFormatter

        if get_settings().log_format != "json" or logger is None:
            return
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())

    signals.after_setup_logger.connect(json_formatting, weak=False)
    signals.after_setup_task_logger.connect(json_formatting, weak=False)
    _installed = True
