"""Demo-data app: generate one shard of a demo dataset, labelled by real physics, as extxyz.

``python -m models.demo --config cfg.json --result r.json`` with::

    {"dataset": "demo-emt", "output": "demo-emt-000.extxyz", "seed": 0, "start": 0, "count": 300}

``dataset`` is a registry name with a ``generator`` (demo-emt: EMT metals; demo-gfn2 / demo-gfn1: the same
molecules labelled by GFN2-xTB / GFN1-xTB; demo-dft: the small ones among them at B3LYP/6-31G*, which needs
PySCF, the ``[dft]`` extra). Structures ``start … start+count-1`` depend only on (seed, index),
so shards over disjoint index ranges add up to the set one big run would give. ``count`` defaults to the
generator's ``default_count``. The file is written atomically; the result gives counts and the file's sha256.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

from models.appio import BadInput, main_for
from models.atomic_files import atomic_path
from models.contracts import validate
from models.contracts.demo import DemoConfig, DemoResult
from models.registry import load_registry


def run(cfg: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    """Generate the shard (:class:`models.contracts.demo.DemoConfig` in, ``DemoResult`` out)."""
    import ase.io

    from models.atomic_files import sha256_file
    from models.data.demo import generate

    where = str(cfg_path)
    demo = validate(DemoConfig, cfg, where)
    try:
        info = load_registry().get(demo.dataset)
    except KeyError as exc:
        raise BadInput(f"{where}: field 'dataset': {exc.args[0]}") from exc
    if info.generator is None:
        raise BadInput(f"{where}: field 'dataset': {info.name!r} is not a demo dataset (no generator)")
    gen = dict(info.generator)
    seed, start = demo.seed, demo.start
    count = demo.count if demo.count is not None else int(gen.get("default_count", 100))
    out = Path(demo.output)
    if not out.is_absolute():
        out = cfg_path.parent / out
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if gen["kind"] == "dft" and importlib.util.find_spec("pyscf") is None:
        raise BadInput(
            f"{where}: field 'dataset': {info.name!r} is labelled with PySCF, which is not installed"
            " (pip install 'campaign[dft]')"
        )
    options = {k: gen[k] for k in ("method", "xc", "basis") if k in gen}
    atoms = list(generate(gen["kind"], seed, start, count, **options))
    with atomic_path(out) as tmp:
        ase.io.write(tmp, atoms, format="extxyz")
    return DemoResult.model_validate({
        "dataset": info.name,
        "head_id": info.head_id,
        "output": str(out),
        "sha256": sha256_file(out),
        "bytes": out.stat().st_size,
        "seed": seed,
        "start": start,
        "count": len(atoms),
        "atoms": sum(len(a) for a in atoms),
        "seconds": round(time.perf_counter() - t0, 3),
    }).model_dump(mode="json")


if __name__ == "__main__":
    main_for(run, "Generate a shard of a demo dataset labelled by EMT or xTB.")
