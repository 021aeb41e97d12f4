"""Results latency: from the last C-STORE response to the SR and SCs stored in the PACS (by hand).

Starts Orthanc (as the PACS that receives results) and a gateway Service in this process. For
each study, sends two synthetic 16-bit DX images of 2500 x 2048 pixels (a WG04 radiograph
upscaled) to the gateway as a PACS would, then polls Orthanc until the study's SR and both SCs
are there. Latency = that moment - the C-STORE response of the last instance, reported as
is and without the quiet period. The settings are the defaults (quiet period, poll intervals,
analysis on arrival) unless an option overrides one; ``--announce`` makes the sender give
Number of Study Related Instances (0020,1208), so the study completes at its count instead.
Studies are sent one after the other (an idle system); one warm-up study is not counted.
Writes the medians (and spread) to ``docs/PERFORMANCE.md`` under ``## Results latency``.

    .venv/bin/python bench/bench_results_latency.py --studies 20
    .venv/bin/python bench/bench_results_latency.py --studies 20 --announce
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

REPO_ROOT = Path(__file__).resolve().parent.parent
RG2 = Path("dicom/robyoung-dicom-test-files/data/WG04/REF/RG2_UNC")
ROWS, COLUMNS = 2500, 2048
IMAGES_PER_STUDY = 2
SECTION = "## Results latency"
GATEWAY_AE = "FRACTUREGW"


def synthetic_pixels(shared: Path) -> np.ndarray[Any, np.dtype[np.uint16]]:
    """A real radiograph (WG04 RG2, 10 bit) upscaled to 2500 x 2048 and spread over 16 bits."""
    source = dcmread(shared / RG2).pixel_array.astype(np.float32)
    resized = cv2.resize(source, (COLUMNS, ROWS), interpolation=cv2.INTER_CUBIC)
    scaled = np.clip(resized, 0, 1023) * (65535.0 / 1023.0)
    return scaled.astype(np.uint16)


def dx_instance(
    pixels: np.ndarray[Any, np.dtype[np.uint16]],
    study_uid: str,
    number: int,
    patient: str,
    announce: bool = False,
) -> Dataset:
    """A DX For Presentation image, MONOCHROME2, 16 bits stored, in the given study."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = f"Bench^{patient}"
    ds.PatientID = f"BENCH-{patient}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = datetime.now(UTC).strftime("%Y%m%d")
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Modality = "DX"
    ds.SeriesNumber = number
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "HIP"
    ds.PatientOrientation = ["L", "F"]
    ds.Manufacturer = "bench"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 32768
    ds.WindowWidth = 65536
    ds.PresentationLUTShape = "IDENTITY"
    if announce:
        ds.NumberOfStudyRelatedInstances = IMAGES_PER_STUDY
    ds.PixelData = pixels.tobytes()
    return ds


def write_study(
    folder: Path, pixels: np.ndarray[Any, np.dtype[np.uint16]], index: int, announce: bool
) -> tuple[str, list[Path]]:
    """Two images of a new study as files; returns the Study Instance UID and the files."""
    study_uid = generate_uid()
    paths = []
    for number in range(1, IMAGES_PER_STUDY + 1):
        ds = dx_instance(pixels, study_uid, number, f"{index:03d}", announce)
        path = folder / f"study{index:03d}-{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths


def wait_for_results(orthanc: Any, study_uid: str, expected: int, timeout_s: float) -> float:
    """Poll Orthanc until the study holds ``expected`` instances; returns the time (epoch s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = orthanc.client.post("/tools/lookup", content=study_uid).json()
        studies = [item["ID"] for item in found if item.get("Type") == "Study"]
        if studies and len(orthanc.get(f"/studies/{studies[0]}/instances")) >= expected:
            return time.time()
        time.sleep(0.02)
    raise TimeoutError(f"results of a study not in the PACS after {timeout_s} s")


PHASES = (
    (
        "completion",
        "last C-STORE response to the study's job queued: the quiet period (or the announced "
        "count) and the timer's poll",
    ),
    ("queue", "study job queued to started"),
    (
        "pipeline",
        "study job: classify, the study result from the cached image predictions (the model "
        "runs only for an image without one), build and store SR + SCs",
    ),
    ("delivery", "job done to the PACS listing every result (outbox, C-STORE, PACS storage)"),
)
#: Not a phase of the latency (it overlaps the completion wait), shown beside them.
ON_ARRIVAL = "image jobs: last C-STORE response to the last image job done (model on arrival)"


def phases(sessions: Any, study_uid: str, sent: float, arrived: float) -> tuple[list[float], float]:
    """Seconds spent in each of :data:`PHASES` for one study, from the gateway's database, and
    when the last image job finished (relative to ``sent``; NaN when there was none)."""
    from sqlalchemy import func, select

    from db.models import Job, JobKind, Study
    from db.results import OutboxEntry, ResultObject

    deadline = time.monotonic() + 30
    while True:  # the worker records "sent" just after the PACS has answered
        with sessions() as session:
            study = session.scalars(
                select(Study).where(Study.study_instance_uid == study_uid)
            ).one()
            job = session.scalars(
                select(Job).where(Job.study_id == study.id, Job.kind == JobKind.STUDY.value)
            ).one()
            images_done = session.scalar(
                select(func.max(Job.finished_at)).where(
                    Job.study_id == study.id, Job.kind == JobKind.IMAGE.value
                )
            )
            unsent, last_sent = session.execute(
                select(
                    func.count() - func.count(OutboxEntry.sent_at), func.max(OutboxEntry.sent_at)
                )
                .join(ResultObject)
                .where(ResultObject.study_id == study.id)
            ).one()
        if unsent == 0 and last_sent is not None and job.finished_at is not None:
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the gateway did not record the deliveries")
        time.sleep(0.02)
    marks = [
        sent,
        job.created_at.timestamp(),
        job.started_at.timestamp(),
        job.finished_at.timestamp(),
        arrived,
    ]
    on_arrival = float("nan") if images_done is None else images_done.timestamp() - sent
    return [b - a for a, b in itertools.pairwise(marks)], on_arrival


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def write_section(path: Path, text: str) -> None:
    """Put ``text`` under the results-latency heading, leaving every other section as it is."""
    existing = path.read_text() if path.exists() else "# Performance\n"
    lines = existing.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        path.write_text(existing.rstrip("\n") + "\n\n" + text)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    path.write_text(
        "".join(lines[:start]) + text + ("\n" if end < len(lines) else "") + "".join(lines[end:])
    )


def time_pipeline_steps() -> dict[str, list[float]]:
    """Wrap the model step and the building of SR and SCs with timers (``--step-timings``)."""
    import pipeline.analysis
    import pipeline.publish

    times: dict[str, list[float]] = {"model step": [], "build + store results": []}
    wrapped = (
        (pipeline.analysis.AnalyseStep, "__call__", "model step"),
        (pipeline.publish.PublishStep, "_build_and_store", "build + store results"),
    )
    for cls, name, label in wrapped:
        original = getattr(cls, name)

        def timed(*args: Any, _original: Any = original, _label: str = label, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                times[_label].append(time.perf_counter() - start)

        setattr(cls, name, timed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument(
        "--quiet-period", type=float, default=None, help="grouping.quiet_period_s (default: ours)"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help="the grouping, job and outbox poll intervals (default: the settings' own)",
    )
    parser.add_argument(
        "--no-arrival-analysis", action="store_true", help="grouping.analyse_on_arrival = false"
    )
    parser.add_argument(
        "--announce",
        action="store_true",
        help="send Number of Study Related Instances (0020,1208) with every image",
    )
    parser.add_argument("--model", type=Path, default=None, help="model package folder")
    parser.add_argument(
        "--shared",
        type=Path,
        default=Path(os.environ.get("FRACTURE_GATEWAY_SHARED", REPO_ROOT.parent / "shared")),
    )
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "PERFORMANCE.md")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--note", default="", help="a line on the conditions, for the record")
    parser.add_argument(
        "--step-timings",
        action="store_true",
        help="also print, per study, the time of the model step and of building the results",
    )
    args = parser.parse_args()
    step_times: dict[str, list[float]] = {}
    if args.step_timings:
        step_times = time_pipeline_steps()

    sys.path.insert(0, str(REPO_ROOT))  # the Orthanc helper lives with the tests
    from config.settings import Destination, GroupingSettings, InferenceSettings, Settings
    from dicom_node.send import SendResult, send_files
    from gateway.service import Service
    from tests.helpers.orthanc import run_orthanc

    model_path: Path = args.model or InferenceSettings().model_path
    if not (model_path / "model.json").is_file():
        raise SystemExit(f"no model package at {model_path}; pass --model")

    grouping: dict[str, Any] = {"analyse_on_arrival": not args.no_arrival_analysis}
    polls: dict[str, Any] = {}
    if args.quiet_period is not None:
        grouping["quiet_period_s"] = args.quiet_period
    if args.poll_interval is not None:
        grouping["poll_interval_s"] = args.poll_interval
        polls = {"poll_interval_s": args.poll_interval}
    quiet = float(grouping.get("quiet_period_s", GroupingSettings().quiet_period_s))
    if args.announce:
        quiet = 0.0  # the study completes at its count: no quiet period to subtract

    pixels = synthetic_pixels(args.shared)
    latencies: list[float] = []
    breakdown: list[list[float]] = []
    arrival_done: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-results-") as tmp:
        folder = Path(tmp)
        with run_orthanc(folder / "orthanc") as orthanc:
            settings = Settings(
                home=folder / "gateway",
                node={"ae_title": GATEWAY_AE, "bind_address": "127.0.0.1", "port": 0},
                grouping=grouping,
                jobs=polls,
                inference={"model_path": model_path},
                api={"enabled": False},
                destinations=[
                    Destination(
                        name="pacs",
                        ae_title=orthanc.ae_title,
                        host="127.0.0.1",
                        port=orthanc.dicom_port,
                    )
                ],
                outbox=polls,
            )
            service = Service(settings)
            service.start()
            try:
                for index in range(args.studies + 1):
                    study_uid, files = write_study(folder, pixels, index, args.announce)
                    responses: list[float] = []

                    def on_response(result: SendResult, times: list[float] = responses) -> None:
                        if not result.ok:
                            raise RuntimeError(f"C-STORE failed: {result.status} {result.error}")
                        times.append(time.time())

                    send_files(
                        files,
                        "127.0.0.1",
                        service.dicom_port,
                        GATEWAY_AE,
                        "BENCHSCU",
                        progress=on_response,
                    )
                    arrived = wait_for_results(
                        orthanc, study_uid, IMAGES_PER_STUDY + 1, args.timeout
                    )
                    latency = arrived - responses[-1]
                    parts, images_done = phases(service.sessions, study_uid, responses[-1], arrived)
                    label = "warm-up" if index == 0 else f"study {index}"
                    detail = ", ".join(
                        f"{name} {value:.2f}"
                        for (name, _), value in zip(PHASES, parts, strict=True)
                    )
                    steps = "".join(
                        f", {name} {sum(values):.2f}" for name, values in step_times.items()
                    )
                    print(
                        f"{label}: {latency:.2f} s, {latency - quiet:.2f} s without the quiet "
                        f"period ({detail}; image jobs done at {images_done:.2f}{steps})",
                        flush=True,
                    )
                    for values in step_times.values():
                        values.clear()
                    if index > 0:
                        latencies.append(latency)
                        breakdown.append(parts)
                        arrival_done.append(images_done)
                    for path in files:
                        path.unlink()
            finally:
                service.stop()

    def spread(values: list[float]) -> str:
        median = statistics.median(values)
        q = statistics.quantiles(values, n=10) if len(values) >= 2 else [median] * 9
        return (
            f"{median:.2f} s | {q[0]:.2f} s | {q[-1]:.2f} s | "
            f"{min(values):.2f} s | {max(values):.2f} s"
        )

    model = f"{model_path.name}"
    shown = [a for a in sys.argv[1:] if a != "--note" and a != args.note]
    command = "python " + " ".join(
        shlex.quote(a) for a in [str(Path(sys.argv[0]).resolve().relative_to(REPO_ROOT)), *shown]
    )
    phase_rows = "".join(
        f"| {name} | {description} | {statistics.median(column):.2f} s |\n"
        for (name, description), column in zip(PHASES, zip(*breakdown, strict=True), strict=True)
    )
    done = [v for v in arrival_done if v == v]  # NaN: no image job
    arrival_row = f"| (beside) | {ON_ARRIVAL} | {statistics.median(done):.2f} s |\n" if done else ""
    completion = (
        "the sender announces Number of Study Related Instances (0020,1208): the study completes "
        "at its count"
        if args.announce
        else f"no Number of Study Related Instances: the study completes after the quiet period "
        f"of {quiet:g} s"
    )
    text = (
        f"{SECTION}\n\n"
        f"Time from the C-STORE response of a study's last instance to its SR and both Grad-CAM "
        f"SCs being stored in the PACS (Orthanc {orthanc_version()}); {completion}. Studies of "
        f"{IMAGES_PER_STUDY} synthetic 16-bit DX images of {ROWS} x {COLUMNS} pixels (WG04 RG2 "
        f"upscaled), sent one after the other; one warm-up study not counted; in-process "
        f"executor, SQLite.\n\n"
        f"| studies | figure | median | 10th percentile | 90th percentile | min | max |\n"
        f"|---|---|---|---|---|---|---|\n"
        f"| {len(latencies)} | as measured | {spread(latencies)} |\n"
        f"| {len(latencies)} | without the quiet period | "
        f"{spread([v - quiet for v in latencies])} |\n\n"
        f"Where the time goes (median of each phase; for each study the phases add up to its "
        f"latency):\n\n"
        f"| phase | what | median |\n|---|---|---|\n{phase_rows}{arrival_row}\n"
        f"- Command: `{command}`\n"
        f"- Model package: `{model}`\n"
        f"- Machine: {machine()}; Python {platform.python_version()}\n"
        f"- Measured: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
        + (f"- Conditions: {args.note}\n" if args.note else "")
    )
    write_section(args.output, text)
    print(text)


def orthanc_version() -> str:
    import subprocess

    from tests.helpers.orthanc import ORTHANC_PROGRAM

    try:
        out = subprocess.run(
            [ORTHANC_PROGRAM, "--version"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return "?"
    first = out.splitlines()[0] if out else ""
    return first.split()[-1] if first else "?"


if __name__ == "__main__":
    main()
