"""De-identified export of a study (PS3.15 Annex E basic profile) as a zip of DICOM files."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from remote_dx.api.deps import CurrentUser, DbSession, Store, require_roles
from remote_dx.core.models import Role
from remote_dx.imaging.deidentify import deidentify_study
from remote_dx.worklist.service import visibility

router = APIRouter(prefix="/api/v1", tags=["studies"])

#: Readers and above; technicians see their studies but do not take them out of the 医共体.
EXPORT_ROLES = (Role.READER, Role.SENIOR_READER, Role.SUPERVISOR, Role.ADMIN)

# PS3.5 §9.1: a UID is at most 64 characters of digits and dots.
StudyUID = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[0-9.]+$", description="Study Instance UID")
]


@router.get(
    "/studies/{study_uid}/deidentified",
    summary="The study de-identified (DICOM PS3.15 basic profile), as a zip of DICOM files",
    response_class=Response,
    responses={
        200: {"content": {"application/zip": {}}},
        403: {"description": "Only readers, senior readers, supervisors and admins export"},
        404: {"description": "No such study, or not visible to this user"},
    },
    dependencies=[Depends(require_roles(*EXPORT_ROLES))],
)
def export_deidentified(
    study_uid: StudyUID, request: Request, user: CurrentUser, session: DbSession, store: Store
) -> Response:
    result = deidentify_study(session, store, study_uid, scope=visibility(user))
    _note_export(request, len(result.files), len(result.skipped))
    return Response(
        content=result.zip_bytes(),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="deidentified-{result.study_uid}.zip"',
            "X-Instances-Left-Out": str(len(result.skipped)),
        },
    )


def _note_export(request: Request, files: int, skipped: int) -> None:
    """Name the audit record's action ``export`` for the audit middleware (issue 7)."""
    try:
        from remote_dx.api.audit import note
    except ImportError:  # the audit trail lands separately; the export works without it
        return
    note(request, action="export", detail={"deidentified": files, "left_out": skipped})
