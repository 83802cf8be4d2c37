"""The durable queue of async tasks: SQLite (stdlib `sqlite3`) in `<data dir>/tasks.db`.

A task row holds the request as JSON (prepared again after a restart), its status (pending, running, done,
failed, interrupted: the agent-scheduler extension's names), its place in the queue (`priority`, smaller
first), how many times it started, its webhook and the result: the encoded images (as sent) in their own
table and the infotexts. Every write commits at once, so a process killed at any moment loses nothing that
was acknowledged. Results are bounded by count and bytes: the oldest results are dropped first (the task
row stays, marked `expired`)."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PENDING, RUNNING, DONE, FAILED, INTERRUPTED = "pending", "running", "done", "failed", "interrupted"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, status TEXT NOT NULL, params TEXT NOT NULL,
    checkpoint TEXT, callback_url TEXT, name TEXT, priority REAL NOT NULL, bookmarked INTEGER DEFAULT 0,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, attempts INTEGER DEFAULT 0, error TEXT,
    info TEXT, infotexts TEXT, result_bytes INTEGER DEFAULT 0, expired INTEGER DEFAULT 0,
    callback_done INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    task_id TEXT NOT NULL, idx INTEGER NOT NULL, image BLOB NOT NULL, PRIMARY KEY (task_id, idx));
"""


@dataclass
class TaskRow:
    id: str
    type: str
    status: str
    params: dict[str, Any]
    checkpoint: str | None
    callback_url: str | None
    name: str | None
    priority: float
    bookmarked: bool
    created_at: float
    updated_at: float
    attempts: int
    error: str | None
    info: str | None
    infotexts: list[str]
    result_bytes: int
    expired: bool
    callback_done: bool


class TaskStore:
    def __init__(self, path: Path, max_results: int = 100, max_result_bytes: int = 512 << 20) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_results = max_results
        self.max_result_bytes = max_result_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rows(self, sql: str, args: tuple = ()) -> list[TaskRow]:
        with self._lock:
            cur = self._db.execute(sql, args)
            names = [d[0] for d in cur.description]
            raw = cur.fetchall()
        out = []
        for values in raw:
            row = dict(zip(names, values, strict=True))
            row["params"] = json.loads(row["params"])
            row["infotexts"] = json.loads(row["infotexts"]) if row["infotexts"] else []
            row["bookmarked"], row["expired"] = bool(row["bookmarked"]), bool(row["expired"])
            row["callback_done"] = bool(row["callback_done"])
            out.append(TaskRow(**row))
        return out

    def _exec(self, sql: str, args: tuple = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    # -- the queue ----------------------------------------------------------------------------------
    def add(self, task_id: str, kind: str, params: dict[str, Any], checkpoint: str | None,
            callback_url: str | None, name: str | None = None) -> None:
        now = time.time()
        with self._lock:
            last = self._db.execute("SELECT MAX(priority) FROM tasks WHERE status IN (?, ?)",
                                    (PENDING, RUNNING)).fetchone()[0]
            self._db.execute(
                "INSERT INTO tasks (id, type, status, params, checkpoint, callback_url, name, priority, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (task_id, kind, PENDING, json.dumps(params), checkpoint, callback_url, name,
                 max(now, (last or 0) + 1e-3), now, now))

    def get(self, task_id: str) -> TaskRow | None:
        rows = self._rows("SELECT * FROM tasks WHERE id = ?", (task_id,))
        return rows[0] if rows else None

    def pending(self) -> list[TaskRow]:
        """Pending and running tasks, in queue order."""
        return self._rows("SELECT * FROM tasks WHERE status IN (?, ?) ORDER BY priority", (PENDING, RUNNING))

    def unannounced(self) -> list[TaskRow]:
        """Ended tasks whose callback has not gone out yet."""
        return self._rows("SELECT * FROM tasks WHERE status IN (?, ?, ?) AND callback_url IS NOT NULL "
                          "AND callback_done = 0 ORDER BY updated_at", (DONE, FAILED, INTERRUPTED))

    def history(self, statuses: tuple[str, ...], limit: int, offset: int,
                bookmarked: bool = False) -> tuple[list[TaskRow], int]:
        marks = ",".join("?" * len(statuses))
        where = f"status IN ({marks})" + (" AND bookmarked = 1" if bookmarked else "")
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM tasks WHERE {where}", statuses).fetchone()[0]
        rows = self._rows(f"SELECT * FROM tasks WHERE {where} ORDER BY updated_at DESC LIMIT ? OFFSET ?",
                          (*statuses, limit, offset))
        return rows, total

    def set_status(self, task_id: str, status: str, error: str | None = None, started: bool = False) -> None:
        self._exec("UPDATE tasks SET status = ?, error = ?, updated_at = ?, attempts = attempts + ? "
                   "WHERE id = ?", (status, error, time.time(), int(started), task_id))

    def set_order(self, ids: list[str]) -> None:
        """Renumber the pending tasks `ids` in this order (after a move), keeping them after the others."""
        base = time.time()
        with self._lock:
            for i, task_id in enumerate(ids):
                self._db.execute("UPDATE tasks SET priority = ? WHERE id = ?", (base + i * 1e-3, task_id))

    def update(self, task_id: str, **fields: Any) -> None:
        """Set plain columns (name, bookmarked, callback_done, checkpoint; params as a dict)."""
        if "params" in fields:
            fields["params"] = json.dumps(fields["params"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._exec(f"UPDATE tasks SET {cols}, updated_at = ? WHERE id = ?",
                   (*fields.values(), time.time(), task_id))

    def delete(self, task_id: str) -> bool:
        with self._lock:
            self._db.execute("DELETE FROM results WHERE task_id = ?", (task_id,))
            return self._db.execute("DELETE FROM tasks WHERE id = ?", (task_id,)).rowcount > 0

    def delete_status(self, statuses: tuple[str, ...]) -> int:
        marks = ",".join("?" * len(statuses))
        with self._lock:
            self._db.execute(f"DELETE FROM results WHERE task_id IN (SELECT id FROM tasks WHERE status IN "
                             f"({marks}))", statuses)
            return self._db.execute(f"DELETE FROM tasks WHERE status IN ({marks})", statuses).rowcount

    def setting(self, key: str, default: str = "") -> str:
        """A small persisted setting (the queue's pause)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_setting(self, key: str, value: str) -> None:
        self._exec("INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                   "excluded.value", (key, value))

    # -- results ------------------------------------------------------------------------------------
    def finish(self, task_id: str, status: str, images: list[bytes], infotexts: list[str], info: str | None,
               error: str | None = None) -> None:
        """End a task with its result in one transaction, then drop the oldest results over the bounds."""
        size = sum(len(b) for b in images)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM results WHERE task_id = ?", (task_id,))
                db.executemany("INSERT INTO results (task_id, idx, image) VALUES (?, ?, ?)",
                               [(task_id, i, sqlite3.Binary(b)) for i, b in enumerate(images)])
                db.execute("UPDATE tasks SET status = ?, error = ?, info = ?, infotexts = ?, "
                           "result_bytes = ?, updated_at = ? WHERE id = ?",
                           (status, error, info, json.dumps(infotexts), size, time.time(), task_id))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._expire()

    def _expire(self) -> None:
        rows = self._db.execute("SELECT id, result_bytes FROM tasks WHERE result_bytes > 0 "
                                "ORDER BY updated_at DESC").fetchall()
        total, keep = 0, 0
        for n, (task_id, size) in enumerate(rows):
            total += size
            if n >= self.max_results or (total > self.max_result_bytes and keep > 0):
                self._db.execute("DELETE FROM results WHERE task_id = ?", (task_id,))
                self._db.execute("UPDATE tasks SET result_bytes = 0, expired = 1 WHERE id = ?", (task_id,))
            else:
                keep += 1

    def images(self, task_id: str) -> list[bytes]:
        with self._lock:
            rows = self._db.execute("SELECT image FROM results WHERE task_id = ? ORDER BY idx",
                                    (task_id,)).fetchall()
        return [bytes(r[0]) for r in rows]
