"""The readers' names and a look at a file's first bytes: is it the format its reader expects?

Standard library only, so that ``campaign validate`` checks a recipe's dataset files (exists, reader known,
format plausible) on a login node in milliseconds, without the readers' dependencies. The look is a sniff, not a
parse: it catches the wrong file (an HTML error page saved as ``.h5``, a truncated download, a text file given to
the LMDB reader); the reader still reports a malformed record with its location when the data is read.
"""

from __future__ import annotations

import struct
from pathlib import Path

#: The readers of :mod:`models.data.readers`.
READER_NAMES: tuple[str, ...] = ("ase", "ani-hdf5", "ase-lmdb", "ocp-lmdb", "mptrj-json", "alexandria-json",
                                 "spice-hdf5", "qm7x-hdf5", "qcml-tfds")

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_HDF5_OFFSETS = (0, 512, 1024, 2048)  # a user block may precede the superblock
_LMDB_MAGIC = 0xBEEFC0DE  # MDB_meta.mm_magic, after the 16-byte page header of the first meta page
_SQLITE_MAGIC = b"SQLite format 3\x00"


def file_problem(path: Path, reader: str) -> str | None:
    """Why ``path`` cannot be input of ``reader`` — it is missing, unreadable, empty or (by its first bytes)
    another format — or None when it may be."""
    if not path.is_file():
        return "does not exist (or is not a file)"
    try:
        return sniff(path, reader)
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"


def sniff(path: Path, reader: str) -> str | None:
    """Why ``path`` cannot be input of ``reader`` (its first bytes say another format), or None when it may be.

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not head:
        return "the file is empty"
    if reader in ("ani-hdf5", "spice-hdf5", "qm7x-hdf5"):
        if head.startswith(_XZ_MAGIC):
            return f"xz-compressed (as QM7-X is published): decompress it once with `xz -dk {path}` and use the .hdf5"
        if not any(head[o:o + len(_HDF5_MAGIC)] == _HDF5_MAGIC for o in _HDF5_OFFSETS):
            return "not an HDF5 file (no HDF5 signature)"
        return None
    if reader in ("ase-lmdb", "ocp-lmdb"):
        if len(head) < 20 or struct.unpack_from("<I", head, 16)[0] != _LMDB_MAGIC:
            return "not an LMDB file (no LMDB signature)"
        return None
    if reader == "ase":
        return _sniff_ase(path, head)
    if reader == "qcml-tfds":
        if len(head) < 12 or _masked_crc32c(head[:8]) != struct.unpack_from("<I", head, 8)[0]:
            return "not a TFRecord file (the first record's length checksum does not match)"
        return None
    if reader in ("mptrj-json", "alexandria-json"):
        if head.startswith((b"\x1f\x8b", b"BZh")):
            return None  # gzip / bzip2 (as published): the reader decides
        if not head.lstrip().startswith(b"{"):
            name = "MPtrj" if reader == "mptrj-json" else "Alexandria"
            return f"not a JSON object ({name} JSON starts with '{{')"
    return None


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), bitwise: only ever run on a record header's 8 bytes here."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's masked checksum (the readers' own is :func:`models.data.readers.qcml_tfds.masked_crc32c`)."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _sniff_ase(path: Path, head: bytes) -> str | None:
    suffix = path.suffix.lower()
    if suffix in (".xyz", ".extxyz"):
        first = head.split(b"\n", 1)[0].strip()
        if not first.isdigit():
            return "not an (ext)xyz file (the first line is not an atom count)"
    elif suffix == ".db" and not (head.startswith(_SQLITE_MAGIC) or head.lstrip().startswith(b"{")):
        return "not an ASE database (neither SQLite nor JSON)"
    return None  # another of the many formats ase.io reads: the reader decides
