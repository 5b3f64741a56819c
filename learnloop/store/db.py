"""Engines, sessions and migrations for SQLite (default) and PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.orm import Session, sessionmaker

from learnloop.errors import ConfigError, Conflict, StoreError, StoreUnavailable, ValidationFailed
from learnloop.jsonio import dumps_column, loads
from learnloop.masking import mask_database_url, redact

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _sqlite_setup(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module so BEGIN is ours (see _on_begin).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front: a deferred transaction that later upgrades
        # to a write can fail with SQLITE_BUSY without waiting for busy_timeout.
        mode = "IMMEDIATE" if conn.get_execution_options().get("sqlite_write", True) else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str, *, synchronous: str = "NORMAL", **kwargs: Any) -> Engine:
    """Create an engine for ``url`` with learnloop's settings for that database.

    ``synchronous`` is SQLite's durability level: NORMAL survives a process crash in WAL mode;
    FULL also survives power loss, at a cost per commit.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise ConfigError(
            f"Database URL {mask_database_url(url)!r} is not valid ({redact(str(exc))}). "
            "Use e.g. sqlite:///path/learnloop.db "
            "or postgresql+psycopg://user@host:5432/db."
        ) from None
    # JSON columns store what JSON has no type for (a datetime in metadata, say) the way the SDK
    # sends it, instead of failing the write.
    kwargs.setdefault("json_serializer", dumps_column)
    # orjson parses the JSON columns about three times faster than the standard parser; a dataset
    # build reads millions of them (``loads`` still takes the NaN a job's progress may hold).
    kwargs.setdefault("json_deserializer", loads)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, **kwargs)
        _sqlite_setup(engine, synchronous)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(parsed, **kwargs)
    raise ConfigError(
        f"Unsupported database {parsed.get_backend_name()!r}: learnloop runs on SQLite or PostgreSQL."
    )


class Database:
    """An engine plus session factories. One per process and URL."""

    def __init__(self, url: str, *, synchronous: str = "NORMAL", **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, synchronous=synchronous, **engine_kwargs)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(
            self.engine.execution_options(sqlite_write=False), expire_on_commit=False
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A write transaction: committed on success, rolled back on any error."""
        with translate_errors(self.url), self._sessions() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """A write transaction on a plain connection (no ORM session): committed on success."""
        with translate_errors(self.url), self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def read_session(self) -> Iterator[Session]:
        """A read-only transaction (on SQLite it does not take the write lock)."""
        with translate_errors(self.url), self._read_sessions() as session, session.begin():
            yield session

    def upgrade(self, revision: str = "head") -> None:
        upgrade(self.engine, revision)

    def dispose(self) -> None:
        self.engine.dispose()


@contextlib.contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Turn SQLAlchemy's exceptions into learnloop's domain errors: the one place that knows them.

    The database down, restarting or locked is ``StoreUnavailable`` (retry later); a value it
    refuses (too long, out of range, NUL in text), or one that cannot even be converted for it,
    is ``ValidationFailed``; a broken constraint is ``Conflict``; any other failure of a statement
    is ``StoreError``.
    """
    try:
        yield
    except UnicodeEncodeError as exc:  # text sqlite3 or psycopg cannot encode (a lone surrogate)
        raise ValidationFailed(_unencodable(exc)) from None
    except (OperationalError, InterfaceError, DisconnectionError) as exc:
        reason = _reason(exc)
        if (
            getattr(exc, "connection_invalidated", False)
            or "connect" in reason.lower()
            or "unable to open" in reason
        ):
            safe = make_url(url).render_as_string(hide_password=True)
            raise StoreUnavailable(f"Cannot reach the database at {safe}: {reason}") from exc
        raise StoreUnavailable(
            f"The database is unavailable or busy ({reason}). Nothing was stored; retry later."
        ) from exc
    except IntegrityError as exc:
        raise Conflict(f"The database refused the write: {_reason(exc)}. Nothing was stored.") from exc
    except DataError as exc:
        raise ValidationFailed(f"The database refused a value: {_reason(exc)}. Nothing was stored.") from exc
    except StatementError as exc:
        if isinstance(exc, DBAPIError) or isinstance(exc.orig, DBAPIError):
            raise StoreError(f"The database failed: {_reason(exc)}. Nothing was stored.") from exc
        # Raised while converting a value for the database (a datetime out of range, say).
        if isinstance(exc.orig, UnicodeEncodeError):
            raise ValidationFailed(_unencodable(exc.orig)) from None
        raise ValidationFailed(f"A value cannot be stored: {_reason(exc)}. Nothing was stored.") from exc
    except SQLAlchemyError as exc:  # the pool timed out, say
        raise StoreUnavailable(f"The database failed: {_reason(exc)}") from exc


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    text = (
        f"{type(orig).__name__}: {orig}" if isinstance(orig, (ValueError, OverflowError, TypeError)) else orig
    )
    return str(text or exc).strip().splitlines()[0]


def _unencodable(exc: UnicodeEncodeError) -> str:
    bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else "?"
    return (
        f"Text in this batch is not valid Unicode: a string holds the lone UTF-16 surrogate {bad!r} "
        "(half of a character, e.g. an emoji cut in two). Send the text as valid UTF-8 or replace "
        "that character; nothing in this batch was stored."
    )


def alembic_config(engine: Engine | None = None, connection: Any = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        cfg.set_main_option(
            "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
        )
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (idempotent)."""
    from alembic import command

    with translate_errors(str(engine.url)), engine.connect() as conn:
        command.upgrade(alembic_config(engine, conn), revision)
        conn.commit()


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    with translate_errors(str(engine.url)), engine.connect() as conn:
        command.downgrade(alembic_config(engine, conn), revision)
        conn.commit()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def open_database(settings: Any, *, migrate: bool = True) -> Database:
    """Open the configured database and bring its schema up to date."""
    db = Database(settings.resolved_database_url)
    if migrate:
        db.upgrade()
    return db
