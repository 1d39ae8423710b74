"""The recipe reference (``docs/recipe-reference.md``), generated from the recipe's JSON Schema.

``campaign recipe reference --out docs/recipe-reference.md`` regenerates it; a test fails when the committed
file differs from what the schema gives, so the reference cannot drift from the code.
"""

from __future__ import annotations

import json
from typing import Any

HEADER = """# Recipe reference

<!-- Generated from the pydantic schema by `campaign recipe reference --out docs/recipe-reference.md`;
     do not edit by hand (a test checks that it is up to date). -->

A recipe is one YAML file. Unknown keys are errors; every error names the file, the YAML path and the line
(`campaign validate RECIPE`). `profiles` are partial recipes deep-merged over the base by `--profile NAME`.
The JSON Schema itself: `campaign recipe schema`.

**The HPO objective** (what the studies minimise, what promotion ranks and what `campaign status`, `trials`
and the report show as "objective") is the best epoch's validation loss of a trial: over the validation
split, the sum over heads of `head weight x [MSE(energy per atom) + force_weight x MSE(force components)]`,
with energies per atom in eV and forces in eV/Å, so its terms are in eV² and eV²/Å² (`force_weight` below, 10 by
default). Lower is better; it is comparable between trials of the same datasets and weights only. The
per-head energy MAE (eV/atom) and force MAE (eV/Å) of that epoch are recorded with it (`trials.metrics`).
"""

_CONSTRAINTS = (("minimum", "≥ {}"), ("exclusiveMinimum", "> {}"), ("maximum", "≤ {}"),
                ("exclusiveMaximum", "< {}"), ("minLength", "length ≥ {}"), ("maxLength", "length ≤ {}"),
                ("minItems", "items ≥ {}"), ("maxItems", "items ≤ {}"), ("minProperties", "entries ≥ {}"),
                ("pattern", "matches `{}`"))


def _anchor(name: str) -> str:
    return name.lower()


def _type(prop: dict[str, Any]) -> str:
    """A short type: ``int``, ``str | null``, ``list[DatasetSpec]``, ``map[str, IntParam | FloatParam]``."""
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    for key in ("anyOf", "oneOf"):
        if key in prop:
            return " \\| ".join(_type(p) for p in prop[key])
    if "enum" in prop:
        return " \\| ".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    t = prop.get("type")
    if t == "array":
        if "prefixItems" in prop:
            return "[" + ", ".join(_type(p) for p in prop["prefixItems"]) + "]"
        return f"list[{_type(prop.get('items', {}))}]"
    if t == "object":
        extra = prop.get("additionalProperties")
        return f"map[str, {_type(extra)}]" if isinstance(extra, dict) and extra else "mapping"
    return {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "null"}.get(
        t or "", "any")


def _constraints(prop: dict[str, Any]) -> list[str]:
    out = [fmt.format(prop[k]) for k, fmt in _CONSTRAINTS if k in prop]
    for alt in prop.get("anyOf", []):
        out += _constraints(alt)
    return out


def _default(prop: dict[str, Any], required: bool) -> str:
    if required:
        return "**required**"
    if "default" not in prop:
        return "optional"  # an empty list/mapping, or the nested section's own defaults
    return f"`{json.dumps(prop['default'], ensure_ascii=False)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(title: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"## {title}", ""]
    if schema.get("description"):
        lines += [schema["description"].strip(), ""]
    lines += ["| key | type | default | constraints | description |", "| --- | --- | --- | --- | --- |"]
    required = set(schema.get("required", []))
    for key, prop in schema.get("properties", {}).items():
        lines.append(f"| `{key}` | {_type(prop)} | {_cell(_default(prop, key in required))} | "
                     f"{_cell(', '.join(_constraints(prop)))} | {_cell(prop.get('description', ''))} |")
    return [*lines, ""]


def _order(schema: dict[str, Any]) -> list[str]:
    """Definitions in the order a reader meets them: breadth-first from the recipe's own keys."""
    defs = schema.get("$defs", {})
    seen: list[str] = []
    queue = [schema]
    while queue:
        node = queue.pop(0)
        for ref in _refs(node):
            if ref not in seen and ref in defs:
                seen.append(ref)
                queue.append(defs[ref])
    return seen + sorted(set(defs) - set(seen))


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else []
        for k, v in node.items():
            if k != "$defs":
                out += _refs(v)
        return out
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def render_reference(schema: dict[str, Any] | None = None) -> str:
    """The Markdown reference of a recipe schema (default: :func:`campaign.recipe.recipe_schema`)."""
    if schema is None:
        from campaign.recipe import recipe_schema

        schema = recipe_schema()
    lines = [HEADER, *_table("Recipe (top level)", schema)]
    for name in _order(schema):
        lines += _table(name, schema["$defs"][name])
    return "\n".join(lines).rstrip() + "\n"
