"""Reading ../shared/dicom/INVENTORY.tsv: which real file shows what."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

UID_SYNTAX = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class InventoryRow:
    path: Path
    modality: str
    photometric: str
    transfer_syntax: str
    notes: str

    @property
    def tags(self) -> set[str]:
        if not self.notes.startswith("["):
            return set()
        return set(self.notes[1 : self.notes.index("]")].split(","))


def read_inventory(shared: Path) -> list[InventoryRow]:
    root = shared / "dicom"
    with open(root / "INVENTORY.tsv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [
        InventoryRow(
            path=root / r["path"],
            modality=r["modality"],
            photometric=r["photometric"],
            transfer_syntax=r["transfer_syntax"].split(" ")[0],
            notes=r["notes"],
        )
        for r in rows
    ]


def _identifiers(path: Path) -> tuple[str, str, str, str] | None:
    """SOP class, SOP instance, study and series UIDs, when all are present and valid."""
    ds = dcmread(path, stop_before_pixels=True)
    if ds.file_meta.get("MediaStorageSOPInstanceUID") != ds.get("SOPInstanceUID"):
        return None
    values = tuple(
        str(ds.get(k, "") or "")
        for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
    )
    if all(v and len(v) <= 64 and UID_SYNTAX.match(v) for v in values):
        return values  # type: ignore[return-value]
    return None


def one_file_per_transfer_syntax(shared: Path, syntaxes: tuple[str, ...]) -> dict[str, Path]:
    """For each syntax, the smallest well-formed file with pixel data in that syntax.

    Only files with complete, valid identifiers and distinct SOP Instance UIDs are chosen (a
    node rightly refuses the rest).
    """
    chosen: dict[str, Path] = {}
    seen_instances: set[str] = set()
    rows = sorted(read_inventory(shared), key=lambda r: r.path.stat().st_size)
    for row in rows:
        if row.transfer_syntax not in syntaxes or row.transfer_syntax in chosen:
            continue
        if row.tags & {"EDGE/MALFORMED", "NO_PIXELS"} or "decode_OK" not in row.notes:
            continue
        ids = _identifiers(row.path)
        if ids is None or ids[1] in seen_instances:
            continue
        seen_instances.add(ids[1])
        chosen[row.transfer_syntax] = row.path
    return chosen
