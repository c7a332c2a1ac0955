"""SQL text of ``PostgresSagaStore``: every statement that reads or writes sagas, for one table.

Kept apart from the store so the statements can be read (and reviewed) in one place; the
schema (DDL, version, migration) is in ``_postgres.schema``, and the operators' reads
(``list``'s filtered selects, ``counts``) are built in ``_postgres.reads``. Only validated
identifiers are interpolated, always double-quoted (the notification channel, derived from
them, is a validated identifier too); every value is a ``$n`` parameter.

Table layout: one row per saga. ``doc`` holds the record as the shared codec's JSON
document (type ``json``, not ``jsonb``: ``jsonb`` rejects NUL characters, which contexts
may hold). The other columns are what queries filter, order or update in SQL:

- ``saga_name``, ``status``, ``created_at``, ``completed_at`` are copies of the document's
  fields, written by ``save`` together with it (``created_at`` of a record without one is
  stored as the epoch so ordering needs no ``NULLS`` clause); so are ``waiting`` (the
  kind of the wait of a parked saga) and ``waiting_signal`` (the signal it waits for),
  which ``list(waiting=)`` and ``send_signal`` read, and ``correlation_id``
  (``record.correlation_id``, ``NULL`` when text cannot hold it: see
  ``rows.correlation_column``), which ``list(correlation_id=)`` reads. Every save writes
  it, as a step may change ``ctx.metadata["correlation_id"]``; rewriting an unchanged
  value keeps a holder's save a HOT update;
- ``version``, ``updated_at``, ``lease_owner``, ``lease_id``, ``lease_expires_at``,
  ``previous_owner``, ``recovery_attempts``, ``not_before``, ``cancel_requested_at``,
  ``cancel_reason`` are the store-managed fields: ``claim``, ``renew``, ``release``,
  ``request_cancel``, ``send_signal`` and ``wake`` change them in SQL without rewriting
  the document, so on reading, these columns are laid over the decoded document (the
  columns win; ``save`` writes ``not_before`` too). ``save`` of an existing saga never
  writes the two cancel columns: a request stored meanwhile survives the holder's next
  save;
- ``signal_seq`` is the ``seq`` of the saga's last signal, written only by ``send_signal``
  (never by ``save``, never read into the record).

Signals live in ``<table>_signals``, one row per signal, keyed by saga and ``seq``, each
``signal_id`` once per saga; ``delete`` and ``delete_terminal`` delete them with their saga.

Notifications: a write that makes work for another worker (a saga stored live, due and
without a lease; a lease released; a cancel request; a signal a parked saga waits for; a
``wake``) calls ``pg_notify`` on :attr:`Statements.channel` in the same statement, so the
notification is delivered when, and only if, the write commits. Saves of held sagas
(``start()``, every step) use statements without it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Final

__all__ = ["COLUMNS", "LIVE", "NO_EXPIRY", "TERMINAL", "Statements", "validate_identifier"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LIVE: Final = "('pending', 'running', 'compensating')"
"""The statuses of sagas that are not finished, as an SQL list."""
TERMINAL: Final = "('completed', 'compensated', 'failed')"
"""The terminal statuses, as an SQL list."""
NO_EXPIRY: Final = "'-infinity'::timestamptz"
"""What a held saga without a lease expiry counts as (expired), in the expiry index."""

_KEEP_LEASE: Final = 0.9
"""A holder's save re-stamps its lease only once less than this share of it is left."""

# Every statement that hands a record out selects these, in this order (see rows.py).
_NAMES = (
    "saga_id, saga_name, status, created_at, version, updated_at, lease_owner, lease_id, "
    "lease_expires_at, previous_owner, recovery_attempts, not_before, cancel_requested_at, "
    "cancel_reason, doc"
)
COLUMNS: Final = _NAMES.replace("doc", "doc::text AS doc")
"""The columns a statement handing out records selects (``rows.record_from_row`` reads them)."""
_OLD_LEASE = (
    "saga_id, version AS old_version, updated_at AS old_updated_at, "
    "lease_owner AS old_lease_owner, lease_id AS old_lease_id, "
    "lease_expires_at AS old_lease_expires_at, previous_owner AS old_previous_owner, "
    "recovery_attempts AS old_recovery_attempts"
)
_INSERT = """(saga_id, saga_name, status, version, created_at, updated_at, completed_at,
                lease_owner, lease_id, lease_expires_at, previous_owner, recovery_attempts,
                doc, not_before, waiting, waiting_signal, correlation_id,
                cancel_requested_at, cancel_reason)
            VALUES ($1, $3, $4, $2::bigint + 1, $5, $6, $7, $8, $9, now() + $10::interval,
                $11, $12, $13::text::json, $14, $15, $16, $17, $18, $19)
            ON CONFLICT (saga_id) DO NOTHING"""
# A save by the lease's holder keeps the stored expiry while at least 90% of the lease is
# left, instead of moving it forward by a few milliseconds: the expiry is indexed (claims
# find expired leases through it), and an update that changes no indexed column is a HOT
# update, which writes no index entry. Measured on 100 held sagas saved in turn, as the
# engine does (this machine): every save a HOT update and 636 bytes of WAL per save this
# way; no HOT update and 1,105 bytes when every save re-stamps (the time, about 1 ms, is
# the commit's WAL flush either way). The lease after a save is still at least 90% of its
# length from now(); the heartbeat's renew re-stamps it as before.
_UPDATE = f"""SET saga_name = $3, status = $4,
                version = version + 1, created_at = $5, updated_at = $6, completed_at = $7,
                lease_owner = $8, lease_id = $9,
                lease_expires_at = CASE
                    WHEN lease_owner = $8 AND lease_id = $9
                        AND lease_expires_at >= now() + $10::interval * {_KEEP_LEASE}
                    THEN lease_expires_at ELSE now() + $10::interval END,
                previous_owner = $11, recovery_attempts = $12, doc = $13::text::json,
                not_before = $14, waiting = $15, waiting_signal = $16, correlation_id = $17
            WHERE saga_id = $1 AND version = $2"""


def validate_identifier(value: object, what: str, *, max_length: int = 63) -> str:
    """Return ``value`` if it is a plain SQL identifier of at most ``max_length`` characters.

    Raises:
        ValueError: naming ``what`` (the parameter), never interpolating unsafe text.
    """
    if not isinstance(value, str) or _IDENTIFIER.fullmatch(value) is None:
        raise ValueError(
            f"{what} must be a SQL identifier (letters, digits and '_', not starting with a digit)"
        )
    if len(value) > max_length:
        raise ValueError(f"{what} must be at most {max_length} characters, got {len(value)}")
    return value


@dataclass(frozen=True)
class Statements:
    """Every SQL statement of the store, for one ``schema.table`` (each built once).

    Cached per instance: building the claim statement's text takes about 15 us (an update's
    0.3 us), reading a cached one 0.1 us (this machine).
    """

    schema: str
    table: str

    @cached_property
    def qualified(self) -> str:
        """The quoted ``"schema"."table"``."""
        return f'"{self.schema}"."{self.table}"'

    @cached_property
    def signals(self) -> str:
        """The quoted table of signals (``<table>_signals``)."""
        return f'"{self.schema}"."{self.table}_signals"'

    @cached_property
    def meta(self) -> str:
        """The quoted meta table holding the schema version."""
        return f'"{self.schema}"."{self.table}_meta"'

    def index(self, suffix: str) -> str:
        """The quoted name of one of the table's indexes (``<table>_<suffix>``)."""
        return f'"{self.table}_{suffix}"'

    def _digest(self, purpose: str, size: int) -> bytes:
        return hashlib.blake2b(
            f"lexigram-events:{purpose}{self.schema}.{self.table}".encode(), digest_size=size
        ).digest()

    @cached_property
    def lock_key(self) -> int:
        """A stable 64-bit advisory lock key for creating (or migrating) this table."""
        return int.from_bytes(self._digest("", 8), "big", signed=True)

    @cached_property
    def channel(self) -> str:
        """The ``LISTEN``/``NOTIFY`` channel of this table: ``lexigram_`` and 16 hex digits.

        Derived from the schema and table names, so every process using the same table
        shares it and two tables never do; short and plain, so it is a valid identifier.
        """
        return validate_identifier(f"lexigram_{self._digest('channel:', 8).hex()}", "channel")

    def _notify(self, when: str) -> str:
        """A boolean expression that notifies the channel (payload: the saga name) if ``when``."""
        notify = f"pg_notify('{self.channel}', saga_name) IS NOT NULL"
        return f"(CASE WHEN {when} THEN {notify} ELSE false END)"

    @cached_property
    def _claimable_free(self) -> str:
        """A free saga that is due: stored live, without a lease, ``not_before`` passed."""
        return (
            f"status IN {LIVE} AND lease_owner IS NULL "
            "AND (not_before IS NULL OR not_before <= now())"
        )

    # ------------------------------------------------------------------ saves

    @cached_property
    def insert(self) -> str:
        """Insert version 1 of a held saga unless the id exists; returns the stamped lease."""
        return f"INSERT INTO {self.qualified} {_INSERT} RETURNING lease_expires_at"

    @cached_property
    def enqueue(self) -> str:
        """``insert`` for a saga without a lease: notifies waiting workers if it is due."""
        return (
            f"INSERT INTO {self.qualified} {_INSERT} "
            f"RETURNING lease_expires_at, {self._notify(self._claimable_free)} AS notified"
        )

    @cached_property
    def update(self) -> str:
        """Write the next version of a saga if the stored one is ``$2``; returns the lease."""
        return f"UPDATE {self.qualified} {_UPDATE} RETURNING lease_expires_at"

    @cached_property
    def update_free(self) -> str:
        """``update`` storing no lease (a redrive): notifies waiting workers if it is due."""
        return (
            f"UPDATE {self.qualified} {_UPDATE} "
            f"RETURNING lease_expires_at, {self._notify(self._claimable_free)} AS notified"
        )

    @cached_property
    def version_of(self) -> str:
        """The stored version (the conflict path of ``save`` only)."""
        return f"SELECT version FROM {self.qualified} WHERE saga_id = $1"

    # ------------------------------------------------------------------ reads

    @cached_property
    def load(self) -> str:
        """One saga by id."""
        return f"SELECT {COLUMNS} FROM {self.qualified} WHERE saga_id = $1"

    @cached_property
    def delete(self) -> str:
        """Delete one saga; returns a row if it existed (then :attr:`delete_signals`)."""
        return f"DELETE FROM {self.qualified} WHERE saga_id = $1 RETURNING true"

    @cached_property
    def delete_terminal(self) -> str:
        """Delete up to ``$2`` terminal sagas completed before ``$1``; returns their ids."""
        t = self.qualified
        return f"""DELETE FROM {t} WHERE saga_id IN (
                SELECT saga_id FROM {t}
                WHERE status IN {TERMINAL} AND completed_at < $1
                ORDER BY completed_at LIMIT $2
                FOR UPDATE SKIP LOCKED)
            RETURNING saga_id"""

    @cached_property
    def delete_signals(self) -> str:
        """Delete the signals of the sagas ``$1`` (an array of ids)."""
        return f"DELETE FROM {self.signals} WHERE saga_id = ANY($1::text[])"

    # ------------------------------------------------------------------ leases

    def _take(self, picked: str, ready_at: str) -> str:
        """Lease the rows of the CTE ``picked``; return them with their former lease."""
        t = self.qualified
        # The second condition hands the planner the ids as an array, so the rows are
        # found by primary key even in a generic plan (which cannot know the LIMIT and
        # would otherwise hash-join the whole table).
        return f"""UPDATE {t} AS s SET
                previous_owner = s.lease_owner,
                recovery_attempts = s.recovery_attempts
                    + CASE WHEN s.lease_owner IS NULL THEN 0 ELSE 1 END,
                lease_owner = $2, lease_id = $3, lease_expires_at = now() + $4::interval,
                updated_at = now(), version = s.version + 1
            FROM {picked} AS picked
            WHERE s.saga_id = picked.saga_id
                AND s.saga_id = ANY(ARRAY(SELECT saga_id FROM {picked}))
            RETURNING {", ".join(f"s.{name}" for name in _NAMES.split(", ")[:-1])},
                s.doc::text AS doc, {ready_at} AS ready_at, picked.old_version,
                picked.old_updated_at, picked.old_lease_owner, picked.old_lease_id,
                picked.old_lease_expires_at, picked.old_previous_owner,
                picked.old_recovery_attempts"""

    @cached_property
    def claim(self) -> str:
        """Lease up to ``$5`` claimable sagas of the names ``$1``, oldest first, at once.

        ``$2`` owner, ``$3`` lease id, ``$4`` lease length, ``$6`` ids to pass over. The
        claim rule is ``is_claimable`` with the server's ``now()``, split into disjoint
        parts, each read from its own partial index of live sagas (see ``schema``), so a
        claim never reads finished sagas, sagas leased to live workers, nor sagas whose
        ``not_before`` is ahead:

        - ``fresh``: free, no ``not_before``, by ``created_at`` (per name: an index scan
          in order, stopped at the limit);
        - ``due``: free, ``not_before`` passed, by ``not_before`` (the same, per name);
        - ``asked``: free, ``not_before`` ahead, but asked to cancel (it must not wait for
          its time): read from the index of cancel requests;
        - ``expired``: held under a lease that has run out (or has no expiry);
        - ``older``/``newer``/``nameless``: held under a live lease by the claimer's name
          with a lease id before, after, or without one (an earlier incarnation's): index
          ranges around the claimer's own lease id, which they never read.

        Each part locks its rows ``FOR UPDATE SKIP LOCKED``, so concurrent claimers never
        wait for nor share a saga; the oldest ``$5`` of the union are leased (the other
        locked rows are let go when the statement ends). The former lease comes back
        (``old_*``) so an unreadable row can be put back as it was.
        """
        t = self.qualified
        parts: dict[str, str] = {}
        for name, where, order in (
            ("fresh", "not_before IS NULL", "created_at"),
            ("due", "not_before IS NOT NULL AND not_before <= now()", "not_before"),
        ):
            parts[name] = f"""SELECT part.* FROM unnest($1::text[]) AS names(name)
                CROSS JOIN LATERAL (
                    SELECT {_OLD_LEASE}, {order} AS ready_at FROM {t}
                    WHERE saga_name = names.name AND status IN {LIVE}
                        AND lease_owner IS NULL AND {where}
                        AND lease_id IS DISTINCT FROM $3 AND saga_id <> ALL($6::text[])
                    ORDER BY {order}, saga_id LIMIT $5
                    FOR UPDATE SKIP LOCKED) AS part"""
        parts["asked"] = f"""SELECT {_OLD_LEASE}, not_before AS ready_at FROM {t}
                WHERE saga_name = ANY($1::text[]) AND status IN {LIVE}
                    AND lease_owner IS NULL AND cancel_requested_at IS NOT NULL
                    AND not_before > now()
                    AND lease_id IS DISTINCT FROM $3 AND saga_id <> ALL($6::text[])
                ORDER BY ready_at, saga_id LIMIT $5
                FOR UPDATE SKIP LOCKED"""
        live_lease = f"coalesce(lease_expires_at, {NO_EXPIRY}) > now()"
        for name, where in (
            ("expired", f"coalesce(lease_expires_at, {NO_EXPIRY}) <= now()"),
            # Three index ranges, not "lease_id <> $3": that would read the claimer's own
            # running sagas too, only to pass over every one of them.
            ("older", f"lease_owner = $2 AND lease_id < $3 AND {live_lease}"),
            ("newer", f"lease_owner = $2 AND lease_id > $3 AND {live_lease}"),
            ("nameless", f"lease_owner = $2 AND lease_id IS NULL AND {live_lease}"),
        ):
            parts[name] = f"""SELECT {_OLD_LEASE}, coalesce(not_before, created_at) AS ready_at
                FROM {t}
                WHERE saga_name = ANY($1::text[]) AND status IN {LIVE}
                    AND lease_owner IS NOT NULL AND {where}
                    AND lease_id IS DISTINCT FROM $3 AND saga_id <> ALL($6::text[])
                ORDER BY ready_at, saga_id LIMIT $5
                FOR UPDATE SKIP LOCKED"""
        ctes = ",\n".join(f"{name} AS ({body})" for name, body in parts.items())
        union = " UNION ALL ".join(f"SELECT * FROM {name}" for name in parts)
        return f"""WITH {ctes},
            picked AS ({union} ORDER BY ready_at, saga_id LIMIT $5)
            {self._take("picked", "picked.ready_at")}"""

    @cached_property
    def claim_one(self) -> str:
        """Lease the saga ``$5`` if it is claimable (``$1``-``$4`` as in :attr:`claim`)."""
        t = self.qualified
        return f"""WITH one AS (
                SELECT {_OLD_LEASE} FROM {t}
                WHERE saga_id = $5 AND saga_name = ANY($1::text[]) AND status IN {LIVE}
                    AND lease_id IS DISTINCT FROM $3
                    AND CASE WHEN lease_owner IS NULL
                        THEN not_before IS NULL OR not_before <= now()
                            OR cancel_requested_at IS NOT NULL
                        ELSE lease_expires_at IS NULL OR lease_expires_at <= now()
                            OR lease_owner = $2 END
                FOR UPDATE SKIP LOCKED)
            {self._take("one", "coalesce(s.not_before, s.created_at)")}"""

    @cached_property
    def unclaim(self) -> str:
        """Put an unreadable row's lease back as it was before ``claim`` took it."""
        return f"""UPDATE {self.qualified} SET version = $3, updated_at = $4,
                lease_owner = $5, lease_id = $6, lease_expires_at = $7,
                previous_owner = $8, recovery_attempts = $9
            WHERE saga_id = $1 AND version = $2"""

    @cached_property
    def renew(self) -> str:
        """Extend the live leases ``$1``/``$2`` holds among ids ``$3``; returns those ids."""
        return f"""UPDATE {self.qualified} SET lease_expires_at = now() + $4::interval
            WHERE saga_id = ANY($3::text[]) AND lease_owner = $1 AND lease_id = $2
                AND status IN {LIVE}
            RETURNING saga_id"""

    @cached_property
    def release(self) -> str:
        """Drop the lease if ``$2``/``$3`` holds it (a row if it did); wakes workers."""
        return f"""UPDATE {self.qualified} SET lease_owner = NULL, lease_id = NULL,
                lease_expires_at = NULL, version = version + 1
            WHERE saga_id = $1 AND lease_owner = $2 AND lease_id = $3
            RETURNING true AS released, {self._notify(self._claimable_free)} AS notified"""

    # ------------------------------------------------------------------ cancel requests

    @cached_property
    def request_cancel(self) -> str:
        """Ask the live saga ``$1`` to cancel (reason ``$2``) unless asked; return its row.

        One statement: the update (and its notification) happens only on a live saga not
        yet asked; either way the saga's row comes back, with ``asked`` telling whether
        this call stored the request. Nothing else (version, lease, document) changes.
        """
        t = self.qualified
        return f"""WITH asked AS (
                UPDATE {t} SET cancel_requested_at = now(), cancel_reason = $2
                WHERE saga_id = $1 AND status IN {LIVE} AND cancel_requested_at IS NULL
                RETURNING {COLUMNS}, {self._notify("true")} AS notified)
            SELECT {_NAMES}, notified AS asked FROM asked
            UNION ALL
            SELECT {COLUMNS}, false AS asked FROM {t}
            WHERE saga_id = $1 AND NOT EXISTS (SELECT FROM asked)"""

    @cached_property
    def cancel_requests(self) -> str:
        """The live sagas ``$1``/``$2`` holds that were asked to cancel, with the reason."""
        return f"""SELECT saga_id, coalesce(cancel_reason, '') AS reason FROM {self.qualified}
            WHERE lease_owner = $1 AND lease_id = $2 AND cancel_requested_at IS NOT NULL
                AND status IN {LIVE}"""

    # ------------------------------------------------------------------ signals

    @cached_property
    def _parked_for(self) -> str:
        """The saga is free, live and parked waiting for the signal named ``$2``."""
        return f"status IN {LIVE} AND lease_owner IS NULL AND waiting_signal = $2"

    @cached_property
    def take_signal_seq(self) -> str:
        """Lock the saga ``$1`` and take its next signal ``seq``; a row unless there is none.

        The row lock makes the senders of one saga's signals commit one after the other,
        so ``seq`` order is commit order. A saga parked for the signal ``$2`` becomes due
        now (and waiting workers are notified on commit), decided on the row version the
        lock holds: a worker parking the saga at the same time either parked first (this
        statement sees it) or waits for the lock and then finds the signal stored.
        Returns ``status`` so the caller can refuse a finished saga (rolling back).
        """
        return f"""UPDATE {self.qualified} SET signal_seq = signal_seq + 1,
                not_before = CASE WHEN {self._parked_for} THEN now() ELSE not_before END
            WHERE saga_id = $1
            RETURNING signal_seq, status, {self._notify(self._parked_for)} AS notified"""

    @cached_property
    def insert_signal(self) -> str:
        """Store the signal ``$2`` (``seq``) of the saga ``$1``; a row unless its id exists.

        ``$3`` name, ``$4`` signal id, ``$5`` payload (JSON text); ``sent_at`` is ``now()``.
        """
        return f"""INSERT INTO {self.signals} (saga_id, seq, name, signal_id, payload, sent_at)
            VALUES ($1, $2, $3, $4, $5::text::json, now())
            ON CONFLICT (saga_id, signal_id) DO NOTHING
            RETURNING sent_at"""

    @cached_property
    def next_signal(self) -> str:
        """The saga ``$1``'s first signal named ``$2`` with a ``seq`` above ``$3``."""
        return f"""SELECT seq, signal_id, payload::text AS payload, sent_at FROM {self.signals}
            WHERE saga_id = $1 AND name = $2 AND seq > $3
            ORDER BY seq LIMIT 1"""

    @cached_property
    def wake(self) -> str:
        """Make the free, live saga ``$1`` due now and notify waiting workers (on commit)."""
        return f"""UPDATE {self.qualified} SET not_before = now()
            WHERE saga_id = $1 AND lease_owner IS NULL AND status IN {LIVE}
            RETURNING {self._notify("true")} AS notified"""
