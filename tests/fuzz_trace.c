/*
 * fuzz_trace.c - libFuzzer target: arbitrary bytes as a kvtrace file (`make fuzz`).
 * Seeds: tests/fuzz/trace/. A crashing input goes into tests/fuzz/regress/trace/, where
 * tests/test_fuzz_regress.c replays it in every `make test`.
 */
#include "tests/fuzz_targets.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    kv_trace_set_verbose(0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return kv_fuzz_trace_input(data, size);
}
