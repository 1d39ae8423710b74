"""What anything in a campaign was made from, as a tree with names: a hit, from the screening task that found it,
from the models it used, from the trials they were promoted from, from the datasets those trained on (with their
levels of theory and content hashes), from the raw files those were preprocessed from.

The walk is the ``model_lineage`` named query (``db/queries/model_lineage.sql``, from any kind of node): the
typed ``lineage`` edges followed upstream, ``input_of`` edges from a task to what it read, every other kind from
a thing to what it came from. Each node is then named from its own table. Reads go through
:func:`db.readonly.readonly_snapshot` (one consistent snapshot, no SQLAlchemy).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from campaign.errors import CampaignInputError
from db.queries import get_query
from db.readonly import Snapshot, as_json, readonly_snapshot

#: Node kinds a walk may start from, and the table holding them.
STARTS = {"model": "models", "hit": "screening_hits", "dataset": "datasets", "trial": "trials", "task": "tasks",
          "artifact": "artifacts"}
@dataclass(frozen=True)
class Edge:
    """``node`` reached from ``parent`` over an edge of kind ``via`` (``self`` for the start)."""

    depth: int
    node: tuple[str, str]
    via: str
    parent: tuple[str, str]


@dataclass
class Lineage:
    """The walk from one node: its edges (breadth first) and a name for every node reached."""

    start: tuple[str, str]
    edges: list[Edge]
    labels: dict[tuple[str, str], str]

    def rows(self) -> list[dict[str, Any]]:
        """One row per edge, for tables, CSV and JSON."""
        return [{"depth": e.depth, "node_kind": e.node[0], "node_id": e.node[1], "node": self.labels.get(e.node, ""),
                 "via": e.via, "from_kind": e.parent[0], "from_id": e.parent[1]} for e in self.edges]

    def children(self) -> dict[tuple[str, str], list[Edge]]:
        """Upstream neighbours of each node (what it was made from), in walk order."""
        out: dict[tuple[str, str], list[Edge]] = defaultdict(list)
        for e in self.edges:
            if e.via != "self":
                out[e.parent].append(e)
        return out


def parse_node(text: str) -> tuple[str, str]:
    """``"3"`` -> ``("model", "3")``; ``"hit:17"`` -> ``("hit", "17")``.

    Raises:
        CampaignInputError: an unknown kind.
    """
    kind, sep, ident = text.partition(":")
    if not sep:
        kind, ident = "model", text
    kind = kind.strip().lower()
    if kind not in STARTS or not ident.strip():
        raise CampaignInputError(f"not a lineage node: {text!r} (write MODEL_ID, or KIND:ID with KIND one of "
                                 f"{', '.join(STARTS)})")
    return kind, ident.strip()


def walk(node: tuple[str, str], *, db: str | None = None) -> Lineage:
    """Everything upstream of ``node``, named.

    Raises:
        CampaignInputError: no such node.
    """
    kind, ident = node
    with readonly_snapshot(db) as snap:
        if not snap.rows(f"SELECT 1 FROM {STARTS[kind]} WHERE id = :id", {"id": _typed(kind, ident)}):
            raise CampaignInputError(f"no {kind} with id {ident} in the campaign database")
        walk_sql = get_query("model_lineage", snap.dialect).sql  # parameters as strings: ids are not numbers
        edges = [Edge(int(d), (nk, str(ni)), via, (fk, str(fi)))
                 for d, nk, ni, via, fk, fi in snap.rows(walk_sql, {"kind": kind, "model": ident})]
        labels = _labels(snap, {e.node for e in edges})
    return Lineage(node, edges, labels)


def _typed(kind: str, ident: str) -> Any:
    return ident if kind == "task" else int(ident) if ident.isdigit() else -1


def _short(h: str | None) -> str:
    return f"{h[:12]}…" if h else "–"


def _labels(snap: Snapshot, nodes: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    by_kind: dict[str, list[str]] = defaultdict(list)
    for k, i in nodes:
        by_kind[k].append(i)
    out: dict[tuple[str, str], str] = {}

    def fetch(kind: str, sql: str) -> list[tuple[Any, ...]]:
        ids = by_kind.get(kind, [])
        if not ids:
            return []
        marks = ", ".join(f":p{n}" for n in range(len(ids)))
        return snap.rows(sql.format(ids=marks), {f"p{n}": _typed(kind, i) for n, i in enumerate(ids)})

    for i, name, role, family, metrics in fetch("model", "SELECT id, name, role, family, metrics FROM models "
                                                         "WHERE id IN ({ids})"):
        obj = (as_json(metrics) or {}).get("objective")
        out[("model", str(i))] = (f"model {i} {name} ({family}, {role}"
                                  + ("" if obj is None else f", objective {float(obj):.4g}") + ")")
    for i, hpo, number, status, objective in fetch("trial", "SELECT id, hpo, number, status, objective FROM trials "
                                                            "WHERE id IN ({ids})"):
        out[("trial", str(i))] = (f"trial {hpo} #{number} ({status}"
                                  + ("" if objective is None else f", objective {float(objective):.4g}") + ")")
    for i, key, state in fetch("task", "SELECT id, key, state FROM tasks WHERE id IN ({ids})"):
        out[("task", str(i))] = f"task {key} ({state}, {i[:8]}…)"
    for i, name, lot, counts, chash in fetch("dataset", "SELECT id, name, level_of_theory, counts, content_hash "
                                                        "FROM datasets WHERE id IN ({ids})"):
        n = sum(v for v in (as_json(counts) or {}).values() if isinstance(v, int))
        out[("dataset", str(i))] = (f"dataset {name} ({lot or 'level of theory not recorded'}, {n} structures, "
                                    f"content {_short(chash)})")
    for i, kind, path, sha in fetch("artifact", "SELECT id, kind, path, sha256 FROM artifacts WHERE id IN ({ids})"):
        out[("artifact", str(i))] = f"{kind} {path} (sha256 {_short(sha)})"
    for i, rank, formula, natoms, e in fetch("hit", "SELECT id, rank, formula, natoms, energy_per_atom "
                                                    "FROM screening_hits WHERE id IN ({ids})"):
        out[("hit", str(i))] = (f"hit {i}: rank {rank}, {formula} ({natoms} atoms"
                                + ("" if e is None else f", {float(e):.4g} eV/atom") + ")")
    for i, name in fetch("campaign", "SELECT id, name FROM campaigns WHERE id IN ({ids})"):
        out[("campaign", str(i))] = f"campaign {name}"
    return out


def render_tree(lin: Lineage) -> Any:
    """The walk as a Rich tree: under each node, what it was made from (with the edge's kind); a node reached
    again by another path is named there and marked ``(above)`` instead of being expanded twice."""
    from rich.tree import Tree

    kids = lin.children()
    root = Tree(f"[bold]{lin.labels.get(lin.start, ' '.join(lin.start))}[/]")
    shown: set[tuple[str, str]] = {lin.start}

    def grow(branch: Tree, node: tuple[str, str]) -> None:
        for e in kids.get(node, []):
            label = lin.labels.get(e.node, f"{e.node[0]} {e.node[1]} (not in the database)")
            if e.node in shown:
                branch.add(f"[dim]{e.via}[/] {label} [dim](above)[/]")
                continue
            shown.add(e.node)
            grow(branch.add(f"[dim]{e.via}[/] {label}"), e.node)

    grow(root, lin.start)
    return root
