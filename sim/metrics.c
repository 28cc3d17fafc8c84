/*
 * metrics.c - the tables of per-step metrics and their output columns (metrics.h).
 */
#include "sim/metrics.h"

#include <string.h>

#define F(field) offsetof(kv_step_metrics, field)

const kv_step_field kv_step_fields[] = {
    { F(recall), KV_FOLD_HEAD_MEAN },
    { F(topk1), KV_FOLD_HEAD_MEAN },
    { F(topk8), KV_FOLD_HEAD_MEAN },
    { F(kv_tokens), KV_FOLD_SUM },
    { F(meta_bytes), KV_FOLD_SUM },
    { F(out_err), KV_FOLD_HEAD_MEAN },
    { F(kl), KV_FOLD_RUN },
    { F(nll), KV_FOLD_RUN },
    { F(nll_full), KV_FOLD_RUN },
    { F(top1), KV_FOLD_RUN },
    { F(recall_closed), KV_FOLD_RUN },
};
const int kv_n_step_fields = sizeof kv_step_fields / sizeof kv_step_fields[0];

/* steps.tsv: after trace, policy, budget, budget_spec and step. summary.tsv: after trace,
 * policy, type, budget and budget_spec; oracle_recall_mean follows (output.c: it sets a
 * run against another run, the oracle's). The README's "Output files" documents each. */
const kv_output_column kv_output_columns[] = {
    { KV_FILE_STEPS, "recall", F(recall), KV_UNIT_AS_IS, KV_RED_STEP, "%.9g", NULL },
    { KV_FILE_STEPS, "kv_tokens", F(kv_tokens), KV_UNIT_AS_IS, KV_RED_STEP, "%.0f", NULL },
    { KV_FILE_STEPS, "kv_bytes", F(kv_tokens), KV_UNIT_KV_BYTES, KV_RED_STEP, "%.0f", NULL },
    { KV_FILE_STEPS, "meta_bytes", F(meta_bytes), KV_UNIT_AS_IS, KV_RED_STEP, "%.0f", NULL },
    { KV_FILE_STEPS, "topk1_recall", F(topk1), KV_UNIT_AS_IS, KV_RED_STEP, "%.9g", NULL },
    { KV_FILE_STEPS, "topk8_recall", F(topk8), KV_UNIT_AS_IS, KV_RED_STEP, "%.9g", NULL },
    { KV_FILE_STEPS, "out_err", F(out_err), KV_UNIT_AS_IS, KV_RED_STEP, "%.9g", NULL },
    { KV_FILE_STEPS, "kl", F(kl), KV_UNIT_AS_IS, KV_RED_STEP, "%.9g", NULL },
    { KV_FILE_STEPS, "nll", F(nll), KV_UNIT_AS_IS, KV_RED_STEP, "%.9g", NULL },
    { KV_FILE_STEPS, "nll_full", F(nll_full), KV_UNIT_AS_IS, KV_RED_STEP, "%.9g", NULL },
    { KV_FILE_STEPS, "top1", F(top1), KV_UNIT_AS_IS, KV_RED_STEP, "%.0f", NULL },
    { KV_FILE_STEPS, "recall_closed", F(recall_closed), KV_UNIT_AS_IS, KV_RED_STEP, "%.9g",
      NULL },

    { KV_FILE_SUMMARY, "recall_mean", F(recall), KV_UNIT_AS_IS, KV_RED_CI_MEAN, "%.9g", "%.9g" },
    { KV_FILE_SUMMARY, "recall_ci_lo", F(recall), KV_UNIT_AS_IS, KV_RED_CI_LO, "%.9g", "%.9g" },
    { KV_FILE_SUMMARY, "recall_ci_hi", F(recall), KV_UNIT_AS_IS, KV_RED_CI_HI, "%.9g", "%.9g" },
    { KV_FILE_SUMMARY, "recall_p05", F(recall), KV_UNIT_AS_IS, KV_RED_P05, "%.9g", "%.9g" },
    { KV_FILE_SUMMARY, "recall_min", F(recall), KV_UNIT_AS_IS, KV_RED_MIN, "%.9g", "%.9g" },
    { KV_FILE_SUMMARY, "kv_tokens_peak", F(kv_tokens), KV_UNIT_AS_IS, KV_RED_PEAK, "%.0f",
      "%.9g" },
    { KV_FILE_SUMMARY, "kv_bytes_peak", F(kv_tokens), KV_UNIT_KV_BYTES, KV_RED_PEAK, "%.0f",
      "%.1f" },
    { KV_FILE_SUMMARY, "kv_bytes_mean", F(kv_tokens), KV_UNIT_KV_BYTES, KV_RED_AVERAGE,
      "%.1f", "%.1f" },
    { KV_FILE_SUMMARY, "meta_bytes_peak", F(meta_bytes), KV_UNIT_AS_IS, KV_RED_PEAK, "%.0f",
      "%.1f" },
    { KV_FILE_SUMMARY, "topk1_recall", F(topk1), KV_UNIT_AS_IS, KV_RED_MEAN, "%.9g", "%.9g" },
    { KV_FILE_SUMMARY, "topk8_recall", F(topk8), KV_UNIT_AS_IS, KV_RED_MEAN, "%.9g", "%.9g" },
    { KV_FILE_SUMMARY, "ci_units", F(recall), KV_UNIT_AS_IS, KV_RED_CI_UNITS, "%.0f", "%.0f" },
    { KV_FILE_SUMMARY, "out_err_mean", F(out_err), KV_UNIT_AS_IS, KV_RED_CI_MEAN, "%.9g",
      "%.9g" },
    { KV_FILE_SUMMARY, "out_err_ci_lo", F(out_err), KV_UNIT_AS_IS, KV_RED_CI_LO, "%.9g",
      "%.9g" },
    { KV_FILE_SUMMARY, "out_err_ci_hi", F(out_err), KV_UNIT_AS_IS, KV_RED_CI_HI, "%.9g",
      "%.9g" },
    { KV_FILE_SUMMARY, "kl_mean", F(kl), KV_UNIT_AS_IS, KV_RED_CI_MEAN, "%.9g", "%.9g" },
    { KV_FILE_SUMMARY, "kl_ci_lo", F(kl), KV_UNIT_AS_IS, KV_RED_BLOCK_CI_LO, "%.9g", "%.9g" },
    { KV_FILE_SUMMARY, "kl_ci_hi", F(kl), KV_UNIT_AS_IS, KV_RED_BLOCK_CI_HI, "%.9g", "%.9g" },
    { KV_FILE_SUMMARY, "kl_block", F(kl), KV_UNIT_AS_IS, KV_RED_BLOCK_LEN, "%.0f", "%.0f" },
    { KV_FILE_SUMMARY, "ppl", F(nll), KV_UNIT_AS_IS, KV_RED_EXP_MEAN, "%.9g", "%.9g" },
    { KV_FILE_SUMMARY, "ppl_full", F(nll_full), KV_UNIT_AS_IS, KV_RED_EXP_MEAN, "%.9g",
      "%.9g" },
    { KV_FILE_SUMMARY, "top1_agree", F(top1), KV_UNIT_AS_IS, KV_RED_MEAN, "%.9g", "%.9g" },
    { KV_FILE_SUMMARY, "recall_closed", F(recall_closed), KV_UNIT_AS_IS, KV_RED_MEAN, "%.9g",
      "%.9g" },
};
const int kv_n_output_columns = sizeof kv_output_columns / sizeof kv_output_columns[0];

#undef F

double kv_metric_get(const kv_step_metrics *m, size_t offset)
{
    double v;
    memcpy(&v, (const char *)m + offset, sizeof v);
    return v;
}

static void metric_set(kv_step_metrics *m, size_t offset, double v)
{
    memcpy((char *)m + offset, &v, sizeof v);
}

void kv_metrics_add(kv_step_metrics *into, const kv_step_metrics *m)
{
    for (int i = 0; i < kv_n_step_fields; i++) {
        size_t o = kv_step_fields[i].offset;
        if (kv_step_fields[i].fold != KV_FOLD_RUN)
            metric_set(into, o, kv_metric_get(into, o) + kv_metric_get(m, o));
    }
}

void kv_metrics_finish(kv_step_metrics *m, double units)
{
    for (int i = 0; i < kv_n_step_fields; i++)
        if (kv_step_fields[i].fold == KV_FOLD_HEAD_MEAN) {
            size_t o = kv_step_fields[i].offset;
            metric_set(m, o, kv_metric_get(m, o) / units);
        }
}

int kv_summary_column(const char *name)
{
    for (int i = 0; i < kv_n_output_columns; i++)
        if (kv_output_columns[i].file == KV_FILE_SUMMARY &&
            strcmp(kv_output_columns[i].name, name) == 0)
            return i;
    return -1;
}

int kv_summary_column_of(size_t offset, kv_reduction red)
{
    for (int i = 0; i < kv_n_output_columns; i++)
        if (kv_output_columns[i].file == KV_FILE_SUMMARY &&
            kv_output_columns[i].offset == offset && kv_output_columns[i].reduction == red)
            return i;
    return -1;
}
