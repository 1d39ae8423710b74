"""Reading a recipe's YAML with bounds, so that no input can exhaust the machine or smuggle in a non-number.

A recipe is small: a few hundred lines. Before anything is built from the text it is checked against limits a
real recipe never reaches, each refused with the line where it was hit:

* the text's size (:data:`MAX_BYTES`);
* nesting depth (:data:`MAX_DEPTH`), counted on the parser's event stream, which needs no recursion (PyYAML's
  composer recurses once per level and would otherwise stop with a ``RecursionError``);
* the size of the document with every alias expanded (:data:`MAX_NODES`): an "alias bomb" (``b: [*a, *a]``
  nine levels deep) is a few lines that expand to billions of nodes once validated or copied; the expanded
  size is counted on the composed node graph, each shared node once, without expanding anything;
* duplicate keys, and numbers that are not finite (``.inf``, ``.nan``, ``1e999``): every number of a recipe is a
  count, a size, a rate or a range bound, and a non-finite one would only fail later, in a stage.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

#: Largest recipe text accepted, bytes.
MAX_BYTES = 1_048_576
#: Deepest nesting of mappings and sequences.
MAX_DEPTH = 64
#: Most nodes the document may hold with every alias expanded.
MAX_NODES = 200_000

_FLOAT_TAG = "tag:yaml.org,2002:float"


class RecipeYAMLError(ValueError):
    """The text is not acceptable recipe YAML; ``line`` is 1-based (None when it is the whole text)."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_bounded(text: str) -> tuple[yaml.Node | None, Any]:
    """Compose and construct recipe YAML within the limits above.

    Returns:
        ``(root node, data)``: the node graph (for line numbers) and the plain Python data.

    Raises:
        RecipeYAMLError: a limit was hit, a number is not finite, a key is repeated, or the YAML is malformed.
    """
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_BYTES:
        raise RecipeYAMLError(f"the recipe is {size} bytes; the limit is {MAX_BYTES}", None)
    try:
        _check_depth(text)
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            if root is not None:
                _check_nodes(root)
            data = loader.construct_document(root) if root is not None else None  # from the checked nodes
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeYAMLError(f"malformed YAML: {problem}", mark.line + 1 if mark is not None else None) from None
    return root, data


def _check_depth(text: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise RecipeYAMLError(f"nested more than {MAX_DEPTH} levels deep", event.start_mark.line + 1)
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1


def _check_nodes(root: yaml.Node) -> None:
    """Count the expanded size bottom-up over the node graph (an alias is a shared node, counted by reference),
    and refuse non-finite numbers and recursive aliases."""
    size: dict[int, int] = {}  # node id -> expanded size, once its children are sized
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_sized = stack.pop()
        if children_sized:
            total = 1 + sum(size[id(c)] for c in _children(node))
            if total > MAX_NODES:
                raise RecipeYAMLError(f"the document expands to more than {MAX_NODES} values (aliases repeated "
                                      "within aliases?)", node.start_mark.line + 1)
            size[id(node)] = total
            continue
        if id(node) in size:
            continue
        if id(node) in entered:
            raise RecipeYAMLError("an alias refers to a node that contains it", node.start_mark.line + 1)
        entered.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            _check_finite(node)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_finite(node: yaml.ScalarNode) -> None:
    if node.tag != _FLOAT_TAG:
        return
    value = yaml.SafeLoader.construct_yaml_float(_Loader(""), node)
    if not math.isfinite(value):
        raise RecipeYAMLError(f"{node.value!r} is not a finite number", node.start_mark.line + 1)
