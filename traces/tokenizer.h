/*
 * tokenizer.h - the llama2.c tokenizer: a vocabulary of scored byte strings, text to token
 * ids and back.
 *
 * File layout (../shared/models/README.md, "stories15M.bin and tokenizer.bin"): int32
 * max_token_length, then per token, ids 0, 1, 2, ...: float32 score, int32 length, the
 * token's bytes; little-endian; the vocabulary size is the number of tokens up to the end
 * of the file. Ids 0, 1, 2 are <unk>, BOS and EOS; ids 3..258 are the byte-fallback tokens
 * for bytes 0x00..0xFF. Two exports exist and both load: the newer writes a byte token's
 * text as "<0xNN>", the older as the byte itself below 0x80 and above as the UTF-8 bytes
 * of the character U+0080..U+00FF with that number (the npm copy, see the models README);
 * the two encode and decode alike.
 *
 * Encoding (llama2.c's scheme, the README's rule; implemented in tokenizer.c, checked by
 * an independent Python encoder in tests/ref_tokenizer.py):
 *   1. a non-empty text gets a leading space (the "dummy prefix"); the empty text gives
 *      no ids;
 *   2. each UTF-8 character (a lead byte and its continuation bytes, at most 4) becomes
 *      the token whose text it is; where none is, each of its bytes becomes the byte
 *      token id = byte + 3;
 *   3. repeatedly, the adjacent pair whose concatenated text is a token with the highest
 *      score is replaced by that token (on equal scores, the leftmost pair), until no
 *      adjacent pair forms a token.
 * Byte tokens are only a fallback: steps 2 and 3 never produce one by text lookup (with
 * the older export a byte token's text equals an ordinary token's, e.g. " ").
 */
#ifndef KV_TOKENIZER_H
#define KV_TOKENIZER_H

#include <stddef.h>

#include "traces/status.h"

#define KV_TOKENIZER_SHA256_HEX 65 /* 64 hex digits and a NUL */
#define KV_TOKEN_BOS 1
#define KV_TOKEN_EOS 2
#define KV_TOKEN_BYTE0 3            /* id of the byte-fallback token of byte 0x00 */
#define KV_TOKEN_TEXT_MAX 64        /* bytes of kv_tokenizer_token_text's output, NUL included */

/* The codes of traces/status.h under the tokenizer's names. */
enum {
    KV_TOKENIZER_OK = KV_OK,
    KV_ETOKENIZER_IO = KV_EIO,         /* file missing or unreadable */
    KV_ETOKENIZER_FORMAT = KV_EFORMAT, /* not a llama2.c tokenizer file */
    KV_ETOKENIZER_NOMEM = KV_ENOMEM,   /* an allocation failed */
    KV_ETOKENIZER_ARG = KV_EUSAGE      /* a token id outside the vocabulary */
};

typedef struct kv_tokenizer kv_tokenizer;

/*
 * Loads the tokenizer at path and computes the file's SHA-256. Checks: the header and
 * every record complete, lengths within 0..max_token_length, scores finite, at least 259
 * tokens, and ids 3..258 are the byte tokens 0x00..0xFF in either export's form. On
 * success *out owns the vocabulary (release with kv_tokenizer_free); on failure *out is
 * NULL and err holds one line naming the file and the problem. Returns 0 or a
 * KV_ETOKENIZER_* code.
 */
int kv_tokenizer_load(const char *path, kv_tokenizer **out, char *err, size_t err_len);

/* Frees the tokenizer. NULL is ignored. */
void kv_tokenizer_free(kv_tokenizer *t);

/* Tokens in the vocabulary. Cannot fail. */
int kv_tokenizer_vocab_size(const kv_tokenizer *t);

/* SHA-256 of the file as 64 lower-case hex digits; borrowed, valid until
 * kv_tokenizer_free. Cannot fail. */
const char *kv_tokenizer_sha256(const kv_tokenizer *t);

/*
 * Encodes text (n_bytes bytes, any content, NUL not required) by steps 1-3 above. On
 * success *ids is a malloc'd array of *n_ids ids (no BOS; NULL when *n_ids is 0) that the
 * caller frees. Returns 0, or KV_ETOKENIZER_NOMEM with err set (*ids NULL).
 * Time O(n^2) in the text's length (each merge scans the pairs); prompts are short.
 */
int kv_tokenizer_encode(const kv_tokenizer *t, const char *text, size_t n_bytes, int **ids,
                        int *n_ids, char *err, size_t err_len);

/*
 * The bytes token id stands for: a byte token's one byte, any other token's text
 * (BOS is "\n<s>\n" in llama2.c's export). *len gets the length; the bytes are borrowed,
 * valid until kv_tokenizer_free, and not NUL-terminated. NULL for an id outside the
 * vocabulary.
 */
const char *kv_tokenizer_piece(const kv_tokenizer *t, int id, size_t *len);

/*
 * Decodes ids[0..n-1] into a malloc'd, NUL-terminated byte string *text (the caller frees
 * it): the pieces concatenated, except that ids 0..2 (<unk>, BOS, EOS) give nothing and
 * the first piece after one of them, or at the start, loses one leading space (the dummy
 * prefix of step 1). So decode(encode(s)) == s for every s. Returns 0, or
 * KV_ETOKENIZER_ARG (an id outside the vocabulary) / KV_ETOKENIZER_NOMEM with err set.
 */
int kv_tokenizer_decode(const kv_tokenizer *t, const int *ids, int n, char **text, char *err,
                        size_t err_len);

/*
 * A display text of token id, valid UTF-8, into buf (KV_TOKEN_TEXT_MAX bytes is always
 * enough for this vocabulary's tokens; longer texts are cut at a character boundary):
 * "<unk>", "<s>", "</s>" for ids 0..2; a byte token's byte when it is printable ASCII,
 * else "<0xNN>"; any other token's text, with a space kept as a space. Returns 0, or
 * KV_ETOKENIZER_ARG for an id outside the vocabulary (buf then "").
 */
int kv_tokenizer_token_text(const kv_tokenizer *t, int id, char *buf, size_t len);

#endif
