"""Memory a node spends on a PDU header that declares 4 GiB, followed by 300 MiB of junk.

    python bench/bench_hostile_pdu.py

Starts a node in a process of its own for each case (before an association: an A-ASSOCIATE-RQ
header; inside one: a P-DATA-TF header), resets its peak RSS, runs the attack of
``tests/dicom_node/test_hostile_network.py`` and prints the rise of the peak and the node's
answer. Run by hand; the test asserts the bound.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dicom_node.pdu import HEADER, PduType
from tests.dicom_node.test_hostile_network import attack_cost
from tests.helpers.node_process import node_process


def main() -> None:
    for pdu_type, associated in [(PduType.ASSOCIATE_RQ, False), (PduType.P_DATA_TF, True)]:
        with tempfile.TemporaryDirectory() as home, node_process(Path(home)) as node:
            header = HEADER.pack(pdu_type, 0, 0xFFFFFFFF)
            cost, reply = attack_cost(node, header, associated=associated)
        answer = reply.encoded.hex() if reply is not None else "none (connection closed)"
        print(f"{pdu_type.name}: peak RSS +{cost / 2**20:.1f} MiB, answer {answer}")


if __name__ == "__main__":
    main()
