"""Durable instance storage: bytes as received, fsynced, atomically renamed into place.

File names come only from validated UIDs (digits and dots) or a hash of the value, so no header
value can steer a path outside the storage folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

#: PS3.5 9.1: components of digits, no empty component, no leading zero in a component of more
#: than one digit ("1.2.03.4" is not a UID), at most 64 characters.
_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
PREAMBLE = b"\x00" * 128 + b"DICM"
TMP_SUFFIX = ".part"


class StorageError(OSError):
    """The instance could not be written durably (disk full, permissions, I/O error)."""


def is_valid_uid(value: str) -> bool:
    """Whether ``value`` has UID syntax (PS3.5 9.1): digit components without leading zeros,
    joined by dots, at most 64 characters."""
    return len(value) <= 64 and _UID_PATTERN.match(value) is not None


def safe_name(uid: str) -> str:
    """A file-name-safe key for a UID: the UID itself when valid, else ``h`` + its SHA-256."""
    if is_valid_uid(uid):
        return uid
    return "h" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredDigest:
    """SHA-256 and size of the bytes written for an instance (preamble and meta included)."""

    sha256: str
    size_bytes: int


class InstanceStore:
    """Writes received instances under ``root/instances/<study>/<sop>.dcm``."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root.absolute()
        self.fsync = fsync
        self.tmp_dir = self.root / "tmp"
        self.instances_dir = self.root / "instances"
        self.conflicts_dir = self.root / "conflicts"
        for folder in (self.tmp_dir, self.instances_dir, self.conflicts_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def path_for(self, study_uid: str, sop_instance_uid: str, sha256: str | None = None) -> Path:
        """The final location of an instance: its UIDs (validated or hashed) and its digest.

        The digest in the name means two different copies of one instance never share a path
        (received instances always carry it).
        """
        digest = f".{sha256[:16]}" if sha256 else ""
        name = f"{safe_name(sop_instance_uid)}{digest}.dcm"
        return self.instances_dir / safe_name(study_uid) / name

    def absolute(self, relative_path: str) -> Path:
        """Resolve a stored relative path, refusing anything that leaves the storage root."""
        path = (self.root / relative_path).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError("stored path escapes the storage folder")
        return path

    def write_temporary(
        self, file_meta: FileMetaDataset, encoded_dataset: bytes | memoryview
    ) -> tuple[Path, StoredDigest]:
        """Write preamble, file meta and the dataset bytes as received to a fsynced temp file.

        The digest covers exactly the bytes written, so identical resends compare equal.
        """
        meta = DicomBytesIO()
        write_file_meta_info(meta, file_meta, enforce_standard=True)
        head = PREAMBLE + meta.getvalue()
        # Hashing and writing both release the GIL: hash on another thread meanwhile.
        hashing = _HASHER.submit(_sha256, head, encoded_dataset)
        tmp = self._write_temporary_file(head, encoded_dataset)
        return tmp, StoredDigest(hashing.result(), len(head) + len(encoded_dataset))

    def write_file(self, final: Path, data: bytes) -> str:
        """Write ``data`` durably at ``final`` (temp file, fsync, rename, folder fsync).

        Returns the path relative to the storage root.
        """
        return self.commit(self._write_temporary_file(data), final)

    def create_temporary(self) -> tuple[Path, int]:
        """A new, empty temporary file opened for writing: its path and file descriptor."""
        tmp = self.tmp_dir / f"{secrets.token_hex(16)}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot write to storage: {exc.strerror}") from exc
        return tmp, fd

    def _write_temporary_file(self, *chunks: bytes | memoryview) -> Path:
        tmp = self.tmp_dir / f"{secrets.token_hex(16)}{TMP_SUFFIX}"
        try:
            with open(tmp, "xb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                handle.flush()
                if self.fsync:
                    os.fsync(handle.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(exc.errno, f"cannot write to storage: {exc.strerror}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def place(self, tmp: Path, final: Path) -> bool:
        """Rename ``tmp`` to ``final`` durably unless ``final`` exists; whether it was renamed.

        File names carry the content digest, so an existing ``final`` holds the same bytes (a
        resend, or a copy from before a crash) and ``tmp`` is left for the caller to remove.
        """
        if final.exists():
            return False
        self.commit(tmp, final)
        return True

    def commit(self, tmp: Path, final: Path) -> str:
        """Rename ``tmp`` to ``final`` atomically and durably; return the path relative to root."""
        try:
            if not final.parent.is_dir():
                final.parent.mkdir(parents=True, exist_ok=True)
                if self.fsync:  # the new folder's own entry must be durable too
                    _fsync_dir(final.parent.parent)
            os.replace(tmp, final)
            if self.fsync:
                _fsync_dir(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(exc.errno, f"cannot store instance: {exc.strerror}") from exc
        return str(final.relative_to(self.root))

    def keep_conflict(self, tmp: Path, sop_instance_uid: str, digest: str) -> Path:
        """Keep a differing duplicate beside the analysed copy, never overwriting it."""
        final = self.conflicts_dir / f"{safe_name(sop_instance_uid)}.{digest[:16]}.dcm"
        os.replace(tmp, final)
        if self.fsync:
            _fsync_dir(final.parent)
        return final


#: A small pool that hashes received data sets while they are being written.
_HASHER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sha256")


def _sha256(head: bytes, body: bytes | memoryview) -> str:
    sha = hashlib.sha256(head)
    sha.update(body)
    return sha.hexdigest()


def file_digest(path: Path) -> tuple[str, int]:
    """SHA-256 hex digest and size of a file."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
