"""file_sd target groups derived from the model catalog and the inventory.

Prometheus reads these lists as-is (one file per job); building them in Python
keeps the template a single `to_nice_yaml` and the order deterministic, so an
unchanged inventory rewrites nothing.
"""


def _address(hostvars, host: str) -> str:
    # The address Ansible itself uses for the host; in the lab the inventory
    # name, which podman's network DNS resolves between containers.
    return str(hostvars[host].get("ansible_host") or host)


def citadel_vllm_targets(models, groups, hostvars) -> list[dict]:
    """One target per model replica: every host of the model's `group`, at its port."""
    out = []
    for model in models:
        for host in groups.get(model["group"], []):
            out.append(
                {
                    "targets": [f"{_address(hostvars, host)}:{model['port']}"],
                    "labels": {"model": model["name"], "host": host, "tier": model["tier"]},
                }
            )
    return out


def citadel_host_targets(hosts, port, hostvars) -> list[dict]:
    """One target per host at `port`, labelled with the inventory name."""
    return [{"targets": [f"{_address(hostvars, host)}:{port}"], "labels": {"host": host}} for host in hosts]


class FilterModule:
    def filters(self):
        return {"citadel_vllm_targets": citadel_vllm_targets, "citadel_host_targets": citadel_host_targets}
