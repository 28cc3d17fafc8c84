#!/usr/bin/python3
"""ref_tokenizer.py - an independent Python encoder for llama2.c tokenizer files.

Used by tests/test_tokenizer.c to check traces/tokenizer.c by a second route. Written
from the encoding rule in ../shared/models/README.md, not from the C code: a dict from
token text to id, the text split into UTF-8 characters, and each merge chosen with
max() over (score, -position).

usage: ref_tokenizer.py TOKENIZER HEX...
Each HEX is a prompt's bytes in hexadecimal ("" or "-" for the empty prompt). Prints one
line per prompt: the ids after BOS, space-separated (an empty line for no ids).
"""
import struct
import sys

BYTE0 = 3  # id of the byte token of 0x00; ids 3..258 are bytes 0x00..0xFF


def read_vocab(path):
    data = open(path, "rb").read()
    pos = 4  # int32 max_token_length, unused here
    texts, scores = [], []
    while pos < len(data):
        score, length = struct.unpack_from("<fi", data, pos)
        pos += 8
        texts.append(data[pos:pos + length])
        scores.append(score)
        pos += length
    return texts, scores


def characters(raw):
    """Splits bytes into UTF-8 characters: a lead byte plus up to three continuation
    bytes (0b10xxxxxx) that follow it."""
    chars, i = [], 0
    while i < len(raw):
        j = i + 1
        while j < len(raw) and j - i < 4 and raw[j] >> 6 == 0b10:
            j += 1
        chars.append(raw[i:j])
        i = j
    return chars


def encode(texts, scores, raw):
    if not raw:
        return []
    # Ordinary tokens only: a byte token is never the result of a lookup. Where two
    # ordinary tokens share a text, the lower id is kept.
    by_text = {}
    for tid, text in enumerate(texts):
        if BYTE0 <= tid < BYTE0 + 256:
            continue
        by_text.setdefault(text, tid)

    def piece(tid):
        if BYTE0 <= tid < BYTE0 + 256:
            return bytes([tid - BYTE0])
        return texts[tid]

    ids = []
    for ch in characters(b" " + raw):  # the dummy prefix, then one lookup per character
        if ch in by_text:
            ids.append(by_text[ch])
        else:
            ids.extend(BYTE0 + b for b in ch)
    while True:
        candidates = []
        for i in range(len(ids) - 1):
            merged = by_text.get(piece(ids[i]) + piece(ids[i + 1]))
            if merged is not None:
                candidates.append((scores[merged], -i, merged))
        if not candidates:
            return ids
        _, neg_i, merged = max(candidates)
        i = -neg_i
        ids[i:i + 2] = [merged]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    texts, scores = read_vocab(sys.argv[1])
    for arg in sys.argv[2:]:
        raw = b"" if arg in ("", "-") else bytes.fromhex(arg)
        print(" ".join(str(t) for t in encode(texts, scores, raw)))


if __name__ == "__main__":
    main()
