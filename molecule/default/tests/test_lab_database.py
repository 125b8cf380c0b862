"""The usage database (roles/postgresql on the lab's `database` host): the schema from the
repository's migrations, daily partitions with retention, and roles that can do one thing each,
reachable from the gateway hosts only."""

import datetime
import shlex

import lab_inventory
import testinfra
from lab_ops import CACHE, psql

(DB,) = lab_inventory.names("database")
GATEWAYS = lab_inventory.names("llm_gateway")
HOST = testinfra.get_host(f"podman://{DB}")
AHEAD = 7  # postgresql_usage_partitions_ahead_days (the role's default)
RETENTION = 90  # postgresql_usage_retention_days


def _today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def test_the_migrations_in_the_repository_are_applied_once():
    rc, out = psql("SELECT version || ' ' || name FROM citadel.schema_migrations ORDER BY version")
    assert (rc, out.splitlines()) == (0, ["0001 0001_usage_events.sql"])
    rc, owner = psql("SELECT tableowner FROM pg_tables WHERE schemaname = 'citadel' AND tablename = 'usage_events'")
    assert (rc, owner) == (0, "citadel_usage_owner")


def test_a_partition_per_day_from_yesterday_to_a_week_ahead():
    # The window moves at 00:00 UTC and the timer renews it daily: "today" is the database's, read
    # with the partitions, and a run that crossed midnight since the converge renews them first.
    rc, today = psql("SELECT (now() AT TIME ZONE 'UTC')::date")
    assert rc == 0, today
    today = datetime.date.fromisoformat(today)
    newest = f"usage_events_{today + datetime.timedelta(days=AHEAD):%Y%m%d}"
    rc, out = psql(f"SELECT to_regclass('citadel.{newest}') IS NULL")
    if out == "t":  # midnight passed since the converge made the window: what the timer runs
        assert psql(f"SELECT citadel.usage_partitions({AHEAD}, {RETENTION})")[0] == 0
    rc, out = psql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'citadel.usage_events'::regclass ORDER BY 1"
    )
    assert rc == 0, out
    want = [f"usage_events_{today + datetime.timedelta(days=d):%Y%m%d}" for d in range(-1, AHEAD + 1)]
    assert set(want) <= set(out.splitlines()), out
    timer = HOST.service("citadel-usage-partitions.timer")
    assert timer.is_enabled
    assert timer.is_running


def test_partitions_past_the_retention_are_dropped_and_younger_ones_kept():
    old = _today() - datetime.timedelta(days=RETENTION + 3)
    kept = _today() - datetime.timedelta(days=RETENTION - 1)
    for day in (old, kept):
        start = datetime.datetime.combine(day, datetime.time(), datetime.UTC)
        rc, out = psql(
            f"CREATE TABLE IF NOT EXISTS citadel.usage_events_{day:%Y%m%d} PARTITION OF citadel.usage_events "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{(start + datetime.timedelta(days=1)).isoformat()}')",
            role="citadel_usage_owner",
        )
        assert rc == 0, out
    rc, out = psql(f"SELECT citadel.usage_partitions({AHEAD}, {RETENTION})")
    assert (rc, out) == (0, "1"), "exactly the old partition goes"
    rc, out = psql(f"SELECT to_regclass('citadel.usage_events_{old:%Y%m%d}') IS NULL, "
                   f"to_regclass('citadel.usage_events_{kept:%Y%m%d}') IS NOT NULL")  # fmt: skip
    assert (rc, out) == (0, "t|t")
    psql(f"DROP TABLE citadel.usage_events_{kept:%Y%m%d}")


def test_the_gateway_role_inserts_only_and_the_report_role_reads_only():
    row = (
        "INSERT INTO citadel.usage_events (ts, event_id, request_id, endpoint, status, latency_ms, attempts, cut, "
        "gateway) VALUES (now(), 'test-' || md5(random()::text), 'r', 'chat', 200, 1.5, 1, false, 'test')"
    )
    assert psql(row, role="citadel_gateway")[0] == 0
    for sql in ("SELECT count(*) FROM citadel.usage_events", "DELETE FROM citadel.usage_events",
                "UPDATE citadel.usage_events SET status = 500", "TRUNCATE citadel.usage_events",
                "CREATE TABLE citadel.x (a int)"):  # fmt: skip
        rc, out = psql(sql, role="citadel_gateway")
        assert rc != 0, (sql, out)
        assert "permission denied" in out, (sql, out)
    rc, out = psql("SELECT count(*) > 0 FROM citadel.usage_events WHERE gateway = 'test'", role="citadel_report")
    assert (rc, out) == (0, "t")
    rc, out = psql(row, role="citadel_report")
    assert rc != 0, out
    assert "permission denied" in out, out
    psql("DELETE FROM citadel.usage_events WHERE gateway = 'test'")


def test_only_the_gateway_hosts_reach_it_and_only_with_the_password():
    """The firewall lets the gateways (and the controller) in, an LLM host not; pg_hba.conf
    takes the writer's password from a gateway address only, and nobody without one."""
    address = lab_inventory.address(DB)
    port = 5432
    script = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()"
    llm = testinfra.get_host(f"podman://{lab_inventory.names('llm_servers')[0]}")
    assert llm.run("python3 -c %s %s %s", script, address, str(port)).rc != 0, "an LLM host reached PostgreSQL"
    for gw in GATEWAYS:
        gateway = testinfra.get_host(f"podman://{gw}")
        assert gateway.run("python3 -c %s %s %s", script, address, str(port)).rc == 0, f"{gw} did not reach it"
    password = (CACHE / "lab-postgresql-gateway-password").read_text().strip()
    # From the database host itself (not a gateway address), the right password is not enough.
    out = HOST.run(
        f"PGPASSWORD={shlex.quote(password)} psql -X -h {address} -U citadel_gateway -d citadel_usage -c 'SELECT 1'"
    )
    assert out.rc != 0, out.stdout
    assert "no pg_hba.conf entry" in out.stderr, out.stderr
    report = (CACHE / "lab-postgresql-report-password").read_text().strip()
    ok = HOST.run(f"PGPASSWORD={shlex.quote(report)} psql -X -A -t -h 127.0.0.1 -U citadel_report -d citadel_usage "
                  "-c 'SELECT 1'")  # fmt: skip
    assert (ok.rc, ok.stdout.strip()) == (0, "1"), ok.stderr
    bad = HOST.run("PGPASSWORD=wrong-password psql -X -h 127.0.0.1 -U citadel_report -d citadel_usage -c 'SELECT 1'")
    assert bad.rc != 0
    assert "password authentication failed" in bad.stderr
