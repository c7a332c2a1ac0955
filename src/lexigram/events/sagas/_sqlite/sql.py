"""The SQL of ``SQLiteSagaStore``: the tables, their indexes, migrations, every statement.

Row layout: the JSON document written by ``codec.encode_record`` holds the whole record;
a few fields are copied into columns, for indexes and for the lease operations:

- ``saga_name``, ``created_at_us``: fixed at insert (list and claim order, list by name;
  a record without ``created_at`` is stored at the epoch, ``0``);
- ``status``, ``completed_at_us``, ``waiting_kind``, ``waiting_signal``: rewritten by every
  ``save`` (the last two are ``record.waiting``'s ``kind`` and ``signal``, ``NULL`` when
  the saga is not parked);
- ``not_before_us``: rewritten by every ``save``, and set to now by ``send_signal`` (on a
  free saga parked for that signal) and ``wake``, which change only this column;
- ``version``, ``updated_at_us``, ``lease_owner``, ``lease_id``, ``lease_expires_at_us``,
  ``previous_owner``, ``recovery_attempts``: rewritten by ``save`` **and** by ``claim``,
  ``renew`` and ``release``, which change only these columns (not the document);
- ``cancel_requested_at_us``, ``cancel_reason``: written by the insert and by
  ``request_cancel`` only; a ``save`` of an existing row never names them;
- ``correlation_id``: ``record.correlation_id``, for ``list(correlation_id=)``; written
  by the insert, and by the saves that change it (a step may set
  ``ctx.metadata["correlation_id"]``): see :class:`SaveStatements`.

For the ten fields from ``not_before_us`` to ``cancel_reason`` **the columns are the
truth**: loading a row decodes the document and overlays them. This keeps a heartbeat renewal one
small ``UPDATE`` of one column, a claim free of re-encoding documents, and a cancel
request or a signal safe from the holder's saves. Times in columns are integer
microseconds since the Unix epoch (UTC): exact, and ordered like the times themselves.

Signals live apart from the saga rows, in ``<table>_signals``: one row per signal, keyed
by ``(saga_id, seq)`` (``seq`` counts the saga's signals in commit order), unique by
``(saga_id, signal_id)`` (deduplication), read by ``(saga_id, name, seq)``. Deleting a
saga deletes its signals in the same transaction.

Claims read four small partial indexes, never one that holds finished sagas or sagas held
under a live lease: ``_queued`` and ``_scheduled`` (sagas nobody holds, by the time they
are due), ``_expiry`` (held sagas by lease expiry: only the expired end is read) and
``_holder`` (held sagas by owner: only an earlier incarnation's are read). ``_cancels``
holds only the live sagas asked to cancel, so a heartbeat's ``cancel_requests`` is free
when there is none; ``_parked`` only the parked sagas (``list(waiting=True)``).
Listing reads ``_created``, ``_name``, ``_live``, ``_parked`` or ``_correlation`` (see
``reads``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from lexigram.events.sagas.types import TERMINAL_SAGA_STATUSES, SagaStatus

__all__ = ["LIVE", "PARKED", "READ", "SCHEMA_VERSION", "TERMINAL", "SaveStatements", "Statements"]

SCHEMA_VERSION: Final = 3
"""Version of the table layout below; stored in the ``<table>_meta`` table.

1: the first layout. 2: adds ``not_before_us``, ``cancel_requested_at_us``,
``cancel_reason``, the claim and cancel indexes, and replaces the ``_active`` index by
``_live`` (see :meth:`Statements.migrate_v1`). 3: adds ``waiting_kind``,
``waiting_signal``, ``correlation_id``, the ``_parked`` and ``_correlation`` indexes and
the ``<table>_signals`` table (see :meth:`Statements.migrate_v2`).
"""


def _status_list(statuses: list[SagaStatus]) -> str:
    return "status IN (" + ", ".join(f"'{status.value}'" for status in statuses) + ")"


# LIVE is written out identically in the partial indexes and in the queries meant to use
# them: SQLite uses a partial index only when the query's WHERE clause contains each term
# of its condition. It excludes the terminal statuses (a live status added later needs no
# new index) as `<>` terms, not as `status IN (...)`: SQLite evaluates an IN list of three
# or more by building a temporary table, for every statement that writes a row of such a
# partial index. Schema 1's `_active` index did that: replacing it by `_live` took 254,000
# of 2,018,000 instructions off each 3-step saga (insert + 3 saves, callgrind).
_TERMINAL_STATUSES: Final = [s for s in SagaStatus if s in TERMINAL_SAGA_STATUSES]
TERMINAL: Final = _status_list(_TERMINAL_STATUSES)
LIVE: Final = " AND ".join(f"status <> '{status.value}'" for status in _TERMINAL_STATUSES)

# The lease term first: a held saga (every save of start()'s hot path) is out of the
# indexes of free sagas after one test.
_FREE: Final = f"lease_owner IS NULL AND {LIVE}"
_HELD: Final = f"lease_owner IS NOT NULL AND {LIVE}"
# Written out identically in the `_parked` index and in `list(waiting=True)`'s query.
PARKED: Final = "waiting_kind IS NOT NULL"

_COLUMNS: Final = (
    "saga_id",
    "saga_name",
    "status",
    "doc",
    "version",
    "updated_at_us",
    "lease_owner",
    "lease_id",
    "lease_expires_at_us",
    "previous_owner",
    "recovery_attempts",
    "cancel_requested_at_us",
    "cancel_reason",
    "not_before_us",
)
READ: Final = ", ".join(_COLUMNS)
"""The columns every read selects, in the order ``ops.to_record`` unpacks them."""
_READ_T: Final = ", ".join(f"t.{column}" for column in _COLUMNS)

_ADDED_IN_V2: Final = (
    ("not_before_us", "INTEGER"),
    ("cancel_requested_at_us", "INTEGER"),
    ("cancel_reason", "TEXT"),
)
_ADDED_IN_V3: Final = (
    ("waiting_kind", "TEXT"),
    ("waiting_signal", "TEXT"),
    ("correlation_id", "TEXT"),
)


def _table(table: str) -> str:
    added = "".join(
        f",\n            {name} {kind}" for name, kind in (*_ADDED_IN_V2, *_ADDED_IN_V3)
    )
    return f"""CREATE TABLE IF NOT EXISTS "{table}" (
            saga_id TEXT PRIMARY KEY NOT NULL,
            saga_name TEXT NOT NULL,
            status TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at_us INTEGER,
            updated_at_us INTEGER,
            completed_at_us INTEGER,
            lease_owner TEXT,
            lease_id TEXT,
            lease_expires_at_us INTEGER,
            previous_owner TEXT,
            recovery_attempts INTEGER NOT NULL DEFAULT 0,
            doc TEXT NOT NULL{added}
        )"""


def _v1_indexes(table: str) -> tuple[str, ...]:
    """Schema 1's indexes that schema 2 keeps (it replaces ``_active`` by ``_live``)."""
    t = f'"{table}"'
    return (
        f'CREATE INDEX IF NOT EXISTS "{table}_created" ON {t} (created_at_us, saga_id)',
        f'CREATE INDEX IF NOT EXISTS "{table}_name" ON {t} (saga_name, created_at_us, saga_id)',
        f'CREATE INDEX IF NOT EXISTS "{table}_completed" ON {t} (completed_at_us) '
        "WHERE completed_at_us IS NOT NULL",
    )


def _v2_indexes(table: str) -> tuple[str, ...]:
    t = f'"{table}"'
    return (
        # The sagas that are not terminal, oldest first (listing by a live status).
        f'CREATE INDEX IF NOT EXISTS "{table}_live" ON {t} (created_at_us, saga_id) WHERE {LIVE}',
        # Free sagas, by the time they are due: created_at when not_before is unset...
        f'CREATE INDEX IF NOT EXISTS "{table}_queued" ON {t} (saga_name, created_at_us, '
        f"saga_id) WHERE {_FREE} AND not_before_us IS NULL",
        # ... else not_before (a claim reads only the part that is due).
        f'CREATE INDEX IF NOT EXISTS "{table}_scheduled" ON {t} (saga_name, not_before_us, '
        f"saga_id) WHERE {_FREE} AND not_before_us IS NOT NULL",
        # Held sagas: by lease expiry (claims read the expired end)...
        f'CREATE INDEX IF NOT EXISTS "{table}_expiry" ON {t} (lease_expires_at_us) WHERE {_HELD}',
        # ... and by holder (a restarted worker's earlier incarnation).
        f'CREATE INDEX IF NOT EXISTS "{table}_holder" ON {t} (lease_owner, lease_id) WHERE {_HELD}',
        # Cancel requests of live sagas: empty, and free to read, when there are none.
        f'CREATE INDEX IF NOT EXISTS "{table}_cancels" ON {t} (lease_owner, lease_id) '
        f"WHERE cancel_requested_at_us IS NOT NULL AND {LIVE}",
    )


def _v3_tables(table: str) -> tuple[str, ...]:
    """Schema 3's additions but the columns: the signals table, its index, ``_parked``."""
    signals = f'"{table}_signals"'
    return (
        # No IF NOT EXISTS: a table of that name that is not ours makes the creation (or
        # the migration) fail, and roll back, instead of being written to.
        f"""CREATE TABLE {signals} (
            saga_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            name TEXT NOT NULL,
            signal_id TEXT NOT NULL,
            payload TEXT NOT NULL,
            sent_at_us INTEGER NOT NULL,
            PRIMARY KEY (saga_id, seq),
            UNIQUE (saga_id, signal_id)
        )""",
        # next_signal: a saga's signals of one name, in seq order.
        f'CREATE INDEX IF NOT EXISTS "{table}_signals_name" ON {signals} (saga_id, name, seq)',
        # Parked sagas, newest first (list(waiting=True)); empty when nothing waits.
        f'CREATE INDEX IF NOT EXISTS "{table}_parked" ON "{table}" (created_at_us, saga_id) '
        f"WHERE {PARKED}",
        # A correlation id's sagas, newest first (list(correlation_id=)).
        f'CREATE INDEX IF NOT EXISTS "{table}_correlation" ON "{table}" '
        "(correlation_id, created_at_us, saga_id)",
    )


# ``record.correlation_id`` of a stored document: its ``metadata.correlation_id`` if that is
# a string, else the saga id. SQLite's json_extract cuts a string at an escaped NUL
# (``\u0000``) and turns an escaped lone surrogate into bytes that are not UTF-8, and
# json_valid refuses what Python's decoder takes (NaN): only valid JSON text without any
# ``\u`` escape is read here; ``schema`` reads the rest in Python. json_valid comes first
# so that json_extract never sees a broken document (it would fail the whole statement).
_FILL_CORRELATION_IDS: Final = r"""UPDATE {t} SET correlation_id = CASE
        WHEN json_type(doc, '$.metadata.correlation_id') = 'text'
        THEN json_extract(doc, '$.metadata.correlation_id') ELSE saga_id END
    WHERE correlation_id IS NULL AND typeof(doc) = 'text' AND instr(doc, '\u') = 0
        AND json_valid(doc)"""


@dataclass(frozen=True, slots=True)
class SaveStatements:
    """The statements of one kind of save (parked or not, correlated by the saga id or not).

    Every save writes the whole row but ``saga_name`` and ``created_at_us`` (fixed at
    insert) and the cancel columns (the store's, see ``request_cancel``): an ``UPDATE``
    that does not name an index's columns does not touch that index. The correlation
    column is in an index too, and a save rarely changes it (only a step that sets
    ``ctx.metadata["correlation_id"]`` does): ``update`` leaves it alone, on the condition
    that it already holds the record's correlation id; when that condition fails (or the
    version does), ``rewrite`` writes it too. Both take the same parameters.

    Attributes:
        insert: Version 0: a new row, ``ON CONFLICT DO NOTHING``.
        update: The row at the expected version, if its correlation column holds the
            record's.
        rewrite: The row at the expected version, correlation column included.
    """

    insert: str
    update: str
    rewrite: str

    @classmethod
    def of(cls, t: str, *, parked: bool, own: bool) -> SaveStatements:
        """The statements for table ``t``.

        Args:
            t: The quoted table name.
            parked: The saga waits: its statements take the wait's kind and signal
                (otherwise they write ``NULL`` literals).
            own: The saga's correlation id is its saga id, which the statements reuse
                (otherwise they take the correlation id: last of the insert's parameters,
                before the saga id of the updates').
        """
        # Measured with callgrind (a held saga's insert + 3 saves): Python 3.11's sqlite3
        # adapts every None it binds (~3,300 instructions each), so a saga that is not
        # parked binds no wait values. An UPDATE naming the correlation column rewrites
        # its index entry even when the value is unchanged (~7,000 instructions), where
        # the guard of `update` costs ~270. The own forms reuse the saga id, binding none.
        waits = "?, ?" if parked else "NULL, NULL"
        bound = "?" if parked else "NULL"
        value = "saga_id" if own else "?"
        body = (
            f"UPDATE {t} SET status = ?, version = ?, waiting_kind = {bound}, "
            f"waiting_signal = {bound}, not_before_us = ?, updated_at_us = ?, "
            "completed_at_us = ?, lease_owner = ?, lease_id = ?, lease_expires_at_us = ?, "
            "previous_owner = ?, recovery_attempts = ?, doc = ?"
        )
        return cls(
            insert=(
                f"INSERT INTO {t} (saga_id, saga_name, status, version, created_at_us, "
                "cancel_requested_at_us, cancel_reason, waiting_kind, waiting_signal, "
                "not_before_us, updated_at_us, completed_at_us, lease_owner, lease_id, "
                "lease_expires_at_us, previous_owner, recovery_attempts, doc, correlation_id) "
                f"VALUES (?, ?, ?, 1, ?, ?, ?, {waits}, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                # ?1: the saga id, the first parameter (numbered, it takes no new one)
                f"{'?1' if own else '?'}) ON CONFLICT (saga_id) DO NOTHING"
            ),
            update=f"{body} WHERE correlation_id = {value} AND saga_id = ? AND version = ?",
            rewrite=f"{body}, correlation_id = {value} WHERE saga_id = ? AND version = ?",
        )


class Statements:
    """Every SQL statement of one table, built once (the table name is validated first)."""

    def __init__(self, table: str) -> None:
        t = f'"{table}"'
        self.table = table
        s = f'"{table}_signals"'
        self.meta = f'"{table}_meta"'
        self.signals = f"{table}_signals"
        self.schema = (
            _table(table),
            *_v1_indexes(table),
            *_v2_indexes(table),
            *_v3_tables(table),
        )
        self.migrate_v1 = (
            *(f"ALTER TABLE {t} ADD COLUMN {name} {kind}" for name, kind in _ADDED_IN_V2),
            f'DROP INDEX IF EXISTS "{table}_active"',
            *_v2_indexes(table),
        )
        """Schema 1 to 2: the new columns (``NULL`` in old rows: no delay, no request).

        A process still running schema 1's code when the table is migrated goes on
        saving, but its claims fail loudly (``no such index``) until it is upgraded (it
        would not honour ``not_before`` nor cancel requests anyway).
        """
        self.migrate_v2 = (
            *(f"ALTER TABLE {t} ADD COLUMN {name} {kind}" for name, kind in _ADDED_IN_V3),
            _FILL_CORRELATION_IDS.format(t=t),
            # Ordering and list(created_before=) read a missing creation time as the epoch.
            f"UPDATE {t} SET created_at_us = 0 WHERE created_at_us IS NULL",
            *_v3_tables(table),
        )
        """Schema 2 to 3: the wait columns (``NULL`` in old rows: none was parked), the
        correlation column (filled from the documents: here for most rows, by
        ``schema`` for the rest), the ``_parked`` and ``_correlation`` indexes and the
        signals table.

        A process still running schema 2's code goes on working, but its saves leave the
        wait columns ``NULL`` and its deletes leave signals behind (it parks no saga and
        sends no signal, so neither matters until it is upgraded); a saga it inserts has
        no correlation column (``list(correlation_id=)`` misses it) until this version
        saves it, and one whose correlation id it changes keeps the old one until then.
        """
        self.saves = {
            (parked, own): SaveStatements.of(t, parked=parked, own=own)
            for parked in (False, True)
            for own in (False, True)
        }
        """The statements of each kind of save: ``(parked, own correlation id)``."""
        self.version_of = f"SELECT version FROM {t} WHERE saga_id = ?"
        self.load = f"SELECT {READ} FROM {t} WHERE saga_id = ?"
        self.delete = f"DELETE FROM {t} WHERE saga_id = ?"
        self.delete_signals = f"DELETE FROM {s} WHERE saga_id = ?"
        self.terminal_ids = (
            f"SELECT saga_id FROM {t} "
            f"WHERE completed_at_us < ? AND {TERMINAL} ORDER BY completed_at_us LIMIT ?"
        )
        # The ids as one JSON array: two statements, whatever the number of sagas.
        self.delete_ids = f"DELETE FROM {t} WHERE saga_id IN (SELECT value FROM json_each(?))"
        self.delete_signals_of = (
            f"DELETE FROM {s} WHERE saga_id IN (SELECT value FROM json_each(?))"
        )
        self.take_lease = (
            f"UPDATE {t} SET lease_owner = ?, lease_id = ?, lease_expires_at_us = ?, "
            "previous_owner = ?, recovery_attempts = ?, updated_at_us = ?, version = ? "
            "WHERE saga_id = ? AND version = ?"
        )
        self.renew = (
            f"UPDATE {t} SET lease_expires_at_us = ? "
            f"WHERE saga_id = ? AND lease_owner = ? AND lease_id = ? AND {LIVE}"
        )
        self.release = (
            f"UPDATE {t} SET lease_owner = NULL, lease_id = NULL, lease_expires_at_us = NULL, "
            "version = version + 1 WHERE saga_id = ? AND lease_owner = ? AND lease_id = ?"
        )
        self.request_cancel = (
            f"UPDATE {t} SET cancel_requested_at_us = ?, cancel_reason = ? "
            f"WHERE saga_id = ? AND cancel_requested_at_us IS NULL AND {LIVE}"
        )
        self.cancel_requests = (
            f'SELECT saga_id, cancel_reason FROM {t} INDEXED BY "{table}_cancels" '
            f"WHERE cancel_requested_at_us IS NOT NULL AND {LIVE} "
            "AND lease_owner = ? AND lease_id = ?"
        )
        self.status_of = f"SELECT status FROM {t} WHERE saga_id = ?"
        self.signal_sent = f"SELECT 1 FROM {s} WHERE saga_id = ? AND signal_id = ?"
        self.insert_signal = (
            f"INSERT INTO {s} (saga_id, seq, name, signal_id, payload, sent_at_us) "
            f"VALUES (:saga_id, (SELECT coalesce(max(seq), 0) + 1 FROM {s} "
            "WHERE saga_id = :saga_id), :name, :signal_id, :payload, :now)"
        )
        # Only not_before_us: the version, the lease and the document stay as they are.
        self.signal_wake = (
            f"UPDATE {t} SET not_before_us = ? "
            "WHERE saga_id = ? AND lease_owner IS NULL AND waiting_signal = ?"
        )
        self.wake = (
            f"UPDATE {t} SET not_before_us = ? WHERE saga_id = ? AND lease_owner IS NULL AND {LIVE}"
        )
        self.next_signal = (
            f"SELECT seq, signal_id, payload, sent_at_us FROM {s} "
            "WHERE saga_id = ? AND name = ? AND seq > ? ORDER BY seq LIMIT 1"
        )
        self._claims: dict[tuple[int, bool], str] = {}

    def select_claimable(self, names: int, *, one: bool) -> str:
        """The claim candidates query for ``names`` saga names (one saga, or oldest first).

        Named parameters: ``:n0`` ... (the names), ``:now``, ``:owner``, ``:lease_id``,
        ``:excluded`` (a JSON array of ids passed over) and ``:want`` (how many rows);
        ``:saga_id`` too when ``one``. Rows come oldest first: by ``not_before`` when set,
        else ``created_at``, then ``saga_id``.
        """
        key = (names, one)
        sql = self._claims.get(key)
        if sql is None:
            sql = _select_one(self.table, names) if one else _select_oldest(self.table, names)
            self._claims[key] = sql
        return sql


_EXCLUDED: Final = "saga_id NOT IN (SELECT value FROM json_each(:excluded))"
_PER_NAME: Final = 64
"""Up to this many saga names, a claim reads the free sagas of each name apart."""
_READY: Final = "coalesce(not_before_us, created_at_us)"


def _names_in(names: int) -> str:
    return "saga_name IN (" + ", ".join(f":n{index}" for index in range(names)) + ")"


def _select_one(table: str, names: int) -> str:
    """One saga by its primary key, if claimable (mirrors ``_leases.is_claimable``)."""
    return (
        f'SELECT {READ} FROM "{table}" WHERE saga_id = :saga_id AND {LIVE} '
        f"AND {_names_in(names)} AND lease_id IS NOT :lease_id AND {_EXCLUDED} AND ("
        "(lease_owner IS NULL AND (not_before_us IS NULL OR not_before_us <= :now "
        "OR cancel_requested_at_us IS NOT NULL)) "
        "OR (lease_owner IS NOT NULL AND (lease_expires_at_us IS NULL "
        "OR lease_expires_at_us <= :now OR lease_owner = :owner))) LIMIT :want"
    )


def _select_oldest(table: str, names: int) -> str:
    """The oldest claimable sagas: each kind read from its own index, then merged.

    Every arm reads one partial index from its useful end and stops after ``:want`` rows
    (``INDEXED BY``: without statistics, SQLite would rather walk the index of all the
    sagas of a name). The arms are disjoint, so no saga comes twice.
    """
    t = f'"{table}"'
    arms: list[str] = []
    # One pair of arms per name (SQLite allows 500 terms in a compound SELECT); past
    # _PER_NAME names, one pair for all, which reads every free saga of those names.
    groups = [f"= :n{position}" for position in range(names)]
    if names > _PER_NAME:
        groups = [_names_in(names).removeprefix("saga_name ")]
    for group in groups:
        arms.append(  # free, no delay: oldest created first
            f'SELECT saga_id, created_at_us AS ready FROM {t} INDEXED BY "{table}_queued" '
            f"WHERE {_FREE} AND not_before_us IS NULL AND saga_name {group} "
            f"AND lease_id IS NOT :lease_id AND {_EXCLUDED} "
            "ORDER BY created_at_us, saga_id LIMIT :want"
        )
        arms.append(  # free, delayed until a time that has come
            f'SELECT saga_id, not_before_us AS ready FROM {t} INDEXED BY "{table}_scheduled" '
            f"WHERE {_FREE} AND not_before_us IS NOT NULL AND saga_name {group} "
            f"AND not_before_us <= :now AND lease_id IS NOT :lease_id AND {_EXCLUDED} "
            "ORDER BY not_before_us, saga_id LIMIT :want"
        )
    arms.append(  # free, delayed, but asked to cancel: it must not wait for its time
        f'SELECT saga_id, not_before_us AS ready FROM {t} INDEXED BY "{table}_cancels" '
        f"WHERE cancel_requested_at_us IS NOT NULL AND {_FREE} AND not_before_us > :now "
        f"AND {_names_in(names)} AND lease_id IS NOT :lease_id AND {_EXCLUDED} "
        "ORDER BY ready, saga_id LIMIT :want"
    )
    for index, condition in (
        ("expiry", "lease_expires_at_us <= :now AND lease_id IS NOT :lease_id"),
        ("expiry", "lease_expires_at_us IS NULL AND lease_id IS NOT :lease_id"),
        # An earlier incarnation of this worker: its name, another lease_id, a live lease
        # (an expired one is the arms above'). Two ranges skip this incarnation's own.
        ("holder", "lease_owner = :owner AND lease_id < :lease_id"),
        ("holder", "lease_owner = :owner AND lease_id > :lease_id"),
        ("holder", "lease_owner = :owner AND lease_id IS NULL"),
    ):
        live = "" if index == "expiry" else " AND lease_expires_at_us > :now"
        arms.append(
            f'SELECT saga_id, {_READY} AS ready FROM {t} INDEXED BY "{table}_{index}" '
            f"WHERE {_HELD} AND {condition}{live} AND {_names_in(names)} AND {_EXCLUDED} "
            "ORDER BY ready, saga_id LIMIT :want"
        )
    merged = " UNION ALL ".join(f"SELECT saga_id, ready FROM ({arm})" for arm in arms)
    return (
        f"SELECT {_READ_T} FROM ({merged} ORDER BY ready, saga_id LIMIT :want) AS c "
        f"CROSS JOIN {t} AS t ON t.saga_id = c.saga_id ORDER BY c.ready, c.saga_id"
    )
