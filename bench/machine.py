"""Describe the machine and the software a benchmark run used; print it as one JSON line.

``python -m bench.machine [--pg-dsn DSN]`` (run in the peers' virtualenv, so the versions
are those the benchmarks import). ``postgres.available`` is false, with the reason, when no
server answers at the DSN.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import json
import os
import platform
import sqlite3
import subprocess
import sys
from typing import Any

from bench.systems._common import DEFAULT_PG_DSN


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


async def _postgres(dsn: str) -> dict[str, Any]:
    try:
        import asyncpg

        conn = await asyncpg.connect(dsn, timeout=3)
    except Exception as exc:  # unreachable, refused, auth: all mean "skip PostgreSQL"
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    try:
        version = await conn.fetchval("SHOW server_version")
        fsync = await conn.fetchval("SHOW fsync")
        commit = await conn.fetchval("SHOW synchronous_commit")
    finally:
        await conn.close()
    return {
        "available": True,
        "server_version": version,
        "fsync": fsync,
        "synchronous_commit": commit,
    }


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe(pg_dsn: str) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "postgres": asyncio.run(_postgres(pg_dsn)),
        "packages": {
            name: _version(name)
            for name in ("lexigram-events", "dbos", "sagaz", "asyncpg", "sqlalchemy", "psycopg")
        },
        "load_average": os.getloadavg()[0],
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--", "src")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.machine")
    parser.add_argument("--pg-dsn", default=os.environ.get("BENCH_PG_DSN", DEFAULT_PG_DSN))
    print(json.dumps(describe(parser.parse_args().pg_dsn)))


if __name__ == "__main__":
    main()
