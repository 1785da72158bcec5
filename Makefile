# Two entry points: `make demo` and `make test`. Both create .venv and install
# the pinned dependencies on first use (re-installed when pyproject.toml changes).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/edgec export minilm --target npu -o out/minilm-npu
	@echo "report: out/minilm-npu/report.md"

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m bench.run_all

clean:
	rm -rf out build .pytest_cache
