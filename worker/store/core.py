"""The state store's core: connections, transactions, the database clock and singleton locks,
on either backend.

SQLite (one node, the default) is a file under the storage root, in WAL mode with
``synchronous=FULL``; PostgreSQL (several nodes) is reached by a ``postgresql://`` URL, through
psycopg 3. Queries are written once, with ``?`` placeholders and SQL both backends run; the
few differences are here (:meth:`Database.greatest`, :meth:`Database.lock_rows`).

Time. Every time the store records is a wall-clock number of seconds. On PostgreSQL it is the
database server's clock (``clock_timestamp()``), read inside the transaction that records it,
so that the nodes of a cluster agree whatever their own clocks say: quiet times, leases and
retry times cannot be skewed by a node whose clock is off. On SQLite it is the machine's. A
clock given to the store (tests) replaces both.

Errors. Any error of the database or its driver, including a server that cannot be reached,
comes out as :class:`StoreError`, its cause chained: callers catch one type whatever the
backend (the C-STORE handler answers ``0xA700`` Out of Resources with it).
"""

from __future__ import annotations

import logging
import queue
import re
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg.conninfo import make_conninfo

logger = logging.getLogger(__name__)

#: File name of the SQLite database under the storage root.
STORE_FILE = "state.sqlite3"
#: Seconds a PostgreSQL connection attempt may take before the store counts as unavailable.
CONNECT_TIMEOUT_S = 5


class StoreError(RuntimeError):
    """The state store's database failed or cannot be reached (the driver's error is the
    cause). Nothing of the operation was recorded."""


class Connection(Protocol):
    """What the store uses of a DB-API connection (``sqlite3`` and ``psycopg`` both)."""

    def execute(self, sql: str, params: Sequence[object] = ...) -> Any:
        """Run one statement; a cursor with ``fetchone``, ``fetchall`` and ``rowcount``."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


class Db:
    """One connection as the queries see it: ``?`` placeholders on both backends.

    Parameters
    ----------
    connection
        The driver's connection.
    postgres : bool
        Whether it is a psycopg connection (its placeholders are ``%s``).
    """

    def __init__(self, connection: Connection, *, postgres: bool) -> None:
        self.connection = connection
        self.postgres = postgres

    def execute(self, sql: str, params: Sequence[object] = ()) -> Any:
        """Run ``sql`` (``?`` placeholders) with ``params``; the cursor."""
        return self.connection.execute(_postgres_sql(sql) if self.postgres else sql,
                                       tuple(params))


@lru_cache(maxsize=512)
def _postgres_sql(sql: str) -> str:
    """``sql`` with psycopg's placeholders: ``?`` becomes ``%s`` (no query has a literal ``%``
    or ``?``)."""
    return sql.replace("%", "%%").replace("?", "%s")


@dataclass(frozen=True)
class Location:
    """Where the state store lives: a SQLite file, or a PostgreSQL URL and its password.

    Parameters
    ----------
    sqlite_path : pathlib.Path or None
        The SQLite database file.
    url : str or None
        A ``postgresql://user@host:port/database`` URL (no password in it).
    password : callable or None
        Returns the PostgreSQL password when a connection is opened (read then from its file
        or variable, never kept in the configuration); None: libpq's own means (``.pgpass``,
        ``PGPASSWORD``) or none.
    """

    sqlite_path: Path | None = None
    url: str | None = None
    password: Callable[[], str] | None = None

    def __post_init__(self) -> None:
        if (self.sqlite_path is None) == (self.url is None):
            raise ValueError("a store location is a SQLite path or a PostgreSQL URL, not both")
        if self.url is not None and not re.match(r"^postgres(ql)?://", self.url):
            raise ValueError("url must be a postgresql:// URL")

    @property
    def postgres(self) -> bool:
        """Whether the store is on PostgreSQL."""
        return self.url is not None

    @property
    def shown(self) -> str:
        """The location as logs and ``ossa status`` show it (never a password)."""
        if self.sqlite_path is not None:
            return str(self.sqlite_path)
        assert self.url is not None
        return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1@", self.url)


class Database:
    """A pool of connections to the store's database, and its transactions.

    Parameters
    ----------
    location : Location
        The database.
    clock : callable or None
        Wall-clock seconds replacing the database's clock (tests); None: the database's
        (PostgreSQL) or the machine's (SQLite).
    busy_timeout_s : float
        How long a SQLite write waits for another writer, and a PostgreSQL statement for a
        lock.
    """

    def __init__(self, location: Location, *, clock: Callable[[], float] | None = None,
                 busy_timeout_s: float = 30.0) -> None:
        if busy_timeout_s <= 0:
            raise ValueError(f"busy_timeout_s must be > 0, got {busy_timeout_s!r}")
        self.location = location
        self.postgres = location.postgres
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._pool: queue.LifoQueue[Connection] = queue.LifoQueue()
        self._closed = False

    # --- connections --------------------------------------------------------------------

    def connect(self) -> Connection:
        """A new connection, set up for the store (raises the driver's errors)."""
        if self.location.sqlite_path is not None:
            connection = sqlite3.connect(
                self.location.sqlite_path, timeout=self._busy_timeout_s, isolation_level=None,
                check_same_thread=False,
            )
            try:
                connection.execute("PRAGMA journal_mode = WAL")
                connection.execute("PRAGMA synchronous = FULL")
                connection.execute("PRAGMA foreign_keys = ON")
            except BaseException:
                connection.close()
                raise
            return connection
        assert self.location.url is not None
        conninfo = make_conninfo(
            self.location.url, connect_timeout=CONNECT_TIMEOUT_S, application_name="ossa",
            options=f"-c lock_timeout={int(self._busy_timeout_s * 1000)}",
            password=self.location.password() if self.location.password is not None else None,
        )
        return psycopg.connect(conninfo, autocommit=True)

    @contextmanager
    def connection(self) -> Iterator[Db]:
        """A connection of the pool for one operation of one thread; a driver error in the
        operation comes out as :class:`StoreError`.

        Each operation has a connection of its own, so a thread waiting for a lock never
        blocks the readers. The pool grows to the number of operations that ran at once;
        a connection that failed is closed rather than reused (a PostgreSQL server that
        restarted has closed it).
        """
        if self._closed:
            raise StoreError("the state store is closed")
        try:
            try:
                connection = self._pool.get_nowait()
            except queue.Empty:
                connection = self.connect()
        except (sqlite3.Error, psycopg.Error, OSError) as exc:
            raise StoreError(f"cannot connect to the state store: {_reason(exc)}") from exc
        healthy = True
        try:
            yield Db(connection, postgres=self.postgres)
        except (sqlite3.Error, psycopg.Error) as exc:
            healthy = not isinstance(exc, psycopg.OperationalError)
            raise StoreError(_reason(exc)) from exc
        finally:
            if self._closed or not healthy or getattr(connection, "closed", False):
                _close_quietly(connection)
            else:
                self._pool.put(connection)

    def close(self) -> None:
        """Close the connections (one still in use is closed when its operation ends)."""
        self._closed = True
        while True:
            try:
                _close_quietly(self._pool.get_nowait())
            except queue.Empty:
                return

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # --- transactions -------------------------------------------------------------------

    @contextmanager
    def tx(self, *, sync: bool = True) -> Iterator[Db]:
        """One write transaction.

        SQLite: ``BEGIN IMMEDIATE`` (waits up to ``busy_timeout_s`` for another writer, in
        this process or another); without ``sync``, committed with ``synchronous=NORMAL``
        (durable when the process dies, not when the power fails). A COMMIT that fails
        (``SQLITE_FULL``: in WAL mode the pages are written at COMMIT) leaves SQLite's
        transaction open; it is rolled back here, or the pooled connection would keep the
        write lock and wedge every later writer. PostgreSQL: ``BEGIN`` (READ COMMITTED; the
        queries lock the rows they change), always committed durably.
        """
        with self.connection() as db:
            relaxed = not sync and not self.postgres
            if relaxed:
                db.execute("PRAGMA synchronous = NORMAL")
            try:
                db.execute("BEGIN" if self.postgres else "BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise
            finally:
                if relaxed:
                    db.execute("PRAGMA synchronous = FULL")

    @contextmanager
    def snapshot(self) -> Iterator[Db]:
        """A read transaction: its queries see one consistent state of the database."""
        with self.connection() as db:
            db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ" if self.postgres else "BEGIN")
            try:
                yield db
            finally:
                if self.postgres:
                    _rollback(db)
                else:
                    db.execute("COMMIT")

    def read(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """The rows of one query, outside any transaction."""
        with self.connection() as db:
            return list(db.execute(sql, params).fetchall())

    # --- the clock, and what differs between the backends -------------------------------

    def now(self, db: Db | None = None) -> float:
        """Wall-clock seconds on the store's clock (see the module notes), read on ``db``
        when given (inside its transaction)."""
        if self._clock is not None:
            return float(self._clock())
        if not self.postgres:
            return time.time()
        if db is not None:
            return float(db.execute(_NOW).fetchone()[0])
        return float(self.read(_NOW)[0][0])

    def greatest(self, a: str, b: str) -> str:
        """SQL for the larger of two values (SQLite's scalar ``MAX``, PostgreSQL's
        ``GREATEST``)."""
        return f"GREATEST({a}, {b})" if self.postgres else f"MAX({a}, {b})"

    def lock_rows(self, of: str | None = None, *, skip_locked: bool = False) -> str:
        """The clause ending a SELECT whose rows the transaction will change: PostgreSQL's
        ``FOR UPDATE`` (``OF`` a table of a join; ``SKIP LOCKED``: rows another node is
        changing are left to it); nothing on SQLite, whose write transaction already holds
        the whole database."""
        if not self.postgres:
            return ""
        return (" FOR UPDATE" + (f" OF {of}" if of else "")
                + (" SKIP LOCKED" if skip_locked else ""))

    @contextmanager
    def singleton(self, name: str) -> Iterator[bool]:
        """Hold the cluster-wide lock ``name`` while the block runs: True if this node got
        it, False if another node holds it (the block should then do nothing).

        PostgreSQL: a session advisory lock on a connection of its own, released at the end
        of the block or when the connection dies with its node. SQLite: always True (one
        node).
        """
        if not self.postgres:
            yield True
            return
        key = zlib.crc32(f"ossa:{name}".encode()) - (1 << 31)
        with self.connection() as db:
            got = bool(db.execute("SELECT pg_try_advisory_lock(?)", (key,)).fetchone()[0])
            try:
                yield got
            finally:
                if got:
                    db.execute("SELECT pg_advisory_unlock(?)", (key,))


class Queries:
    """Base of the groups of queries the state store is made of (one per caller): the
    database, this node's name and how long its leases last."""

    db: Database
    node: str
    lease_s: float


#: The database server's clock, in seconds since the epoch.
_NOW = "SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8"


def _reason(exc: BaseException) -> str:
    """A driver error in one line (psycopg's may span several); no query parameters."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _close_quietly(connection: Connection) -> None:
    try:
        connection.close()
    except (sqlite3.Error, psycopg.Error) as exc:
        logger.debug("Closing a state store connection failed: %s", _reason(exc))


def _rollback(db: Db) -> None:
    """Roll back the connection's transaction, if one is still open.

    Some SQLite errors (``SQLITE_FULL``, ``SQLITE_IOERR``) may already have rolled it back,
    and ``ROLLBACK`` then fails; a PostgreSQL connection may be gone: that failure must not
    hide the error being raised.
    """
    connection = db.connection
    if isinstance(connection, sqlite3.Connection) and not connection.in_transaction:
        return
    try:
        db.execute("ROLLBACK")
    except (sqlite3.Error, psycopg.Error) as exc:
        logger.warning("Rollback failed: %s", _reason(exc))


def opt_float(value: object) -> float | None:
    """A nullable number column."""
    return None if value is None else float(value)  # type: ignore[arg-type]


def opt_str(value: object) -> str | None:
    """A nullable text column."""
    return None if value is None else str(value)
