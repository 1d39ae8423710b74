"""db: the campaign database.

SQLAlchemy 2.0 typed ORM (:mod:`db.models`), engines from a URL (:mod:`db.engine`: SQLite by default,
PostgreSQL for shared use), Alembic migrations (:mod:`db.migrate`), read-only user SQL (:mod:`db.readonly`) and
named queries (:mod:`db.queries`). Imports nothing of ``campaign``, ``models``, ``sites``, torch or parsl.
"""
