/*
 * model.c - llama2.c-layout checkpoint loader and float32 forward pass (model.h).
 *
 * Written from the layout and forward-pass description in ../shared/models/README.md:
 *
 *   1. x = embedding row of the token
 *   2. per layer l:
 *      a. xb = RMSNorm(x) * attention gain; q = wq xb, k = wk xb, v = wv xb
 *      b. rotary embedding of q and k: pair (i, i+1), i even, j = i mod head_size,
 *         angle = pos / 10000^(j / head_size)
 *      c. per query head h (KV head g = h / (n_heads / n_kv_heads)): softmax over
 *         positions 0..pos of q_h . k_g / sqrt(head_size); output = weighted sum of v_g
 *      d. x += wo (concatenated head outputs)
 *      e. xb = RMSNorm(x) * FFN gain; x += w2 (silu(w1 xb) * (w3 xb))
 *   3. logits = classifier (RMSNorm(x) * final gain)
 *
 * Bit-reproducibility (model.h) is why the matrix products are our own panel kernels
 * (see "panels of weights" below) rather than BLAS calls: each output is summed in input
 * order, as a plain loop would, while the positions of a prefill share each weight load.
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#include "traces/model.h"
#include "traces/le.h"
#include "traces/sha256.h"
#include "traces/trace.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>


#define HEADER_BYTES 28
#define N_HEADER 7
#define RMS_EPS 1e-5f
#define ROPE_BASE 10000.0

/* The weight tensors in file order (README "Weights"); rope_tables are skipped. */
enum {
    W_EMB, W_ATT_NORM, W_WQ, W_WK, W_WV, W_WO, W_FFN_NORM, W_W1, W_W2, W_W3,
    W_FINAL_NORM, W_ROPE_TABLES, W_CLS, N_TENSORS
};

static const char *const tensor_names[N_TENSORS] = {
    "token embedding", "attention RMSNorm gains", "wq", "wk", "wv", "wo",
    "FFN RMSNorm gains", "w1", "w2", "w3", "final RMSNorm gain", "RoPE tables",
    "classifier"
};

struct kv_model {
    kv_model_config cfg;
    float *data;                     /* the file's floats while loading, then NULL */
    float *store;                    /* the weights as the forward pass reads them, owned */
    /* into store: matrices in panels (see pack_weights), vectors as in the file;
     * w[W_CLS] = w[W_EMB] when shared, w[W_ROPE_TABLES] NULL (not kept) */
    const float *w[N_TENSORS];
    size_t layer_stride[N_TENSORS];  /* floats from one layer's matrix to the next */
    char sha256[KV_MODEL_SHA256_HEX];
};

static int pack_weights(kv_model *m);

/* ------------------------------------------------------------------ loading */

/* Header field ranges: wide enough for any llama2.c export, narrow enough that the size
 * arithmetic below cannot overflow 64 bits and a garbage header is caught early. */
static const struct {
    const char *name;
    long long lo, hi;
} field_range[N_HEADER] = {
    {"dim", 2, 1 << 16},        {"hidden_dim", 1, 1 << 20}, {"n_layers", 1, 1 << 10},
    {"n_heads", 1, 1 << 12},    {"n_kv_heads", 1, 1 << 12}, {"vocab_size", 1, 1 << 24},
    {"seq_len", 1, 1 << 24},
};

/* Checks the decoded header h (vocab_size already made positive) and fills cfg. */
static int check_header(const char *path, const long long h[N_HEADER], int shared,
                        kv_model_config *cfg, char *err, size_t err_len)
{
    for (int i = 0; i < N_HEADER; i++) {
        if (h[i] < field_range[i].lo || h[i] > field_range[i].hi) {
            snprintf(err, err_len,
                     "%s: header field %s is %lld, outside %lld..%lld "
                     "(not a llama2.c checkpoint?)",
                     path, field_range[i].name, h[i], field_range[i].lo, field_range[i].hi);
            return KV_EMODEL_FORMAT;
        }
    }
    cfg->dim = (int)h[0];
    cfg->hidden_dim = (int)h[1];
    cfg->n_layers = (int)h[2];
    cfg->n_heads = (int)h[3];
    cfg->n_kv_heads = (int)h[4];
    cfg->vocab_size = (int)h[5];
    cfg->seq_len = (int)h[6];
    cfg->shared_classifier = shared;
    if (cfg->dim % cfg->n_heads != 0) {
        snprintf(err, err_len, "%s: header dim %d is not a multiple of n_heads %d", path,
                 cfg->dim, cfg->n_heads);
        return KV_EMODEL_FORMAT;
    }
    if (cfg->n_kv_heads > cfg->n_heads || cfg->n_heads % cfg->n_kv_heads != 0) {
        snprintf(err, err_len, "%s: header n_heads %d is not a multiple of n_kv_heads %d",
                 path, cfg->n_heads, cfg->n_kv_heads);
        return KV_EMODEL_FORMAT;
    }
    cfg->head_size = cfg->dim / cfg->n_heads;
    if (cfg->head_size % 2 != 0) {
        snprintf(err, err_len,
                 "%s: head size dim/n_heads = %d is odd; rotary embedding needs pairs", path,
                 cfg->head_size);
        return KV_EMODEL_FORMAT;
    }
    cfg->kv_dim = cfg->n_kv_heads * cfg->head_size;
    return KV_MODEL_OK;
}

/* Floats in each tensor, in file order (README "Weights"). */
static void tensor_sizes(const kv_model_config *c, uint64_t n[N_TENSORS])
{
    uint64_t d = (uint64_t)c->dim, l = (uint64_t)c->n_layers, hd = (uint64_t)c->hidden_dim;
    uint64_t kvd = (uint64_t)c->kv_dim, v = (uint64_t)c->vocab_size;
    n[W_EMB] = v * d;
    n[W_ATT_NORM] = l * d;
    n[W_WQ] = l * d * d;
    n[W_WK] = l * kvd * d;
    n[W_WV] = l * kvd * d;
    n[W_WO] = l * d * d;
    n[W_FFN_NORM] = l * d;
    n[W_W1] = l * hd * d;
    n[W_W2] = l * d * hd;
    n[W_W3] = l * hd * d;
    n[W_FINAL_NORM] = d;
    n[W_ROPE_TABLES] = 2 * ((uint64_t)c->seq_len * (uint64_t)c->head_size / 2);
    n[W_CLS] = c->shared_classifier ? 0 : v * d;
}

static void describe_header(const kv_model_config *c, char *buf, size_t len)
{
    snprintf(buf, len,
             "dim %d, hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, vocab_size %d%s, "
             "seq_len %d",
             c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
             c->shared_classifier ? c->vocab_size : -c->vocab_size,
             c->shared_classifier ? "" : " (unshared classifier)", c->seq_len);
}

/* Reads the header of f (size_bytes long) and checks it and the file size. */
static int read_header(FILE *f, const char *path, long long size_bytes, kv_model_config *cfg,
                       unsigned char raw[HEADER_BYTES], uint64_t *n_floats, char *err,
                       size_t err_len)
{
    if (size_bytes < HEADER_BYTES) {
        snprintf(err, err_len, "%s: file is %lld bytes, shorter than the %d-byte header", path,
                 size_bytes, HEADER_BYTES);
        return KV_EMODEL_FORMAT;
    }
    if (fread(raw, 1, HEADER_BYTES, f) != HEADER_BYTES) {
        snprintf(err, err_len, "%s: cannot read the header: %s", path,
                 ferror(f) ? strerror(errno) : "unexpected end of file");
        return KV_EMODEL_IO;
    }
    long long h[N_HEADER];
    for (int i = 0; i < N_HEADER; i++)
        h[i] = kv_le32(raw + 4 * i);
    int shared = h[5] > 0;
    h[5] = h[5] < 0 ? -h[5] : h[5]; /* int32 -> long long: INT32_MIN cannot overflow */
    int rc = check_header(path, h, shared, cfg, err, err_len);
    if (rc)
        return rc;
    uint64_t n[N_TENSORS];
    tensor_sizes(cfg, n);
    *n_floats = 0;
    for (int i = 0; i < N_TENSORS; i++)
        *n_floats += n[i];
    uint64_t need = HEADER_BYTES + 4 * *n_floats;
    if ((uint64_t)size_bytes != need) {
        char desc[256];
        describe_header(cfg, desc, sizeof desc);
        int trunc = (uint64_t)size_bytes < need;
        snprintf(err, err_len, "%s: file is %lld bytes, the header (%s) needs %llu: %s", path,
                 size_bytes, desc, (unsigned long long)need,
                 trunc ? "truncated" : "trailing bytes after the weights");
        return KV_EMODEL_FORMAT;
    }
    if (*n_floats > SIZE_MAX / sizeof(float)) {
        snprintf(err, err_len, "%s: %llu weights do not fit in memory", path,
                 (unsigned long long)*n_floats);
        return KV_EMODEL_NOMEM;
    }
    return KV_MODEL_OK;
}

/* The file stores little-endian floats; swap on a big-endian host. */
static void floats_from_le(float *a, size_t n)
{
    const uint32_t probe = 1;
    unsigned char first;
    memcpy(&first, &probe, 1);
    if (first == 1)
        return;
    for (size_t i = 0; i < n; i++) {
        unsigned char b[4], s[4];
        memcpy(b, &a[i], 4);
        s[0] = b[3], s[1] = b[2], s[2] = b[1], s[3] = b[0];
        memcpy(&a[i], s, 4);
    }
}

/* Points m->w at the tensors inside m->data and rejects non-finite weights, which a
 * file of the right size but random content almost surely has. */
static int map_tensors(kv_model *m, const char *path, char *err, size_t err_len)
{
    uint64_t n[N_TENSORS];
    tensor_sizes(&m->cfg, n);
    const float *p = m->data;
    for (int i = 0; i < N_TENSORS; i++) {
        m->w[i] = p;
        for (uint64_t e = 0; e < n[i]; e++) {
            if (!isfinite(p[e])) {
                snprintf(err, err_len, "%s: weight %llu of the %s is %s, not a finite number",
                         path, (unsigned long long)e, tensor_names[i],
                         isnan(p[e]) ? "NaN" : "infinite");
                return KV_EMODEL_FORMAT;
            }
        }
        p += n[i];
    }
    if (m->cfg.shared_classifier)
        m->w[W_CLS] = m->w[W_EMB];
    return KV_MODEL_OK;
}

int kv_model_load(const char *path, kv_model **out, char *err, size_t err_len)
{
    *out = NULL;
    struct stat st;
    /* a FIFO would block fopen; a missing file is reported by fopen below */
    if (stat(path, &st) == 0 && kv_check_regular_file(path, err, err_len) != 0)
        return KV_EMODEL_IO;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_len, "%s: cannot open the checkpoint: %s", path, strerror(errno));
        return KV_EMODEL_IO;
    }
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, err_len, "%s: not a regular file", path);
        fclose(f);
        return KV_EMODEL_IO;
    }
    kv_model *m = calloc(1, sizeof *m);
    if (!m) {
        fclose(f);
        snprintf(err, err_len, "%s: out of memory", path);
        return KV_EMODEL_NOMEM;
    }
    unsigned char raw[HEADER_BYTES];
    uint64_t n_floats = 0;
    int rc = read_header(f, path, (long long)st.st_size, &m->cfg, raw, &n_floats, err,
                         err_len);
    if (!rc) {
        m->data = malloc((size_t)n_floats * sizeof(float));
        if (!m->data) {
            snprintf(err, err_len, "%s: out of memory for %llu weights", path,
                     (unsigned long long)n_floats);
            rc = KV_EMODEL_NOMEM;
        }
    }
    if (!rc && fread(m->data, sizeof(float), (size_t)n_floats, f) != (size_t)n_floats) {
        snprintf(err, err_len, "%s: cannot read the weights: %s", path,
                 ferror(f) ? strerror(errno) : "file shrank while reading");
        rc = KV_EMODEL_IO;
    }
    fclose(f);
    if (!rc && kv_sha256_hex(raw, HEADER_BYTES, m->data, (size_t)n_floats * sizeof(float),
                             m->sha256) != 0) {
        snprintf(err, err_len, "%s: SHA-256 computation failed (OpenSSL)", path);
        rc = KV_EMODEL_NOMEM;
    }
    if (!rc) {
        floats_from_le(m->data, (size_t)n_floats);
        rc = map_tensors(m, path, err, err_len);
    }
    if (!rc && pack_weights(m) != KV_MODEL_OK) {
        snprintf(err, err_len, "%s: out of memory for the packed weights", path);
        rc = KV_EMODEL_NOMEM;
    }
    if (rc) {
        kv_model_free(m);
        return rc;
    }
    *out = m;
    return KV_MODEL_OK;
}

const kv_model_config *kv_model_get_config(const kv_model *m) { return &m->cfg; }

const char *kv_model_sha256(const kv_model *m) { return m->sha256; }

void kv_model_free(kv_model *m)
{
    if (!m)
        return;
    free(m->data);
    free(m->store);
    free(m);
}

/* ------------------------------------------------------------ panels of weights */

/*
 * Why panels: the forward pass multiplies every weight matrix W [n_out, n_in] by one or
 * more input vectors. A plain loop per output (y[i] = sum over j, in order) is exact and
 * machine-independent but runs at about 1 GFLOP/s; an optimised BLAS is faster but picks
 * its kernel, and so its summation order, by CPU, and sums prefill (matrix-matrix) and
 * decode (matrix-vector) positions in different orders, so one rounding difference would
 * change a sampled token and every trace value after it. Instead each matrix is stored in
 * panels of PANEL rows, input-major: panel p holds W[p*PANEL + lane][j] at
 * (p * n_in + j) * PANEL + lane, rows past n_out zero. A SIMD register then holds PANEL
 * outputs, each summed over j in input order with a separate multiply and add, exactly
 * like the plain loop, while the weights stream contiguously and, for a batch of
 * positions, are reused from registers. Measured against OpenBLAS in tests/bench.c.
 */
#define PANEL 8
#define ALIGN_FLOATS 16 /* tensors start on 64-byte boundaries */

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

/* Rows and columns of one layer's matrix of tensor t; 0 rows when t is not a matrix. */
static void matrix_shape(const kv_model_config *c, int t, int *n_out, int *n_in)
{
    *n_out = 0;
    *n_in = c->dim;
    switch (t) {
    case W_WQ: case W_WO: *n_out = c->dim; break;
    case W_WK: case W_WV: *n_out = c->kv_dim; break;
    case W_W1: case W_W3: *n_out = c->hidden_dim; break;
    case W_W2: *n_out = c->dim; *n_in = c->hidden_dim; break;
    case W_CLS: *n_out = c->vocab_size; break;
    default: break;
    }
}

/* Copies one row-major matrix src [n_out, n_in] into panels at dst (zero padded). */
static void pack_panels(float *dst, const float *src, int n_out, int n_in)
{
    size_t ni = (size_t)n_in, n_rows = round_up((size_t)n_out, PANEL);
    for (size_t i = 0; i < n_rows; i++)
        for (size_t j = 0; j < ni; j++)
            dst[((i / PANEL) * ni + j) * PANEL + i % PANEL] =
                i < (size_t)n_out ? src[i * ni + j] : 0.0f;
}

/* Floats tensor t takes in the store: its matrices in panels, or its file size. */
static size_t stored_floats(const kv_model_config *c, int t, const uint64_t file_n[N_TENSORS],
                            size_t *layer_stride)
{
    int n_out, n_in;
    matrix_shape(c, t, &n_out, &n_in);
    *layer_stride = 0;
    if (t == W_ROPE_TABLES || (t == W_EMB && c->shared_classifier))
        return 0;
    if (n_out == 0)
        return round_up((size_t)file_n[t], ALIGN_FLOATS);
    *layer_stride = round_up((size_t)n_out, PANEL) * (size_t)n_in;
    size_t layers = t == W_CLS ? 1 : (size_t)c->n_layers;
    return round_up(layers * *layer_stride, ALIGN_FLOATS);
}

/* Moves the weights from m->data (file layout, m->w into it) into m->store: matrices in
 * panels, vectors copied, RoPE tables dropped; frees m->data. Returns 0 or
 * KV_EMODEL_NOMEM (m unchanged). */
static int pack_weights(kv_model *m)
{
    const kv_model_config *c = &m->cfg;
    uint64_t file_n[N_TENSORS];
    tensor_sizes(c, file_n);
    size_t offset[N_TENSORS], size[N_TENSORS], stride[N_TENSORS], total = 0;
    for (int t = 0; t < N_TENSORS; t++) {
        offset[t] = total;
        size[t] = stored_floats(c, t, file_n, &stride[t]);
        total += size[t];
    }
    float *store = aligned_alloc(64, total * sizeof(float));
    if (!store)
        return KV_EMODEL_NOMEM;
    const float *cls = m->cfg.shared_classifier ? m->w[W_EMB] : m->w[W_CLS];
    for (int t = 0; t < N_TENSORS; t++) {
        int n_out, n_in;
        matrix_shape(c, t, &n_out, &n_in);
        const float *src = t == W_CLS ? cls : m->w[t];
        size_t layers = t == W_CLS ? 1 : (size_t)c->n_layers;
        if (stride[t])
            for (size_t l = 0; l < layers; l++)
                pack_panels(store + offset[t] + l * stride[t],
                            src + l * (size_t)n_out * (size_t)n_in, n_out, n_in);
        else if (size[t])
            memcpy(store + offset[t], src, (size_t)file_n[t] * sizeof(float));
    }
    for (int t = 0; t < N_TENSORS; t++) {
        m->w[t] = store + offset[t];
        m->layer_stride[t] = stride[t];
    }
    m->w[W_ROPE_TABLES] = NULL;
    if (c->shared_classifier)
        m->w[W_EMB] = m->w[W_CLS];
    free(m->data);
    m->data = NULL;
    m->store = store;
    return KV_MODEL_OK;
}

/* The panels of layer l's matrix of tensor t (l = 0 for the classifier). */
static const float *layer_weights(const kv_model *m, int t, int l)
{
    return m->w[t] + (size_t)l * m->layer_stride[t];
}

/* Step 1: the embedding row of token into x [dim]; read from the classifier's panels when
 * the two are shared. */
static void embedding_row(const kv_model *m, int token, float *x)
{
    size_t d = (size_t)m->cfg.dim, tok = (size_t)token;
    if (!m->cfg.shared_classifier) {
        memcpy(x, m->w[W_EMB] + tok * d, d * sizeof(float));
        return;
    }
    const float *panel = m->w[W_CLS] + (tok / PANEL) * d * PANEL;
    for (size_t j = 0; j < d; j++)
        x[j] = panel[j * PANEL + tok % PANEL];
}

typedef float v8f __attribute__((vector_size(PANEL * sizeof(float))));

/* Writes the valid outputs of panel p (rows p*PANEL.. below n_out) from acc into y. */
static inline __attribute__((always_inline)) void store_panel(float *y, int p,
                                                             const v8f *acc, int n_out)
{
    int n = n_out - p * PANEL < PANEL ? n_out - p * PANEL : PANEL;
    memcpy(y + (size_t)p * PANEL, acc, (size_t)n * sizeof(float));
}

/* One position, panels p..p+3: four independent sums keep the adder busy. */
static inline __attribute__((always_inline)) void
tile_1x4(float *y, const float *P, const float *x, int p, int n_out, int n_in)
{
    const v8f *w = (const v8f *)(P + (size_t)p * (size_t)n_in * PANEL);
    size_t ni = (size_t)n_in;
    v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    for (size_t j = 0; j < ni; j++) {
        v8f xj = (v8f){0} + x[j];
        a0 = a0 + w[j] * xj;
        a1 = a1 + w[ni + j] * xj;
        a2 = a2 + w[2 * ni + j] * xj;
        a3 = a3 + w[3 * ni + j] * xj;
    }
    store_panel(y, p, &a0, n_out);
    store_panel(y, p + 1, &a1, n_out);
    store_panel(y, p + 2, &a2, n_out);
    store_panel(y, p + 3, &a3, n_out);
}

/* One position, panel p. */
static inline __attribute__((always_inline)) void
tile_1x1(float *y, const float *P, const float *x, int p, int n_out, int n_in)
{
    const v8f *w = (const v8f *)(P + (size_t)p * (size_t)n_in * PANEL);
    v8f a = {0};
    for (size_t j = 0; j < (size_t)n_in; j++)
        a = a + w[j] * ((v8f){0} + x[j]);
    store_panel(y, p, &a, n_out);
}

/* Four positions (rows of x and y n_in and n_out apart), panels p and p+1: each weight
 * load serves four positions. */
static inline __attribute__((always_inline)) void
tile_4x2(float *y, const float *P, const float *x, int p, int n_out, int n_in)
{
    size_t ni = (size_t)n_in, no = (size_t)n_out;
    const v8f *w = (const v8f *)(P + (size_t)p * ni * PANEL);
    const float *x0 = x, *x1 = x + ni, *x2 = x + 2 * ni, *x3 = x + 3 * ni;
    v8f a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0},
        a31 = {0};
    for (size_t j = 0; j < ni; j++) {
        v8f u = w[j], v = w[ni + j];
        v8f b0 = (v8f){0} + x0[j], b1 = (v8f){0} + x1[j];
        v8f b2 = (v8f){0} + x2[j], b3 = (v8f){0} + x3[j];
        a00 = a00 + u * b0, a01 = a01 + v * b0;
        a10 = a10 + u * b1, a11 = a11 + v * b1;
        a20 = a20 + u * b2, a21 = a21 + v * b2;
        a30 = a30 + u * b3, a31 = a31 + v * b3;
    }
    store_panel(y, p, &a00, n_out), store_panel(y, p + 1, &a01, n_out);
    store_panel(y + no, p, &a10, n_out), store_panel(y + no, p + 1, &a11, n_out);
    store_panel(y + 2 * no, p, &a20, n_out), store_panel(y + 2 * no, p + 1, &a21, n_out);
    store_panel(y + 3 * no, p, &a30, n_out), store_panel(y + 3 * no, p + 1, &a31, n_out);
}

/*
 * y[b * n_out + i] = sum over j = 0..n_in-1, in order, of W[i][j] * x[b * n_in + j], for
 * n positions b, W in panels at P. Every output is the plain loop's float sum, bit for
 * bit, whatever n, the tile or the instruction set: the clones differ only in register
 * width, and contraction into FMA is off (C11 mode for GCC, the pragma for clang).
 */
#if defined(__x86_64__) && (defined(__clang__) ? __clang_major__ >= 14 : defined(__GNUC__))
__attribute__((target_clones("avx", "default")))
#endif
static void panel_matmul(float *y, const float *P, const float *x, int n, int n_out, int n_in)
{
    int n_panels = (n_out + PANEL - 1) / PANEL, b = 0;
    size_t ni = (size_t)n_in, no = (size_t)n_out;
    for (; b + 4 <= n; b += 4) {
        int p = 0;
        for (; p + 2 <= n_panels; p += 2)
            tile_4x2(y + (size_t)b * no, P, x + (size_t)b * ni, p, n_out, n_in);
        for (int e = 0; p < n_panels && e < 4; e++)
            tile_1x1(y + (size_t)(b + e) * no, P, x + (size_t)(b + e) * ni, p, n_out, n_in);
    }
    for (; b < n; b++) {
        int p = 0;
        for (; p + 4 <= n_panels; p += 4)
            tile_1x4(y + (size_t)b * no, P, x + (size_t)b * ni, p, n_out, n_in);
        for (; p < n_panels; p++)
            tile_1x1(y + (size_t)b * no, P, x + (size_t)b * ni, p, n_out, n_in);
    }
}

/* ------------------------------------------------------------ forward pass */

/* Positions run together through the weights: the scratch of a run holds this many. */
#define BATCH 32

struct kv_model_run {
    const kv_model *m;
    int n_pos;   /* capacity, positions */
    int n_done;  /* positions run so far */
    /* scratch, BATCH positions each, position b at offset b * width */
    float *x;    /* residual stream [BATCH][dim] */
    float *xb;   /* normed input / branch output [BATCH][dim] */
    float *xb2;  /* concatenated head outputs [BATCH][dim] */
    float *q;    /* queries [BATCH][dim] */
    float *k;    /* keys [BATCH][kv_dim] */
    float *v;    /* values [BATCH][kv_dim] */
    float *hb;   /* FFN gate [BATCH][hidden_dim] */
    float *hb2;  /* FFN up [BATCH][hidden_dim] */
    float *rope; /* cos, sin per pair of each position [BATCH][head_size] */
    float *logits;                 /* [vocab_size], after the last position run */
    float *att;                    /* [n_layers][n_heads][n_pos], rows of the last position */
    float *rec_q, *rec_k, *rec_v;  /* records, layout in model.h */
};

void kv_model_run_free(kv_model_run *r)
{
    if (!r)
        return;
    float *bufs[] = {r->x,   r->xb,  r->xb2,    r->q,      r->k,   r->v,     r->hb,
                     r->hb2, r->rope, r->logits, r->att, r->rec_q, r->rec_k, r->rec_v};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    free(r);
}

int kv_model_run_create(const kv_model *m, int n_pos, kv_model_run **out, char *err,
                        size_t err_len)
{
    *out = NULL;
    if (n_pos < 1) {
        snprintf(err, err_len, "model run: %d positions requested, need at least 1", n_pos);
        return KV_EMODEL_ARG;
    }
    const kv_model_config *c = &m->cfg;
    kv_model_run *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, err_len, "model run: out of memory");
        return KV_EMODEL_NOMEM;
    }
    r->m = m;
    r->n_pos = n_pos;
    size_t np = (size_t)n_pos, nl = (size_t)c->n_layers, nb = BATCH;
    r->x = calloc(nb * (size_t)c->dim, sizeof(float));
    r->xb = calloc(nb * (size_t)c->dim, sizeof(float));
    r->xb2 = calloc(nb * (size_t)c->dim, sizeof(float));
    r->q = calloc(nb * (size_t)c->dim, sizeof(float));
    r->k = calloc(nb * (size_t)c->kv_dim, sizeof(float));
    r->v = calloc(nb * (size_t)c->kv_dim, sizeof(float));
    r->hb = calloc(nb * (size_t)c->hidden_dim, sizeof(float));
    r->hb2 = calloc(nb * (size_t)c->hidden_dim, sizeof(float));
    r->rope = calloc(nb * (size_t)c->head_size, sizeof(float));
    r->logits = calloc((size_t)c->vocab_size, sizeof(float));
    r->att = calloc(nl * (size_t)c->n_heads * np, sizeof(float));
    r->rec_q = calloc(nl * np * (size_t)c->dim, sizeof(float));
    r->rec_k = calloc(nl * np * (size_t)c->kv_dim, sizeof(float));
    r->rec_v = calloc(nl * np * (size_t)c->kv_dim, sizeof(float));
    if (!r->x || !r->xb || !r->xb2 || !r->q || !r->k || !r->v || !r->hb || !r->hb2 ||
        !r->rope || !r->logits || !r->att || !r->rec_q || !r->rec_k || !r->rec_v) {
        kv_model_run_free(r);
        snprintf(err, err_len, "model run: out of memory for %d positions", n_pos);
        return KV_EMODEL_NOMEM;
    }
    *out = r;
    return KV_MODEL_OK;
}

/* out = x / sqrt(mean(x^2) + eps) * gain. out may alias x. */
static void rmsnorm(float *out, const float *x, const float *gain, int n)
{
    float ss = 0.0f;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    ss = ss / (float)n + RMS_EPS;
    float inv = (float)(1.0 / sqrt((double)ss));
    for (int i = 0; i < n; i++)
        out[i] = gain[i] * (inv * x[i]);
}

/* The same RMSNorm on n rows of width dim. */
static void rmsnorm_rows(float *out, const float *x, const float *gain, int n, int dim)
{
    for (int b = 0; b < n; b++)
        rmsnorm(out + (size_t)b * (size_t)dim, x + (size_t)b * (size_t)dim, gain, dim);
}

/* cos and sin of each pair's angle at pos: rope[j] = cos, rope[j + 1] = sin, j even. */
static void rope_angles(float *rope, int head_size, int pos)
{
    for (int j = 0; j < head_size; j += 2) {
        double angle = (double)pos / pow(ROPE_BASE, (double)j / (double)head_size);
        rope[j] = (float)cos(angle);
        rope[j + 1] = (float)sin(angle);
    }
}

/* Rotates each pair (i, i+1), i even, of vec (n elements) by its angle, j = i mod hs. */
static void rope_apply(float *vec, int n, const float *rope, int head_size)
{
    for (int i = 0; i < n; i += 2) {
        int j = i % head_size;
        float c = rope[j], s = rope[j + 1];
        float a = vec[i], b = vec[i + 1];
        vec[i] = a * c - b * s;
        vec[i + 1] = a * s + b * c;
    }
}

/* Copies the q, k, v of batch slot b into the records of layer l at pos. */
static void record_qkv(kv_model_run *r, int l, int b, int pos)
{
    const kv_model_config *c = &r->m->cfg;
    size_t hs = (size_t)c->head_size, np = (size_t)r->n_pos;
    const float *q = r->q + (size_t)b * (size_t)c->dim;
    const float *k = r->k + (size_t)b * (size_t)c->kv_dim;
    const float *v = r->v + (size_t)b * (size_t)c->kv_dim;
    float *rq = r->rec_q + (size_t)l * (size_t)c->n_heads * np * hs;
    float *rk = r->rec_k + (size_t)l * (size_t)c->n_kv_heads * np * hs;
    float *rv = r->rec_v + (size_t)l * (size_t)c->n_kv_heads * np * hs;
    for (int h = 0; h < c->n_heads; h++)
        memcpy(rq + ((size_t)h * np + (size_t)pos) * hs, q + (size_t)h * hs,
               hs * sizeof(float));
    for (int g = 0; g < c->n_kv_heads; g++) {
        memcpy(rk + ((size_t)g * np + (size_t)pos) * hs, k + (size_t)g * hs,
               hs * sizeof(float));
        memcpy(rv + ((size_t)g * np + (size_t)pos) * hs, v + (size_t)g * hs,
               hs * sizeof(float));
    }
}

/* Step 2c for batch slot b at position pos: every query head of layer l attends over the
 * recorded keys 0..pos; the softmax row goes to r->att, the head outputs to slot b of
 * r->xb2. Exponentials in double rounded to float (see top), the normaliser in double. */
static void attention(kv_model_run *r, int l, int b, int pos)
{
    const kv_model_config *c = &r->m->cfg;
    int hs = c->head_size, group = c->n_heads / c->n_kv_heads;
    size_t np = (size_t)r->n_pos;
    float scale = (float)(1.0 / sqrt((double)hs));
    for (int h = 0; h < c->n_heads; h++) {
        int g = h / group;
        const float *qh = r->q + (size_t)b * (size_t)c->dim + (size_t)h * (size_t)hs;
        const float *kg = r->rec_k + (((size_t)l * (size_t)c->n_kv_heads + (size_t)g) * np) *
                                         (size_t)hs;
        const float *vg = r->rec_v + (((size_t)l * (size_t)c->n_kv_heads + (size_t)g) * np) *
                                         (size_t)hs;
        float *row = r->att + ((size_t)l * (size_t)c->n_heads + (size_t)h) * np;
        float mx = -INFINITY;
        for (int j = 0; j <= pos; j++) {
            float s = 0.0f;
            for (int d = 0; d < hs; d++)
                s += qh[d] * kg[(size_t)j * (size_t)hs + (size_t)d];
            row[j] = s * scale;
            mx = row[j] > mx ? row[j] : mx;
        }
        double sum = 0.0;
        for (int j = 0; j <= pos; j++) {
            row[j] = (float)exp((double)(row[j] - mx));
            sum += row[j];
        }
        for (int j = 0; j <= pos; j++)
            row[j] = (float)(row[j] / sum);
        float *o = r->xb2 + (size_t)b * (size_t)c->dim + (size_t)h * (size_t)hs;
        for (int d = 0; d < hs; d++)
            o[d] = 0.0f;
        for (int j = 0; j <= pos; j++)
            for (int d = 0; d < hs; d++)
                o[d] += row[j] * vg[(size_t)j * (size_t)hs + (size_t)d];
    }
}

/* x[b] += y[b] for n rows of width dim. */
static void add_rows(float *x, const float *y, int n, int dim)
{
    for (size_t i = 0; i < (size_t)n * (size_t)dim; i++)
        x[i] += y[i];
}

/* Step 2e: the SiLU-gated feed-forward block of layer l, added to x, for n positions. */
static void feed_forward(kv_model_run *r, int l, int n)
{
    const kv_model *m = r->m;
    const kv_model_config *c = &m->cfg;
    rmsnorm_rows(r->xb, r->x, m->w[W_FFN_NORM] + (size_t)l * (size_t)c->dim, n, c->dim);
    panel_matmul(r->hb, layer_weights(m, W_W1, l), r->xb, n, c->hidden_dim, c->dim);
    panel_matmul(r->hb2, layer_weights(m, W_W3, l), r->xb, n, c->hidden_dim, c->dim);
    for (size_t i = 0; i < (size_t)n * (size_t)c->hidden_dim; i++) {
        float a = r->hb[i];
        float silu = (float)((double)a / (1.0 + exp(-(double)a)));
        r->hb[i] = silu * r->hb2[i];
    }
    panel_matmul(r->xb, layer_weights(m, W_W2, l), r->hb, n, c->dim, c->hidden_dim);
    add_rows(r->x, r->xb, n, c->dim);
}

/* 1 when x[0..n) are all finite (one multiply-add per value: cheap next to a matvec). */
static int all_finite(const float *x, int n)
{
    float z = 0.0f;   /* x * 0 is NaN exactly when x is Inf or NaN */
    for (int i = 0; i < n; i++)
        z += x[i] * 0.0f;
    return z == 0.0f;
}

/* The first of a layer's values at batch row b that is not finite, named for the message, or
 * NULL when all are finite. */
static const char *nonfinite_in_layer(const kv_model_run *r, int b)
{
    const kv_model_config *c = &r->m->cfg;
    size_t d = (size_t)c->dim, kvd = (size_t)c->kv_dim;
    if (!all_finite(r->q + b * d, c->dim))
        return "the queries";
    if (!all_finite(r->k + b * kvd, c->kv_dim))
        return "the keys";
    if (!all_finite(r->v + b * kvd, c->kv_dim))
        return "the values";
    if (!all_finite(r->x + b * d, c->dim))
        return "the residual stream";
    return NULL;
}

static int numeric_fail(char *err, size_t err_len, int layer, int pos, const char *what)
{
    char where[48] = "";
    if (layer >= 0)
        snprintf(where, sizeof where, "layer %d, ", layer);
    snprintf(err, err_len, "model step: %sposition %d: Inf or NaN in %s (do the checkpoint's "
             "weights overflow float32?)", where, pos, what);
    return KV_EMODEL_NUMERIC;
}

/* Steps 1-3 for tokens[0..n-1] (n <= BATCH) at positions pos0..pos0+n-1; arguments are
 * checked by the caller. The positions go through each weight matrix together; each
 * position's attention reads only keys up to itself, so the result is the same as one
 * position at a time, bit for bit (panel_matmul sums every output in input order).
 * Returns KV_MODEL_OK, or KV_EMODEL_NUMERIC (err says where) on the first layer value or
 * logit that is not finite. */
static int forward(kv_model_run *r, const int *tokens, int n, int pos0, char *err,
                   size_t err_len)
{
    const kv_model *m = r->m;
    const kv_model_config *c = &m->cfg;
    size_t d = (size_t)c->dim;
    /* 1. */
    for (int b = 0; b < n; b++) {
        embedding_row(m, tokens[b], r->x + (size_t)b * d);
        rope_angles(r->rope + (size_t)b * (size_t)c->head_size, c->head_size, pos0 + b);
    }
    for (int l = 0; l < c->n_layers; l++) {
        /* 2a. */
        rmsnorm_rows(r->xb, r->x, m->w[W_ATT_NORM] + (size_t)l * d, n, c->dim);
        panel_matmul(r->q, layer_weights(m, W_WQ, l), r->xb, n, c->dim, c->dim);
        panel_matmul(r->k, layer_weights(m, W_WK, l), r->xb, n, c->kv_dim, c->dim);
        panel_matmul(r->v, layer_weights(m, W_WV, l), r->xb, n, c->kv_dim, c->dim);
        for (int b = 0; b < n; b++) {
            /* 2b. */
            const float *rope = r->rope + (size_t)b * (size_t)c->head_size;
            rope_apply(r->q + (size_t)b * d, c->dim, rope, c->head_size);
            rope_apply(r->k + (size_t)b * (size_t)c->kv_dim, c->kv_dim, rope, c->head_size);
            record_qkv(r, l, b, pos0 + b);
        }
        /* 2c: after every key of the batch is recorded; position pos0 + b reads keys up to
         * itself only. */
        for (int b = 0; b < n; b++)
            attention(r, l, b, pos0 + b);
        /* 2d. */
        panel_matmul(r->xb, layer_weights(m, W_WO, l), r->xb2, n, c->dim, c->dim);
        add_rows(r->x, r->xb, n, c->dim);
        /* 2e. */
        feed_forward(r, l, n);
        for (int b = 0; b < n; b++) {
            const char *bad = nonfinite_in_layer(r, b);
            if (bad)
                return numeric_fail(err, err_len, l, pos0 + b, bad);
        }
    }
    /* 3: only the last position's logits are wanted. */
    float *last = r->x + (size_t)(n - 1) * d;
    rmsnorm(last, last, m->w[W_FINAL_NORM], c->dim);
    panel_matmul(r->logits, layer_weights(m, W_CLS, 0), last, 1, c->vocab_size, c->dim);
    if (!all_finite(r->logits, c->vocab_size))
        return numeric_fail(err, err_len, -1, pos0 + n - 1, "the next-token logits");
    return KV_MODEL_OK;
}

int kv_model_prefill(kv_model_run *r, const int *tokens, int n, int pos, char *err,
                     size_t err_len)
{
    const kv_model_config *c = &r->m->cfg;
    if (n < 1 || pos != r->n_done || pos > r->n_pos - n) {
        snprintf(err, err_len, "model step: %d positions from %d, expected from %d (capacity %d)",
                 n, pos, r->n_done, r->n_pos);
        return KV_EMODEL_ARG;
    }
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size) {
            snprintf(err, err_len, "model step: token id %d outside 0..%d", tokens[i],
                     c->vocab_size - 1);
            return KV_EMODEL_ARG;
        }
    for (int done = 0; done < n; done += BATCH) {
        int chunk = n - done < BATCH ? n - done : BATCH;
        int rc = forward(r, tokens + done, chunk, pos + done, err, err_len);
        if (rc != KV_MODEL_OK)
            return rc;
        r->n_done += chunk;
    }
    return KV_MODEL_OK;
}

int kv_model_step(kv_model_run *r, int token, int pos, char *err, size_t err_len)
{
    return kv_model_prefill(r, &token, 1, pos, err, err_len);
}

const float *kv_model_logits(const kv_model_run *r) { return r->logits; }

const float *kv_model_attn(const kv_model_run *r, int layer, int head)
{
    const kv_model_config *c = &r->m->cfg;
    return r->att + ((size_t)layer * (size_t)c->n_heads + (size_t)head) * (size_t)r->n_pos;
}

const float *kv_model_q(const kv_model_run *r, int layer)
{
    const kv_model_config *c = &r->m->cfg;
    return r->rec_q + (size_t)layer * (size_t)r->n_pos * (size_t)c->dim;
}

const float *kv_model_k(const kv_model_run *r, int layer)
{
    const kv_model_config *c = &r->m->cfg;
    return r->rec_k + (size_t)layer * (size_t)r->n_pos * (size_t)c->kv_dim;
}

const float *kv_model_v(const kv_model_run *r, int layer)
{
    const kv_model_config *c = &r->m->cfg;
    return r->rec_v + (size_t)layer * (size_t)r->n_pos * (size_t)c->kv_dim;
}

/* ------------------------------------------------ many sequences, one position */

struct kv_model_batch {
    const kv_model *m;
    int n;         /* sequences */
    float *x;      /* residual streams [n][dim] */
    float *xb;     /* normed input / branch output [n][dim] */
    float *heads;  /* attention outputs [n][dim], the caller's to fill */
    float *q;      /* [n][dim] */
    float *k, *v;  /* [n][kv_dim] */
    float *hb, *hb2;   /* FFN gate and up [n][hidden_dim] */
    float *rope;   /* cos, sin per pair at the current position [head_size] */
    float *logits; /* [n][vocab_size] */
};

void kv_model_batch_free(kv_model_batch *b)
{
    if (!b)
        return;
    float *bufs[] = {b->x, b->xb, b->heads, b->q, b->k, b->v, b->hb, b->hb2, b->rope,
                     b->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    free(b);
}

int kv_model_batch_create(const kv_model *m, int n, kv_model_batch **out, char *err,
                          size_t err_len)
{
    *out = NULL;
    if (n < 1) {
        snprintf(err, err_len, "model batch: %d sequences requested, need at least 1", n);
        return KV_EMODEL_ARG;
    }
    const kv_model_config *c = &m->cfg;
    kv_model_batch *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(err, err_len, "model batch: out of memory");
        return KV_EMODEL_NOMEM;
    }
    size_t ns = (size_t)n, d = (size_t)c->dim, kvd = (size_t)c->kv_dim;
    size_t hd = (size_t)c->hidden_dim;
    b->m = m;
    b->n = n;
    b->x = calloc(ns * d, sizeof(float));
    b->xb = calloc(ns * d, sizeof(float));
    b->heads = calloc(ns * d, sizeof(float));
    b->q = calloc(ns * d, sizeof(float));
    b->k = calloc(ns * kvd, sizeof(float));
    b->v = calloc(ns * kvd, sizeof(float));
    b->hb = calloc(ns * hd, sizeof(float));
    b->hb2 = calloc(ns * hd, sizeof(float));
    b->rope = calloc((size_t)c->head_size, sizeof(float));
    b->logits = calloc(ns * (size_t)c->vocab_size, sizeof(float));
    if (!b->x || !b->xb || !b->heads || !b->q || !b->k || !b->v || !b->hb || !b->hb2 ||
        !b->rope || !b->logits) {
        kv_model_batch_free(b);
        snprintf(err, err_len, "model batch: out of memory for %d sequences", n);
        return KV_EMODEL_NOMEM;
    }
    *out = b;
    return KV_MODEL_OK;
}


/* Matrix t of layer l (l = 0 for the classifier) times every sequence's input: the
 * sequences go through the panels as a prompt's positions do, so each product is
 * kv_model_step's, bit for bit (test_closedloop checks it). */
static void layer_product(kv_model_batch *b, int t, int l, float *y, const float *x,
                          int n_out, int n_in)
{
    panel_matmul(y, layer_weights(b->m, t, l), x, b->n, n_out, n_in);
}

void kv_model_batch_embed(kv_model_batch *b, int token, int pos)
{
    const kv_model *m = b->m;
    size_t d = (size_t)m->cfg.dim;
    for (int s = 0; s < b->n; s++)
        embedding_row(m, token, b->x + (size_t)s * d);
    rope_angles(b->rope, m->cfg.head_size, pos);
}

void kv_model_batch_qkv(kv_model_batch *b, int l)
{
    const kv_model *m = b->m;
    const kv_model_config *c = &m->cfg;
    size_t d = (size_t)c->dim, kvd = (size_t)c->kv_dim;
    for (int s = 0; s < b->n; s++)
        rmsnorm(b->xb + (size_t)s * d, b->x + (size_t)s * d,
                m->w[W_ATT_NORM] + (size_t)l * d, c->dim);
    layer_product(b, W_WQ, l, b->q, b->xb, c->dim, c->dim);
    layer_product(b, W_WK, l, b->k, b->xb, c->kv_dim, c->dim);
    layer_product(b, W_WV, l, b->v, b->xb, c->kv_dim, c->dim);
    for (int s = 0; s < b->n; s++) {
        rope_apply(b->q + (size_t)s * d, c->dim, b->rope, c->head_size);
        rope_apply(b->k + (size_t)s * kvd, c->kv_dim, b->rope, c->head_size);
    }
}

const float *kv_model_batch_q(const kv_model_batch *b, int s)
{
    return b->q + (size_t)s * (size_t)b->m->cfg.dim;
}

const float *kv_model_batch_k(const kv_model_batch *b, int s)
{
    return b->k + (size_t)s * (size_t)b->m->cfg.kv_dim;
}

const float *kv_model_batch_v(const kv_model_batch *b, int s)
{
    return b->v + (size_t)s * (size_t)b->m->cfg.kv_dim;
}

float *kv_model_batch_heads(kv_model_batch *b, int s)
{
    return b->heads + (size_t)s * (size_t)b->m->cfg.dim;
}

void kv_model_batch_mix(kv_model_batch *b, int l)
{
    const kv_model *m = b->m;
    const kv_model_config *c = &m->cfg;
    size_t d = (size_t)c->dim, hd = (size_t)c->hidden_dim, all = (size_t)b->n * d;
    /* 2d. */
    layer_product(b, W_WO, l, b->xb, b->heads, c->dim, c->dim);
    for (size_t i = 0; i < all; i++)
        b->x[i] += b->xb[i];
    /* 2e, as feed_forward does for one sequence. */
    for (int s = 0; s < b->n; s++)
        rmsnorm(b->xb + (size_t)s * d, b->x + (size_t)s * d,
                m->w[W_FFN_NORM] + (size_t)l * d, c->dim);
    layer_product(b, W_W1, l, b->hb, b->xb, c->hidden_dim, c->dim);
    layer_product(b, W_W3, l, b->hb2, b->xb, c->hidden_dim, c->dim);
    for (size_t i = 0; i < (size_t)b->n * hd; i++) {
        float a = b->hb[i];
        float silu = (float)((double)a / (1.0 + exp(-(double)a)));
        b->hb[i] = silu * b->hb2[i];
    }
    layer_product(b, W_W2, l, b->xb, b->hb, c->dim, c->hidden_dim);
    for (size_t i = 0; i < all; i++)
        b->x[i] += b->xb[i];
}

const float *kv_model_batch_logits(kv_model_batch *b)
{
    const kv_model *m = b->m;
    const kv_model_config *c = &m->cfg;
    size_t d = (size_t)c->dim;
    for (int s = 0; s < b->n; s++)
        rmsnorm(b->x + (size_t)s * d, b->x + (size_t)s * d, m->w[W_FINAL_NORM], c->dim);
    layer_product(b, W_CLS, 0, b->logits, b->x, c->vocab_size, c->dim);
    return b->logits;
}

/* The attention loops vectorise across keys or dimensions, never inside one sum, so an
 * AVX2 clone (gathers for the keys of A_t) rounds like the baseline one. */
#if defined(__x86_64__) && (defined(__clang__) ? __clang_major__ >= 14 : defined(__GNUC__))
#define ATTN_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define ATTN_CLONES
#endif

/* x[i] = (q . k_pos[i]) * scale for i < n (pos NULL: key i), each dot product a float sum
 * over d in order, as the forward pass's attention. Keys run in the inner loop (each its
 * own sum), so the loop vectorises across keys without changing any sum's order. */
ATTN_CLONES static void attn_scores(const float *restrict q, const float *restrict k, int head_size,
                        const int *pos, int n, float *restrict x)
{
    size_t hs = (size_t)head_size;
    float scale = (float)(1.0 / sqrt((double)head_size));
    for (int i = 0; i < n; i++)
        x[i] = 0.0f;
    if (!pos) {
        for (size_t d = 0; d < hs; d++) {
            float qd = q[d];
            const float *kd = k + d;
            for (int i = 0; i < n; i++)
                x[i] += qd * kd[(size_t)i * hs];
        }
    } else {
        for (size_t d = 0; d < hs; d++) {
            float qd = q[d];
            const float *kd = k + d;
            for (int i = 0; i < n; i++)
                x[i] += qd * kd[(size_t)pos[i] * hs];
        }
    }
    for (int i = 0; i < n; i++)
        x[i] = x[i] * scale;
}

/* The largest of x[pos[i]] (pos NULL: x[i]) for i < n. */
static float attn_max(const float *x, const int *pos, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        float xi = x[pos ? pos[i] : i];
        mx = xi > mx ? xi : mx;
    }
    return mx;
}

/* e[i] = exp(x[pos[i]] - mx) in double rounded to float; returns their sum in double,
 * added in order. */
static double attn_exps(const float *x, const int *pos, int n, float mx, float *e)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        e[i] = (float)exp((double)(x[pos ? pos[i] : i] - mx));
        sum += e[i];
    }
    return sum;
}

/* row[i] = e[i] / sum rounded to float; out = sum over i, in order, of row[i] * v_pos[i]. */
ATTN_CLONES static void attn_weigh(const float *e, double sum, const float *v, int head_size,
                       const int *pos, int n, float *row, float *out)
{
    size_t hs = (size_t)head_size;
    for (int i = 0; i < n; i++)
        row[i] = (float)(e[i] / sum);
    for (size_t d = 0; d < hs; d++)
        out[d] = 0.0f;
    for (int i = 0; i < n; i++) {
        const float *vj = v + (size_t)(pos ? pos[i] : i) * hs;
        for (size_t d = 0; d < hs; d++)
            out[d] += row[i] * vj[d];
    }
}

void kv_model_attend(const float *q, const float *k, const float *v, int head_size,
                     const int *pos, int n, float *row, float *out)
{
    attn_scores(q, k, head_size, pos, n, row);
    float mx = attn_max(row, NULL, n);
    double sum = attn_exps(row, NULL, n, mx, row);
    attn_weigh(row, sum, v, head_size, pos, n, row, out);
}
