"""The order service's settings, read from environment variables.

Both processes (the API and the workers) read the same variables, so they find the same
database, schema and saga table:

=============================== ============================================ ==============
variable                        meaning                                      default
=============================== ============================================ ==============
``ORDER_SERVICE_DSN``           PostgreSQL connection URL                    ``postgresql://postgres@127.0.0.1:5432/postgres``
``ORDER_SERVICE_SCHEMA``        schema of the saga table and service tables  ``order_service``
``ORDER_SERVICE_TABLE``         the saga table                               ``sagas``
``ORDER_SERVICE_LEASE_SECONDS`` a worker's lease on the sagas it runs        ``30``
``ORDER_SERVICE_CONCURRENCY``   sagas one worker runs at once                ``50``
``ORDER_SERVICE_POOL_SIZE``     connections each pool of a process may open  ``10``
``ORDER_SERVICE_FAULT_RATE``    share of service calls failing transiently   ``0.1``
``ORDER_SERVICE_SLOW_SECONDS``  how long a ``"slow": true`` shipment takes   ``5``
``ORDER_SERVICE_WORKER_ID``     the worker's name in leases                  host-pid-random
``ORDER_SERVICE_LOG_LEVEL``     the worker's log level                       ``INFO``
=============================== ============================================ ==============
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["DEFAULT_DSN", "Settings"]

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
"""Where the service looks for PostgreSQL when ``ORDER_SERVICE_DSN`` is not set."""

_PREFIX = "ORDER_SERVICE_"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Where the service keeps its state and how its workers behave.

    Attributes:
        dsn: The PostgreSQL connection URL (never logged: it may hold a password).
        schema: The schema holding the saga table and the fake services' tables.
        table: The saga table.
        lease_seconds: How long a worker's claim on a saga lasts without renewal; a killed
            worker's orders are taken over by others this long after it died.
        concurrency: Sagas one worker runs at once.
        pool_size: Connections each PostgreSQL pool of a process may open (a worker has
            two, the saga store's and the services'; the API one).
        fault_rate: The share of fake service calls that fail transiently (0 to 1).
        slow_seconds: How long the shipping step of a ``"slow": true`` order takes.
        worker_id: The worker's name in leases (the library picks one when ``None``).
        log_level: The worker's logging level name.

    Raises:
        ValueError: a setting is out of range, or the schema or table is not a plain SQL
            identifier (the message names the variable).
    """

    dsn: str = field(default=DEFAULT_DSN, repr=False)  # may hold a password
    schema: str = "order_service"
    table: str = "sagas"
    lease_seconds: float = 30.0
    concurrency: int = 50
    pool_size: int = 10
    fault_rate: float = 0.1
    slow_seconds: float = 5.0
    worker_id: str | None = None
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        for name in ("schema", "table"):
            if _IDENTIFIER.fullmatch(getattr(self, name)) is None:
                raise ValueError(
                    f"{_PREFIX}{name.upper()} must be a plain SQL identifier "
                    "(letters, digits, underscores; at most 48 characters)"
                )
        if not math.isfinite(self.lease_seconds) or self.lease_seconds <= 0:
            raise ValueError(f"{_PREFIX}LEASE_SECONDS must be > 0, got {self.lease_seconds}")
        for name in ("concurrency", "pool_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_PREFIX}{name.upper()} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.fault_rate <= 1:
            raise ValueError(f"{_PREFIX}FAULT_RATE must be between 0 and 1, got {self.fault_rate}")
        if not math.isfinite(self.slow_seconds) or self.slow_seconds < 0:
            raise ValueError(f"{_PREFIX}SLOW_SECONDS must be >= 0, got {self.slow_seconds}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (``os.environ`` by default).

        Raises:
            ValueError: a variable holds a value of the wrong kind or out of range.
        """
        env = os.environ if environ is None else environ
        given: dict[str, Any] = {}
        for setting in fields(cls):
            text = env.get(_PREFIX + setting.name.upper(), "").strip()
            if text:
                given[setting.name] = _parse(setting.name, text)
        return cls(**given)


def _parse(name: str, text: str) -> Any:
    """Turn one variable's text into the setting's value (the field ``name`` says which)."""
    variable = _PREFIX + name.upper()
    if name in ("concurrency", "pool_size"):
        if not text.isdigit():
            raise ValueError(f"{variable} must be a whole number, got {text!r}")
        return int(text)
    if name in ("lease_seconds", "fault_rate", "slow_seconds"):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{variable} must be a number, got {text!r}") from None
    if name == "log_level":
        return text.upper()
    return text
