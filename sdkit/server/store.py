"""The persistent job queue: one SQLite file (the standard library's sqlite3) under the server's state folder.

A job is a row: queued → running → done | failed | interrupted | cancelled. A worker claims the oldest queued job
in one transaction, so two workers never take the same one, and the claim is on disk before the job starts. After a
crash or `kill -9`, `recover()` (called once at start-up, before any worker runs) leaves queued jobs queued, and a
job that was running is either marked interrupted, or queued again when it is resumable (training: it continues
from its last complete checkpoint with `resume: latest`). So no job is lost and none runs twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    task TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    worker TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, id);
CREATE TABLE IF NOT EXISTS options (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
FINAL = ("done", "failed", "interrupted", "cancelled")


class QueueFull(Exception):
    def __init__(self, queued: int, retry_after: int):
        super().__init__(f"{queued} jobs are queued, the limit: try again in {retry_after} s")
        self.queued, self.retry_after = queued, retry_after


@dataclass(frozen=True)
class Job:
    id: int
    kind: str  # txt2img | img2img (A1111 requests) | task (sdkit's job API)
    task: str  # the registry's task name
    payload: dict[str, Any]
    status: str
    created: float
    started: float | None
    finished: float | None
    worker: str | None
    attempts: int
    result: dict[str, Any] | None
    error: str | None

    def public(self) -> dict[str, Any]:
        """What the job API shows (the payload's private keys, starting with '_', left out)."""
        return {"id": self.id, "kind": self.kind, "task": self.task, "status": self.status, "created": self.created,
                "started": self.started, "finished": self.finished, "attempts": self.attempts, "result": self.result,
                "error": self.error, "recipe": {k: v for k, v in self.payload.get("fields", {}).items()}}  # fmt: skip


def _job(row: sqlite3.Row) -> Job:
    return Job(row["id"], row["kind"], row["task"], json.loads(row["payload"]), row["status"], row["created"],
               row["started"], row["finished"], row["worker"], row["attempts"],
               json.loads(row["result"]) if row["result"] else None, row["error"])  # fmt: skip


class JobStore:
    """Thread-safe: one connection, every operation a short transaction under a lock."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lock = threading.Lock()
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def _tx(self, fn):
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self.db)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            return out

    def submit(self, kind: str, task: str, payload: dict[str, Any], limit: int) -> int:
        """Queue a job; QueueFull (with a Retry-After estimate) when `limit` jobs are already queued."""

        def insert(db: sqlite3.Connection) -> int:
            queued = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
            if queued >= limit:
                raise QueueFull(queued, self._retry_after(db, queued))
            cur = db.execute("INSERT INTO jobs (kind, task, payload, status, created) VALUES (?, ?, ?, 'queued', ?)",
                             (kind, task, json.dumps(payload), time.time()))  # fmt: skip
            return int(cur.lastrowid)

        return self._tx(insert)

    @staticmethod
    def _retry_after(db: sqlite3.Connection, queued: int) -> int:
        rows = db.execute("SELECT finished - started FROM jobs WHERE status = 'done' AND started IS NOT NULL "
                          "ORDER BY id DESC LIMIT 20").fetchall()  # fmt: skip
        mean = sum(r[0] for r in rows) / len(rows) if rows else 10.0
        return max(1, round(mean * queued))

    def claim(self, worker: str) -> Job | None:
        """The oldest queued job, now running on `worker`; None when nothing is queued."""

        def take(db: sqlite3.Connection) -> Job | None:
            row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET status = 'running', started = ?, worker = ?, attempts = attempts + 1 "
                       "WHERE id = ? AND status = 'queued'", (time.time(), worker, row["id"]))  # fmt: skip
            return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())

        return self._tx(take)

    def finish(self, job_id: int, status: str, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        assert status in FINAL, status
        self._tx(lambda db: db.execute(
            "UPDATE jobs SET status = ?, finished = ?, result = ?, error = ? WHERE id = ? AND status = 'running'",
            (status, time.time(), json.dumps(result) if result is not None else None, error, job_id)))  # fmt: skip

    def cancel(self, job_id: int) -> str | None:
        """Cancel a queued job (running ones are stopped by their worker); the job's status after, None if no such job."""

        def cancel(db: sqlite3.Connection) -> str | None:
            db.execute("UPDATE jobs SET status = 'cancelled', finished = ? WHERE id = ? AND status = 'queued'",
                       (time.time(), job_id))  # fmt: skip
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return row["status"] if row else None

        return self._tx(cancel)

    def recover(self) -> dict[str, list[int]]:
        """At start-up: jobs left running by a crash are interrupted, or queued again when resumable. Their ids, by
        what happened to them ("interrupted", "queued")."""

        def recover(db: sqlite3.Connection) -> dict[str, list[int]]:
            done: dict[str, list[int]] = {"interrupted": [], "queued": []}
            for row in db.execute("SELECT * FROM jobs WHERE status = 'running'").fetchall():
                job = _job(row)
                if job.payload.get("_resumable"):
                    db.execute("UPDATE jobs SET status = 'queued' WHERE id = ?", (job.id,))
                    done["queued"].append(job.id)
                else:
                    db.execute("UPDATE jobs SET status = 'interrupted', finished = ?, error = ? WHERE id = ?",
                               (time.time(), "the server stopped while this job ran", job.id))  # fmt: skip
                    done["interrupted"].append(job.id)
            return done

        return self._tx(recover)

    def get(self, job_id: int) -> Job | None:
        with self.lock:
            row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, statuses: tuple[str, ...] = (), limit: int = 100) -> list[Job]:
        where = f"WHERE status IN ({', '.join('?' * len(statuses))})" if statuses else ""
        with self.lock:
            rows = self.db.execute(f"SELECT * FROM jobs {where} ORDER BY id DESC LIMIT ?", (*statuses, limit)).fetchall()
        return [_job(r) for r in rows]

    def position(self, job_id: int) -> int:
        """How many queued jobs are ahead of this one."""
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND id < ?", (job_id,)).fetchone()[0]

    def options(self) -> dict[str, Any]:
        with self.lock:
            return {r["key"]: json.loads(r["value"]) for r in self.db.execute("SELECT key, value FROM options")}

    def set_options(self, values: dict[str, Any]) -> None:
        self._tx(lambda db: db.executemany("INSERT OR REPLACE INTO options (key, value) VALUES (?, ?)",
                                           [(k, json.dumps(v)) for k, v in values.items()]))  # fmt: skip
