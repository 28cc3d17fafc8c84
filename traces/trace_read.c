/*
 * trace_read.c - opens and checks a kvtrace v1 file, and reads its rows, queries and keys.
 *
 * Checking is table-driven so that later checks slot in next to the existing ones:
 *   - root_int_attrs (plus model, source, softmax_scale in read_root_attrs): which root
 *     attributes exist, whether required, where they go;
 *   - check_info: the rules between attributes (one message per rule);
 *   - layer_dsets: per-layer datasets, their rank and the attribute behind each dimension,
 *     and for which source each is required (optional ones are checked when present).
 * Every message is one line that starts with the file name and names the attribute or
 * dataset, the value found and what was expected.
 *
 * Reading: attn rows are read as one hyperslab per call (all requested heads, rows t0..t1-1,
 * columns 0..t1-1: only chunks that touch the lower triangle). IEEE float16 is read raw and
 * widened here (exact, and ~5x faster than HDF5's soft conversion); any other float type is
 * converted to float32 by HDF5.
 * The attn datasets stay open between calls (up to KV_OPEN_ATTN_MAX layers, least recently
 * used closed first) with a chunk cache that holds two chunk-rows of every head, so callers
 * whose row blocks are not aligned with the chunks do not decompress a chunk twice.
 */
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "traces/trace_int.h"
#include "traces/validate.h"

#define KV_OPEN_ATTN_MAX 4
/* Per open attn dataset: 2 chunk-rows of 32 heads x 4096 tokens in float16 fit. */
#define KV_CHUNK_CACHE_MAX_BYTES ((size_t)64 << 20)
#define KV_PATH_MAX 64

struct open_attn {
    hid_t id;              /* open dataset, or H5I_INVALID_HID */
    int layer;
    int is_half;           /* stored as IEEE binary16: read raw, widen here */
    unsigned long used;    /* tick of the last use, for LRU replacement */
};

struct kv_trace {
    hid_t file;
    char *path;
    kv_trace_info info;
    int has_qk;            /* every layer has q and k of the right shape */
    pthread_mutex_t lock;  /* serialises reads: the open-dataset table is shared */
    struct open_attn attn[KV_OPEN_ATTN_MAX];
    unsigned long tick;
    int check_values;      /* kv_trace_set_read_checks: check what the reads return */
};

static int g_verbose;

/* The file whose HDF5 call is in progress (kv_trace_reading), for a fault handler. */
static const char *volatile g_reading;

const char *kv_trace_reading(void)
{
    return g_reading;
}

/* ------------------------------------------------------------ shared helpers */

int kv_trace_fail(char *err, size_t err_len, int code, const char *fmt, ...)
{
    if (err && err_len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return code;
}

void kv_trace_set_verbose(int verbose)
{
    g_verbose = verbose;
    kv_trace_quiet();
}

void kv_trace_quiet(void)
{
    if (g_verbose)
        H5Eset_auto2(H5E_DEFAULT, (H5E_auto2_t)H5Eprint2, stderr);
    else
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

hid_t kv_trace_hid(const kv_trace *tr)
{
    return tr->file;
}

void kv_trace_type_name(hid_t type, char *buf, size_t len)
{
    size_t bits = H5Tget_size(type) * 8;
    switch (H5Tget_class(type)) {
    case H5T_INTEGER:
        snprintf(buf, len, "%sint%zu", H5Tget_sign(type) == H5T_SGN_NONE ? "u" : "", bits);
        break;
    case H5T_FLOAT: snprintf(buf, len, "float%zu", bits); break;
    case H5T_STRING: snprintf(buf, len, "string"); break;
    case H5T_COMPOUND: snprintf(buf, len, "compound"); break;
    case H5T_ENUM: snprintf(buf, len, "enum (bool?)"); break;
    case H5T_ARRAY: snprintf(buf, len, "array"); break;
    default: snprintf(buf, len, "non-numeric type"); break;
    }
}

/* ------------------------------------------------------------ root attributes */

/*
 * Opens root attribute name into *attr. Returns 0 when it is open, -1 when it is absent
 * (and not required), or an error code with err set. It must hold exactly one value.
 */
static int open_attr(const kv_trace *tr, const char *name, int required, hid_t *attr,
                     char *err, size_t len)
{
    htri_t ex = H5Aexists(tr->file, name);
    if (ex < 0)
        return kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot read root attributes",
                             tr->path);
    if (ex == 0) {
        if (!required)
            return -1;
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: missing root attribute %s",
                             tr->path, name);
    }
    *attr = H5Aopen(tr->file, name, H5P_DEFAULT);
    if (*attr < 0)
        return kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot open root attribute %s",
                             tr->path, name);
    hid_t space = H5Aget_space(*attr);
    hssize_t n = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
    if (space >= 0)
        H5Sclose(space);
    if (n != 1) {
        H5Aclose(*attr);
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT,
                             "%s: root attribute %s holds %lld values, expected one",
                             tr->path, name, (long long)n);
    }
    return 0;
}

/* Checks that attr's stored type is of class want (what names it for the message). */
static int check_attr_class(const kv_trace *tr, hid_t attr, const char *name,
                            H5T_class_t want, const char *what, char *err, size_t len)
{
    hid_t type = H5Aget_type(attr);
    if (type < 0)
        return kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot read the type of root "
                             "attribute %s", tr->path, name);
    H5T_class_t cls = H5Tget_class(type);
    int ok = cls == want || (want == H5T_FLOAT && cls == H5T_INTEGER);
    char tname[32];
    kv_trace_type_name(type, tname, sizeof tname);
    H5Tclose(type);
    if (!ok)
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT,
                             "%s: root attribute %s has type %s, expected %s",
                             tr->path, name, tname, what);
    return 0;
}

/* Opens root attribute name, checks that its stored type is of class want (what names it
 * for the message) and reads its one value as mem_type into value. Returns 0; -1 when it
 * is absent and not required (value untouched); or an error code with err set. */
static int read_attr_value(const kv_trace *tr, const char *name, int required,
                           H5T_class_t want, const char *what, hid_t mem_type, void *value,
                           char *err, size_t len)
{
    hid_t attr;
    int rc = open_attr(tr, name, required, &attr, err, len);
    if (rc)
        return rc;
    rc = check_attr_class(tr, attr, name, want, what, err, len);
    if (!rc && H5Aread(attr, mem_type, value) < 0)
        rc = kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot read root attribute %s",
                           tr->path, name);
    H5Aclose(attr);
    return rc;
}

/* Reads an integer attribute of any width and signedness into *value (must fit an int).
 * Absent and optional: leaves *value and returns 0. */
static int read_int_attr(const kv_trace *tr, const char *name, int required, int *value,
                         char *err, size_t len)
{
    long long v = 0;
    int rc = read_attr_value(tr, name, required, H5T_INTEGER, "an integer",
                             H5T_NATIVE_LLONG, &v, err, len);
    if (rc)
        return rc < 0 ? 0 : rc;
    if (v < INT_MIN || v > INT_MAX)
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT,
                             "%s: root attribute %s = %lld is out of range", tr->path, name, v);
    *value = (int)v;
    return 0;
}

/* Reads a float (or integer) attribute as a double. Absent and optional: returns 0. */
static int read_real_attr(const kv_trace *tr, const char *name, int required, double *value,
                          char *err, size_t len)
{
    int rc = read_attr_value(tr, name, required, H5T_FLOAT, "a float", H5T_NATIVE_DOUBLE,
                             value, err, len);
    if (rc)
        return rc < 0 ? 0 : rc;
    /* a stored NaN is an error, not "absent" (the callers' sentinel for a default) */
    if (isnan(*value))
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: root attribute %s = nan, "
                             "expected a finite number", tr->path, name);
    return 0;
}

/*
 * Bounded reads: a damaged length field must not make the reader allocate what it
 * claims. HDF5 sizes its buffer for a variable-length string by the length stored in the
 * attribute (4 bytes that checksums do not cover in files without them), so 8 damaged
 * bytes in a 50 KB file made it allocate and copy gigabytes. The stored length is read
 * first, through a conversion that only looks at it, and anything longer than
 * KV_STRING_MAX_BYTES is refused.
 */
#define KV_STRING_MAX_BYTES 4096
#define VLEN_LENGTH_TAG "kvsim: stored length of a variable-length string"

/* HDF5 soft conversion from a variable-length string, in its on-disk form (a 32-bit
 * little-endian length, then the global heap id), to a uint32 holding that length. Only
 * ever chosen for the opaque type tagged VLEN_LENGTH_TAG. */
static herr_t vlen_length_conv(hid_t src, hid_t dst, H5T_cdata_t *cdata, size_t nelmts,
                               size_t buf_stride, size_t bkg_stride, void *buf, void *bkg,
                               hid_t dxpl)
{
    (void)bkg_stride, (void)bkg, (void)dxpl;
    if (cdata->command == H5T_CONV_INIT) {
        char *tag = H5Tget_class(dst) == H5T_OPAQUE ? H5Tget_tag(dst) : NULL;
        int ours = tag && strcmp(tag, VLEN_LENGTH_TAG) == 0 && H5Tis_variable_str(src) > 0;
        if (tag)
            H5free_memory(tag);
        return ours ? 0 : -1;
    }
    if (cdata->command != H5T_CONV_CONV)
        return 0;
    size_t src_size = H5Tget_size(src), stride = buf_stride ? buf_stride : src_size;
    unsigned char *p = buf;
    /* in place, front to back: each 4-byte result lands at or before its source */
    for (size_t i = 0; i < nelmts; i++) {
        const unsigned char *s = p + i * stride;
        uint32_t n = (uint32_t)s[0] | (uint32_t)s[1] << 8 | (uint32_t)s[2] << 16
                     | (uint32_t)s[3] << 24;
        memcpy(p + i * (buf_stride ? buf_stride : sizeof n), &n, sizeof n);
    }
    return 0;
}

/* The opaque type the conversion above converts to (registered once); -1 on failure. */
static hid_t vlen_length_type(void)
{
    static hid_t type = H5I_INVALID_HID;
    static pthread_mutex_t once = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&once);
    if (type < 0) {
        hid_t t = H5Tcreate(H5T_OPAQUE, sizeof(uint32_t));
        hid_t vstr = H5Tcopy(H5T_C_S1);
        if (t >= 0 && vstr >= 0 && H5Tset_tag(t, VLEN_LENGTH_TAG) >= 0
            && H5Tset_size(vstr, H5T_VARIABLE) >= 0
            && H5Tregister(H5T_PERS_SOFT, "kvsim_vlen_length", vstr, t,
                           vlen_length_conv) >= 0)
            type = t;
        else if (t >= 0)
            H5Tclose(t);
        if (vstr >= 0)
            H5Tclose(vstr);
    }
    pthread_mutex_unlock(&once);
    return type;
}

/* The stored length in bytes of a string attribute of file type ftype, without reading
 * the string; -1 when it cannot be read. */
static long long stored_string_length(hid_t attr, hid_t ftype)
{
    if (H5Tis_variable_str(ftype) <= 0)
        return (long long)H5Tget_size(ftype);
    hid_t t = vlen_length_type();
    uint32_t n = 0;
    if (t < 0 || H5Aread(attr, t, &n) < 0)
        return -1;
    return n;
}

/* Reads the string of an open attribute, variable-length (h5py's str) or fixed-length. */
static int read_string_value(hid_t attr, hid_t ftype, char *buf, size_t size)
{
    hid_t mtype = H5Tcopy(H5T_C_S1);
    int ok = mtype >= 0 && H5Tset_cset(mtype, H5Tget_cset(ftype)) >= 0;
    if (ok && H5Tis_variable_str(ftype) > 0) {
        char *s = NULL;
        ok = H5Tset_size(mtype, H5T_VARIABLE) >= 0 && H5Aread(attr, mtype, &s) >= 0;
        if (ok)
            snprintf(buf, size, "%s", s ? s : "");
        if (s)
            H5free_memory(s);
    } else if (ok) {
        size_t n = H5Tget_size(ftype);
        char *s = calloc(n + 1, 1);
        ok = s && H5Tset_size(mtype, n + 1) >= 0 && H5Tset_strpad(mtype, H5T_STR_NULLTERM) >= 0
             && H5Aread(attr, mtype, s) >= 0;
        if (ok)
            snprintf(buf, size, "%s", s);
        free(s);
    }
    if (mtype >= 0)
        H5Tclose(mtype);
    return ok ? 0 : -1;
}

static int read_string_attr(const kv_trace *tr, const char *name, char *buf, size_t size,
                            char *err, size_t len)
{
    hid_t attr;
    int rc = open_attr(tr, name, 1, &attr, err, len);
    if (rc)
        return rc;
    rc = check_attr_class(tr, attr, name, H5T_STRING, "a string", err, len);
    hid_t ftype = rc ? -1 : H5Aget_type(attr);
    long long stored = rc || ftype < 0 ? -1 : stored_string_length(attr, ftype);
    if (!rc && stored > KV_STRING_MAX_BYTES)
        rc = kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: root attribute %s claims %lld "
                           "bytes, expected a string of at most %d (damaged file?)",
                           tr->path, name, stored, KV_STRING_MAX_BYTES);
    if (!rc && (ftype < 0 || read_string_value(attr, ftype, buf, size) != 0))
        rc = kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot read root attribute %s",
                           tr->path, name);
    if (ftype >= 0)
        H5Tclose(ftype);
    H5Aclose(attr);
    return rc;
}

/* The integer root attributes: name, required, where they go. */
static const struct {
    const char *name;
    int required;
    size_t offset;
} root_int_attrs[] = {
    {"kvtrace_version", 1, offsetof(kv_trace_info, version)},
    {"n_layers", 1, offsetof(kv_trace_info, n_layers)},
    {"n_heads", 1, offsetof(kv_trace_info, n_heads)},
    {"n_kv_heads", 1, offsetof(kv_trace_info, n_kv_heads)},
    {"head_dim", 1, offsetof(kv_trace_info, head_dim)},
    {"n_tokens", 1, offsetof(kv_trace_info, n_tokens)},
    {"prefill_len", 1, offsetof(kv_trace_info, prefill_len)},
    {"dtype_bytes", 0, offsetof(kv_trace_info, dtype_bytes)},
};

/* The optional attn_precision: "float32" (the default when absent), "float16", "bfloat16". */
static int read_attn_precision(kv_trace *tr, char *err, size_t len)
{
    static const kv_attn_precision all[] = {KV_PREC_FLOAT32, KV_PREC_FLOAT16, KV_PREC_BFLOAT16};
    tr->info.attn_precision = KV_PREC_FLOAT32;
    htri_t ex = H5Aexists(tr->file, "attn_precision");
    if (ex <= 0)
        return ex < 0 ? kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot read root "
                                      "attributes", tr->path) : 0;
    char value[32];
    int rc = read_string_attr(tr, "attn_precision", value, sizeof value, err, len);
    if (rc)
        return rc;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(value, kv_attn_precision_name(all[i])) == 0) {
            tr->info.attn_precision = all[i];
            return 0;
        }
    return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: root attribute attn_precision = "
                         "\"%s\", expected \"float32\", \"float16\" or \"bfloat16\"",
                         tr->path, value);
}

/* What the root of a file holds, for the message on a file in another layout. */
#define KV_ROOT_NAMES_SHOWN 3
#define KV_ROOT_NAME_CHARS 32

typedef struct {
    char text[KV_ROOT_NAMES_SHOWN * (KV_ROOT_NAME_CHARS + 2) + 8];
    int n;
} root_names;

/* H5Literate callback: appends a name (printable ASCII, truncated), stops after the
 * ones shown with ", ..." when there are more. */
static herr_t add_root_name(hid_t group, const char *name, const H5L_info_t *info, void *data)
{
    (void)group, (void)info;
    root_names *rn = data;
    size_t at = strlen(rn->text);
    if (rn->n == KV_ROOT_NAMES_SHOWN) {
        snprintf(rn->text + at, sizeof rn->text - at, ", ...");
        return 1;
    }
    if (rn->n++)
        at += (size_t)snprintf(rn->text + at, sizeof rn->text - at, ", ");
    for (int i = 0; name[i] && i < KV_ROOT_NAME_CHARS && at + 1 < sizeof rn->text; i++)
        rn->text[at++] = name[i] >= 0x20 && name[i] < 0x7f ? name[i] : '?';
    rn->text[at] = '\0';
    return 0;
}

/* The message for an HDF5 file without the attribute that marks a kvtrace: what the
 * format is and where it is described, with what the root holds instead (a file from
 * another tool, e.g. layer_0/batch_0/head_0 datasets, is the usual case). */
static int not_a_trace(const kv_trace *tr, char *err, size_t len)
{
    root_names rn = { "", 0 };
    hsize_t idx = 0;
    if (H5Literate(tr->file, H5_INDEX_NAME, H5_ITER_INC, &idx, add_root_name, &rn) < 0)
        snprintf(rn.text, sizeof rn.text, "unreadable links");
    else if (rn.n == 0)
        snprintf(rn.text, sizeof rn.text, "nothing");
    return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: not a kvsim trace: no root "
                         "attribute kvtrace_version (its root holds %s); expected root "
                         "attributes kvtrace_version, model, source, n_layers, n_heads, "
                         "n_kv_heads, head_dim, n_tokens, prefill_len and datasets "
                         "/layers/<l>/attn or /layers/<l>/q and k; see traces/FORMAT.md "
                         "(kvsim capture or traces/capture_hf.py write it)", tr->path,
                         rn.text);
}

static int read_root_attrs(kv_trace *tr, char *err, size_t len)
{
    kv_trace_info *in = &tr->info;
    htri_t marked = H5Aexists(tr->file, "kvtrace_version");
    if (marked == 0)
        return not_a_trace(tr, err, len);
    in->softmax_scale = NAN;   /* default filled in once head_dim is known */
    in->dtype_bytes = 2;
    for (size_t i = 0; i < sizeof root_int_attrs / sizeof root_int_attrs[0]; i++) {
        int *field = (int *)((char *)in + root_int_attrs[i].offset);
        int rc = read_int_attr(tr, root_int_attrs[i].name, root_int_attrs[i].required,
                               field, err, len);
        if (rc)
            return rc;
    }
    int rc = read_string_attr(tr, "model", in->model, sizeof in->model, err, len);
    if (rc)
        return rc;
    char source[32];
    rc = read_string_attr(tr, "source", source, sizeof source, err, len);
    if (rc)
        return rc;
    if (strcmp(source, "attn") == 0)
        in->source = KV_SOURCE_ATTN;
    else if (strcmp(source, "qk") == 0)
        in->source = KV_SOURCE_QK;
    else
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: root attribute source = \"%s\", "
                             "expected \"attn\" or \"qk\"", tr->path, source);
    rc = read_attn_precision(tr, err, len);
    if (rc)
        return rc;
    return read_real_attr(tr, "softmax_scale", 0, &in->softmax_scale, err, len);
}

/* The rules between root attributes, in the order they are reported. */
static int check_info(kv_trace *tr, char *err, size_t len)
{
    kv_trace_info *in = &tr->info;
    if (in->version != KV_TRACE_VERSION)
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: root attribute kvtrace_version "
                             "= %d, expected %d", tr->path, in->version, KV_TRACE_VERSION);
    if (in->prefill_len < 1)
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: root attribute prefill_len = "
                             "%d, expected 1..n_tokens", tr->path, in->prefill_len);
    for (size_t i = 1; i < sizeof root_int_attrs / sizeof root_int_attrs[0]; i++) {
        int v = *(const int *)((const char *)in + root_int_attrs[i].offset);
        if (v < 1)
            return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: root attribute %s = %d, "
                                 "expected >= 1", tr->path, root_int_attrs[i].name, v);
    }
    if (in->n_heads % in->n_kv_heads != 0)
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: root attribute n_heads = %d "
                             "is not a multiple of n_kv_heads = %d", tr->path, in->n_heads,
                             in->n_kv_heads);
    if (in->prefill_len > in->n_tokens)
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: root attribute prefill_len = "
                             "%d, expected 1..n_tokens (n_tokens = %d)", tr->path,
                             in->prefill_len, in->n_tokens);
    if (isnan(in->softmax_scale))
        in->softmax_scale = 1.0 / sqrt((double)in->head_dim);
    /* the replay scales the logits in float32: a larger scale is Inf there */
    if (!isfinite(in->softmax_scale) || in->softmax_scale <= 0 || in->softmax_scale > FLT_MAX)
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: root attribute softmax_scale "
                             "= %g, expected a finite number > 0 and at most %.3g (float32)",
                             tr->path, in->softmax_scale, (double)FLT_MAX);
    return 0;
}

/* ------------------------------------------------------------ datasets */

enum dim_code { DIM_HEADS, DIM_KV_HEADS, DIM_TOKENS, DIM_HEAD_DIM };
enum need { NEED_ATTN, NEED_QK, NEED_NONE };

static const char *const dim_names[] = {"n_heads", "n_kv_heads", "n_tokens", "head_dim"};

/* The per-layer datasets. Those not needed by the trace's source are checked when present. */
static const struct dset_spec {
    const char *name;
    enum need need;
    int rank;
    enum dim_code dims[3];
} layer_dsets[] = {
    {"attn", NEED_ATTN, 3, {DIM_HEADS, DIM_TOKENS, DIM_TOKENS}},
    {"q", NEED_QK, 3, {DIM_HEADS, DIM_TOKENS, DIM_HEAD_DIM}},
    {"k", NEED_QK, 3, {DIM_KV_HEADS, DIM_TOKENS, DIM_HEAD_DIM}},
    {"v", NEED_NONE, 3, {DIM_KV_HEADS, DIM_TOKENS, DIM_HEAD_DIM}},
    {"o_full", NEED_NONE, 3, {DIM_HEADS, DIM_TOKENS, DIM_HEAD_DIM}},   /* kvsim index */
};

static long long dim_value(const kv_trace_info *in, enum dim_code c)
{
    switch (c) {
    case DIM_HEADS: return in->n_heads;
    case DIM_KV_HEADS: return in->n_kv_heads;
    case DIM_TOKENS: return in->n_tokens;
    default: return in->head_dim;
    }
}

/* "[8, 512, 512]" */
static void format_dims(char *buf, size_t size, int rank, const long long *dims)
{
    size_t at = 0;
    at += (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < rank && at < size; i++)
        at += (size_t)snprintf(buf + at, size - at, "%s%lld", i ? ", " : "", dims[i]);
    if (at < size)
        snprintf(buf + at, size - at, "]");
}

/*
 * Bounded reads: HDF5 decompresses a whole chunk to read any part of it, so a chunk
 * shape is checked before any read trusts it. Each chunk dimension must lie within the
 * dataset's (then a chunk is never larger than the data) and a chunk must hold at most
 * KV_CHUNK_MAX_BYTES: a 2 MB file declaring a 1 GiB chunk made a read take 1 GiB.
 */
#define KV_CHUNK_MAX_BYTES ((long long)64 << 20)

/*
 * Why a read of dataset dpath failed, for the message: a compression filter this HDF5
 * does not have (h5py's lzf, say) fails every read as if the file were damaged, so it is
 * named. Asked only after a read failed, when HDF5 has tried to load the filter as a
 * plugin (a missing optional filter does not fail reads of chunks stored unfiltered).
 */
static const char *read_failure_reason(const kv_trace *tr, const char *dpath)
{
    static __thread char why[256];
    snprintf(why, sizeof why, "damaged file?");
    hid_t d = H5Dopen2(tr->file, dpath, H5P_DEFAULT);
    hid_t dcpl = d >= 0 ? H5Dget_create_plist(d) : H5I_INVALID_HID;
    int n = dcpl >= 0 ? H5Pget_nfilters(dcpl) : 0;
    for (int i = 0; i < n; i++) {
        unsigned flags, conf;
        size_t n_values = 0;
        char name[64] = "";
        H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &n_values, NULL,
                                         sizeof name, name, &conf);
        if (id < 0 || H5Zfilter_avail(id) > 0)
            continue;
        const char *known = id == 32000 ? "lzf" : id == 32001 ? "blosc" : id == 32004 ? "lz4"
                            : id == 32015 ? "zstd" : name[0] ? name : "unknown";
        snprintf(why, sizeof why, "needs the %.40s filter (HDF5 filter %d), which this HDF5 "
                 "lacks: rewrite it with gzip, e.g. h5repack -f GZIP=4", known, (int)id);
        break;
    }
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (d >= 0)
        H5Dclose(d);
    return why;
}

static int check_chunks(const kv_trace *tr, hid_t d, const char *dpath, int rank,
                        const long long *dims, size_t elem, char *err, size_t len)
{
    hid_t dcpl = H5Dget_create_plist(d);
    if (dcpl < 0)
        return kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot read the layout of %s",
                             tr->path, dpath);
    hsize_t chunk[H5S_MAX_RANK];
    int chunked = H5Pget_layout(dcpl) == H5D_CHUNKED;
    int got = chunked ? H5Pget_chunk(dcpl, H5S_MAX_RANK, chunk) : 0;
    H5Pclose(dcpl);
    if (!chunked)
        return 0;
    if (got != rank)
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: %s has chunks of rank %d, "
                             "expected %d (damaged file?)", tr->path, dpath, got, rank);
    long long c[H5S_MAX_RANK], bytes = (long long)elem;
    int inside = 1;
    for (int i = 0; i < rank; i++) {
        c[i] = (long long)chunk[i];
        inside &= c[i] >= 1 && c[i] <= dims[i];
    }
    if (!inside) {
        char cs[96], ds[96];
        format_dims(cs, sizeof cs, rank, c);
        format_dims(ds, sizeof ds, rank, dims);
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: %s has chunks %s, expected "
                             "each dimension within its shape %s", tr->path, dpath, cs, ds);
    }
    for (int i = 0; i < rank && bytes <= KV_CHUNK_MAX_BYTES; i++)
        bytes *= c[i];    /* at most 2^26 * 2^31: no overflow */
    if (bytes > KV_CHUNK_MAX_BYTES) {
        char cs[96];
        format_dims(cs, sizeof cs, rank, c);
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: %s has chunks %s of more than "
                             "%lld MiB each, expected at most that", tr->path, dpath, cs,
                             KV_CHUNK_MAX_BYTES >> 20);
    }
    return 0;
}

/*
 * Checks an open dataset: type class (float of 2 or 4 bytes when is_float is 1, of 8 when
 * it is 2, any integer when 0), rank and each dimension against the attributes named in names.
 */
static int check_open_dataset(const kv_trace *tr, hid_t d, const char *dpath, int is_float,
                              int rank, const long long *want, const char *names,
                              char *err, size_t len)
{
    hid_t type = H5Dget_type(d);
    hid_t space = H5Dget_space(d);
    int rc = 0;
    if (type < 0 || space < 0) {
        rc = kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot read the type and shape of %s",
                           tr->path, dpath);
        goto out;
    }
    H5T_class_t cls = H5Tget_class(type);
    size_t size = H5Tget_size(type);
    int type_ok = is_float == 2 ? cls == H5T_FLOAT && size == 8
                  : is_float ? cls == H5T_FLOAT && (size == 2 || size == 4) : cls == H5T_INTEGER;
    if (!type_ok) {
        char tname[32];
        kv_trace_type_name(type, tname, sizeof tname);
        rc = kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: %s has type %s, expected %s",
                           tr->path, dpath, tname, is_float == 2 ? "float64"
                           : is_float ? "float16 or float32" : "integer");
        goto out;
    }
    int got_rank = H5Sget_simple_extent_ndims(space);
    hsize_t dims[H5S_MAX_RANK];
    if (got_rank != rank) {
        rc = kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: %s has rank %d, expected %d %s",
                           tr->path, dpath, got_rank, rank, names);
        goto out;
    }
    H5Sget_simple_extent_dims(space, dims, NULL);
    long long got[3];
    int same = 1;
    for (int i = 0; i < rank; i++) {
        got[i] = (long long)dims[i];
        same &= got[i] == want[i];
    }
    if (!same) {
        char gs[96], ws[96];
        format_dims(gs, sizeof gs, rank, got);
        format_dims(ws, sizeof ws, rank, want);
        rc = kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: %s has shape %s, expected %s %s",
                           tr->path, dpath, gs, ws, names);
        goto out;
    }
    rc = check_chunks(tr, d, dpath, rank, got, size, err, len);
out:
    if (type >= 0)
        H5Tclose(type);
    if (space >= 0)
        H5Sclose(space);
    return rc;
}

/* Checks /layers/<layer>/<spec->name>; *present says whether it exists. */
static int check_layer_dataset(const kv_trace *tr, int layer, const struct dset_spec *s,
                               int *present, char *err, size_t len)
{
    const kv_trace_info *in = &tr->info;
    char dpath[KV_PATH_MAX];
    snprintf(dpath, sizeof dpath, "/layers/%d/%s", layer, s->name);
    int required = (s->need == NEED_ATTN && in->source == KV_SOURCE_ATTN)
                   || (s->need == NEED_QK && in->source == KV_SOURCE_QK);
    *present = 0;
    htri_t ex = H5Lexists(tr->file, dpath, H5P_DEFAULT);
    if (ex < 0)
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: /layers/%d is not a group",
                             tr->path, layer);
    if (ex == 0) {
        if (!required)
            return 0;
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: missing dataset %s (source = "
                             "%s needs it in every layer)", tr->path, dpath,
                             in->source == KV_SOURCE_ATTN ? "attn" : "qk");
    }
    hid_t d = H5Dopen2(tr->file, dpath, H5P_DEFAULT);
    if (d < 0)
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: %s is not a dataset",
                             tr->path, dpath);
    long long want[3];
    char names[96] = "(";
    for (int i = 0; i < s->rank; i++) {
        want[i] = dim_value(in, s->dims[i]);
        strcat(names, dim_names[s->dims[i]]);
        strcat(names, i + 1 < s->rank ? ", " : ")");
    }
    int rc = check_open_dataset(tr, d, dpath, 1, s->rank, want, names, err, len);
    H5Dclose(d);
    *present = rc == 0;
    return rc;
}

/* Checks the optional /layers/<layer>/lse (float64 [n_heads, T]); *present says whether it
 * exists. */
static int check_lse_dataset(const kv_trace *tr, int layer, int *present, char *err,
                             size_t len)
{
    char dpath[KV_PATH_MAX];
    snprintf(dpath, sizeof dpath, "/layers/%d/lse", layer);
    *present = 0;
    if (H5Lexists(tr->file, dpath, H5P_DEFAULT) <= 0)
        return 0;
    hid_t d = H5Dopen2(tr->file, dpath, H5P_DEFAULT);
    if (d < 0)
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: %s is not a dataset",
                             tr->path, dpath);
    long long want[2] = { tr->info.n_heads, tr->info.n_tokens };
    int rc = check_open_dataset(tr, d, dpath, 2, 2, want, "(n_heads, n_tokens)", err, len);
    H5Dclose(d);
    *present = rc == 0;
    return rc;
}

/* Checks every layer's datasets and the optional /tokens; sets has_v, has_qk, has_lse,
 * has_tokens. */
static int check_datasets(kv_trace *tr, char *err, size_t len)
{
    kv_trace_info *in = &tr->info;
    htri_t ex = H5Lexists(tr->file, "/layers", H5P_DEFAULT);
    if (ex <= 0)
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: missing group /layers "
                             "(n_layers = %d)", tr->path, in->n_layers);
    in->has_v = 1;
    in->has_lse = 1;
    in->has_o_full = 1;
    tr->has_qk = 1;
    for (int l = 0; l < in->n_layers; l++) {
        char gpath[KV_PATH_MAX];
        snprintf(gpath, sizeof gpath, "/layers/%d", l);
        if (H5Lexists(tr->file, gpath, H5P_DEFAULT) <= 0)
            return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: missing group %s (n_layers "
                                 "= %d needs /layers/0 .. /layers/%d)", tr->path, gpath,
                                 in->n_layers, in->n_layers - 1);
        int present[sizeof layer_dsets / sizeof layer_dsets[0]];
        for (size_t i = 0; i < sizeof layer_dsets / sizeof layer_dsets[0]; i++) {
            int rc = check_layer_dataset(tr, l, &layer_dsets[i], &present[i], err, len);
            if (rc)
                return rc;
        }
        tr->has_qk &= present[1] && present[2];
        in->has_v &= present[3];
        in->has_o_full &= present[4];
        int lse_present;
        int rc = check_lse_dataset(tr, l, &lse_present, err, len);
        if (rc)
            return rc;
        in->has_lse &= lse_present;
    }
    in->has_lse &= in->source == KV_SOURCE_QK;
    in->has_o_full &= in->source == KV_SOURCE_QK;
    ex = H5Lexists(tr->file, "/tokens", H5P_DEFAULT);
    in->has_tokens = ex > 0;
    if (!in->has_tokens)
        return 0;
    hid_t d = H5Dopen2(tr->file, "/tokens", H5P_DEFAULT);
    if (d < 0)
        return kv_trace_fail(err, len, KV_ETRACE_FORMAT, "%s: /tokens is not a dataset",
                             tr->path);
    long long want = in->n_tokens;
    int rc = check_open_dataset(tr, d, "/tokens", 0, 1, &want, "(n_tokens)", err, len);
    H5Dclose(d);
    return rc;
}

/* ------------------------------------------------------------ open / close */

int kv_check_regular_file(const char *path, char *err, size_t err_len)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return kv_trace_fail(err, err_len, -1, "%s: %s", path, strerror(errno));
    if (S_ISREG(st.st_mode))
        return 0;
    /* a FIFO or a device would block the open or the read, possibly forever */
    const char *what = S_ISDIR(st.st_mode) ? "a directory" : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                       : S_ISSOCK(st.st_mode) ? "a socket" : "not a plain file";
    return kv_trace_fail(err, err_len, -1, "%s: is %s, expected a regular file", path, what);
}

static int open_checked(const char *path, kv_trace **out, char *err, size_t err_len);

int kv_trace_open(const char *path, kv_trace **out, char *err, size_t err_len)
{
    kv_trace_quiet();
    if (!out || !path)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_open: NULL argument");
    *out = NULL;
    g_reading = path;
    int rc = open_checked(path, out, err, err_len);
    g_reading = NULL;
    return rc;
}

/* kv_trace_open, with g_reading set by the caller. */
static int open_checked(const char *path, kv_trace **out, char *err, size_t err_len)
{
    if (kv_check_regular_file(path, err, err_len) != 0)
        return KV_ETRACE_IO;
    if (access(path, R_OK) != 0)
        return kv_trace_fail(err, err_len, KV_ETRACE_IO, "%s: %s", path, strerror(errno));
    if (H5Fis_hdf5(path) <= 0)
        return kv_trace_fail(err, err_len, KV_ETRACE_IO, "%s: not an HDF5 file (or "
                             "truncated/damaged)", path);
    kv_trace *tr = calloc(1, sizeof *tr);
    if (!tr || !(tr->path = strdup(path))) {
        free(tr);
        return kv_trace_fail(err, err_len, KV_ETRACE_NOMEM, "%s: out of memory", path);
    }
    pthread_mutex_init(&tr->lock, NULL);
    for (int i = 0; i < KV_OPEN_ATTN_MAX; i++)
        tr->attn[i].id = H5I_INVALID_HID;
    /* Strong close: whatever an error path left open goes with the file. */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl >= 0)
        H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    tr->file = H5Fopen(path, H5F_ACC_RDONLY, fapl >= 0 ? fapl : H5P_DEFAULT);
    if (fapl >= 0)
        H5Pclose(fapl);
    int rc = tr->file < 0 ? kv_trace_fail(err, err_len, KV_ETRACE_IO, "%s: cannot open as "
                                          "HDF5 (truncated or damaged?)", path) : 0;
    if (!rc)
        rc = read_root_attrs(tr, err, err_len);
    if (!rc)
        rc = check_info(tr, err, err_len);
    if (!rc)
        rc = check_datasets(tr, err, err_len);
    if (rc) {
        kv_trace_close(tr);
        return rc;
    }
    *out = tr;
    return 0;
}

const kv_trace_info *kv_trace_get_info(const kv_trace *tr)
{
    return &tr->info;
}

const char *kv_trace_path(const kv_trace *tr)
{
    return tr->path;
}

int kv_trace_has_qk(const kv_trace *tr)
{
    return tr->has_qk;
}

void kv_trace_close(kv_trace *tr)
{
    if (!tr)
        return;
    kv_trace_quiet();
    g_reading = tr->path;
    for (int i = 0; i < KV_OPEN_ATTN_MAX; i++)
        if (tr->attn[i].id >= 0)
            H5Dclose(tr->attn[i].id);
    if (tr->file >= 0)
        H5Fclose(tr->file);
    g_reading = NULL;
    pthread_mutex_destroy(&tr->lock);
    free(tr->path);
    free(tr);
}

/* ------------------------------------------------------------ reading */

/*
 * 1 when d stores IEEE binary16, little-endian (numpy's and h5py's float16, our writer's).
 * HDF5 converts such data to float32 with its generic soft conversion, an order of
 * magnitude slower than reading the raw halves and widening them here (exact either way);
 * other float layouts go through HDF5.
 */
static int stores_ieee_half(hid_t d)
{
    hid_t t = H5Dget_type(d);
    if (t < 0)
        return 0;
    size_t spos, epos, esize, mpos, msize;
    int half = H5Tget_class(t) == H5T_FLOAT && H5Tget_size(t) == 2
               && H5Tget_order(t) == H5T_ORDER_LE && H5Tget_offset(t) == 0
               && H5Tget_fields(t, &spos, &epos, &esize, &mpos, &msize) >= 0
               && spos == 15 && epos == 10 && esize == 5 && mpos == 0 && msize == 10
               && H5Tget_ebias(t) == 15 && H5Tget_norm(t) == H5T_NORM_IMPLIED;
    H5Tclose(t);
    return half;
}

static float half_table[65536];
static pthread_once_t half_table_once = PTHREAD_ONCE_INIT;

static void fill_half_table(void)
{
    for (uint32_t i = 0; i < 65536; i++)
        half_table[i] = kv_half_to_float((uint16_t)i);
}

/* Widens n halves stored at the start of buf into n floats, in place: from the end, float
 * i overwrites halves 2i and 2i+1, which (i >= 1) have already been widened. */
static void widen_halves(float *buf, size_t n)
{
    pthread_once(&half_table_once, fill_half_table);
    const uint16_t *h = (const uint16_t *)(const void *)buf;
    for (size_t i = n; i-- > 0;)
        buf[i] = half_table[h[i]];
}

/* Chunk cache for an attn dataset: two chunk-rows of every head, capped. */
static hid_t attn_access_plist(const kv_trace *tr, hid_t d)
{
    hid_t dcpl = H5Dget_create_plist(d);
    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    hsize_t chunk[3];
    if (dcpl < 0 || dapl < 0 || H5Pget_layout(dcpl) != H5D_CHUNKED
        || H5Pget_chunk(dcpl, 3, chunk) != 3) {
        if (dcpl >= 0)
            H5Pclose(dcpl);
        return dapl;
    }
    H5Pclose(dcpl);
    const kv_trace_info *in = &tr->info;
    hid_t type = H5Dget_type(d);
    size_t elem = type >= 0 ? H5Tget_size(type) : sizeof(float);   /* cached as stored */
    if (type >= 0)
        H5Tclose(type);
    size_t chunk_bytes = (size_t)(chunk[0] * chunk[1] * chunk[2]) * elem;
    if (chunk_bytes == 0)
        return dapl;   /* a damaged layout: HDF5's read reports it */
    size_t per_row = (size_t)((in->n_heads + chunk[0] - 1) / chunk[0])
                     * (size_t)((in->n_tokens + chunk[2] - 1) / chunk[2]);
    size_t bytes = 2 * per_row * chunk_bytes;
    if (bytes > KV_CHUNK_CACHE_MAX_BYTES)
        bytes = KV_CHUNK_CACHE_MAX_BYTES;
    if (bytes < ((size_t)1 << 20))
        bytes = (size_t)1 << 20;
    /* HDF5 advises ~100 hash slots per chunk that fits; a prime-ish odd count. */
    size_t slots = 100 * (bytes / chunk_bytes + 1) + 1;
    /* w0 = 1: chunks read in full are evicted first; partly read ones wait for the rest. */
    H5Pset_chunk_cache(dapl, slots, bytes, 1.0);
    return dapl;
}

/* The open attn dataset of layer (opened into the LRU table if needed); caller holds lock.
 * NULL with err set on failure. */
static const struct open_attn *attn_dataset(kv_trace *tr, int layer, char *err, size_t len)
{
    int victim = 0;
    tr->tick++;
    for (int i = 0; i < KV_OPEN_ATTN_MAX; i++) {
        if (tr->attn[i].id >= 0 && tr->attn[i].layer == layer) {
            tr->attn[i].used = tr->tick;
            return &tr->attn[i];
        }
        if (tr->attn[i].id < 0 || (tr->attn[victim].id >= 0
                                   && tr->attn[i].used < tr->attn[victim].used))
            victim = i;
    }
    char dpath[KV_PATH_MAX];
    snprintf(dpath, sizeof dpath, "/layers/%d/attn", layer);
    hid_t d = H5Dopen2(tr->file, dpath, H5P_DEFAULT);
    hid_t dapl = d >= 0 ? attn_access_plist(tr, d) : H5I_INVALID_HID;
    if (d >= 0)
        H5Dclose(d);
    d = dapl >= 0 ? H5Dopen2(tr->file, dpath, dapl) : H5I_INVALID_HID;
    if (dapl >= 0)
        H5Pclose(dapl);
    if (d < 0) {
        kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot open %s", tr->path, dpath);
        return NULL;
    }
    if (tr->attn[victim].id >= 0)
        H5Dclose(tr->attn[victim].id);
    tr->attn[victim] = (struct open_attn){d, layer, stores_ieee_half(d), tr->tick};
    return &tr->attn[victim];
}

/* Reads the rectangle heads h0..h1-1, rows t0..t1-1, columns 0..t1-1 into out (row
 * stride T) and zeroes the entries above the diagonal. Caller holds the lock. */
static int read_attn_block(kv_trace *tr, const struct open_attn *oa, int layer, int h0, int h1,
                           int t0, int t1, float *out, char *err, size_t len)
{
    const hid_t d = oa->id;
    /* halves: read raw into the first half of out, with the same layout, then widen */
    hid_t mtype = oa->is_half ? H5Dget_type(d) : H5T_NATIVE_FLOAT;
    const hsize_t T = (hsize_t)tr->info.n_tokens;
    hsize_t start[3] = {(hsize_t)h0, (hsize_t)t0, 0};
    hsize_t count[3] = {(hsize_t)(h1 - h0), (hsize_t)(t1 - t0), (hsize_t)t1};
    hsize_t mdims[3] = {count[0], count[1], T};
    hsize_t mstart[3] = {0, 0, 0};
    hid_t fspace = H5Dget_space(d);
    hid_t mspace = H5Screate_simple(3, mdims, NULL);
    int ok = fspace >= 0 && mspace >= 0
             && H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL) >= 0
             && H5Sselect_hyperslab(mspace, H5S_SELECT_SET, mstart, NULL, count, NULL) >= 0
             && mtype >= 0 && H5Dread(d, mtype, mspace, fspace, H5P_DEFAULT, out) >= 0;
    if (fspace >= 0)
        H5Sclose(fspace);
    if (mspace >= 0)
        H5Sclose(mspace);
    if (oa->is_half && mtype >= 0)
        H5Tclose(mtype);
    if (!ok) {
        char dpath[KV_PATH_MAX];
        snprintf(dpath, sizeof dpath, "/layers/%d/attn", layer);
        return kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot read %s rows %d..%d of heads "
                             "%d..%d (%s)", tr->path, dpath, t0, t1 - 1, h0, h1 - 1,
                             read_failure_reason(tr, dpath));
    }
    if (oa->is_half)
        widen_halves(out, (size_t)(mdims[0] * mdims[1] * mdims[2]));
    float *row = out;
    for (int h = h0; h < h1; h++)
        for (int t = t0; t < t1; t++, row += T)
            memset(row + t + 1, 0, (T - (hsize_t)t - 1) * sizeof(float));
    return 0;
}

int kv_trace_read_attn(kv_trace *tr, int layer, int h0, int h1, int t0, int t1,
                       float *out, char *err, size_t err_len)
{
    kv_trace_quiet();
    if (!tr || !out)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_read_attn: NULL argument");
    const kv_trace_info *in = &tr->info;
    if (in->source != KV_SOURCE_ATTN)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "%s: source is qk, there are no "
                             "attn rows to read", tr->path);
    if (layer < 0 || layer >= in->n_layers || h0 < 0 || h0 >= h1 || h1 > in->n_heads
        || t0 < 0 || t0 >= t1 || t1 > in->n_tokens)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "%s: attn read of layer %d, heads "
                             "[%d, %d), rows [%d, %d) is outside the trace", tr->path, layer,
                             h0, h1, t0, t1);
    pthread_mutex_lock(&tr->lock);
    g_reading = tr->path;
    const struct open_attn *oa = attn_dataset(tr, layer, err, err_len);
    int rc = !oa ? KV_ETRACE_IO
                 : read_attn_block(tr, oa, layer, h0, h1, t0, t1, out, err, err_len);
    g_reading = NULL;
    pthread_mutex_unlock(&tr->lock);
    if (!rc && tr->check_values)
        rc = kv_check_attn_rows(tr->path, layer, h0, h1 - h0, t0, t1 - t0, in->n_tokens,
                                in->attn_precision, out, err, err_len);
    return rc;
}

/* Reads all of a dataset converted to mtype; float32 from IEEE halves is widened here. */
static int read_whole(kv_trace *tr, const char *dpath, hid_t mtype, void *out,
                      char *err, size_t len)
{
    hid_t d = H5Dopen2(tr->file, dpath, H5P_DEFAULT);
    int half = d >= 0 && mtype == H5T_NATIVE_FLOAT && stores_ieee_half(d);
    hid_t rtype = half ? H5Dget_type(d) : mtype;
    hid_t space = d >= 0 ? H5Dget_space(d) : H5I_INVALID_HID;
    hssize_t n = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    int ok = d >= 0 && rtype >= 0 && n >= 0
             && H5Dread(d, rtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) >= 0;
    if (ok && half)
        widen_halves(out, (size_t)n);
    if (half && rtype >= 0)
        H5Tclose(rtype);
    if (space >= 0)
        H5Sclose(space);
    if (d >= 0)
        H5Dclose(d);
    if (!ok)
        return kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot read %s (%s)",
                             tr->path, dpath, read_failure_reason(tr, dpath));
    return 0;
}

/* read_whole under the trace's lock, with the path named for the fault handler. */
static int read_whole_locked(kv_trace *tr, const char *dpath, hid_t mtype, void *out,
                             char *err, size_t len)
{
    pthread_mutex_lock(&tr->lock);
    g_reading = tr->path;
    int rc = read_whole(tr, dpath, mtype, out, err, len);
    g_reading = NULL;
    pthread_mutex_unlock(&tr->lock);
    return rc;
}

int kv_trace_read_qk(kv_trace *tr, int layer, float *q, float *k, char *err, size_t err_len)
{
    kv_trace_quiet();
    if (!tr || !q || !k)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_read_qk: NULL argument");
    if (!tr->has_qk)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "%s: the trace has no q and k "
                             "datasets (source = attn)", tr->path);
    if (layer < 0 || layer >= tr->info.n_layers)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "%s: layer %d outside 0..%d",
                             tr->path, layer, tr->info.n_layers - 1);
    char qpath[KV_PATH_MAX], kpath[KV_PATH_MAX];
    snprintf(qpath, sizeof qpath, "/layers/%d/q", layer);
    snprintf(kpath, sizeof kpath, "/layers/%d/k", layer);
    pthread_mutex_lock(&tr->lock);
    g_reading = tr->path;
    int rc = read_whole(tr, qpath, H5T_NATIVE_FLOAT, q, err, err_len);
    if (!rc)
        rc = read_whole(tr, kpath, H5T_NATIVE_FLOAT, k, err, err_len);
    g_reading = NULL;
    pthread_mutex_unlock(&tr->lock);
    const kv_trace_info *in = &tr->info;
    int qdims[3] = {in->n_heads, in->n_tokens, in->head_dim};
    int kdims[3] = {in->n_kv_heads, in->n_tokens, in->head_dim};
    if (!rc && tr->check_values)
        rc = kv_check_finite(tr->path, qpath, qdims, q, err, err_len);
    if (!rc && tr->check_values)
        rc = kv_check_finite(tr->path, kpath, kdims, k, err, err_len);
    return rc;
}

/* Rows t0..t1-1 of every head of a [n, T, D] float dataset into out's [n][T][D] layout:
 * float32 files scatter straight into place (a memory hyperslab); IEEE halves are read raw
 * into a packed buffer and widened here, as read_whole does. */
static int read_row_slab(kv_trace *tr, const char *dpath, int t0, int t1, float *out,
                         char *err, size_t len)
{
    hid_t d = H5Dopen2(tr->file, dpath, H5P_DEFAULT);
    int half = d >= 0 && stores_ieee_half(d);
    hid_t rtype = d < 0 ? H5I_INVALID_HID : half ? H5Dget_type(d) : H5T_NATIVE_FLOAT;
    hid_t fspace = d >= 0 ? H5Dget_space(d) : H5I_INVALID_HID;
    hsize_t dims[3] = {0, 0, 0};
    int ok = d >= 0 && rtype >= 0 && fspace >= 0
             && H5Sget_simple_extent_ndims(fspace) == 3
             && H5Sget_simple_extent_dims(fspace, dims, NULL) == 3;
    hsize_t start[3] = {0, (hsize_t)t0, 0};
    hsize_t count[3] = {dims[0], (hsize_t)(t1 - t0), dims[2]};
    size_t n = (size_t)(count[0] * count[1] * count[2]);
    uint16_t *raw = ok && half ? malloc(n * sizeof *raw) : NULL;
    int nomem = ok && half && !raw;
    ok &= !nomem;
    /* halves: the packed slab; floats: the slab's place in the whole [n, T, D] tensor */
    hid_t mspace = ok ? H5Screate_simple(3, half ? count : dims, NULL) : H5I_INVALID_HID;
    hsize_t mstart[3] = {0, half ? 0 : (hsize_t)t0, 0};
    int read_ok = ok && mspace >= 0
                  && H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL) >= 0
                  && H5Sselect_hyperslab(mspace, H5S_SELECT_SET, mstart, NULL, count, NULL) >= 0
                  && H5Dread(d, rtype, mspace, fspace, H5P_DEFAULT, half ? (void *)raw
                                                                         : (void *)out) >= 0;
    if (read_ok && half) {
        pthread_once(&half_table_once, fill_half_table);
        const uint16_t *h = raw;
        for (size_t i = 0; i < count[0]; i++)
            for (size_t t = 0; t < count[1]; t++, h += count[2]) {
                float *o = out + (i * dims[1] + (size_t)t0 + t) * dims[2];
                for (size_t k = 0; k < count[2]; k++)
                    o[k] = half_table[h[k]];
            }
    }
    free(raw);
    if (mspace >= 0)
        H5Sclose(mspace);
    if (fspace >= 0)
        H5Sclose(fspace);
    if (half && rtype >= 0)
        H5Tclose(rtype);
    if (d >= 0)
        H5Dclose(d);
    if (nomem)
        return kv_trace_fail(err, len, KV_ETRACE_NOMEM, "%s: out of memory reading %s",
                             tr->path, dpath);
    if (!read_ok)
        return kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot read rows %d..%d of %s "
                             "(%s)", tr->path, t0, t1 - 1, dpath, read_failure_reason(tr, dpath));
    return 0;
}

int kv_trace_read_rows(kv_trace *tr, int layer, kv_tensor which, int t0, int t1, float *out,
                       char *err, size_t err_len)
{
    kv_trace_quiet();
    if (!tr || !out)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_read_rows: NULL "
                             "argument");
    if (which == KV_TENSOR_V ? !tr->info.has_v : !tr->has_qk)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "%s: the trace has no %s",
                             tr->path, which == KV_TENSOR_V ? "v datasets"
                                                            : "q and k datasets (source = attn)");
    if (layer < 0 || layer >= tr->info.n_layers || t0 < 0 || t0 >= t1
        || t1 > tr->info.n_tokens
        || (which != KV_TENSOR_Q && which != KV_TENSOR_K && which != KV_TENSOR_V))
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "%s: read of rows [%d, %d) of "
                             "layer %d is outside the trace", tr->path, t0, t1, layer);
    char dpath[KV_PATH_MAX];
    snprintf(dpath, sizeof dpath, "/layers/%d/%s", layer,
             which == KV_TENSOR_Q ? "q" : which == KV_TENSOR_K ? "k" : "v");
    pthread_mutex_lock(&tr->lock);
    int rc = read_row_slab(tr, dpath, t0, t1, out, err, err_len);
    pthread_mutex_unlock(&tr->lock);
    if (rc == 0 && tr->check_values) {
        const kv_trace_info *in = &tr->info;
        int dims[3] = { which == KV_TENSOR_Q ? in->n_heads : in->n_kv_heads, in->n_tokens,
                        in->head_dim };
        rc = kv_check_finite_rows(tr->path, dpath, dims, t0, t1, out, err, err_len);
    }
    return rc;
}

int kv_trace_read_tokens(kv_trace *tr, int32_t *tokens, char *err, size_t err_len)
{
    kv_trace_quiet();
    if (!tr || !tokens)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_read_tokens: NULL "
                             "argument");
    if (!tr->info.has_tokens)
        return kv_trace_fail(err, err_len, KV_ETRACE_FORMAT, "%s: the trace has no /tokens",
                             tr->path);
    return read_whole_locked(tr, "/tokens", H5T_NATIVE_INT32, tokens, err, err_len);
}

int kv_trace_has_token_text(const kv_trace *tr)
{
    kv_trace_quiet();
    return tr && H5Lexists(tr->file, "/token_text", H5P_DEFAULT) > 0;
}

/* Longest fixed-length token text accepted, bytes: far above any vocabulary's, low enough
 * that a damaged header cannot ask for a huge buffer. */
#define TOKEN_TEXT_MAX_WIDTH 4096

/* The T fixed-length strings of width bytes of dataset d, as kv_trace_read_token_text
 * returns them; NULL on failure. */
static char **read_fixed_strings(hid_t d, hid_t ftype, size_t T, size_t width)
{
    char **out = malloc(T * sizeof(char *) + T * (width + 1));
    if (!out)
        return NULL;
    char *raw = (char *)(out + T);
    hid_t mtype = H5Tcopy(H5T_C_S1);
    int ok = mtype >= 0 && H5Tset_size(mtype, width + 1) >= 0
             && H5Tset_strpad(mtype, H5T_STR_NULLTERM) >= 0
             && H5Tset_cset(mtype, H5Tget_cset(ftype)) >= 0
             && H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw) >= 0;
    if (mtype >= 0)
        H5Tclose(mtype);
    for (size_t t = 0; ok && t < T; t++) {
        out[t] = raw + t * (width + 1);
        out[t][width] = '\0';
    }
    if (!ok) {
        free(out);
        return NULL;
    }
    return out;
}

/* The T variable-length strings of dataset d (what h5py writes for a list of str), each
 * cut at TOKEN_TEXT_MAX_WIDTH bytes, copied into one allocation; NULL on failure. */
static char **read_vlen_strings(hid_t d, hid_t ftype, hid_t space, size_t T)
{
    char **vl = calloc(T, sizeof *vl), **out = NULL;
    hid_t mtype = H5Tcopy(H5T_C_S1);
    int ok = vl && mtype >= 0 && H5Tset_size(mtype, H5T_VARIABLE) >= 0
             && H5Tset_cset(mtype, H5Tget_cset(ftype)) >= 0
             && H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, vl) >= 0;
    size_t bytes = 0;
    for (size_t t = 0; ok && t < T; t++)
        bytes += (vl[t] ? strnlen(vl[t], TOKEN_TEXT_MAX_WIDTH) : 0) + 1;
    if (ok && (out = malloc(T * sizeof(char *) + bytes))) {
        char *w = (char *)(out + T);
        for (size_t t = 0; t < T; t++) {
            size_t n = vl[t] ? strnlen(vl[t], TOKEN_TEXT_MAX_WIDTH) : 0;
            memcpy(w, vl[t] ? vl[t] : "", n);
            w[n] = '\0';
            out[t] = w;
            w += n + 1;
        }
    }
    if (ok)
        H5Dvlen_reclaim(mtype, space, H5P_DEFAULT, vl);
    if (mtype >= 0)
        H5Tclose(mtype);
    free(vl);
    return out;
}

int kv_trace_read_token_text(kv_trace *tr, char ***texts, char *err, size_t err_len)
{
    kv_trace_quiet();
    *texts = NULL;
    if (!kv_trace_has_token_text(tr))
        return kv_trace_fail(err, err_len, KV_ETRACE_FORMAT, "%s: the trace has no "
                             "/token_text (captured without a tokenizer)", tr ? tr->path : "");
    pthread_mutex_lock(&tr->lock);
    g_reading = tr->path;
    int rc = 0;
    hid_t d = H5Dopen2(tr->file, "/token_text", H5P_DEFAULT);
    hid_t ftype = d >= 0 ? H5Dget_type(d) : H5I_INVALID_HID;
    hid_t space = d >= 0 ? H5Dget_space(d) : H5I_INVALID_HID;
    size_t T = (size_t)tr->info.n_tokens, width = ftype >= 0 ? H5Tget_size(ftype) : 0;
    int vlen = ftype >= 0 && H5Tis_variable_str(ftype) > 0;
    hsize_t dims[2] = {0, 0};
    int ok_shape = ftype >= 0 && H5Tget_class(ftype) == H5T_STRING
                   && (vlen || (width >= 1 && width <= TOKEN_TEXT_MAX_WIDTH)) && space >= 0
                   && H5Sget_simple_extent_ndims(space) == 1
                   && H5Sget_simple_extent_dims(space, dims, NULL) == 1 && dims[0] == T;
    char **out = NULL;
    if (!ok_shape)
        rc = kv_trace_fail(err, err_len, KV_ETRACE_FORMAT, "%s: /token_text is not [%zu] "
                           "strings", tr->path, T);
    else if (!(out = vlen ? read_vlen_strings(d, ftype, space, T)
                          : read_fixed_strings(d, ftype, T, width)))
        rc = kv_trace_fail(err, err_len, KV_ETRACE_IO, "%s: cannot read /token_text "
                           "(damaged file, or out of memory)", tr->path);
    if (space >= 0)
        H5Sclose(space);
    if (ftype >= 0)
        H5Tclose(ftype);
    if (d >= 0)
        H5Dclose(d);
    g_reading = NULL;
    pthread_mutex_unlock(&tr->lock);
    *texts = out;
    return rc;
}

int kv_trace_read_attr_string(kv_trace *tr, const char *name, char *buf, size_t size,
                              char *err, size_t err_len)
{
    kv_trace_quiet();
    if (!tr || !name || !buf || size == 0)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_read_attr_string: "
                             "NULL argument");
    pthread_mutex_lock(&tr->lock);
    int rc = read_string_attr(tr, name, buf, size, err, err_len);
    pthread_mutex_unlock(&tr->lock);
    return rc;
}

int kv_trace_read_v(kv_trace *tr, int layer, float *v, char *err, size_t err_len)
{
    kv_trace_quiet();
    if (!tr || !v)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_read_v: NULL argument");
    const kv_trace_info *in = &tr->info;
    if (layer < 0 || layer >= in->n_layers)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "%s: layer %d outside 0..%d",
                             tr->path, layer, in->n_layers - 1);
    char vpath[KV_PATH_MAX];
    snprintf(vpath, sizeof vpath, "/layers/%d/v", layer);
    pthread_mutex_lock(&tr->lock);
    g_reading = tr->path;
    /* kv_trace_open checked shape and type of every v present */
    int rc = H5Lexists(tr->file, vpath, H5P_DEFAULT) > 0
             ? read_whole(tr, vpath, H5T_NATIVE_FLOAT, v, err, err_len)
             : kv_trace_fail(err, err_len, KV_ETRACE_ARG, "%s: no %s", tr->path, vpath);
    g_reading = NULL;
    pthread_mutex_unlock(&tr->lock);
    int dims[3] = {in->n_kv_heads, in->n_tokens, in->head_dim};
    if (!rc && tr->check_values)
        rc = kv_check_finite(tr->path, vpath, dims, v, err, err_len);
    return rc;
}

int kv_trace_read_lse(kv_trace *tr, int layer, double *lse, char *err, size_t err_len)
{
    kv_trace_quiet();
    if (!tr || !lse)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_read_lse: NULL argument");
    const kv_trace_info *in = &tr->info;
    if (layer < 0 || layer >= in->n_layers || !in->has_lse)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "%s: no /layers/%d/lse (kvsim "
                             "index stores it)", tr->path, layer);
    char dpath[KV_PATH_MAX];
    snprintf(dpath, sizeof dpath, "/layers/%d/lse", layer);
    int rc = read_whole_locked(tr, dpath, H5T_NATIVE_DOUBLE, lse, err, err_len);
    size_t n = (size_t)in->n_heads * (size_t)in->n_tokens;
    for (size_t i = 0; rc == 0 && tr->check_values && i < n; i++)
        if (!isfinite(lse[i]))
            rc = kv_trace_fail(err, err_len, KV_ETRACE_FORMAT, "%s: %s[%zu, %zu] is %g, "
                               "expected a finite log-normaliser", tr->path, dpath,
                               i / (size_t)in->n_tokens, i % (size_t)in->n_tokens, lse[i]);
    return rc;
}

int kv_trace_read_o_full(kv_trace *tr, int layer, float *o, char *err, size_t err_len)
{
    kv_trace_quiet();
    if (!tr || !o)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_read_o_full: NULL "
                             "argument");
    const kv_trace_info *in = &tr->info;
    if (layer < 0 || layer >= in->n_layers || !in->has_o_full)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "%s: no /layers/%d/o_full (kvsim "
                             "index stores it for traces with v)", tr->path, layer);
    char dpath[KV_PATH_MAX];
    snprintf(dpath, sizeof dpath, "/layers/%d/o_full", layer);
    int rc = read_whole_locked(tr, dpath, H5T_NATIVE_FLOAT, o, err, err_len);
    int dims[3] = {in->n_heads, in->n_tokens, in->head_dim};
    if (!rc && tr->check_values)
        rc = kv_check_finite(tr->path, dpath, dims, o, err, err_len);
    return rc;
}

void kv_trace_set_read_checks(kv_trace *tr, int on)
{
    tr->check_values = on != 0;
}
