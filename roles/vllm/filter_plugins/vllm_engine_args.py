"""Catalog `engine:` mapping -> vLLM command-line arguments for a systemd ExecStart."""

import json


def _systemd_quote(value: str) -> str:
    # systemd splits ExecStart on whitespace and honours double quotes.
    if value and not any(c in value for c in " \t\"\\'$%"):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$").replace("%", "%%") + '"'


def vllm_engine_args(engine: dict | None) -> list[str]:
    """One "--flag value" string per key, sorted; True -> "--flag", False -> "--no-flag".

    Keys use the catalog's snake_case; vLLM's flags use dashes. Mappings and lists
    (e.g. override_generation_config) are passed as JSON, as vLLM expects.
    """
    args = []
    for key, value in sorted((engine or {}).items()):
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False:
            args.append("--no-" + flag[2:])
        elif value is None:
            continue
        elif isinstance(value, (dict, list)):
            args.append(f"{flag} {_systemd_quote(json.dumps(value, separators=(',', ':')))}")
        else:
            args.append(f"{flag} {_systemd_quote(str(value))}")
    return args


class FilterModule:
    def filters(self):
        return {"vllm_engine_args": vllm_engine_args}
