/*
 * mpi_run.c - `kvsim-mpi run`: `kvsim run` spread over the ranks of an MPI job, with
 * result files byte-identical to the single process's for any number of ranks and of
 * OpenMP threads per rank. Compiled only into kvsim-mpi (make kvsim-mpi); the plain
 * kvsim never links MPI.
 *
 * Rank 0 runs `kvsim run` itself (sim/cmd_run.c, kv_cmd_run_with) with this file's
 * driver in place of the in-process steps, and hands out units of work to ranks 1..N-1
 * (with one rank, it does every unit itself):
 *   1. budgets and checks (the driver's resolve_budgets slot): one unit per byte-budget
 *      resolution (trace, policy, budget spec: a dry run, sim/budget.h) and one per trace
 *      check (kv_trace_precheck: every q/k/v/attn value, the whole file read); token and
 *      prompt-share budgets are arithmetic on the header and resolved by rank 0;
 *   2. the replay (the replay slot): one unit per (trace, replay group, layer), a replay
 *      group being step 2 of sim/experiment.h (the policies whose budgets resolved
 *      alike). A unit is engine.h's kv_replay_layers over one layer; its kv_layer_part
 *      (one buffer) goes to rank 0 as bytes, and rank 0 folds each group's layers in
 *      layer order with kv_results_add_layer, the function kv_replay itself uses, then
 *      merges the groups as kv_experiment_replay does. So the files are byte-identical
 *      by construction.
 *   3. the closed loop (with model = ...), after every replay is in: rank 0 runs it
 *      itself, trace after trace, with the function kv_experiment_replay uses
 *      (kv_experiment_closed_loop), so its columns are the single process's too. Spreading
 *      it would be a third kind of unit, one per (trace, policy, budget):
 *      UNIT_CLOSED_LOOP is reserved for it and not handed out yet.
 *
 * Units are handed out dynamically, largest estimated cost first (a rank that finishes
 * takes the next). Every rank opens its traces itself (read only). A failing unit (a bad
 * trace, out of memory) makes rank 0 hand out nothing more, wait for the units already
 * running, and stop the job with one line naming the rank and the trace; the exit
 * status is kvsim run's. Only rank 0 writes result files, through kvsim run's output.
 *
 * Messages, all between rank 0 and one other rank, tags below: rank 0 sends a unit
 * (TAG_UNIT, int[UNIT_INTS]; kind UNIT_STOP ends the rank's loop) or, before the replay
 * units, the resolved budgets (TAG_PLAN: block, then the tokens array); a rank answers
 * every unit with a result header (TAG_RESULT) followed, for a replay unit, by the
 * layer part's bytes (TAG_DATA, in pieces of at most 1 GiB).
 */
#include <mpi.h>

#include "sim/commands.h"
#include "sim/engine.h"
#include "sim/experiment.h"
#include "sim/signals.h"
#include "traces/status.h"
#include "traces/validate.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { TAG_UNIT = 1, TAG_PLAN, TAG_RESULT, TAG_DATA };
enum { UNIT_STOP = 0, UNIT_RESOLVE, UNIT_CHECK, UNIT_REPLAY, UNIT_CLOSED_LOOP };

#define UNIT_INTS 6
#define PIECE_BYTES (1 << 30)   /* largest MPI message: counts are ints */

/* One unit of work, as sent (the ints) and as ranked (cost). */
typedef struct {
    int kind, trace, group, policy, budget, layer;
    double cost;                /* estimated relative work, for largest-first */
    int order;                  /* position in the single process's order */
} unit;

/* A rank's answer to one unit. */
typedef struct {
    int rc;                     /* the status code the in-process step would return */
    int tokens;                 /* UNIT_RESOLVE: the resolved budget */
    unsigned long long bytes;   /* UNIT_REPLAY: bytes of the layer part that follow */
    double seconds;             /* wall time of the unit on its rank */
    char err[1024];
} unit_result;

/* Rank 0's view of the job. */
typedef struct {
    int n_ranks;
    const kv_experiment *ex;    /* kvsim run's, borrowed */
    int progress;               /* 1: progress and the gather's cost on stderr */
} mpi_run;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void unit_pack(const unit *u, int *v)
{
    v[0] = u->kind, v[1] = u->trace, v[2] = u->group, v[3] = u->policy, v[4] = u->budget,
    v[5] = u->layer;
}

static void unit_unpack(const int *v, unit *u)
{
    memset(u, 0, sizeof *u);
    u->kind = v[0], u->trace = v[1], u->group = v[2], u->policy = v[3], u->budget = v[4],
    u->layer = v[5];
}

/*
 * Waits for a message from source (MPI_ANY_SOURCE) with tag (MPI_ANY_TAG) and returns its
 * envelope in *st, without spinning: Open MPI's blocking receive polls a core at full
 * speed, which would take the core of a replaying rank beside an idle rank 0 (or of rank 0
 * writing the results beside idle ranks). A message is noticed within 2 ms; a unit takes
 * far longer.
 */
static void wait_message(int source, int tag, MPI_Status *st)
{
    long pause_ns = 20000;
    for (;;) {
        int flag = 0;
        MPI_Iprobe(source, tag, MPI_COMM_WORLD, &flag, st);
        if (flag)
            return;
        struct timespec ts = { 0, pause_ns };
        nanosleep(&ts, NULL);
        if (pause_ns < 2000000)
            pause_ns *= 2;
    }
}

/* Sends or receives a buffer of any size, in pieces MPI's int counts can hold. */
static void send_bytes(const void *data, size_t bytes, int to)
{
    const char *p = data;
    for (size_t at = 0; at < bytes; at += PIECE_BYTES) {
        size_t n = bytes - at < PIECE_BYTES ? bytes - at : PIECE_BYTES;
        MPI_Send(p + at, (int)n, MPI_BYTE, to, TAG_DATA, MPI_COMM_WORLD);
    }
}

static void recv_bytes(void *data, size_t bytes, int from)
{
    char *p = data;
    for (size_t at = 0; at < bytes; at += PIECE_BYTES) {
        size_t n = bytes - at < PIECE_BYTES ? bytes - at : PIECE_BYTES;
        MPI_Recv(p + at, (int)n, MPI_BYTE, from, TAG_DATA, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
}

/* ----------------------------------------------------------- doing one unit */

/* What a rank keeps between units: the replay plan (after TAG_PLAN) and the trace it
 * last opened, kept open for the next unit of the same trace. */
typedef struct {
    const kv_experiment *ex;
    int *tokens;
    kv_replay_plan plan;
    int have_plan;
    int block;
    kv_policy_conf *group;      /* [n_policies] scratch for a group's conf */
    kv_trace *tr;
    int tr_index;
} unit_worker;

/* Where a replay unit's layer part goes: to rank 0 (remote, from another rank), or
 * into rank 0's own reduction (local, a one-rank job). */
typedef struct {
    int remote;
    int sent;
    double start;               /* when the unit began, for unit_result.seconds */
    int (*local)(void *ctx, const kv_layer_part *part, char *err, size_t err_len);
    void *local_ctx;
} part_sink;

static int send_part(void *ctx, const kv_layer_part *part, char *err, size_t err_len)
{
    part_sink *s = ctx;
    s->sent = 1;
    if (!s->remote)
        return s->local(s->local_ctx, part, err, err_len);
    unit_result r = { .rc = 0, .bytes = part->bytes, .seconds = now_seconds() - s->start };
    MPI_Send(&r, (int)sizeof r, MPI_BYTE, 0, TAG_RESULT, MPI_COMM_WORLD);
    send_bytes(part->data, part->bytes, 0);
    return 0;
}

static int worker_trace(unit_worker *w, int k, char *err, size_t err_len)
{
    if (w->tr && w->tr_index == k)
        return 0;
    kv_trace_close(w->tr);
    w->tr = NULL;
    if (kv_trace_open(w->ex->traces[k], &w->tr, err, err_len))
        return KV_ERUNTIME;
    kv_trace_set_read_checks(w->tr, 1);   /* attn rows checked as read: validate.h */
    w->tr_index = k;
    return 0;
}

/*
 * Does unit u. A replay unit's part goes to sink (which, for another rank, also sends
 * the result header); for the other kinds, and for a replay that failed before its part
 * was handed over, *r holds the answer and the caller sends it. Returns 1 when the
 * answer was sent by the sink.
 */
static int do_unit_kind(unit_worker *w, const unit *u, part_sink *sink, unit_result *r);

static int do_unit(unit_worker *w, const unit *u, part_sink *sink, unit_result *r)
{
    memset(r, 0, sizeof *r);
    sink->start = now_seconds();
    int sent = do_unit_kind(w, u, sink, r);
    r->seconds = now_seconds() - sink->start;
    return sent;
}

static int do_unit_kind(unit_worker *w, const unit *u, part_sink *sink, unit_result *r)
{
    const kv_experiment *ex = w->ex;
    if (u->kind == UNIT_CHECK) {
        if (kv_trace_precheck(ex->traces[u->trace], r->err, sizeof r->err))
            r->rc = KV_ERUNTIME;
    } else if (u->kind == UNIT_RESOLVE) {
        kv_trace *tr = NULL;
        if (kv_trace_open(ex->traces[u->trace], &tr, r->err, sizeof r->err)) {
            r->rc = KV_ERUNTIME;
            return 0;
        }
        kv_trace_info info = *kv_trace_get_info(tr);
        kv_trace_close(tr);
        r->rc = kv_experiment_resolve_entry(ex, u->trace, &info, u->policy, u->budget,
                                            &r->tokens, r->err, sizeof r->err);
    } else if (u->kind == UNIT_REPLAY && w->have_plan && u->group < w->plan.n_groups) {
        const kv_replay_group *g = &w->plan.groups[u->group];
        r->rc = worker_trace(w, g->trace, r->err, sizeof r->err);
        if (r->rc)
            return 0;
        kv_experiment_opts o = { .block = w->block, .progress = 0 };
        kv_replay_conf conf;
        kv_experiment_group_conf(ex, g, &o, w->group, &conf);
        sink->sent = 0;
        r->rc = kv_replay_layers(w->tr, &conf, u->layer, 1, send_part, sink, r->err,
                                 sizeof r->err);
        return sink->sent && r->rc == 0;
    } else {
        snprintf(r->err, sizeof r->err, "unit of kind %d is not known to this rank", u->kind);
        r->rc = KV_ERUNTIME;
    }
    return 0;
}

/* Takes the plan rank 0 sends before the replay units: block, then the tokens. */
static int worker_take_plan(unit_worker *w, int n_ints)
{
    const kv_experiment *ex = w->ex;
    size_t n_tokens = (size_t)ex->n_traces * ex->n_policies * ex->n_budgets;
    int *msg = malloc((size_t)n_ints * sizeof *msg);
    if (!msg) {   /* receive it anyway, so the next message is the next unit */
        int one;
        MPI_Recv(&one, 0, MPI_INT, 0, TAG_PLAN, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        return -1;
    }
    MPI_Recv(msg, n_ints, MPI_INT, 0, TAG_PLAN, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if ((size_t)n_ints != n_tokens + 1) {
        free(msg);
        return -1;
    }
    free(w->tokens);
    w->tokens = malloc(n_tokens * sizeof *w->tokens + 1);
    if (!w->tokens)
        return -1;
    w->block = msg[0];
    memcpy(w->tokens, msg + 1, n_tokens * sizeof *w->tokens);
    free(msg);
    if (w->have_plan)
        kv_replay_plan_free(&w->plan);
    char err[256];
    w->have_plan = kv_experiment_plan(ex, w->tokens, &w->plan, err, sizeof err) == 0;
    return w->have_plan ? 0 : -1;
}

/*
 * Ranks 1..N-1: does the units rank 0 sends until it sends UNIT_STOP. ex may be
 * incomplete when this rank failed to load the experiment (rank 0 then fails the same
 * way and sends no unit).
 */
static void worker_loop(const kv_experiment *ex, int load_rc, const char *load_err)
{
    unit_worker w = { .ex = ex, .tr_index = -1 };
    w.group = malloc((ex->n_policies ? (size_t)ex->n_policies : 1) * sizeof *w.group);
    part_sink sink = { .remote = 1 };
    for (;;) {
        MPI_Status st;
        wait_message(0, MPI_ANY_TAG, &st);
        if (st.MPI_TAG == TAG_PLAN) {
            int n;
            MPI_Get_count(&st, MPI_INT, &n);
            worker_take_plan(&w, n);   /* a failure shows as an error on each unit */
            continue;
        }
        int v[UNIT_INTS];
        MPI_Recv(v, UNIT_INTS, MPI_INT, 0, TAG_UNIT, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        unit u;
        unit_unpack(v, &u);
        if (u.kind == UNIT_STOP)
            break;
        unit_result r;
        int sent = 0;
        if (load_rc || !w.group || u.trace < 0 || u.trace >= ex->n_traces) {
            memset(&r, 0, sizeof r);
            r.rc = load_rc ? load_rc : KV_ENOMEM;
            snprintf(r.err, sizeof r.err, "%s", load_rc ? load_err : "out of memory");
        } else {
            sent = do_unit(&w, &u, &sink, &r);
        }
        if (!sent) {
            r.bytes = 0;
            MPI_Send(&r, (int)sizeof r, MPI_BYTE, 0, TAG_RESULT, MPI_COMM_WORLD);
        }
    }
    kv_trace_close(w.tr);
    if (w.have_plan)
        kv_replay_plan_free(&w.plan);
    free(w.tokens);
    free(w.group);
}

/* ----------------------------------------------------------- rank 0: handing out */

/* The first failure in the single process's order (the unit's order), which is the one
 * the single process would report. */
typedef struct {
    long long order;            /* LLONG_MAX: none */
    int rc;
    char err[1200];
} first_failure;

static void failure_note(first_failure *f, long long order, int rc, const char *err)
{
    if (order < f->order) {
        f->order = order;
        f->rc = rc;
        snprintf(f->err, sizeof f->err, "%s", err);
    }
}

/* What rank 0 does with each answer: data is the layer part's bytes (replay units, owned
 * by the callee), NULL otherwise. */
typedef int (*answer_fn)(void *ctx, const unit *u, const unit_result *r, void *data);

typedef struct {
    double start, last, total_cost, done_cost;
    int n_done, n_units, enabled, tty, shown;
    const char *what;
    /* the cost of spreading the work: layer parts' bytes gathered by rank 0, its seconds
     * receiving them and folding them (on_answer), against the units' own seconds */
    double bytes, recv_seconds, answer_seconds, unit_seconds;
    int n_parts;
} hand_out_progress;

/* The gather's cost, one line, after the last unit. */
static void progress_costs(const hand_out_progress *pg)
{
    if (!pg->enabled || pg->n_parts == 0)
        return;
    fprintf(stderr, "kvsim: %s: %d units in %.2f s; units' own time %.2f s; rank 0 gathered "
            "%.0f bytes (%.0f per part, %d parts), %.3f s receiving, %.3f s folding\n",
            pg->what, pg->n_units, now_seconds() - pg->start, pg->unit_seconds, pg->bytes,
            pg->n_parts ? pg->bytes / pg->n_parts : 0.0, pg->n_parts, pg->recv_seconds,
            pg->answer_seconds);
}

static void progress_show(hand_out_progress *pg, int final)
{
    if (!pg->enabled)
        return;
    double now = now_seconds();
    if (!final && (now - pg->start < 1.0 || now - pg->last < (pg->tty ? 0.5 : 10.0)))
        return;
    if (final && !pg->shown)
        return;
    pg->last = now;
    pg->shown = 1;
    double done = pg->total_cost > 0 ? pg->done_cost / pg->total_cost : 1.0;
    double left = done > 0 ? (now - pg->start) * (1.0 - done) / done : 0.0;
    fprintf(stderr, "%skvsim: %s: %d/%d units done (%.0f%% of the work), %.0f s, about "
            "%.0f s left%s", pg->tty ? "\r" : "", pg->what, pg->n_done, pg->n_units,
            100.0 * done, now - pg->start, left, pg->tty && !final ? "   " : "\n");
    fflush(stderr);
}

/* Largest first; equal costs in the single process's order. */
static int by_cost(const void *a, const void *b)
{
    const unit *x = a, *y = b;
    if (x->cost != y->cost)
        return x->cost > y->cost ? -1 : 1;
    return (x->order > y->order) - (x->order < y->order);
}

/* One line naming the rank and the trace of a failed unit. */
static void name_rank(const mpi_run *m, const unit *u, int rank, unit_result *r)
{
    if (!r->rc)
        return;
    const char *path = m->ex->traces[u->trace], *name = kv_trace_display_name(path);
    char line[sizeof r->err + KV_PATH_LEN + 64];
    if (strncmp(r->err, path, strlen(path)) == 0 || strncmp(r->err, name, strlen(name)) == 0)
        snprintf(line, sizeof line, "rank %d: %s", rank, r->err);
    else if (u->kind == UNIT_REPLAY)
        snprintf(line, sizeof line, "rank %d: %s layer %d: %s", rank, name, u->layer, r->err);
    else
        snprintf(line, sizeof line, "rank %d: %s: %s", rank, name, r->err);
    size_t n = strlen(line) < sizeof r->err - 1 ? strlen(line) : sizeof r->err - 1;
    memcpy(r->err, line, n);
    r->err[n] = '\0';
}

/* A one-rank job's part, copied out of the engine's buffer (borrowed) to rank 0's
 * answer as if it had arrived from another rank. */
typedef struct {
    void *ctx;
    const unit *u;
    answer_fn fn;
    int rc;
    double start;
    double answer_seconds;      /* in fn */
    size_t bytes;
} local_answer;

static int answer_part_here(void *ctx, const kv_layer_part *part, char *err, size_t err_len)
{
    local_answer *la = ctx;
    unit_result r = { .rc = 0, .bytes = part->bytes, .seconds = now_seconds() - la->start };
    void *data = malloc(part->bytes ? part->bytes : 1);
    if (!data) {
        snprintf(err, err_len, "out of memory copying a layer part (%zu bytes)", part->bytes);
        return KV_ENOMEM;
    }
    memcpy(data, part->data, part->bytes);
    double t0 = now_seconds();
    la->rc = la->fn(la->ctx, la->u, &r, data);
    la->answer_seconds = now_seconds() - t0;
    la->bytes = part->bytes;
    return 0;
}

static void send_unit(const unit *u, int to)
{
    int v[UNIT_INTS];
    unit_pack(u, v);
    MPI_Send(v, UNIT_INTS, MPI_INT, to, TAG_UNIT, MPI_COMM_WORLD);
}

/*
 * Hands units out (largest first) to ranks 1..N-1, or does them here with one rank,
 * and gives every answer to on_answer. Once a unit failed (f), units later in the
 * single process's order are skipped: the error reported is then the one the single
 * process reports. Returns 0, or KV_ENOMEM when a part's buffer cannot be allocated
 * (the answers still arriving are drained).
 */
static int hand_out(mpi_run *m, unit_worker *self, unit *units, int n, first_failure *f,
                    answer_fn on_answer, void *ctx, const char *what)
{
    qsort(units, (size_t)n, sizeof *units, by_cost);
    hand_out_progress pg = { .start = now_seconds(), .n_units = n, .enabled = m->progress,
                             .tty = isatty(STDERR_FILENO), .what = what };
    for (int i = 0; i < n; i++)
        pg.total_cost += units[i].cost;
    int next = 0, busy = 0, rc = 0;
    /* with one rank, rank 0 does every unit itself through the same functions */
    for (; m->n_ranks == 1 && next < n; next++) {
        const unit *u = &units[next];
        if (u->order > f->order)
            continue;
        unit_result r;
        local_answer la = { .ctx = ctx, .u = u, .fn = on_answer, .start = now_seconds() };
        part_sink sink = { .remote = 0, .local = answer_part_here, .local_ctx = &la };
        if (!do_unit(self, u, &sink, &r)) {
            name_rank(m, u, 0, &r);
            rc |= on_answer(ctx, u, &r, NULL);
        } else {
            rc |= la.rc;
            pg.bytes += (double)la.bytes, pg.n_parts++, pg.answer_seconds += la.answer_seconds;
        }
        pg.unit_seconds += r.seconds - la.answer_seconds;
        pg.done_cost += u->cost, pg.n_done++;
        progress_show(&pg, 0);
    }
    int *running = malloc((size_t)m->n_ranks * sizeof *running);   /* unit index per rank */
    if (!running && m->n_ranks > 1) {
        failure_note(f, LLONG_MIN, KV_ENOMEM, "out of memory");
        return KV_ENOMEM;
    }
    for (int to = 1; to < m->n_ranks; to++) {
        while (next < n && units[next].order > f->order)
            next++;
        running[to] = -1;
        if (next < n) {
            send_unit(&units[next], to);
            running[to] = next++;
            busy++;
        }
    }
    while (busy > 0) {
        unit_result r;
        MPI_Status st;
        wait_message(MPI_ANY_SOURCE, TAG_RESULT, &st);
        int from = st.MPI_SOURCE;
        MPI_Recv(&r, (int)sizeof r, MPI_BYTE, from, TAG_RESULT, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        const unit *u = &units[running[from]];
        void *data = NULL;
        double t0 = now_seconds();
        if (r.bytes) {
            data = malloc(r.bytes);
            if (!data) {   /* drain the bytes, then report */
                char sink_buf[4096];
                for (unsigned long long at = 0; at < r.bytes;) {
                    MPI_Status ds;
                    int cnt;
                    MPI_Probe(from, TAG_DATA, MPI_COMM_WORLD, &ds);
                    MPI_Get_count(&ds, MPI_BYTE, &cnt);
                    char *tmp = malloc((size_t)cnt);
                    MPI_Recv(tmp ? tmp : sink_buf, tmp ? cnt : 0, MPI_BYTE, from, TAG_DATA,
                             MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                    free(tmp);
                    at += (unsigned long long)cnt;
                }
                r.rc = KV_ENOMEM;
                snprintf(r.err, sizeof r.err, "out of memory receiving %llu bytes", r.bytes);
            } else {
                recv_bytes(data, r.bytes, from);
            }
            pg.bytes += (double)r.bytes, pg.n_parts++;
        }
        double t1 = now_seconds();
        pg.recv_seconds += t1 - t0;
        pg.unit_seconds += r.seconds;
        name_rank(m, u, from, &r);
        rc |= on_answer(ctx, u, &r, data);
        pg.answer_seconds += now_seconds() - t1;
        pg.done_cost += u->cost, pg.n_done++;
        progress_show(&pg, 0);
        busy--;
        running[from] = -1;
        while (next < n && units[next].order > f->order)
            next++;
        if (next < n) {
            send_unit(&units[next], from);
            running[from] = next++;
            busy++;
        }
    }
    progress_show(&pg, 1);
    progress_costs(&pg);
    free(running);
    return rc;
}

/* ----------------------------------------------------------- rank 0: the driver */

/* Rank 0's driver context. */
typedef struct {
    mpi_run m;
    unit_worker self;           /* rank 0's own units, in a one-rank job */
    first_failure f1;           /* the first failure of the budgets-and-checks phase */
    int *tokens;                /* borrowed from kvsim run's buffers */
    long long check_base;       /* orders from here on are checks */
} mpi_driver;

/* The experiment kvsim run loaded, for rank 0's own units (a one-rank job). */
static int driver_take(mpi_driver *d, const kv_experiment *ex, char *err, size_t err_len)
{
    d->m.ex = ex;
    d->self.ex = ex;
    if (!d->self.group)
        d->self.group = malloc((ex->n_policies ? (size_t)ex->n_policies : 1) *
                               sizeof *d->self.group);
    if (d->self.group)
        return 0;
    snprintf(err, err_len, "out of memory");
    return KV_ENOMEM;
}

/* Orders of the single process's step 1 (trace by trace: the header, then each
 * (policy, budget) entry), then of its checks (trace by trace). */
static long long header_order(const kv_experiment *ex, int k)
{
    return 2LL * k * ex->n_policies * ex->n_budgets;
}

static long long entry_order(const kv_experiment *ex, int k, int p, int b)
{
    return 2LL * (((long long)k * ex->n_policies + p) * ex->n_budgets + b) + 1;
}

static int answer_phase1(void *ctx, const unit *u, const unit_result *r, void *data)
{
    mpi_driver *d = ctx;
    free(data);
    if (r->rc)
        failure_note(&d->f1, u->order, r->rc, r->err);
    else if (u->kind == UNIT_RESOLVE)
        d->tokens[((size_t)u->trace * d->m.ex->n_policies + u->policy) * d->m.ex->n_budgets +
                  u->budget] = r->tokens;
    return 0;
}

/* The driver's resolve slot: step 1 and the checks as units (see the top of this file). */
static int mpi_resolve(void *ctx, const kv_experiment *ex, const kv_experiment_opts *opts,
                       int *tokens, char *err, size_t err_len)
{
    mpi_driver *d = ctx;
    if (driver_take(d, ex, err, err_len))
        return KV_ENOMEM;
    d->m.progress = opts->progress;
    int np = ex->n_policies, nb = ex->n_budgets;
    d->tokens = tokens;
    d->f1.order = LLONG_MAX;
    d->check_base = 2LL * ex->n_traces * np * nb + 2;
    size_t n_max = (size_t)ex->n_traces * (np * nb + 1);
    unit *units = malloc((n_max ? n_max : 1) * sizeof *units);
    if (!units) {
        snprintf(err, err_len, "out of memory");
        return KV_ENOMEM;
    }
    int n = 0;
    for (int k = 0; k < ex->n_traces; k++) {
        char why[1024];
        kv_trace *tr = NULL;
        if (kv_trace_open(ex->traces[k], &tr, why, sizeof why)) {
            failure_note(&d->f1, header_order(ex, k), KV_ERUNTIME, why);
            continue;
        }
        kv_trace_info in = *kv_trace_get_info(tr);
        kv_trace_close(tr);
        double T = in.n_tokens;
        unit check = { .kind = UNIT_CHECK, .trace = k, .order = d->check_base + k,
                       .cost = (double)in.n_layers * in.n_heads * T * in.head_dim };
        units[n++] = check;
        for (int p = 0; p < np; p++)
            for (int b = 0; b < nb; b++) {
                long long order = entry_order(ex, k, p, b);
                if (ex->budgets[b].kind != KV_BUDGET_BYTES) {   /* arithmetic: here */
                    int *t = &tokens[((size_t)k * np + p) * nb + b];
                    int rc = kv_experiment_resolve_entry(ex, k, &in, p, b, t, why, sizeof why);
                    if (rc)
                        failure_note(&d->f1, order, rc, why);
                    continue;
                }
                /* a dry run of one cache at O(log T) budgets */
                unit u = { .kind = UNIT_RESOLVE, .trace = k, .policy = p, .budget = b,
                           .order = order, .cost = T * in.n_heads / in.n_kv_heads * 16.0 };
                units[n++] = u;
            }
    }
    int rc = hand_out(&d->m, &d->self, units, n, &d->f1, answer_phase1, d,
                      "budgets and trace checks");
    free(units);
    if (rc) {
        snprintf(err, err_len, "%s", d->f1.err);
        return rc;
    }
    if (d->f1.order < d->check_base) {
        snprintf(err, err_len, "%s", d->f1.err);
        return d->f1.rc;
    }
    return 0;
}

/* The driver's check slot: the checks ran with the budgets; their first failure. */
static int mpi_precheck(void *ctx, const kv_experiment *ex, char *err, size_t err_len)
{
    mpi_driver *d = ctx;
    (void)ex;
    if (d->f1.order == LLONG_MAX)
        return 0;
    snprintf(err, err_len, "%s", d->f1.err);
    return d->f1.rc;
}

/* One replay group's reduction on rank 0: its layers folded in order as they come. */
typedef struct {
    kv_results *res;
    int next_layer;
    void **pending;             /* [n_layers] parts' bytes that came before their turn */
} group_reduction;

typedef struct {
    mpi_driver *d;
    const kv_replay_plan *plan;
    group_reduction *groups;    /* [plan->n_groups] */
    kv_results **res;           /* [n_traces] the experiment's results */
    first_failure f;
    kv_trace_info *infos;       /* [n_traces] */
} replay_reduction;

/* Folds every part of group gi that is now in turn; the last one completes the group
 * and merges it into its trace's results (step 3). */
static int fold_ready(replay_reduction *rr, int gi)
{
    const kv_experiment *ex = rr->d->m.ex;
    const kv_replay_group *g = &rr->plan->groups[gi];
    group_reduction *gr = &rr->groups[gi];
    const kv_trace_info *in = &rr->infos[g->trace];
    while (gr->next_layer < in->n_layers && gr->pending[gr->next_layer]) {
        kv_layer_part part;
        kv_layer_part_wrap(&part, in, g->n_policies * ex->n_budgets, gr->next_layer,
                           gr->pending[gr->next_layer], 1);
        kv_results_add_layer(gr->res, &part);
        kv_layer_part_free(&part);
        gr->pending[gr->next_layer++] = NULL;
    }
    if (gr->next_layer < in->n_layers)
        return 0;
    kv_results_finish(gr->res);
    char err[256];
    kv_results *done = gr->res;
    gr->res = NULL;
    int rc = kv_experiment_merge(ex, g, done, &rr->res[g->trace], err, sizeof err);
    if (rc)
        failure_note(&rr->f, -1, rc, err);
    return rc;
}

static int answer_replay(void *ctx, const unit *u, const unit_result *r, void *data)
{
    replay_reduction *rr = ctx;
    if (r->rc) {
        free(data);
        failure_note(&rr->f, u->order, r->rc, r->err);
        return 0;
    }
    const kv_replay_group *g = &rr->plan->groups[u->group];
    const kv_trace_info *in = &rr->infos[g->trace];
    size_t want = kv_layer_part_bytes(in, g->n_policies * rr->d->m.ex->n_budgets);
    group_reduction *gr = &rr->groups[u->group];
    if (!data || r->bytes != want || !gr->res) {
        char why[256];
        snprintf(why, sizeof why, "internal error: layer %d of trace %d came with %llu "
                 "bytes, expected %zu", u->layer, g->trace, r->bytes, want);
        free(data);
        failure_note(&rr->f, u->order, KV_ERUNTIME, why);
        return 0;
    }
    gr->pending[u->layer] = data;
    fold_ready(rr, u->group);
    return 0;
}

/* Rank 0's share of the reduction state; 0 or KV_ENOMEM. */
static int reduction_open(replay_reduction *rr, const kv_experiment *ex,
                          const kv_experiment_opts *opts, char *err, size_t err_len)
{
    const kv_replay_plan *plan = rr->plan;
    rr->groups = calloc(plan->n_groups ? (size_t)plan->n_groups : 1, sizeof *rr->groups);
    rr->infos = calloc(ex->n_traces ? (size_t)ex->n_traces : 1, sizeof *rr->infos);
    kv_policy_conf *scratch = malloc((ex->n_policies ? (size_t)ex->n_policies : 1) *
                                     sizeof *scratch);
    if (!rr->groups || !rr->infos || !scratch) {
        free(scratch);
        snprintf(err, err_len, "out of memory");
        return KV_ENOMEM;
    }
    for (int k = 0; k < ex->n_traces; k++) {
        kv_trace *tr = NULL;
        if (kv_trace_open(ex->traces[k], &tr, err, err_len)) {
            free(scratch);
            return KV_ERUNTIME;
        }
        rr->infos[k] = *kv_trace_get_info(tr);
        kv_trace_close(tr);
    }
    for (int gi = 0; gi < plan->n_groups; gi++) {
        const kv_replay_group *g = &plan->groups[gi];
        kv_replay_conf conf;
        kv_experiment_group_conf(ex, g, opts, scratch, &conf);
        int rc = kv_replay_validate(&conf, err, err_len);   /* as kv_replay would */
        if (rc == 0)
            rc = kv_results_new(&rr->infos[g->trace], &conf, &rr->groups[gi].res, err,
                                err_len);
        rr->groups[gi].pending = calloc((size_t)rr->infos[g->trace].n_layers, sizeof(void *));
        if (rc == 0 && !rr->groups[gi].pending) {
            snprintf(err, err_len, "out of memory");
            rc = KV_ENOMEM;
        }
        if (rc) {
            if (rc == KV_ERUNTIME && strstr(err, "decode step"))   /* P = T, as kv_replay */
                snprintf(err, err_len, "%s: prefill_len %d equals n_tokens %d: the trace has "
                         "no decode step to replay", ex->traces[g->trace],
                         rr->infos[g->trace].prefill_len, rr->infos[g->trace].n_tokens);
            free(scratch);
            return rc;
        }
    }
    free(scratch);
    return 0;
}

static void reduction_close(replay_reduction *rr)
{
    for (int gi = 0; rr->groups && gi < rr->plan->n_groups; gi++) {
        group_reduction *gr = &rr->groups[gi];
        kv_results_free(gr->res);
        for (int l = 0; gr->pending && l < rr->infos[rr->plan->groups[gi].trace].n_layers; l++)
            free(gr->pending[l]);
        free(gr->pending);
    }
    free(rr->groups);
    free(rr->infos);
}

/* Sends every other rank the resolved budgets and the block size (TAG_PLAN). */
static int send_plan(const mpi_run *m, const kv_experiment *ex, const int *tokens, int block)
{
    size_t n = (size_t)ex->n_traces * ex->n_policies * ex->n_budgets + 1;
    if (n > INT_MAX)
        return -1;
    int *msg = malloc(n * sizeof *msg);
    if (!msg)
        return -1;
    msg[0] = block;
    memcpy(msg + 1, tokens, (n - 1) * sizeof *tokens);
    for (int to = 1; to < m->n_ranks; to++)
        MPI_Send(msg, (int)n, MPI_INT, to, TAG_PLAN, MPI_COMM_WORLD);
    free(msg);
    return 0;
}

/* The driver's replay slot: steps 2-3, one unit per (trace, replay group, layer). */
static int mpi_replay(void *ctx, const kv_experiment *ex, const int *tokens,
                      const kv_experiment_opts *opts, kv_results **res, char *err,
                      size_t err_len)
{
    mpi_driver *d = ctx;
    for (int k = 0; k < ex->n_traces; k++)
        res[k] = NULL;
    if (driver_take(d, ex, err, err_len))
        return KV_ENOMEM;
    d->m.progress = opts->progress;
    kv_replay_plan plan;
    int rc = kv_experiment_plan(ex, tokens, &plan, err, err_len);
    if (rc)
        return rc;
    replay_reduction rr = { .d = d, .plan = &plan, .res = res, .f = { .order = LLONG_MAX } };
    unit *units = NULL;
    rc = reduction_open(&rr, ex, opts, err, err_len);
    if (rc == 0 && send_plan(&d->m, ex, tokens, opts->block)) {
        snprintf(err, err_len, "out of memory sending the budgets");
        rc = KV_ENOMEM;
    }
    /* rank 0 itself, in a one-rank job, takes the same plan */
    free(d->self.tokens);
    d->self.tokens = NULL;
    d->self.block = opts->block;
    if (rc == 0 && !d->self.have_plan) {
        d->self.plan = plan;
        d->self.have_plan = 1;
    }
    size_t n = 0;
    for (int gi = 0; rc == 0 && gi < plan.n_groups; gi++)
        n += (size_t)rr.infos[plan.groups[gi].trace].n_layers;
    if (rc == 0 && !(units = malloc((n ? n : 1) * sizeof *units))) {
        snprintf(err, err_len, "out of memory");
        rc = KV_ENOMEM;
    }
    n = 0;
    for (int gi = 0; rc == 0 && gi < plan.n_groups; gi++) {
        const kv_trace_info *in = &rr.infos[plan.groups[gi].trace];
        double T = in->n_tokens, runs = plan.groups[gi].n_policies * ex->n_budgets;
        for (int l = 0; l < in->n_layers; l++) {
            /* rows: T^2 / 2 * n_heads * head_dim (the SGEMM), and each run's caches
             * step through T^2 / 2 row entries per query head */
            unit u = { .kind = UNIT_REPLAY, .trace = plan.groups[gi].trace, .group = gi,
                       .layer = l, .order = (long long)n,
                       .cost = T * T * in->n_heads * (in->head_dim + 4.0 * runs) };
            units[n++] = u;
        }
    }
    if (rc == 0)
        rc = hand_out(&d->m, &d->self, units, (int)n, &rr.f, answer_replay, &rr, "replay");
    if (rr.f.order != LLONG_MAX) {
        rc = rr.f.rc;
        snprintf(err, err_len, "%s", rr.f.err);
    }
    free(units);
    reduction_close(&rr);
    /* the closed loop, on rank 0 alone, trace after trace, once every replay is in */
    for (int k = 0; rc == 0 && opts->models && k < ex->n_traces; k++) {
        if (!opts->models[k])
            continue;   /* its checkpoint is missing: open loop only */
        if (opts->progress && ex->n_traces > 1)
            fprintf(stderr, "kvsim: closed loop of trace %d/%d: %s\n", k + 1, ex->n_traces,
                    ex->traces[k]);
        rc = kv_experiment_closed_loop(ex, k, opts, res[k], err, err_len);
    }
    if (d->self.have_plan) {
        d->self.have_plan = 0;   /* the plan is this function's */
        memset(&d->self.plan, 0, sizeof d->self.plan);
    }
    kv_replay_plan_free(&plan);
    return rc;
}

/* ----------------------------------------------------------- main */

static void usage(FILE *f)
{
    fprintf(f, "usage: mpirun -n N kvsim-mpi run [CONFIG.ini] [options]\n\n"
               "`kvsim run` over the N ranks of an MPI job: rank 0 hands out the units of\n"
               "work (byte-budget resolutions and trace checks; one (trace, replay group,\n"
               "layer) replay each), largest first, gathers every layer's results and\n"
               "writes the same files as `kvsim run`, byte for byte. Options and exit\n"
               "status are kvsim run's (kvsim-mpi run --help). See the README, \"Clusters\".\n");
}

int main(int argc, char **argv)
{
    int provided, rank = 0, n_ranks = 1;
    /* MPI is called from the main thread only; OpenMP threads do the replay */
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n_ranks);
    kv_signals_install();   /* interrupts remove rank 0's temporaries (sim/signals.h) */
    int run = argc >= 2 && strcmp(argv[1], "run") == 0;
    int status = 0;
    if (rank == 0) {
        if (!run) {
            int help = argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"));
            if (!help && argc >= 2)
                fprintf(stderr, "kvsim-mpi: only `run` is spread over ranks; use kvsim %s\n\n",
                        argv[1]);
            usage(help ? stdout : stderr);
            status = help ? 0 : KV_EUSAGE;
        } else {
            mpi_driver d = { .m = { .n_ranks = n_ranks },
                             .self = { .tr_index = -1 } };
            kv_experiment_driver driver = { .resolve_budgets = mpi_resolve,
                                            .precheck = mpi_precheck, .replay = mpi_replay,
                                            .ctx = &d, .program = "kvsim-mpi" };
            status = kv_cmd_run_with(argc - 1, argv + 1, &driver);
            kv_trace_close(d.self.tr);
            free(d.self.group);
        }
        unit stop = { .kind = UNIT_STOP };
        for (int to = 1; to < n_ranks; to++)
            send_unit(&stop, to);
    } else {
        /* other ranks print nothing: rank 0 reports for the job. They hold no result
         * file, so when mpirun ends the job (an interrupt, or rank 0's failure) they
         * stop without a word (the fault handlers for damaged traces stay). */
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        if (!freopen("/dev/null", "w", stdout))
            fclose(stdout);
        kv_experiment ex;
        char err[1024] = "not a run";
        kv_experiment_init(&ex);
        int load_rc = run ? kv_run_load_experiment(argc - 1, argv + 1, &ex, err, sizeof err)
                          : KV_EUSAGE;
        worker_loop(&ex, load_rc, err);
        kv_experiment_free(&ex);
    }
    MPI_Barrier(MPI_COMM_WORLD);   /* every rank done before rank 0's status ends the job */
    MPI_Finalize();
    return status;
}
