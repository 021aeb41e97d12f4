"""The pipeline's decoding plugins against pydicom's default choice (python-gdcm first).

    FRACTURE_GATEWAY_SHARED=../shared python bench/bench_decoder_plugins.py

Every single-frame shared file in a compressed syntax the node negotiates is decoded twice: by
pydicom with its default plugin order, and as ``inference.decode`` does (``DECODING_PLUGINS``,
without python-gdcm). Prints, per outcome, how many files: equal arrays, the largest difference,
or which side failed. Run by hand (a few minutes).
"""

from __future__ import annotations

import csv
import os
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels.decoders.base import get_decoder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.decode import (
    DECODABLE_TRANSFER_SYNTAXES,
    DECODING_PLUGINS,
    NATIVE_TRANSFER_SYNTAXES,
)

SHARED = Path(os.environ.get("FRACTURE_GATEWAY_SHARED", Path(__file__).parents[2] / "shared"))


def decode(ds: pydicom.Dataset, plugins: list[str]) -> np.ndarray | None:
    """The first frame from the first of ``plugins`` that decodes it ("" = pydicom's choice)."""
    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    for plugin in plugins:
        try:
            return decoder.as_array(ds, index=0, decoding_plugin=plugin)[0]
        except Exception:  # any failure means "this plugin could not"
            continue
    return None


def main() -> None:
    warnings.simplefilter("ignore")
    inventory = SHARED / "dicom" / "INVENTORY.tsv"
    outcomes: Counter[str] = Counter()
    with inventory.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    for row in rows:
        tsyntax = row["transfer_syntax"].split(" ")[0]
        compressed = tsyntax in DECODABLE_TRANSFER_SYNTAXES
        if not compressed or tsyntax in NATIVE_TRANSFER_SYNTAXES or "NO_PIXELS" in row["notes"]:
            continue
        try:
            ds = pydicom.dcmread(SHARED / "dicom" / row["path"])
        except Exception:  # unreadable files are not compared
            continue
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            continue
        available = get_decoder(tsyntax).available_plugins
        default = decode(ds, [""])
        ours = decode(ds, [p for p in DECODING_PLUGINS if p in available])
        if default is None or ours is None:
            outcome = {
                (True, True): "both fail",
                (True, False): "only ours decodes",
                (False, True): "only the default decodes",
            }[(default is None, ours is None)]
        elif default.shape != ours.shape or default.dtype != ours.dtype:
            outcome = "different shape or type"
        else:
            largest = int(np.abs(default.astype(np.int64) - ours.astype(np.int64)).max())
            outcome = "equal" if largest == 0 else f"differ by at most {largest}"
        outcomes[f"{outcome} ({pydicom.uid.UID(tsyntax).name})"] += 1
    for outcome, number in sorted(outcomes.items()):
        print(f"{number:4d}  {outcome}")


if __name__ == "__main__":
    main()
