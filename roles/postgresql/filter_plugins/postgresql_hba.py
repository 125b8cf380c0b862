"""Filters of the postgresql role. Addresses for pg_hba.conf, which matches CIDR networks:
``postgresql_cidr`` (an address gets its /32 or /128) and ``postgresql_bad_networks`` (the
entries that are neither). ``postgresql_migration_files``: the migrations to copy to the host."""

from __future__ import annotations

import ipaddress
from pathlib import Path


def postgresql_bad_networks(sources) -> list[str]:
    if isinstance(sources, str) or not isinstance(sources, list | tuple):
        return [repr(sources)]
    bad = []
    for s in sources:
        try:
            ipaddress.ip_network(str(s).strip("[]"), strict=False)
        except ValueError:
            bad.append(str(s))
    return bad


def postgresql_cidr(source) -> str:
    return str(ipaddress.ip_network(str(source).strip("[]"), strict=False))


def postgresql_migration_files(src_dir: str, dest_dir: str) -> list[dict]:
    """citadel_files entries for every ``NNNN_name.sql`` in ``src_dir``, in order (the order they apply in)."""
    return [
        {"dest": f"{dest_dir}/{p.name}", "content": p.read_text(), "owner": "root", "group": "postgres", "mode": "0640"}
        for p in sorted(Path(src_dir).glob("[0-9][0-9][0-9][0-9]_*.sql"))
    ]


class FilterModule:
    def filters(self):
        return {
            "postgresql_bad_networks": postgresql_bad_networks,
            "postgresql_cidr": postgresql_cidr,
            "postgresql_migration_files": postgresql_migration_files,
        }
