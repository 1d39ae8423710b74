"""Naming the campaign database: URL resolution, validation and display, without importing SQLAlchemy.

The default is a SQLite file ``campaign.db`` in the working directory, overridden by ``--db URL`` or the
``CAMPAIGN_DB`` environment variable. The read-only commands (``status``, ``sql``, ``trials``, ``lineage``)
answer in a fraction of a second, and importing SQLAlchemy alone costs about a third of that: a plain
``sqlite:///PATH`` URL (no query string, the laptop case) is therefore read here by hand, and only other URLs
are parsed by SQLAlchemy's :func:`~sqlalchemy.engine.make_url` (imported on first use).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

DEFAULT_DB_FILE = "campaign.db"
ENV_VAR = "CAMPAIGN_DB"
#: What a bare path may end with when it names a SQLite file that does not exist yet.
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
#: The first 16 bytes of every SQLite database file.
SQLITE_MAGIC = b"SQLite format 3\x00"
_PLAIN_SQLITE = "sqlite:///"


class DatabaseError(RuntimeError):
    """The database cannot be reached or used. The message names the URL (without the password)."""


def resolve_url(url: str | None = None) -> str:
    """The database URL: ``url`` if given, else ``$CAMPAIGN_DB``, else ``sqlite:///campaign.db`` in the cwd.

    A bare path is accepted as a SQLite file when it exists or ends in ``.db``, ``.sqlite`` or ``.sqlite3``;
    anything else (``::::``, a typo of a URL) is refused rather than becoming a file of that name.

    Raises:
        DatabaseError: a bare value that is neither an existing file nor a SQLite file name.
    """
    chosen = url or os.environ.get(ENV_VAR) or DEFAULT_DB_FILE
    if "://" not in chosen:
        path = Path(chosen).expanduser()
        if not path.is_file() and path.suffix not in SQLITE_SUFFIXES:
            raise DatabaseError(f"database {chosen!r} is neither a URL nor an existing file: write "
                                "sqlite:///PATH (or a path ending in .db) or postgresql+psycopg://USER@HOST/DB")
        chosen = f"sqlite:///{path.resolve()}"
    return chosen


def _plain_sqlite_file(url: str) -> str | None:
    """The file of a ``sqlite:///PATH`` URL without a query string (``None`` for any other URL)."""
    if not url.startswith(_PLAIN_SQLITE) or "?" in url:
        return None
    return url[len(_PLAIN_SQLITE):]


def backend_of(url: str) -> str:
    """``"sqlite"`` or ``"postgresql"``.

    Raises:
        DatabaseError: not a database URL, or another backend.
    """
    if _plain_sqlite_file(url) is not None:
        return "sqlite"
    return parse_url(url).get_backend_name()


def sqlite_file(url: str) -> str | None:
    """The file a SQLite URL names (``None`` for an in-memory database).

    Raises:
        DatabaseError: not a SQLite URL.
    """
    plain = _plain_sqlite_file(url)
    if plain is not None:
        return None if plain in ("", ":memory:") else plain
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        raise DatabaseError(f"{safe_url(url)} is not a SQLite database URL")
    db = parsed.database
    return None if db in (None, "", ":memory:") else db


def check_sqlite_file(path: str | Path) -> None:
    """Refuse an existing file that is not a SQLite database (an empty file is a new one).

    Raises:
        DatabaseError: naming the file.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DatabaseError(f"cannot read database file {p}: {exc.strerror or exc}") from None
    if head and head != SQLITE_MAGIC:
        raise DatabaseError(f"{p} is not a SQLite database (it does not start with 'SQLite format 3')")


def require_existing(url: str) -> None:
    """For commands that only read or resume: the SQLite file must exist (they never create one).

    Raises:
        DatabaseError: no such file, or not a SQLite database.
    """
    if backend_of(url) != "sqlite":
        return
    path = sqlite_file(url)
    if path is None or not Path(path).is_file():
        raise DatabaseError(f"no campaign database at {path or safe_url(url)} (run a campaign first, or pass "
                            "--db URL)")
    check_sqlite_file(path)


def safe_url(url: str | URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    if isinstance(url, str) and _plain_sqlite_file(url) is not None:
        return url  # a file path: nothing to hide
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<invalid database URL>"


def parse_url(url: str) -> URL:
    """Parse ``url`` (with SQLAlchemy) or raise :class:`DatabaseError` with a clear message."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise DatabaseError(f"not a database URL: {safe_url(url)} (expected e.g. sqlite:///campaign.db)") from exc
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql")
    return parsed
