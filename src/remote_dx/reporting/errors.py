"""Errors of the reporting service (the API maps each to its HTTP status)."""

from __future__ import annotations

from remote_dx.core.errors import Conflict, Forbidden, Invalid, NotFound, ServiceError


class ReportError(ServiceError):
    """Base of the reporting service's refusals."""


class ReportNotFound(ReportError, NotFound):
    """No such study, or not visible to the user (existence is not revealed)."""


class NotPermitted(ReportError, Forbidden):
    pass


class ReportConflict(ReportError, Conflict):
    """The report's state (or the lease) does not allow this step now."""


class InvalidReport(ReportError, Invalid):
    pass
