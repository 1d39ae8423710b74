import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from models import keys as K
from models.appio import BadInput
from models.data.graphs import radius_graph_pbc
from models.data.shards import pack_graphs, write_split
from models.data.split import structure_id
from models.data.store import GraphStore, open_split


def _records(structs):
    out = []
    for a in structs:
        ei, sh, _ = radius_graph_pbc(a.positions, a.cell.array, a.pbc, 4.0, 16)
        st = a.calc.results.get("stress")
        out.append({
            "z": a.numbers, "pos": a.positions, "forces": a.get_forces(), "cell": a.cell.array, "pbc": a.pbc,
            "energy": a.get_potential_energy(), "eref": 0.0, "stress": None if st is None else
            np.array([[st[0], st[5], st[4]], [st[5], st[1], st[3]], [st[4], st[3], st[2]]]),
            "sid": structure_id(a.numbers, a.positions, a.cell.array, a.pbc), "edge_index": ei, "shift": sh,
        })  # fmt: skip
    return out


@pytest.fixture
def store_dir(tmp_path, emt_structures):
    recs = _records(emt_structures)
    write_split(
        tmp_path / "demo" / "train", pack_graphs(recs), {"dataset": "demo", "head_id": 7}, shard_size=5
    )
    return tmp_path, recs


def _eq(a, b):
    if a.is_floating_point():
        return torch.equal(torch.nan_to_num(a, 123.0), torch.nan_to_num(b, 123.0))
    return torch.equal(a, b)


@pytest.mark.parametrize("cache", [True, False])
def test_roundtrip_across_shards(store_dir, cache):
    root, recs = store_dir
    s = open_split(root, "demo", "train", dtype=torch.float64, cache=cache)
    assert len(s) == len(recs) and s.dataset == "demo" and s.head_id == 7
    assert len(list((root / "demo" / "train").glob("shard-*.bp"))) == 3
    for i, r in enumerate(recs):
        d = s[i]
        np.testing.assert_array_equal(d[K.Z].numpy(), r["z"])
        np.testing.assert_allclose(d[K.POS].numpy(), r["pos"])
        assert d[K.ENERGY].item() == r["energy"] and d[K.HEAD].item() == 7
        assert d[K.HAS_STRESS].item() == (r["stress"] is not None)
        np.testing.assert_array_equal(d[K.EDGE_INDEX].numpy(), r["edge_index"])
        # edge vectors recomputed from stored shifts match the neighbour list
        vec = d.pos[d.edge_index[0]] - d.pos[d.edge_index[1]] + d.shift @ d.cell[0]
        assert float(vec.norm(dim=1).max()) < 4.0
    idx = [11, 0, 6, 6, 3]
    b = s.get_batch(idx)
    ref = Batch.from_data_list([s[i] for i in idx])
    for key in ref.keys():
        assert _eq(getattr(b, key), getattr(ref, key)), key
    assert b.num_graphs == 5 and b.cell.shape == (5, 3, 3) and b.pbc.dtype == torch.bool


def test_dtype_cast(store_dir):
    root, _ = store_dir
    b = open_split(root, "demo", "train", dtype=torch.float32).get_chunk(0, 4)
    assert b.pos.dtype == torch.float32 and b.energy.dtype == torch.float32 and b.z.dtype == torch.int64
    assert b.edge_index.dtype == torch.int64 and int(b.edge_index.max()) < b.z.numel()


def test_truncated_store_is_bad_input(store_dir):
    root, _ = store_dir
    data = root / "demo" / "train" / "shard-00001.bp" / "data.0"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(BadInput, match=r"shard-00001\.bp/data\.0: truncated"):
        GraphStore(root / "demo" / "train")


def test_corrupt_index_and_missing_store(store_dir):
    root, _ = store_dir
    with pytest.raises(BadInput, match="not a graph store"):
        GraphStore(root / "nothing")
    (root / "demo" / "train" / "index.json").write_text("{broken")
    with pytest.raises(BadInput, match=r"index\.json"):
        GraphStore(root / "demo" / "train")


def test_a_retained_share_serves_the_same_batches_and_holds_only_its_rows(store_dir):
    """A rank's share (graphs 4..9 of 3 shards of 5) in memory: the same batches as the fully cached store, for
    held graphs, for others (read from the files), and for runs crossing shards; only the share's rows held."""
    root, recs = store_dir
    full = open_split(root, "demo", "train", dtype=torch.float64, cache=True)
    share = open_split(root, "demo", "train", dtype=torch.float64, cache=False)
    from models.data.store import LABEL_VARS, LAYOUT_VARS

    # opened from the files, a store holds nothing per graph (no layout, no label, no atom or edge row) ...
    assert share._g == {} and share.held_bytes() == 0
    a, b = full.get_batch([3, 0, 7]), share.get_batch([3, 0, 7])  # ... and reads the rest on demand
    assert all(_eq(getattr(a, key), getattr(b, key)) for key in a.keys())
    share.retain(range(4, 10))
    for idx in ([4, 5, 6, 7, 8, 9], [9, 4, 6], [0, 11, 5], [3, 4, 5, 6], list(range(len(recs)))):
        a, b = full.get_batch(idx), share.get_batch(idx)
        for key in a.keys():
            assert _eq(getattr(a, key), getattr(b, key)), (idx, key)
    rows = sum(len(r["z"]) for r in recs[4:10]) * (8 + 3 * 8 + 3 * 8)  # z int64, pos, forces float64
    assert rows <= share.held_bytes() < full.held_bytes()
    # per-graph rows (layout and labels) for the share only
    assert share._g == {} and share._held is not None
    assert all(len(a) == 6 for a in [*share._held.layout.values(), *share._held.labels.values()])
    assert sorted(share._held.layout) == sorted(LAYOUT_VARS)
    assert share.share_bytes(range(4, 10)) == share.held_bytes()
    for name in LABEL_VARS + LAYOUT_VARS:  # read from the files for all graphs
        assert np.array_equal(share.graph_values(name), full.graph_values(name), equal_nan=True), name
    with pytest.raises(ValueError, match="cache=False"):
        full.retain([0])
