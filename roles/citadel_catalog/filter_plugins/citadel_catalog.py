"""The model catalog, normalised once: ``citadel_models | citadel_catalog(groups, hostvars)``.

Every consumer (the vllm, llm_gateway and prometheus roles, the drain playbook, the load tests
and Molecule) reads the catalog through this filter, so each field is checked in one place and
each replica has one endpoint: the address its vLLM server binds, the gateways dial, Prometheus
scrapes and the firewall opens. That address is the host's ``citadel_address`` (its ansible_host,
else its inventory name, unless set apart from the management address).

An entry with ``base_url`` instead of ``source``/``group``/``port`` is an *external* model: any
OpenAI-compatible server this repository does not install (a provider, Ollama, llama.cpp, a vLLM
cluster run elsewhere). It has no replicas (no host serves it, no firewall opens for it, nothing is
installed); the gateway dials its base URL with its key, and Prometheus scrapes it only at its
``metrics_url``.

A catalog with mistakes raises one error listing every one of them, each naming the model and
the fix, before any host changes (playbooks/preflight.yml evaluates it first). The GPU checks
are citadel_gpus.py's.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from ansible.errors import AnsibleFilterError


def _sibling(name: str):
    """A module of this directory: Ansible loads each plugin file alone, not as a package."""
    spec = importlib.util.spec_from_file_location(f"citadel_catalog_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_gpus = _sibling("citadel_gpus")

CAPABILITIES = ("chat", "completion", "embedding", "code", "reasoning")
TIERS = ("heavyweight", "lightweight", "embedding")
# How the gateway chooses a model's replica (files/gateway routing.py).
ROUTING_POLICIES = ("least_outstanding", "prefix_affinity", "load_aware")
# The catalog's gateway settings (llm_gateway role): numbers >= 0 but for the fallback list.
GATEWAY_NUMBERS = (
    "timeout_s",
    "max_inflight",
    "max_waiting",
    "first_byte_timeout_s",
    "chunk_gap_timeout_s",
    "stream_max_s",
    "tokens_per_s",
    "retry_attempts",
)
FIELDS = ("name", "aliases", "source", "group", "port", "engine", "resources", "env", "capabilities", "tier",
          "latency_ms", "gateway")  # fmt: skip
REQUIRED = ("source", "group", "port", "capabilities", "tier", "latency_ms")
# An external model (base_url): what the gateway needs to use it, nothing to install.
EXTERNAL_FIELDS = ("name", "aliases", "base_url", "api_key_header", "probe", "metrics_url", "capabilities", "tier",
                   "latency_ms", "gateway")  # fmt: skip
EXTERNAL_REQUIRED = ("base_url", "capabilities", "tier", "latency_ms")
PROBES = ("models", "request", "full")  # the gateway's health probe kinds (external default: models)
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")
SOURCE_FIELDS = ("hf_repo", "revision", "path", "sha256sums")
RESOURCE_FIELDS = ("memory_max", "cpu_quota", "gpus")
_REVISION = re.compile(r"^[0-9a-f]{40}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _strings(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and all(isinstance(v, str) for v in value)


def _address(hostvars, host: str) -> str:
    hv = hostvars[host]
    for var in ("citadel_address", "ansible_host"):
        value = hv.get(var)
        if value not in (None, ""):
            return str(value)
    return host


def endpoint(address: str, port: int) -> str:
    """host:port, an IPv6 literal in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _check_source(name: str, source, problems: list[str]) -> None:
    if not isinstance(source, Mapping) or ("hf_repo" in source) == ("path" in source):
        problems.append(
            f"model {name}: source must be either `hf_repo` with `revision` (a 40-character commit hash) or "
            f"`path` (a directory on the controller with a SHA256SUMS file). Got {source!r}."
        )
    elif set(source) - set(SOURCE_FIELDS):
        unknown = ", ".join(sorted(map(str, set(source) - set(SOURCE_FIELDS))))
        problems.append(f"model {name}: source: unknown keys {unknown}; the keys are {', '.join(SOURCE_FIELDS)}.")
    elif "hf_repo" in source and not _REVISION.match(str(source.get("revision") or "")):
        problems.append(
            f"model {name}: source.revision must be the 40-character commit hash you validated "
            f"(see https://huggingface.co/{source['hf_repo']}/commits/main), not {source.get('revision')!r}."
        )


def _check_served(name: str, m: Mapping, problems: list[str]) -> None:
    """What the gateway serves a model by, wherever it runs: capabilities, tier, latency, aliases."""
    caps = m["capabilities"]
    if not _strings(caps) or not caps or set(caps) - set(CAPABILITIES) or m["tier"] not in TIERS:
        problems.append(
            f"model {name}: capabilities {caps!r} / tier {m['tier']!r} not known. Capabilities must be a non-empty "
            f"list among {', '.join(CAPABILITIES)}; tier one of {', '.join(TIERS)}."
        )
    latency = m["latency_ms"]
    if not isinstance(latency, Mapping) or not all(_number(latency.get(k)) and latency[k] > 0 for k in ("avg", "p95")):
        problems.append(
            f"model {name}: latency_ms {latency!r} needs avg and p95 in milliseconds, both > 0 "
            "(the gateway's auto choice, the latency alert and the load test's gate), e.g. {avg: 500, p95: 750}."
        )
    if not _strings(m.get("aliases", [])):
        problems.append(f"model {name}: aliases must be a list of names, not {m['aliases']!r}.")


def _url_problem(value) -> str | None:
    """Why ``value`` is not an http(s) URL the gateway can dial (None: it is)."""
    u = urlsplit(value) if isinstance(value, str) else None
    if u is None or u.scheme not in ("http", "https") or not u.hostname or u.query or u.fragment or "@" in u.netloc:
        return "must be an http(s)://host[:port][/path] URL with no credentials, query or fragment"
    try:
        u.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "has a bad port"
    return None


def _check_external(name: str, m: Mapping, problems: list[str]) -> bool:
    """An external entry's own fields; False when one the later checks need is missing."""
    unknown = sorted(set(m) - set(EXTERNAL_FIELDS))
    if unknown:
        problems.append(
            f"model {name}: unknown fields {', '.join(unknown)} for a model at a base_url (installed nowhere); "
            f"its fields are {', '.join(EXTERNAL_FIELDS)}."
        )
    missing = [f for f in EXTERNAL_REQUIRED if f not in m]
    if missing:
        problems.append(
            f"citadel_models entry {name} lacks a field: {', '.join(missing)}. A model at a base_url needs "
            "base_url, capabilities (non-empty list), tier and latency_ms {avg, p95}."
        )
        return False
    for field in ("base_url", "metrics_url"):
        why = _url_problem(m[field]) if field in m else None
        if why:
            problems.append(f"model {name}: {field} {m[field]!r} {why}, e.g. http://ollama-01:11434/v1.")
    if m.get("probe", "models") not in PROBES:
        problems.append(
            f"model {name}: probe {m['probe']!r} is not one of {', '.join(PROBES)} (models: the listing only, "
            "nothing a provider bills; request: plus a 1-token request; full: plus GET /health, as vLLM)."
        )
    if not _HEADER_NAME.match(str(m.get("api_key_header", "Authorization"))):
        problems.append(
            f"model {name}: api_key_header {m['api_key_header']!r} is not a header name "
            "(Authorization sends `Bearer KEY`; another name, e.g. api-key, the bare key)."
        )
    _check_served(name, m, problems)
    return True


def _check_entry(name: str, m: Mapping, problems: list[str]) -> bool:
    """Every field of one entry; False when one the later checks need is missing or unusable."""
    if "base_url" in m:
        return _check_external(name, m, problems)
    unknown = sorted(set(m) - set(FIELDS))
    if unknown:
        problems.append(f"model {name}: unknown fields {', '.join(unknown)}; the fields are {', '.join(FIELDS)}.")
    missing = [f for f in REQUIRED if f not in m]
    if missing:
        problems.append(
            f"citadel_models entry {name} lacks a field: {', '.join(missing)}. Every model needs "
            "name, source, group, port (1-65535), capabilities (non-empty list), tier and latency_ms {avg, p95}; "
            "or, served by a server this repository does not install, base_url instead of source, group and port."
        )
        return False
    _check_source(name, m["source"], problems)
    port = m["port"]
    usable = isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536
    if not usable:
        problems.append(f"model {name}: port {port!r} is not a TCP port (1-65535).")
    if not isinstance(m["group"], str):
        problems.append(f"model {name}: group must be the name of an inventory group, not {m['group']!r}.")
        usable = False
    _check_served(name, m, problems)
    for field in ("engine", "resources", "env"):
        if not isinstance(m.get(field, {}), Mapping):
            problems.append(f"model {name}: {field} must be a mapping, not {m[field]!r}.")
    resources = m.get("resources", {})
    if isinstance(resources, Mapping) and set(resources) - set(RESOURCE_FIELDS):
        unknown = ", ".join(sorted(map(str, set(resources) - set(RESOURCE_FIELDS))))
        problems.append(
            f"model {name}: resources: unknown keys {unknown}; the keys are {', '.join(RESOURCE_FIELDS)} "
            "(MemoryMax=, CPUQuota=, CUDA_VISIBLE_DEVICES)."
        )
    env = m.get("env", {})
    if isinstance(env, Mapping):
        # each one becomes a line of the model's environment file
        bad = [k for k, v in env.items() if not _ENV_NAME.match(str(k)) or "\n" in str(v)]
        if bad:
            problems.append(
                f"model {name}: env {', '.join(map(str, bad))}: names are letters, digits and _ (not first), "
                "values one line."
            )
    return usable


def _check_routing(name: str, routing, problems: list[str]) -> None:
    fix = (
        f"model {name}: gateway.routing {routing!r} — policy is one of {', '.join(ROUTING_POLICIES)}; "
        "prefix_chars a whole number >= 1; load_factor a number >= 1."
    )
    if not isinstance(routing, Mapping) or set(routing) - {"policy", "prefix_chars", "load_factor"}:
        problems.append(fix)
        return
    chars, factor = routing.get("prefix_chars", 1), routing.get("load_factor", 1)
    if (
        routing.get("policy", "least_outstanding") not in ROUTING_POLICIES
        or not isinstance(chars, int) or isinstance(chars, bool) or chars < 1
        or not _number(factor) or factor < 1
    ):  # fmt: skip
        problems.append(fix)


def _check_gateway(name: str, route, names: list[str], problems: list[str]) -> None:
    fields = ("fallbacks", "cache", "routing") + GATEWAY_NUMBERS
    bad = not isinstance(route, Mapping) or set(route) - set(fields)
    bad = bad or any(not _number(v) or v < 0 for k, v in route.items() if k not in ("fallbacks", "cache", "routing"))
    bad = bad or not isinstance(route.get("cache", False), bool)
    if bad:
        problems.append(
            f"model {name}: gateway: {route!r} — allowed keys are {', '.join(fields)}; every one but fallbacks, "
            "routing and cache (true or false) is a number >= 0 (tokens_per_s: 0 turns the stream cap off)."
        )
        return
    if "routing" in route:
        _check_routing(name, route["routing"], problems)
    attempts = route.get("retry_attempts", 1)
    if not isinstance(attempts, int) or attempts < 1:
        problems.append(
            f"model {name}: gateway.retry_attempts {attempts!r} must be a whole number >= 1 "
            "(sends per request, retries included)."
        )
    fallbacks = route.get("fallbacks", [])
    if not _strings(fallbacks) or set(fallbacks) - set(names) or name in fallbacks:
        problems.append(
            f"model {name}: gateway.fallbacks {fallbacks!r} must name other models of the catalog ({', '.join(names)})."
        )


def _replicas(name: str, m: Mapping, groups, hostvars, problems: list[str]) -> list[dict]:
    group = m["group"]
    if group not in groups:
        known = ", ".join(g for g in groups if g not in ("all", "ungrouped"))
        problems.append(f"model {name}: group {group} is not a group of this inventory ({known}).")
        return []
    if not groups[group]:
        problems.append(
            f"model {name}: its group {group} has no hosts in this inventory, so nothing would serve it and the "
            f"gateway would route it nowhere. Add hosts to {group} or remove the model from the catalog."
        )
    out = []
    for host in groups[group]:
        address = _address(hostvars, host)
        out.append({"host": host, "address": address, "port": m["port"], "endpoint": endpoint(address, m["port"])})
    return out


def citadel_catalog(models, groups, hostvars) -> list[dict]:
    """The catalog with defaults applied and every replica's endpoint; raises on any mistake."""
    if not isinstance(models, Sequence) or isinstance(models, str):
        raise AnsibleFilterError(f"citadel_models must be a list of models, not {type(models).__name__}.")
    problems: list[str] = []
    entries = []
    for i, m in enumerate(models):
        if not isinstance(m, Mapping) or not isinstance(m.get("name"), str) or not m["name"]:
            problems.append(f"citadel_models entry #{i} lacks a field: every model needs a `name` (non-empty string).")
            continue
        entries.append((m, _check_entry(m["name"], m, problems)))
    names = [m["name"] for m, _ in entries]
    all_names = names + [a for m, _ in entries for a in m.get("aliases", []) if isinstance(a, str)]
    twice = sorted({n for n in all_names if all_names.count(n) > 1})
    if twice:
        problems.append(
            f"citadel_models uses these names or aliases more than once: {', '.join(twice)}. "
            "Each name and alias must point at one model."
        )
    shaped = [
        m
        for m, ok in entries
        if ok and "base_url" not in m and all(isinstance(m.get(f, {}), Mapping) for f in ("engine", "resources"))
    ]
    problems += _gpus.gpu_problems(shaped, lambda m: groups.get(m["group"], []))
    out = []
    taken: dict[tuple[str, int], str] = {}  # (host, port) -> model
    for m, ok in entries:
        if not ok:
            continue
        name = m["name"]
        _check_gateway(name, m.get("gateway", {}), names, problems)
        if "base_url" in m:
            if not problems:
                out.append(_external(m))
            continue
        replicas = _replicas(name, m, groups, hostvars, problems)
        for r in replicas:
            other = taken.setdefault((r["host"], r["port"]), name)
            if other != name:
                problems.append(
                    f"models {other} and {name} both use port {r['port']} on {r['host']}. "
                    "Give each model served by one host its own port in citadel_models."
                )
        if problems:
            continue  # nothing below is returned; shapes may be wrong
        route = {"fallbacks": [], **m.get("gateway", {})}
        out.append(
            {
                **m,
                "aliases": list(m.get("aliases", [])),
                "engine": dict(m.get("engine", {})),
                "resources": _resources(m.get("resources", {})),
                "env": dict(m.get("env", {})),
                "gateway": route,
                "replicas": replicas,
                "kind": "vllm",
                "base_url": None,
            }
        )
    if problems:
        raise AnsibleFilterError("The model catalog (citadel_models) is not valid:\n- " + "\n- ".join(problems))
    return out


def _external(m: Mapping) -> dict:
    """A model at a base_url: the shape of every entry, nothing to install, no replica on any host."""
    return {
        **m,
        "kind": "external",
        "base_url": m["base_url"].rstrip("/"),
        "aliases": list(m.get("aliases", [])),
        "probe": m.get("probe", "models"),
        "api_key_header": m.get("api_key_header", "Authorization"),
        "metrics_url": m.get("metrics_url"),
        "group": None,
        "port": None,
        "engine": {},
        "resources": {},
        "env": {},
        "gateway": {"fallbacks": [], **m.get("gateway", {})},
        "replicas": [],
    }


def _resources(resources: Mapping) -> dict:
    """``gpus`` as CUDA_VISIBLE_DEVICES takes it ("0,1"), whichever form the catalog used."""
    out = dict(resources)
    if out.get("gpus") not in (None, ""):
        out["gpus"] = ",".join(map(str, _gpus.gpu_indices(out["gpus"])))
    return out


def citadel_replica(model: Mapping, host: str) -> dict:
    """The replica of a normalised model on ``host``."""
    for replica in model["replicas"]:
        if replica["host"] == host:
            return replica
    raise AnsibleFilterError(f"model {model['name']} has no replica on {host} (its group is {model['group']}).")


def citadel_endpoints(hosts, port, hostvars) -> list[dict]:
    """Each host's endpoint for a service every one of them runs at ``port`` (node_exporter, the
    gateway): the same address as its model replicas."""
    port = int(port)
    out = []
    for host in hosts:
        address = _address(hostvars, host)
        out.append({"host": host, "address": address, "port": port, "endpoint": endpoint(address, port)})
    return out


class FilterModule:
    def filters(self):
        return {
            "citadel_catalog": citadel_catalog,
            "citadel_replica": citadel_replica,
            "citadel_endpoints": citadel_endpoints,
        }
