"""file_sd target groups from the normalised catalog and the hosts' endpoints (citadel_catalog).

Prometheus reads these lists as-is (one file per job); building them in Python
keeps the template a single `to_nice_yaml` and the order deterministic, so an
unchanged inventory rewrites nothing. Addresses come from the catalog's
endpoints only: Prometheus scrapes what the gateway dials and the firewall opens.
"""


def citadel_vllm_targets(models) -> list[dict]:
    """One target per model replica, at its endpoint."""
    return [
        {
            "targets": [replica["endpoint"]],
            "labels": {"model": model["name"], "host": replica["host"], "tier": model["tier"]},
        }
        for model in models
        for replica in model["replicas"]
    ]


def citadel_host_targets(endpoints, https_hosts=()) -> list[dict]:
    """One target per host endpoint (citadel_endpoints), labelled with the inventory name; the
    hosts in ``https_hosts`` are scraped over https (``__scheme__``, which file_sd may set)."""
    return [
        {
            "targets": [e["endpoint"]],
            "labels": {"host": e["host"], **({"__scheme__": "https"} if e["host"] in https_hosts else {})},
        }
        for e in endpoints
    ]


class FilterModule:
    def filters(self):
        return {"citadel_vllm_targets": citadel_vllm_targets, "citadel_host_targets": citadel_host_targets}
