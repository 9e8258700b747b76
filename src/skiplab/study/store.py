"""The results store: one SQLite database per study folder (WAL, one transaction per state
change), and a lock so that two processes never drive the same study at once."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS study (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,            -- 'run' (training) or 'experiment'
    spec TEXT NOT NULL,            -- JSON: model, options, data, seed, recipe, analyses
    status TEXT NOT NULL,          -- pending, running, finished, failed, diverged, interrupted
    metrics TEXT,                  -- JSON: final metrics
    history TEXT,                  -- JSON: per-epoch metrics
    error TEXT,
    started REAL,
    finished REAL,
    duration_s REAL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL,
    phase TEXT NOT NULL,           -- 'init', 'trained' or 'experiment'
    kind TEXT NOT NULL,            -- analysis kind
    result TEXT NOT NULL,          -- JSON (the result's to_dict)
    summary TEXT,
    PRIMARY KEY (run_id, phase, kind)
);
"""

# the columns each table must have (an older or newer study.db may have more)
_SCHEMA_COLUMNS = {
    "study": {"key", "value"},
    "runs": {"id", "kind", "spec", "status", "metrics", "history", "error", "started", "finished",
             "duration_s", "attempts"},
    "results": {"run_id", "phase", "kind", "result", "summary"},
}  # fmt: skip

DB_NAME = "study.db"
LOCK_NAME = ".study.lock"


class StudyLocked(ValueError):
    """Another process is driving this study folder."""


class Store:
    """A study's SQLite store; every state change is one transaction."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            self._check_schema()  # before the first write: never change a foreign file
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            self.db.close()
            raise ValueError(
                f"{self.path} is not a readable study database ({err}); move it away, or choose "
                "another --out"
            ) from None
        except ValueError:
            self.db.close()
            raise

    def _check_schema(self) -> None:
        """An existing database must be a study's: its tables with (at least) their columns."""
        tables = [
            r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        if not tables:
            return  # a new (or empty) database
        for table, columns in _SCHEMA_COLUMNS.items():
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if not columns <= have:
                raise ValueError(
                    f"{self.path} is not a skiplab study database (it holds the tables "
                    f"{', '.join(sorted(tables))}); move it away, or choose another --out"
                )

    @classmethod
    def open_existing(cls, folder: str | Path) -> Store:
        path = Path(folder) / DB_NAME
        if not path.is_file():
            raise ValueError(
                f"{folder} holds no study ({DB_NAME} missing); run `skiplab study --out {folder}` first"
            )
        store = cls(folder)  # a file that is not a study database is a ValueError there
        if store.meta("spec") is None:
            store.close()
            raise ValueError(
                f"{path} holds no study yet (no spec recorded); run `skiplab study SPEC --out {folder}` first"
            )
        return store

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ study metadata
    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO study VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM study WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # ------------------------------------------------------------------ sessions
    def sessions(self) -> list[dict[str, Any]]:
        """One entry per time the study was driven (started, then each resume), oldest first:
        ``started`` (ISO 8601), ``duration_s``, ``jobs`` (runs and experiments done in it),
        ``status`` (``running`` until it ends: a killed session keeps it) and ``provenance``."""
        return list(self.meta("sessions", []) or [])

    @contextmanager
    def _edit_sessions(self) -> Iterator[list[dict[str, Any]]]:
        """The sessions list, read and written back in one transaction."""
        with self.transaction() as db:
            row = db.execute("SELECT value FROM study WHERE key = 'sessions'").fetchone()
            sessions = (json.loads(row[0]) if row else None) or []
            yield sessions
            db.execute(
                "INSERT OR REPLACE INTO study VALUES ('sessions', ?)", (json.dumps(sessions),)
            )

    def add_session(self, session: dict[str, Any]) -> int:
        """Record the start of a session; returns its index for ``update_session``."""
        with self._edit_sessions() as sessions:
            sessions.append(session)
        return len(sessions) - 1

    def update_session(self, index: int, **fields: Any) -> None:
        with self._edit_sessions() as sessions:
            sessions[index].update(fields)

    def devices(self) -> list[str]:
        """What the study's jobs ran on, in words, first use first: the sessions' ``devices``
        (a study.db from before sessions recorded them: its ``devices`` meta)."""
        sessions = self.sessions()
        if not any("devices" in s for s in sessions):
            return list(self.meta("devices", []) or [])
        return list(dict.fromkeys(d for s in sessions for d in s.get("devices") or []))

    def last_session_s(self) -> float | None:
        """The wall-clock time of the last session that ran to its end (an older study.db:
        its ``last_session_s`` meta)."""
        ended = [s for s in self.sessions() if s.get("status") == "finished"]
        return ended[-1].get("duration_s") if ended else self.meta("last_session_s")

    # ------------------------------------------------------------------ runs
    def add_run(self, run_id: str, kind: str, spec: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO runs (id, kind, spec, status) VALUES (?, ?, ?, 'pending')",
                (run_id, kind, json.dumps(spec, sort_keys=True)),
            )

    def status(self, run_id: str) -> str | None:
        row = self.db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row[0] if row else None

    def start(self, run_id: str) -> None:
        """Mark a run as running and drop any half-written results of an earlier attempt."""
        with self.transaction() as db:
            db.execute("DELETE FROM results WHERE run_id = ?", (run_id,))
            db.execute(
                "UPDATE runs SET status = 'running', started = ?, finished = NULL, error = NULL, "
                "attempts = attempts + 1 WHERE id = ?",
                (time.time(), run_id),
            )

    def interrupt(self, run_ids: list[str]) -> None:
        """Mark runs stopped midway by Ctrl-C as 'interrupted' (not 'running': nothing runs
        them now); a resume redoes them like any unfinished run."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE runs SET status = 'interrupted', finished = ? WHERE id = ? AND status = 'running'",
                [(time.time(), i) for i in run_ids],
            )

    def finish(
        self,
        run_id: str,
        status: str,
        *,
        metrics: dict[str, Any] | None = None,
        history: list[dict[str, Any]] | None = None,
        results: list[tuple[str, str, dict[str, Any], str]] = (),
        error: str | None = None,
        duration_s: float | None = None,
    ) -> None:
        """Record a run's outcome and all its analysis results in one transaction (an
        analysis given twice in a phase keeps its last result)."""
        with self.transaction() as db:
            db.execute("DELETE FROM results WHERE run_id = ?", (run_id,))
            for phase, kind, result, summary in results:
                db.execute(
                    "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                    (run_id, phase, kind, json.dumps(result), summary),
                )
            db.execute(
                "UPDATE runs SET status = ?, metrics = ?, history = ?, error = ?, finished = ?, "
                "duration_s = ? WHERE id = ?",
                (status, json.dumps(metrics or {}), json.dumps(history or []), error, time.time(),
                 duration_s, run_id),
            )  # fmt: skip

    def runs(self, kind: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT id, kind, spec, status, metrics, history, error, started, finished, duration_s, attempts FROM runs"
        rows = self.db.execute(
            q + (" WHERE kind = ?" if kind else "") + " ORDER BY rowid", (kind,) if kind else ()
        ).fetchall()
        out = []
        for r in rows:
            out.append({
                "id": r[0], "kind": r[1], "spec": json.loads(r[2]), "status": r[3],
                "metrics": json.loads(r[4]) if r[4] else {}, "history": json.loads(r[5]) if r[5] else [],
                "error": r[6], "started": r[7], "finished": r[8], "duration_s": r[9], "attempts": r[10],
            })  # fmt: skip
        return out

    def results(self, run_id: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT run_id, phase, kind, result, summary FROM results"
        rows = self.db.execute(
            q + (" WHERE run_id = ?" if run_id else "") + " ORDER BY rowid",
            (run_id,) if run_id else (),
        ).fetchall()
        return [
            {
                "run_id": r[0],
                "phase": r[1],
                "kind": r[2],
                "result": json.loads(r[3]),
                "summary": r[4],
            }
            for r in rows
        ]


@contextmanager
def study_lock(folder: str | Path) -> Iterator[None]:
    """Hold the study folder's lock; a second process gets a clear error instead of waiting."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise StudyLocked(
                f"another skiplab study (pid {owner}) is running in {folder}; wait for it to finish, "
                "or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
