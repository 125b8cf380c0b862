"""The lab's HTTPS gateway (citadel_gateway_tls on citadel-gateway-02): the official openai SDK
works against https:// trusting only the lab CA (lab/tls.sh), plain HTTP is not served there,
and Prometheus scrapes it over https with the certificate verified."""

import http.client
import json
import ssl

import lab_inventory
import openai
import pytest
import testinfra
from lab_ops import API_KEY

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
