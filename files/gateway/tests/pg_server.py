"""A real PostgreSQL server for the usage tests: the distribution's binaries (`make setup`
installs them), a throw-away cluster on a free loopback port, the schema from the repository's
migrations (roles/postgresql/files/migrations) and the roles as the postgresql role makes them:
``citadel_gateway`` may only INSERT, the test reads as the superuser.

The server refuses to run as root: as root (CI), the cluster belongs to the ``postgres`` user
the package created and every command runs through ``runuser``. The gateway benchmark
(loadtests/bench/usage_db.py) runs its database with this too: no pytest here."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parents[3] / "roles/postgresql/files/migrations"
PASSWORD = "test-usage-password-0123456789"


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run `make setup` (scripts/bootstrap.sh installs it)")
    return Path(found[-1]).parent


class PgServer:
    def __init__(self, port: int) -> None:
        self.bin = _bindir()
        self.port = port
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.dir = Path(tempfile.mkdtemp(prefix="citadel-pg-"))  # /tmp: the postgres user can reach it
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        self.start()
        try:
            self._schema()
        except BaseException:
            self.close()  # never leave a server behind
            raise

    def _schema(self) -> None:
        self.psql(
            f"CREATE ROLE citadel_usage_owner NOLOGIN; CREATE ROLE citadel_gateway LOGIN PASSWORD '{PASSWORD}'",
            db="postgres",
        )
        self.psql("CREATE DATABASE citadel_usage OWNER citadel_usage_owner", db="postgres")
        self.psql("CREATE SCHEMA citadel AUTHORIZATION citadel_usage_owner")
        for m in sorted(MIGRATIONS.glob("*.sql")):
            self._run("psql", "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", *self._conn("citadel_usage"),
                      "-c", "SET ROLE citadel_usage_owner", "-f", str(m))  # fmt: skip
        self.psql(
            "GRANT USAGE ON SCHEMA citadel TO citadel_gateway; "
            "GRANT INSERT ON citadel.usage_events TO citadel_gateway; "
            "SELECT citadel.usage_partitions(2, 30)"
        )

    @property
    def url(self) -> str:
        return f"postgresql://citadel_gateway@127.0.0.1:{self.port}/citadel_usage"

    def _conn(self, db: str) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db]

    def _run(self, exe: str, *args: str) -> str:
        out = subprocess.run(
            [*self.as_user, str(self.bin / exe), *args], capture_output=True, text=True, timeout=60, check=False
        )
        if out.returncode != 0:
            raise RuntimeError(f"{exe} {' '.join(args)}: {out.stderr or out.stdout}")
        return out.stdout

    def psql(self, sql: str, db: str = "citadel_usage") -> str:
        return self._run("psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", *self._conn(db), "-c", sql).strip()

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c log_min_messages=warning"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", opts, "-w", "-t", "30", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def rows(self) -> list[tuple]:
        """(request_id, key_name, model, status, prompt_tokens, completion_tokens, cut) of every row."""
        out = self.psql(
            "SELECT request_id, coalesce(key_name, ''), coalesce(model, ''), status, coalesce(prompt_tokens, -1), "
            "coalesce(completion_tokens, -1), cut FROM citadel.usage_events ORDER BY ts"
        )
        return [
            (r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), r[6] == "t")
            for r in (ln.split("|") for ln in out.splitlines() if ln)
        ]

    def wait_rows(self, n: int, timeout: float = 20) -> list[tuple]:
        end = time.monotonic() + timeout
        while True:
            rows = self.rows()
            if len(rows) >= n or time.monotonic() > end:
                return rows
            time.sleep(0.2)
