"""A full disk: the node answers A700 (out of resources), keeps nothing partial, and recovers.

The node runs in its own mount namespace (``unshare``) with its storage on a 2 MB tmpfs, so
the disk really fills up; no privileges or fault injection are needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import create_engine, text

from dicom_node.conformance import DX_PRESENTATION_STORAGE, StoreStatus
from tests.dicom_node.test_scp import small_dx
from tests.helpers.tools import free_port, require_program, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def image(side: int):  # type: ignore[no-untyped-def]
    ds = small_dx()
    ds.Rows = ds.Columns = side
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelData = b"\x07\x00" * (side * side)
    return ds


def test_disk_full_gets_a700_and_leaves_nothing(tmp_path: Path) -> None:
    unshare = require_program("unshare")
    home, storage = tmp_path / "home", tmp_path / "storage"
    storage.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "FRACTURE_GATEWAY_HOME": str(home),
        "FRACTURE_GATEWAY_STORAGE__FOLDER": str(storage),
        "FRACTURE_GATEWAY_NODE__BIND_ADDRESS": "127.0.0.1",
        "FRACTURE_GATEWAY_NODE__PORT": str(port),
        "FRACTURE_GATEWAY_INFERENCE__ENABLED": "false",
    }
    script = (
        f"mount -t tmpfs -o size=2m tmpfs {storage} && "
        f"exec {sys.executable} -m gateway serve --no-api --no-worker"
    )
    server = subprocess.Popen(
        [unshare, "--map-root-user", "--mount", "sh", "-c", script],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, timeout_s=60, process=server)
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", port, ae_title="FRACTUREGW")
        assert assoc.is_established
        fits, too_big, after = image(512), image(1400), image(512)  # 0.5 MB, 3.9 MB, 0.5 MB
        statuses = [int(assoc.send_c_store(ds).Status) for ds in (fits, too_big, after)]
        assoc.release()
        # The last one fits only if the failed write left nothing behind on the small disk.
        assert statuses == [0, StoreStatus.OUT_OF_RESOURCES, 0]
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    assert b"disk full" in stderr
    engine = create_engine(f"sqlite:///{home / 'fracture-gateway.sqlite3'}")
    with engine.connect() as conn:
        stored = {row[0] for row in conn.execute(text("SELECT sop_instance_uid FROM instances"))}
    engine.dispose()
    assert stored == {fits.SOPInstanceUID, after.SOPInstanceUID}
