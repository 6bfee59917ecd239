"""A throwaway PostgreSQL server for the tests: Debian's binaries (initdb, pg_ctl under
/usr/lib/postgresql/*/bin), a data directory in a temp dir, listening on 127.0.0.1 on a free
port, trust auth, stopped and deleted at the end. Run as the `postgres` user when the tests run as
root (initdb refuses root). No binaries: the tests that need it skip, except with CI=true or
POTSTILL_REQUIRE_PG=1, where they fail (`.ci/run` installs the server).

`pg_server` (session) starts it; `pg_url` (per test) is a fresh, empty database on it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest


def find_bindir() -> Path | None:
    env = os.environ.get("POTSTILL_PG_BINDIR")
    if env and (Path(env) / "initdb").exists():
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    w = shutil.which("initdb")
    return Path(w).parent if w else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="potstill-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres"
            shutil.chown(self.root, user="postgres")
            os.chmod(self.root, 0o700)

    def _cmd(self, *args: str) -> list[str]:
        if self.user:
            return ["runuser", "-u", self.user, "--", *args]
        return list(args)

    def start(self) -> "PgServer":
        r = subprocess.run(self._cmd(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "potstill",
                                     "-A", "trust", "-E", "UTF8", "--no-sync"),
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stderr[-2000:]}")
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                f"-c unix_socket_directories={self.root} -c fsync=off -c max_connections=200")
        r = subprocess.run(self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts,
                                     "-l", str(self.root / "log"), "-w", "-t", "60", "start"),
                           capture_output=True, text=True)
        if r.returncode:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr[-1000:]} {log[-2000:]}")
        return self

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://potstill@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                 "-w", "stop"), capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _required() -> bool:
    return (os.environ.get("CI", "").lower() in ("1", "true")
            or os.environ.get("POTSTILL_REQUIRE_PG") == "1")


@pytest.fixture(scope="session")
def pg_server():
    bindir = find_bindir()
    if bindir is None:
        msg = "no PostgreSQL server binaries (apt-get install postgresql)"
        if _required():
            pytest.fail(msg + "; required here (CI=true or POTSTILL_REQUIRE_PG=1)")
        pytest.skip(msg)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if _required():
            pytest.fail("psycopg is not installed; required here (CI=true or POTSTILL_REQUIRE_PG=1)")
        pytest.skip("psycopg is not installed")
    server = PgServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server, monkeypatch):
    """A fresh empty database; $POTSTILL_DATABASE_URL is left unset (tests pass it on purpose)."""
    monkeypatch.delenv("POTSTILL_DATABASE_URL", raising=False)
    return pg_server.create_database()
