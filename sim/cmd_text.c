/*
 * cmd_text.c - `kvsim text`: the text of a trace captured with a tokenizer, the prompt
 * marked, or its positions one per line.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/commands.h"
#include "traces/trace.h"
#include "traces/trace_text.h"

#define PROMPT_OPEN "[["
#define PROMPT_CLOSE "]]"

static void text_usage(FILE *f)
{
    fprintf(f,
"usage: kvsim text TRACE [--positions]\n"
"\n"
"Prints the text of a trace captured with a tokenizer (`kvsim capture --tokenizer`):\n"
"the prompt, positions 0..P-1, between " PROMPT_OPEN " and " PROMPT_CLOSE ", then the generated text.\n"
"Byte-fallback tokens join into their characters; a BOS the model emitted starts a new\n"
"paragraph.\n"
"\n"
"  --positions  one line per position instead, tab-separated with a header:\n"
"               position, region (prompt or decode), id, token (the token's text,\n"
"               TSV-escaped as in retention.tsv)\n"
"  -h, --help   this help\n"
"\n"
"Exit status: 0 ok, 1 the trace is unreadable or has no text, 2 usage error.\n");
}

static int print_positions(const kv_trace_tokens *tk, int P)
{
    char cell[4 * 64 + 8];
    printf("position\tregion\tid\ttoken\n");
    for (int t = 0; t < tk->n_tokens; t++) {
        kv_tsv_escape(tk->texts[t], cell, sizeof cell);
        printf("%d\t%s\t%d\t%s\n", t, t < P ? "prompt" : "decode", (int)tk->ids[t], cell);
    }
    return 0;
}

static int print_paragraph(const kv_trace_tokens *tk, int P)
{
    char *prompt = kv_trace_tokens_render(tk, 0, P, 1);
    char *gen = kv_trace_tokens_render(tk, P, tk->n_tokens, 0);
    if (!prompt || !gen) {
        free(prompt);
        free(gen);
        fprintf(stderr, "kvsim text: out of memory\n");
        return 1;
    }
    printf("%s%s%s%s\n", PROMPT_OPEN, prompt, PROMPT_CLOSE, gen);
    free(prompt);
    free(gen);
    return 0;
}

int kv_cmd_text(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"positions", no_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int positions = 0, c;
    optind = 0; /* glibc: full re-initialisation, argv[0] is the subcommand */
    while ((c = getopt_long(argc, argv, "ph", longopts, NULL)) != -1) {
        if (c == 'p') {
            positions = 1;
        } else if (c == 'h') {
            text_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "Try 'kvsim text --help'.\n");
            return 2;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "kvsim text: expected one TRACE, got %d\nTry 'kvsim text --help'.\n",
                argc - optind);
        return 2;
    }
    char err[512];
    kv_trace *tr = NULL;
    kv_trace_tokens tk;
    if (kv_trace_open(argv[optind], &tr, err, sizeof err) != 0 ||
        kv_trace_tokens_read(tr, &tk, err, sizeof err) != 0) {
        fprintf(stderr, "kvsim text: %s\n", err);
        kv_trace_close(tr);
        return 1;
    }
    int P = kv_trace_get_info(tr)->prefill_len;
    int rc = positions ? print_positions(&tk, P) : print_paragraph(&tk, P);
    kv_trace_tokens_free(&tk);
    kv_trace_close(tr);
    return rc;
}
