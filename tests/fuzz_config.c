/*
 * fuzz_config.c - libFuzzer target: arbitrary bytes as an experiment INI file
 * (kv_config_load, then kv_replay_validate; `make fuzz`). Seeds: tests/fuzz/config/.
 * A crashing input goes into tests/fuzz/regress/config/ (replayed by
 * tests/test_fuzz_regress.c).
 */
#include "tests/fuzz_targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return kv_fuzz_config_input(data, size);
}
