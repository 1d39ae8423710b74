"""The campaign database described from its models: every table (with its model's docstring) and every column
(type, nullability, key, index, foreign key). ``docs/database.md`` is generated from it (``campaign sql --schema
--out docs/database.md``; a test fails when the committed file is stale) and ``campaign sql --schema`` prints it.
"""

from __future__ import annotations

import inspect

from sqlalchemy import Table

from db import models as m


def _model_doc(table: Table) -> str:
    for mapper in m.Base.registry.mappers:
        if mapper.local_table is table:
            return inspect.cleandoc(mapper.class_.__doc__ or "").replace("\n", " ")
    return ""


def _column_notes(table: Table, name: str) -> str:
    col = table.c[name]
    notes = []
    if col.primary_key:
        notes.append("primary key")
    notes += [f"→ {fk.target_fullname}" for fk in col.foreign_keys]
    if col.unique:
        notes.append("unique")
    if any(name in [c.name for c in ix.columns] for ix in table.indexes):
        notes.append("indexed")
    return ", ".join(notes)


def schema_markdown() -> str:
    """``docs/database.md``: the tables in alphabetical order, each with its columns in table order."""
    lines = [
        "# The campaign database",
        "",
        "Generated from `db/models.py` by `campaign sql --schema --out docs/database.md`; do not edit by hand. "
        "Times are UTC; JSON columns hold the task specs, results, configs and metrics the stages record. "
        "Query it with `campaign sql` (read-only; see [security](security.md)).",
        "",
    ]
    for name in sorted(m.Base.metadata.tables):
        table = m.Base.metadata.tables[name]
        lines += [f"## `{name}`", "", _model_doc(table), "", "| column | type | null | notes |",
                  "| --- | --- | --- | --- |"]
        for col in table.columns:
            lines.append(f"| `{col.name}` | {col.type} | {'yes' if col.nullable else 'no'} | "
                         f"{_column_notes(table, col.name)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
