"""What the benchmarks share: a database of their own for one run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg


@contextmanager
def database(url: str | None, workdir: Path) -> Iterator[str]:
    """The URL of a database for one run: a new one on the PostgreSQL server ``url``, dropped after, or
    SQLite in ``workdir`` without one."""
    if url is None or not url.startswith("postgresql"):
        yield url or f"sqlite:///{workdir / 'bench.sqlite3'}"
        return
    name = f"rhaas_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
