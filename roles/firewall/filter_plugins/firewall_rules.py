"""The inbound rules of one host, from the inventory: ``firewall_rules(host, catalog, groups, settings)``.

Each rule is a TCP port and who may reach it, as collapsed IPv4 and IPv6 networks (nftables refuses
overlapping intervals in one set, so 10.0.0.0/8 and 10.1.2.3 become one entry). The gateway and
monitoring hosts are matched by their ``citadel_address`` (``settings.gateway_sources`` and
``monitoring_sources``, from the citadel_endpoints filter): the address the other hosts know them
by is the one they dial from, so it must be an IP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from ansible.errors import AnsibleFilterError


def _network(source: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(source).strip("[]"), strict=False)
    except ValueError:
        raise AnsibleFilterError(
            f"{what}: {source!r} is not an IP address or network (CIDR). The firewall matches addresses, "
            "not names: use the IP (for a host, set its citadel_address or ansible_host to it)."
        ) from None


def firewall_bad_sources(sources) -> list[str]:
    """The entries of ``sources`` that are not IP addresses or CIDR networks."""
    if not isinstance(sources, Sequence) or isinstance(sources, str):
        return [repr(sources)]
    bad = []
    for s in sources:
        try:
            ipaddress.ip_network(str(s), strict=False)
        except ValueError:
            bad.append(str(s))
    return bad


def firewall_covers(sources, address) -> bool:
    """Whether ``address`` lies in one of ``sources`` (addresses or CIDR networks)."""
    ip = ipaddress.ip_address(str(address).strip("[]"))
    return any(ip in _network(s, "firewall source") for s in sources)


def _collapsed(nets, version: int) -> list[str]:
    """The networks of one IP version, merged; a single address without its /32 or /128."""
    merged = ipaddress.collapse_addresses(n for n in nets if n.version == version)
    return [str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n) for n in merged]


def firewall_rules(host: str, catalog, groups, settings: Mapping) -> list[dict]:
    """Every port ``host`` opens, each ``{name, port, daddr, ipv4: [...], ipv6: [...]}``, sorted by port.

    A model replica's rule names its endpoint's address as ``daddr`` (the one address its vLLM
    binds); the other services' rules take any of the host's addresses (``daddr`` None)."""
    gateways, monitors = settings["gateway_sources"], settings["monitoring_sources"]
    scrapers = [*monitors, *settings["metrics_extra_sources"]]
    scrapers_are = "the monitoring hosts, firewall_metrics_extra_sources"
    wanted: list[tuple[str, int, str | None, list[str], str]] = [
        ("ssh", settings["ssh_port"], None, settings["admin_sources"], "firewall_admin_sources"),
        ("node_exporter", settings["node_exporter_port"], None, scrapers, scrapers_are),
    ]
    for model in catalog:
        for replica in model["replicas"]:
            if replica["host"] == host:
                sources = [*gateways, *monitors, *settings["model_extra_sources"]]
                what = "the gateway and monitoring hosts, firewall_model_extra_sources"
                wanted.append((f"model {model['name']}", replica["port"], replica["address"], sources, what))
    for server in settings.get("local_model_servers", []):
        sources = [*gateways, *monitors, *settings["model_extra_sources"]]
        what = "the gateway and monitoring hosts, firewall_model_extra_sources"
        wanted.append((f"model {server['name']}", server["port"], settings["address"], sources, what))
    if host in settings["gpu_hosts"]:
        wanted.append(("dcgm exporter", settings["dcgm_exporter_port"], None, scrapers, scrapers_are))
    if host in groups.get(settings["gateway_group"], []):
        sources = settings["gateway_client_sources"]
        wanted.append(("gateway", settings["gateway_port"], None, sources, "firewall_gateway_client_sources"))
        wanted.append(("gateway metrics", settings["gateway_metrics_port"], None, scrapers, scrapers_are))
    if host in groups.get(settings["monitoring_group"], []):
        sources = settings["admin_sources"]
        wanted.append(("prometheus", settings["prometheus_port"], None, sources, "firewall_admin_sources"))
    if host in groups.get(settings["redis_group"], []):
        wanted.append(("redis", settings["redis_port"], None, gateways, "the gateway hosts"))
    if host in groups.get(settings["database_group"], []):
        sources = [*gateways, *settings["admin_sources"]]
        wanted.append(
            ("postgresql", settings["postgresql_port"], None, sources, "the gateway hosts, firewall_admin_sources")
        )

    merged: dict[tuple[int, str], dict] = {}
    for name, port, daddr, sources, what in wanted:
        if daddr is not None:
            daddr = str(_network(daddr, f"{name} on {host} (its citadel_address)").network_address)
        rule = merged.setdefault((int(port), daddr or ""), {"names": [], "networks": []})
        rule["names"].append(name)
        rule["networks"] += [_network(s, f"{name} on {host} (sources: {what})") for s in sources]
    out = []
    for (port, daddr), rule in sorted(merged.items()):
        nets = rule["networks"]
        family = ipaddress.ip_address(daddr).version if daddr else None
        out.append(
            {
                "name": ", ".join(rule["names"]),
                "port": port,
                "daddr": daddr or None,
                "ipv4": [] if family == 6 else _collapsed(nets, 4),
                "ipv6": [] if family == 4 else _collapsed(nets, 6),
            }
        )
    return out


class FilterModule:
    def filters(self):
        return {
            "firewall_rules": firewall_rules,
            "firewall_covers": firewall_covers,
            "firewall_bad_sources": firewall_bad_sources,
        }
