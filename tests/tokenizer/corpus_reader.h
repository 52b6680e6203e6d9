/* Walks a reference corpus (one JSON string a line) beside its expected-output file (a line per
 * string: optional flag characters, space-separated ids, then optionally a tab and more), as the
 * tokenizer reference tests write them. Fails the test on malformed input. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct corpus_reader {
    FILE *corpus, *expected;
    char *line, *exp;
    size_t line_cap, exp_cap;
    int lineno;
    json_t *json;       /* the current string */
    const char *text;   /* its bytes (may hold NULs) and length */
    size_t len;
    int32_t *ids;       /* the expected ids */
    size_t n_ids;
    const char *exp_head; /* the expected line (its flag characters come first) */
    const char *after_tab; /* what follows the tab, or NULL */
};

void corpus_reader_open(struct corpus_reader *r, const char *corpus_path, const char *expected_path);
/* Moves to the next string; skip is how many flag characters precede the ids. False at the end. */
bool corpus_reader_next(struct corpus_reader *r, size_t skip);
void corpus_reader_close(struct corpus_reader *r);
/* Prints up to 40 ids after label, for mismatch reports. */
void corpus_print_ids(const char *label, const int32_t *ids, size_t n);
