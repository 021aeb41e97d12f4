"""Coverage-guided fuzzing (atheris on libFuzzer) of the service's path for a received instance.

Every input runs through :mod:`tests.fuzz.received`: the C-STORE handler's header parse, the
stored file, classification, then decoding and ``prepare`` at the bundled model's input size.
A refusal the service documents is a normal end; any other exception, an input that runs past
``-timeout`` seconds, or a peak resident memory over ``-rss_limit_mb`` MiB stops the fuzzer
with the input saved as ``crash-*``, ``timeout-*`` or ``oom-*`` under ``-artifact_prefix``.

Run from the repository root (``FRACTURE_GATEWAY_SHARED`` as for the tests)::

    python -m tests.fuzz.fuzz_decode -max_total_time=3600 fuzz-corpus/   # an hour, by hand
    python -m tests.fuzz.fuzz_decode test-artifacts/fuzz/crash-...       # replay one input

libFuzzer flags may be given as usual; :data:`DEFAULT_FLAGS` fills in those left out. Unless
the inputs named are files (a replay), the seed corpus (:mod:`tests.fuzz.seeds`) is written
into the first corpus folder named (a new temporary one when none is), where libFuzzer also
keeps the new inputs it finds. libFuzzer ends the process without Python's clean-up, so the
instances stored on the way live under ``$TMPDIR``; the tests point it at their own folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import atheris

#: What the fuzzer is held to unless told otherwise. ``-rss_limit_mb`` is
#: :data:`tests.fuzz.received.RSS_LIMIT_MB`; ``-max_len`` is the largest seed allowed
#: (:data:`tests.fuzz.seeds.MAX_SEED_BYTES`); ``-timeout`` is per input, in seconds: the
#: slowest seed takes about 0.1 s, a real 2140 x 1760 radiograph about 1 s.
DEFAULT_FLAGS: dict[str, str] = {
    "-rss_limit_mb": "2048",
    "-max_len": str(256 * 1024),
    "-timeout": "20",
    "-print_final_stats": "1",
}

#: Packages whose Python code is instrumented for coverage; C codecs are run, not instrumented.
INSTRUMENTED = ["inference", "dicom_node", "gateway", "pydicom"]
#: Modules left alone: pydicom's data dictionaries (large literals, slow to instrument, no
#: branches) and its test-data downloader.
NOT_INSTRUMENTED = ["pydicom._dicom_dict", "pydicom._private_dict", "pydicom._uid_dict"]
NOT_INSTRUMENTED += ["pydicom.data"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def _shared_dir() -> Path:
    return Path(os.environ.get("FRACTURE_GATEWAY_SHARED", REPO_ROOT.parent / "shared")).resolve()


def _with_defaults(argv: list[str]) -> list[str]:
    """``argv`` with each flag of :data:`DEFAULT_FLAGS` that it does not set added."""
    given = {arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("-")}
    defaults = [f"{flag}={value}" for flag, value in DEFAULT_FLAGS.items() if flag not in given]
    return [argv[0], *defaults, *argv[1:]]


def _flag(argv: list[str], flag: str, default: str | None = None) -> str:
    """The value of the last ``flag=value`` in ``argv``, else ``default``."""
    values = [arg.split("=", 1)[1] for arg in argv[1:] if arg.startswith(f"{flag}=")]
    if values:
        return values[-1]
    if default is None:
        raise ValueError(f"{flag} is not set")
    return default


def _with_seeds(argv: list[str]) -> list[str]:
    """``argv`` with the seeds written into its first corpus folder (made if none is named).

    A replay (inputs that are files) is left as it is.
    """
    inputs = [arg for arg in argv[1:] if not arg.startswith("-")]
    if any(Path(arg).is_file() for arg in inputs):
        return argv
    from tests.fuzz.seeds import write_seeds

    if not inputs:
        corpus = tempfile.mkdtemp(prefix="fuzz-decode-corpus-")
        print(f"corpus folder: {corpus}", file=sys.stderr)
        argv, inputs = [*argv, corpus], [corpus]
    write_seeds(_shared_dir(), Path(inputs[0]))
    return argv


def main(argv: list[str]) -> None:
    """Build the seeds, instrument the service's packages and fuzz until libFuzzer stops."""
    # Malformed input makes pydicom warn and log on nearly every run; the verdict is the
    # exception (or its absence), so the noise would only hide libFuzzer's own report.
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    with atheris.instrument_imports(include=INSTRUMENTED, exclude=NOT_INSTRUMENTED):
        from tests.fuzz.received import received_instance_path
    args = _with_seeds(_with_defaults(argv))
    limit = int(_flag(args, "-rss_limit_mb"))
    artifact_prefix = _flag(args, "-artifact_prefix", "")
    if artifact_prefix:  # libFuzzer refuses a prefix whose folder does not exist
        prefix = Path(artifact_prefix)
        (prefix if artifact_prefix.endswith("/") else prefix.parent).mkdir(
            parents=True, exist_ok=True
        )
    with received_instance_path(peak_rss_limit_mb=limit) as received:

        def one_input(data: bytes) -> None:
            try:
                received(data)
            except Exception:
                # libFuzzer writes this file too, unless a signal (its periodic SIGALRM)
                # ends the process while atheris is still reporting the exception.
                digest = hashlib.sha1(data, usedforsecurity=False).hexdigest()
                Path(f"{artifact_prefix}crash-{digest}").write_bytes(data)
                raise

        atheris.Setup(args, one_input)
        atheris.Fuzz()  # does not return: libFuzzer ends the process


if __name__ == "__main__":
    main(sys.argv)
