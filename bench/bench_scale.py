"""Scale-out: studies per minute with 1 and 2 Celery workers, C-STORE images/s with 1 and 2 nodes.

Everything real and started here: PostgreSQL (a fresh database, a schema per phase), RabbitMQ (a
vhost per phase), Orthanc as the PACS, and ``fracture-gateway`` processes from this checkout
(``serve --no-api --no-worker`` as DICOM nodes, ``worker --concurrency 1`` as Celery workers),
sharing one storage folder (start-up code: ``tests/helpers/cluster.py``, as the cluster test).

- **Workers**: one node, one worker; ``--studies`` two-image studies sent back to back to the
  node; timed until every study's SR and two SCs are recorded as delivered to Orthanc. Then a
  second worker joins (same node, database and broker) and a new batch is timed the same way.
  "end to end" = studies / (first C-STORE to last delivery), so it includes one quiet period
  and the first study's latency; "steady" = (studies - 1) / (first study delivered to last),
  the rate the workers keep up once the queue is full.
- **Nodes**: no workers (jobs wait in the database); ``--images`` images sent by dcmtk
  ``storescu`` over two associations at once, both to one node, then one to each of two nodes
  (a fresh schema and storage each time); images/s = images / wall time of the two senders.

The model is the bundled one unless ``--model`` says otherwise; settings are the defaults
(analysis on arrival, quiet period, leases) apart from the Celery executor. Prints a table.

    .venv/bin/python bench/bench_scale.py
    .venv/bin/python bench/bench_scale.py --studies 60 --images 400 --radiographs
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from tests.helpers.cluster import Started
    from tests.helpers.orthanc import Orthanc

REPO_ROOT = Path(__file__).resolve().parent.parent
GATEWAY_AE = "FRACTUREGW"
SENDERS = 2
#: Start-up of the processes (TensorFlow's import dominates; minutes on a loaded machine).
STARTUP_S = 600.0


@dataclass(frozen=True)
class WorkerRun:
    """One batch through the whole path: when sending began and when each study was delivered."""

    workers: int
    sent_at: float
    delivered: tuple[float, ...]

    @property
    def studies(self) -> int:
        return len(self.delivered)

    @property
    def wall_s(self) -> float:
        return max(self.delivered) - self.sent_at

    @property
    def end_to_end_per_min(self) -> float:
        return 60.0 * self.studies / self.wall_s

    @property
    def steady_per_min(self) -> float:
        """Studies per minute between the first and the last delivery (NaN for one study)."""
        ordered = sorted(self.delivered)
        span = ordered[-1] - ordered[0]
        return 60.0 * (len(ordered) - 1) / span if len(ordered) > 1 and span > 0 else math.nan


@dataclass(frozen=True)
class NodeRun:
    nodes: int
    images: int
    wall_s: float

    @property
    def per_s(self) -> float:
        return self.images / self.wall_s


def table(worker_runs: Sequence[WorkerRun], node_runs: Sequence[NodeRun]) -> str:
    """The results as a Markdown table; scaling is each row against the first of its kind."""
    lines = [
        "| configuration | work | wall time | rate | steady rate | against 1 process |",
        "|---|---|---|---|---|---|",
    ]
    for run in worker_runs:
        base = worker_runs[0].steady_per_min
        lines.append(
            f"| 1 node, {run.workers} Celery worker{'s' if run.workers > 1 else ''} "
            f"| {run.studies} studies ({2 * run.studies} images) | {run.wall_s:.1f} s "
            f"| {run.end_to_end_per_min:.1f} studies/min | {run.steady_per_min:.1f} studies/min "
            f"| {run.steady_per_min / base:.2f}x |"
        )
    for node in node_runs:
        base_s = node_runs[0].per_s
        lines.append(
            f"| {node.nodes} DICOM node{'s' if node.nodes > 1 else ''}, no worker "
            f"| {node.images} images, {SENDERS} associations | {node.wall_s:.1f} s "
            f"| {node.per_s:.1f} images/s | | {node.per_s / base_s:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--studies", type=int, default=12, help="studies per worker batch")
    parser.add_argument("--images", type=int, default=200, help="images per node configuration")
    parser.add_argument(
        "--radiographs",
        action="store_true",
        help="2500 x 2048 16-bit DX images (10.5 MB, as bench_results_latency) instead of the "
        "37 KB DX test image",
    )
    parser.add_argument("--model", type=Path, default=None, help="model package folder")
    parser.add_argument(
        "--shared",
        type=Path,
        default=Path(os.environ.get("FRACTURE_GATEWAY_SHARED", REPO_ROOT.parent / "shared")),
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "FRACTURE_GATEWAY_TEST_POSTGRES",
            "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        ),
        help="an administrator URL; a database is created and dropped",
    )
    parser.add_argument("--folder", type=Path, default=None, help="where to keep files (tmp)")
    parser.add_argument("--timeout", type=float, default=900.0, help="per batch, seconds")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO_ROOT))  # the start-up helpers live with the tests
    from config.settings import InferenceSettings
    from tests.helpers.cluster import postgres_database
    from tests.helpers.orthanc import run_orthanc
    from tests.helpers.tools import stop_process

    model: Path = args.model or InferenceSettings().model_path
    if not (model / "model.json").is_file():
        raise SystemExit(f"no model package at {model}; pass --model")
    storescu = shutil.which("storescu")
    if storescu is None:
        raise SystemExit("dcmtk storescu is needed to send")

    started: list[Started] = []
    load_before = os.getloadavg()
    with (
        tempfile.TemporaryDirectory(prefix="bench-scale-", dir=args.folder) as tmp,
        postgres_database(args.postgres) as database,
        run_orthanc(Path(tmp) / "orthanc") as orthanc,
    ):
        folder = Path(tmp)
        try:
            context = Context(args, folder, database, orthanc, model, started, storescu)
            node_runs = [context.node_run(n) for n in (1, 2)]
            worker_runs = context.worker_runs()
        finally:
            for item in reversed(started):
                stop_process(item.process, timeout_s=20)
    kind = (
        "2500 x 2048 16-bit DX, 10.5 MB"
        if args.radiographs
        else "the 37 KB DX test image (highdicom dx_image.dcm)"
    )
    load_after = os.getloadavg()
    print(
        f"\nModel {model.name}; images: {kind}; {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; "
        f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"{os.cpu_count()} logical CPUs"
    )
    print(table(worker_runs, node_runs))


class Context:
    """What the phases share: options, the scratch folder, the database and the PACS."""

    def __init__(
        self,
        args: argparse.Namespace,
        folder: Path,
        database: str,
        orthanc: Orthanc,
        model: Path,
        started: list[Started],
        storescu: str,
    ) -> None:
        self.args = args
        self.folder = folder
        self.database = database
        self.orthanc = orthanc
        self.model = model
        self.started = started
        self.storescu = storescu
        self.batch = 0

    def studies(self, count: int) -> list[tuple[str, list[Path]]]:
        """``count`` new two-image studies as files: (Study Instance UID, files)."""
        self.batch += 1
        where = self.folder / f"batch{self.batch}"
        where.mkdir(parents=True)
        if self.args.radiographs:
            from bench.bench_results_latency import synthetic_pixels, write_study

            pixels = synthetic_pixels(self.args.shared)
            return [write_study(where, pixels, n, announce=False) for n in range(count)]
        from tests.helpers.cluster import make_studies

        made = make_studies(self.args.shared, where, count, prefix=f"SCALE{self.batch}")
        return [(uid, [a, b]) for uid, a, b in made]

    def environment(self, database_url: str, broker: str, name: str) -> dict[str, str]:
        from tests.helpers.cluster import cluster_environment

        return cluster_environment(
            self.folder / f"storage-{name}",
            database_url,
            broker,
            self.model,
            self.orthanc,
        )

    def start_node(self, env: dict[str, str], name: str) -> int:
        from tests.helpers.cluster import start
        from tests.helpers.tools import free_port, wait_for_port

        port = free_port()
        node = start(
            self.started,
            name,
            ["serve", "--no-api", "--no-worker"],
            {**env, "FRACTURE_GATEWAY_NODE__PORT": str(port)},
            self.folder / name,
        )
        wait_for_port(port, process=node.process, timeout_s=STARTUP_S)
        return port

    def stop_all(self) -> None:
        from tests.helpers.tools import stop_process

        while self.started:
            stop_process(self.started.pop().process, timeout_s=20)

    def node_run(self, nodes: int) -> NodeRun:
        """C-STORE images/s: two storescu associations at once, spread over ``nodes`` nodes."""
        from tests.helpers.cluster import postgres_schema
        from tests.helpers.rabbitmq import rabbitmq_vhost

        files = [f for _, pair in self.studies(math.ceil(self.args.images / 2)) for f in pair]
        files = files[: self.args.images]
        with postgres_schema(self.database, f"nodes{nodes}") as url, rabbitmq_vhost() as broker:
            env = self.environment(url, broker, f"nodes{nodes}")
            ports = [self.start_node(env, f"nodes{nodes}-n{i}") for i in range(nodes)]
            shares = [files[i::SENDERS] for i in range(SENDERS)]
            began = time.monotonic()
            senders = [
                subprocess.Popen(
                    [
                        self.storescu,
                        "-aec",
                        GATEWAY_AE,
                        "-aet",
                        "BENCHSCU",
                        "127.0.0.1",
                        str(ports[i % nodes]),
                        *map(str, share),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                for i, share in enumerate(shares)
            ]
            for sender in senders:
                _, err = sender.communicate(timeout=self.args.timeout)
                if sender.returncode != 0:
                    raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
            wall = time.monotonic() - began
            stored = self.count(url, "instances")
            self.stop_all()
        if stored != len(files):
            raise RuntimeError(f"{stored} of {len(files)} images stored")
        run = NodeRun(nodes, len(files), wall)
        print(
            f"{nodes} node(s): {run.images} images in {wall:.1f} s, {run.per_s:.1f}/s", flush=True
        )
        return run

    def count(self, url: str, table_name: str) -> int:
        from sqlalchemy import create_engine, text

        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                return int(conn.execute(text(f"SELECT count(*) FROM {table_name}")).scalar_one())
        finally:
            engine.dispose()

    def worker_runs(self) -> list[WorkerRun]:
        """One node; a batch with one worker, then a second worker joins and a new batch."""
        from sqlalchemy import create_engine

        from tests.helpers.cluster import consumers, poll, postgres_schema, start
        from tests.helpers.rabbitmq import rabbitmq_vhost

        runs = []
        with postgres_schema(self.database, "workers") as url, rabbitmq_vhost() as broker:
            env = self.environment(url, broker, "workers")
            port = self.start_node(env, "workers-node")
            engine = create_engine(url)
            try:
                for workers in (1, 2):
                    start(
                        self.started,
                        f"worker{workers}",
                        ["worker", "--concurrency", "1"],
                        env,
                        self.folder / f"worker{workers}",
                    )

                    def consuming(n: int = workers) -> bool:
                        return consumers(broker, "analysis") == n

                    poll(
                        f"{workers} worker(s) consuming",
                        consuming,
                        time.monotonic() + STARTUP_S,
                        interval_s=0.5,
                    )
                    runs.append(self.worker_batch(engine, port, workers))
            finally:
                engine.dispose()
                self.stop_all()
        return runs

    def worker_batch(self, engine: Engine, port: int, workers: int) -> WorkerRun:
        from dicom_node.send import send_files
        from tests.helpers.cluster import poll

        studies = self.studies(self.args.studies)
        uids = [uid for uid, _ in studies]
        began = time.time()
        for _, files in studies:
            results = send_files(files, "127.0.0.1", port, GATEWAY_AE, "BENCHSCU")
            if not all(r.ok for r in results):
                raise RuntimeError("a C-STORE failed")
        delivered: dict[str, float] = {}

        def all_delivered() -> bool:
            delivered.update(delivery_times(engine, uids))
            return len(delivered) == len(uids)

        poll("every study delivered", all_delivered, time.monotonic() + self.args.timeout, 0.5)
        run = WorkerRun(workers, began, tuple(delivered.values()))
        print(
            f"{workers} worker(s): {run.studies} studies in {run.wall_s:.1f} s, "
            f"{run.end_to_end_per_min:.1f}/min end to end, {run.steady_per_min:.1f}/min steady",
            flush=True,
        )
        return run


#: Results per study: one SR and one SC per image.
RESULTS_PER_STUDY = 3


def delivery_times(engine: Engine, uids: list[str]) -> dict[str, float]:
    """For each study of ``uids`` whose SR and SCs are all sent: when the last one was (epoch s)."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from db.models import Study
    from db.results import OutboxEntry, OutboxState, ResultObject

    with Session(engine) as session:
        rows = session.execute(
            select(
                Study.study_instance_uid,
                func.count(OutboxEntry.id),
                func.max(OutboxEntry.sent_at),
            )
            .join(ResultObject, ResultObject.study_id == Study.id)
            .join(OutboxEntry, OutboxEntry.result_object_id == ResultObject.id)
            .where(Study.study_instance_uid.in_(uids), OutboxEntry.state == OutboxState.SENT)
            .group_by(Study.study_instance_uid)
        ).all()
    return {
        str(uid): last.timestamp()
        for uid, sent, last in rows
        if sent >= RESULTS_PER_STUDY and last is not None
    }


if __name__ == "__main__":
    main()
