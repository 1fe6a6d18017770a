"""Errors of the reporting service; the API maps each to its HTTP status."""

from __future__ import annotations


class ReportError(Exception):
    status_code = 400


class ReportNotFound(ReportError):
    """No such study, or not visible to the user (existence is not revealed)."""

    status_code = 404


class NotPermitted(ReportError):
    status_code = 403


class ReportConflict(ReportError):
    """The report's state (or the lease) does not allow this step now."""

    status_code = 409


class InvalidReport(ReportError):
    status_code = 422
