"""Alembic environment: used by `learnloop db upgrade`, on server start,
and by `alembic` with ./alembic.ini."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from learnloop.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    is_sqlite = connection.dialect.name == "sqlite"
    if is_sqlite:
        # Batch migrations copy tables; with foreign keys on, the copy would cascade deletes.
        # The pragma is a no-op inside a transaction, so commit whatever autobegin opened first.
        if connection.in_transaction():
            connection.commit()
        connection.execute(text("PRAGMA foreign_keys=OFF"))
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    if is_sqlite:
        if connection.in_transaction():
            connection.commit()
        connection.execute(text("PRAGMA foreign_keys=ON"))


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from learnloop.config import load_settings
    from learnloop.store.db import make_engine

    url = config.get_main_option("sqlalchemy.url") or load_settings().resolved_database_url
    engine = make_engine(url)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
    engine.dispose()


def run_migrations_offline() -> None:
    from learnloop.config import load_settings

    url = config.get_main_option("sqlalchemy.url") or load_settings().resolved_database_url
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
