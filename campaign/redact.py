"""Credentials never stored: a recipe's URLs lose their passwords before the recipe is recorded or shown.

A recipe may carry a database URL with a password (``postgresql+psycopg://user:secret@host/db``) in any YAML
spelling: a plain line, flow style, a quoted key, an anchor used elsewhere, a profile. The text itself cannot be
edited reliably (YAML can spell the same string many ways), so the parsed recipe is searched instead: every
string, wherever it sits, that is a URL with a password. When there is one, the recipe is stored as the parsed
document re-written with ``***`` for each password (and for that password wherever else it appears), comments
dropped; a recipe without credentials is stored as written.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import yaml

from campaign.recipe_yaml import load_bounded

MASK = "***"
HEADER = "# credentials redacted by campaign (the recipe as parsed; its comments are not kept)\n"


def url_password(value: str) -> str | None:
    """The password of ``value`` when it is a URL that carries one (``scheme://user:password@host``)."""
    if "://" not in value or "@" not in value:
        return None
    try:
        return urlsplit(value.strip()).password or None
    except ValueError:
        return None


def _strings(data: Any) -> list[str]:
    out: list[str] = []
    stack = [data]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return out


def _masked(item: Any, secrets: list[str]) -> Any:
    if isinstance(item, str):
        for secret in secrets:
            item = item.replace(secret, MASK)
        return item
    if isinstance(item, dict):
        return {_masked(k, secrets): _masked(v, secrets) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return [_masked(v, secrets) for v in item]
    return item


def redact_recipe_text(text: str) -> str:
    """``text`` as it may be stored and shown: unchanged without credentials, else re-written without them.

    The text must already have been validated (:func:`campaign.recipe.parse_recipe`).
    """
    _, data = load_bounded(text)
    secrets = sorted({p for s in _strings(data) if (p := url_password(s))}, key=len, reverse=True)
    if not secrets:
        return text
    return HEADER + yaml.safe_dump(_masked(data, secrets), sort_keys=False, allow_unicode=True, width=120)
