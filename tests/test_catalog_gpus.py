"""GPUs in the catalog (roles/citadel_catalog/filter_plugins/citadel_gpus.py): every refusal names
the model or host and the fix. The catalog-only checks run in citadel_catalog (preflight, before
any host changes); the host checks on what nvidia-smi prints on real GPU servers (fixtures)."""

import sys

import pytest
from conftest import REPO
from test_catalog import GROUPS, HOSTVARS, _model

sys.path.insert(0, str(REPO / "roles/citadel_catalog/filter_plugins"))

from ansible.errors import AnsibleFilterError  # noqa: E402
from citadel_catalog import citadel_catalog  # noqa: E402
from citadel_gpus import (  # noqa: E402
    citadel_gpu_host_problems,
    citadel_gpu_hosts,
    citadel_gpu_placement_problems,
    citadel_gpu_reservations,
    citadel_nvidia_smi,
    gpu_indices,
)

SMI = REPO / "tests/fixtures/nvidia-smi"
GIB = 2**30


def _gpu_model(name, port, gpus, group="llm", **engine):
    return _model(name, port, group=group, engine=engine, resources={"gpus": gpus})


def _refusals(models) -> str:
    with pytest.raises(AnsibleFilterError) as raised:
        citadel_catalog(models, GROUPS, HOSTVARS)
    return str(raised.value)


def test_gpu_indices_as_nvidia_smi_numbers_them():
    assert gpu_indices("0,1") == [0, 1]
    assert gpu_indices(" 2 , 3") == [2, 3]
    assert gpu_indices(3) == [3]
    assert gpu_indices([0, 1]) == [0, 1]
    assert gpu_indices(None) == gpu_indices("") == []
    assert gpu_indices("GPU-0") is None
    assert gpu_indices("0;1") is None
    assert gpu_indices(-1) is None
    assert gpu_indices(True) is None


def test_a_catalog_whose_gpus_add_up_passes():
    models = [
        _gpu_model("big", 11400, "0,1", tensor_parallel_size=2, gpu_memory_utilization=0.9),
        _gpu_model("small", 11401, 2, gpu_memory_utilization=0.5),
        _gpu_model("tiny", 11402, "2", gpu_memory_utilization=0.45),  # 0.95 on GPU 2: the budget, not over
        _gpu_model("piped", 11403, [4, 5, 6, 7], tensor_parallel_size=2, pipeline_parallel_size=2),
        _model("cpu", 11404),  # no GPUs at all (the lab)
    ]
    out = citadel_catalog(models, GROUPS, HOSTVARS)
    assert [m["name"] for m in out] == ["big", "small", "tiny", "piped", "cpu"]
    # CUDA_VISIBLE_DEVICES as the unit takes it, whichever form the catalog used
    assert [m["resources"].get("gpus") for m in out] == ["0,1", "2", "2", "4,5,6,7", None]


def test_parallel_sizes_must_match_the_gpus_listed():
    text = _refusals(
        [
            _gpu_model("tp", 11400, "0", tensor_parallel_size=2),
            _gpu_model("pp", 11401, "1,2,3", tensor_parallel_size=2, pipeline_parallel_size=2),
            _model("unlisted", 11402, engine={"tensor_parallel_size": 4}),
        ]
    )
    assert (
        "model tp: tensor_parallel_size 2 x pipeline_parallel_size 1 = 2 GPUs, but resources.gpus lists 1 ('0')" in text
    )
    assert "model pp: tensor_parallel_size 2 x pipeline_parallel_size 2 = 4 GPUs, but resources.gpus lists 3" in text
    assert (
        "model unlisted: tensor_parallel_size 4 x pipeline_parallel_size 1 = 4 GPUs, but resources.gpus lists 0" in text
    )
    assert "list exactly that many, or change the parallel sizes" in text


def test_models_sharing_a_gpu_on_one_host_must_fit_its_memory():
    text = _refusals(
        [
            _gpu_model("hermes", 11400, "0", gpu_memory_utilization=0.5),
            _gpu_model("openchat", 11401, "0,1", tensor_parallel_size=2, gpu_memory_utilization=0.5),
            _gpu_model("default", 11402, "1"),  # unset: vLLM takes 0.9
            _gpu_model("elsewhere", 11403, "0", group="solo", gpu_memory_utilization=0.1),
        ]
    )
    assert "host a: GPU 0 is shared by hermes 0.5, openchat 0.5 (gpu_memory_utilization, 0.9 when unset)" in text
    assert "host a: GPU 1 is shared by openchat 0.5, default 0.9" in text
    # host b also runs "elsewhere" on GPU 0: 1.1 there
    assert (
        "host b: GPU 0 is shared by hermes 0.5, openchat 0.5, elsewhere 0.1 (gpu_memory_utilization, 0.9 when "
        "unset): 1.1 of its memory in all, over 0.95" in text
    )
    assert "Lower their engine.gpu_memory_utilization so they add up to at most 0.95, or give them different" in text


def test_malformed_gpu_settings_are_named():
    text = _refusals(
        [
            _gpu_model("uuid", 11400, "GPU-5e6a"),
            _gpu_model("twice", 11401, "1,1", tensor_parallel_size=2),
            _gpu_model("frac", 11402, "2", gpu_memory_utilization=1.5),
            _gpu_model("half", 11403, "3", tensor_parallel_size=0),
        ]
    )
    assert "model uuid: resources.gpus 'GPU-5e6a' must list distinct GPU indices as nvidia-smi numbers them" in text
    assert "model twice: resources.gpus '1,1' must list distinct GPU indices" in text
    assert "model frac: engine tensor_parallel_size and pipeline_parallel_size must be whole numbers >= 1" in text
    assert "model half: engine tensor_parallel_size" in text


def test_nvidia_smi_output_is_read_and_anything_else_refused():
    h100 = citadel_nvidia_smi((SMI / "h100-sxm-8.csv").read_text())
    assert [g["index"] for g in h100] == list(range(8))
    assert {(g["name"], g["memory_mib"]) for g in h100} == {("NVIDIA H100 80GB HBM3", 81559)}
    assert all(g["uuid"].startswith("GPU-") for g in h100)
    assert citadel_nvidia_smi("") == []  # no GPU
    with pytest.raises(AnsibleFilterError, match="--query-gpu=index,uuid,name,memory.total --format=csv,noheader"):
        citadel_nvidia_smi("index, uuid, name, memory.total [MiB]\n0, GPU-1, NVIDIA L4, 23034 MiB\n")


def test_a_gpu_the_host_lacks_and_weights_that_cannot_fit_are_named():
    l40s = citadel_nvidia_smi((SMI / "l40s-4.csv").read_text())
    models = [
        _gpu_model("mixtral", 11400, "0,1", tensor_parallel_size=2, gpu_memory_utilization=0.9),
        _gpu_model("phi", 11401, "2", gpu_memory_utilization=0.25),
        _gpu_model("lost", 11402, "3,4", tensor_parallel_size=2),
        _gpu_model("fits", 11403, "3", gpu_memory_utilization=0.6),
        _model("unknown-size", 11404, resources={"gpus": "3"}, engine={"gpu_memory_utilization": 0.3}),
    ]
    weights = {"mixtral": 93.4 * GIB, "phi": 10.5 * GIB, "fits": 14.5 * GIB}
    problems = citadel_gpu_host_problems(models, "gpu-01", l40s, weights)
    assert len(problems) == 3, problems
    mixtral, phi, lost = problems
    # 2 x 45 GiB x 0.9 = 81 GiB given; 90 % of it for weights is 72.9 GiB < 93.4
    assert mixtral.startswith("model mixtral on gpu-01: its weights take 93.4 GiB, but gpu_memory_utilization gives")
    assert "it 81.0 GiB on GPU 0, 1" in mixtral
    assert "Give it more GPUs (and tensor_parallel_size), a higher gpu_memory_utilization, or quantized" in mixtral
    # 45 GiB x 0.25 = 11.2 GiB given: 10.5 GiB of weights leave under 10 % for the KV cache
    assert (
        "model phi on gpu-01: its weights take 10.5 GiB, but gpu_memory_utilization gives it 11.2 GiB on GPU 2" in phi
    )
    assert lost.startswith("model lost on gpu-01: resources.gpus lists GPU 4, which gpu-01 does not have")
    assert "(nvidia-smi shows: 0 (NVIDIA L40S, 46068 MiB), 1 (NVIDIA L40S, 46068 MiB)" in lost


def test_a_host_without_gpus_refuses_every_gpu_model():
    problems = citadel_gpu_host_problems([_gpu_model("phi", 11401, "0")], "cpu-01", citadel_nvidia_smi(""), {})
    assert problems == [
        "model phi on cpu-01: resources.gpus lists GPU 0, which cpu-01 does not have (nvidia-smi shows: none). "
        "Use indices nvidia-smi shows, or serve the model elsewhere."
    ]


def test_gpu_hosts_are_those_serving_a_model_on_gpus():
    # "solo" (host b) serves a GPU model; "llm" (a and b) a CPU one: the exporter belongs on b only.
    catalog = citadel_catalog([_model("cpu", 11400), _gpu_model("gpu", 11401, "0", group="solo")], GROUPS, HOSTVARS)
    assert citadel_gpu_hosts(catalog) == ["b"]
    catalog = citadel_catalog(
        [_model("cpu", 11400), _gpu_model("gpu", 11401, [0, 1], tensor_parallel_size=2)], GROUPS, HOSTVARS
    )
    assert citadel_gpu_hosts(catalog) == ["a", "b"]
    assert citadel_gpu_hosts(citadel_catalog([_model("cpu", 11400)], GROUPS, HOSTVARS)) == []


def test_gpu_reservations_add_up_the_models_sharing_a_gpu():
    models = [
        _gpu_model("big", 11400, "0,1", tensor_parallel_size=2, gpu_memory_utilization=0.6),
        _gpu_model("small", 11401, "1", gpu_memory_utilization=0.3),
        _gpu_model("default", 11402, "2", group="solo"),  # vLLM's 0.9 when unset
    ]
    assert citadel_gpu_reservations(citadel_catalog(models, GROUPS, HOSTVARS)) == [
        {"host": "a", "gpu": 0, "ratio": 0.6},
        {"host": "a", "gpu": 1, "ratio": 0.9},
        {"host": "b", "gpu": 0, "ratio": 0.6},
        {"host": "b", "gpu": 1, "ratio": 0.9},
        {"host": "b", "gpu": 2, "ratio": 0.9},
    ]


def test_a_model_on_other_gpus_than_it_lists_is_named():
    l40s = citadel_nvidia_smi((SMI / "l40s-4.csv").read_text())
    uuid = {g["index"]: g["uuid"] for g in l40s}
    models = [
        _gpu_model("pair", 11400, "0,1", tensor_parallel_size=2),
        _gpu_model("three", 11401, "3"),
        _gpu_model("idle", 11402, "2"),
    ]
    # what nvidia-smi --query-compute-apps prints: pid, GPU uuid, MiB; "three" landed on GPU 2
    apps = f"101, {uuid[0]}, 40000\n102, {uuid[1]}, 40000\n201, {uuid[2]}, 30000\n"
    pids = {"pair": [100, 101, 102], "three": [200, 201], "idle": [300]}
    problems = citadel_gpu_placement_problems(models, l40s, apps, pids)
    assert problems == [
        f"model three: should hold GPU 3 ({uuid[3]}), but its processes hold {uuid[2]}.",
        f"model idle: should hold GPU 2 ({uuid[2]}), but its processes hold none.",
    ]
    pids["three"], pids["idle"] = [], [201]
    assert citadel_gpu_placement_problems(models[2:], l40s, apps, pids) == []
