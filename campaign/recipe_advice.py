"""Warnings about a recipe that is valid but probably not what its author meant (``campaign validate`` prints
them; they never fail it): values that are placeholders from an example (an allocation ``ABC123``, a database
on ``example.org``) and a scale that does not fit the data (a study giving each of 2,048 ranks less than one
batch of a 400-structure demo dataset).

Each warning names the recipe's field by its YAML path and line: where the profile being checked sets it when it
does, else where the base recipe does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from campaign.recipe import Recipe, line_of, yaml_path
from campaign.recipe_yaml import RecipeYAMLError, load_bounded

#: Allocation names that are examples, not allocations.
_PLACEHOLDER = re.compile(r"^(abc\d*|xyz\d*|xxx+|x+|changeme|change[-_]me|placeholder|todo|tbd|your[-_ ]?\w*|"
                          r"<[^>]*>|\{[^}]*\}|project|account|myproject|my[-_]?account)$", re.IGNORECASE)
#: Host names reserved for documentation (RFC 2606) and other obvious stand-ins.
_EXAMPLE_HOST = re.compile(r"(^|\.)(example\.(org|com|net)|invalid|example|host\.domain)$", re.IGNORECASE)
#: The share of a dataset the training split holds by default (80 / 10 / 10).
_TRAIN_SHARE = 0.8


@dataclass(frozen=True)
class Advice:
    """One warning: the field (YAML path), its line in the recipe file, and what looks wrong."""

    where: str
    line: int | None
    message: str

    def __str__(self) -> str:
        at = f" (line {self.line})" if self.line is not None else ""
        return f"{self.where}{at}: {self.message}"


def advise(recipe: Recipe, text: str, *, profile: str | None = None) -> list[Advice]:
    """The warnings for ``recipe`` (validated from ``text`` with ``profile`` applied)."""
    try:
        root, _ = load_bounded(text)
    except RecipeYAMLError:  # pragma: no cover - the recipe was just parsed from this text
        root = None

    def at(*paths: tuple[str | int, ...]) -> tuple[str, int | None]:
        """The first of ``paths`` the recipe writes, in the profile first, then in the base recipe."""
        prefixes = ([["profiles", profile]] if profile is not None else []) + [[]]
        for prefix in prefixes:
            for path in paths:
                full = [*prefix, *path]
                if _has(root, full):
                    return yaml_path(full), line_of(root, full)
        return yaml_path(list(paths[0])), None

    out: list[Advice] = []
    site = recipe.site
    if site.account and _PLACEHOLDER.match(site.account.strip()):
        where, line = at(("site", "account"))
        out.append(Advice(where, line, f"{site.account!r} looks like a placeholder, not an allocation: batch jobs "
                                       "would be refused or charged to the wrong project"))
    host = _db_host(recipe.database) if recipe.database else None
    if host is not None and _EXAMPLE_HOST.search(host):
        where, line = at(("database",))
        out.append(Advice(where, line, f"the database host {host!r} is an example name: point it at your "
                                       "PostgreSQL server (or leave database out for a SQLite file)"))
    out += _scale(recipe, at)
    return out


def _has(root: Any, path: list[Any]) -> bool:
    """Whether the YAML document writes ``path`` (mapping keys and sequence indices)."""
    import yaml

    node = root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    node = v
                    break
            else:
                return False
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return False
    return True


def _db_host(url: str) -> str | None:
    m = re.match(r"^[a-z0-9+]+://(?:[^@/]*@)?([^:/?]+)", url)
    return m.group(1) if m else None


def _structures(recipe: Recipe, names: list[str] | None) -> tuple[int, list[str]] | None:
    """Structures in the named datasets and the demo ones among them, when every one has a known size."""
    chosen = [d for d in recipe.datasets if names is None or d.name in names]
    if not chosen or any(d.count is None for d in chosen):
        return None  # sizes of datasets read from files are known only once preprocessed
    return sum(int(d.count or 0) for d in chosen), [d.name for d in chosen if d.name.startswith("demo-")]


def _scale(recipe: Recipe, at: Callable[..., tuple[str, int | None]]) -> list[Advice]:
    """Studies and training that would give each rank less than a batch. Studies with the same problem at the
    same place (inherited from ``hpo_defaults``) make one warning naming them all."""
    out: list[Advice] = []
    same: dict[tuple[str, int | None, str], list[str]] = {}
    for k, h in enumerate(recipe.stages.hpo or []):
        ranks = h.nodes_per_trial * h.ranks_per_node
        sized = _structures(recipe, h.datasets)
        if sized is None or ranks == 1:
            continue
        total, demo = sized
        per_rank = _TRAIN_SHARE * total / ranks
        if per_rank < h.batch_size:
            what = f"demo data ({', '.join(demo)}) " if demo else ""
            text = (f"{ranks} ranks per trial ({h.nodes_per_trial} nodes x {h.ranks_per_node}) share {what}of "
                    f"{total} structures: about {per_rank:.2g} training structures per rank, less than one batch of "
                    f"{h.batch_size}. Scale the data or the trials (demo datasets are laptop-sized)")
            where, line = at(("stages", "hpo", k, "nodes_per_trial"), ("hpo_defaults", "nodes_per_trial"))
            same.setdefault((where, line, text), []).append(h.name)
    for (where, line, text), names in same.items():
        label = f"HPO {names[0]!r}" if len(names) == 1 else f"HPO {', '.join(names)}"
        out.append(Advice(where, line, f"{label}: {text}"))
    tr = recipe.stages.train
    if tr is not None:
        sized = _structures(recipe, None)
        ranks = tr.nodes * tr.ranks_per_node
        if sized is not None and ranks > 1 and _TRAIN_SHARE * sized[0] / ranks < 1:
            where, line = at(("stages", "train", "nodes"))
            out.append(Advice(where, line, f"training on {ranks} ranks with {sized[0]} structures in all: most "
                                           "ranks would have no data"))
    return out
