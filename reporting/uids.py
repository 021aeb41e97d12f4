"""Deterministic UIDs for result objects, so that a retry or a resend never makes a second copy.

Every UID is a function of what the object is about: the source study, the model (name and
version), the kind of object, and for per-image objects the source image. Building the results
of the same study with the same model twice gives the same UIDs, and a PACS that already holds
them treats the second C-STORE as the same instance; a new model version gives new UIDs.

By default UIDs are of the ``2.25.<integer>`` form derived from a name-based (SHA-1, version 5)
UUID, as PS3.5 B.2 and ISO/IEC 9834-8 allow without a registered root. Given an organisation
root, UIDs are ``<root>.<digits>`` instead, the digits hashed from the same name.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable
from enum import StrEnum

from pydicom.uid import UID

#: Our Implementation Class UID (PS3.7 D.3.3.2): a UUID-derived UID (PS3.5 B.2), so it needs no
#: organisational root; written in the file meta of every instance we store or create.
IMPLEMENTATION_CLASS_UID = UID("2.25.219142584386649567783818091273293477114")
#: Implementation Version Name (SH, at most 16 characters).
IMPLEMENTATION_VERSION_NAME = "FRACTURE_GW_1"

#: UUID namespace of this project's result UIDs (a fixed, random version 4 UUID).
RESULT_UID_NAMESPACE = uuid.UUID("6f3b0a52-8a43-4c8e-9d0e-3f4b9a1c2e71")

#: PS3.5 9.1: at most 64 characters, components of digits without leading zeros.
MAX_UID_LENGTH = 64
_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
#: Leave room for at least 20 hashed digits after a root.
MAX_ROOT_LENGTH = MAX_UID_LENGTH - 21


class ResultKind(StrEnum):
    """What a derived UID identifies; part of the name that is hashed."""

    SR_SERIES = "sr-series"
    SR_INSTANCE = "sr-instance"
    SC_SERIES = "sc-series"
    SC_INSTANCE = "sc-instance"
    GSPS_SERIES = "gsps-series"
    GSPS_INSTANCE = "gsps-instance"
    TRACKING = "tracking"
    DEVICE = "device"


def is_valid_uid(value: str) -> bool:
    """Whether ``value`` is a syntactically valid DICOM UID (PS3.5 9.1)."""
    return len(value) <= MAX_UID_LENGTH and _UID_PATTERN.match(value) is not None


def _check_root(root: str) -> None:
    if not is_valid_uid(root) or len(root) > MAX_ROOT_LENGTH:
        raise ValueError(
            f"UID root {root!r} must be a valid UID of at most {MAX_ROOT_LENGTH} characters"
        )


def derive_uid(*parts: str, root: str | None = None) -> str:
    """Derive a UID from an ordered list of strings, the same list always giving the same UID.

    The parts are encoded unambiguously (as a JSON list) before hashing, so ``("ab", "c")`` and
    ``("a", "bc")`` give different UIDs.

    Parameters
    ----------
    *parts
        What the UID identifies, most general first.
    root
        Organisation UID root; without one the UID is ``2.25.<UUID as integer>`` (PS3.5 B.2).
    """
    name = json.dumps(list(parts), ensure_ascii=True, separators=(",", ":"))
    if root is None:
        return f"2.25.{uuid.uuid5(RESULT_UID_NAMESPACE, name).int}"
    _check_root(root)
    digits = str(int.from_bytes(hashlib.sha512(name.encode("ascii")).digest(), "big"))
    # A component must not start with 0; int() output never does, and we keep its prefix.
    return f"{root}.{digits}"[:MAX_UID_LENGTH]


def result_uid(
    kind: ResultKind,
    study_instance_uid: str,
    model_name: str,
    model_version: str,
    item: str = "",
    *,
    root: str | None = None,
) -> str:
    """The UID of one result object (or series) for a study, a model version and an item.

    ``item`` tells apart objects of the same kind within a study (the source image's SOP
    Instance UID for a Secondary Capture; a digest of all sources for an SR).
    """
    return derive_uid(
        "fracture-gateway/result",
        str(kind),
        study_instance_uid,
        model_name,
        model_version,
        item,
        root=root,
    )


def sr_series_uid(
    study_instance_uid: str, model_name: str, model_version: str, *, root: str | None = None
) -> str:
    """Series Instance UID of the SR series of a study for one model version."""
    return result_uid(
        ResultKind.SR_SERIES, study_instance_uid, model_name, model_version, root=root
    )


def sc_series_uid(
    study_instance_uid: str, model_name: str, model_version: str, *, root: str | None = None
) -> str:
    """Series Instance UID of the heat-map Secondary Capture series of a study."""
    return result_uid(
        ResultKind.SC_SERIES, study_instance_uid, model_name, model_version, root=root
    )


def sources_digest(source_sop_instance_uids: Iterable[str]) -> str:
    """An order-independent digest of a set of source SOP Instance UIDs."""
    joined = "\n".join(sorted(set(source_sop_instance_uids)))
    return hashlib.sha256(joined.encode("ascii")).hexdigest()


def sr_instance_uid(
    study_instance_uid: str,
    model_name: str,
    model_version: str,
    source_sop_instance_uids: Iterable[str],
    *,
    root: str | None = None,
) -> str:
    """SOP Instance UID of the SR reporting on exactly this set of source images.

    The set of sources is part of the name: if a study is reopened and more images arrive, the
    new report (with different content) gets a new UID instead of reusing the old one.
    """
    return result_uid(
        ResultKind.SR_INSTANCE,
        study_instance_uid,
        model_name,
        model_version,
        sources_digest(source_sop_instance_uids),
        root=root,
    )


def sc_instance_uid(
    study_instance_uid: str,
    model_name: str,
    model_version: str,
    source_sop_instance_uid: str,
    *,
    root: str | None = None,
) -> str:
    """SOP Instance UID of the heat-map Secondary Capture of one source image."""
    return result_uid(
        ResultKind.SC_INSTANCE,
        study_instance_uid,
        model_name,
        model_version,
        source_sop_instance_uid,
        root=root,
    )


def gsps_series_uid(
    study_instance_uid: str, model_name: str, model_version: str, *, root: str | None = None
) -> str:
    """Series Instance UID of the presentation-state (GSPS) series of a study."""
    return result_uid(
        ResultKind.GSPS_SERIES, study_instance_uid, model_name, model_version, root=root
    )


def gsps_instance_uid(
    study_instance_uid: str,
    model_name: str,
    model_version: str,
    source_sop_instance_uid: str,
    *,
    root: str | None = None,
) -> str:
    """SOP Instance UID of the presentation state of one source image's findings."""
    return result_uid(
        ResultKind.GSPS_INSTANCE,
        study_instance_uid,
        model_name,
        model_version,
        source_sop_instance_uid,
        root=root,
    )


def tracking_uid(
    study_instance_uid: str,
    model_name: str,
    model_version: str,
    item: str,
    *,
    root: str | None = None,
) -> str:
    """Tracking Unique Identifier (TID 4108) of a measurement group in the SR."""
    return result_uid(
        ResultKind.TRACKING, study_instance_uid, model_name, model_version, item, root=root
    )


def device_uid(model_name: str, model_version: str, *, root: str | None = None) -> str:
    """Device Observer UID (TID 1004) of the algorithm: one per model version, any study."""
    return derive_uid("fracture-gateway/device", model_name, model_version, root=root)
