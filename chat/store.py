"""
Room history and topics that survive a restart: SQLite through
L{twisted.enterprise.adbapi}, so no query runs on the reactor thread.

Writes are queued and go to the database in batches: while one batch is
being written, new messages gather for the next, so a busy room costs one
transaction per batch rather than one per message.
"""

from __future__ import annotations

import collections
import json

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from chat.interfaces import IHistoryStore
from chat.rooms import Event, Topic

_SCHEMA = [
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "CREATE TABLE IF NOT EXISTS messages ("
    " id INTEGER PRIMARY KEY, room TEXT NOT NULL, time REAL NOT NULL,"
    " nick TEXT NOT NULL, text TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS messages_room ON messages (room, id)",
    "CREATE TABLE IF NOT EXISTS topics ("
    " room TEXT PRIMARY KEY, text TEXT NOT NULL, nick TEXT NOT NULL, time REAL NOT NULL)",
    # A room's modes, key, limit and bans (chat.moderation.RoomSettings), as JSON.
    "CREATE TABLE IF NOT EXISTS settings (room TEXT PRIMARY KEY, data TEXT NOT NULL)",
]


def _prepare(connection) -> None:
    for statement in _SCHEMA:
        connection.execute(statement)
    connection.commit()


@implementer(IHistoryStore)
class MemoryHistory:
    """
    History kept in memory only: for tests, and servers that need no
    history across restarts.

    @param keep: messages kept per room.
    @param rooms: rooms with history kept (the server's C{maxRooms}); the
        least recently written room's history goes first.
    """

    def __init__(self, keep: int = 1000, rooms: int = 1000) -> None:
        self.keep = keep
        self.rooms = rooms
        self.messages: dict[str, collections.deque[Event]] = {}
        self.topics: dict[str, Topic] = {}
        self.settings: dict[str, dict] = {}

    def load(self, room: str, count: int) -> Deferred:
        messages = list(self.messages.get(room, ()))[-count:] if count else []
        return succeed((self.topics.get(room), messages, self.settings.get(room)))

    def setSettings(self, room: str, settings: dict) -> None:
        self.settings[room] = json.loads(json.dumps(settings))
        while len(self.settings) > self.rooms:
            del self.settings[next(iter(self.settings))]

    def append(self, event: Event) -> None:
        kept = self.messages.pop(event.room, None)
        if kept is None:
            kept = collections.deque(maxlen=self.keep)
        kept.append(event)
        self.messages[event.room] = kept  # last in the dict: the most recently written
        while len(self.messages) > self.rooms:
            del self.messages[next(iter(self.messages))]

    def setTopic(self, room: str, topic: Topic | None) -> None:
        if topic is None:
            self.topics.pop(room, None)
        else:
            self.topics[room] = topic

    def close(self) -> Deferred:
        return succeed(None)


@implementer(IHistoryStore)
class SQLiteHistory:
    """
    History in an SQLite file.

    @param keep: messages kept per room; older ones are deleted.
    @param rooms: rooms with history kept (the server's C{maxRooms}); when a
        new room's first message would pass it, the history of the rooms
        least recently written is deleted.  Room settings are kept for as
        many rooms, those changed last.
    """

    _log = Logger()

    def __init__(self, path: str, keep: int = 1000, reactor=None, rooms: int = 1000) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.keep = keep
        self.rooms = rooms
        # One connection, one thread: SQLite writes one at a time anyway, and
        # a single worker runs the queued work in order, so a load always
        # sees the writes queued before it.
        self._pool = adbapi.ConnectionPool(
            "sqlite3",
            path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_prepare,
            cp_reactor=reactor,
        )
        self._pending: list[tuple] = []
        self._writing = 0

    def append(self, event: Event) -> None:
        self._pending.append(("message", event.room, event.when, event.nick, event.text))
        self._flush(force=False)

    def setTopic(self, room: str, topic: Topic | None) -> None:
        self._pending.append(("topic", room, topic))
        self._flush(force=False)

    def setSettings(self, room: str, settings: dict) -> None:
        self._pending.append(("settings", room, json.dumps(settings)))
        self._flush(force=False)

    def _flush(self, force: bool) -> Deferred | None:
        if not self._pending or (self._writing and not force):
            return None
        batch, self._pending = self._pending, []
        self._writing += 1
        d = self._pool.runInteraction(self._write, batch)

        def written(result):
            self._writing -= 1
            self._flush(force=False)
            return result

        d.addBoth(written)
        d.addErrback(lambda f: self._log.failure("history lost: {n} writes", f, n=len(batch)))
        return d

    def _write(self, txn, batch: list[tuple]) -> None:
        rooms = set()
        newRoom = False
        for op in batch:
            if op[0] == "message":
                if op[1] not in rooms:
                    txn.execute("SELECT 1 FROM messages WHERE room = ? LIMIT 1", (op[1],))
                    newRoom = newRoom or txn.fetchone() is None
                txn.execute(
                    "INSERT INTO messages (room, time, nick, text) VALUES (?, ?, ?, ?)", op[1:]
                )
                rooms.add(op[1])
            elif op[0] == "settings":
                # REPLACE makes a new row: the newest rowids are the rooms
                # changed last, and only --max-rooms of them are kept.
                txn.execute("INSERT OR REPLACE INTO settings (room, data) VALUES (?, ?)", op[1:])
                txn.execute(
                    "DELETE FROM settings WHERE rowid NOT IN"
                    " (SELECT rowid FROM settings ORDER BY rowid DESC LIMIT ?)",
                    (self.rooms,),
                )
            elif op[2] is None:
                txn.execute("DELETE FROM topics WHERE room = ?", (op[1],))
            else:
                topic = op[2]
                txn.execute(
                    "INSERT OR REPLACE INTO topics (room, text, nick, time) VALUES (?, ?, ?, ?)",
                    (op[1], topic.text, topic.nick, topic.when),
                )
        for room in rooms:
            txn.execute(
                "DELETE FROM messages WHERE room = ? AND id <= (SELECT id FROM messages"
                " WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (room, room, self.keep),
            )
        if newRoom:
            # Only a room's first message can pass the cap, so the scan runs rarely.
            txn.execute(
                "DELETE FROM messages WHERE room NOT IN (SELECT room FROM messages"
                " GROUP BY room ORDER BY MAX(id) DESC LIMIT ?)",
                (self.rooms,),
            )

    def load(self, room: str, count: int) -> Deferred:
        self._flush(force=True)
        return self._pool.runInteraction(self._load, room, count)

    @staticmethod
    def _load(txn, room: str, count: int):
        txn.execute("SELECT text, nick, time FROM topics WHERE room = ?", (room,))
        row = txn.fetchone()
        topic = Topic(*row) if row else None
        txn.execute(
            "SELECT time, nick, text FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?",
            (room, count),
        )
        messages = [
            Event("MESSAGE", nick, room, text, when)
            for when, nick, text in reversed(txn.fetchall())
        ]
        txn.execute("SELECT data FROM settings WHERE room = ?", (room,))
        row = txn.fetchone()
        return topic, messages, json.loads(row[0]) if row else None

    def close(self) -> Deferred:
        """
        Write what is queued, then close the database.
        """
        self._flush(force=True)
        d = self._pool.runInteraction(lambda txn: None)
        d.addBoth(lambda _: self._pool.close())
        return d
