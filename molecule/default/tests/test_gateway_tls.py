"""The lab's HTTPS gateway (citadel_gateway_tls on citadel-gateway-02): the official openai SDK
works against https:// trusting only the lab CA (lab/tls.sh), plain HTTP is not served there,
Prometheus scrapes it over https with the certificate verified, and `vllm bench serve` runs
against it trusting the lab CA."""

import http.client
import json
import os
import ssl
import subprocess
from pathlib import Path

import lab_inventory
import openai
import pytest
import testinfra
from lab_ops import API_KEY, CACHE, REPO

TLS_GATEWAYS = [g for g in lab_inventory.names("llm_gateway") if lab_inventory.gateway_tls(g)]
CHAT = next(m["name"] for m in lab_inventory.models() if "chat" in m["capabilities"])


@pytest.fixture(params=TLS_GATEWAYS)
def gateway(request):
    return request.param


def test_the_lab_has_an_https_gateway():
    assert TLS_GATEWAYS, "no lab gateway sets citadel_gateway_tls"


def test_the_openai_sdk_answers_over_https_with_the_lab_ca(gateway):
    with openai.DefaultHttpxClient(verify=lab_inventory.gateway_tls(gateway)) as http_client:
        client = openai.OpenAI(base_url=f"{lab_inventory.gateway_url(gateway)}/v1", api_key=API_KEY, max_retries=0,
                               timeout=120, http_client=http_client)  # fmt: skip
        reply = client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=8,
            temperature=0,
        )  # fmt: skip
        assert reply.choices[0].message.content.strip()
        stream = client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).strip()


def test_a_client_without_the_lab_ca_is_refused(gateway):
    url = lab_inventory.gateway_url(gateway)
    conn = http.client.HTTPSConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), context=ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/ready")
    conn.close()


def test_plain_http_is_off_on_the_https_gateway(gateway):
    conn = http.client.HTTPConnection(
        "127.0.0.1", int(lab_inventory.gateway_url(gateway).rsplit(":", 1)[1]), timeout=10
    )
    try:
        conn.request("GET", "/ready")
        status = conn.getresponse().status
    except (http.client.HTTPException, ConnectionError):
        status = None
    finally:
        conn.close()
    assert status in (None, 400), f"plain HTTP got {status}"


def test_prometheus_scrapes_the_https_gateway_verifying_its_certificate(gateway):
    (monitor,) = lab_inventory.names("monitoring")
    host = testinfra.get_host(f"podman://{monitor}")
    script = "import urllib.request as u;print(u.urlopen('http://127.0.0.1:9090/api/v1/targets?state=active').read().decode())"
    targets = json.loads(host.check_output("python3 -c %s", script))["data"]["activeTargets"]
    (target,) = [t for t in targets if t["labels"]["job"] == "llm_gateway" and t["labels"]["host"] == gateway]
    assert target["scrapeUrl"].startswith("https://"), target["scrapeUrl"]
    assert target["health"] == "up", target["lastError"]


def _vllm_bench(url: str, out: Path, ca: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """`vllm bench serve` (loadtests/vllm-bench.sh) against `url`, a few short chats, trusting only `ca`."""
    env = {**os.environ, "CITADEL_API_KEY": API_KEY, "CITADEL_CA": str(ca)}
    args = ["--num-prompts", "6", "--max-concurrency", "2", "--random-input-len", "32", "--random-output-len", "8",
            "--ignore-eos", "--disable-tqdm", "--save-result", "--result-dir", str(out),
            "--result-filename", "r.json"]  # fmt: skip
    # timeout: the first run installs the benchmark's venv (about 2.5 min)
    run = subprocess.run([str(REPO / "loadtests/vllm-bench.sh"), url, *args], env=env, capture_output=True, text=True,
                         timeout=900)  # fmt: skip
    result = json.loads((out / "r.json").read_text()) if (out / "r.json").exists() else {}
    return run, result


def test_vllm_bench_serve_runs_over_https_trusting_the_lab_ca(gateway, tmp_path):
    url = lab_inventory.gateway_url(gateway)
    run, result = _vllm_bench(url, tmp_path / "lab-ca", CACHE / "lab-tls" / "ca.pem")
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert (result["completed"], result["failed"]) == (6, 0), result
    assert result["total_output_tokens"] == 6 * 8
    assert API_KEY not in run.stdout + run.stderr + json.dumps(result)  # the key is in the environment only
    # Trusting the system CAs instead, nothing is served: the certificate really is verified.
    _, refused = _vllm_bench(url, tmp_path / "system-ca", Path("/etc/ssl/certs/ca-certificates.crt"))
    assert refused.get("completed", 0) == 0, refused
