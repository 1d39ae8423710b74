"""The dataset registry: dataset name -> head id, level of theory, units, source format, citation.

One table (``models/datasets.yaml``, shipped with the package) read into typed, frozen records. It is the single
source of truth used by preprocessing, training, screening and the campaign database. This module imports only
the standard library and PyYAML so that the recipe validator on a login node can import it instantly.

Example:
    >>> from models.registry import load_registry
    >>> reg = load_registry()
    >>> reg.get("demo-emt").head_id
    100
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml

REGISTRY_PATH = Path(__file__).with_name("datasets.yaml")
KINDS = ("molecule", "periodic", "mixed")
UNIT_KEYS = ("energy", "forces", "length", "stress")
Kind = Literal["molecule", "periodic", "mixed"]


@dataclass(frozen=True)
class DatasetInfo:
    """One registered dataset (one level of theory = one fidelity = one output head).

    Attributes:
        name: Registry name, e.g. ``"omat24"``.
        head_id: Stable, unique integer routing graphs of this dataset to their output head.
        source: The published dataset this entry comes from (several entries may share one, e.g. ANI-1x at
            two levels of theory).
        level_of_theory: Method and basis / functional, e.g. ``"ωB97x/6-31G(d)"``.
        fidelity: Short fidelity label (``"dft-gga"``, ``"dft-hybrid"``, ``"cc"``, ``"xtb"``, ``"emt"`` …).
        units: Units of the *source files*: keys ``energy``, ``forces``, ``length``, ``stress``. Readers convert
            to eV, eV/Å, Å, eV/Å^3.
        source_format: Format of the published files (``extxyz``, ``ase-db``, ``ase-lmdb``, ``ani-hdf5`` …).
        reader: Name of the reader in :mod:`models.data.readers` handling that format, or ``None`` when no
            reader is implemented yet (``notes`` says why).
        reader_options: Keyword options for the reader (e.g. the HDF5 method prefix).
        citation: Reference to cite.
        kind: ``molecule``, ``periodic`` or ``mixed``.
        url: Where the data is published.
        n_structures: Approximate size of the published set.
        elements: Approximate number of elements covered.
        license: Data licence.
        generator: For demo datasets only: how to generate it (``{"kind": "emt"}``, ``{"kind": "xtb", …}``).
        notes: Free text.
    """

    name: str
    head_id: int
    source: str
    level_of_theory: str
    fidelity: str
    units: Mapping[str, str]
    source_format: str
    reader: str | None
    citation: str
    kind: Kind
    url: str = ""
    n_structures: int | None = None
    elements: int | None = None
    license: str = ""
    reader_options: Mapping[str, Any] = field(default_factory=dict)
    generator: Mapping[str, Any] | None = None
    notes: str = ""

    @property
    def is_demo(self) -> bool:
        """Whether this dataset is generated locally (has a generator)."""
        return self.generator is not None


class Registry:
    """The table of datasets, keyed by name. Iterates in head-id order."""

    def __init__(self, datasets: Mapping[str, DatasetInfo], path: Path | None = None) -> None:
        self._by_name = dict(sorted(datasets.items(), key=lambda kv: kv[1].head_id))
        self.path = path

    def get(self, name: str) -> DatasetInfo:
        """Return the dataset called ``name``.

        Raises:
            KeyError: ``name`` is not registered; the message lists the known names.
        """
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """Registered names in head-id order."""
        return list(self._by_name)

    def by_head(self, head_id: int) -> DatasetInfo:
        """Return the dataset with head id ``head_id`` (KeyError if none)."""
        for info in self._by_name.values():
            if info.head_id == head_id:
                return info
        raise KeyError(f"no dataset has head id {head_id}")

    def demo_names(self) -> list[str]:
        """Names of the locally generated demo datasets."""
        return [n for n, i in self._by_name.items() if i.is_demo]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[DatasetInfo]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)


def _parse_entry(name: str, raw: Any, where: str) -> DatasetInfo:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: datasets.{name}: expected a mapping")
    required = ("head_id", "level_of_theory", "fidelity", "units", "source_format", "citation", "kind")
    for key in required:
        if key not in raw:
            raise ValueError(f"{where}: datasets.{name}: missing field {key!r}")
    known = set(DatasetInfo.__dataclass_fields__) - {"name"}
    extra = set(raw) - known
    if extra:
        raise ValueError(f"{where}: datasets.{name}: unknown field(s) {sorted(extra)}")
    if not isinstance(raw["head_id"], int) or raw["head_id"] < 0:
        raise ValueError(f"{where}: datasets.{name}.head_id: expected a non-negative integer")
    if raw["kind"] not in KINDS:
        raise ValueError(f"{where}: datasets.{name}.kind: {raw['kind']!r} is not one of {KINDS}")
    units = raw["units"]
    if not isinstance(units, dict) or set(units) != set(UNIT_KEYS):
        raise ValueError(f"{where}: datasets.{name}.units: expected exactly the keys {UNIT_KEYS}")
    return DatasetInfo(
        name=name,
        head_id=raw["head_id"],
        source=raw.get("source", name),
        level_of_theory=str(raw["level_of_theory"]),
        fidelity=str(raw["fidelity"]),
        units={k: str(v) for k, v in units.items()},
        source_format=str(raw["source_format"]),
        reader=raw.get("reader"),
        citation=str(raw["citation"]).strip(),
        kind=raw["kind"],
        url=str(raw.get("url", "")),
        n_structures=raw.get("n_structures"),
        elements=raw.get("elements"),
        license=str(raw.get("license", "")),
        reader_options=dict(raw.get("reader_options") or {}),
        generator=dict(raw["generator"]) if raw.get("generator") is not None else None,
        notes=str(raw.get("notes", "")).strip(),
    )


def parse_registry(data: Any, where: str = "<registry>") -> Registry:
    """Build a :class:`Registry` from the parsed YAML document, checking names and head ids are unique.

    Raises:
        ValueError: A malformed entry or a duplicated head id; the message names ``where`` and the field.
    """
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        raise ValueError(f"{where}: expected a top-level 'datasets' mapping")
    entries = {name: _parse_entry(name, raw, where) for name, raw in data["datasets"].items()}
    seen: dict[int, str] = {}
    for name, info in entries.items():
        if info.head_id in seen:
            raise ValueError(
                f"{where}: datasets.{name}.head_id: {info.head_id} is already used by {seen[info.head_id]!r}"
            )
        seen[info.head_id] = name
    return Registry(entries, None if where.startswith("<") else Path(where))


@lru_cache(maxsize=4)
def _load_cached(path: str) -> Registry:
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return parse_registry(data, where=path)


def load_registry(path: str | Path | None = None) -> Registry:
    """Load the registry (the shipped ``models/datasets.yaml`` unless ``path`` is given). Cached per path."""
    return _load_cached(str(Path(path) if path is not None else REGISTRY_PATH))
