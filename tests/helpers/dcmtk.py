"""dcmtk ``storescp`` as a destination PACS that works, or fails in a chosen way.

Use :func:`run_storescp` as a context manager, or the ``storescp_factory`` fixture (import it
into a test module) to start several. Received files are kept with unique names (``+uf``), so a
second copy of the same SOP instance shows up as a second file.
"""

from __future__ import annotations

import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.helpers.tools import free_port, require_program, stop_process, wait_for_port


class StoreSCPMode(StrEnum):
    """How the destination behaves."""

    #: Accept and store everything.
    NORMAL = "normal"
    #: Refuse every association (A-ASSOCIATE-RJ).
    REFUSE = "refuse"
    #: Abort the association while receiving a C-STORE request.
    ABORT_DURING = "abort-during"
    #: Abort the association after receiving a C-STORE request, before answering.
    ABORT_AFTER = "abort-after"


#: How often to try to start a program whose port was taken by someone else meanwhile.
START_ATTEMPTS = 5

_MODE_ARGS = {
    StoreSCPMode.NORMAL: [],
    StoreSCPMode.REFUSE: ["--refuse"],
    StoreSCPMode.ABORT_DURING: ["--abort-during"],
    StoreSCPMode.ABORT_AFTER: ["--abort-after"],
}


@dataclass
class StoreSCP:
    """A running ``storescp``."""

    port: int
    ae_title: str
    output_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Stop listening now (idempotent); the received files stay."""
        stop_process(self.process)

    def received_files(self) -> list[Path]:
        """Every file received so far (temporary files of a transfer in progress excluded)."""
        return sorted(p for p in self.output_dir.iterdir() if p.is_file())

    def received_sop_instance_uids(self) -> Counter[str]:
        """How many copies of each SOP Instance UID were received."""
        return Counter(
            str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            for path in self.received_files()
        )


@contextmanager
def run_storescp(
    output_dir: Path,
    *,
    mode: StoreSCPMode = StoreSCPMode.NORMAL,
    port: int | None = None,
    ae_title: str = "STORESCP",
    extra_args: tuple[str, ...] = (),
    tls_args: tuple[ssl.SSLContext, str] | None = None,
) -> Iterator[StoreSCP]:
    """Start ``storescp`` on loopback (a free port unless given) and stop it on exit.

    A port another process took in the meantime is retried: with a new free port when none was
    given, else the same port after a short pause (a port just released). A ``storescp +tls``
    (in ``extra_args``) is probed for readiness over TLS with ``tls_args``.
    """
    program = require_program("storescp")
    output_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(START_ATTEMPTS):
        chosen = port or free_port()
        log_path = output_dir.parent / f"storescp-{chosen}-{mode.value}.log"
        args = [
            program,
            "--aetitle",
            ae_title,
            "--output-directory",
            str(output_dir),
            "+uf",
            "-v",
            *_MODE_ARGS[mode],
            *extra_args,
            str(chosen),
        ]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(chosen, process=process)
            _wait_answering(chosen, ae_title, tls_args=tls_args)
            break
        except RuntimeError:  # exited at once: the port is taken
            stop_process(process)
            if attempt == START_ATTEMPTS - 1:
                raise
            time.sleep(0.5)
    try:
        yield StoreSCP(chosen, ae_title, output_dir, log_path, process)
    finally:
        stop_process(process)


def _wait_answering(
    port: int,
    ae_title: str,
    timeout_s: float = 20.0,
    *,
    tls_args: tuple[ssl.SSLContext, str] | None = None,
) -> None:
    """Wait until storescp answers an association (accepts or rejects it).

    The port probe above is a bare TCP connection; storescp serves one connection at a time, so
    only a real A-ASSOCIATE answer shows it is ready for the next peer.
    """
    from pynetdicom import AE

    from dicom_node.peer import request_association

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ae = AE(ae_title="READYCHECK")
        ae.add_requested_context("1.2.840.10008.1.1")
        ae.acse_timeout = ae.network_timeout = 5
        request = request_association(ae, "127.0.0.1", port, ae_title, tls_args=tls_args)
        if request.established:
            request.assoc.release()
            return
        if request.rejected:
            return
        time.sleep(0.1)
    raise TimeoutError(f"storescp on port {port} never answered an association")


StoreSCPFactory = Callable[..., StoreSCP]


@pytest.fixture
def storescp_factory(tmp_path: Path) -> Iterator[StoreSCPFactory]:
    """Start ``storescp`` instances with ``factory(mode=..., port=..., name=...)``; stop after."""
    with ExitStack() as stack:

        def start(
            mode: StoreSCPMode = StoreSCPMode.NORMAL,
            *,
            port: int | None = None,
            name: str = "received",
            ae_title: str = "STORESCP",
        ) -> StoreSCP:
            manager: AbstractContextManager[StoreSCP] = run_storescp(
                tmp_path / name, mode=mode, port=port, ae_title=ae_title
            )
            return stack.enter_context(manager)

        yield start
