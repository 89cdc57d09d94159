# flowkit developer entry points. `make run` and `make test` do all set-up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.flowkit-installed
BPF_SRC := csrc/bpf/flowkit.bpf.c
BPF_OBJ := flowkit/bpf/flowkit.bpf.o
PROBES_SRC := csrc/bpf/probes.bpf.c
PROBES_OBJ := flowkit/bpf/probes.bpf.o
NATIVE_SRC := $(wildcard csrc/*.py csrc/*.h csrc/cdef/*.cdef csrc/include/*.h csrc/native/*.c)

.PHONY: setup system-deps run test unit integration lint bpf native bench clean docs proto

setup: $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

# The venv is (re)built when packaging or native sources change.
$(STAMP): pyproject.toml setup.py $(NATIVE_SRC) scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The distribution was renamed flowkit -> flowkit-ebpf: drop an old install of it (and its
	# metadata in the source tree), whose entry points would otherwise clash with the new one's.
	$(BIN)/pip uninstall -q -y flowkit 2>/dev/null || true
	rm -rf flowkit.egg-info
	$(BIN)/pip install -q -e '.[all,test]'
	touch $(STAMP)

# Zero-configuration agent: every interface but lo, stdout export. Needs root (eBPF).
run: setup
	$(BIN)/flowkit-agent

# The whole suite: unit tests, then integration tests (root; they fail rather than skip in CI).
test: setup
	$(BIN)/pytest tests

unit: setup
	$(BIN)/pytest tests/unit

integration: setup
	$(BIN)/pytest tests/integration

lint: setup
	$(BIN)/ruff check flowkit flowkit_plugins tests bench scripts
	$(BIN)/mypy

# Rebuild the committed eBPF objects (needs clang). The build commands are also in the source
# headers. probes.bpf.o holds the feature probes of `flowkit-agent check`.
bpf: $(BPF_OBJ) $(PROBES_OBJ)
$(BPF_OBJ): $(BPF_SRC) csrc/flow.h
	clang -O2 -g -target bpf -fdebug-compilation-dir=. -D__BPF__ -I csrc -c $(BPF_SRC) -o $(BPF_OBJ)
$(PROBES_OBJ): $(PROBES_SRC)
	clang -O2 -g -target bpf -fdebug-compilation-dir=. -D__BPF__ -I csrc -c $(PROBES_SRC) -o $(PROBES_OBJ)

# Rebuild the C extension in place (editable installs pick it up).
native:
	$(BIN)/python csrc/build_ffi.py

bench: setup
	$(BIN)/python bench/run.py $(BENCH)

clean:
	rm -rf build dist *.egg-info flowkit/_native*.so flowkit/_native.c flowkit/_native.o
docs: setup
	$(BIN)/python scripts/gen-config-docs.py
proto: setup
	PATH=$(BIN):$$PATH bash scripts/gen-proto.sh
