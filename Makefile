# Two entry points: `make demo` and `make test`. Both create .venv and install
# the pinned dependencies on first use (re-installed when pyproject.toml changes).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# pyproject.toml requires 3.11: python3.11, else python3 if it is 3.11 (override: make PYTHON=...).
IS_311 := -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'
PYTHON ?= $(firstword $(foreach p,python3.11 python3,$(shell $(p) $(IS_311) >/dev/null 2>&1 && echo $(p))))
NEED_311 := edgec needs Python 3.11: install python3.11 (apt-get install python3.11 python3.11-venv)

.PHONY: install demo test bench clean vulkan oniguruma desktop

$(STAMP): pyproject.toml
	@test -x $(PY) || { test -n "$(PYTHON)" && $(PYTHON) $(IS_311) 2>/dev/null; } || { echo "$(NEED_311)" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	CMAKE_ARGS='-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF' CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip install -q -e '.[test,gpu,desktop,llama]'
	touch $(STAMP)

# the software Vulkan device (Mesa's lavapipe) the gpu target is verified on; installed where this
# user may (root with apt), else the GPU tests skip and say why
vulkan:
	@ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers >/dev/null; } || \
	  echo "no software Vulkan device: the GPU tests will skip (apt-get install mesa-vulkan-drivers)"; }

# Oniguruma, the regex engine of the `tokenizers` library, which the desktop runner's tokenizer links
# for tokenizer.json's patterns; installed where this user may (root with apt), else make desktop
# stops and the native tokenizer tests skip, and say why
oniguruma:
	@echo '#include <oniguruma.h>' | $(CXX) -E -x c++ - >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libonig-dev >/dev/null; } || \
	  echo "no Oniguruma: make desktop stops and the native tokenizer tests skip (apt-get install libonig-dev)"; }

install: $(STAMP)

# the C++ runner (integrations/desktop): a bundle's .pte under ExecuTorch's C++ runtime, no Python
DESKTOP_BUILD ?= build/desktop
desktop: install oniguruma
	@command -v $(CXX) >/dev/null || { echo "make desktop needs a C++17 compiler: apt-get install g++" >&2; exit 1; }
	$(VENV)/bin/cmake -S integrations/desktop -B $(DESKTOP_BUILD) -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import executorch; print(list(executorch.__path__)[0])')" >/dev/null
	$(VENV)/bin/cmake --build $(DESKTOP_BUILD) -j 2
	@echo "runner: $(DESKTOP_BUILD)/edgec-run"

demo: install
	$(VENV)/bin/edgec export minilm --target npu -o out/minilm-npu
	@echo "report: out/minilm-npu/report.md"

# test files spread over TEST_JOBS processes; a module's fixtures stay in one
TEST_JOBS ?= 2
# the C++ runner is built here, with the other native parts, not inside the suite
test: install vulkan oniguruma
	@if command -v $(CXX) >/dev/null; then $(MAKE) -s desktop; \
	 else echo "no C++ compiler: the desktop runner tests skip (apt-get install g++)"; fi
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile

# every bench script in one run, one table at the end; BENCH_ARGS=--quick for a short tour
bench: install
	$(PY) -m bench.run_all $(BENCH_ARGS)

clean:
	rm -rf out build .pytest_cache
