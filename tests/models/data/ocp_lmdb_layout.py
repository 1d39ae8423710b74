"""Write a small LMDB in the layout of the Open Catalyst LMDBs as first published (OC20/OC22 S2EF, ODAC23).

The layout is what OCP's ``scripts/preprocess_ef.py`` wrote and its ``LmdbDataset`` (fairchem's, with
``pyg2_data_transform`` for PyG 2) reads: ``lmdb.open(path, subdir=False, map_size=…)``; keys ``f"{i}".encode
("ascii")`` and ``b"length"``; values ``pickle.dumps(data, protocol=-1)`` of a PyG 1.x ``Data`` whose fields sit in
its ``__dict__`` (the pickle is ``NEWOBJ torch_geometric.data.data.Data`` then ``BUILD`` with that dict; tensors
by torch's ``_rebuild_tensor_v2``), as ``AtomsToGraphs.convert`` built it: ``pos`` [N, 3] float32, ``cell``
[1, 3, 3], ``atomic_numbers`` [N] float32, ``natoms``, ``tags``, ``fixed``, ``y`` (eV), ``force`` [N, 3] float32,
``sid``, ``fid``, and PyG's own ``x``/``edge_index`` left ``None``. Labels here come from EMT on a Cu slab with
an O adatom (``y`` the EMT total energy).
"""

from __future__ import annotations

import copyreg
import io
import pickle
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import torch
from ase.build import add_adsorbate, fcc100
from ase.calculators.emt import EMT
from torch_geometric.data import Data


class _PyG1Pickler(pickle.Pickler):
    """Pickle a ``Data`` as PyG 1.x did: NEWOBJ of the class, then BUILD with the fields as its ``__dict__``."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is Data and "_store" not in obj.__dict__:
            return (copyreg.__newobj__, (Data,), dict(obj.__dict__))
        return NotImplemented


def pyg1_record(fields: dict[str, Any]) -> bytes:
    """The bytes OCP stored for one structure."""
    data = Data.__new__(Data)
    data.__dict__.update({"x": None, "edge_index": None, "edge_attr": None, "y": None, "pos": None,
                          "normal": None, "face": None, **fields})
    buf = io.BytesIO()
    _PyG1Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(data)
    return buf.getvalue()


def write_ocp_lmdb(path: Path, frames: int = 3) -> list[dict[str, Any]]:
    """Write ``frames`` rattled frames of a Cu(100)+O slab; return each record's truth (eV, eV/Å, Å)."""
    truth = []
    env = lmdb.open(str(path), subdir=False, map_size=1 << 26, meminit=False, map_async=True)
    with env.begin(write=True) as txn:
        for i in range(frames):
            slab = fcc100("Cu", size=(2, 2, 3), vacuum=6.0)
            add_adsorbate(slab, "O", 1.6, "hollow")
            slab.rattle(0.03, seed=i)
            slab.calc = EMT()
            e, f = float(slab.get_potential_energy()), slab.get_forces()
            tags = slab.get_tags()
            fields = {"pos": torch.tensor(slab.positions, dtype=torch.float32),
                      "cell": torch.tensor(np.array(slab.cell), dtype=torch.float32).view(1, 3, 3),
                      "atomic_numbers": torch.tensor(slab.numbers, dtype=torch.float32),
                      "natoms": len(slab), "tags": torch.tensor(tags, dtype=torch.long),
                      "fixed": torch.tensor((tags == 3).astype(np.float32)), "y": e,
                      "force": torch.tensor(f, dtype=torch.float32), "sid": 2472718, "fid": i}
            txn.put(f"{i}".encode("ascii"), pyg1_record(fields))
            truth.append({"key": str(i), "numbers": slab.numbers.tolist(), "energy": e,
                          "pos": slab.positions.astype(np.float32).astype(np.float64),
                          "cell": np.array(slab.cell, dtype=np.float32).astype(np.float64),
                          "forces": f.astype(np.float32).astype(np.float64)})
        txn.put(b"length", pickle.dumps(frames, protocol=-1))
    env.sync()
    env.close()
    return truth
