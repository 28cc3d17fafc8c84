# kvsim - trace-driven simulator of KV-cache eviction policies.
#
#   make run     install what is missing, build, replay the default experiment
#   make test    install what is missing, build, run the cmocka test suite
#
# Sources are picked up by wildcard: a new policies/NAME.c or tests/test_NAME.c needs no
# edit here.

CC      ?= cc
PKGS    := hdf5 gsl inih openblas libcrypto
# Debian packages the two commands above need; `make deps` installs the missing ones.
DEB_PKGS := build-essential pkg-config libhdf5-dev libgsl-dev libcmocka-dev libinih-dev \
            libopenblas-dev libssl-dev gnuplot-nox python3-h5py python3-numpy hdf5-tools

BUILD   := build
CPPFLAGS = -I. $(shell pkg-config --cflags $(PKGS))
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -fopenmp
# GSL's CBLAS interface resolved by OpenBLAS (not gslcblas), so gsl_blas_* is fast.
LDLIBS   = $(shell pkg-config --libs-only-L gsl) -lgsl $(shell pkg-config --libs hdf5 inih openblas libcrypto) -lm
LDFLAGS += -fopenmp

LIB_SRC := $(filter-out sim/main.c, $(wildcard sim/*.c policies/*.c traces/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
HDRS    := $(wildcard sim/*.h policies/*.h traces/*.h tests/*.h)

.PHONY: all deps run test check clean figures bench
all: kvsim

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

# The README's test command.
test: deps
	@$(MAKE) --no-print-directory check

check: kvsim $(TEST_BIN)
	@fail=0; for t in $(TEST_BIN); do echo "== $$t"; $$t || fail=1; done; \
	if [ $$fail -ne 0 ]; then echo "kvsim: some tests FAILED"; exit 1; fi; echo "kvsim: all test programs passed"

# The README's run command: the default experiment on the committed real traces.
run: deps
	@$(MAKE) --no-print-directory kvsim
	./kvsim run configs/default.ini --force

# The synthetic experiment (a generated trace).
run-synthetic: kvsim
	./kvsim gen --seed 1 --layers 2 --heads 8 --kv-heads 4 --head-dim 32 --tokens 512 --prefill 128 -o $(BUILD)/synthetic.h5
	./kvsim run configs/synthetic.ini --force

# Real traces (issue 3): recapture traces/data/ from the checkpoint beside the clone and
# check with h5diff that every dataset and attribute equals the committed file's.
MODEL ?= ../shared/models/stories260K.bin
REAL_SEEDS := 1 2
.PHONY: traces run-synthetic
traces: kvsim
	@mkdir -p $(BUILD)/traces
	@for s in $(REAL_SEEDS); do \
	  name=stories260K_T512_P128_seed$$s.h5; \
	  ./kvsim capture --model $(MODEL) --tokens 512 --prefill 128 --temperature 1.0 \
	    --top-p 0.9 --seed $$s -o $(BUILD)/traces/$$name || exit 1; \
	  if [ ! -f traces/data/$$name ]; then \
	    cp $(BUILD)/traces/$$name traces/data/$$name && echo "traces: wrote traces/data/$$name"; \
	  elif h5diff traces/data/$$name $(BUILD)/traces/$$name >/dev/null; then \
	    echo "traces: traces/data/$$name reproduced (h5diff: every dataset and attribute equal)"; \
	  else \
	    h5diff -r traces/data/$$name $(BUILD)/traces/$$name | tail -n 20; \
	    echo "traces: traces/data/$$name differs from $(BUILD)/traces/$$name"; exit 1; \
	  fi; \
	done

# The README's copies of the default experiment's figures (analysis/figures/, 900x600),
# reduced to 128 colours by ImageMagick's convert when it is installed (to stay small).
figures: run
	./kvsim plot results/default --size 900x600 -o analysis/figures
	@if command -v convert >/dev/null 2>&1; then \
	  for f in analysis/figures/*.png; do convert $$f -colors 128 PNG8:$$f; done; fi
	@ls -l analysis/figures/*.png

clean:
	rm -rf $(BUILD) kvsim

# `make bench`: issue 7's performance workloads against their floors (tests/bench.c; it is
# not a test_*.c, so `make check` does not run it). Traces are generated once into
# build/bench/ and kept; results in build/bench/results.tsv.
bench: $(BUILD)/bench/bench
	$(BUILD)/bench/bench $(BUILD)/bench

$(BUILD)/bench/bench: tests/bench.c $(BUILD)/libkvsim.a $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< $(BUILD)/libkvsim.a $(LDFLAGS) $(LDLIBS) -o $@
