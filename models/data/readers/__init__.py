"""Readers of published dataset formats. Each yields :class:`~models.data.structure.Structure` records in eV/Å.

A reader is a callable ``read(path, *, units=None, **options) -> Iterator[Structure]`` where ``units`` is the
registry's units mapping of the source files (``energy``, ``forces``, ``length``, ``stress``). Readers raise
:class:`models.appio.BadInput` naming the file and the record / field on malformed input.

==============  ====================================================================================
name            formats
==============  ====================================================================================
``ase``         anything ``ase.io`` reads (extxyz as MPtrj/Alexandria exports use) and ASE SQLite ``.db``
``ani-hdf5``    ANI-1x / Transition1x HDF5 (groups with ``atomic_numbers``, ``coordinates``/``positions``,
                ``<method>.energy``, ``<method>.forces``)
``ase-lmdb``    the ASE-LMDB layout of OMat24 / OMol25 / OC20 (``*.aselmdb``, package ``ase-db-backends``)
``ocp-lmdb``    the Open Catalyst LMDBs as first published (OC20/OC22 S2EF, ODAC23: pickled PyG ``Data`` records
                with ``pos``, ``cell``, ``atomic_numbers``, ``y``, ``force``), loaded by an allow-list unpickler;
                option ``energy: adsorption | total`` says what ``y`` is
``mptrj-json``  MPtrj as published (``MPtrj_2022.9_full.json[.gz]``: material -> frame -> structure, energies,
                ``force``, ``stress`` in kBar), streamed; option ``energy: uncorrected | corrected``
``alexandria-json``  Alexandria's geometry-optimisation paths as published (``*.json.bz2``: id -> calculations ->
                ``steps`` with ``structure``, ``energy`` eV, ``forces`` eV/Å, ``stress`` kBar), streamed;
                option ``energy: uncorrected``
``spice-hdf5``  SPICE as published (one group per molecule: ``conformations`` bohr, ``dft_total_energy``
                hartree, ``dft_total_gradient`` hartree/bohr, mapped ``smiles`` for the charge)
``qm7x-hdf5``   QM7-X as published, once decompressed (molecule -> ``Geom-…`` group: ``atNUM``, ``atXYZ`` Å,
                ``ePBE0+MBD`` eV, ``totFOR`` eV/Å); options ``energy``, ``forces`` name other fields
``qcml-tfds``   QCML as published (TFDS record shards ``qcml-full.tfrecord-*-of-*`` of feature group
                ``dft_force_field``: ``positions`` Å, ``pbe0_energy`` / ``pbe0_formation_energy`` Hartree,
                ``pbe0_forces`` Hartree/Bohr); options ``energy: formation | total``, ``outliers: skip | keep``
==============  ====================================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from models.data.structure import Structure
from models.formats import READER_NAMES

__all__ = ["READER_NAMES", "Reader", "get_reader", "read_structures"]

Reader = Callable[..., Iterator[Structure]]


def get_reader(name: str) -> Reader:
    """Return the reader called ``name`` (imported lazily).

    Raises:
        KeyError: Unknown reader name (lists the known ones).
    """
    if name == "ase":
        from models.data.readers.ase_file import read_ase

        return read_ase
    if name == "ani-hdf5":
        from models.data.readers.ani_hdf5 import read_ani_hdf5

        return read_ani_hdf5
    if name == "ase-lmdb":
        from models.data.readers.ase_lmdb import read_ase_lmdb

        return read_ase_lmdb
    if name == "ocp-lmdb":
        from models.data.readers.ocp_lmdb import read_ocp_lmdb

        return read_ocp_lmdb
    if name == "spice-hdf5":
        from models.data.readers.spice_hdf5 import read_spice_hdf5

        return read_spice_hdf5
    if name == "alexandria-json":
        from models.data.readers.alexandria_json import read_alexandria_json

        return read_alexandria_json
    if name == "qm7x-hdf5":
        from models.data.readers.qm7x_hdf5 import read_qm7x_hdf5

        return read_qm7x_hdf5
    if name == "qcml-tfds":
        from models.data.readers.qcml_tfds import read_qcml_tfds

        return read_qcml_tfds
    if name == "mptrj-json":
        from models.data.readers.mptrj_json import read_mptrj_json

        return read_mptrj_json
    raise KeyError(f"unknown reader {name!r}; known readers: {', '.join(READER_NAMES)}")


def read_structures(name: str, path: str | Path, **kwargs: Any) -> Iterator[Structure]:
    """Shortcut: ``get_reader(name)(path, **kwargs)``."""
    return get_reader(name)(Path(path), **kwargs)
