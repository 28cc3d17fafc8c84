/*
 * kv_hand_replay.h - the hand driver of the policy tests that check kept sets worked out
 * by hand (tests/test_rules_<policy>.c, one file per registered policy). It plays the
 * engine's part of the contract in policy.h for one cache, optional slots included:
 * prescan of every full row before position 0 (when the policy has one); at each decode
 * step preselect with the full row (when the policy has one: its keep[] becomes S), then
 * the query attends to A_t = S u {t}; the observed row is p during prefill and
 * o_t = p_t / recall over A_t at decode (README rule 2); select runs at t = P-1 and every
 * decode step, and S becomes the kept part of A_t. It is written here, apart from
 * sim/cache.c, so the tests reach their sets by an independent route. Include after
 * <cmocka.h>.
 */
#ifndef KV_HAND_REPLAY_H
#define KV_HAND_REPLAY_H

#include <stdio.h>
#include <string.h>

#include "policies/policy.h"
#include "tests/kv_test.h"

#define KV_HAND_MAX_T 128     /* longest trace */
#define KV_HAND_MAX_G 4       /* largest group */
#define KV_HAND_SET_LEN 512   /* one set written out, "0,2,3" */

/* Full-cache attention p_t^h[j] of a tiny trace. */
typedef double (*kv_hand_attn_fn)(const void *data, int h, int t, int j);

/* A table trace: v[(h * T + t) * T + j] sixteenths, j <= t; NULL v: uniform rows. */
typedef struct {
    int T;
    const int *v;
} kv_hand_table16;

/* The kv_hand_attn_fn of a table trace (data: a kv_hand_table16). */
__attribute__((unused)) static double kv_hand_table_attn(const void *data, int h, int t, int j)
{
    const kv_hand_table16 *tb = data;
    if (tb->v == NULL)
        return 1.0 / (t + 1);
    return tb->v[((size_t)h * tb->T + t) * tb->T + j] / 16.0;
}

/* What one replay produced. */
typedef struct {
    /* S after the select at t ("" if none ran) */
    char kept[KV_HAND_MAX_T][KV_HAND_SET_LEN];
    /* A_t the query attended to at decode steps */
    char attended[KV_HAND_MAX_T][KV_HAND_SET_LEN];
    double recall[KV_HAND_MAX_T];  /* sum over the group's heads of recall at decode t */
    size_t meta[KV_HAND_MAX_T];    /* meta_bytes(|A_t|) at decode steps */
} kv_hand_replay;

/* Writes the positions of pos[] with keep[i] set (every one when keep is NULL),
 * comma-separated. */
__attribute__((unused)) static void kv_hand_format_set(const int *pos, const unsigned char *keep,
                                                       int n, char *out)
{
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < n; i++)
        if (keep == NULL || keep[i])
            used += (size_t)snprintf(out + used, KV_HAND_SET_LEN - used, "%s%d",
                                     used ? "," : "", pos[i]);
}

/* The full rows p_t over 0..t of the group, as prescan and preselect receive them. */
__attribute__((unused)) static kv_row kv_hand_full_row(kv_hand_attn_fn attn, const void *data,
                                                       int g, int t, int *identity, double *w)
{
    for (int j = 0; j <= t; j++)
        identity[j] = j;
    for (int h = 0; h < g; h++)
        for (int j = 0; j <= t; j++)
            w[h * (t + 1) + j] = attn(data, h, t, j);
    kv_row row = { .t = t, .n = t + 1, .pos = identity, .n_heads = g, .w = w };
    return row;
}

/* Replays one cache of policy `name` ("k=v,..." settings, NULL for the defaults) on a
 * T-token trace with a P-token prompt, under budget B, for a group of g query heads, with
 * seed; attn(data, h, t, j) gives the full-cache attention. */
__attribute__((unused)) static void kv_hand_run(const char *name, const char *settings, int T,
                                                int P, int B, int g, unsigned long seed,
                                                kv_hand_attn_fn attn, const void *data,
                                                kv_hand_replay *out)
{
    const kv_policy_ops *ops = kv_policy_find(name);
    assert_non_null(ops);
    assert_true(T <= KV_HAND_MAX_T && g <= KV_HAND_MAX_G);
    kv_param_values values;
    kv_test_apply_settings(ops, settings, &values);
    char err[KV_ERRMSG] = "";
    if (ops->check != NULL && ops->check(&values, B, err, sizeof err) != 0)
        fail_msg("check rejected: %s", err);
    kv_policy_ctx ctx = { .budget = B, .group_size = g, .n_tokens = T, .prefill_len = P,
                          .layer = 0, .kv_head = 0, .seed = seed };
    void *st = ops->create(&values, &ctx);
    assert_non_null(st);
    memset(out, 0, sizeof *out);
    unsigned char cached[KV_HAND_MAX_T] = { 0 }, keep[KV_HAND_MAX_T];
    int pos[KV_HAND_MAX_T], identity[KV_HAND_MAX_T];
    double w[KV_HAND_MAX_G * KV_HAND_MAX_T];
    for (int t = 0; ops->prescan != NULL && t < T; t++) {
        kv_row full = kv_hand_full_row(attn, data, g, t, identity, w);
        full.is_prefill = t < P;
        ops->prescan(st, &full);
    }
    for (int t = 0; t < T; t++) {
        if (t >= P && ops->preselect != NULL) {
            kv_row full = kv_hand_full_row(attn, data, g, t, identity, w);
            memset(keep, 0, sizeof keep);
            ops->preselect(st, &full, keep);
            for (int j = 0; j < t; j++)
                cached[j] = keep[j];
        }
        int n = 0;
        cached[t] = 1; /* t enters; nothing is evicted before t = P-1 */
        for (int j = 0; j <= t; j++)
            if (cached[j])
                pos[n++] = j;
        for (int h = 0; h < g; h++) {
            double recall = 0.0;
            for (int i = 0; i < n; i++)
                recall += attn(data, h, t, pos[i]);
            for (int i = 0; i < n; i++) {
                double p = attn(data, h, t, pos[i]);
                w[h * n + i] = t < P ? p : (recall > 0.0 ? p / recall : 0.0);
            }
            if (t >= P)
                out->recall[t] += recall;
        }
        if (t >= P)
            kv_hand_format_set(pos, NULL, n, out->attended[t]);
        kv_row row = { .t = t, .n = n, .pos = pos, .n_heads = g, .w = w,
                       .is_prefill = t < P };
        ops->observe(st, &row);
        if (t < P - 1)
            continue;
        if (t >= P)
            out->meta[t] = ops->meta_bytes ? ops->meta_bytes(st, n) : 0;
        kv_cache_view view = { .t = t, .n = n, .pos = pos, .budget = B,
                               .is_prefill_end = t == P - 1 };
        memset(keep, 7, sizeof keep);
        ops->select(st, &view, keep);
        for (int i = 0; i < n; i++) {
            assert_true(keep[i] == 0 || keep[i] == 1);
            cached[pos[i]] = keep[i];
        }
        kv_hand_format_set(pos, keep, n, out->kept[t]);
    }
    ops->destroy(st);
}

/* Self-attention only: p_t[j] = 1 if j == t. Any rows will do for position rules. */
__attribute__((unused)) static double kv_hand_self_attn(const void *data, int h, int t, int j)
{
    (void)data;
    (void)h;
    return j == t ? 1.0 : 0.0;
}

/* p_t[j] = 1/(t+1): uniform rows, so an accumulated score sum_{t>=j} 1/(t+1) falls
 * with j. */
__attribute__((unused)) static double kv_hand_uniform_attn(const void *data, int h, int t,
                                                           int j)
{
    (void)data;
    (void)h;
    (void)j;
    return 1.0 / (t + 1);
}

/* kv_hand_run with seed 1. */
__attribute__((unused)) static void kv_hand_run_policy(const char *name, const char *settings,
                                                       int T, int P, int B, int g,
                                                       kv_hand_attn_fn attn, const void *data,
                                                       kv_hand_replay *out)
{
    kv_hand_run(name, settings, T, P, B, g, 1, attn, data, out);
}

/* Replays one cache of table trace tb (tb->T tokens, prompt P) under budget B with seed. */
__attribute__((unused)) static void kv_hand_run_table_seeded(const char *name,
                                                             const char *settings, int P,
                                                             int B, int g,
                                                             const kv_hand_table16 *tb,
                                                             unsigned long seed,
                                                             kv_hand_replay *out)
{
    kv_hand_run(name, settings, tb->T, P, B, g, seed, kv_hand_table_attn, tb, out);
}

/* kv_hand_run_table_seeded with seed 1. */
__attribute__((unused)) static void kv_hand_run_table(const char *name, const char *settings,
                                                      int P, int B, int g,
                                                      const kv_hand_table16 *tb,
                                                      kv_hand_replay *out)
{
    kv_hand_run_table_seeded(name, settings, P, B, g, tb, 1, out);
}

/* Asserts the kept sets of replay r at consecutive steps from t on: the first set at t,
 * the next at t + 1, and so on, e.g. kv_hand_assert_kept(&r, 4, "2,3,4", "3,4,5"). A
 * mismatch names the step and fails at the caller's line. */
#define kv_hand_assert_kept(r, t, ...)                                                     \
    kv_hand_assert_kept_from((r), (t), (const char *const[]){ __VA_ARGS__, NULL }, __FILE__, \
                             __LINE__)

/* kv_hand_assert_kept's work: sets is NULL-terminated; file and line are the caller's. */
__attribute__((unused)) static void kv_hand_assert_kept_from(const kv_hand_replay *r, int t,
                                                             const char *const *sets,
                                                             const char *file, int line)
{
    for (int i = 0; sets[i] != NULL; i++) {
        assert_true(t + i < KV_HAND_MAX_T);
        if (strcmp(r->kept[t + i], sets[i]) != 0)
            print_error("kept set at t=%d:\n", t + i);
        _assert_string_equal(r->kept[t + i], sets[i], file, line);
    }
}

/* One select of policy `type` ("k=v,..." settings, NULL for the defaults) for a policy
 * that reads keys and values: the view is positions pos[0..n) (ascending, pos[n-1] = t),
 * the prompt compression when is_prefill_end, else a decode step; keys and values hold
 * head_dim floats per position, position j at j * head_dim. The kept positions go to out
 * ("1,3"). The policy is created with T = t + 2 and P = t + 1 (prompt end) or P = 1. */
__attribute__((unused)) static void kv_hand_key_select(const char *type, const char *settings,
                                                       const int *pos, int n,
                                                       int is_prefill_end, int B,
                                                       int head_dim, const float *keys,
                                                       const float *values, char *out)
{
    const kv_policy_ops *ops = kv_policy_find(type);
    assert_non_null(ops);
    kv_param_values v;
    kv_test_apply_settings(ops, settings, &v);
    int t = pos[n - 1];
    kv_policy_ctx ctx = { .budget = B, .group_size = 1, .n_tokens = t + 2,
                          .prefill_len = is_prefill_end ? t + 1 : 1, .head_dim = head_dim };
    void *st = ops->create(&v, &ctx);
    assert_non_null(st);
    unsigned char keep[KV_HAND_MAX_T];
    kv_cache_view view = { .t = t, .n = n, .pos = pos, .budget = B,
                           .is_prefill_end = is_prefill_end, .keys = keys, .values = values,
                           .head_dim = head_dim };
    ops->select(st, &view, keep);
    kv_hand_format_set(pos, keep, n, out);
    ops->destroy(st);
}

#endif
