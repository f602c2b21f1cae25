"""The state store's schema and its migrations, one history for SQLite and PostgreSQL.

:data:`MIGRATIONS` ``[n]`` brings a database from version ``n`` to ``n + 1``. They are
written in SQLite's dialect; :func:`statements` gives PostgreSQL's (identity keys, 64-bit
integers, double precision). The version is SQLite's ``PRAGMA user_version``, and on
PostgreSQL the one row of ``ossa_schema``. A database written by a newer Ossa (a version this
code does not know) is refused rather than guessed at: during a rolling upgrade the first
upgraded node migrates, and an older node refuses to start on the newer schema.

Tables
------
``studies``
    One row per (calling AE title, Study Instance UID): the unit of assembly and of report.
    ``state`` is one of :class:`worker.store.StudyState`; ``last_received`` (wall-clock
    seconds, the store's clock) drives the quiet time, so it survives a restart and the
    death of the node that was receiving.
``instances``
    Every received instance: SOP Instance/Class and Series UIDs, file path (relative to the
    storage root), size, received time, ``stored`` or ``lost``, and ``job_id``, the first
    job that covered it (NULL: not yet reported, a new or late instance).
``jobs``, ``job_instances``
    A run of the classifier over a study's instances; ``revision`` counts the runs of a
    study (1 for the first report, 2 after a late instance...); ``result`` is the study's
    short verdict (``ABNORMAL (p=0.87)``, ``NOT ASSESSED``), no patient data. A running job
    is leased: ``owner`` (a node's name) holds it until ``lease_until``; ``attempt`` counts
    its claims and fences the finish of a node that lost the lease.
``objects``
    What Ossa produced (SRs, secondary captures), by SOP Instance UID.
``deliveries``
    The outbox: one row per (object, destination) with attempts, next attempt and the last
    outcome. ``queued_at`` starts the give-up clock (reset by ``ossa retry``). A delivery
    being sent is leased like a job (``owner``, ``lease_until``).
``nodes``
    One row per node that ran the service on this store: its start and last heartbeat.
``sources``
    One row per configured source: the poll watermark (store clock: studies dated from it,
    less the overlap, are asked for), when the next poll is due, the poll's lease
    (``polled_by``, ``poll_until``: one node polls a source at a time) and the last poll's
    outcome. ``studies.source`` names the source a study was retrieved from.
``retrievals``
    One row per (source, Study Instance UID) to retrieve: ``pending``, ``done`` or
    ``failed``, retried with backoff like a delivery, leased to the node retrieving it;
    ``listed`` is the instance count last seen (Number of Study Related Instances in a
    poll, or the instances a finished retrieval found: a poll that sees another count
    queues the study again), ``expected`` the instances the last attempt found listed,
    ``retrieved`` what it stored.
"""

from __future__ import annotations

import re
import sqlite3

from worker.store.core import Db

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE studies (
        id INTEGER PRIMARY KEY,
        calling_aet TEXT NOT NULL,
        study_uid TEXT NOT NULL,
        state TEXT NOT NULL,
        first_received REAL NOT NULL,
        last_received REAL NOT NULL,
        updated REAL NOT NULL,
        UNIQUE (calling_aet, study_uid)
    );
    CREATE INDEX studies_state ON studies (state, last_received);

    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        study_id INTEGER NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
        revision INTEGER NOT NULL,
        state TEXT NOT NULL,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        error TEXT,
        UNIQUE (study_id, revision)
    );
    CREATE INDEX jobs_state ON jobs (state, id);

    CREATE TABLE instances (
        id INTEGER PRIMARY KEY,
        study_id INTEGER NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
        sop_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        series_uid TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        received REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'stored',
        job_id INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
        UNIQUE (study_id, sop_uid)
    );
    CREATE INDEX instances_path ON instances (path);

    CREATE TABLE job_instances (
        job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        instance_id INTEGER NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
        PRIMARY KEY (job_id, instance_id)
    );

    CREATE TABLE objects (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        study_id INTEGER NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        sop_uid TEXT NOT NULL UNIQUE,
        sop_class_uid TEXT NOT NULL,
        series_uid TEXT NOT NULL,
        path TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX objects_series ON objects (series_uid);

    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        object_id INTEGER NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
        destination TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        queued_at REAL NOT NULL,
        next_attempt REAL NOT NULL,
        last_attempt REAL,
        last_outcome TEXT,
        last_detail TEXT,
        UNIQUE (object_id, destination)
    );
    CREATE INDEX deliveries_due ON deliveries (destination, state, next_attempt);
    """,
    # 2: a job's short result ("ABNORMAL (p=0.87)"), shown by the status page and the API;
    # newest studies first for their listing.
    """
    ALTER TABLE jobs ADD COLUMN result TEXT;
    CREATE INDEX studies_received ON studies (last_received, id);
    """,
    # 3: several nodes on one database: leased jobs and deliveries, and the nodes.
    """
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_until REAL;
    ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN owner TEXT;
    ALTER TABLE deliveries ADD COLUMN lease_until REAL;
    CREATE INDEX jobs_owner ON jobs (owner, state);
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        version TEXT NOT NULL,
        started REAL NOT NULL,
        heartbeat REAL NOT NULL
    );
    """,
    # 4: sources (DICOMweb archives polled, PACS retrieved from on demand): each one's poll
    # watermark, the studies to retrieve, and the source a study was retrieved from.
    """
    ALTER TABLE studies ADD COLUMN source TEXT;
    CREATE TABLE sources (
        name TEXT PRIMARY KEY,
        watermark REAL,
        next_poll REAL NOT NULL,
        polled_by TEXT,
        poll_until REAL,
        last_poll REAL,
        last_outcome TEXT,
        last_detail TEXT
    );
    CREATE TABLE retrievals (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        study_uid TEXT NOT NULL,
        state TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        listed INTEGER,
        expected INTEGER,
        retrieved INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        queued_at REAL NOT NULL,
        next_attempt REAL NOT NULL,
        last_attempt REAL,
        last_outcome TEXT,
        last_detail TEXT,
        owner TEXT,
        lease_until REAL,
        UNIQUE (source, study_uid)
    );
    CREATE INDEX retrievals_due ON retrievals (state, next_attempt);
    """,
)

#: The schema version this code writes.
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(RuntimeError):
    """The database was written by a newer Ossa, or is not an Ossa state store."""


def statements(migration: str, *, postgres: bool) -> list[str]:
    """The statements of one migration, in SQLite's dialect or PostgreSQL's."""
    if postgres:
        migration = re.sub(r"\bINTEGER PRIMARY KEY\b",
                           "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", migration)
        migration = re.sub(r"\bINTEGER\b", "BIGINT", migration)
        migration = re.sub(r"\bREAL\b", "DOUBLE PRECISION", migration)
    return [s.strip() for s in migration.split(";") if s.strip()]


def migrate(connection: sqlite3.Connection | Db) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; return the version found.

    Each migration runs in its own transaction together with the version bump, so a crash
    during a migration leaves the previous version intact. The version is read again under
    the write lock (SQLite) or an advisory lock (PostgreSQL): another
    process opening the same new store at the same moment (``ossa status`` beside the
    service, another node) may have migrated it meanwhile.

    Parameters
    ----------
    connection : sqlite3.Connection or worker.store.core.Db
        An autocommit connection: SQLite's, or either backend's as the store wraps it.

    Raises
    ------
    SchemaError
        If the database's version is newer than this code's.
    """
    db = connection if isinstance(connection, Db) else Db(connection, postgres=False)
    found = _version(db)
    version = found
    while version < SCHEMA_VERSION:
        if db.postgres:
            # a session lock, taken before the transaction: a transaction that starts once
            # another node's migration committed sees its tables (PostgreSQL refreshes its
            # catalog caches when a transaction starts, not when an advisory lock is granted)
            db.execute("SELECT pg_advisory_lock(?)", (_MIGRATION_LOCK,))
        try:
            version = _migrate_once(db)
        finally:
            if db.postgres:
                db.execute("SELECT pg_advisory_unlock(?)", (_MIGRATION_LOCK,))
    return found


def _migrate_once(db: Db) -> int:
    """Apply the next migration, if the version read under the lock still needs it; return
    the version the database then has."""
    db.execute("BEGIN" if db.postgres else "BEGIN IMMEDIATE")
    try:
        version = _version(db)
        if version < SCHEMA_VERSION:
            for statement in statements(MIGRATIONS[version], postgres=db.postgres):
                db.execute(statement)
            version += 1
            _set_version(db, version)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return version


#: Advisory lock key of migrations on PostgreSQL (any fixed 64-bit number).
_MIGRATION_LOCK = 0x05_5A_5C_4E_4D_41


def _version(db: Db) -> int:
    """The database's schema version; :class:`SchemaError` if it is newer than this code's."""
    if db.postgres:
        # created by the first migration's transaction, under the advisory lock
        if db.execute("SELECT to_regclass('ossa_schema')").fetchone()[0] is None:
            return 0
        row = db.execute("SELECT version FROM ossa_schema").fetchone()
        version = 0 if row is None else int(row[0])
    else:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"state store schema version {version} is newer than this Ossa's "
            f"({SCHEMA_VERSION}); upgrade Ossa or point storage.root elsewhere"
        )
    return version


def _set_version(db: Db, version: int) -> None:
    if db.postgres:
        db.execute("CREATE TABLE IF NOT EXISTS ossa_schema (version INTEGER NOT NULL)")
        db.execute("DELETE FROM ossa_schema")
        db.execute("INSERT INTO ossa_schema (version) VALUES (?)", (version,))
    else:
        db.execute(f"PRAGMA user_version = {version}")
