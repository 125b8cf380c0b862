"""The catalog's engine mapping becomes the vLLM command line the units run."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "vllm_engine_args", Path(__file__).parent.parent / "roles/vllm/filter_plugins/vllm_engine_args.py"
)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
vllm_engine_args = _module.vllm_engine_args


def test_production_style_engine_block():
    assert vllm_engine_args(
        {
            "max_model_len": 32768,
            "max_num_seqs": 256,
            "enable_chunked_prefill": True,
            "enable_prefix_caching": False,
            "gpu_memory_utilization": 0.9,
            "tensor_parallel_size": 2,
        }
    ) == [
        "--enable-chunked-prefill",
        "--no-enable-prefix-caching",
        "--gpu-memory-utilization 0.9",
        "--max-model-len 32768",
        "--max-num-seqs 256",
        "--tensor-parallel-size 2",
    ]


def test_structured_values_are_json_and_quoted_for_systemd():
    assert vllm_engine_args({"override_generation_config": {"temperature": 0.2}}) == [
        '--override-generation-config "{\\"temperature\\":0.2}"'
    ]


def test_values_with_spaces_or_specifiers_are_quoted():
    assert vllm_engine_args({"chat_template": "/etc/a b.jinja", "x": "50%"}) == [
        '--chat-template "/etc/a b.jinja"',
        '--x "50%%"',
    ]


def test_null_and_missing_engine():
    assert vllm_engine_args(None) == []
    assert vllm_engine_args({"max_num_seqs": None}) == []
