"""Write a small QCML feature group in its publishers' TFDS layout.

The layout is that of ``gs://qcml-datasets/tfds/qcml/dft_force_field/1.0.0`` as the publishers' example loader
(Zenodo record 14859804; ``tfds.load('qcml/dft_force_field', split='full', data_dir=...)``) and S. Ganscha et al.,
Sci. Data 12, 406 (2025) describe it: ``<data_dir>/qcml/dft_force_field/1.0.0/`` holding ``dataset_info.json``,
``features.json`` and the shards ``qcml-full.tfrecord-0000K-of-0000M``; each record a ``tf.train.Example`` with
the features ``atomic_numbers`` (uint8 tensor [N]), ``positions`` ([N, 3] float32, Å), ``pbe0_energy`` and
``pbe0_formation_energy`` (float64 scalars, Hartree), ``pbe0_forces`` ([N, 3] float32, Hartree/Bohr), ``charge``,
``multiplicity``, ``is_outlier`` (bool) and ``key_hash`` (text), serialised as TFDS does: integers and booleans
as ``int64_list``, every floating tensor (float64 too) as a flat ``float_list`` of float32, text as ``bytes_list``.
The records are framed by the ``tfrecord`` package's writer (TFRecord: length, masked CRC-32C, bytes, masked
CRC-32C). Labels here come from EMT on rattled molecules, converted to Hartree and Hartree/Bohr.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.units import Bohr, Hartree
from tfrecord.writer import TFRecordWriter

#: (formula, charge, multiplicity, is_outlier) per conformation, spread over two shards.
CONFORMATIONS = [[("CH4", 0, 1, False), ("H2O", 0, 1, False), ("NH3", 1, 2, False)],
                 [("C2H4", 0, 1, False), ("CH3OH", -1, 2, False), ("HCN", 0, 1, True)]]


def _isolated(symbol: str) -> float:
    atom = Atoms(symbol, positions=[[0.0, 0.0, 0.0]])
    atom.calc = EMT()
    return float(atom.get_potential_energy())


def write_qcml(data_dir: Path, length_unit: float = 1.0) -> tuple[list[Path], list[dict[str, Any]]]:
    """Write the feature group ``dft_force_field`` under ``data_dir``; return its shard files and, per record in
    file order, what it holds as float32 round-trips it, in eV and Å (``outlier`` marks the flagged one).

    ``length_unit`` (Å) is the unit the positions are written in (a release in Bohr: ``ase.units.Bohr``).
    """
    version = data_dir / "qcml" / "dft_force_field" / "1.0.0"
    version.mkdir(parents=True)
    truth: list[dict[str, Any]] = []
    shards = []
    for s, group in enumerate(CONFORMATIONS):
        shard = version / f"qcml-full.tfrecord-{s:05d}-of-{len(CONFORMATIONS):05d}"
        writer = TFRecordWriter(str(shard))
        for k, (formula, charge, multiplicity, outlier) in enumerate(group):
            atoms = molecule(formula)
            atoms.rattle(0.04, seed=10 * s + k)
            atoms.calc = EMT()
            total = float(atoms.get_potential_energy()) / Hartree
            formation = total - sum(_isolated(x) for x in atoms.get_chemical_symbols()) / Hartree
            forces = atoms.get_forces() / (Hartree / Bohr)
            key = hashlib.sha256(f"{formula}-{s}-{k}".encode()).hexdigest()[:16]
            writer.write({
                "atomic_numbers": (atoms.numbers.tolist(), "int"),
                "positions": ((atoms.positions / length_unit).reshape(-1).tolist(), "float"),
                "pbe0_energy": ([total], "float"),
                "pbe0_formation_energy": ([formation], "float"),
                "pbe0_forces": (forces.reshape(-1).tolist(), "float"),
                "charge": ([charge], "int"),
                "multiplicity": ([multiplicity], "int"),
                "is_outlier": ([int(outlier)], "int"),
                "key_hash": (key.encode(), "byte"),
            })
            f32 = np.float32
            truth.append({"shard": shard.name, "record": k, "key_hash": key, "numbers": atoms.numbers.tolist(),
                          "pos": atoms.positions.astype(f32).astype(float),
                          "total": float(f32(total)) * Hartree, "formation": float(f32(formation)) * Hartree,
                          "forces": forces.astype(f32).astype(float) * (Hartree / Bohr),
                          "charge": charge, "multiplicity": multiplicity, "outlier": outlier})
        writer.close()
        shards.append(shard)
    lengths = [len(g) for g in CONFORMATIONS]
    (version / "dataset_info.json").write_text(json.dumps({
        "name": "qcml", "configName": "dft_force_field", "version": "1.0.0", "fileFormat": "tfrecord",
        "splits": [{"name": "full", "shardLengths": [str(n) for n in lengths],
                    "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}]}, indent=2))
    (version / "features.json").write_text(json.dumps({
        "pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
        "featuresDict": {"features": {name: {"pythonClassName": "tensorflow_datasets.core.features.tensor_feature"
                                             ".Tensor", "tensor": {"shape": {"dimensions": dims}, "dtype": dtype}}
                                      for name, dims, dtype in [
                                          ("atomic_numbers", ["-1"], "uint8"), ("positions", ["-1", "3"], "float32"),
                                          ("pbe0_energy", [], "float64"), ("pbe0_formation_energy", [], "float64"),
                                          ("pbe0_forces", ["-1", "3"], "float32"), ("charge", [], "int64"),
                                          ("multiplicity", [], "int64"), ("is_outlier", [], "bool")]}}}, indent=2))
    return shards, truth
