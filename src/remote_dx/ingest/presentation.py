"""Presentation contexts the hub accepts (PS3.8 §7.1.1.13, PS3.7 Annex D.3.3.2).

The receiver takes every storage SOP class pynetdicom knows (PS3.4 Annex B.5: images, 12-lead /
general / ambulatory ECG waveforms, SR, encapsulated PDF, ...) in every transfer syntax a
township modality is likely to send. Instances are stored exactly as received, so accepting a
compressed syntax costs nothing here: decoding is the imaging stage's business.
"""

from __future__ import annotations

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import _STORAGE_CLASSES, Verification

#: Uncompressed first: the requestor's order decides, but this is also the order we log.
STORAGE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,  # 1.2.840.10008.1.2.4.50
    JPEGExtended12Bit,  # .51
    JPEGLossless,  # .57
    JPEGLosslessSV1,  # .70
    JPEGLSLossless,  # .80
    JPEGLSNearLossless,  # .81
    JPEG2000Lossless,  # .90
    JPEG2000,  # .91
    JPEG2000MCLossless,  # .92
    JPEG2000MC,  # .93
    HTJ2KLossless,  # .201
    HTJ2KLosslessRPCL,  # .202
    HTJ2K,  # .203
    RLELossless,  # 1.2.840.10008.1.2.5
)


def storage_sop_classes() -> list[UID]:
    """Every storage SOP class pynetdicom knows, ECG waveforms and encapsulated PDF included."""
    return [UID(uid) for uid in _STORAGE_CLASSES.values()]


def supported_contexts() -> list[PresentationContext]:
    """The acceptor's contexts: Verification plus every storage SOP class × transfer syntax.

    The 128-context limit of PS3.8 binds only what one requestor proposes; an acceptor may support
    any number.
    """
    contexts = [build_context(Verification, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])]
    for sop_class in storage_sop_classes():
        context = build_context(sop_class, list(STORAGE_TRANSFER_SYNTAXES))
        # SCP/SCU Role Selection (PS3.7 D.3.3.4): a C-GET requestor proposes the SCP role for
        # the storage classes it retrieves, and we then act as their SCU on its association.
        # Requestors that propose no roles keep the default (we are the Storage SCP).
        context.scu_role = True
        context.scp_role = True
        contexts.append(context)
    return contexts
