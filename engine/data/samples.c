#include "samples.h"
#include "tokenizer.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- one sample ------------------------------------------------------------------------- */

static int tokenizer_encode(void *ctx, const char *text, size_t len, int32_t *out, int cap, int *ret_n) {
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = lorad_tokenizer_encode(ctx, text, len, 0, 0, &ids, &n, NULL);
    if (rc < 0) return rc;
    if (n > (size_t)cap) {
        free(ids);
        return -ENOSPC;
    }
    memcpy(out, ids, n * sizeof *ids);
    free(ids);
    *ret_n = (int)n;
    return 0;
}

static int tokenizer_special_id(void *ctx, const char *piece) { return lorad_tokenizer_special_id(ctx, piece); }

void lorad_encoder_from_tokenizer(struct lorad_encoder *enc, struct lorad_tokenizer *t, int vocab_size) {
    *enc = (struct lorad_encoder){.ctx = t,
                                  .encode = tokenizer_encode,
                                  .special_id = tokenizer_special_id,
                                  .bos_id = lorad_tokenizer_bos_id(t),
                                  .eos_id = lorad_tokenizer_eos_id(t),
                                  .vocab_size = vocab_size};
}

static bool encoder_has_special(void *ctx, const char *piece) {
    const struct lorad_encoder *enc = ctx;
    return enc->special_id(enc->ctx, piece) >= 0;
}

enum lorad_chat_template lorad_encoder_template(const struct lorad_encoder *enc, enum lorad_chat_template tmpl) {
    if (tmpl != LORAD_TEMPLATE_AUTO) return tmpl;
    return enc->special_id ? lorad_chat_template_auto(encoder_has_special, (void *)enc) : LORAD_TEMPLATE_NONE;
}

/* Without a label a position is trained; shifting to next-token targets happens in the batch. */
static int sample_from_ids(struct lorad_sample *ret, int cap, const struct lorad_record *rec,
                           const struct lorad_encoder *enc, int max_seq_len, enum lorad_dataset_problem *ret_problem,
                           struct lorad_error *err) {
    int limit = max_seq_len < cap ? max_seq_len : cap;
    size_t total = json_array_size(rec->input_ids);
    int n = total < (size_t)limit ? (int)total : limit;
    for (int i = 0; i < n; i++) {
        json_int_t id = json_integer_value(json_array_get(rec->input_ids, (size_t)i));
        if (enc->vocab_size > 0 && id >= enc->vocab_size) {
            if (ret_problem) *ret_problem = LORAD_PROBLEM_WRONG_TYPE;
            return lorad_error_set(err, -EINVAL, "input_ids", "input_ids[%d] = %lld is outside the vocabulary (%d)", i,
                                   (long long)id, enc->vocab_size);
        }
        ret->tokens[i] = (int32_t)id;
        ret->train[i] = !rec->labels || json_integer_value(json_array_get(rec->labels, (size_t)i)) != -100;
    }
    bool any = false;
    for (int i = 1; i < n; i++) any |= ret->train[i];
    if (!any) {
        if (ret_problem) *ret_problem = LORAD_PROBLEM_EMPTY;
        return lorad_error_set(err, -EINVAL, "input_ids", "no trained token (a sample needs at least two tokens)");
    }
    ret->n = n;
    ret->truncated = total > (size_t)n;
    return 0;
}

int lorad_sample_build(struct lorad_sample *ret, int cap, const struct lorad_record *rec, enum lorad_chat_template tmpl,
                       bool train_on_input, const struct lorad_encoder *enc, int max_seq_len,
                       enum lorad_dataset_problem *ret_problem, struct lorad_error *err) {
    assert(tmpl != LORAD_TEMPLATE_AUTO);
    if (rec->format == LORAD_DATA_TOKENS) return sample_from_ids(ret, cap, rec, enc, max_seq_len, ret_problem, err);
    if (!enc->encode) {
        if (ret_problem) *ret_problem = LORAD_PROBLEM_WRONG_TYPE;
        return lorad_error_set(err, -EINVAL, "model",
                               "the model has no tokenizer, so records must be pre-tokenised {\"input_ids\": [...]}");
    }
    struct lorad_rendered *r = malloc(sizeof *r);
    if (!r) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    int e = lorad_chat_render(r, rec, tmpl, train_on_input);
    if (e < 0) {
        free(r);
        if (ret_problem) *ret_problem = LORAD_PROBLEM_WRONG_TYPE;
        return lorad_error_set(err, e, "", "the record has too many turns to template");
    }
    int limit = max_seq_len < cap ? max_seq_len : cap;
    int n = 0;
    bool truncated = false;
    for (int i = 0; i < r->n && !truncated; i++) {
        const struct lorad_segment *s = &r->seg[i];
        int32_t id = -1;
        int got = 0;
        switch (s->kind) {
        case LORAD_SEGMENT_BOS: id = enc->bos_id; break;
        case LORAD_SEGMENT_EOS: id = enc->eos_id; break;
        case LORAD_SEGMENT_SPECIAL:
            id = enc->special_id(enc->ctx, s->text);
            if (id < 0) {
                lorad_error_set(err, -EINVAL, "data.template", "the tokenizer has no special token %s for this template",
                                s->text);
                free(r);
                if (ret_problem) *ret_problem = LORAD_PROBLEM_WRONG_TYPE;
                return -EINVAL;
            }
            break;
        case LORAD_SEGMENT_TEXT:
            e = enc->encode(enc->ctx, s->text, s->len, ret->tokens + n, limit - n, &got);
            if (e == -ENOSPC) {
                /* Keep what fits: encode into scratch and copy the head. */
                int32_t *tmp = malloc(((size_t)s->len * 4 + 16) * sizeof *tmp);
                if (!tmp) {
                    free(r);
                    return -ENOMEM;
                }
                e = enc->encode(enc->ctx, s->text, s->len, tmp, (int)(s->len * 4 + 16), &got);
                if (e == 0) {
                    memcpy(ret->tokens + n, tmp, (size_t)(limit - n) * sizeof *tmp);
                    got = limit - n;
                    truncated = true;
                }
                free(tmp);
            }
            if (e < 0) {
                free(r);
                if (ret_problem) *ret_problem = LORAD_PROBLEM_INVALID_UTF8;
                return lorad_error_set(err, e, "", "cannot tokenise the record");
            }
            memset(ret->train + n, s->trainable, (size_t)got);
            n += got;
            continue;
        }
        if (id < 0) continue; /* no BOS in this vocabulary */
        if (n == limit) {
            truncated = true;
            break;
        }
        ret->tokens[n] = id;
        ret->train[n] = s->trainable;
        n++;
    }
    free(r);
    /* Token 0 is never a label (nothing predicts it), so a sample needs a trained token after it. */
    bool any = false;
    for (int i = 1; i < n; i++) any |= ret->train[i];
    if (!any) {
        if (ret_problem) *ret_problem = LORAD_PROBLEM_EMPTY;
        if (truncated)
            return lorad_error_set(err, -EINVAL, "", "no trained token is left after truncation to %d tokens", max_seq_len);
        return lorad_error_set(err, -EINVAL, "", "no trained token after templating");
    }
    ret->n = n;
    ret->truncated = truncated;
    return 0;
}

/* ---- corpus ----------------------------------------------------------------------------- */

struct corpus_record {
    int64_t offset;
    int64_t lineno;
    int32_t n_tokens;          /* the sample's tokens; a preference record's preferred sample's */
    uint32_t n_rejected : 31;  /* a preference record's non-preferred sample's tokens (<= max_seq_len) */
    uint32_t truncated : 1;
};

static int64_t record_tokens(const struct corpus_record *cr) { return (int64_t)cr->n_tokens + cr->n_rejected; }

struct lorad_corpus {
    struct lorad_corpus_options opt;
    const struct lorad_encoder *enc;
    struct lorad_line_reader *reader;
    char *path;
    struct corpus_record *rec;
    int64_t n, cap;
    int64_t n_truncated, n_tokens;
    enum lorad_data_format format;
};

static int corpus_push(struct lorad_corpus *c, struct corpus_record r) {
    if (c->n == c->cap) {
        int64_t cap = c->cap ? 2 * c->cap : 1024;
        struct corpus_record *p = realloc(c->rec, (size_t)cap * sizeof *p);
        if (!p) return -ENOMEM;
        c->rec = p;
        c->cap = cap;
    }
    c->rec[c->n++] = r;
    return 0;
}

/* Sample `which` of rec (0 for a record of one sample; a preference record's 0 = preferred,
 * 1 = non-preferred output) into s. A preference pair is never cut, since cutting one output's
 * end would compare a whole answer with part of one: longer than max_seq_len is a bad line. */
static int record_sample(const struct lorad_corpus *c, struct lorad_record *rec, int which, struct lorad_sample *s,
                         enum lorad_dataset_problem *ret_problem, struct lorad_error *err) {
    bool pair = rec->format == LORAD_DATA_PREFERENCE;
    if (pair) lorad_record_select_output(rec, which);
    enum lorad_dataset_problem p = LORAD_PROBLEM_WRONG_TYPE;
    /* a pair's log-probabilities are those of its output alone, whatever train_on_input says */
    int r = lorad_sample_build(s, c->opt.max_seq_len, rec, c->opt.tmpl, c->opt.train_on_input && !pair, c->enc,
                               c->opt.max_seq_len, &p, err);
    /* An output is never empty (the parser refuses that), so a pair with nothing trained was cut. */
    if (pair && ((r == 0 && s->truncated) || (r == -EINVAL && p == LORAD_PROBLEM_EMPTY))) {
        p = LORAD_PROBLEM_TOO_MANY_TOKENS;
        r = lorad_error_set(err, -EINVAL, "hyperparameters.max_seq_len",
                            "the prompt and %s are longer than max_seq_len (%d tokens); preference pairs are not "
                            "cut: shorten the line or raise hyperparameters.max_seq_len",
                            which ? "non_preferred_output" : "preferred_output", c->opt.max_seq_len);
    }
    if (r < 0 && ret_problem) *ret_problem = p;
    return r;
}

/* Tokenises rec as batches will and fills the lengths of its index entry cr: its one sample, or
 * both of a preference record's. */
static int index_record(const struct lorad_corpus *c, struct lorad_record *rec, struct lorad_sample *s,
                        struct corpus_record *cr, enum lorad_dataset_problem *ret_problem, struct lorad_error *err) {
    int r = record_sample(c, rec, 0, s, ret_problem, err);
    if (r < 0) return r;
    cr->n_tokens = s->n;
    cr->truncated = s->truncated;
    if (rec->format != LORAD_DATA_PREFERENCE) return 0;
    if ((r = record_sample(c, rec, 1, s, ret_problem, err)) < 0) return r;
    cr->n_rejected = (uint32_t)s->n;
    return 0;
}

int lorad_corpus_open(struct lorad_corpus **ret_corpus, const char *path, const struct lorad_corpus_options *opt,
                      const struct lorad_encoder *enc, struct lorad_dataset_report *ret_report,
                      struct lorad_error *err) {
    assert(opt->tmpl != LORAD_TEMPLATE_AUTO);
    if (opt->max_seq_len < 2) return lorad_error_set(err, -EINVAL, "hyperparameters.max_seq_len", "max_seq_len must be >= 2");
    struct lorad_corpus *c = calloc(1, sizeof *c);
    struct lorad_dataset_report *rep = calloc(1, sizeof *rep);
    struct lorad_sample s = {0};
    s.tokens = malloc((size_t)opt->max_seq_len * sizeof *s.tokens);
    s.train = malloc((size_t)opt->max_seq_len);
    int r = 0;
    if (!c || !rep || !s.tokens || !s.train || !(c->path = strdup(path))) {
        r = lorad_error_set(err, -ENOMEM, "", "out of memory indexing %s", path);
        goto fail;
    }
    c->opt = *opt;
    c->enc = enc;
    c->format = opt->format;
    if ((r = lorad_line_reader_open(&c->reader, path, opt->max_line, err)) < 0) goto fail;
    rep->format = opt->format;
    const char *line;
    size_t len;
    int64_t lineno;
    bool too_long;
    while ((r = lorad_line_reader_next(c->reader, &line, &len, &lineno, &too_long)) == 1) {
        rep->n_lines++;
        if (too_long) {
            lorad_dataset_report_bad(rep, lineno, LORAD_PROBLEM_LINE_TOO_LONG, "line is longer than the line size limit");
            continue;
        }
        rep->bytes += (int64_t)len;
        bool blank = true;
        for (size_t i = 0; i < len && blank; i++) blank = line[i] == ' ' || line[i] == '\t';
        if (blank) {
            rep->n_blank++;
            continue;
        }
        struct lorad_record rec;
        enum lorad_dataset_problem p;
        struct lorad_error e = {0};
        int64_t offset = lorad_line_reader_offset(c->reader);
        if (lorad_record_parse(line, len, c->format, &rec, &p, &e) < 0) {
            lorad_dataset_report_bad(rep, lineno, p, e.message);
            continue;
        }
        if (c->format == LORAD_DATA_AUTO) c->format = rep->format = rec.format;
        struct corpus_record cr = {.offset = offset, .lineno = lineno};
        int b = index_record(c, &rec, &s, &cr, &p, &e);
        lorad_record_clear(&rec);
        if (b == -ENOMEM) {
            r = lorad_error_set(err, -ENOMEM, "", "out of memory tokenising %s", path);
            goto fail;
        }
        if (b < 0) {
            lorad_dataset_report_bad(rep, lineno, p, e.message);
            continue;
        }
        if ((r = corpus_push(c, cr)) < 0) {
            lorad_error_set(err, r, "", "out of memory indexing %s", path);
            goto fail;
        }
        rep->n_records++;
        c->n_truncated += cr.truncated;
        c->n_tokens += record_tokens(&cr);
    }
    if (r < 0) {
        lorad_error_set(err, r, "", "%s: read error", path);
        goto fail;
    }
    r = 0;
    if (rep->n_invalid > 0 && !opt->skip_invalid) {
        r = lorad_error_set(err, -EINVAL, "training_file",
                            "%s: %lld invalid line%s (first: line %lld: %s)", path, (long long)rep->n_invalid,
                            rep->n_invalid == 1 ? "" : "s", (long long)rep->bad[0].line, rep->bad[0].reason);
        goto fail;
    }
    if (c->n == 0) {
        r = lorad_error_set(err, -EINVAL, "training_file", "%s: no usable training examples", path);
        goto fail;
    }
    if (ret_report) *ret_report = *rep;
    free(rep);
    free(s.tokens);
    free(s.train);
    *ret_corpus = c;
    return 0;
fail:
    if (ret_report && rep) *ret_report = *rep;
    free(rep);
    free(s.tokens);
    free(s.train);
    lorad_corpus_free(c);
    return r;
}

void lorad_corpus_free(struct lorad_corpus *c) {
    if (!c) return;
    lorad_line_reader_free(c->reader);
    free(c->rec);
    free(c->path);
    free(c);
}

int64_t lorad_corpus_size(const struct lorad_corpus *c) { return c->n; }
int64_t lorad_corpus_truncated(const struct lorad_corpus *c) { return c->n_truncated; }
int64_t lorad_corpus_tokens(const struct lorad_corpus *c) { return c->n_tokens; }
int lorad_corpus_sample_length(const struct lorad_corpus *c, int64_t i) { return c->rec[i].n_tokens; }
enum lorad_data_format lorad_corpus_format(const struct lorad_corpus *c) { return c->format; }

int lorad_corpus_rows_per_record(const struct lorad_corpus *c) { return c->format == LORAD_DATA_PREFERENCE ? 2 : 1; }

/* Re-reads record i and builds its sample `which` (record_sample) into ret. */
static int corpus_sample(struct lorad_corpus *c, int64_t i, int which, struct lorad_sample *ret,
                         struct lorad_error *err) {
    assert(i >= 0 && i < c->n && which < lorad_corpus_rows_per_record(c));
    const struct corpus_record *cr = &c->rec[i];
    int r = lorad_line_reader_seek(c->reader, cr->offset, cr->lineno - 1);
    if (r < 0) return lorad_error_set(err, r, "", "%s: seek failed", c->path);
    const char *line;
    size_t len;
    int64_t lineno;
    bool too_long;
    r = lorad_line_reader_next(c->reader, &line, &len, &lineno, &too_long);
    if (r != 1 || too_long) return lorad_error_set(err, -EIO, "", "%s: line %lld changed since it was indexed", c->path, (long long)cr->lineno);
    struct lorad_record rec;
    r = lorad_record_parse(line, len, c->format, &rec, NULL, err);
    if (r < 0) return lorad_error_set(err, -EIO, "", "%s: line %lld changed since it was indexed", c->path, (long long)cr->lineno);
    r = record_sample(c, &rec, which, ret, NULL, err);
    lorad_record_clear(&rec);
    if (r == 0 && ret->n != (which ? (int)cr->n_rejected : cr->n_tokens))
        return lorad_error_set(err, -EIO, "", "%s: line %lld changed since it was indexed", c->path, (long long)cr->lineno);
    return r;
}

int lorad_corpus_sample(struct lorad_corpus *c, int64_t i, struct lorad_sample *ret, struct lorad_error *err) {
    return corpus_sample(c, i, 0, ret, err);
}

int lorad_corpus_split_holdout(struct lorad_corpus *train, int64_t n_holdout, struct lorad_corpus **ret_holdout,
                               struct lorad_error *err) {
    if (n_holdout <= 0 || n_holdout >= train->n)
        return lorad_error_set(err, -EINVAL, "", "cannot hold out %" PRId64 " of %" PRId64 " samples", n_holdout,
                               train->n);
    struct lorad_corpus *h = calloc(1, sizeof *h);
    if (!h) return -ENOMEM;
    *h = *train;
    h->reader = NULL;
    h->rec = malloc((size_t)n_holdout * sizeof *h->rec);
    h->path = strdup(train->path);
    int r = h->rec && h->path ? 0 : -ENOMEM;
    /* The hold-out re-reads its records from the file through a reader of its own: the file
     * having gone or become unreadable since it was indexed is that, not a lack of memory. */
    if (r == 0) r = lorad_line_reader_open(&h->reader, train->path, train->opt.max_line, err);
    if (r < 0) {
        free(h->rec);
        free(h->path);
        free(h);
        return r;
    }
    memcpy(h->rec, train->rec + (train->n - n_holdout), (size_t)n_holdout * sizeof *h->rec);
    h->n = h->cap = n_holdout;
    train->n -= n_holdout;
    h->n_truncated = h->n_tokens = 0;
    for (int64_t i = 0; i < h->n; i++) {
        h->n_truncated += h->rec[i].truncated;
        h->n_tokens += record_tokens(&h->rec[i]);
        train->n_truncated -= h->rec[i].truncated;
        train->n_tokens -= record_tokens(&h->rec[i]);
    }
    *ret_holdout = h;
    return 0;
}

/* ---- plans -------------------------------------------------------------------------------- */

/* splitmix64: a small, well-mixed generator; the order must depend only on (seed, epoch). */
static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t uniform_below(uint64_t *state, uint64_t n) {
    /* Rejection sampling keeps the shuffle unbiased. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = splitmix64(state);
    while (x >= limit);
    return x % n;
}

int lorad_epoch_plan_build(struct lorad_epoch_plan *ret, const struct lorad_corpus *c, uint64_t seed, int epoch,
                           bool shuffle, bool packing, int max_seq_len) {
    if (packing && lorad_corpus_rows_per_record(c) > 1) return -EINVAL;
    int64_t n = c->n;
    int64_t *order = malloc((size_t)n * sizeof *order);
    int64_t *first = malloc((size_t)(n + 1) * sizeof *first);
    if (!order || !first) {
        free(order);
        free(first);
        return -ENOMEM;
    }
    for (int64_t i = 0; i < n; i++) order[i] = i;
    if (shuffle) {
        uint64_t state = seed * 0x100000001b3ULL ^ ((uint64_t)epoch + 1) * 0x9e3779b97f4a7c15ULL;
        for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
            int64_t j = (int64_t)uniform_below(&state, (uint64_t)i + 1);
            int64_t t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
    }
    int64_t rows = 0, used = 0;
    for (int64_t i = 0; i < n; i++) {
        int len = c->rec[order[i]].n_tokens;
        if (!packing || i == 0 || used + len > max_seq_len) {
            first[rows++] = i;
            used = 0;
        }
        used += len;
    }
    first[rows] = n;
    *ret = (struct lorad_epoch_plan){rows, first, order};
    return 0;
}

void lorad_epoch_plan_clear(struct lorad_epoch_plan *p) {
    free(p->row_first);
    free(p->order);
    memset(p, 0, sizeof *p);
}

/* ---- batches ------------------------------------------------------------------------------ */

/* Writes sample s into row r of b from position at (its own positions and segment start there);
 * returns the position after it. */
static int put_sample(struct lorad_batch *b, int r, int at, const struct lorad_sample *s) {
    int32_t *tok = b->tokens + (size_t)r * b->T, *lab = b->labels + (size_t)r * b->T;
    int32_t *pos = b->positions + (size_t)r * b->T, *seg = b->seg_start + (size_t)r * b->T;
    assert(at + s->n <= b->T);
    for (int i = 0; i < s->n; i++) {
        tok[at + i] = s->tokens[i];
        /* label[t] is the token that position t must predict, within the same sample. */
        lab[at + i] = (i + 1 < s->n && s->train[i + 1]) ? s->tokens[i + 1] : -100;
        pos[at + i] = i;
        seg[at + i] = at;
        b->n_labels += lab[at + i] != -100;
    }
    return at + s->n;
}

/* Pads row r of b from position at to the end. */
static void pad_row(struct lorad_batch *b, int r, int at, int32_t pad) {
    int32_t *tok = b->tokens + (size_t)r * b->T, *lab = b->labels + (size_t)r * b->T;
    int32_t *pos = b->positions + (size_t)r * b->T, *seg = b->seg_start + (size_t)r * b->T;
    b->n_tokens += at;
    for (int i = at; i < b->T; i++) {
        tok[i] = pad;
        lab[i] = -100;
        pos[i] = i - at;
        seg[i] = at; /* padding attends only to padding */
    }
}

int lorad_batch_fill(struct lorad_batch *b, struct lorad_corpus *c, const struct lorad_epoch_plan *plan,
                     int64_t first_row, int n_rows, struct lorad_error *err) {
    int per = lorad_corpus_rows_per_record(c);
    assert(n_rows >= 1 && n_rows * per <= b->cap_B && first_row + n_rows <= plan->n_rows);
    int T = c->opt.max_seq_len;
    assert(T <= b->cap_T);
    struct lorad_sample s;
    s.tokens = malloc((size_t)T * sizeof *s.tokens);
    s.train = malloc((size_t)T);
    if (!s.tokens || !s.train) {
        free(s.tokens);
        free(s.train);
        return -ENOMEM;
    }
    /* The padded length is the longest row of this batch, so short batches cost less. */
    int longest = 1;
    for (int r = 0; r < n_rows; r++) {
        int len = 0;
        for (int64_t k = plan->row_first[first_row + r]; k < plan->row_first[first_row + r + 1]; k++) {
            const struct corpus_record *cr = &c->rec[plan->order[k]];
            len += per == 2 && (int)cr->n_rejected > cr->n_tokens ? (int)cr->n_rejected : cr->n_tokens;
        }
        if (len > longest) longest = len;
    }
    b->B = n_rows * per;
    b->T = longest;
    b->n_labels = b->n_tokens = 0;
    int32_t pad = c->enc->eos_id >= 0 ? c->enc->eos_id : 0;
    int rc = 0;
    for (int r = 0; r < n_rows && rc == 0; r++) {
        if (per == 2) {
            /* a pair's two samples side by side: rows 2r (preferred) and 2r + 1 (non-preferred) */
            int64_t rec = plan->order[plan->row_first[first_row + r]];
            assert(plan->row_first[first_row + r + 1] == plan->row_first[first_row + r] + 1);
            for (int side = 0; side < 2 && rc == 0; side++) {
                if ((rc = corpus_sample(c, rec, side, &s, err)) < 0) break;
                pad_row(b, 2 * r + side, put_sample(b, 2 * r + side, 0, &s), pad);
            }
            continue;
        }
        int at = 0;
        for (int64_t k = plan->row_first[first_row + r]; k < plan->row_first[first_row + r + 1] && rc == 0; k++) {
            rc = corpus_sample(c, plan->order[k], 0, &s, err);
            if (rc < 0) break;
            at = put_sample(b, r, at, &s);
        }
        pad_row(b, r, at, pad);
    }
    free(s.tokens);
    free(s.train);
    return rc;
}
