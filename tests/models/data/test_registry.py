import subprocess
import sys

import pytest
import yaml

from models.registry import REGISTRY_PATH, load_registry, parse_registry

SEED_SOURCES = {
    "Alexandria", "ANI-1x", "MPtrj", "OC20", "OC22", "OC25", "ODAC23", "OMat24", "OMol25", "OPoly2026",
    "∇²DFT", "QCML", "QM7-X", "Transition1x",
}  # fmt: skip


def test_registry_has_the_seed_datasets_and_demo_sets():
    reg = load_registry()
    assert SEED_SOURCES <= {i.source for i in reg}
    assert len([i for i in reg if not i.is_demo]) >= 16
    assert {"omol25", "omol25-4m", "omol25-neutral"} <= set(reg.names())
    assert set(reg.demo_names()) == {"demo-emt", "demo-gfn2", "demo-gfn1", "demo-dft"}
    ani = reg.get("ani1x")
    assert ani.units["energy"] == "Hartree" and ani.source_format == "ani-hdf5" and ani.kind == "molecule"
    assert reg.get("omat24").source_format == "ase-lmdb"
    assert reg.by_head(reg.get("demo-gfn1").head_id).name == "demo-gfn1"


def test_head_ids_unique_and_names_unique():
    reg = load_registry()
    heads = [i.head_id for i in reg]
    assert len(heads) == len(set(heads)) == len(reg)


def test_duplicate_head_id_is_rejected():
    data = yaml.safe_load(REGISTRY_PATH.read_text())
    data["datasets"]["demo-gfn1"]["head_id"] = data["datasets"]["demo-emt"]["head_id"]
    with pytest.raises(ValueError, match="head_id"):
        parse_registry(data, "x.yaml")


def test_unknown_name_lists_known_names():
    with pytest.raises(KeyError, match="demo-emt"):
        load_registry().get("no-such-set")


def test_registry_import_is_light():
    code = "import sys, models.registry as r; r.load_registry(); print(sorted({'torch','numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
