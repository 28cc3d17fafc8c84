/*
 * trace_write.c - writes kvtrace v1 files (FORMAT.md).
 *
 * Layout decisions:
 *   - root attributes in one fixed order, integers as int32, strings as variable-length
 *     UTF-8 (what h5py writes for str, so h5py users read back str, not bytes);
 *   - every /layers/<l> group is created up front, in order, so a file that misses a
 *     layer's data is reported as a missing dataset of that layer;
 *   - datasets chunked, shuffle + gzip: (1, 128, 128) attn tiles, of which only those that
 *     touch the lower triangle are ever written (unwritten chunks take no space); q/k/v in
 *     (1, min(T, 256), head_dim) chunks;
 *   - float16 is rounded here (ties to even, like numpy) and written without conversion,
 *     so the stored bits do not depend on HDF5's own conversion rounding;
 *   - object modification times are not recorded, so identical inputs give identical files.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "traces/trace_int.h"
#include "traces/validate.h"

#define KV_ATTN_TILE 128
#define KV_QK_CHUNK_ROWS 256
#define KV_GZIP_LEVEL 4
#define KV_WRITE_CACHE_MAX_BYTES ((size_t)64 << 20)
#define KV_PATH_MAX 64

struct kv_trace_writer {
    hid_t file;
    char *path;
    kv_trace_info info;
    int store_f16;
    hid_t ftype;       /* stored float type: IEEE f32 LE or f16 LE */
    hid_t attn;        /* the attn dataset last written to (kept open for its chunk cache) */
    int attn_layer;
    void *scratch;     /* one tile-row of rows, or one head of q/k/v, in the stored type */
    size_t scratch_bytes;
};

/* ------------------------------------------------------------ float16 */

hid_t kv_trace_f16_type(void)
{
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    if (t < 0)
        return t;
    /* sign bit 15, exponent bits 10..14, mantissa bits 0..9, bias 15: IEEE binary16 */
    if (H5Tset_fields(t, 15, 10, 5, 0, 10) < 0 || H5Tset_size(t, 2) < 0
        || H5Tset_ebias(t, 15) < 0) {
        H5Tclose(t);
        return H5I_INVALID_HID;
    }
    return t;
}

uint16_t kv_half_from_float(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)                    /* NaN: keep it quiet */
        return sign | 0x7e00u;
    if (ax >= 0x477ff000u)                   /* >= 65520 rounds to infinity */
        return sign | 0x7c00u;
    if (ax < 0x38800000u) {                  /* below 2^-14: subnormal half or zero */
        if (ax < 0x33000000u)                /* below 2^-25: rounds to zero */
            return sign;
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;            /* value / 2^-24 = m >> shift */
        uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u)))
            h++;
        return sign | (uint16_t)h;
    }
    uint32_t r = ax - (112u << 23);          /* rebias exponent 127 -> 15 */
    uint32_t h = r >> 13, rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++;                                 /* a carry into the exponent is correct */
    return sign | (uint16_t)h;
}

float kv_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {                            /* zero or subnormal: m * 2^-24 */
        float v = ldexpf((float)m, -24);
        return sign ? -v : v;
    }
    uint32_t x = sign | (e == 31 ? 0x7f800000u | (m << 13) : ((e + 112u) << 23) | (m << 13));
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

hid_t kv_trace_writer_hid(const kv_trace_writer *w)
{
    return w->file;
}

/* Converts n floats into the stored representation at dst (float32 copy or half bits). */
static void to_stored(const kv_trace_writer *w, const float *src, size_t n, void *dst)
{
    if (!w->store_f16) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    uint16_t *h = dst;
    for (size_t i = 0; i < n; i++)
        h[i] = kv_half_from_float(src[i]);
}

static size_t stored_size(const kv_trace_writer *w)
{
    return w->store_f16 ? 2 : 4;
}

static void *scratch(kv_trace_writer *w, size_t bytes)
{
    if (bytes > w->scratch_bytes) {
        void *p = realloc(w->scratch, bytes);
        if (!p)
            return NULL;
        w->scratch = p;
        w->scratch_bytes = bytes;
    }
    return w->scratch;
}

/* ------------------------------------------------------------ attributes */

static int put_attr(kv_trace_writer *w, const char *name, hid_t ftype, hid_t mtype,
                    const void *value, char *err, size_t len)
{
    kv_trace_quiet();
    if (H5Aexists(w->file, name) > 0)
        H5Adelete(w->file, name);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = space < 0 ? H5I_INVALID_HID
                           : H5Acreate2(w->file, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT);
    int ok = attr >= 0 && H5Awrite(attr, mtype, value) >= 0;
    if (attr >= 0)
        ok &= H5Aclose(attr) >= 0;
    if (space >= 0)
        H5Sclose(space);
    if (!ok)
        return kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot write root attribute %s",
                             w->path, name);
    return 0;
}

int kv_trace_write_attr_string(kv_trace_writer *w, const char *name, const char *value,
                               char *err, size_t err_len)
{
    if (!w || !name || !value)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_write_attr_string: NULL "
                             "argument");
    /* Fixed-length: a variable-length string lives in the global heap, which HDF5 1.10
     * reads without bounds checks, so one damaged byte there can crash a reader. */
    hid_t type = H5Tcopy(H5T_C_S1);
    if (type < 0 || H5Tset_size(type, strlen(value) + 1) < 0
        || H5Tset_cset(type, H5T_CSET_UTF8) < 0) {
        if (type >= 0)
            H5Tclose(type);
        return kv_trace_fail(err, err_len, KV_ETRACE_IO, "%s: cannot make a string type",
                             w->path);
    }
    int rc = put_attr(w, name, type, type, value, err, err_len);
    H5Tclose(type);
    return rc;
}

int kv_trace_write_attr_double(kv_trace_writer *w, const char *name, double value,
                               char *err, size_t err_len)
{
    if (!w || !name)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_write_attr_double: NULL "
                             "argument");
    return put_attr(w, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value, err, err_len);
}

/* Stored as int32 when it fits (every kvtrace attribute does), int64 otherwise. */
int kv_trace_write_attr_int(kv_trace_writer *w, const char *name, long long value,
                            char *err, size_t err_len)
{
    if (!w || !name)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_write_attr_int: NULL "
                             "argument");
    int fits = value >= INT32_MIN && value <= INT32_MAX;
    return put_attr(w, name, fits ? H5T_STD_I32LE : H5T_STD_I64LE, H5T_NATIVE_LLONG, &value,
                    err, err_len);
}

/* ------------------------------------------------------------ create */

static int check_create_info(const char *path, const kv_trace_info *in, char *err,
                             size_t len)
{
    if (in->n_layers < 1 || in->n_heads < 1 || in->n_kv_heads < 1 || in->head_dim < 1
        || in->n_tokens < 1)
        return kv_trace_fail(err, len, KV_ETRACE_ARG, "%s: n_layers, n_heads, n_kv_heads, "
                             "head_dim and n_tokens must be >= 1", path);
    if (in->n_heads % in->n_kv_heads != 0)
        return kv_trace_fail(err, len, KV_ETRACE_ARG, "%s: n_heads = %d is not a multiple of "
                             "n_kv_heads = %d", path, in->n_heads, in->n_kv_heads);
    if (in->prefill_len < 1 || in->prefill_len > in->n_tokens)
        return kv_trace_fail(err, len, KV_ETRACE_ARG, "%s: prefill_len = %d, expected "
                             "1..n_tokens (%d)", path, in->prefill_len, in->n_tokens);
    if (in->source != KV_SOURCE_ATTN && in->source != KV_SOURCE_QK)
        return kv_trace_fail(err, len, KV_ETRACE_ARG, "%s: unknown source %d", path,
                             (int)in->source);
    if (in->attn_precision != KV_PREC_FLOAT32 && in->attn_precision != KV_PREC_FLOAT16
        && in->attn_precision != KV_PREC_BFLOAT16)
        return kv_trace_fail(err, len, KV_ETRACE_ARG, "%s: unknown attn_precision %d", path,
                             (int)in->attn_precision);
    if (!(in->softmax_scale > 0) || !isfinite(in->softmax_scale) || in->dtype_bytes < 1)
        return kv_trace_fail(err, len, KV_ETRACE_ARG, "%s: softmax_scale must be finite and "
                             "> 0, dtype_bytes >= 1", path);
    return 0;
}

/* Object creation property lists without modification times (reproducible files). */
static hid_t untimed_plist(hid_t cls)
{
    hid_t p = H5Pcreate(cls);
    if (p >= 0 && H5Pset_obj_track_times(p, 0) < 0) {
        H5Pclose(p);
        return H5I_INVALID_HID;
    }
    return p;
}

static int create_groups(kv_trace_writer *w, char *err, size_t len)
{
    hid_t gcpl = untimed_plist(H5P_GROUP_CREATE);
    int ok = gcpl >= 0;
    for (int l = -1; ok && l < w->info.n_layers; l++) {
        char gpath[KV_PATH_MAX];
        if (l < 0)
            snprintf(gpath, sizeof gpath, "/layers");
        else
            snprintf(gpath, sizeof gpath, "/layers/%d", l);
        hid_t g = H5Gcreate2(w->file, gpath, H5P_DEFAULT, gcpl, H5P_DEFAULT);
        ok = g >= 0 && H5Gclose(g) >= 0;
    }
    if (gcpl >= 0)
        H5Pclose(gcpl);
    return ok ? 0 : kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot create the /layers "
                                  "groups", w->path);
}

static int write_root_attrs(kv_trace_writer *w, char *err, size_t len)
{
    const kv_trace_info *in = &w->info;
    const struct { const char *name; int value; } ints[] = {
        {"n_layers", in->n_layers}, {"n_heads", in->n_heads}, {"n_kv_heads", in->n_kv_heads},
        {"head_dim", in->head_dim}, {"n_tokens", in->n_tokens},
        {"prefill_len", in->prefill_len},
    };
    int rc = kv_trace_write_attr_int(w, "kvtrace_version", KV_TRACE_VERSION, err, len);
    if (!rc)
        rc = kv_trace_write_attr_string(w, "model", in->model, err, len);
    for (size_t i = 0; !rc && i < sizeof ints / sizeof ints[0]; i++)
        rc = kv_trace_write_attr_int(w, ints[i].name, ints[i].value, err, len);
    if (!rc)
        rc = kv_trace_write_attr_string(w, "source", in->source == KV_SOURCE_ATTN ? "attn"
                                        : "qk", err, len);
    if (!rc)
        rc = kv_trace_write_attr_double(w, "softmax_scale", in->softmax_scale, err, len);
    if (!rc)
        rc = kv_trace_write_attr_int(w, "dtype_bytes", in->dtype_bytes, err, len);
    if (!rc && in->attn_precision != KV_PREC_FLOAT32)   /* absent = float32: files unchanged */
        rc = kv_trace_write_attr_string(w, "attn_precision",
                                        kv_attn_precision_name(in->attn_precision), err, len);
    return rc;
}

int kv_trace_create(const char *path, const kv_trace_info *info, int store_f16,
                    kv_trace_writer **out, char *err, size_t err_len)
{
    kv_trace_quiet();
    if (!path || !info || !out)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_create: NULL argument");
    *out = NULL;
    kv_trace_info in = *info;
    if (in.softmax_scale == 0 && in.head_dim > 0)
        in.softmax_scale = 1.0 / sqrt((double)in.head_dim);
    if (in.dtype_bytes == 0)
        in.dtype_bytes = 2;
    int rc = check_create_info(path, &in, err, err_len);
    if (rc)
        return rc;
    if (H5Zfilter_avail(H5Z_FILTER_DEFLATE) <= 0 || H5Zfilter_avail(H5Z_FILTER_SHUFFLE) <= 0)
        return kv_trace_fail(err, err_len, KV_ETRACE_IO, "%s: this HDF5 has no gzip/shuffle "
                             "filter", path);
    kv_trace_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path))) {
        free(w);
        return kv_trace_fail(err, err_len, KV_ETRACE_NOMEM, "%s: out of memory", path);
    }
    w->info = in;
    w->info.version = KV_TRACE_VERSION;
    w->info.model[KV_TRACE_MODEL_LEN - 1] = '\0';
    w->store_f16 = store_f16 != 0;
    w->attn = H5I_INVALID_HID;
    w->ftype = store_f16 ? kv_trace_f16_type() : H5Tcopy(H5T_IEEE_F32LE);
    /* The 1.8 file format: superblock, object headers and chunk indexes carry checksums,
     * so a damaged file is reported by HDF5 instead of being parsed (readable by HDF5
     * 1.8 and later, h5py included). */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl >= 0)
        H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18);
    hid_t fcpl = untimed_plist(H5P_FILE_CREATE);   /* root group untimed: same bytes */
    w->file = H5Fcreate(path, H5F_ACC_TRUNC, fcpl >= 0 ? fcpl : H5P_DEFAULT,
                        fapl >= 0 ? fapl : H5P_DEFAULT);
    if (fapl >= 0)
        H5Pclose(fapl);
    if (fcpl >= 0)
        H5Pclose(fcpl);
    if (w->ftype < 0 || w->file < 0)
        rc = kv_trace_fail(err, err_len, KV_ETRACE_IO, "%s: cannot create the file", path);
    if (!rc)
        rc = write_root_attrs(w, err, err_len);
    if (!rc)
        rc = create_groups(w, err, err_len);
    if (rc) {
        kv_trace_finish(w, NULL, 0);
        return rc;
    }
    *out = w;
    return 0;
}

/* ------------------------------------------------------------ stored normalisers */

/* Writes all of data (memory type mtype) into the new dataset d, then closes d, its
 * dataspace and its creation list (each where valid: a failed create passes -1). Returns
 * 1 when d was valid, written and closed, else 0. */
static int write_all_and_close(hid_t d, hid_t space, hid_t dcpl, hid_t mtype, const void *data)
{
    int ok = d >= 0 && H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0;
    if (d >= 0)
        ok &= H5Dclose(d) >= 0;
    if (space >= 0)
        H5Sclose(space);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    return ok;
}

/* Writes dataset dpath (rank, dims, chunk; mtype in memory, ftype in the file) into the
 * open file, replacing an earlier one. */
static int store_dataset(hid_t file, const char *path, const char *dpath, int rank,
                         const hsize_t *dims, const hsize_t *chunk, hid_t ftype, hid_t mtype,
                         const void *data, char *err, size_t len)
{
    if (H5Lexists(file, dpath, H5P_DEFAULT) > 0 && H5Ldelete(file, dpath, H5P_DEFAULT) < 0)
        return kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot replace %s", path, dpath);
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = untimed_plist(H5P_DATASET_CREATE);
    hid_t d = H5I_INVALID_HID;
    if (space >= 0 && dcpl >= 0 && H5Pset_chunk(dcpl, rank, chunk) >= 0
        && H5Pset_shuffle(dcpl) >= 0 && H5Pset_deflate(dcpl, KV_GZIP_LEVEL) >= 0)
        d = H5Dcreate2(file, dpath, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    int ok = write_all_and_close(d, space, dcpl, mtype, data);
    return ok ? 0 : kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot write %s", path, dpath);
}

int kv_trace_store_index(const char *path, const kv_trace_info *info, int layer,
                         const double *lse, const float *o_full, char *err, size_t err_len)
{
    kv_trace_quiet();
    hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (file < 0)
        return kv_trace_fail(err, err_len, KV_ETRACE_IO, "%s: cannot open for writing",
                             path);
    hsize_t T = (hsize_t)info->n_tokens, hd = (hsize_t)info->head_dim;
    hsize_t rows = T < KV_QK_CHUNK_ROWS ? T : KV_QK_CHUNK_ROWS;
    char dpath[KV_PATH_MAX];
    snprintf(dpath, sizeof dpath, "/layers/%d/lse", layer);
    hsize_t ldims[2] = { (hsize_t)info->n_heads, T }, lchunk[2] = { 1, T < 16384 ? T : 16384 };
    int rc = store_dataset(file, path, dpath, 2, ldims, lchunk, H5T_IEEE_F64LE,
                           H5T_NATIVE_DOUBLE, lse, err, err_len);
    if (!rc && o_full) {
        snprintf(dpath, sizeof dpath, "/layers/%d/o_full", layer);
        hsize_t odims[3] = { (hsize_t)info->n_heads, T, hd }, ochunk[3] = { 1, rows, hd };
        rc = store_dataset(file, path, dpath, 3, odims, ochunk, H5T_IEEE_F32LE,
                           H5T_NATIVE_FLOAT, o_full, err, err_len);
    }
    if (H5Fclose(file) < 0 && !rc)
        rc = kv_trace_fail(err, err_len, KV_ETRACE_IO, "%s: cannot close after writing",
                           path);
    return rc;
}

/* ------------------------------------------------------------ datasets */

/* Creates a chunked, shuffled, gzipped float dataset (fill value 0) at dpath. */
static hid_t create_float_dataset(kv_trace_writer *w, const char *dpath, const hsize_t *dims,
                                  const hsize_t *chunk, hid_t dapl)
{
    const float zero = 0;
    hid_t space = H5Screate_simple(3, dims, NULL);
    hid_t dcpl = untimed_plist(H5P_DATASET_CREATE);
    hid_t d = H5I_INVALID_HID;
    if (space >= 0 && dcpl >= 0 && H5Pset_chunk(dcpl, 3, chunk) >= 0
        && H5Pset_shuffle(dcpl) >= 0 && H5Pset_deflate(dcpl, KV_GZIP_LEVEL) >= 0
        && H5Pset_fill_value(dcpl, H5T_NATIVE_FLOAT, &zero) >= 0)
        d = H5Dcreate2(w->file, dpath, w->ftype, space, H5P_DEFAULT, dcpl, dapl);
    if (space >= 0)
        H5Sclose(space);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    return d;
}

/* Creates the contiguous 1-D dataset dpath of n elements of file type ftype and writes
 * all of data (memory type mtype) to it. Returns 1, or 0 when it cannot be created (it
 * exists already) or written. */
static int write_whole_1d(const kv_trace_writer *w, const char *dpath, hsize_t n, hid_t ftype,
                          hid_t mtype, const void *data)
{
    hid_t space = H5Screate_simple(1, &n, NULL);
    hid_t dcpl = untimed_plist(H5P_DATASET_CREATE);
    hid_t d = space < 0 || dcpl < 0 ? H5I_INVALID_HID
              : H5Dcreate2(w->file, dpath, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    return write_all_and_close(d, space, dcpl, mtype, data);
}

/* Writes count elements of the stored type from buf into the box at start of d. */
static int write_box(const kv_trace_writer *w, hid_t d, const hsize_t *start,
                     const hsize_t *count, const void *buf)
{
    hid_t fspace = H5Dget_space(d);
    hid_t mspace = H5Screate_simple(3, count, NULL);
    hid_t mtype = w->store_f16 ? w->ftype : H5T_NATIVE_FLOAT;
    int ok = fspace >= 0 && mspace >= 0
             && H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL) >= 0
             && H5Dwrite(d, mtype, mspace, fspace, H5P_DEFAULT, buf) >= 0;
    if (fspace >= 0)
        H5Sclose(fspace);
    if (mspace >= 0)
        H5Sclose(mspace);
    return ok ? 0 : -1;
}

/* The open attn dataset of layer, created on first use. Closing the previous layer's
 * flushes its cached chunks, whose errors are reported here. */
static int attn_dataset(kv_trace_writer *w, int layer, char *err, size_t len)
{
    if (w->attn >= 0 && w->attn_layer == layer)
        return 0;
    if (w->attn >= 0) {
        herr_t st = H5Dclose(w->attn);
        w->attn = H5I_INVALID_HID;
        if (st < 0)
            return kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot write /layers/%d/attn "
                                 "(disk full?)", w->path, w->attn_layer);
    }
    const kv_trace_info *in = &w->info;
    hsize_t T = (hsize_t)in->n_tokens;
    hsize_t tile = T < KV_ATTN_TILE ? T : KV_ATTN_TILE;
    hsize_t dims[3] = {(hsize_t)in->n_heads, T, T}, chunk[3] = {1, tile, tile};
    char dpath[KV_PATH_MAX];
    snprintf(dpath, sizeof dpath, "/layers/%d/attn", layer);
    /* Cache one tile-row of every head, so rows written in blocks that do not align with
     * the tiles are compressed once, when the tile is complete. */
    size_t bytes = (size_t)in->n_heads * (size_t)((T + tile - 1) / tile) * (size_t)(tile * tile)
                   * stored_size(w);
    if (bytes > KV_WRITE_CACHE_MAX_BYTES)
        bytes = KV_WRITE_CACHE_MAX_BYTES;
    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    if (dapl >= 0)
        H5Pset_chunk_cache(dapl, 100 * (bytes / (size_t)(tile * tile * stored_size(w)) + 1) + 1,
                           bytes, 1.0);
    htri_t ex = H5Lexists(w->file, dpath, H5P_DEFAULT);
    if (ex > 0)
        w->attn = H5Dopen2(w->file, dpath, dapl >= 0 ? dapl : H5P_DEFAULT);
    else if (ex == 0)
        w->attn = create_float_dataset(w, dpath, dims, chunk, dapl >= 0 ? dapl : H5P_DEFAULT);
    if (dapl >= 0)
        H5Pclose(dapl);
    if (w->attn < 0)
        return kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot create %s", w->path, dpath);
    w->attn_layer = layer;
    return 0;
}

int kv_trace_write_attn_rows(kv_trace_writer *w, int layer, int head, int t0, int t1,
                             const float *rows, char *err, size_t err_len)
{
    kv_trace_quiet();
    if (!w || !rows)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_write_attn_rows: NULL "
                             "argument");
    const kv_trace_info *in = &w->info;
    const int T = in->n_tokens;
    if (in->source != KV_SOURCE_ATTN || layer < 0 || layer >= in->n_layers || head < 0
        || head >= in->n_heads || t0 < 0 || t0 >= t1 || t1 > T)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "%s: attn rows of layer %d, head %d, "
                             "rows [%d, %d) are outside the trace (or source is not attn)",
                             w->path, layer, head, t0, t1);
    int rc = attn_dataset(w, layer, err, err_len);
    /* One tile-row at a time: columns 0..b-1 only, upper triangle zeroed, so tiles wholly
     * above the diagonal are never written. */
    for (int a = t0, b; !rc && a < t1; a = b) {
        b = (a / KV_ATTN_TILE + 1) * KV_ATTN_TILE;
        if (b > t1)
            b = t1;
        size_t n = (size_t)(b - a) * (size_t)b;
        float *tmp = malloc(n * sizeof(float));
        char *buf = scratch(w, n * stored_size(w));
        if (!tmp || !buf) {
            free(tmp);
            return kv_trace_fail(err, err_len, KV_ETRACE_NOMEM, "%s: out of memory", w->path);
        }
        for (int t = a; t < b; t++) {
            float *dst = tmp + (size_t)(t - a) * (size_t)b;
            memcpy(dst, rows + (size_t)(t - t0) * (size_t)T, (size_t)(t + 1) * sizeof(float));
            memset(dst + t + 1, 0, (size_t)(b - t - 1) * sizeof(float));
        }
        to_stored(w, tmp, n, buf);
        free(tmp);
        hsize_t start[3] = {(hsize_t)head, (hsize_t)a, 0};
        hsize_t count[3] = {1, (hsize_t)(b - a), (hsize_t)b};
        if (write_box(w, w->attn, start, count, buf) != 0)
            rc = kv_trace_fail(err, err_len, KV_ETRACE_IO, "%s: cannot write /layers/%d/attn "
                               "rows %d..%d of head %d", w->path, layer, a, b - 1, head);
    }
    return rc;
}

/* Writes one [n, T, head_dim] dataset of a layer, head by head from src. */
static int write_vectors(kv_trace_writer *w, int layer, const char *name, int n,
                         const float *src, char *err, size_t len)
{
    const kv_trace_info *in = &w->info;
    hsize_t T = (hsize_t)in->n_tokens, D = (hsize_t)in->head_dim;
    hsize_t rows = T < KV_QK_CHUNK_ROWS ? T : KV_QK_CHUNK_ROWS;
    hsize_t dims[3] = {(hsize_t)n, T, D}, chunk[3] = {1, rows, D};
    char dpath[KV_PATH_MAX];
    snprintf(dpath, sizeof dpath, "/layers/%d/%s", layer, name);
    if (H5Lexists(w->file, dpath, H5P_DEFAULT) != 0)
        return kv_trace_fail(err, len, KV_ETRACE_ARG, "%s: %s is already written", w->path,
                             dpath);
    hid_t d = create_float_dataset(w, dpath, dims, chunk, H5P_DEFAULT);
    if (d < 0)
        return kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot create %s", w->path, dpath);
    size_t per_head = (size_t)(T * D);
    void *buf = scratch(w, per_head * stored_size(w));
    int rc = buf ? 0 : kv_trace_fail(err, len, KV_ETRACE_NOMEM, "%s: out of memory", w->path);
    for (int h = 0; !rc && h < n; h++) {
        hsize_t start[3] = {(hsize_t)h, 0, 0}, count[3] = {1, T, D};
        to_stored(w, src + (size_t)h * per_head, per_head, buf);
        if (write_box(w, d, start, count, buf) != 0)
            rc = kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot write %s", w->path, dpath);
    }
    if (H5Dclose(d) < 0 && !rc)
        rc = kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot write %s (disk full?)",
                           w->path, dpath);
    return rc;
}

int kv_trace_write_qk(kv_trace_writer *w, int layer, const float *q, const float *k,
                      const float *v, char *err, size_t err_len)
{
    kv_trace_quiet();
    if (!w || !q || !k)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_write_qk: NULL argument");
    if (layer < 0 || layer >= w->info.n_layers)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "%s: layer %d outside 0..%d",
                             w->path, layer, w->info.n_layers - 1);
    int rc = write_vectors(w, layer, "q", w->info.n_heads, q, err, err_len);
    if (!rc)
        rc = write_vectors(w, layer, "k", w->info.n_kv_heads, k, err, err_len);
    if (!rc && v)
        rc = write_vectors(w, layer, "v", w->info.n_kv_heads, v, err, err_len);
    return rc;
}

int kv_trace_write_tokens(kv_trace_writer *w, const int32_t *tokens, char *err, size_t err_len)
{
    kv_trace_quiet();
    if (!w || !tokens)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_write_tokens: NULL "
                             "argument");
    int ok = write_whole_1d(w, "/tokens", (hsize_t)w->info.n_tokens, H5T_STD_I32LE,
                            H5T_NATIVE_INT32, tokens);
    return ok ? 0 : kv_trace_fail(err, err_len, KV_ETRACE_IO, "%s: cannot write /tokens "
                                  "(already written?)", w->path);
}

int kv_trace_write_token_text(kv_trace_writer *w, const char *const *texts, char *err,
                              size_t err_len)
{
    kv_trace_quiet();
    if (!w || !texts)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_trace_write_token_text: NULL "
                             "argument");
    size_t T = (size_t)w->info.n_tokens, width = 1;
    for (size_t t = 0; t < T; t++)
        width = strlen(texts[t]) + 1 > width ? strlen(texts[t]) + 1 : width;
    char *buf = calloc(T, width);
    if (!buf)
        return kv_trace_fail(err, err_len, KV_ETRACE_NOMEM, "%s: out of memory for /token_text",
                             w->path);
    for (size_t t = 0; t < T; t++)
        memcpy(buf + t * width, texts[t], strlen(texts[t]));
    hid_t type = H5Tcopy(H5T_C_S1);
    int ok = type >= 0 && H5Tset_size(type, width) >= 0 && H5Tset_cset(type, H5T_CSET_UTF8) >= 0
             && H5Tset_strpad(type, H5T_STR_NULLTERM) >= 0
             && write_whole_1d(w, "/token_text", (hsize_t)T, type, type, buf);
    if (type >= 0)
        H5Tclose(type);
    free(buf);
    return ok ? 0 : kv_trace_fail(err, err_len, KV_ETRACE_IO, "%s: cannot write /token_text "
                                  "(already written?)", w->path);
}

int kv_trace_finish(kv_trace_writer *w, char *err, size_t err_len)
{
    if (!w)
        return 0;
    kv_trace_quiet();
    int ok = 1;
    if (w->attn >= 0)
        ok &= H5Dclose(w->attn) >= 0;
    if (w->ftype >= 0)
        H5Tclose(w->ftype);
    if (w->file >= 0)
        ok &= H5Fclose(w->file) >= 0;
    int rc = ok ? 0 : kv_trace_fail(err, err_len, KV_ETRACE_IO, "%s: cannot flush the file "
                                    "(disk full?)", w->path);
    free(w->scratch);
    free(w->path);
    free(w);
    return rc;
}
