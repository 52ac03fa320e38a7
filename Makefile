# Two commands matter: `make run` (the whole shop, from a fresh clone) and `make test`.
# Everything they need is installed by the targets below: the venv from pyproject.toml, buf
# from npm, Consul from Debian bullseye's package (tools/install-consul.sh).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
CONSUL := .tools/bin/consul
PYTEST_WORKERS ?= 2

.PHONY: run cluster test lint gen gen-check breaking tools host-tools xds-protos chromium prometheus-tools clean help

help:
	@echo "make run    - install what is missing, start the shop, Ctrl-C to stop"
	@echo "make cluster - the shop across hosts (network namespaces, a 3-server Consul cluster; root)"
	@echo "make test   - install what is missing, run the whole test suite"
	@echo "make lint   - ruff, mypy --strict (mesh, gateway, services), buf lint"
	@echo "make gen    - regenerate shop/ from protos/ (and the guide's example)"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(BUF):
	mkdir -p .tools
	test -f .tools/package.json || echo '{"private": true}' > .tools/package.json
	npm install --prefix .tools --no-audit --no-fund --silent @bufbuild/buf@$(BUF_VERSION)

# Node's gRPC with its xDS plugin, for the Node client of `mesh xds` (examples/xds, tests).
GRPC_JS_XDS := .tools/node_modules/@grpc/grpc-js-xds/package.json

$(GRPC_JS_XDS): $(BUF)
	npm install --prefix .tools --no-audit --no-fund --silent @grpc/grpc-js@1.14.7 @grpc/grpc-js-xds@1.14.1 @grpc/proto-loader@0.7.15

# Consul from Debian bullseye's package (bookworm has none), unpacked under .tools/.
$(CONSUL):
	tools/install-consul.sh

# The Envoy v3 API modules for `mesh xds`, beside the venv and not in it (see the script).
XDS_PROTOS := .tools/xds-protos

xds-protos: $(VENV)/.installed
	@tools/install-xds-protos.sh $(PY) $(XDS_PROTOS) >/dev/null

tools: $(VENV)/.installed $(BUF) $(CONSUL) $(GRPC_JS_XDS) xds-protos

# The shop's contracts, and the guide's example (docs/guide.md) generated the same way.
EXAMPLE_PROTOS := --protos examples/quotes/protos --out examples/quotes/gen

gen: $(VENV)/.installed
	$(PY) tools/gen.py
	$(PY) tools/gen.py $(EXAMPLE_PROTOS)

gen-check: $(VENV)/.installed
	$(PY) tools/gen.py --check
	$(PY) tools/gen.py --check $(EXAMPLE_PROTOS)

# No broker is no reason not to start: order events then wait in the outbox until one answers.
run: tools gen
	@tools/ensure-rabbitmq.sh || echo "make run: NO RabbitMQ broker at 127.0.0.1:5672 (see above); the shop starts anyway and order events wait in the outbox until one answers"
	$(PY) -m services.launcher

# The multi-host shop and its tests: hosts are network namespaces (iproute2), forwarded by socat.
host-tools:
	tools/ensure-host-tools.sh

cluster: tools gen host-tools
	@tools/ensure-rabbitmq.sh || echo "make cluster: NO RabbitMQ broker at 127.0.0.1:5672 (see above); order events wait in the outbox until one answers"
	$(PY) -m services.cluster

# The dashboard's browser test needs Debian's chromium; the Prometheus tests Debian's prometheus
# and promtool (installed without starting a system service).
chromium:
	@tools/ensure-chromium.sh >/dev/null

prometheus-tools:
	@tools/ensure-prometheus.sh >/dev/null

test: tools host-tools chromium prometheus-tools
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -q --durations=25

lint: tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(BUF) lint

# Breaking-change check of the contracts against the previous commit (needs git history).
breaking: $(BUF)
	@if git rev-parse --verify -q HEAD~1 >/dev/null; then \
		$(BUF) breaking --against '.git#ref=HEAD~1'; \
	else echo "no previous commit: nothing to compare"; fi

clean:
	rm -rf $(VENV) .tools .run data .pytest_cache .mypy_cache .ruff_cache
