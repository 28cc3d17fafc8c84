/*
 * test_capture_hf.c - the PyTorch capture tool (traces/capture_hf.py) from `make check`.
 *
 * 1. Runs /usr/bin/python3 tests/test_capture_hf.py (python's unittest: the tool on the
 *    PyTorch llama2.c model of tests/torch_llama2c.py against `kvsim capture`, bfloat16
 *    and float16 models, GQA, the layer-by-layer memory bound, --check, the refusals, and
 *    the tool's transformers glue against a stand-in, tests/stub_transformers).
 *    When /usr/bin/python3 cannot import torch, h5py and numpy it says so and skips:
 *    `make deps` installs python3-torch, python3-h5py and python3-numpy.
 * 2. Rows recomputed by kvsim: for the stories15M pair the python suite leaves behind (the
 *    tool's float32 trace with --attn, `kvsim capture`'s trace of the same tokens), the
 *    replay's own recompute (kv_attn_rows_from_qk, sim/rows.h) from the tool's q and k equals
 *    the recompute from kvsim capture's q and k, and the rows the tool stored, each within
 *    1e-5 on every entry j <= t of every row of every head and layer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sim/rows.h"
#include "tests/kv_test.h"
#include "traces/trace.h"

static int torch_missing;   /* 1: python3-torch not importable, everything skipped */

static int setup(void **state)
{
    (void)state;
    if (kv_test_dir_make("kvsim-test-capture-hf") != 0)
        return -1;
    torch_missing = kv_test_run_quiet("/usr/bin/python3 -c 'import torch, h5py, numpy'") != 0;
    if (torch_missing)
        printf("test_capture_hf: SKIPPED: /usr/bin/python3 cannot import torch, h5py and "
               "numpy (python3-torch, python3-h5py, python3-numpy; `make deps` installs "
               "them): the PyTorch capture tool is not tested\n");
    return 0;
}

/* Step 1: the python suite, its output shown as it runs. */
static void test_python_suite(void **state)
{
    (void)state;
    if (torch_missing)
        skip();
    /* progress lines filtered out; the status is the suite's (written to rc), not grep's */
    char run[1024];
    snprintf(run, sizeof run, "(KVSIM_CAPTURE_HF_DIR='%s' /usr/bin/python3 "
             "tests/test_capture_hf.py; echo $? > '%s/rc') 2>&1 | tr '\\r' '\\n' | "
             "grep -v '^capture_hf.py: \\(layer\\|generating\\|teacher\\|--check: "
             "eager\\)'; exit $(cat '%s/rc')", kv_test_dir, kv_test_dir, kv_test_dir);
    int rc = system(run);
    assert_int_equal(rc, 0);
}

/* Reads a layer's q and k (float32) of an open trace; buffers owned by the caller. */
static void read_qk(kv_trace *tr, int layer, float **q, float **k)
{
    const kv_trace_info *in = kv_trace_get_info(tr);
    size_t t = (size_t)in->n_tokens, d = (size_t)in->head_dim;
    *q = malloc((size_t)in->n_heads * t * d * sizeof **q);
    *k = malloc((size_t)in->n_kv_heads * t * d * sizeof **k);
    assert_true(*q && *k);
    char err[512];
    if (kv_trace_read_qk(tr, layer, *q, *k, err, sizeof err))
        fail_msg("%s", err);
}

/* All rows of a layer recomputed by the replay's code: out[(h * T + t) * T + j]. */
static void recompute(const kv_trace_info *in, const float *q, const float *k, float *out)
{
    int t_len = in->n_tokens, d = in->head_dim, group = in->n_heads / in->n_kv_heads;
    for (int g = 0; g < in->n_kv_heads; g++)
        kv_attn_rows_from_qk(q + (size_t)g * group * t_len * d, group,
                             k + (size_t)g * t_len * d, d, in->softmax_scale, 0, t_len,
                             out + (size_t)g * group * t_len * t_len, (size_t)t_len, NULL, 0,
                             0);
}

/* Step 2. */
static void test_rows_recomputed_by_kvsim(void **state)
{
    (void)state;
    if (torch_missing)
        skip();
    char err[512];
    kv_trace *tool = NULL, *ref = NULL;
    if (kv_trace_open(kv_test_path("stories15M_tool.h5"), &tool, err, sizeof err)
        || kv_trace_open(kv_test_path("stories15M_kvsim.h5"), &ref, err, sizeof err))
        fail_msg("%s (left by tests/test_capture_hf.py)", err);
    const kv_trace_info *in = kv_trace_get_info(tool);
    assert_int_equal(in->source, KV_SOURCE_ATTN);
    assert_int_equal(in->n_tokens, kv_trace_get_info(ref)->n_tokens);
    int t_len = in->n_tokens;
    size_t n_rows = (size_t)in->n_heads * t_len * t_len;
    float *mine = malloc(n_rows * sizeof *mine), *theirs = malloc(n_rows * sizeof *theirs);
    float *stored = malloc(n_rows * sizeof *stored);
    assert_true(mine && theirs && stored);
    double worst_qk = 0, worst_stored = 0;
    for (int layer = 0; layer < in->n_layers; layer++) {
        float *q, *k, *rq, *rk;
        read_qk(tool, layer, &q, &k);
        read_qk(ref, layer, &rq, &rk);
        recompute(in, q, k, mine);
        recompute(kv_trace_get_info(ref), rq, rk, theirs);
        if (kv_trace_read_attn(tool, layer, 0, in->n_heads, 0, t_len, stored, err, sizeof err))
            fail_msg("%s", err);
        for (int h = 0; h < in->n_heads; h++)
            for (int t = 0; t < t_len; t++)
                for (int j = 0; j <= t; j++) {
                    size_t i = ((size_t)h * t_len + t) * t_len + j;
                    worst_qk = fmax(worst_qk, fabs((double)mine[i] - theirs[i]));
                    worst_stored = fmax(worst_stored, fabs((double)stored[i] - mine[i]));
                }
        free(q);
        free(k);
        free(rq);
        free(rk);
    }
    printf("test_capture_hf: stories15M rows recomputed by kvsim: tool q/k vs kvsim capture "
           "q/k %.3g, stored rows vs recompute %.3g (max abs)\n", worst_qk, worst_stored);
    assert_true(worst_qk <= 1e-5);
    assert_true(worst_stored <= 1e-5);
    free(mine);
    free(theirs);
    free(stored);
    kv_trace_close(tool);
    kv_trace_close(ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_python_suite),
        cmocka_unit_test(test_rows_recomputed_by_kvsim),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
