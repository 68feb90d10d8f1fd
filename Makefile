# The README's two commands are `make demo` and `make test`; everything else is a step they call.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.installed-runtime
TEST_STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench
NATIVE_SOURCES := $(wildcard native/include/*.h native/src/*.c native/src/*.h native/src/aclnn/*.cpp native/src/aclnn/*.h) setup.py

.PHONY: demo test native bench clean check-aarch64 check-sanitize emu

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77" wheel

# runtime only (what `make demo` needs); the editable install also builds the native library
$(RUNTIME_STAMP): pyproject.toml setup.py | $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	touch $@

# + pytest, torch (CPU wheel, pinned below 2.14), transformers, accelerate
$(TEST_STAMP): $(RUNTIME_STAMP)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# rebuild the native library in place after C changes
native: $(RUNTIME_STAMP) $(NATIVE_SOURCES)
	$(PY) setup.py -q build_ext --inplace

demo: $(RUNTIME_STAMP) native
	$(PY) artifacts/demo.py

test: $(TEST_STAMP) native
	$(PY) artifacts/fetch_smollm2.py >/dev/null
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc
	$(MAKE) --no-print-directory check-sanitize

# + the bench extra: llama-cpp-python (the version pinned there) built from source by pip for this machine's CPU
# (GGML_NATIVE=ON: its best kernels, as a user building llama.cpp would get), without curl, tests, examples,
# tools, server or the multimodal library (llama_cpp imports that only for vision chat handlers). The sdist is
# downloaded once into .cache/bench/sdist/; bench/side_by_side.py also takes llama.cpp's own
# convert_hf_to_gguf.py from it.
BENCH_CMAKE_ARGS ?= -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF
$(BENCH_STAMP): $(TEST_STAMP) pyproject.toml
	if ! $(PY) bench/_llama.py check; then \
	  sdist=$$($(PY) bench/_llama.py sdist) && \
	  echo "building llama-cpp-python from $$sdist (several minutes) ..." && \
	  CMAKE_ARGS="$(BENCH_CMAKE_ARGS)" $(PY) -m pip install -q "$$sdist"; fi
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

# side by side with llama.cpp and transformers (bench/results/); BENCH_QUICK=1: one short round of each
BENCH_FLAGS := $(if $(BENCH_QUICK),--quick,)
bench: $(BENCH_STAMP) native
	$(PY) bench/convert.py $(BENCH_FLAGS)
	$(PY) bench/side_by_side.py $(BENCH_FLAGS)
	$(PY) bench/serve.py

clean:
	rm -rf build runtime/_asw*.so *.egg-info .pytest_cache

# the NEON kernels (A3 hosts are Kunpeng): cross-compile the library with -Werror for aarch64 and run
# native/check/kernel_sets.c under qemu, comparing every kernel set's logits with the portable set's.
# Needs Debian's gcc-aarch64-linux-gnu, qemu-user and libc6-arm64-cross (.ci/run installs them).
check-aarch64:
	@command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null || \
	  { echo "check-aarch64 needs: apt-get install gcc-aarch64-linux-gnu qemu-user libc6-arm64-cross"; exit 1; }
	mkdir -p build/aarch64
	aarch64-linux-gnu-gcc -std=c11 -O3 -fno-trapping-math -ffp-contract=off -Wall -Wextra -Werror -fPIC -fvisibility=hidden -shared -pthread \
		-Inative/include native/src/*.c -o build/aarch64/libasw.so -lm -ldl
	aarch64-linux-gnu-gcc -std=c11 -O2 -ffp-contract=off -Wall -Wextra -Werror -pthread -Inative/include \
		native/check/kernel_sets.c native/src/*.c -o build/aarch64/kernel_sets -lm -ldl
	qemu-aarch64 -L /usr/aarch64-linux-gnu build/aarch64/kernel_sets

# The CANN emulator (test infrastructure, never shipped): libascendcl.so, libnnopbase.so and the operator libraries
# under build/emu/, built from native/emu/ against native/src/aclnn/cann_api.h. The emulator tests run this target.
EMU_DIR := build/emu
EMU_CXX ?= g++
EMU_CXXFLAGS := -std=c++17 -O2 -Wall -Wextra -Werror -fPIC -pthread
EMU_HEADERS := $(wildcard native/emu/*.h) native/src/aclnn/cann_api.h
EMU_OP_LIBS := math nn transformer
EMU_LINK := $(EMU_CXX) -shared -pthread -Wl,-rpath,'$$ORIGIN' -L$(EMU_DIR)

emu: $(EMU_DIR)/libascendcl.so $(EMU_DIR)/libnnopbase.so $(EMU_OP_LIBS:%=$(EMU_DIR)/libopapi_%.so) $(EMU_DIR)/libopapi.so

$(EMU_DIR)/obj/%.o: native/emu/%.cpp $(EMU_HEADERS)
	@mkdir -p $(@D)
	$(EMU_CXX) $(EMU_CXXFLAGS) -c $< -o $@

$(EMU_DIR)/libascendcl.so: $(EMU_DIR)/obj/runtime.o
	$(EMU_LINK) -Wl,-soname,libascendcl.so $^ -o $@

$(EMU_DIR)/libnnopbase.so: $(EMU_DIR)/obj/nnopbase.o $(EMU_DIR)/libascendcl.so
	$(EMU_LINK) -Wl,-soname,libnnopbase.so $< -lascendcl -o $@

$(EMU_DIR)/libopapi_%.so: $(EMU_DIR)/obj/ops_%.o $(EMU_DIR)/obj/ops_common.o $(EMU_DIR)/libnnopbase.so
	$(EMU_LINK) -Wl,-soname,libopapi_$*.so $(filter %.o,$^) -lnnopbase -lascendcl -o $@

# the pre-8.5 layout: every operator in one library (the backend's fallback)
$(EMU_DIR)/libopapi.so: $(EMU_OP_LIBS:%=$(EMU_DIR)/obj/ops_%.o) $(EMU_DIR)/obj/ops_common.o $(EMU_DIR)/libnnopbase.so
	$(EMU_LINK) -Wl,-soname,libopapi.so $(filter %.o,$^) -lnnopbase -lascendcl -o $@

# the native library under AddressSanitizer + UndefinedBehaviorSanitizer: the C fuzzer (native/check/fuzz_open.c:
# forged configs and tensor tables through asw_model_open and a session), the kernel-set check, the thread pool's
# placement check (native/check/pool_placement.c), and the native,
# seam, parity and bf16-activation tests with the sanitized library preloaded into Python (leak checks off: CPython keeps memory
# at exit by design). Any sanitizer report aborts the run.
SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=all
SAN_CFLAGS := -std=c11 -O1 -g $(SANITIZE) -fno-trapping-math -ffp-contract=off -Wall -Wextra -Werror -pthread -Inative/include
FUZZ_CASES ?= 100000
# the library's sources are compiled once (in parallel: 4 whole-library builds took ~4 minutes of CI) and linked into
# the shared library and each check program
SAN_DIR := build/sanitize
SAN_OBJS := $(patsubst native/src/%.c,$(SAN_DIR)/obj/%.o,$(wildcard native/src/*.c))
SAN_CHECKS := fuzz_open kernel_sets pool_placement
SAN_BUILT := $(SAN_DIR)/_asw.so $(SAN_CHECKS:%=$(SAN_DIR)/%)

$(SAN_DIR)/obj/%.o: native/src/%.c $(wildcard native/include/*.h native/src/*.h) Makefile
	@mkdir -p $(@D)
	gcc $(SAN_CFLAGS) -fPIC -fvisibility=hidden -c $< -o $@

$(SAN_DIR)/_asw.so: $(SAN_OBJS)
	gcc $(SANITIZE) -shared -pthread $^ -o $@ -lm -ldl

$(SAN_DIR)/%: native/check/%.c $(SAN_OBJS) $(wildcard native/check/*.h)
	gcc $(SAN_CFLAGS) $(filter %.c %.o,$^) -o $@ -lm -ldl

check-sanitize: $(TEST_STAMP)
	$(MAKE) --no-print-directory -j$$(nproc) $(SAN_BUILT)
	build/sanitize/fuzz_open $(FUZZ_CASES)
	build/sanitize/kernel_sets
	build/sanitize/pool_placement
	ASW_NATIVE_LIB=$(CURDIR)/build/sanitize/_asw.so ASAN_OPTIONS=detect_leaks=0 \
		LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		$(PY) -m pytest -q -p no:cacheprovider tests/test_native.py tests/test_seam.py tests/test_parity.py \
		tests/test_bf16_activations.py tests/test_greedy_screen.py
