/*
 * bench.c - `make bench`: the replay's performance against its floors, on one thread, in
 * CPU time.
 *
 *   build/bench/bench [--repeat N] [DIR [JOB...]]
 *
 * Generates the workload traces into DIR (default build/bench; seeded, kept between runs,
 * generated - and indexed, where a job replays sparsely - only when missing), runs every
 * default job (or the named ones) in a fresh child process (its own CPU time and peak
 * resident memory; no OpenMP or BLAS thread pool crosses a fork), N times each (round
 * robin; default 1, `make bench` uses 3), and prints one table of the median runs (by CPU
 * time) with the range, the CPU's name, and each ratio paired by round (a job's CPU time
 * against its floor's in the same round, then the median over the rounds). The machine
 * may be shared: CPU time (CLOCK_PROCESS_CPUTIME_ID, or Python's process_time) is what
 * a job costs, wall time is shown beside it.
 *
 *   1  qk, 4 layers x 32/8 heads x 4096 tokens x head_dim 128, P = 1024:
 *        1-five  window, streamingllm, h2o, snapkv, morphkv at B = 512   floor: 1-full
 *        1-full  `full` alone: the recompute floor                       floor: FLOPs at the SGEMM rate
 *        1-rows  the rows alone (SGEMM + softmax, no cache)             floor: FLOPs at the SGEMM rate
 *        1-four  the five without morphkv (diagnostic: where the cost is)  floor: 1-full
 *        1-morph morphkv alone (diagnostic)                              floor: 1-full
 *   2  attn (float16), 2 layers x 8/2 heads x 4096 tokens, P = 1024:
 *        2-five  the five policies at B = 512                           floor: 2-read
 *        2-read  a pass that only reads the rows: the I/O floor
 *   3  qk, 1 layer x 8/2 heads x 32768 tokens x head_dim 64, P = 4096:
 *        3-long  morphkv and h2o at B = 2048                            floor: FLOPs at the SGEMM rate
 *        3-rows  the rows alone: the recompute at T = 32768 against 1-rows' rate (T^2 growth)
 *   4  4-sgemm   cblas_sgemm, 4096^3, all cores: the arithmetic ceiling
 *   5  capture (`kvsim capture`'s library, one thread) from the checkpoints `make models`
 *      installs ($KVSIM_MODELS, default models/), temperature 1.0, top-p 0.9, seed 1:
 *        5-cap15M   stories15M, T = 256, prompt 64 positions (BOS + 63 ids), target < 1.5 s
 *        5-blas15M  the same 256 positions' matrix-vector products through OpenBLAS's
 *                   cblas_sgemv, one at a time, one thread: the floor of 5-cap15M, what a
 *                   forward pass at the BLAS's matrix-vector rate would at least take
 *        5-cap260K  stories260K, T = 512, prompt 128 positions (BOS + 127 ids)
 *      the rows/s column holds positions (tokens) per second for these.
 *   5  (replay) qk, 2 layers x 32/8 heads x 4096 tokens x head_dim 128, P = 1024 (Llama geometry):
 *        5-sgemm   the replay's SGEMMs alone (q and k read untimed)        the floor
 *        5-full    `full` alone (top-k metrics on, the default)            <= 1.5 x 5-sgemm
 *        5-full-nt `full` without the top-k metrics (diagnostic)
 *        5-five    window, streamingllm, h2o, snapkv, morphkv at B = 512   <= 1.3 x 5-full
 *        5-fwh     full, window, h2o at B = 512, no top-k (dense)         <= 0.25 x 5-numpy
 *        5-numpy   the same three in NumPy (tests/bench_numpy_replay.py), its recall
 *                  checked against 5-fwh's to 1e-6 before its time counts
 *        5-five-2t 5-five on two threads: every output byte-identical to 5-five's
 *   6  qk, 1 layer x 32/8 heads x 32768 tokens x head_dim 128, P = 4096, indexed:
 *        6-sparse  window, streamingllm, h2o, morphkv at B = 1024, sparse  <= 0.1 x 6-dense
 *        6-dense   the same run, --dense
 *
 * The workloads of the previous round (1-*, 2-*, 3-*, 4-sgemm: two threads, wall time)
 * still run when named. Results also go to DIR/results.tsv. Exit status 0, or 1 when a
 * job fails, the NumPy check fails, or the outputs of 1 and 2 threads differ.
 */
#define _DEFAULT_SOURCE   /* wait4: the peak memory of each child */
#include <errno.h>
#include <gsl/gsl_cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sim/closedloop.h"
#include "sim/engine.h"
#include "sim/index.h"
#include "sim/output.h"
#include "sim/rows.h"
#include "traces/capture.h"
#include "traces/gen.h"
#include "traces/trace.h"

/* ------------------------------------------------------------ the workloads */

typedef struct {
    const char *file;
    int n_layers, n_heads, n_kv_heads, head_dim, n_tokens, prefill_len;
    int attn;            /* 1: source attn (rows stored, float16), 0: qk (float32) */
    unsigned long seed;  /* 0: a committed real trace in traces/data/, not generated */
    int index;           /* 1: `kvsim index` it after generating (sparse jobs) */
    int values;          /* 1: a v added to the generated q and k (add_values) */
} bench_trace;

static const bench_trace traces[] = {
    { "w1_qk_L4_H32-8_T4096_D128.h5", 4, 32, 8, 128, 4096, 1024, 0, 1, 0, 0 },
    { "w2_attn_L2_H8-2_T4096_f16.h5", 2, 8, 2, 64, 4096, 1024, 1, 2, 0, 0 },
    { "w3_qk_L1_H8-2_T32768_D64.h5", 1, 8, 2, 64, 32768, 4096, 0, 3, 0, 0 },
    /* the closed loop's workload: the first stories260K trace (q, k, v, tokens) */
    { "stories260K_T512_P128_seed1.h5", 5, 8, 4, 8, 512, 128, 0, 0, 0, 0 },
    { "w5_qk_L2_H32-8_T4096_D128.h5", 2, 32, 8, 128, 4096, 1024, 0, 5, 0, 0 },
    { "w6_qk_L1_H32-8_T32768_D128_indexed.h5", 1, 32, 8, 128, 32768, 4096, 0, 6, 1, 0 },
    /* the output error at scale: generated q and k with a v, indexed (lse, o_full) */
    { "w7_qkv_L1_H32-8_T8192_D128_indexed.h5", 1, 32, 8, 128, 8192, 1024, 0, 7, 1, 1 },
};
#define N_TRACES ((int)(sizeof traces / sizeof traces[0]))
/* The checkpoint of the closed loop's workload: $KVSIM_MODEL, else this file in
 * models_dir(). */
#define BENCH_MODEL "stories260K.bin"

enum job_kind {
    JOB_REPLAY,
    JOB_ROWS,
    JOB_SGEMM,
    JOB_SGEMM_FLOOR,
    JOB_NUMPY,
    JOB_CAPTURE,
    JOB_SGEMV,
    JOB_REPLAY_NO_OUT_ERR,  /* the replay without out_err (kv_replay_conf.no_out_err) */
    JOB_CLOSED              /* the replay, then the closed loop with BENCH_MODEL */
};
/* replay flags; SPARSE: a committed trace (indexed already) the job replays sparsely;
 * CPU: judged by CPU time though it does not run by default */
enum { DENSE = 1, NO_TOPK = 2, SPARSE = 4, CPU = 8 };

typedef struct {
    const char *name;
    enum job_kind kind;
    int trace;             /* index into traces (replay, rows) */
    const char *policies;  /* comma-separated (replay) */
    int budget;            /* tokens (replay) */
    int threads;           /* OpenMP threads; 0: all cores */
    const char *floor;     /* name of the job whose time is the floor; NULL: FLOPs at the
                              SGEMM rate (qk) or none */
    const char *target;    /* the target for the ratio, for the table */
    int flags;             /* replay: DENSE, NO_TOPK, SPARSE; any job: CPU */
    int by_default;        /* 1: runs when no job is named (this round's workloads) */
    const char *check;     /* numpy: the replay job whose steps.tsv it must agree with */
    const char *model;     /* capture, sgemv: checkpoint file name in the models directory */
    int positions;         /* capture, sgemv: T */
    int prompt;            /* capture: positions given (BOS + prompt ids) */
} bench_job;

#define FIVE "window,streamingllm,h2o,snapkv,morphkv"
#define DEFAULT_SET "full,window,streamingllm,h2o,snapkv,morphkv,tova,oracle,lookahead"

#define SPARSE4 "window,streamingllm,h2o,morphkv"

static const bench_job jobs[] = {
    /* this round: one thread, CPU time */
    { "5-sgemm", JOB_SGEMM_FLOOR, 4, NULL, 0, 1, NULL, "floor", 0, 1, NULL, NULL, 0, 0 },
    { "5-full", JOB_REPLAY, 4, "full", 512, 1, "5-sgemm", "<= 1.5", 0, 1, NULL, NULL, 0, 0 },
    { "5-full-nt", JOB_REPLAY, 4, "full", 512, 1, "5-sgemm", "", NO_TOPK, 1, NULL, NULL, 0, 0 },
    { "5-five", JOB_REPLAY, 4, FIVE, 512, 1, "5-full", "<= 1.3", 0, 1, NULL, NULL, 0, 0 },
    { "5-fwh", JOB_REPLAY, 4, "full,window,h2o", 512, 1, "5-numpy", "<= 0.25",
      DENSE | NO_TOPK, 1, NULL, NULL, 0, 0 },
    { "5-numpy", JOB_NUMPY, 4, "full,window,h2o", 512, 1, NULL, "peer", 0, 1, "5-fwh", NULL, 0, 0 },
    { "5-five-2t", JOB_REPLAY, 4, FIVE, 512, 2, "5-five", "", 0, 1, NULL, NULL, 0, 0 },
    { "6-sparse", JOB_REPLAY, 5, SPARSE4, 1024, 1, "6-dense", "<= 0.1", NO_TOPK, 1, NULL, NULL, 0, 0 },
    { "6-dense", JOB_REPLAY, 5, SPARSE4, 1024, 1, NULL, "", DENSE | NO_TOPK, 1, NULL, NULL, 0, 0 },
    /* the previous round's workloads (two threads, wall time), when named */
    { "4-sgemm", JOB_SGEMM, -1, NULL, 0, 0, NULL, "ceiling", 0, 0, NULL, NULL, 0, 0 },
    { "1-five", JOB_REPLAY, 0, FIVE, 512, 0, "1-full", "<= 1.5", 0, 0, NULL, NULL, 0, 0 },
    { "1-full", JOB_REPLAY, 0, "full", 512, 0, NULL, "<= 2.0", 0, 0, NULL, NULL, 0, 0 },
    { "1-rows", JOB_ROWS, 0, NULL, 0, 0, NULL, "", 0, 0, NULL, NULL, 0, 0 },
    { "1-four", JOB_REPLAY, 0, "window,streamingllm,h2o,snapkv", 512, 0, "1-full", "", 0, 0,
      NULL, NULL, 0, 0 },
    { "1-morph", JOB_REPLAY, 0, "morphkv", 512, 0, "1-full", "", 0, 0, NULL, NULL, 0, 0 },
    { "2-five", JOB_REPLAY, 1, FIVE, 512, 0, "2-read", "<= 1.5", 0, 0, NULL, NULL, 0, 0 },
    { "2-read", JOB_ROWS, 1, NULL, 0, 0, NULL, "floor", 0, 0, NULL, NULL, 0, 0 },
    { "3-long", JOB_REPLAY, 2, "morphkv,h2o", 2048, 0, NULL, "", 0, 0, NULL, NULL, 0, 0 },
    { "3-rows", JOB_ROWS, 2, NULL, 0, 0, NULL, "~1-rows", 0, 0, NULL, NULL, 0, 0 },
    { "1-full-1t", JOB_REPLAY, 0, "full", 512, 1, NULL, "", 0, 0, NULL, NULL, 0, 0 },
    { "1-five-1t", JOB_REPLAY, 0, FIVE, 512, 1, "1-full-1t", "", 0, 0, NULL, NULL, 0, 0 },
    /* capture and the closed loop, when named */
    { .name = "5-cap15M", .kind = JOB_CAPTURE, .trace = -1, .threads = 1,
      .floor = "5-blas15M", .target = "< 1.5 s", .model = "stories15M.bin", .positions = 256,
      .prompt = 64 },
    { .name = "5-blas15M", .kind = JOB_SGEMV, .trace = -1, .threads = 1, .target = "floor",
      .model = "stories15M.bin", .positions = 256 },
    { .name = "5-cap260K", .kind = JOB_CAPTURE, .trace = -1, .threads = 1, .target = "",
      .model = "stories260K.bin", .positions = 512, .prompt = 128 },
    { "5-open", JOB_REPLAY, 3, DEFAULT_SET, 64, 1, "5-no-err", "", 0, 0, NULL, NULL, 0, 0 },
    { "5-no-err", JOB_REPLAY_NO_OUT_ERR, 3, DEFAULT_SET, 64, 1, NULL, "", 0, 0, NULL, NULL, 0, 0 },
    { "5-closed", JOB_CLOSED, 3, DEFAULT_SET, 64, 1, "5-open", "<= 4.0", 0, 0, NULL, NULL, 0, 0 },
    /* the output error on the sparse path (the stored o_full) against the dense path,
     * which every run measuring it took before */
    { "5-sp-err", JOB_REPLAY, 3, SPARSE4, 64, 1, "5-dn-err", "", NO_TOPK | SPARSE | CPU, 0,
      NULL, NULL, 0, 0 },
    { "5-dn-err", JOB_REPLAY, 3, SPARSE4, 64, 1, NULL, "", DENSE | NO_TOPK | CPU, 0, NULL, NULL,
      0, 0 },
    { "5-sp-no-err", JOB_REPLAY_NO_OUT_ERR, 3, SPARSE4, 64, 1, "5-sp-err", "",
      NO_TOPK | SPARSE | CPU, 0, NULL, NULL, 0, 0 },
    { "7-sp-err", JOB_REPLAY, 6, SPARSE4, 512, 1, "7-dn-err", "", NO_TOPK | CPU, 0, NULL, NULL,
      0, 0 },
    { "7-dn-err", JOB_REPLAY, 6, SPARSE4, 512, 1, NULL, "", DENSE | NO_TOPK | CPU, 0, NULL,
      NULL, 0, 0 },
    { "7-sp-no-err", JOB_REPLAY_NO_OUT_ERR, 6, SPARSE4, 512, 1, "7-sp-err", "", NO_TOPK | CPU,
      0, NULL, NULL, 0, 0 },
};
#define N_JOBS ((int)(sizeof jobs / sizeof jobs[0]))

/* The OpenMP comparisons: (more threads, 1 thread): outputs must be byte-identical. */
static const char *const omp_pairs[][2] = {
    { "5-five-2t", "5-five" }, { "1-full", "1-full-1t" }, { "1-five", "1-five-1t" },
};

#define SGEMM_N 4096

/* ------------------------------------------------------------ helpers */

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int find_job(const char *name)
{
    for (int i = 0; i < N_JOBS; i++)
        if (strcmp(jobs[i].name, name) == 0)
            return i;
    return -1;
}

static void trace_path(const char *dir, int t, char *buf, size_t len)
{
    if (traces[t].seed == 0)
        snprintf(buf, len, "traces/data/%s", traces[t].file);
    else
        snprintf(buf, len, "%s/%s", dir, traces[t].file);
}

/* Multiply-adds of recomputing every row of a qk trace: sum over layers, heads and t of
 * (t + 1) * head_dim; FLOPs are twice that. 0 for attn traces. */
static double recompute_flops(const bench_trace *bt)
{
    if (bt->attn)
        return 0;
    double T = bt->n_tokens;
    return 2.0 * bt->n_layers * bt->n_heads * (T * (T + 1) / 2) * bt->head_dim;
}

/* ------------------------------------------------------------ child: generate */

/* Copies the qk trace at from to `to` with a v added: values uniform in [-0.5, 0.5) from
 * a fixed hash of their index (the generator has no values of its own). */
static int add_values(const char *from, const char *to, char *err, size_t err_len)
{
    kv_trace *tr = NULL;
    kv_trace_writer *w = NULL;
    if (kv_trace_open(from, &tr, err, err_len))
        return 1;
    kv_trace_info in = *kv_trace_get_info(tr);
    size_t T = (size_t)in.n_tokens, hd = (size_t)in.head_dim, n_v = in.n_kv_heads * T * hd;
    float *q = malloc(in.n_heads * T * hd * sizeof *q);
    float *k = malloc(n_v * sizeof *k), *v = malloc(n_v * sizeof *v);
    int rc = !q || !k || !v;
    if (rc)
        snprintf(err, err_len, "out of memory adding values");
    else
        rc = kv_trace_create(to, &in, 0, &w, err, err_len);
    for (int l = 0; !rc && l < in.n_layers; l++) {
        for (size_t i = 0; i < n_v; i++) {
            unsigned long long x = (i + 1 + (size_t)l * n_v) * 0x9E3779B97F4A7C15ull;
            x ^= x >> 29;
            v[i] = (float)((x >> 40) & 0xFFFFFF) / 16777216.0f - 0.5f;
        }
        rc = kv_trace_read_qk(tr, l, q, k, err, err_len) ||
             kv_trace_write_qk(w, l, q, k, v, err, err_len);
    }
    if (w && kv_trace_finish(w, err, err_len))
        rc = 1;
    kv_trace_close(tr);
    free(q);
    free(k);
    free(v);
    return rc;
}

static int child_gen(const char *dir, int t)
{
    const bench_trace *bt = &traces[t];
    kv_gen_params gp;
    kv_gen_defaults(&gp);
    gp.seed = bt->seed;
    gp.n_layers = bt->n_layers;
    gp.n_heads = bt->n_heads;
    gp.n_kv_heads = bt->n_kv_heads;
    gp.head_dim = bt->head_dim;
    gp.n_tokens = bt->n_tokens;
    gp.prefill_len = bt->prefill_len;
    gp.progress = 1;
    char path[512], tmp[600], err[512];
    trace_path(dir, t, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.partial", path);   /* renamed when complete */
    double w0 = wall_now();
    char qk_only[640];
    snprintf(qk_only, sizeof qk_only, "%s.qk", tmp);
    if (kv_gen_write(bt->values ? qk_only : tmp, &gp, bt->attn, bt->attn, err, sizeof err) ||
        (bt->values && (add_values(qk_only, tmp, err, sizeof err) || remove(qk_only))) ||
        (bt->index && kv_index_trace(tmp, 1, err, sizeof err) != 0)) {
        fprintf(stderr, "bench: %s\n", err);
        return 1;
    }
    if (rename(tmp, path) != 0) {
        fprintf(stderr, "bench: rename %s: %s\n", tmp, strerror(errno));
        return 1;
    }
    printf("RESULT %.6f 0\n", wall_now() - w0);
    return 0;
}

/* ------------------------------------------------------------ child: jobs */

static int parse_policies(const char *list, kv_policy_conf *pc, int max)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok && n < max;
         tok = strtok_r(NULL, ",", &save), n++) {
        memset(&pc[n], 0, sizeof pc[n]);
        snprintf(pc[n].label, sizeof pc[n].label, "%s", tok);
        pc[n].ops = kv_policy_find(tok);
        if (!pc[n].ops) {
            fprintf(stderr, "bench: unknown policy %s\n", tok);
            return -1;
        }
        kv_params_defaults(pc[n].ops, &pc[n].values);
    }
    return n;
}

static const char *models_dir(void)
{
    const char *d = getenv("KVSIM_MODELS");
    return d && *d ? d : "models";
}

/* The closed loop of res's runs with models_dir()/BENCH_MODEL (or $KVSIM_MODEL). */
static int closed_loop(kv_trace *tr, const kv_policy_conf *pc, kv_results *res, char *err,
                       size_t err_len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", models_dir(), BENCH_MODEL);
    if (getenv("KVSIM_MODEL"))
        snprintf(path, sizeof path, "%s", getenv("KVSIM_MODEL"));
    kv_model *m = NULL;
    if (kv_model_load(path, &m, err, err_len))
        return 1;
    kv_closed_loop_opts co = { .seed = 1 };
    int rc = kv_closed_loop_check(tr, m, path, err, err_len) ||
             kv_closed_loop(tr, m, pc, res, &co, err, err_len);
    kv_model_free(m);
    return rc;
}

/* The replay (and the closed loop), timed; its result files go to DIR/out/NAME for the
 * thread comparison. */
static int child_replay(const char *dir, const bench_job *j, kv_trace *tr)
{
    kv_policy_conf pc[16];
    int n = parse_policies(j->policies, pc, 16);
    if (n < 0)
        return 1;
    kv_replay_conf conf = { .policies = pc, .n_policies = n, .budgets = &j->budget,
                            .n_budgets = 1, .seed = 1,
                            .no_out_err = j->kind == JOB_REPLAY_NO_OUT_ERR,
                            .dense = (j->flags & DENSE) != 0,
                            .no_topk = (j->flags & NO_TOPK) != 0 };
    char err[512];
    kv_results *res = NULL;
    double w0 = wall_now(), c0 = cpu_now();
    if (kv_replay(tr, &conf, &res, err, sizeof err) != 0 ||
        (j->kind == JOB_CLOSED && closed_loop(tr, pc, res, err, sizeof err) != 0)) {
        fprintf(stderr, "bench: %s: %s\n", j->name, err);
        kv_results_free(res);
        return 1;
    }
    double wall = wall_now() - w0, cpu = cpu_now() - c0;
    char why[256];
    int sparse = !kv_replay_dense_reason(&conf, kv_trace_get_info(tr), why, sizeof why);
    int want_sparse = (traces[j->trace].index || (j->flags & SPARSE)) && !(j->flags & DENSE);
    if (sparse != res->sparse || res->sparse != want_sparse) {
        fprintf(stderr, "bench: %s: replayed %s, expected %s (%s)\n", j->name,
                res->sparse ? "sparsely" : "densely", j->flags & DENSE ? "dense" : "sparse",
                why);
        return 1;
    }
    char out[600];
    snprintf(out, sizeof out, "%s/out/%s", dir, j->name);
    const kv_results *all[1] = { res };
    const char *names[1] = { traces[j->trace].file };
    kv_experiment_results er = { .conf = &conf, .n_traces = 1, .res = all,
                                 .trace_names = names };
    int rc = kv_output_prepare(out, 1, err, sizeof err) || kv_output_write(out, &er, err,
                                                                           sizeof err);
    kv_results_free(res);
    if (rc) {
        fprintf(stderr, "bench: %s: %s\n", j->name, err);
        return 1;
    }
    printf("RESULT %.6f %.6f\n", wall, cpu);
    return 0;
}

/* Every row of every layer produced and nothing else (qk: recomputed; attn: read), with
 * one row source for all layers, each loaded before its rows (no overlap). */
static int child_rows(const bench_job *j, kv_trace *tr)
{
    const kv_trace_info *in = kv_trace_get_info(tr);
    char err[512];
    volatile float sink = 0;
    double w0 = wall_now(), c0 = cpu_now();
    kv_row_producer *r = kv_producer_new(tr, 64, err, sizeof err);
    for (int l = 0; r && l < in->n_layers; l++) {
        for (int p = 0; p < kv_producer_n_load_pieces(r); p++)
            if (kv_producer_load(r, l, p, err, sizeof err) != 0)
                goto fail;
        for (int t0 = 0; t0 < in->n_tokens; t0 += 64) {
            int nb;
            const float *b = kv_producer_block(r, t0, &nb, err, sizeof err);
            if (!b)
                goto fail;
            sink += b[0];
        }
    }
    if (!r)
        goto fail;
    kv_producer_close(r);
    printf("RESULT %.6f %.6f\n", wall_now() - w0, cpu_now() - c0);
    return 0;
fail:
    fprintf(stderr, "bench: %s: %s\n", j->name, err);
    kv_producer_close(r);
    return 1;
}

/* The floor of a qk replay: its SGEMMs alone (the logits of every block of every GQA
 * group, the shapes kv_attn_rows_from_qk uses: M = group * 64 queries, N = t1 keys, K =
 * head_dim, written at the replay's row stride), with q and k read before the clock
 * starts; the group's queries are packed per block as the replay packs them. */
static int child_sgemm_floor(const bench_job *j, kv_trace *tr)
{
    const kv_trace_info *in = kv_trace_get_info(tr);
    int T = in->n_tokens, hd = in->head_dim, G = in->n_kv_heads, grp = in->n_heads / G;
    size_t ld = (size_t)(T + 15) / 16 * 16 + 16;
    float *q = malloc((size_t)in->n_heads * T * hd * sizeof *q);
    float *k = malloc((size_t)G * T * hd * sizeof *k);
    float *qs = malloc((size_t)grp * 64 * hd * sizeof *qs);
    float *out = kv_alloc_large((size_t)grp * 64 * ld * sizeof *out);
    char err[512];
    if (!q || !k || !qs || !out) {
        fprintf(stderr, "bench: %s: out of memory\n", j->name);
        return 1;
    }
    double wall = 0, cpu = 0;
    volatile float sink = 0;
    kv_blas_single_begin();
    for (int l = 0; l < in->n_layers; l++) {
        if (kv_trace_read_qk(tr, l, q, k, err, sizeof err)) {
            fprintf(stderr, "bench: %s: %s\n", j->name, err);
            return 1;
        }
        double w0 = wall_now(), c0 = cpu_now();
        for (int t0 = 0; t0 < T; t0 += 64) {
            int t1 = t0 + 64 < T ? t0 + 64 : T, nb = t1 - t0;
            for (int g = 0; g < G; g++) {
                for (int i = 0; i < grp; i++)
                    memcpy(qs + (size_t)i * nb * hd, q + ((size_t)(g * grp + i) * T + t0) * hd,
                           (size_t)nb * hd * sizeof *qs);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, grp * nb, t1, hd,
                            (float)in->softmax_scale, qs, hd, k + (size_t)g * T * hd, hd, 0.0f,
                            out, (int)ld);
                sink += out[0];
            }
        }
        wall += wall_now() - w0;
        cpu += cpu_now() - c0;
    }
    free(q);
    free(k);
    free(qs);
    free(out);
    printf("RESULT %.6f %.6f\n", wall, cpu);
    return 0;
}

/* The NumPy peer (tests/bench_numpy_replay.py, run from the repository root by
 * /usr/bin/python3 on one BLAS thread), checked against the steps.tsv of j->check. */
static int child_numpy(const char *dir, const bench_job *j)
{
    char path[512], steps[700], budget[16];
    trace_path(dir, j->trace, path, sizeof path);
    snprintf(steps, sizeof steps, "%s/out/%s/steps.tsv", dir, j->check);
    snprintf(budget, sizeof budget, "%d", j->budget);
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    setenv("OMP_NUM_THREADS", "1", 1);
    fflush(stdout);
    execl("/usr/bin/python3", "python3", "tests/bench_numpy_replay.py", path, "--budget",
          budget, "--check", steps, (char *)NULL);
    fprintf(stderr, "bench: %s: cannot run /usr/bin/python3: %s\n", j->name, strerror(errno));
    return 1;
}

/* The BLAS's own SGEMM rate on large square matrices, with its default threads (all
 * cores): the best of three. */
static int child_sgemm(void)
{
    const int n = SGEMM_N;
    float *a = malloc((size_t)n * n * sizeof *a), *b = malloc((size_t)n * n * sizeof *b);
    float *c = malloc((size_t)n * n * sizeof *c);
    if (!a || !b || !c) {
        fprintf(stderr, "bench: out of memory for SGEMM\n");
        return 1;
    }
    for (size_t i = 0; i < (size_t)n * n; i++) {
        a[i] = (float)(i % 7) * 0.25f - 0.75f;
        b[i] = (float)(i % 5) * 0.25f - 0.5f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    double best = 1e30, best_cpu = 0;
    for (int rep = 0; rep < 3; rep++) {
        double w0 = wall_now(), c0 = cpu_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f,
                    c, n);
        double w = wall_now() - w0;
        if (w < best) {
            best = w;
            best_cpu = cpu_now() - c0;
        }
    }
    free(a);
    free(b);
    free(c);
    printf("RESULT %.6f %.6f\n", best, best_cpu);
    return 0;
}

/* Job 5: one capture through the library, as `kvsim capture` runs it. */
static int child_capture(const char *dir, const bench_job *j)
{
    char model[1024], out[1024], err[KV_CAPTURE_ERR_LEN];
    snprintf(model, sizeof model, "%s/%s", models_dir(), j->model);
    snprintf(out, sizeof out, "%s/capture_%s.h5", dir, j->name);
    int prompt[1024];
    for (int i = 0; i < j->prompt - 1; i++)
        prompt[i] = 100 + i; /* ordinary tokens of both vocabularies */
    kv_capture_opts o;
    kv_capture_defaults(&o);
    o.model_path = model;
    o.out_path = out;
    o.n_tokens = j->positions;
    o.prefill_len = j->prompt;
    o.prompt = prompt;
    o.n_prompt = j->prompt - 1;
    double w0 = wall_now(), c0 = cpu_now();
    if (kv_capture(&o, NULL, err, sizeof err)) {
        fprintf(stderr, "bench: %s\n", err);
        return 1;
    }
    printf("RESULT %.6f %.6f\n", wall_now() - w0, cpu_now() - c0);
    return 0;
}

/* Job 5's floor: for each of the positions, cblas_sgemv over every weight matrix of the
 * checkpoint's shape (per layer wq, wk, wv, wo, w1, w3, w2; then the classifier), on
 * matrices of the checkpoint's size filled with small values. */
void openblas_set_num_threads(int n); /* OpenBLAS's own; not in GSL's cblas header */

static int child_sgemv(const bench_job *j)
{
    openblas_set_num_threads(1);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", models_dir(), j->model);
    FILE *f = fopen(path, "rb");
    int hdr[7];
    if (!f || fread(hdr, sizeof(int), 7, f) != 7) {
        fprintf(stderr, "bench: cannot read the header of %s\n", path);
        if (f)
            fclose(f);
        return 1;
    }
    fclose(f);
    int dim = hdr[0], hidden = hdr[1], layers = hdr[2], heads = hdr[3], kv = hdr[4];
    int vocab = hdr[5] < 0 ? -hdr[5] : hdr[5], kvd = dim / heads * kv;
    int shape[7][2] = {{dim, dim}, {kvd, dim}, {kvd, dim}, {dim, dim},
                       {hidden, dim}, {hidden, dim}, {dim, hidden}};
    size_t per_layer = 0, biggest = (size_t)vocab * dim;
    for (int m = 0; m < 7; m++)
        per_layer += (size_t)shape[m][0] * shape[m][1];
    size_t total = per_layer * layers + biggest;
    float *w = malloc(total * sizeof *w), *x = calloc((size_t)(hidden > vocab ? hidden : vocab) + dim, sizeof *x);
    float *y = calloc((size_t)(hidden > vocab ? hidden : vocab) + dim, sizeof *y);
    if (!w || !x || !y) {
        fprintf(stderr, "bench: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < total; i++)
        w[i] = (float)(i % 13) * 0.01f - 0.06f;
    for (int i = 0; i < dim + hidden; i++)
        x[i] = 0.01f * (float)(i % 7);
    double w0 = wall_now(), c0 = cpu_now();
    for (int t = 0; t < j->positions; t++) {
        const float *p = w;
        for (int l = 0; l < layers; l++)
            for (int m = 0; m < 7; m++) {
                cblas_sgemv(CblasRowMajor, CblasNoTrans, shape[m][0], shape[m][1], 1.0f, p,
                            shape[m][1], x, 1, 0.0f, y, 1);
                p += (size_t)shape[m][0] * shape[m][1];
            }
        cblas_sgemv(CblasRowMajor, CblasNoTrans, vocab, dim, 1.0f, p, dim, x, 1, 0.0f, y, 1);
    }
    printf("RESULT %.6f %.6f\n", wall_now() - w0, cpu_now() - c0);
    free(w), free(x), free(y);
    return 0;
}

static int child_main(const char *dir, const char *what)
{
    if (strncmp(what, "gen:", 4) == 0)
        return child_gen(dir, atoi(what + 4));
    int ji = find_job(what);
    if (ji < 0)
        return 1;
    const bench_job *j = &jobs[ji];
    if (j->threads > 0)
        omp_set_num_threads(j->threads);
    if (j->kind == JOB_SGEMM)
        return child_sgemm();
    if (j->kind == JOB_NUMPY)
        return child_numpy(dir, j);
    if (j->kind == JOB_CAPTURE)
        return child_capture(dir, j);
    if (j->kind == JOB_SGEMV)
        return child_sgemv(j);
    char path[512], err[512];
    trace_path(dir, j->trace, path, sizeof path);
    kv_trace *tr;
    if (kv_trace_open(path, &tr, err, sizeof err) != 0) {
        fprintf(stderr, "bench: %s\n", err);
        return 1;
    }
    int rc = j->kind == JOB_ROWS ? child_rows(j, tr)
             : j->kind == JOB_SGEMM_FLOOR ? child_sgemm_floor(j, tr) : child_replay(dir, j, tr);
    kv_trace_close(tr);
    return rc;
}

/* ------------------------------------------------------------ parent */

typedef struct {
    int done, ok;
    double wall, cpu;    /* seconds: the median run (by job_time) */
    double wall_min, wall_max; /* job_time's range over the runs */
    double ratio;        /* median over the rounds of time / floor of the same round */
    long max_rss_kb;     /* the largest of the runs */
} job_result;

#define MAX_REPEAT 15

/* Runs `self --child DIR what` and reads its RESULT line. */
static int run_child(const char *self, const char *dir, const char *what, job_result *r)
{
    int fd[2];
    if (pipe(fd) != 0)
        return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        close(fd[0]);
        dup2(fd[1], STDOUT_FILENO);
        close(fd[1]);
        execl(self, self, "--child", dir, what, (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    FILE *f = fdopen(fd[0], "r");
    char line[256];
    memset(r, 0, sizeof *r);
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "RESULT %lf %lf", &r->wall, &r->cpu) == 2)
            r->ok = 1;
    if (f)
        fclose(f);
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0)
        return -1;
    r->done = 1;
    r->ok &= WIFEXITED(status) && WEXITSTATUS(status) == 0;
    r->max_rss_kb = ru.ru_maxrss;
    return r->ok ? 0 : -1;
}

static int same_file(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        same = ca == cb;
        if (ca == EOF)
            break;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    return same;
}

/* 1 when every result file of the two jobs' outputs is byte-identical. */
static int same_outputs(const char *dir, const char *j1, const char *j2)
{
    const char *files[] = { "summary.tsv", "steps.tsv", "heads.tsv", "retention.tsv",
                            "lifetimes.tsv" };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char a[700], b[700];
        snprintf(a, sizeof a, "%s/out/%s/%s", dir, j1, files[i]);
        snprintf(b, sizeof b, "%s/out/%s/%s", dir, j2, files[i]);
        if (!same_file(a, b))
            return 0;
    }
    return 1;
}

static int ensure_traces(const char *self, const char *dir, const int *wanted)
{
    for (int t = 0; t < N_TRACES; t++) {
        if (!wanted[t] || traces[t].seed == 0)   /* committed, not generated */
            continue;
        char path[512];
        trace_path(dir, t, path, sizeof path);
        if (access(path, R_OK) == 0)
            continue;
        fprintf(stderr, "bench: generating %s (once; kept in %s)\n", traces[t].file, dir);
        char what[32];
        snprintf(what, sizeof what, "gen:%d", t);
        job_result r;
        if (run_child(self, dir, what, &r) != 0) {
            fprintf(stderr, "bench: generating %s failed\n", traces[t].file);
            return 1;
        }
        fprintf(stderr, "bench: generated %s in %.1f s\n", traces[t].file, r.wall);
    }
    return 0;
}

/* The time a job is judged by: CPU seconds for this round's one-thread workloads (and
 * those flagged CPU), wall seconds for the previous round's. */
static double job_time(int i, const job_result *r)
{
    return jobs[i].by_default || (jobs[i].flags & CPU) ? r->cpu : r->wall;
}

/* The floor of job i in seconds (0: none) and what it is. */
static double job_floor(int i, const job_result *res, double sgemm_gflops, const char **what)
{
    const bench_job *j = &jobs[i];
    *what = "";
    if (j->floor) {
        int f = find_job(j->floor);
        *what = j->floor;
        return f >= 0 && res[f].ok ? job_time(f, &res[f]) : 0;
    }
    if (j->kind == JOB_SGEMM || j->trace < 0 || j->by_default)
        return 0;
    double flops = recompute_flops(&traces[j->trace]);
    if (flops > 0 && sgemm_gflops > 0) {
        *what = "SGEMM";
        return flops / (sgemm_gflops * 1e9);
    }
    return 0;
}

static void print_table(FILE *f, int tsv, const job_result *res, double sgemm_gflops)
{
    if (tsv)
        fprintf(f, "job\tthreads\twall_s\tjudged_min_s\tjudged_max_s\tcpu_s\trows_per_s\tgflops\t"
                   "floor\tfloor_s\tratio\ttarget\tmax_rss_mb\n");
    else
        fprintf(f, "%-10s %3s %8s %11s %8s %11s %8s %-10s %8s %6s %-8s %7s\n", "workload",
                "thr", "wall(s)", "range(s)", "cpu(s)", "rows/s", "GFLOP/s", "floor",
                "floor(s)", "ratio", "target", "RSS(MB)");
    for (int i = 0; i < N_JOBS; i++) {
        const bench_job *j = &jobs[i];
        if (!res[i].done)
            continue;
        int threads = j->threads > 0 ? j->threads : omp_get_num_procs();
        if (!res[i].ok) {
            fprintf(f, tsv ? "%s\t%d\tFAILED\n" : "%-10s %3d   FAILED\n", j->name, threads);
            continue;
        }
        double rows = 0, gflops = 0;
        if (j->kind == JOB_SGEMM) {
            gflops = sgemm_gflops;
        } else if (j->kind == JOB_CAPTURE || j->kind == JOB_SGEMV) {
            rows = j->positions / res[i].wall; /* positions per second */
        } else {
            const bench_trace *bt = &traces[j->trace];
            rows = (double)bt->n_layers * bt->n_heads * bt->n_tokens / job_time(i, &res[i]);
            gflops = recompute_flops(bt) / job_time(i, &res[i]) / 1e9;
        }
        const char *fname;
        double floor_s = job_floor(i, res, sgemm_gflops, &fname);
        double ratio = floor_s > 0 ? res[i].ratio : 0;
        double rss = res[i].max_rss_kb / 1024.0;
        if (tsv)
            fprintf(f, "%s\t%d\t%.3f\t%.3f\t%.3f\t%.3f\t%.0f\t%.1f\t%s\t%.3f\t%.2f\t%s\t%.0f\n",
                    j->name, threads, res[i].wall, res[i].wall_min, res[i].wall_max,
                    res[i].cpu, rows, gflops, fname, floor_s, ratio, j->target, rss);
        else {
            char rs[16] = "-", gf[16] = "-", fs[16] = "-", ra[16] = "-";
            if (rows > 0)
                snprintf(rs, sizeof rs, "%.0f", rows);
            if (gflops > 0)
                snprintf(gf, sizeof gf, "%.1f", gflops);
            if (floor_s > 0) {
                snprintf(fs, sizeof fs, "%.2f", floor_s);
                snprintf(ra, sizeof ra, "%.2f", ratio);
            }
            char range[32];
            snprintf(range, sizeof range, "%.2f-%.2f", res[i].wall_min, res[i].wall_max);
            fprintf(f, "%-10s %3d %8.2f %11s %8.2f %11s %8s %-10s %8s %6s %-8s %7.0f\n",
                    j->name, threads, res[i].wall, range, res[i].cpu, rs, gf,
                    *fname ? fname : "-", fs, ra, j->target, rss);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc >= 4 && strcmp(argv[1], "--child") == 0)
        return child_main(argv[2], argv[3]);
    /* --repeat N (first): every job runs N times, round robin, and the median run counts */
    int repeat = 1;
    if (argc >= 3 && strcmp(argv[1], "--repeat") == 0) {
        repeat = atoi(argv[2]);
        if (repeat < 1 || repeat > MAX_REPEAT) {
            fprintf(stderr, "bench: --repeat takes 1..%d\n", MAX_REPEAT);
            return 2;
        }
        argc -= 2;
        argv += 2;
    }
    const char *dir = argc >= 2 ? argv[1] : "build/bench";
    int want_job[N_JOBS], want_trace[N_TRACES] = { 0 };
    for (int i = 0; i < N_JOBS; i++)
        want_job[i] = argc <= 2 && jobs[i].by_default;
    for (int a = 2; a < argc; a++) {
        int i = find_job(argv[a]);
        if (i < 0) {
            fprintf(stderr, "bench: unknown job %s\n", argv[a]);
            return 2;
        }
        want_job[i] = 1;
    }
    for (int i = 0; i < N_JOBS; i++)
        if (want_job[i] && jobs[i].trace >= 0)
            want_trace[jobs[i].trace] = 1;
    /* Idle OpenMP threads sleep instead of spinning: on a shared machine a spinning thread
     * takes the core from the work it waits for (2-five: 7% of the CPU was libgomp spinning
     * while the other thread read the trace). libgomp reads this before main, so it is set
     * here for the children; a value in the environment wins. */
    setenv("OMP_WAIT_POLICY", "passive", 0);
    char self[1024];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        fprintf(stderr, "bench: cannot find its own executable\n");
        return 1;
    }
    self[n] = '\0';
    mkdir(dir, 0777);
    if (ensure_traces(self, dir, want_trace))
        return 1;
    char load_before[128] = "?\n";
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (!fgets(load_before, sizeof load_before, la))
            snprintf(load_before, sizeof load_before, "?\n");
        fclose(la);
    }
    job_result res[N_JOBS], runs[N_JOBS][MAX_REPEAT];
    memset(res, 0, sizeof res);
    int failed = 0;
    /* Round robin, so that a slow spell of the machine touches every job alike. */
    for (int k = 0; k < repeat; k++)
        for (int i = 0; i < N_JOBS; i++) {
            if (!want_job[i])
                continue;
            fprintf(stderr, "bench: %-10s run %d/%d ...", jobs[i].name, k + 1, repeat);
            if (run_child(self, dir, jobs[i].name, &runs[i][k]) != 0)
                failed = 1;
            fprintf(stderr, " %.2f s (cpu %.2f s)\n", runs[i][k].wall, runs[i][k].cpu);
        }
    double sgemm_gflops = 0;
    job_result sorted[N_JOBS][MAX_REPEAT];
    memcpy(sorted, runs, sizeof runs);
    for (int i = 0; i < N_JOBS; i++) {
        if (!want_job[i])
            continue;
        job_result *r = sorted[i];
        int ok = 1;
        long rss = 0;
        for (int k = 0; k < repeat; k++) {
            ok &= r[k].ok;
            rss = r[k].max_rss_kb > rss ? r[k].max_rss_kb : rss;
        }
        for (int a = 1; a < repeat; a++) /* sort the runs by the time judged */
            for (int b = a; b > 0 && job_time(i, &r[b]) < job_time(i, &r[b - 1]); b--) {
                job_result tmp = r[b];
                r[b] = r[b - 1];
                r[b - 1] = tmp;
            }
        res[i] = r[repeat / 2];
        res[i].ok = ok;
        res[i].wall_min = job_time(i, &r[0]);
        res[i].wall_max = job_time(i, &r[repeat - 1]);
        res[i].max_rss_kb = rss;
        if (jobs[i].kind == JOB_SGEMM && res[i].ok)
            sgemm_gflops = 2.0 * SGEMM_N * (double)SGEMM_N * SGEMM_N / res[i].wall / 1e9;
    }
    /* Ratios paired by round: a job against its floor measured in the same round, close
     * in time, then the median over the rounds (the machine's speed drifts by 10-20%
     * over minutes, which pairing cancels). */
    for (int i = 0; i < N_JOBS; i++) {
        if (!want_job[i] || !res[i].ok)
            continue;
        double ratio[MAX_REPEAT];
        int n = 0;
        for (int k = 0; k < repeat; k++) {
            job_result one[N_JOBS];
            for (int j = 0; j < N_JOBS; j++)
                one[j] = runs[j][k];
            double rate = 0;
            int sg = find_job("4-sgemm");
            if (sg >= 0 && want_job[sg] && one[sg].ok)
                rate = 2.0 * SGEMM_N * (double)SGEMM_N * SGEMM_N / one[sg].wall / 1e9;
            const char *what;
            double fl = job_floor(i, one, rate, &what);
            if (fl > 0) {
                int a = n++;
                ratio[a] = job_time(i, &one[i]) / fl;
                for (; a > 0 && ratio[a] < ratio[a - 1]; a--) {
                    double tmp = ratio[a];
                    ratio[a] = ratio[a - 1];
                    ratio[a - 1] = tmp;
                }
            }
        }
        res[i].ratio = n > 0 ? ratio[n / 2] : 0;
    }
    char cpu_name[256] = "unknown CPU";
    FILE *ci = fopen("/proc/cpuinfo", "r");
    for (char line[512]; ci && fgets(line, sizeof line, ci);) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon) {
            snprintf(cpu_name, sizeof cpu_name, "%s", colon + 2);
            cpu_name[strcspn(cpu_name, "\n")] = '\0';
            break;
        }
    }
    if (ci)
        fclose(ci);
    printf("\nCPU: %s, %d cores, OMP_WAIT_POLICY=%s, %d run%s per job (median shown, by CPU "
           "time for one-thread jobs 5-*/6-*, wall time for the others; ratio: median over the "
           "rounds of time / floor in the same round), load average before: %s", cpu_name,
           omp_get_num_procs(), getenv("OMP_WAIT_POLICY"), repeat, repeat > 1 ? "s" : "",
           load_before);
    print_table(stdout, 0, res, sgemm_gflops);
    char tsv[600];
    snprintf(tsv, sizeof tsv, "%s/results.tsv", dir);
    FILE *f = fopen(tsv, "w");
    if (f) {
        print_table(f, 1, res, sgemm_gflops);
        fclose(f);
    }
    printf("\nOpenMP, %d threads against 1:\n", omp_get_num_procs());
    for (size_t p = 0; p < sizeof omp_pairs / sizeof omp_pairs[0]; p++) {
        int a = find_job(omp_pairs[p][0]), b = find_job(omp_pairs[p][1]);
        if (!res[a].ok || !res[b].ok)
            continue;
        int same = same_outputs(dir, jobs[a].name, jobs[b].name);
        failed |= !same;
        double up[MAX_REPEAT]; /* paired by round, like the ratios */
        for (int k = 0; k < repeat; k++) {
            int m = k;
            up[m] = runs[b][k].wall / runs[a][k].wall;
            for (; m > 0 && up[m] < up[m - 1]; m--) {
                double tmp = up[m];
                up[m] = up[m - 1];
                up[m - 1] = tmp;
            }
        }
        printf("  %-8s speed-up %.2fx (median over the rounds; medians %.2f s -> %.2f s), "
               "outputs %s\n", jobs[a].name, up[repeat / 2], res[b].wall, res[a].wall,
               same ? "byte-identical" : "DIFFER");
    }
    for (int i = 0; i < N_JOBS; i++)
        if (want_job[i] && res[i].ok && jobs[i].kind == JOB_REPLAY)
            printf("Peak resident memory of %s: %.0f MB\n", jobs[i].name,
                   res[i].max_rss_kb / 1024.0);
    printf("Results: %s\n", tsv);
    return failed;
}
