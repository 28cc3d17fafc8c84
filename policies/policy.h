/*
 * policy.h - the one interface every KV-cache eviction policy implements.
 *
 * A policy instance manages one cache: one (layer, KV head) pair, whose query heads form
 * a GQA group of group_size heads. The cache itself (the ascending list of cached
 * positions) and its step are sim/cache.h's, driven by the replay engine (sim/engine.c,
 * which also owns the rows, the metrics and the output) and by the byte-budget dry run;
 * a policy only keeps scores and chooses what to keep. The replay semantics the cache
 * follows are fixed (README, "Replay semantics"); for one cache and a trace of T tokens
 * with a prompt of P tokens sim/cache.c calls, in this order:
 *
 *   st = ops->create(values, ctx)                     once, before position 0
 *   [ops->prescan(st, full_t) for t = 0 .. T-1]      optional slot: offline references
 *   for t = 0 .. T-1:
 *       [if t >= P: ops->preselect(st, full_t, keep)] optional slot: S chosen from p_t,
 *                                                      before the query attends
 *       ops->observe(st, row_t)                       row over A_t = S u {t}
 *       if t == P-1 or t >= P:
 *           m = ops->meta_bytes(st, |A_t|)            (decode steps only, t >= P)
 *           ops->select(st, cache_t, keep)            S <- kept part of A_t
 *   ops->destroy(st)
 *
 * When the experiment composes a rule with the policy's scores (sim/alloc.h: alloc = ada,
 * chunk, value_weight), the cache layer replaces the select call by
 *           if ops->scores(st, cache_t, score, fixed):   the policy's ranking
 *               keep <- the cache layer's choice from score and fixed
 *               [ops->kept(st, cache_t, keep)]           the policy drops the evicted
 *
 * During prefill (t < P) nothing is evicted: A_t = {0..t} and row_t is the full-cache row
 * p_t. At t = P-1 select compresses the prompt to the budget. At a decode step t >= P the
 * row is the renormalised row o_t over A_t (README rule 2). A policy may keep every
 * position (full, SnapKV during decode): that is its published rule, and the engine does
 * not second-guess it.
 *
 * Adding a policy: one file policies/NAME.c exporting one `const kv_policy_ops
 * kv_policy_NAME`, plus one line in policies/registry.c. Everything else is static. Its
 * hand-worked rule tests go in tests/test_rules_NAME.c (the conformance test requires
 * the file); README "Contributing" lists the steps.
 */
#ifndef KV_POLICY_H
#define KV_POLICY_H

#include <stddef.h>

#define KV_MAX_PARAMS 8
#define KV_ERRMSG 256

/* ------------------------------------------------------------ parameters */

typedef enum {
    KV_PARAM_INT,    /* whole number in [min, max]; if `choices` holds a word (e.g. "all"),
                        that word is accepted too and stored as 0 (so min must be >= 1) */
    KV_PARAM_REAL,   /* real number in [min, max] */
    KV_PARAM_CHOICE  /* one of the '|'-separated words in choices; stored as its index */
} kv_param_type;

/* One row of a policy's parameter table; parsing, validation and --help all read it. */
typedef struct {
    const char *name;          /* e.g. "window" */
    kv_param_type type;
    const char *default_text;  /* e.g. "32", "0.5", "max" */
    double min, max;           /* inclusive range for INT and REAL */
    const char *choices;       /* "max|avg" for CHOICE; for INT an optional word meaning 0
                                  ("all"); NULL otherwise */
    const char *help;          /* one line, with units */
} kv_param_spec;

/* Parsed values, in the order of the policy's table. CHOICE values hold the index of
 * the word (0 for the first). */
typedef struct {
    double v[KV_MAX_PARAMS];
} kv_param_values;

/* --------------------------------------------------- what a policy sees */

/* Fixed facts of one cache, given at creation. Borrowed for the call only. */
typedef struct {
    int budget;        /* B: most past tokens held when a decode query attends, >= 1 */
    int group_size;    /* query heads whose scores this cache combines (GQA group) */
    int n_tokens;      /* T: positions are 0..T-1 */
    int prefill_len;   /* P */
    int layer;         /* for messages and for seeding */
    int kv_head;       /* index of the cache within its layer */
    unsigned long seed;/* per-cache seed derived by the engine; use it for any randomness */
    int head_dim;      /* elements of a key or value vector when the driver hands them
                          (ops->needs), else 0 */
    int held_cap;      /* the most past positions the cache may hold after a select when
                          the cache layer shares budgets across caches (alloc = ada), for
                          sizing; 0 or below budget: budget */
} kv_policy_ctx;

/*
 * One observed query row for a cache. pos[0..n) are the positions of A_t in ascending
 * order (pos[n-1] == t). w[h * n + i] is the attention of the group's h-th query head
 * (0 <= h < n_heads) on pos[i]: the full-cache row p_t during prefill, the renormalised
 * row o_t at decode steps (all zero where the head's recall was 0); NULL when the
 * policy's reads_row said it would not read it. Borrowed: valid only during the observe
 * call.
 */
typedef struct {
    int t;
    int n;
    const int *pos;
    int n_heads;
    const double *w;
    int is_prefill;    /* 1 when t < P */
} kv_row;

/* The cache when the policy must choose: A_t in ascending order (pos[n-1] == t). */
typedef struct {
    int t;
    int n;
    const int *pos;
    int budget;        /* B */
    int is_prefill_end;/* 1 at t == P-1 (the prompt compression), 0 at decode steps */
    /* For a policy whose `needs` asks for them (else NULL): the cache's key (value)
     * vectors as stored in the trace (post-rotary keys, the cache's KV head), float32,
     * head_dim each: position pos[i]'s key at keys + pos[i] * head_dim. Borrowed for the
     * call. */
    const float *keys;
    const float *values;
    int head_dim;
} kv_cache_view;

/* What a policy reads besides attention rows (ops->needs, a bit set). */
enum { KV_NEEDS_KEYS = 1, KV_NEEDS_VALUES = 2 };

/* --------------------------------------------------------- the contract */

typedef struct kv_policy_ops {
    const char *name;          /* registry name, lowercase */
    const char *summary;       /* one line for `kvsim policies` */
    const char *citation;      /* paper and rule, one line */
    const kv_param_spec *params;
    int n_params;              /* entries of params: set both with KV_PARAM_TABLE(table) */
    int bounded;               /* 1 if |S| <= B after every select with the default values
                                  (kv_tokens = B+1 per cache once P > B); 0 for full and
                                  snapkv. max_held refines it per parameter values. */
    int per_step_ceiling;      /* 1 for a per-step ceiling reference (oracle): summary.tsv
                                  sets each run's recall beside the recall of this policy's
                                  run at the same budget and kv_granularity
                                  (oracle_recall_mean). 0 for every realisable policy. */

    /* Checks values (already range-checked against the table) together with a budget.
     * Returns 0 if the pair is valid, else 1 with a message naming the rule, e.g.
     * "budget 16 must exceed window 32". May be NULL when any in-range values work. */
    int (*check)(const kv_param_values *values, int budget, char *err, size_t err_len);

    /* Allocates the state for one cache. Returns NULL only when out of memory. */
    void *(*create)(const kv_param_values *values, const kv_policy_ctx *ctx);

    /* Records row t (see kv_row). O(n * n_heads) work. Cannot fail. */
    void (*observe)(void *state, const kv_row *row);

    /* Whether the observe of row t will read the attention values w (1) or only t, n and
     * pos (0): the engine then skips converting and renormalising the row (for a policy
     * that ignores rows, the largest part of its step) and passes w = NULL. Called just
     * before that observe. NULL: always 1. kv_reads_no_row returns 0. */
    int (*reads_row)(const void *state, int t);

    /* Chooses the positions to keep: sets keep[i] to 1 or 0 for each cache->pos[i].
     * A bounded policy keeps at most cache->budget positions. One selection: the policy
     * ranks once on its current state (README rule 5). O(n) expected work apart from
     * the policy's own scoring. Cannot fail. */
    void (*select)(void *state, const kv_cache_view *cache, unsigned char *keep);

    /* Bytes of policy metadata held when the cache holds n_cached positions (the formula
     * is in the policy's file). NULL means none. */
    size_t (*meta_bytes)(const void *state, int n_cached);

    /* Frees the state. NULL is ignored. */
    void (*destroy)(void *state);

    /* ---- optional slots (NULL for the ordinary policies) ---- */

    /* Where the policy keeps its caches: one per KV head (NULL or KV_SCOPE_KV_HEAD), or
     * one per layer (KV_SCOPE_LAYER: every query head of the layer in one group, and its
     * positions stored by every KV head, so they count n_kv_heads times in kv_tokens). */
    int (*scope)(const kv_param_values *values);

    /* Chooses S before the query attends (it attends to nothing itself): for ceiling
     * references that may re-admit evicted tokens (oracle). Called at every
     * decode step before the query attends, with the full-cache rows p_t over all of
     * 0..t (full->pos = 0..t, full->n = t+1, full->w the group's p_t): sets keep[j] = 1
     * for the past positions that form S for this step (at most B for a bounded policy);
     * the engine then attends over S u {t} and carries on with observe and select. */
    void (*preselect)(void *state, const kv_row *full, unsigned char *keep);

    /* Offline references that look into the future (lookahead). Before a layer is
     * replayed the engine streams every full-cache row to prescan, t = 0..T-1 in order,
     * with the same kv_row layout as preselect. */
    void (*prescan)(void *state, const kv_row *full);

    /* The most past tokens the cache may hold after any select or preselect, for these values
     * at budget B, or -1 for no bound; the engine stops the run (internal error) when a
     * cache holds more. For rules that let S grow between evictions (morphkv evict_every,
     * snapkv decode = recompress with interval > 1). NULL: B when `bounded`, else no
     * bound (kv_policy_max_held). */
    int (*max_held)(const kv_param_values *values, int budget);

    /* KV_NEEDS_KEYS and/or KV_NEEDS_VALUES: the view handed to select and scores carries
     * the key (value) vectors of its positions; the engine refuses a trace without q/k
     * (without v) before the replay. 0 for attention-only policies. */
    int needs;

    /* Position scores, for the rules the cache layer composes with any scorer (sim/alloc.h:
     * alloc = pyramid | ada, chunk, value_weight). A policy that ranks positions by a score
     * implements it so that its own select equals "keep every fixed position and the
     * min(n, B) - (fixed count) best of the others by score (ties to the more recent,
     * kv_keep_top)". At a select the policy would make, with the same state and view:
     * returns 0 when its rule evicts nothing at this step whatever the budget (SnapKV's
     * decode steps, MorphKV between evict_every steps), else 1 after setting, for every
     * view index i, score[i] (higher is kept first; finite) and fixed[i] = 1 for the
     * positions the rule always keeps (its recent or observation window), 0 otherwise.
     * It must leave the policy in the state its select would (the cache layer then keeps
     * a set of its own and reports it with kept, below). NULL: the policy has no scores
     * (window, streamingllm, random, full, references) and refuses those options. */
    int (*scores)(void *state, const kv_cache_view *cache, double *score,
                  unsigned char *fixed);

    /* After scores returned 1: the set the cache layer kept (keep[i] for each view
     * index), so the policy drops the state of the evicted. NULL when nothing to drop. */
    void (*kept)(void *state, const kv_cache_view *cache, const unsigned char *keep);

    /* With scores: the positions the rule always keeps at budget B (its window), for
     * PyramidKV's rule, which shares out B - window per layer and adds the window on top.
     * NULL: 0. */
    int (*window)(const kv_param_values *values, int budget);
} kv_policy_ops;

enum { KV_SCOPE_KV_HEAD = 0, KV_SCOPE_LAYER = 1 };

/* In an ops table: .params and .n_params from one static const kv_param_spec array, so
 * the count cannot drift from the table. */
#define KV_PARAM_TABLE(table) .params = (table), \
                              .n_params = (int)(sizeof(table) / sizeof((table)[0]))

/* ----------------------------------------------------------- registry */

/* The NULL-terminated table of every policy, in the order `kvsim policies` lists them. */
extern const kv_policy_ops *const kv_policy_registry[];

/* The policy registered under name (exact match), or NULL. */
const kv_policy_ops *kv_policy_find(const char *name);

/* The registered policy name closest to name (edit distance; the first in registry
 * order among equals), for "did you mean". Never NULL: the registry is not empty; the
 * caller judges whether it is close enough (kv_edit_distance). Borrowed, static. */
const char *kv_policy_suggest(const char *name);

/* The bound the engine enforces on |S| after every select and preselect: ops->max_held(values,
 * budget) when the slot is set, else budget for a bounded policy and -1 (no bound)
 * otherwise. Cannot fail. */
int kv_policy_max_held(const kv_policy_ops *ops, const kv_param_values *values, int budget);

/* ------------------------------------------------ parameters, shared */

/* Fills values with the defaults of ops's table. Cannot fail (tables are checked by the
 * conformance test). */
void kv_params_defaults(const kv_policy_ops *ops, kv_param_values *values);

/* Index of parameter name in ops's table, or -1. */
int kv_params_index(const kv_policy_ops *ops, const char *name);

/* Parses text as a value of spec (its type, range and choices) into *out. Returns 0, or
 * 1 with "window must be an integer in [1, 1000000], got '0'" in err. */
int kv_param_parse(const kv_param_spec *spec, const char *text, double *out, char *err,
                   size_t err_len);

/* Parses text as parameter `name` of ops into values. Returns 0, or 1 with a message
 * ("unknown parameter 'windw' for morphkv (did you mean 'window'?)", "window must be an
 * integer in [1, 1000000], got '0'", "fusion must be one of sum|max, got 'avg'"). */
int kv_params_set(const kv_policy_ops *ops, kv_param_values *values, const char *name,
                  const char *text, char *err, size_t err_len);

/* Writes "name=value" pairs of values (the non-default ones only if only_changed) into
 * buf, comma-separated, for labels and logs. */
void kv_params_format(const kv_policy_ops *ops, const kv_param_values *values,
                      int only_changed, char *buf, size_t buf_len);

/* --------------------------------------------- helpers for policy files */

/* Levenshtein distance between two names (insert, delete and substitute each cost 1;
 * only the first 63 bytes of each are compared). For "did you mean" suggestions.
 * Cannot fail. */
int kv_edit_distance(const char *a, const char *b);

/* The rule every check() starts with: returns 0 if budget >= 1, else 1 with
 * "budget 0 must be at least 1" in err. */
int kv_check_budget(int budget, char *err, size_t err_len);

/* kv_check_budget, then the rule of a policy that always keeps its `window` most recent
 * tokens: budget >= window, else 1 with "budget 4 must be at least knorm window 8 (use
 * --set knorm.window=N with N <= 4)" (policy is the policy's name) in err. Returns 0 or 1. */
int kv_check_budget_window(const char *policy, int budget, int window, char *err,
                           size_t err_len);

typedef enum { KV_GQA_SUM = 0, KV_GQA_MAX = 1 } kv_gqa_mode;

/* The `gqa` parameter row every group-combining policy lists ("sum|max", default sum). */
#define KV_PARAM_GQA { "gqa", KV_PARAM_CHOICE, "sum", 0, 0, "sum|max", \
        "combine the scores of the query heads sharing a KV head: sum or max (rule 3)" }

/* A reads_row for policies whose observe never reads w (full, window, ...): 0. */
int kv_reads_no_row(const void *state, int t);

/* For a policy that keeps no state (full, window): a create that allocates nothing and
 * returns a non-NULL token (it cannot fail), the destroy that matches it, and an observe
 * that records nothing (pair it with reads_row = kv_reads_no_row). */
void *kv_stateless_create(const kv_param_values *values, const kv_policy_ctx *ctx);
void kv_stateless_destroy(void *state);
void kv_observe_nothing(void *state, const kv_row *row);

/* out[i] = sum or max over h < n_heads of per_head[h * stride + i], for i < n. */
void kv_gqa_combine(kv_gqa_mode mode, int n_heads, int n, const double *per_head,
                    size_t stride, double *out);

/*
 * Marks in keep the k best of the candidates cand[0..n_cand), which are indices into the
 * cache view (0 <= cand[i] < n). score[] and pos[] are indexed by cache-view index too:
 * candidate c has score score[c] and position pos[c]. keep[c] is set to 1 for the k kept
 * candidates and, when k > 0, to 0 for the others; entries that are not candidates are
 * not touched. Ranking: higher score first; equal scores keep the more recent position
 * (larger pos), README rule 4. k <= 0 keeps none (keep untouched), k >= n_cand keeps all.
 * Expected O(n_cand): one scan when a single candidate goes, else quickselect of the
 * smaller side (the kept or the evicted). scratch holds at least n_cand
 * ints. Cannot fail. Positions of the candidates are distinct and scores are not NaN,
 * so the order is strict and the kept set unique (the pivot choice cannot change it).
 */
void kv_keep_top(const double *score, const int *pos, const int *cand, int n_cand, int k,
                 int *scratch, unsigned char *keep);

/* kv_keep_top over the whole view pos[0..n) when the scores are filed by position:
 * candidate i scores by_pos[pos[i]]. Keeps all when n <= k. score, cand and scratch are
 * the caller's buffers of at least n entries (overwritten); keep[0..n) is set to 0 or 1.
 * Cannot fail. */
/*
 * The selection every scorer's select shares (ops->scores): keeps every position with
 * fixed[i] set and the min(n, budget) - (fixed count) best of the others by score[]
 * (kv_keep_top: ties to the more recent); keeps all when n <= budget. keep[0..n) is set
 * to 0 or 1. cand and scratch hold at least n ints. Cannot fail.
 */
void kv_keep_scored(const double *score, const unsigned char *fixed, const int *pos, int n,
                    int budget, int *cand, int *scratch, unsigned char *keep);

void kv_keep_top_by_position(const double *by_pos, const int *pos, int n, int k,
                             double *score, int *cand, int *scratch, unsigned char *keep);

/*
 * An exact sum of non-negative doubles, for scores that are updated by adding and later
 * subtracting terms (normalisers over a changing set, sums over a sliding range of rows).
 * A double sum would keep the rounding residue of every removed term, so two positions
 * whose remaining terms are equal could rank by noise instead of by rule 4; this sum is
 * a 192-bit integer on the grid 2^-149, which holds every float32 and every double
 * >= 2^-96 exactly (smaller parts are truncated, identically on add and subtract). So
 * adding and then subtracting a value restores the sum bit for bit, and the value does
 * not depend on the order of the terms. Terms must lie in [0, 2^40] and every partial
 * sum below 2^43 (attention sums over rows, heads and tokens are far below); a sum never
 * goes negative when only added terms are subtracted. Zero-initialise to start at 0.
 */
typedef struct {
    unsigned long long limb[3]; /* little-endian 64-bit limbs, in units of 2^-149 */
} kv_exact_sum;

/* s += x (x in [0, 2^40], not NaN). Cannot fail. */
void kv_exact_add(kv_exact_sum *s, double x);

/* s += x[0] + ... + x[n-1] (each in [0, 2^40], not NaN): the same sum as n calls of
 * kv_exact_add, several times faster (mantissas are summed per exponent first). x is
 * borrowed for the call; n >= 0. Cannot fail. */
void kv_exact_add_many(kv_exact_sum *s, const double *x, int n);

/* s -= x, for an x that was added before (same truncation); were more subtracted than
 * the sum holds, the sum becomes 0 (it never wraps). Cannot fail. */
void kv_exact_sub(kv_exact_sum *s, double x);

/* The sum as a double, truncated to 53 significant bits: monotone (a larger exact sum
 * never gives a smaller double) and equal sums give equal doubles. Cannot fail. */
double kv_exact_value(const kv_exact_sum *s);

#endif
