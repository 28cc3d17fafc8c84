/*
 * tokenizer.c - the llama2.c tokenizer (tokenizer.h): loading both exports, encoding by
 * per-character lookup with byte fallback and best-score pair merges, decoding.
 *
 * Written from the encoding rule in ../shared/models/README.md. The string -> id lookup
 * is a sorted array of the ordinary tokens (byte tokens excluded: they are a fallback,
 * never the result of a lookup) searched with bsearch.
 */
#include "traces/tokenizer.h"
#include "traces/le.h"
#include "traces/sha256.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>


#define N_BYTE_TOKENS 256
#define MAX_FILE_BYTES (1L << 30) /* a sanity bound: real vocabularies are under 10 MB */

typedef struct {
    const char *text; /* into kv_tokenizer.bytes, not NUL-terminated */
    int len;
    int id;
} vocab_entry;

struct kv_tokenizer {
    int n_vocab;
    unsigned char *bytes;   /* the file, owned; token texts point into it */
    const char **text;      /* [n_vocab] */
    int *len;               /* [n_vocab] */
    float *score;           /* [n_vocab] */
    vocab_entry *sorted;    /* the ordinary tokens (not 3..258) by text, for bsearch */
    int n_sorted;
    int max_len;            /* bytes of the longest token text */
    char sha256[KV_TOKENIZER_SHA256_HEX];
};

/* ------------------------------------------------------------------ loading */

/* Reads the whole file at path into *buf (owned by the caller). */
static int slurp(const char *path, unsigned char **buf, long *n, char *err, size_t err_len)
{
    *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_len, "%s: cannot open the tokenizer: %s", path, strerror(errno));
        return KV_ETOKENIZER_IO;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, err_len, "%s: not a regular file", path);
        fclose(f);
        return KV_ETOKENIZER_IO;
    }
    if (st.st_size < 4 || st.st_size > MAX_FILE_BYTES) {
        snprintf(err, err_len, "%s: file is %lld bytes, not a llama2.c tokenizer", path,
                 (long long)st.st_size);
        fclose(f);
        return KV_ETOKENIZER_FORMAT;
    }
    *n = (long)st.st_size;
    *buf = malloc((size_t)*n);
    if (!*buf) {
        fclose(f);
        snprintf(err, err_len, "%s: out of memory", path);
        return KV_ETOKENIZER_NOMEM;
    }
    size_t got = fread(*buf, 1, (size_t)*n, f);
    int rd_err = ferror(f);
    fclose(f);
    if (got != (size_t)*n) {
        snprintf(err, err_len, "%s: cannot read the tokenizer: %s", path,
                 rd_err ? strerror(errno) : "file shrank while reading");
        free(*buf);
        *buf = NULL;
        return KV_ETOKENIZER_IO;
    }
    return KV_TOKENIZER_OK;
}

/* Counts the records of a file of n bytes and checks each; the vocabulary size. */
static int count_records(const char *path, const unsigned char *b, long n, int *n_vocab,
                         char *err, size_t err_len)
{
    int32_t max_len = kv_le32(b);
    if (max_len < 1 || max_len > 1 << 20) {
        snprintf(err, err_len, "%s: max_token_length %d is outside 1..%d (not a llama2.c "
                 "tokenizer?)", path, (int)max_len, 1 << 20);
        return KV_ETOKENIZER_FORMAT;
    }
    long off = 4;
    int count = 0;
    while (off < n) {
        if (n - off < 8) {
            snprintf(err, err_len, "%s: token %d: record header cut off at byte %ld", path,
                     count, off);
            return KV_ETOKENIZER_FORMAT;
        }
        float score = kv_le_float(b + off);
        int32_t len = kv_le32(b + off + 4);
        if (!isfinite(score) || len < 0 || len > max_len || len > n - off - 8) {
            snprintf(err, err_len, "%s: token %d at byte %ld: %s", path, count, off,
                     !isfinite(score) ? "score is not a finite number"
                     : len < 0 || len > max_len ? "length outside 0..max_token_length"
                                                : "text runs past the end of the file");
            return KV_ETOKENIZER_FORMAT;
        }
        off += 8 + len;
        count++;
    }
    if (count < KV_TOKEN_BYTE0 + N_BYTE_TOKENS) {
        snprintf(err, err_len, "%s: %d tokens, need at least %d (special and byte tokens)",
                 path, count, KV_TOKEN_BYTE0 + N_BYTE_TOKENS);
        return KV_ETOKENIZER_FORMAT;
    }
    *n_vocab = count;
    return KV_TOKENIZER_OK;
}

/* 1 when token text s (len bytes) is byte token b in either export: "<0xNN>" (newer), or
 * (older) the byte itself below 0x80 and the UTF-8 encoding of the character U+0080..U+00FF
 * of that number above. */
static int is_byte_token(const char *s, int len, int b)
{
    const unsigned char *u = (const unsigned char *)s;
    if (len == 1)
        return b < 0x80 && u[0] == b;
    if (len == 2 && b >= 0x80)
        return u[0] == (0xC0 | b >> 6) && u[1] == (0x80 | (b & 0x3F));
    char want[8];
    snprintf(want, sizeof want, "<0x%02X>", b);
    return len == 6 && memcmp(s, want, 6) == 0;
}

static int cmp_text(const char *a, int alen, const char *b, int blen)
{
    int c = memcmp(a, b, (size_t)(alen < blen ? alen : blen));
    return c ? c : (alen > blen) - (alen < blen);
}

static int cmp_entry(const void *pa, const void *pb)
{
    const vocab_entry *a = pa, *b = pb;
    int c = cmp_text(a->text, a->len, b->text, b->len);
    return c ? c : (a->id > b->id) - (a->id < b->id); /* duplicate texts: lowest id first */
}

/* Points the per-token arrays into t->bytes, checks the byte tokens, builds the index. */
static int index_vocab(kv_tokenizer *t, const char *path, char *err, size_t err_len)
{
    long off = 4;
    for (int i = 0; i < t->n_vocab; i++) {
        t->score[i] = kv_le_float(t->bytes + off);
        t->len[i] = kv_le32(t->bytes + off + 4);
        t->text[i] = (const char *)t->bytes + off + 8;
        t->max_len = t->len[i] > t->max_len ? t->len[i] : t->max_len;
        off += 8 + t->len[i];
    }
    for (int b = 0; b < N_BYTE_TOKENS; b++) {
        int id = KV_TOKEN_BYTE0 + b;
        if (!is_byte_token(t->text[id], t->len[id], b)) {
            snprintf(err, err_len,
                     "%s: token %d should be the byte token of 0x%02X (\"<0x%02X>\" or the "
                     "older export's form), found %d other bytes",
                     path, id, b, b, t->len[id]);
            return KV_ETOKENIZER_FORMAT;
        }
    }
    for (int i = 0; i < t->n_vocab; i++)
        if (i < KV_TOKEN_BYTE0 || i >= KV_TOKEN_BYTE0 + N_BYTE_TOKENS)
            t->sorted[t->n_sorted++] = (vocab_entry){t->text[i], t->len[i], i};
    qsort(t->sorted, (size_t)t->n_sorted, sizeof *t->sorted, cmp_entry);
    return KV_TOKENIZER_OK;
}

int kv_tokenizer_load(const char *path, kv_tokenizer **out, char *err, size_t err_len)
{
    *out = NULL;
    unsigned char *bytes = NULL;
    long n = 0;
    int n_vocab = 0;
    int rc = slurp(path, &bytes, &n, err, err_len);
    if (!rc)
        rc = count_records(path, bytes, n, &n_vocab, err, err_len);
    if (rc) {
        free(bytes);
        return rc;
    }
    kv_tokenizer *t = calloc(1, sizeof *t);
    if (t) {
        t->bytes = bytes;
        t->n_vocab = n_vocab;
        t->text = malloc((size_t)n_vocab * sizeof *t->text);
        t->len = malloc((size_t)n_vocab * sizeof *t->len);
        t->score = malloc((size_t)n_vocab * sizeof *t->score);
        t->sorted = malloc((size_t)n_vocab * sizeof *t->sorted);
    }
    if (!t || !t->text || !t->len || !t->score || !t->sorted ||
        kv_sha256_hex(bytes, (size_t)n, NULL, 0, t->sha256) != 0) {
        if (!t)
            free(bytes);
        kv_tokenizer_free(t);
        snprintf(err, err_len, "%s: out of memory", path);
        return KV_ETOKENIZER_NOMEM;
    }
    rc = index_vocab(t, path, err, err_len);
    if (rc) {
        kv_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return KV_TOKENIZER_OK;
}

void kv_tokenizer_free(kv_tokenizer *t)
{
    if (!t)
        return;
    free(t->bytes);
    free(t->text);
    free(t->len);
    free(t->score);
    free(t->sorted);
    free(t);
}

int kv_tokenizer_vocab_size(const kv_tokenizer *t) { return t->n_vocab; }

const char *kv_tokenizer_sha256(const kv_tokenizer *t) { return t->sha256; }

/* ------------------------------------------------------------------ encoding */

/* The ordinary token whose text is s (len bytes), or -1. */
static int lookup(const kv_tokenizer *t, const char *s, int len)
{
    int lo = 0, hi = t->n_sorted;
    while (lo < hi) { /* the first entry >= key: the lowest id among equal texts */
        int mid = lo + (hi - lo) / 2;
        if (cmp_text(t->sorted[mid].text, t->sorted[mid].len, s, len) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < t->n_sorted && cmp_text(t->sorted[lo].text, t->sorted[lo].len, s, len) == 0)
        return t->sorted[lo].id;
    return -1;
}

/* Bytes of the UTF-8 character starting at s[0] (at most 4, at most n): the lead byte and
 * the continuation bytes (10xxxxxx) after it. */
static size_t utf8_char_len(const unsigned char *s, size_t n)
{
    size_t k = 1;
    while (k < n && k < 4 && (s[k] & 0xC0) == 0x80)
        k++;
    return k;
}

/* Step 2: one character (k bytes at s) appended to ids as its token or its byte tokens. */
static int append_char(const kv_tokenizer *t, const unsigned char *s, size_t k, int *ids,
                       int n)
{
    int id = lookup(t, (const char *)s, (int)k);
    if (id >= 0) {
        ids[n++] = id;
        return n;
    }
    for (size_t i = 0; i < k; i++)
        ids[n++] = KV_TOKEN_BYTE0 + s[i];
    return n;
}

/* The id of the merge of ids a and b (their pieces concatenated into buf), or -1. */
static int merged_id(const kv_tokenizer *t, int a, int b, char *buf)
{
    size_t la, lb;
    const char *pa = kv_tokenizer_piece(t, a, &la), *pb = kv_tokenizer_piece(t, b, &lb);
    memcpy(buf, pa, la);
    memcpy(buf + la, pb, lb);
    return lookup(t, buf, (int)(la + lb));
}

/* Step 3: merges the best-scoring adjacent pair until none forms a token; returns n. */
static int merge_pairs(const kv_tokenizer *t, int *ids, int n, char *buf)
{
    for (;;) {
        int best_i = -1, best_id = -1;
        float best_score = 0.0f;
        for (int i = 0; i + 1 < n; i++) {
            int id = merged_id(t, ids[i], ids[i + 1], buf);
            if (id >= 0 && (best_i < 0 || t->score[id] > best_score)) {
                best_i = i; /* strictly greater: the leftmost pair wins a tie */
                best_id = id;
                best_score = t->score[id];
            }
        }
        if (best_i < 0)
            return n;
        ids[best_i] = best_id;
        memmove(ids + best_i + 1, ids + best_i + 2, (size_t)(n - best_i - 2) * sizeof *ids);
        n--;
    }
}

int kv_tokenizer_encode(const kv_tokenizer *t, const char *text, size_t n_bytes, int **ids,
                        int *n_ids, char *err, size_t err_len)
{
    *ids = NULL;
    *n_ids = 0;
    if (n_bytes == 0)
        return KV_TOKENIZER_OK; /* step 1: the empty text gets no dummy prefix */
    /* at most one id per byte, plus the prefix; a merge buffer for two pieces */
    int *out = malloc((n_bytes + 1) * sizeof *out);
    char *buf = malloc(2 * (size_t)t->max_len + 2);
    if (!out || !buf) {
        free(out);
        free(buf);
        snprintf(err, err_len, "out of memory encoding %zu bytes of text", n_bytes);
        return KV_ETOKENIZER_NOMEM;
    }
    /* 1, 2. */
    const unsigned char *s = (const unsigned char *)text;
    int n = append_char(t, (const unsigned char *)" ", 1, out, 0);
    for (size_t i = 0; i < n_bytes;) {
        size_t k = utf8_char_len(s + i, n_bytes - i);
        n = append_char(t, s + i, k, out, n);
        i += k;
    }
    /* 3. */
    *n_ids = merge_pairs(t, out, n, buf);
    *ids = out;
    free(buf);
    return KV_TOKENIZER_OK;
}

/* ------------------------------------------------------------------ decoding */

const char *kv_tokenizer_piece(const kv_tokenizer *t, int id, size_t *len)
{
    static const unsigned char byte_value[N_BYTE_TOKENS] = {
#define B4(n) n, n + 1, n + 2, n + 3
#define B16(n) B4(n), B4(n + 4), B4(n + 8), B4(n + 12)
#define B64(n) B16(n), B16(n + 16), B16(n + 32), B16(n + 48)
        B64(0), B64(64), B64(128), B64(192)
#undef B64
#undef B16
#undef B4
    };
    if (id < 0 || id >= t->n_vocab) {
        *len = 0;
        return NULL;
    }
    if (id >= KV_TOKEN_BYTE0 && id < KV_TOKEN_BYTE0 + N_BYTE_TOKENS) {
        *len = 1;
        return (const char *)&byte_value[id - KV_TOKEN_BYTE0];
    }
    *len = (size_t)t->len[id];
    return t->text[id];
}

int kv_tokenizer_decode(const kv_tokenizer *t, const int *ids, int n, char **text, char *err,
                        size_t err_len)
{
    *text = NULL;
    size_t total = 1;
    for (int i = 0; i < n; i++) {
        size_t len;
        if (!kv_tokenizer_piece(t, ids[i], &len)) {
            snprintf(err, err_len, "token id %d at index %d is outside the vocabulary 0..%d",
                     ids[i], i, t->n_vocab - 1);
            return KV_ETOKENIZER_ARG;
        }
        total += len;
    }
    char *out = malloc(total);
    if (!out) {
        snprintf(err, err_len, "out of memory decoding %d tokens", n);
        return KV_ETOKENIZER_NOMEM;
    }
    size_t w = 0;
    int at_start = 1;
    for (int i = 0; i < n; i++) {
        if (ids[i] < KV_TOKEN_BYTE0) {
            at_start = 1; /* <unk>, BOS, EOS: nothing, and a new text starts */
            continue;
        }
        size_t len;
        const char *p = kv_tokenizer_piece(t, ids[i], &len);
        if (at_start && len > 0 && p[0] == ' ')
            p++, len--;
        memcpy(out + w, p, len);
        w += len;
        at_start = 0;
    }
    out[w] = '\0';
    *text = out;
    return KV_TOKENIZER_OK;
}

int kv_tokenizer_token_text(const kv_tokenizer *t, int id, char *buf, size_t len)
{
    static const char *const special[KV_TOKEN_BYTE0] = {"<unk>", "<s>", "</s>"};
    if (len == 0)
        return KV_ETOKENIZER_ARG;
    buf[0] = '\0';
    if (id < 0 || id >= t->n_vocab)
        return KV_ETOKENIZER_ARG;
    if (id < KV_TOKEN_BYTE0) {
        snprintf(buf, len, "%s", special[id]);
        return KV_TOKENIZER_OK;
    }
    if (id < KV_TOKEN_BYTE0 + N_BYTE_TOKENS) {
        int b = id - KV_TOKEN_BYTE0;
        if (b >= 0x20 && b < 0x7F)
            snprintf(buf, len, "%c", b);
        else
            snprintf(buf, len, "<0x%02X>", b);
        return KV_TOKENIZER_OK;
    }
    /* copy whole UTF-8 characters while they fit; an invalid byte becomes <0xNN> */
    const unsigned char *s = (const unsigned char *)t->text[id];
    size_t n = (size_t)t->len[id], w = 0;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_char_len(s + i, n - i);
        int lead = s[i];
        size_t want = lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 0;
        char piece[8];
        size_t plen = k;
        if (want != k || (lead < 0x80 && lead < 0x20)) {
            snprintf(piece, sizeof piece, "<0x%02X>", lead);
            plen = strlen(piece);
            k = 1;
        } else {
            memcpy(piece, s + i, k);
        }
        if (w + plen + 1 > len)
            break;
        memcpy(buf + w, piece, plen);
        w += plen;
        i += k;
    }
    buf[w] = '\0';
    return KV_TOKENIZER_OK;
}
