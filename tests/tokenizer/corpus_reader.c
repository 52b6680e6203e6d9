/* See corpus_reader.h. */
#include "corpus_reader.h"

#include <stdlib.h>
#include <string.h>

#include "testutil.h"

void corpus_reader_open(struct corpus_reader *r, const char *corpus_path, const char *expected_path) {
    memset(r, 0, sizeof *r);
    r->corpus = fopen(corpus_path, "r");
    r->expected = fopen(expected_path, "r");
    assert_non_null(r->corpus);
    assert_non_null(r->expected);
    r->ids = malloc(sizeof *r->ids * (1 << 20));
    assert_non_null(r->ids);
}

bool corpus_reader_next(struct corpus_reader *r, size_t skip) {
    json_decref(r->json);
    r->json = NULL;
    if (getline(&r->line, &r->line_cap, r->corpus) <= 0) return false;
    r->lineno++;
    assert_true(getline(&r->exp, &r->exp_cap, r->expected) > 0);
    json_error_t jerr;
    r->json = json_loads(r->line, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    assert_non_null(r->json);
    r->text = json_string_value(r->json);
    r->len = json_string_length(r->json);
    r->exp_head = r->exp;
    char *tab = strchr(r->exp, '\t');
    if (tab) *tab = '\0';
    r->after_tab = tab ? tab + 1 : NULL;
    assert_true(strlen(r->exp) >= skip);
    r->n_ids = 0;
    for (char *p = r->exp + skip, *end; *p; p = end) {
        long v = strtol(p, &end, 10);
        if (end == p) break;
        assert_true(r->n_ids < (1 << 20));
        r->ids[r->n_ids++] = (int32_t)v;
    }
    return true;
}

void corpus_reader_close(struct corpus_reader *r) {
    json_decref(r->json);
    fclose(r->corpus);
    fclose(r->expected);
    free(r->line);
    free(r->exp);
    free(r->ids);
}

void corpus_print_ids(const char *label, const int32_t *ids, size_t n) {
    fprintf(stderr, "  %s:", label);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", (int)ids[i]);
    fprintf(stderr, n > 40 ? " ... (%zu ids)\n" : "\n", n);
}
