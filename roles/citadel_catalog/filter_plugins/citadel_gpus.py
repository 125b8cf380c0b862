"""GPUs in the model catalog: what each model asks of a host's GPUs, checked once.

Two halves:

- From the catalog and the inventory alone (``gpu_problems``, called by ``citadel_catalog`` so a
  site run refuses before any host changes): ``resources.gpus`` names GPU indices the way
  ``nvidia-smi`` numbers them; a model's ``tensor_parallel_size`` x ``pipeline_parallel_size`` is
  the number of GPUs it lists; the models one host runs do not give one GPU more than
  ``GPU_MEMORY_BUDGET`` of its memory in all (vLLM's ``gpu_memory_utilization``, 0.9 when unset).
- Against a host's GPUs (``citadel_gpu_host_problems``, from the facts ``nvidia-smi
  --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits`` prints, parsed by
  ``citadel_nvidia_smi``): every index a model lists exists there, and its weights fit the memory
  it was given.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

# vLLM pre-allocates gpu_memory_utilization of each GPU it uses; two servers sharing a GPU must
# leave the driver, CUDA contexts and NCCL their few percent.
GPU_MEMORY_BUDGET = 0.95
VLLM_DEFAULT_UTILIZATION = 0.9  # vLLM's default for gpu_memory_utilization
# Weights are not all a model needs: CUDA graphs, activations and some KV cache take the rest.
WEIGHTS_SHARE_MAX = 0.9
_INDICES = re.compile(r"^\s*\d+\s*(,\s*\d+\s*)*$")


def gpu_indices(gpus) -> list[int] | None:
    """The indices of ``resources.gpus`` ("0,1", 0 or [0, 1]); [] when unset; None when malformed."""
    if gpus is None or gpus == "":
        return []
    if isinstance(gpus, bool):
        return None
    if isinstance(gpus, int):
        return [gpus] if gpus >= 0 else None
    if isinstance(gpus, list):
        if all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus):
            return list(gpus)
        return None
    if isinstance(gpus, str) and _INDICES.match(gpus):
        return [int(g) for g in gpus.split(",")]
    return None


def _size(engine: Mapping, key: str):
    value = engine.get(key, 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def _utilization(engine: Mapping):
    value = engine.get("gpu_memory_utilization", VLLM_DEFAULT_UTILIZATION)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1
    return value if ok else None


def gpu_problems(models: list[Mapping], hosts_of) -> list[str]:
    """The catalog's GPU mistakes, each naming the model (and host) and the fix. ``models``: entries
    whose other fields passed; ``hosts_of(model)``: the hosts that serve it."""
    problems: list[str] = []
    share: dict[tuple[str, int], list[tuple[str, float]]] = {}  # (host, gpu) -> [(model, utilization)]
    for m in models:
        name, engine = m["name"], m.get("engine", {})
        indices = gpu_indices(m.get("resources", {}).get("gpus"))
        if indices is None or len(set(indices or [])) != len(indices or []):
            problems.append(
                f"model {name}: resources.gpus {m['resources']['gpus']!r} must list distinct GPU indices as "
                'nvidia-smi numbers them, e.g. "0" or "0,1".'
            )
            continue
        tp, pp = _size(engine, "tensor_parallel_size"), _size(engine, "pipeline_parallel_size")
        utilization = _utilization(engine)
        if tp is None or pp is None or utilization is None:
            problems.append(
                f"model {name}: engine tensor_parallel_size and pipeline_parallel_size must be whole numbers >= 1 "
                f"and gpu_memory_utilization a fraction in (0, 1], not {tp=!r}, {pp=!r}, "
                f"{engine.get('gpu_memory_utilization')!r}."
            )
            continue
        if (indices or tp * pp > 1) and tp * pp != len(indices):
            problems.append(
                f"model {name}: tensor_parallel_size {tp} x pipeline_parallel_size {pp} = {tp * pp} GPUs, but "
                f"resources.gpus lists {len(indices)} ({m.get('resources', {}).get('gpus')!r}). vLLM runs one "
                "worker per GPU: list exactly that many, or change the parallel sizes."
            )
            continue
        for host in hosts_of(m):
            for i in indices:
                share.setdefault((host, i), []).append((name, utilization))
    for (host, gpu), users in sorted(share.items()):
        total = sum(u for _, u in users)
        if len(users) > 1 and total > GPU_MEMORY_BUDGET:
            each = ", ".join(f"{n} {u:g}" for n, u in users)
            problems.append(
                f"host {host}: GPU {gpu} is shared by {each} (gpu_memory_utilization, 0.9 when unset): "
                f"{total:g} of its memory in all, over {GPU_MEMORY_BUDGET:g}. The second server would fail to "
                "start for lack of memory. Lower their engine.gpu_memory_utilization so they add up to at most "
                f"{GPU_MEMORY_BUDGET:g}, or give them different GPUs."
            )
    return problems


def citadel_nvidia_smi(text: str) -> list[dict]:
    """The GPUs in ``nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits``."""
    gpus = []
    for row in csv.reader(io.StringIO(text or "")):
        if not row or not "".join(row).strip():
            continue
        try:
            index, uuid, name, memory = (c.strip() for c in row)
            gpus.append({"index": int(index), "uuid": uuid, "name": name, "memory_mib": int(float(memory))})
        except ValueError as e:
            raise AnsibleFilterError(
                f"nvidia-smi printed {','.join(row)!r}, not index,uuid,name,memory.total (MiB): "
                "run it with --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits"
            ) from e
    return gpus


def citadel_gpu_host_problems(models: list[Mapping], host: str, gpus: list[Mapping], weights: Mapping) -> list[str]:
    """What the catalog asks of ``host``'s GPUs that they cannot give: an index it lacks, weights
    (``weights``: model name -> bytes on disk, where known) over the memory a model was given.
    ``models``: the normalised catalog entries this host serves."""
    problems = []
    by_index = {g["index"]: g for g in gpus}
    have = ", ".join(f"{g['index']} ({g['name']}, {g['memory_mib']} MiB)" for g in gpus) or "none"
    for m in models:
        name = m["name"]
        indices = gpu_indices(m.get("resources", {}).get("gpus")) or []
        missing = [i for i in indices if i not in by_index]
        if missing:
            problems.append(
                f"model {name} on {host}: resources.gpus lists GPU {', '.join(map(str, missing))}, which {host} does "
                f"not have (nvidia-smi shows: {have}). Use indices nvidia-smi shows, or serve the model elsewhere."
            )
            continue
        size = weights.get(name)
        if not indices or not size:
            continue
        given = sum(by_index[i]["memory_mib"] for i in indices) * 2**20 * _utilization(m.get("engine", {}))
        if size > WEIGHTS_SHARE_MAX * given:
            problems.append(
                f"model {name} on {host}: its weights take {size / 2**30:.1f} GiB, but gpu_memory_utilization "
                f"gives it {given / 2**30:.1f} GiB on GPU {', '.join(map(str, indices))}; weights may use at most "
                f"{WEIGHTS_SHARE_MAX:g} of that (the rest is activations and KV cache). Give it more GPUs (and "
                "tensor_parallel_size), a higher gpu_memory_utilization, or quantized weights."
            )
    return problems


def citadel_gpu_placement_problems(
    models: list[Mapping], gpus: list[Mapping], apps: str, unit_pids: Mapping
) -> list[str]:
    """Models whose servers do not hold memory on exactly the GPUs their ``resources.gpus`` lists
    (a wrong CUDA_DEVICE_ORDER, or CUDA_VISIBLE_DEVICES ignored). ``gpus``: citadel_nvidia_smi's;
    ``apps``: what ``nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory
    --format=csv,noheader,nounits`` prints; ``unit_pids``: model name -> the pids of its unit."""
    uuid_of = {g["index"]: g["uuid"] for g in gpus}
    held: dict[str, set[str]] = {}  # pid -> GPU uuids
    for row in csv.reader(io.StringIO(apps)):
        if len(row) >= 2 and row[0].strip().isdigit():
            held.setdefault(row[0].strip(), set()).add(row[1].strip())
    problems = []
    for m in models:
        want = {uuid_of.get(i, f"GPU {i}") for i in gpu_indices(m.get("resources", {}).get("gpus")) or []}
        if not want:
            continue
        have = set().union(*(held.get(str(p), set()) for p in unit_pids.get(m["name"], [])))
        if have != want:
            problems.append(
                f"model {m['name']}: should hold GPU {m['resources']['gpus']} ({', '.join(sorted(want))}), but its "
                f"processes hold {', '.join(sorted(have)) or 'none'}."
            )
    return problems


def citadel_gpu_reservations(models: list[Mapping]) -> list[dict]:
    """``[{host, gpu, ratio}]``: the share of each used GPU's memory its models' vLLM servers take
    up front (their gpu_memory_utilization added up), sorted. A GPU's memory alert sits above it:
    vLLM's own reservation is not a leak. ``models``: the normalised catalog."""
    reserved: dict[tuple[str, int], float] = {}
    for m in models:
        utilization = _utilization(m.get("engine", {})) or 0.0
        for i in gpu_indices(m.get("resources", {}).get("gpus")) or []:
            for r in m["replicas"]:
                reserved[(r["host"], i)] = reserved.get((r["host"], i), 0.0) + utilization
    return [{"host": h, "gpu": g, "ratio": round(v, 4)} for (h, g), v in sorted(reserved.items())]


def citadel_gpu_hosts(models: list[Mapping]) -> list[str]:
    """The hosts that serve a model on GPUs (one listing ``resources.gpus``), sorted: where the GPU
    metrics exporter runs, is scraped and is let through the firewall."""
    return sorted({r["host"] for m in models if gpu_indices(m.get("resources", {}).get("gpus")) for r in m["replicas"]})


class FilterModule:
    def filters(self):
        return {
            "citadel_nvidia_smi": citadel_nvidia_smi,
            "citadel_gpu_host_problems": citadel_gpu_host_problems,
            "citadel_gpu_hosts": citadel_gpu_hosts,
            "citadel_gpu_reservations": citadel_gpu_reservations,
            "citadel_gpu_placement_problems": citadel_gpu_placement_problems,
        }
