import numpy as np
import pytest

from models.data.loader import MultiDatasetLoader, dataset_weights
from models.data.shards import pack_graphs, write_split
from models.data.store import GraphStore


def _store(root, name, head, n):
    recs = [{"z": np.array([1, 1]), "pos": np.array([[0, 0, 0], [0, 0, 0.7 + 0.001 * k]]), "forces": None,
             "cell": np.zeros((3, 3)), "pbc": np.zeros(3, bool), "energy": float(k), "eref": 0.0, "stress": None,
             "sid": head * 10_000 + k, "edge_index": np.array([[1, 0], [0, 1]]), "shift": np.zeros((2, 3))}
            for k in range(n)]  # fmt: skip
    write_split(root / name, pack_graphs(recs), {"dataset": name, "head_id": head})
    return GraphStore(root / name)


@pytest.fixture
def stores(tmp_path):
    return [_store(tmp_path, "big", 0, 60), _store(tmp_path, "small", 1, 10)]


def test_proportional_epoch_visits_every_graph_once(stores):
    loader = MultiDatasetLoader(stores, 8, seed=1)
    sids = np.concatenate([b.sid.numpy() for b in loader])
    assert len(loader) == 9 and sids.size == 70 and np.unique(sids).size == 70
    b = next(iter(loader))
    assert b.num_graphs == 8 and int(b.edge_index.max()) < b.z.numel()
    assert set(b.head.tolist()) <= {0, 1}


def test_ranks_get_disjoint_shards_and_equal_lengths(stores):
    seen = []
    lengths = set()
    for r in range(3):
        loader = MultiDatasetLoader(stores, 4, rank=r, world_size=3, seed=0)
        lengths.add(len(loader))
        seen.append({int(s) for b in loader for s in b.sid})
    assert len(lengths) == 1
    assert set.union(*seen) == {h * 10_000 + k for h, n in ((0, 60), (1, 10)) for k in range(n)}
    big = [{x for x in s if x < 10_000} for s in seen]  # 60 graphs split evenly over 3 ranks: no overlap
    assert not (big[0] & big[1]) and not (big[0] & big[2]) and not (big[1] & big[2])


def test_temperature_and_uniform_weights(stores):
    np.testing.assert_allclose(dataset_weights([60, 10], "uniform"), [0.5, 0.5])
    w = dataset_weights([60, 10], "temperature", temperature=2.0)
    np.testing.assert_allclose(w, np.sqrt([60, 10]) / np.sqrt([60, 10]).sum())
    loader = MultiDatasetLoader(stores, 10, sampling="uniform", epoch_size=200, seed=3)
    heads = np.concatenate([b.head.numpy() for b in loader])
    assert heads.size == 200 and (heads == 1).sum() == 100  # small set cycled 10x


def test_resume_mid_epoch_reproduces_the_rest(stores):
    a = MultiDatasetLoader(stores, 8, seed=5)
    a.set_epoch(2)
    it = iter(a)
    for _ in range(3):
        next(it)
    state = a.state_dict()
    rest = [b.sid.tolist() for b in it]
    b = MultiDatasetLoader(stores, 8, seed=5)
    b.load_state_dict(state)
    b.set_epoch(2)
    assert [x.sid.tolist() for x in b] == rest
    with pytest.raises(ValueError, match="batch_size"):
        MultiDatasetLoader(stores, 4, seed=5).load_state_dict(state)


def test_unshuffled_is_ordered_and_drop_last(stores):
    loader = MultiDatasetLoader(stores, 16, shuffle=False, drop_last=True)
    sids = np.concatenate([b.sid.numpy() for b in loader])
    assert len(loader) == 4 and sids.size == 64
    assert (np.diff(sids[:60]) > 0).all()


def test_explicit_weights_set_each_datasets_share(stores):
    """A replaying fine-tune: the small (new) set every epoch in full, the big one at a quarter of the epoch."""
    loader = MultiDatasetLoader(stores, 5, weights=[0.25, 0.75], epoch_size=40, seed=2)
    heads = np.concatenate([b.head.numpy() for b in loader])
    assert heads.size == 40 and (heads == 1).sum() == 30 and (heads == 0).sum() == 10
    with pytest.raises(ValueError, match="weights"):
        MultiDatasetLoader(stores, 5, weights=[1.0], epoch_size=40)
