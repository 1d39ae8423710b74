"""Reader of the Open Catalyst LMDBs as originally published: OC20 and OC22 S2EF, ODAC23 (``*.lmdb``, from the
fairchem / OCP download scripts; L. Chanussot et al., ACS Catal. 11, 6059 (2021); R. Tran et al., ACS Catal.
13, 3066 (2023)).

Layout (what OCP's ``LmdbDataset`` reads and its ``preprocess_ef.py`` wrote): one LMDB environment per file
(``subdir=False``), keys ``b"0"``, ``b"1"``, … (ASCII indices) and optionally ``b"length"``; each value a pickle
(protocol -1) of a PyTorch Geometric ``Data`` object of PyG 1.x, i.e. its fields in the object's ``__dict__``:

* ``pos`` [N, 3] float32, Å; ``cell`` [1, 3, 3] float32, Å (rows); ``atomic_numbers`` [N] float32;
  ``natoms`` int; ``tags`` [N] (0 sub-surface, 1 surface, 2 adsorbate); ``fixed`` [N] (1 = fixed);
* ``y`` float: the energy, eV — OC20's S2EF LMDBs hold the **adsorption** energy (the DFT total minus the clean
  slab and gas-phase references), OC22's and ODAC23's the **total** energy;
* ``force`` [N, 3] float32, eV/Å; ``sid``, ``fid`` the system and frame ids.

The file does not say which energy ``y`` is, so the option ``energy`` must (``adsorption`` or ``total``), and the
registry entry of each dataset says it. Files written by PyG 2 (``Data`` holding a ``_store``) read the same way.

Pickles can run code when loaded, so records are loaded with an allow-list unpickler: only PyG's ``Data`` and
its storage (read into plain records, without PyG), torch's tensor rebuild, and ``OrderedDict``; a tensor's
storage bytes are loaded with ``torch.load(weights_only=True)``. Anything else in a record is refused, named.
Records are read one at a time in key order (bounded memory).
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.appio import BadInput
from models.data.readers.fields import numeric, require_units
from models.data.structure import Structure

ENERGY_CHOICES = ("adsorption", "total")


class _Record:
    """What a pickled PyG ``Data`` (or its ``GlobalStorage``) becomes: its state, nothing else."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = dict(state) if isinstance(state, Mapping) else {}


def _storage_from_bytes(b: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(b), weights_only=True)  # torch's own _load_from_bytes uses weights_only=False


class _AllowListUnpickler(pickle.Unpickler):
    """Unpickle OCP records: PyG data as :class:`_Record`, torch tensors through torch's rebuild; nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch_geometric.data") and name in ("Data", "GlobalStorage", "DataEdgeAttr",
                                                                   "DataTensorAttr"):
            return _Record
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _storage_from_bytes
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            import importlib

            return getattr(importlib.import_module(module), name)
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a graph record")


def _fields(raw: bytes, where: str) -> dict[str, Any]:
    try:
        obj = _AllowListUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:  # any malformed or disallowed pickle: named, never executed
        raise BadInput(f"{where}: not an OCP graph record ({exc})") from None
    if not isinstance(obj, _Record):
        raise BadInput(f"{where}: not an OCP graph record (a {type(obj).__name__})")
    state = obj.state
    store = state.get("_store")
    if isinstance(store, _Record):  # written by PyG 2: the fields live in its storage's mapping
        mapping = store.state.get("_mapping")
        state = dict(mapping) if isinstance(mapping, Mapping) else {}
    return state


def read_ocp_lmdb(path: str | Path, *, energy: str | None = None, units: Mapping[str, str] | None = None,
                  with_forces: bool = True) -> Iterator[Structure]:
    """Yield every record of an OCP LMDB file in key order.

    Args:
        path: A ``*.lmdb`` file (``data.0000.lmdb`` …).
        energy: What the file's ``y`` is: ``adsorption`` (OC20 S2EF) or ``total`` (OC22, ODAC23).
        units: The registry's source units (eV, eV/Å, Å).
        with_forces: Read the forces.

    Raises:
        BadInput: another ``energy``, a file that is not an LMDB, or a record that is not a graph (named).
    """
    import lmdb

    if energy not in ENERGY_CHOICES:
        raise BadInput(f"reader ocp-lmdb: option 'energy' must say what the file's y is: 'adsorption' (OC20 "
                       f"S2EF) or 'total' (OC22, ODAC23), got {energy!r}")
    require_units("ocp-lmdb", "the OCP LMDBs", units)
    path = Path(path)
    try:
        env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False, meminit=False,
                        max_readers=1)
    except lmdb.Error as exc:
        raise BadInput(f"{path}: not an LMDB file ({exc})") from None
    n = 0
    try:
        with env.begin(buffers=False) as txn:
            for key, raw in txn.cursor():  # LMDB's key order (bytewise): deterministic, one record at a time
                if not key.isdigit():  # b"length" and the like
                    continue
                n += 1
                yield _structure(raw, f"{path}:{key.decode('ascii')}", with_forces)
    finally:
        env.close()
    if n == 0:
        raise BadInput(f"{path}: no OCP records (keys b'0', b'1', …)")


def _structure(raw: bytes, where: str, with_forces: bool) -> Structure:
    """One record as a :class:`Structure`."""
    f = _fields(raw, where)
    for field in ("pos", "atomic_numbers", "cell", "y"):
        if f.get(field) is None:
            raise BadInput(f"{where}: field '{field}' is missing")
    z = numeric(f["atomic_numbers"], None, where, "atomic_numbers")
    if z.ndim != 1 or not z.size:
        raise BadInput(f"{where}: field 'atomic_numbers' has shape {z.shape}, expected (N,)")
    n = z.shape[0]
    pos = numeric(f["pos"], (n, 3), where, "pos")
    cell = numeric(f["cell"], (1, 3, 3), where, "cell").reshape(3, 3)
    e = float(numeric(f["y"], (), where, "y")) if np.ndim(f["y"]) == 0 else \
        float(numeric(f["y"], (1,), where, "y")[0])
    forces = numeric(f["force"], (n, 3), where, "force") if with_forces and f.get("force") is not None \
        else None
    return Structure(z=np.rint(z).astype(np.int64), pos=pos, cell=cell, pbc=np.ones(3, dtype=bool),
                     energy=e, forces=forces, origin=where)
