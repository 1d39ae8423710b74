"""Reader of QCML as its publishers distribute it: TensorFlow Datasets (TFDS) record files.

S. Ganscha et al., Sci. Data 12, 406 (2025); the data sit in the public bucket ``gs://qcml-datasets/tfds`` (no
credentials: ``gcloud storage cp -r gs://qcml-datasets/tfds/qcml/dft_force_field/1.0.0 <dir>/qcml/dft_force_field
--project=deepmind-opensource``), with metadata and the publishers' example loader on Zenodo record 14859804.

Layout (TFDS: ``<data_dir>/qcml/<feature group>/<version>/``): ``dataset_info.json``, ``features.json`` and the
records in shards named ``qcml-full.tfrecord-00000-of-NNNNN``. A shard is a TFRecord file: records framed as
``uint64 length, uint32 masked CRC-32C of the length, the bytes, uint32 masked CRC-32C of the bytes``, each
record one ``tf.train.Example`` protobuf. Feature group ``dft_force_field`` holds, per conformation of ``N``
atoms (TFDS stores integers and booleans as ``int64_list``, floating tensors — float64 ones too — as
``float_list``, i.e. float32, flattened):

* ``atomic_numbers`` [N]; ``positions`` [3N], Å; ``charge``, ``multiplicity`` (2S+1); ``is_outlier``;
  ``key_hash`` (the conformation's id, shared by the other feature groups);
* ``pbe0_energy``: total PBE0 energy, Hartree; ``pbe0_formation_energy``: the same less the isolated atoms'
  energies, Hartree; ``pbe0_forces`` [3N], Hartree/Bohr.

Choices, each an option: ``energy`` — ``formation`` (default) reads ``pbe0_formation_energy``, ``total`` reads
``pbe0_energy``. They differ by a constant per element, which the preprocessing's reference-energy fit removes
either way; the default is the formation energy because TFDS keeps float32 only: a total energy of -2,400 Ha is
stored to ~2e-4 Ha (~4 meV), a formation energy of -2 Ha to ~1e-7 Ha. ``outliers`` — ``skip`` (default) drops the
conformations the publishers flagged ``is_outlier``, ``keep`` reads them. The units are the registry's
(``models/datasets.yaml``); ``campaign data check`` flags a length unit that does not fit (X–H bonds).

Records are read one at a time (bounded memory); a record longer than :data:`MAX_RECORD_BYTES` or whose checksum
does not match is refused before it is parsed, naming the file and the record's number and byte offset.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from models.appio import BadInput
from models.data.structure import Structure
from models.data.units import energy_factor, force_factor, length_factor

#: A record larger than this is refused (a QCML conformation is ~1 KB; a corrupt length could ask for exabytes).
MAX_RECORD_BYTES = 64 << 20
#: The energy option -> the feature read.
ENERGY_FIELDS = {"formation": "pbe0_formation_energy", "total": "pbe0_energy"}
_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's checksum of ``data``: CRC-32C, rotated right by 15 bits, plus a constant (mod 2**32)."""
    import crc32c

    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def tfrecords(path: Path, fh: BinaryIO) -> Iterator[tuple[int, int, bytes]]:
    """The records of a TFRecord file: ``(number, byte offset, bytes)``, both checksums verified.

    Raises:
        BadInput: a truncated record, a checksum that does not match, or a length over :data:`MAX_RECORD_BYTES`.
    """
    k = 0
    while True:
        offset = fh.tell()
        head = fh.read(12)
        if not head:
            return
        where = f"{path}: record {k} (byte {offset})"
        if len(head) < 12:
            raise BadInput(f"{where}: truncated (the file ends inside a record header)")
        length, length_crc = struct.unpack("<QI", head)
        if masked_crc32c(head[:8]) != length_crc:
            raise BadInput(f"{where}: the length's checksum does not match (not a TFRecord file, or corrupt)")
        if length > MAX_RECORD_BYTES:
            raise BadInput(f"{where}: {length:,} bytes, more than the {MAX_RECORD_BYTES:,} a record may hold")
        data = fh.read(length)
        tail = fh.read(4)
        if len(data) < length or len(tail) < 4:
            raise BadInput(f"{where}: truncated (the file ends inside the record)")
        if masked_crc32c(data) != struct.unpack("<I", tail)[0]:
            raise BadInput(f"{where}: the data's checksum does not match (corrupt download?)")
        yield k, offset, data
        k += 1


def _values(features: Any, name: str, kind: str, where: str, size: int | None = None) -> np.ndarray:
    """Feature ``name`` of a ``tf.train.Example``'s features as a numpy array ([size] when given)."""
    if name not in features:
        raise BadInput(f"{where}: feature '{name}' is missing")
    feature = features[name]
    if feature.WhichOneof("kind") != kind:
        raise BadInput(f"{where}: feature '{name}' is a {feature.WhichOneof('kind')}, expected a {kind}")
    values = np.asarray(getattr(feature, kind).value, dtype=np.float64 if kind == "float_list" else np.int64)
    if size is not None and values.shape != (size,):
        raise BadInput(f"{where}: feature '{name}' has {values.size} values, expected {size}")
    return values


def read_qcml_tfds(path: str | Path, *, units: Mapping[str, str] | None = None, energy: str = "formation",
                   outliers: str = "skip", with_forces: bool = True) -> Iterator[Structure]:
    """Yield the conformations of one QCML ``dft_force_field`` shard, in file order, in eV and Å.

    Raises:
        BadInput: an unknown option, a record that is not a checksummed TFRecord, or a conformation with a missing
            or mis-sized feature (named by the file, the record's number and its ``key_hash``).
    """
    from google.protobuf.message import DecodeError
    from tfrecord import example_pb2

    path = Path(path)
    if energy not in ENERGY_FIELDS:
        raise BadInput(f"{path}: option energy: {energy!r} is not one of {', '.join(ENERGY_FIELDS)}")
    if outliers not in ("skip", "keep"):
        raise BadInput(f"{path}: option outliers: {outliers!r} is not one of skip, keep")
    field = ENERGY_FIELDS[energy]
    u = {"energy": "Hartree", "forces": "Hartree/Bohr", "length": "Å", **(units or {})}
    ef, ff, lf = energy_factor(u["energy"]), force_factor(u["forces"]), length_factor(u["length"])
    n_records = 0
    with path.open("rb") as fh:
        for k, offset, data in tfrecords(path, fh):
            n_records += 1
            where = f"{path}: record {k} (byte {offset})"
            try:
                example = example_pb2.Example.FromString(data)
            except DecodeError as exc:
                raise BadInput(f"{where}: not a tf.train.Example ({exc})") from exc
            features = example.features.feature
            keys = features["key_hash"].bytes_list.value if "key_hash" in features else []
            key = "".join(c if c.isprintable() else "?" for c in bytes(keys[0])[:64].decode(errors="replace")) \
                if keys else ""
            where = f"{path}:{k}" + (f" (key_hash {key})" if key else "")
            if outliers == "skip" and "is_outlier" in features and any(features["is_outlier"].int64_list.value):
                continue
            z = _values(features, "atomic_numbers", "int64_list", where)
            n = z.size
            if n == 0 or z.min() < 1 or z.max() > 118:
                raise BadInput(f"{where}: feature 'atomic_numbers' holds no atom or a value outside 1..118")
            pos = _values(features, "positions", "float_list", where, 3 * n).reshape(n, 3) * lf
            e = _values(features, field, "float_list", where, 1)
            forces = None
            if with_forces and "pbe0_forces" in features:
                forces = _values(features, "pbe0_forces", "float_list", where, 3 * n).reshape(n, 3) * ff
            charge, spin = (int(_values(features, name, "int64_list", where, 1)[0]) if name in features else 0
                            for name in ("charge", "multiplicity"))
            yield Structure(z=z, pos=pos, cell=np.zeros((3, 3)), pbc=np.zeros(3, dtype=bool),
                            energy=float(e[0] * ef), forces=forces, charge=charge, spin=spin, origin=where)
    if n_records == 0:
        raise BadInput(f"{path}: no records (an empty TFRecord file)")
