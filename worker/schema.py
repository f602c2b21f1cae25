"""The state store's SQLite schema and its migrations.

The schema version is SQLite's ``PRAGMA user_version``; :data:`MIGRATIONS` ``[n]`` brings a
database from version ``n`` to ``n + 1``. A database written by a newer Ossa (a version
this code does not know) is refused rather than guessed at.

Tables
------
``studies``
    One row per (calling AE title, Study Instance UID): the unit of assembly and of report.
    ``state`` is one of :class:`worker.store.StudyState`; ``last_received`` (wall-clock
    seconds) drives the quiet time, so it survives a restart.
``instances``
    Every received instance: SOP Instance/Class and Series UIDs, file path (relative to the
    storage root), size, received time, ``stored`` or ``lost``, and ``job_id``, the first
    job that covered it (NULL: not yet reported, a new or late instance).
``jobs``, ``job_instances``
    A run of the classifier over a study's instances; ``revision`` counts the runs of a
    study (1 for the first report, 2 after a late instance...); ``result`` is the study's
    short verdict (``ABNORMAL (p=0.87)``, ``NOT ASSESSED``), no patient data.
``objects``
    What Ossa produced (SRs; later secondary captures), by SOP Instance UID.
``deliveries``
    The outbox: one row per (object, destination) with attempts, next attempt and the last
    outcome. ``queued_at`` starts the give-up clock (reset by ``ossa retry``).
"""

from __future__ import annotations

import sqlite3

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
)

#: The schema version this code writes.
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(RuntimeError):
    """The database was written by a newer Ossa, or is not an Ossa state store."""


def migrate(connection: sqlite3.Connection) -> int:
    """Bring ``connection``'s database to :data:`SCHEMA_VERSION`; return the version found.

    Each migration runs in its own transaction together with the version bump, so a crash
    during a migration leaves the previous version intact. The version is read again under
    the write lock: another process opening the same new store at the same moment (``ossa
    status`` beside the service) may have migrated it meanwhile.

    Raises
    ------
    SchemaError
        If the database's version is newer than this code's.
    """
    found = _user_version(connection)
    version = found
    while version < SCHEMA_VERSION:
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = _user_version(connection)
            if version < SCHEMA_VERSION:
                for statement in (s.strip() for s in MIGRATIONS[version].split(";")):
                    if statement:
                        connection.execute(statement)
                version += 1
                connection.execute(f"PRAGMA user_version = {version}")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    return found


def _user_version(connection: sqlite3.Connection) -> int:
    """The database's schema version; :class:`SchemaError` if it is newer than this code's."""
    version = int(connection.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"state store schema version {version} is newer than this Ossa's "
            f"({SCHEMA_VERSION}); upgrade Ossa or point storage.root elsewhere"
        )
    return version
