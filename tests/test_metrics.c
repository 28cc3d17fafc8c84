/*
 * test_metrics.c - the metric tables (sim/metrics.h): every field of kv_step_metrics has
 * exactly one fold row, every output column shows a field that has one, column names are
 * unique per file, and folding works field by field as the table says (values by hand).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "sim/metrics.h"

static int fold_row_of(size_t offset)
{
    int found = -1;
    for (int i = 0; i < kv_n_step_fields; i++)
        if (kv_step_fields[i].offset == offset) {
            assert_int_equal(found, -1);   /* one row per field */
            found = i;
        }
    return found;
}

/* A field added to kv_step_metrics without its fold row fails here. */
static void test_every_field_has_one_fold(void **state)
{
    (void)state;
    assert_int_equal(sizeof(kv_step_metrics), (size_t)kv_n_step_fields * sizeof(double));
    for (size_t o = 0; o < sizeof(kv_step_metrics); o += sizeof(double))
        assert_true(fold_row_of(o) >= 0);
}

static void test_columns_show_folded_fields(void **state)
{
    (void)state;
    int n_summary = 0;
    for (int i = 0; i < kv_n_output_columns; i++) {
        const kv_output_column *c = &kv_output_columns[i];
        assert_true(fold_row_of(c->offset) >= 0);
        assert_non_null(c->format);
        if (c->file == KV_FILE_SUMMARY) {
            n_summary++;
            assert_non_null(c->all_format);
            assert_int_equal(kv_summary_column(c->name), i);
            assert_true(c->reduction != KV_RED_STEP);
        } else {
            assert_int_equal(c->reduction, KV_RED_STEP);
        }
        for (int j = 0; j < i; j++)
            assert_false(kv_output_columns[j].file == c->file &&
                         strcmp(kv_output_columns[j].name, c->name) == 0);
    }
    assert_true(n_summary > 0);
    assert_true(kv_summary_column("recall_mean") >= 0);
    assert_int_equal(kv_summary_column("recall"), -1);   /* a steps.tsv column */
}

/* Two caches (recall 0.5 + 0.25 over their heads, 3 + 5 tokens) over 2 layers x 2 heads:
 * recall 0.75 / 4, tokens 8. */
static void test_fold(void **state)
{
    (void)state;
    kv_step_metrics run = { 0 };
    kv_step_metrics a = { .recall = 0.5, .topk1 = 1, .topk8 = 0.5, .kv_tokens = 3,
                          .meta_bytes = 16 };
    kv_step_metrics b = { .recall = 0.25, .topk1 = 2, .topk8 = 1, .kv_tokens = 5,
                          .meta_bytes = 8 };
    kv_metrics_add(&run, &a);
    kv_metrics_add(&run, &b);
    kv_metrics_finish(&run, 4.0);
    assert_true(run.recall == 0.1875);
    assert_true(run.topk1 == 0.75);
    assert_true(run.topk8 == 0.375);
    assert_true(run.kv_tokens == 8);
    assert_true(run.meta_bytes == 24);
    assert_true(kv_metric_get(&run, offsetof(kv_step_metrics, meta_bytes)) == 24);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_field_has_one_fold),
        cmocka_unit_test(test_columns_show_folded_fields),
        cmocka_unit_test(test_fold),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
