"""A store's index in SQLite (WAL: readers never wait, one writer at a time, commits survive a kill).

    shards   id, name, rows, stamp (size:mtime), offset of the vectors, state (live | quarantined), reason
    keys     key -> shard, row          the first shard registered with a key keeps it
    writers  owner, host, pid, expires  a writer's lease, renewed whenever it claims
    claims   key -> owner               keys a writer is embedding right now

A key's entry number is ``shard << 32 | row``.  Keys are 32-character text so that a block of them
reaches SQLite as one JSON array, joined through ``json_each``: one statement per block, never one
per key (16-byte blobs would need one bound parameter each, which measured slower).

>>> import tempfile, numpy as np
>>> index = Index(Path(tempfile.mkdtemp()) / "index.sqlite")
>>> with index.writing() as db:
...     index.register(db, "shard-1.h5", np.array([b"k1", b"k2"], "S32"), "0:0", None)
>>> index.lookup(np.array([b"k2", b"k3"], "S32")).tolist()
[4294967297, -1]
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

import numpy as np

STORED, MINE, WAITING, FREE = 0, 1, 2, 3  # a key's status in Index.claim
CLAIM_TIMEOUT = float(os.environ.get("FEATX_CLAIM_TIMEOUT", 600))  # seconds a writer's lease lasts
BLOCK = 1 << 16  # keys per statement
HOST = socket.gethostname()
SCHEMA = """
PRAGMA journal_mode = WAL;
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS shards (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, rows INTEGER NOT NULL,
                                   stamp TEXT, offset INTEGER, state TEXT NOT NULL DEFAULT 'live', reason TEXT);
CREATE TABLE IF NOT EXISTS keys (key TEXT PRIMARY KEY, shard INTEGER NOT NULL, row INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS writers (owner TEXT PRIMARY KEY, host TEXT, pid INTEGER, expires REAL);
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL) WITHOUT ROWID;
PRAGMA user_version = 1;
COMMIT;
"""


def json_keys(keys: np.ndarray) -> str:
    """``S32`` keys (printable ASCII, no quote or backslash: see ``as_keys``) as one JSON array."""
    return (b'["' + b'","'.join(keys.tolist()) + b'"]').decode("ascii")


def _numbers(text: str | None) -> np.ndarray:
    """A ``group_concat`` of integers as an array."""
    return np.fromstring(text, dtype=np.int64, sep=",") if text else np.zeros(0, np.int64)


def _create(db: sqlite3.Connection, wait: float = 120.0) -> None:
    """Run ``SCHEMA``, again while another process is creating the same database: the switch to WAL
    answers "database is locked" at once instead of waiting for the lock like other statements."""
    deadline = time.monotonic() + wait
    while True:
        try:
            db.executescript(SCHEMA)
            return
        except sqlite3.OperationalError as exc:
            if db.in_transaction:
                db.rollback()
            if exc.sqlite_errorcode & 0xFF != 5 or time.monotonic() > deadline:  # SQLITE_BUSY
                raise
            time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class Index:
    """The index database at ``path``; one connection per process and thread, made on first use
    (a forked child, e.g. a DataLoader or Ray worker, makes its own).  A database found damaged is
    moved to ``quarantine`` and started afresh (the caller indexes the shards again)."""

    def __init__(self, path: Path, quarantine: Path | None = None) -> None:
        self.path, self.quarantine, self.read_only = path, quarantine, False
        self._local = threading.local()

    @property
    def connection(self) -> sqlite3.Connection:
        connections = self._local.__dict__  # by pid: a connection inherited through a fork stays unused
        if os.getpid() not in connections:
            connections[os.getpid()] = self._connect()
        return connections[os.getpid()]

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=120, isolation_level=None, check_same_thread=False)
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] != 1:
                _create(db)
            db.execute("PRAGMA synchronous = NORMAL")  # a commit lost to a power cut leaves its shard to adopt
        except sqlite3.OperationalError as exc:  # a read-only folder whose last writer closed the database?
            if exc.sqlite_errorcode & 0xFF not in (3, 8, 14) or not self.path.exists():  # PERM, READONLY, CANTOPEN
                raise
            self.read_only = True
            return sqlite3.connect(f"{self.path.as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        except sqlite3.DatabaseError:  # not a database (any more)
            db.close()
            if self.quarantine is None:
                raise
            self.quarantine.mkdir(exist_ok=True)
            for suffix in ("", "-wal", "-shm"):
                with suppress(FileNotFoundError):
                    os.replace(f"{self.path}{suffix}", self.quarantine / f"{self.path.name}{suffix}.{time.time_ns()}")
            return self._connect()
        return db

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on leaving, rolled back on an exception."""
        db = self.connection
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:  # SQLite ends some failed transactions itself (a full disk)
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def lookup(self, keys: np.ndarray, db: sqlite3.Connection | None = None) -> np.ndarray:
        """The entry number of each of the ``S32`` ``keys``, -1 where it is not stored."""
        db = db or self.connection
        entries = np.full(len(keys), -1, np.int64)
        for lo in range(0, len(keys), BLOCK):
            block = np.ascontiguousarray(keys[lo:lo + BLOCK])
            order = np.argsort(block.view(">u8")[::4])  # about in key order, the B-tree is walked front to back
            at, found = db.execute("SELECT group_concat(j.key), group_concat(k.shard << 32 | k.row) FROM json_each(?) j "
                                   "JOIN keys k ON k.key = j.value", (json_keys(block[order]),)).fetchone()
            entries[lo + order[_numbers(at)]] = _numbers(found)  # the two aggregates see the same rows in turn
        return entries

    def count(self) -> int:
        return self.connection.execute("SELECT count(*) FROM keys").fetchone()[0]

    def shards(self, ids: np.ndarray | None = None) -> dict[int, tuple[str, int, str, int | None]]:
        """``{id: (name, rows, stamp, offset)}`` of the live shards (of those numbered ``ids`` if given)."""
        where = "" if ids is None else f"AND id IN ({','.join(map(str, ids.tolist()))})"
        rows = self.connection.execute(f"SELECT id, name, rows, stamp, offset FROM shards WHERE state = 'live' {where}")
        return {id_: shard for id_, *shard in rows}

    @staticmethod
    def register(db: sqlite3.Connection, name: str, keys: np.ndarray, stamp: str, offset: int | None) -> None:
        """Record a published shard and its keys (inside ``writing``): a key stored before keeps its entry."""
        db.execute("DELETE FROM shards WHERE name = ? AND state != 'live'", (name,))  # a quarantined file put back
        (shard,) = db.execute("INSERT INTO shards (name, rows, stamp, offset) VALUES (?, ?, ?, ?) RETURNING id",
                              (name, len(keys), stamp, offset)).fetchone()
        db.execute("INSERT OR IGNORE INTO keys SELECT value, ?, key FROM json_each(?)", (shard, json_keys(keys)))

    @staticmethod
    def drop(db: sqlite3.Connection, name: str, reason: str | None) -> None:
        """Forget the keys of shard ``name`` (inside ``writing``): it is quarantined for ``reason``,
        or, with ``None``, forgotten altogether (its file is gone)."""
        db.execute("DELETE FROM keys WHERE shard = (SELECT id FROM shards WHERE name = ?)", (name,))
        if reason is None:
            db.execute("DELETE FROM shards WHERE name = ? AND state = 'live'", (name,))
        else:
            db.execute("INSERT INTO shards (name, rows, state, reason) VALUES (?, 0, 'quarantined', ?) ON CONFLICT "
                       "(name) DO UPDATE SET state = 'quarantined', reason = excluded.reason", (name, reason))

    def claim(self, keys: np.ndarray, limit: int, owner: str) -> np.ndarray:
        """Each key's status: ``STORED``, ``MINE`` (claimed now for ``owner``: at most ``limit``, a key
        listed twice once), ``WAITING`` (another live writer holds it) or ``FREE`` (beyond the limit).
        A writer's claims end with ``release``, its death (on this host) or the end of its lease."""
        with self.writing() as db:
            now = time.time()
            db.executemany("DELETE FROM writers WHERE owner = ?", [
                (who,) for who, host, pid, expires in db.execute("SELECT * FROM writers")
                if expires < now or (host == HOST and not pid_alive(pid))])
            db.execute("DELETE FROM claims WHERE owner NOT IN (SELECT owner FROM writers)")
            status = np.where(self.lookup(keys, db) >= 0, STORED, FREE).astype(np.int8)
            held = _numbers(db.execute("SELECT group_concat(j.key) FROM json_each(?) j JOIN claims c ON c.key = j.value "
                                       "AND c.owner != ?", (json_keys(keys), owner)).fetchone()[0])
            status[held[status[held] == FREE]] = WAITING
            free = np.flatnonzero(status == FREE)
            mine = free[np.sort(np.unique(keys[free], return_index=True)[1])][:limit]
            status[mine] = MINE
            if len(mine):
                db.execute("INSERT INTO writers VALUES (?, ?, ?, ?) ON CONFLICT (owner) DO UPDATE SET expires = "
                           "excluded.expires", (owner, HOST, os.getpid(), now + CLAIM_TIMEOUT))
                db.execute("INSERT OR IGNORE INTO claims SELECT value, ? FROM json_each(?)", (owner, json_keys(keys[mine])))
        return status

    def release(self, owner: str) -> None:
        """Drop ``owner``'s claims and lease."""
        with self.writing() as db:
            db.execute("DELETE FROM claims WHERE owner = ?", (owner,))
            db.execute("DELETE FROM writers WHERE owner = ?", (owner,))
