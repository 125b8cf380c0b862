"""The usage records' database for the benchmark. Ours (`gateway`) records every request in a
real PostgreSQL, as deployed; a second instance without usage records (`gateway-nousage`) runs
in the same rounds, so the difference of their CPU per request is what the accounting costs.

The server is the gateway tests' throw-away cluster (files/gateway/tests/pg_server.py: the
distribution's binaries, the schema from roles/postgresql's migrations, fsync off): one recipe
for a real PostgreSQL on this machine, not two.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "files/gateway/tests"))
from pg_server import PASSWORD, PgServer  # noqa: E402


def start(port: int) -> PgServer:
    return PgServer(port)


def config(db: PgServer, logdir: Path, name: str) -> str:
    """The usage section (YAML) of gateway ``name``'s config: rows named after it, its own journal
    (one writer per directory), the password in a file in ``logdir``."""
    secret = logdir / "usage-password"
    secret.write_text(PASSWORD)
    return (
        f"usage: {{database_url: '{db.url}', password_file: '{secret}', gateway: {name}, "
        f"journal_dir: '{logdir / f'{name}-usage-journal'}'}}\n"
    )


def rows(db: PgServer, name: str, want: int, timeout: float = 15) -> int:
    """Gateway ``name``'s rows once there are ``want`` (the writer flushes every second) or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while True:
        n = int(db.psql(f"SELECT count(*) FROM citadel.usage_events WHERE gateway = '{name}'"))
        if n >= want or time.monotonic() > deadline:
            return n
        time.sleep(0.5)


def cost(db: PgServer, gateway_exe: str, logdir: Path) -> dict:
    """usage_cost.py with the gateway's own Python: the records' CPU per request."""
    python = Path(gateway_exe).parent / "python"
    time.sleep(3)  # the database digests the rounds' rows first: it shares these cores
    secret = logdir / "usage-password"
    run = subprocess.run(
        [str(python), str(Path(__file__).parent / "usage_cost.py"), db.url, str(secret), str(logdir / "cost-journal")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"usage_cost.py failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout)
