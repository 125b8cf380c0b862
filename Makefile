# citadel-llm — entry points. `make lab` and `make test` work on a bare machine
# of this kind: `setup` installs what they need first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export CONTAINERS_CONF := $(CURDIR)/lab/containers.conf
# Controller-side lab artifacts: wheelhouse, converted models, proxy state.
export CITADEL_CACHE := $(CURDIR)/.cache
# The lab image tag is the hash of its recipe (lab/build-image.sh computes the same).
export CITADEL_LAB_IMAGE := localhost/citadel-lab-debian12:$(shell sha256sum lab/build-image.sh | cut -c1-12)
export ANSIBLE_FORCE_COLOR := 0
export PY_COLORS := 0
export NO_COLOR := 1

.PHONY: help setup llama-server lab lab-down test test-fast checks lint unit unit-repository unit-gateway-3.11 unit-gateway-3.12 molecule bench-gateway bench-cluster load

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: ## Install podman, the lab image, the apt proxy, the pinned tooling (.venv), the lab's wheelhouses, models and gateway keys
	@scripts/bootstrap.sh
	@lab/build-image.sh >/dev/null
	@lab/proxy.sh
	@lab/build-wheelhouse.sh >/dev/null
	@lab/prepare-models.sh >/dev/null
	@lab/keygen.sh >/dev/null
	@# The lab CA and the HTTPS gateway's certificate: its lab_ip, and the
	@# published port on this machine's loopback (inventory/lab/hosts.yml).
	@lab/tls.sh $(CITADEL_CACHE)/lab-tls IP:10.89.42.22 DNS:citadel-gateway-02 IP:127.0.0.1 DNS:localhost
	@lab/ssh-keys.sh >/dev/null
	@lab/build-gateway-wheelhouse.sh >/dev/null
	@files/gateway/scripts/venv.sh 3.11
	@files/gateway/scripts/venv.sh 3.12
	@loadtests/bench/venv.sh

llama-server: ## Build llama.cpp's server for the lab's second server kind (once, ~7 min on 2 cores; cached)
	@lab/build-llama-server.sh >/dev/null

lab: setup llama-server ## Bring up the lab hosts and run site.yml against them (kept up)
	@# Molecule remembers "created" even if the containers went away (a `make test`
	@# elsewhere, a reboot): then forget that state so create runs again.
	@for h in $$(ansible-inventory -i inventory/lab --list | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)["_meta"]["hostvars"]))'); do \
	  podman container exists $$h || { molecule reset -s default >/dev/null 2>&1; break; }; done
	molecule converge -s default
	@echo
	@echo "lab hosts (published on 127.0.0.1 only):"
	@podman ps --filter name=citadel- --format '  {{.Names}}  {{.Ports}}'
	@echo
	@echo "gateways: http://127.0.0.1:8000 and http://127.0.0.1:8001 (limits shared through Redis)"
	@echo "  API key in $(CITADEL_CACHE)/lab-gateway-api-key; admin key, for drains: lab-gateway-admin-key"
	@echo "try:"
	@echo "  curl -s 127.0.0.1:8000/v1/chat/completions -H \"Authorization: Bearer \$$(cat .cache/lab-gateway-api-key)\" \\"
	@echo "    -H 'Content-Type: application/json' -d '{\"model\":\"smollm2-135m\",\"temperature\":0,\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\"What is the capital of France?\"}]}'"

lab-down: ## Remove the lab hosts
	molecule destroy -s default

lint: ## yamllint, ansible-lint (production profile), ruff
	yamllint --strict .
	ansible-lint
	ruff check .
	ruff format --check .

unit: ## Tests that need no lab host: repository (inventories, syntax, preflight, rules) and the gateway package on 3.11 and 3.12, side by side
	@# The three suites mostly wait on subprocesses (ansible-playbook, gateways,
	@# stubs): run together they take the time of the longest. Each one's output
	@# is printed whole when it ends.
	@$(MAKE) --no-print-directory -j3 --output-sync=target unit-repository unit-gateway-3.11 unit-gateway-3.12

unit-repository:
	pytest tests loadtests/bench

# Each gateway suite takes its ports from its own range below the kernel's
# ephemeral ports (files/gateway/tests/conftest.py free_port): side by side,
# kernel-picked ports collided (a stub's port taken by the other suite's process).
unit-gateway-3.11:
	CITADEL_TEST_PORTS=20000-25999 $(CURDIR)/.cache/gateway-venv/bin/pytest files/gateway/tests

unit-gateway-3.12:
	CITADEL_TEST_PORTS=26000-31999 $(CURDIR)/.cache/gateway-venv-3.12/bin/pytest files/gateway/tests

molecule: ## Every Molecule scenario: create, converge, idempotence, verify, destroy
	molecule test --all

test-fast: setup lint unit ## The quick inner loop: everything but Molecule

test: setup ## Everything CI checks
	@# llama.cpp's server compiles (cached after the first time) while lint and the
	@# unit suites run: those mostly wait on subprocesses, the compiler does not.
	@$(MAKE) --no-print-directory -j2 --output-sync=target checks llama-server
	@$(MAKE) --no-print-directory molecule

checks: lint
	@$(MAKE) --no-print-directory unit

load: ## Locust against the gateway with the catalog's SLO gates (HOST=, INVENTORY=, ARGS=); reports in reports/load/<time>/
	@HOST='$(HOST)' INVENTORY='$(INVENTORY)' loadtests/run.sh $(ARGS)

bench-gateway: ## Gateway vs direct, vllm-router, sglang-router, Portkey, LiteLLM (pinned) on a stub upstream (wrk, ~8.5 min; exit 1 if a target fails)
	@files/gateway/scripts/venv.sh 3.12
	@loadtests/bench/venv.sh
	@loadtests/install-litellm.sh
	@loadtests/install-routers.sh
	@loadtests/install-portkey.sh
	$(CITADEL_CACHE)/bench-venv/bin/python loadtests/bench_gateway.py $(BENCH_ARGS)

bench-cluster: ## Replica choice on the lab (make lab first) with vLLM's own client: direct vs gateway, least_outstanding vs prefix_affinity vs vllm-router cache_aware (exit 1 if a target fails)
	@loadtests/install-routers.sh >/dev/null
	python loadtests/bench_cluster.py $(BENCH_ARGS)
