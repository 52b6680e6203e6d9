/* One mutex guards everything the scheduler and the callers share (the caches, the sequences,
 * the event queues); it is never held across a forward step or a model load, so a submit or a
 * read waits at most for another's bookkeeping. A sequence being stepped is owned by the scheduler
 * until the step ends: closing its stream marks it and the scheduler frees it right after.
 *
 * Loads are serialised by a second mutex (load_lock) so two requests for one new base load it
 * once, while the scheduler keeps stepping what is already loaded. */
#include "infer_service.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapter_read.h"
#include "decoder.h"
#include "generate.h"
#include "model_file.h"
#include "model_tokenizer.h"
#include "samples.h"
#include "tok_stream.h"
#include "tokenizer.h"

#define PREFILL_ROWS 256 /* prompt tokens per step: bounds a step's time, so decoders keep streaming */

struct base_entry {
    struct base_entry *next;
    char *path;
    struct lorad_model_file *mf;
    struct lorad_tokenizer *tok; /* NULL: the model has none (text prompts are refused) */
    struct lorad_decoder *dec;
    int32_t stop_ids[LORAD_GENERATE_MAX_STOP_IDS];
    int n_stop_ids;
    int max_pos;
    int users; /* sequences on it */
    uint64_t last_used;
    int64_t bytes;
};

struct adapter_entry {
    struct adapter_entry *next;
    char *path;
    struct base_entry *base;
    struct lorad_lora_weights *lw;
    int users;
    uint64_t last_used;
    int64_t bytes;
};

struct event_node {
    struct event_node *next;
    struct lorad_infer_event ev;
    char *text; /* owned; ev.text points here */
};

struct seq {
    struct seq *next;                /* in the service's list */
    struct lorad_infer_stream *st;
    int choice;
    struct base_entry *base;
    struct adapter_entry *ad;        /* NULL: the base alone */
    struct lorad_kv_cache *cache;
    struct lorad_sampler *sampler;
    int32_t *ids;                    /* (cap) prompt then generated */
    int n_ids, cap, fed, n_gen, max_tokens;
    float *logits;                   /* (vocab) */
    struct lorad_text_stream ts;
    size_t prev_text_len;            /* bytes of the decode before the last token */
    char *gen;                       /* the generated text so far (not the prompt's) */
    size_t gen_len, gen_cap, released;
    bool in_step, finished, cancelled;
};

struct lorad_infer_stream {
    struct lorad_infer *s;
    pthread_cond_t cond;
    struct event_node *head, *tail;
    struct event_node *current;      /* the event last handed out */
    int n_choices, n_finished_read;
    int n_prompt;
    int refs;                        /* the caller's + each live sequence's */
    int failed;                      /* -errno once generation failed */
    struct lorad_error fail_err;
    struct lorad_infer_request req;  /* copy; stop strings point into stop_buf */
    char stop_buf[LORAD_INFER_MAX_STOP][LORAD_INFER_MAX_STOP_BYTES + 1];
    size_t stop_len[LORAD_INFER_MAX_STOP];
    bool closed;
};

struct lorad_infer {
    struct lorad_infer_options opt;
    pthread_mutex_t lock, load_lock;
    pthread_cond_t work;
    pthread_t thread;
    bool stopping;
    struct base_entry *bases;
    struct adapter_entry *adapters;
    struct seq *seqs;
    int running;                     /* sequences holding a slot */
    int64_t bytes;                   /* bases + adapters + KV caches */
    uint64_t clock;                  /* LRU ticks */
    uint64_t tokens_generated;
    struct base_entry *rr;           /* the base stepped last (round robin) */
};

/* ---------------------------------------------------------------- caches */

static void base_free(struct base_entry *b) {
    if (!b) return;
    lorad_decoder_free(b->dec);
    lorad_tokenizer_free(b->tok);
    lorad_model_file_close(b->mf);
    free(b->path);
    free(b);
}

static void adapter_free(struct adapter_entry *a) {
    if (!a) return;
    lorad_lora_weights_free(a->lw);
    free(a->path);
    free(a);
}

/* Drops idle adapters and bases, least recently used first, until `need` more bytes fit the
 * budget. Returns whether they fit. Called with the lock held. */
static bool make_room(struct lorad_infer *s, int64_t need) {
    if (s->opt.memory_budget <= 0) return true;
    while (s->bytes + need > s->opt.memory_budget) {
        struct adapter_entry **victim_a = NULL;
        struct base_entry **victim_b = NULL;
        uint64_t oldest = UINT64_MAX;
        for (struct adapter_entry **p = &s->adapters; *p; p = &(*p)->next)
            if ((*p)->users == 0 && (*p)->last_used < oldest) oldest = (*p)->last_used, victim_a = p;
        for (struct base_entry **p = &s->bases; *p; p = &(*p)->next)
            if ((*p)->users == 0 && (*p)->last_used < oldest) oldest = (*p)->last_used, victim_b = p, victim_a = NULL;
        if (victim_a) {
            struct adapter_entry *a = *victim_a;
            *victim_a = a->next;
            s->bytes -= a->bytes;
            adapter_free(a);
        } else if (victim_b) {
            struct base_entry *b = *victim_b;
            /* its adapters are idle too (a sequence holds both) and go with it */
            for (struct adapter_entry **p = &s->adapters; *p;) {
                if ((*p)->base == b) {
                    struct adapter_entry *a = *p;
                    *p = a->next;
                    s->bytes -= a->bytes;
                    adapter_free(a);
                } else {
                    p = &(*p)->next;
                }
            }
            *victim_b = b->next;
            if (s->rr == b) s->rr = NULL;
            s->bytes -= b->bytes;
            base_free(b);
        } else {
            return false;
        }
    }
    return true;
}

static struct base_entry *find_base(struct lorad_infer *s, const char *path) {
    for (struct base_entry *b = s->bases; b; b = b->next)
        if (strcmp(b->path, path) == 0) return b;
    return NULL;
}

static struct adapter_entry *find_adapter(struct lorad_infer *s, const char *path, const struct base_entry *b) {
    for (struct adapter_entry *a = s->adapters; a; a = a->next)
        if (a->base == b && strcmp(a->path, path) == 0) return a;
    return NULL;
}

/* Loads the base at path into a new entry (not yet listed). Called with load_lock only. */
static int load_base(struct lorad_infer *s, const char *path, struct base_entry **ret, struct lorad_error *err) {
    struct base_entry *b = calloc(1, sizeof *b);
    if (!b || !(b->path = strdup(path))) {
        free(b);
        return lorad_error_set(err, -ENOMEM, "", "out of memory");
    }
    int rc = lorad_model_file_open(path, &b->mf, err);
    if (rc == 0) rc = lorad_model_file_tokenizer(b->mf, NULL, &b->tok, err);
    if (rc == 0) {
        const struct lorad_llama_config *cfg = &b->mf->weights.cfg;
        b->max_pos = s->opt.max_context;
        if (cfg->max_seq_len > 0 && cfg->max_seq_len < b->max_pos) b->max_pos = cfg->max_seq_len;
        int seqs = s->opt.max_generations < LORAD_DECODER_MAX_SEQS ? s->opt.max_generations : LORAD_DECODER_MAX_SEQS;
        struct lorad_decoder_options dopt = {.threads = s->opt.threads, .max_rows = PREFILL_ROWS + seqs,
                                             .max_seqs = seqs, .max_pos = b->max_pos,
                                             .compute_dtype = LORAD_COMPUTE_FLOAT32};
        rc = lorad_decoder_new(&b->dec, &b->mf->weights, &dopt, err);
    }
    if (rc < 0) {
        snprintf(err->param, sizeof err->param, "%s", "model");
        base_free(b);
        return rc;
    }
    b->n_stop_ids = lorad_generate_stop_ids(&b->mf->weights.cfg, b->tok, b->stop_ids);
    b->bytes = (int64_t)b->mf->mapped_bytes + (int64_t)b->mf->owned_bytes + lorad_decoder_bytes(b->dec);
    *ret = b;
    return 0;
}

/* The entries req needs, loaded on first use, each with a user added for every one of `users`
 * sequences. Returns 0 or -errno with err (param "model"). */
static int acquire(struct lorad_infer *s, const struct lorad_infer_request *req, int users, struct base_entry **ret_b,
                   struct adapter_entry **ret_a, struct lorad_error *err) {
    pthread_mutex_lock(&s->load_lock);
    pthread_mutex_lock(&s->lock);
    struct base_entry *b = find_base(s, req->base_path);
    if (b) b->users += users; /* pinned while the adapter loads */
    pthread_mutex_unlock(&s->lock);
    int rc = 0;
    if (!b) {
        struct base_entry *nb = NULL;
        if ((rc = load_base(s, req->base_path, &nb, err)) == 0) {
            pthread_mutex_lock(&s->lock);
            if (!make_room(s, nb->bytes)) {
                rc = lorad_error_set(err, -ENOMEM, "model", "the model needs %.1f MiB and the inference memory budget "
                                     "(%.1f MiB) is taken by models in use", nb->bytes / 1048576.0,
                                     s->opt.memory_budget / 1048576.0);
                base_free(nb);
            } else {
                nb->next = s->bases;
                s->bases = nb;
                s->bytes += nb->bytes;
                nb->users = users;
                b = nb;
            }
            pthread_mutex_unlock(&s->lock);
        }
    }
    struct adapter_entry *a = NULL;
    if (rc == 0 && req->adapter_path) {
        pthread_mutex_lock(&s->lock);
        a = find_adapter(s, req->adapter_path, b);
        if (a) a->users += users;
        pthread_mutex_unlock(&s->lock);
        if (!a) {
            struct lorad_adapter *ad = NULL;
            struct adapter_entry *na = calloc(1, sizeof *na);
            if (!na || !(na->path = strdup(req->adapter_path))) rc = lorad_error_set(err, -ENOMEM, "", "out of memory");
            if (rc == 0) rc = lorad_adapter_load(req->adapter_path, &b->mf->weights.cfg, &ad, err);
            if (rc == 0) rc = lorad_lora_weights_new(&na->lw, ad, &b->mf->weights, err);
            lorad_adapter_free(ad);
            if (rc == 0) {
                na->base = b;
                na->bytes = lorad_lora_weights_bytes(na->lw);
                pthread_mutex_lock(&s->lock);
                if (!make_room(s, na->bytes)) {
                    rc = lorad_error_set(err, -ENOMEM, "model", "the adapter needs %.1f MiB and the inference memory "
                                         "budget is taken by models in use", na->bytes / 1048576.0);
                } else {
                    na->next = s->adapters;
                    s->adapters = na;
                    s->bytes += na->bytes;
                    na->users = users;
                    a = na;
                    na = NULL;
                }
                pthread_mutex_unlock(&s->lock);
            }
            if (rc < 0) snprintf(err->param, sizeof err->param, "%s", "model");
            adapter_free(na);
        }
    }
    pthread_mutex_lock(&s->lock);
    if (rc < 0 && b) b->users -= users;
    if (rc == 0) {
        b->last_used = ++s->clock;
        if (a) a->last_used = s->clock;
    }
    pthread_mutex_unlock(&s->lock);
    pthread_mutex_unlock(&s->load_lock);
    if (rc < 0) return rc;
    *ret_b = b;
    *ret_a = a;
    return 0;
}

/* ---------------------------------------------------------------- sequences and events */

/* Drops one reference to st (the caller's or a sequence's); the last frees it and its queued
 * events. Called with the lock held. */
static void stream_unref(struct lorad_infer_stream *st) {
    if (--st->refs != 0) return;
    for (struct event_node *e = st->head; e;) {
        struct event_node *n = e->next;
        free(e->text);
        free(e);
        e = n;
    }
    if (st->current) free(st->current->text);
    free(st->current);
    pthread_cond_destroy(&st->cond);
    free(st);
}

/* Frees q and what it holds, and lets go of its stream. Called with the lock held; q is off the
 * list and not in a step. */
static void seq_free(struct lorad_infer *s, struct seq *q) {
    s->bytes -= (int64_t)lorad_kv_cache_capacity(q->cache) * lorad_kv_cache_bytes_per_token(q->base->dec);
    q->base->users--;
    if (q->ad) q->ad->users--;
    if (!q->finished && !q->cancelled) s->running--; /* a cancelled one gave its slot back already */
    lorad_kv_cache_free(q->cache);
    lorad_sampler_free(q->sampler);
    lorad_text_stream_clear(&q->ts);
    free(q->ids);
    free(q->logits);
    free(q->gen);
    struct lorad_infer_stream *st = q->st;
    free(q);
    stream_unref(st);
}

static void unlink_seq(struct lorad_infer *s, struct seq *q) {
    for (struct seq **p = &s->seqs; *p; p = &(*p)->next)
        if (*p == q) {
            *p = q->next;
            return;
        }
}

/* Queues an event for q's stream (text copied). Called with the lock held. */
static int push_event(struct seq *q, const struct lorad_infer_event *ev, const char *text, size_t len) {
    struct event_node *e = calloc(1, sizeof *e);
    if (!e) return -ENOMEM;
    e->ev = *ev;
    e->text = malloc(len + 1);
    if (!e->text) {
        free(e);
        return -ENOMEM;
    }
    memcpy(e->text, text, len);
    e->text[len] = '\0';
    e->ev.text = e->text;
    e->ev.text_len = len;
    e->ev.choice = q->choice;
    struct lorad_infer_stream *st = q->st;
    if (st->tail) st->tail->next = e;
    else st->head = e;
    st->tail = e;
    pthread_cond_broadcast(&st->cond);
    return 0;
}

/* Where the earliest stop string starts in q's generated text, or -1. */
static ptrdiff_t find_stop(const struct seq *q) {
    const struct lorad_infer_stream *st = q->st;
    ptrdiff_t best = -1;
    for (int i = 0; i < st->req.n_stop; i++) {
        size_t L = st->stop_len[i];
        for (size_t at = 0; at + L <= q->gen_len; at++)
            if (memcmp(q->gen + at, st->stop_buf[i], L) == 0) {
                if (best < 0 || (ptrdiff_t)at < best) best = (ptrdiff_t)at;
                break;
            }
    }
    return best;
}

/* Bytes at the end of q's text that could still begin a stop string: they are held back. */
static size_t stop_holdback(const struct seq *q) {
    const struct lorad_infer_stream *st = q->st;
    size_t hold = 0;
    for (int i = 0; i < st->req.n_stop; i++)
        for (size_t k = st->stop_len[i] - 1; k > hold; k--)
            if (k <= q->gen_len && memcmp(q->gen + q->gen_len - k, st->stop_buf[i], k) == 0) {
                hold = k;
                break;
            }
    return hold;
}

static int append_gen(struct seq *q, const char *text, size_t len) {
    if (q->gen_len + len + 1 > q->gen_cap) {
        size_t cap = (q->gen_cap ? q->gen_cap * 2 : 256);
        while (cap < q->gen_len + len + 1) cap *= 2;
        char *p = realloc(q->gen, cap);
        if (!p) return -ENOMEM;
        q->gen = p;
        q->gen_cap = cap;
    }
    memcpy(q->gen + q->gen_len, text, len);
    q->gen_len += len;
    return 0;
}

/* The k most likely tokens of row (vocab) with log-probabilities under lse, best first. */
static int top_tokens(struct lorad_infer_top_logprob *top, int k, const float *row, int vocab, double lse) {
    int n = 0;
    for (int32_t id = 0; id < vocab; id++) {
        float v = row[id];
        if (n == k && v <= row[top[n - 1].id]) continue;
        int at = n < k ? n++ : k - 1;
        while (at > 0 && row[top[at - 1].id] < v) {
            top[at] = top[at - 1];
            at--;
        }
        top[at].id = id;
    }
    for (int i = 0; i < n; i++) top[i].logprob = (float)((double)row[top[i].id] - lse);
    return n;
}

/* Context tokens an alternative is decoded after: SentencePiece drops a leading space at the
 * start of a text and byte tokens only become characters together, so a token decoded alone
 * loses its space ("▁the" -> "the") or is half a character; after a few tokens of context it
 * reads as it would in the text, the way the sampled token's text is measured. */
#define ALT_CONTEXT 8

/* The texts of the alternatives top (n), each the bytes decoding grows by when that token follows
 * the last ALT_CONTEXT ids of ctx (n_ctx), past the longest common prefix. */
static void top_texts(struct lorad_infer_top_logprob *top, int n, const struct lorad_tokenizer *tok,
                      const int32_t *ctx, int n_ctx) {
    int32_t ids[ALT_CONTEXT + 1];
    int w = n_ctx < ALT_CONTEXT ? n_ctx : ALT_CONTEXT;
    memcpy(ids, ctx + n_ctx - w, sizeof(int32_t) * (size_t)w);
    char *base = NULL;
    size_t base_len = 0;
    struct lorad_error err;
    if (w > 0 && (!tok || lorad_tokenizer_decode(tok, ids, w, &base, &base_len, &err) < 0)) base = NULL, base_len = 0;
    for (int i = 0; i < n; i++) {
        struct lorad_infer_top_logprob *t = &top[i];
        t->text[0] = '\0';
        t->text_len = 0;
        if (!tok || t->id >= lorad_tokenizer_vocab_size(tok)) continue;
        ids[w] = t->id;
        char *text;
        size_t len;
        if (lorad_tokenizer_decode(tok, ids, w + 1, &text, &len, &err) < 0) continue;
        size_t p = 0;
        while (p < len && p < base_len && text[p] == base[p]) p++;
        size_t own = len - p;
        if (own > LORAD_INFER_MAX_TOKEN_BYTES) own = LORAD_INFER_MAX_TOKEN_BYTES;
        memcpy(t->text, text + p, own);
        t->text[own] = '\0';
        t->text_len = (int)own;
        free(text);
    }
    free(base);
}

static bool is_stop_id(const struct base_entry *b, int32_t id) {
    for (int i = 0; i < b->n_stop_ids; i++)
        if (b->stop_ids[i] == id) return true;
    return false;
}

/* Samples q's next token from q->logits and turns it into events. Outside the lock except for
 * the pushes (taken inside). Returns 0 or -errno with err. */
static int after_step(struct lorad_infer *s, struct seq *q, struct lorad_error *err) {
    const struct lorad_infer_request *req = &q->st->req;
    int V = q->base->mf->weights.cfg.vocab_size;
    for (int i = 0; i < V; i++)
        if (!isfinite(q->logits[i]))
            return lorad_error_set(err, -ERANGE, "", "the logits at generated position %d are not finite", q->n_gen);
    int32_t id = lorad_sampler_pick(q->sampler, q->logits, q->n_gen);
    struct lorad_infer_event ev = {.kind = LORAD_INFER_TOKEN};
    ev.token.id = id;
    if (req->logprobs) {
        double mx = -INFINITY, sum = 0;
        for (int i = 0; i < V; i++) mx = q->logits[i] > mx ? q->logits[i] : mx;
        for (int i = 0; i < V; i++) sum += exp((double)q->logits[i] - mx);
        double lse = mx + log(sum);
        ev.token.logprob = (float)((double)q->logits[id] - lse);
        ev.n_top = top_tokens(ev.top, req->top_logprobs, q->logits, V, lse);
        top_texts(ev.top, ev.n_top, q->base->tok, q->ids, q->n_ids);
    }
    q->ids[q->n_ids++] = id;
    q->n_gen++;
    bool end = is_stop_id(q->base, id), length = !end && q->n_gen >= q->max_tokens;
    const char *fresh = "";
    size_t fresh_len = 0;
    int rc = 0;
    if (q->base->tok) {
        /* An end token is not text: the stream is flushed without it (a held-back partial
         * character comes out). */
        rc = lorad_text_stream_next(&q->ts, q->ids, end ? q->n_ids - 1 : q->n_ids, end || length, &fresh, &fresh_len,
                                    err);
        if (rc == 0 && !end) {
            /* the token's own bytes: how much the whole decode grew */
            size_t grown = q->ts.text_len > q->prev_text_len ? q->ts.text_len - q->prev_text_len : 0;
            if (grown > LORAD_INFER_MAX_TOKEN_BYTES) grown = LORAD_INFER_MAX_TOKEN_BYTES;
            memcpy(ev.token.text, q->ts.text + q->ts.text_len - grown, grown);
            ev.token.text[grown] = '\0';
            ev.token.text_len = (int)grown;
            q->prev_text_len = q->ts.text_len;
        }
        if (rc == 0) rc = append_gen(q, fresh, fresh_len);
    }
    if (rc < 0) return rc == -ENOMEM ? lorad_error_set(err, rc, "", "out of memory") : rc;
    ptrdiff_t stop_at = find_stop(q);
    bool finish = end || length || stop_at >= 0;
    size_t upto = stop_at >= 0 ? (size_t)stop_at : finish ? q->gen_len : q->gen_len - stop_holdback(q);
    if (upto < q->released) upto = q->released;
    pthread_mutex_lock(&s->lock);
    s->tokens_generated++;
    if (!q->cancelled) {
        if (!end) {
            rc = push_event(q, &ev, q->gen + q->released, upto - q->released);
            q->released = upto;
        }
        if (rc == 0 && finish) {
            struct lorad_infer_event fin = {.kind = LORAD_INFER_FINISH, .finish_reason = length ? "length" : "stop",
                                            .completion_tokens = q->n_gen};
            rc = push_event(q, &fin, q->gen + q->released, upto - q->released);
            q->released = upto;
        }
    }
    if (finish && !q->cancelled && !q->finished) {
        q->finished = true;
        s->running--;
    }
    pthread_mutex_unlock(&s->lock);
    return rc == -ENOMEM ? lorad_error_set(err, rc, "", "out of memory") : rc;
}

/* ---------------------------------------------------------------- the scheduler */

/* The next base with work after s->rr, or NULL. Called with the lock held. */
static struct base_entry *pick_base(struct lorad_infer *s) {
    struct base_entry *first = NULL, *after = NULL;
    bool past = s->rr == NULL;
    for (struct base_entry *b = s->bases; b; b = b->next) {
        bool busy = false;
        for (struct seq *q = s->seqs; q && !busy; q = q->next)
            busy = q->base == b && !q->finished && !q->cancelled;
        if (busy) {
            if (!first) first = b;
            if (past && !after) after = b;
        }
        if (b == s->rr) past = true;
    }
    return after ? after : first;
}

/* Fails every live sequence of the step's stream with rc. Called with the lock held. */
static void fail_stream(struct lorad_infer *s, struct seq *q, int rc, const struct lorad_error *err) {
    struct lorad_infer_stream *st = q->st;
    if (!st->failed) {
        st->failed = rc;
        st->fail_err = *err;
    }
    for (struct seq *o = s->seqs; o; o = o->next)
        if (o->st == st && !o->finished && !o->cancelled) {
            o->finished = true;
            s->running--;
        }
    pthread_cond_broadcast(&st->cond);
}

static void *scheduler(void *arg) {
    struct lorad_infer *s = arg;
    struct lorad_decode_item items[LORAD_DECODER_MAX_SEQS];
    struct seq *stepped[LORAD_DECODER_MAX_SEQS];
    pthread_mutex_lock(&s->lock);
    while (!s->stopping) {
        struct base_entry *b = pick_base(s);
        if (!b) {
            pthread_cond_wait(&s->work, &s->lock);
            continue;
        }
        s->rr = b;
        int n = 0, rows = 0, prefill_left = PREFILL_ROWS;
        int max_items = s->opt.max_generations < LORAD_DECODER_MAX_SEQS ? s->opt.max_generations : LORAD_DECODER_MAX_SEQS;
        for (struct seq *q = s->seqs; q && n < max_items; q = q->next) {
            if (q->base != b || q->finished || q->cancelled) continue;
            int want = q->n_ids - q->fed;
            assert(want >= 1);
            if (want > 1) {
                if (prefill_left == 0) continue;
                if (want > prefill_left) want = prefill_left;
                prefill_left -= want;
            }
            items[n] = (struct lorad_decode_item){.cache = q->cache, .lora = q->ad ? q->ad->lw : NULL,
                                                  .tokens = q->ids + q->fed, .n = want,
                                                  .logits = q->fed + want == q->n_ids ? q->logits : NULL};
            q->in_step = true;
            stepped[n++] = q;
            rows += want;
        }
        pthread_mutex_unlock(&s->lock);
        struct lorad_error err = {0};
        int rc = lorad_decoder_step(b->dec, items, n, &err);
        int results[LORAD_DECODER_MAX_SEQS];
        for (int i = 0; i < n; i++) {
            results[i] = rc;
            if (rc < 0) continue;
            stepped[i]->fed += items[i].n;
            if (items[i].logits) results[i] = after_step(s, stepped[i], &err);
        }
        pthread_mutex_lock(&s->lock);
        for (int i = 0; i < n; i++) {
            struct seq *q = stepped[i];
            q->in_step = false;
            if (results[i] < 0 && !q->cancelled) fail_stream(s, q, results[i], &err);
            if (q->cancelled || (q->finished && q->st->closed)) {
                unlink_seq(s, q);
                seq_free(s, q);
            }
        }
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* ---------------------------------------------------------------- the public calls */

int lorad_infer_new(struct lorad_infer **ret, const struct lorad_infer_options *opt, struct lorad_error *err) {
    if (opt->threads < 1 || opt->threads > LORAD_MAX_THREADS)
        return lorad_error_set(err, -EINVAL, "threads", "inference threads must be 1 to %d, got %d", LORAD_MAX_THREADS,
                               opt->threads);
    if (opt->max_generations < 1 || opt->max_generations > 65536)
        return lorad_error_set(err, -EINVAL, "max_generations", "max_generations must be 1 to 65536, got %d",
                               opt->max_generations);
    if (opt->max_context < 1 || opt->max_context > LORAD_MAX_SEQ_LEN)
        return lorad_error_set(err, -EINVAL, "max_context", "max_context must be 1 to %d, got %d", LORAD_MAX_SEQ_LEN,
                               opt->max_context);
    if (opt->memory_budget < 0) return lorad_error_set(err, -EINVAL, "memory_budget", "memory_budget must be >= 0");
    struct lorad_infer *s = calloc(1, sizeof *s);
    if (!s) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    s->opt = *opt;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->load_lock, NULL);
    pthread_cond_init(&s->work, NULL);
    int rc = pthread_create(&s->thread, NULL, scheduler, s);
    if (rc != 0) {
        pthread_cond_destroy(&s->work);
        pthread_mutex_destroy(&s->load_lock);
        pthread_mutex_destroy(&s->lock);
        free(s);
        return lorad_error_set(err, -rc, "threads", "cannot start the inference scheduler");
    }
    *ret = s;
    return 0;
}

void lorad_infer_free(struct lorad_infer *s) {
    if (!s) return;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    assert(!s->seqs); /* every stream was closed first */
    while (s->adapters) {
        struct adapter_entry *a = s->adapters;
        s->adapters = a->next;
        adapter_free(a);
    }
    while (s->bases) {
        struct base_entry *b = s->bases;
        s->bases = b->next;
        base_free(b);
    }
    pthread_cond_destroy(&s->work);
    pthread_mutex_destroy(&s->load_lock);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* Checks what the request says apart from the model (the caller's parser checks ranges too; this
 * is the engine's own guard). */
static int check_request(const struct lorad_infer_request *req, struct lorad_error *err) {
    if (!req->base_path) return lorad_error_set(err, -EINVAL, "model", "no base model");
    if (!req->prompt == !req->messages) return lorad_error_set(err, -EINVAL, "prompt", "give a prompt or messages");
    if (req->messages && (req->n_messages < 1 || req->n_messages >= LORAD_DATASET_MAX_TURNS))
        return lorad_error_set(err, -EINVAL, "messages", "messages must hold 1 to %d entries, got %d",
                               LORAD_DATASET_MAX_TURNS - 1, req->n_messages);
    if (req->n < 1 || req->n > LORAD_INFER_MAX_CHOICES)
        return lorad_error_set(err, -EINVAL, "n", "n must be 1 to %d, got %d", LORAD_INFER_MAX_CHOICES, req->n);
    if (req->max_tokens < 0) return lorad_error_set(err, -EINVAL, "max_tokens", "max_tokens must be >= 1");
    if (req->n_stop < 0 || req->n_stop > LORAD_INFER_MAX_STOP)
        return lorad_error_set(err, -EINVAL, "stop", "stop holds at most %d strings", LORAD_INFER_MAX_STOP);
    for (int i = 0; i < req->n_stop; i++) {
        size_t len = req->stop[i] ? strlen(req->stop[i]) : 0;
        if (len < 1 || len > LORAD_INFER_MAX_STOP_BYTES)
            return lorad_error_set(err, -EINVAL, "stop", "stop[%d] must be 1 to %d bytes", i, LORAD_INFER_MAX_STOP_BYTES);
    }
    if (req->top_logprobs < 0 || req->top_logprobs > LORAD_INFER_MAX_TOP_LOGPROBS)
        return lorad_error_set(err, -EINVAL, "top_logprobs", "top_logprobs must be 0 to %d", LORAD_INFER_MAX_TOP_LOGPROBS);
    return 0;
}

/* The prompt's ids under b's tokenizer (malloc'd), at most max ids. */
static int tokenize(const struct base_entry *b, const struct lorad_infer_request *req, int max, int32_t **ret_ids,
                    int *ret_n, struct lorad_error *err) {
    if (!b->tok)
        return lorad_error_set(err, -EINVAL, "model", "this model has no tokenizer, so it cannot take text");
    struct lorad_encoder enc;
    lorad_encoder_from_tokenizer(&enc, b->tok, b->mf->weights.cfg.vocab_size);
    struct lorad_prompt p = {.text = req->prompt};
    if (req->messages) {
        p.messages = req->messages;
        p.n_messages = req->n_messages;
        p.tmpl = lorad_encoder_template(&enc, req->tmpl);
    }
    int rc = lorad_prompt_tokenize(ret_ids, ret_n, &p, &enc, max, err);
    if (rc == -E2BIG)
        return lorad_error_set(err, rc, req->messages ? "messages" : "prompt", "the prompt leaves no room for an "
                               "answer in the model's context of %d tokens", b->max_pos);
    return rc;
}

/* A new sequence for choice i of st, its prompt copied in. */
static int seq_new(struct seq **ret, struct lorad_infer_stream *st, int i, struct base_entry *b, struct adapter_entry *a,
                   const int32_t *prompt, int n_prompt, int max_tokens, struct lorad_error *err) {
    struct seq *q = calloc(1, sizeof *q);
    if (!q) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    q->st = st;
    q->choice = i;
    q->base = b;
    q->ad = a;
    q->cap = n_prompt + max_tokens;
    q->max_tokens = max_tokens;
    q->n_ids = n_prompt;
    int V = b->mf->weights.cfg.vocab_size;
    struct lorad_sampling sp = st->req.sampling;
    sp.seed += (uint64_t)i;
    int rc = lorad_kv_cache_new(&q->cache, b->dec, q->cap, err);
    if (rc == 0) rc = lorad_sampler_new(&q->sampler, &sp, V, err);
    if (rc == 0) {
        q->ids = malloc(sizeof(int32_t) * (size_t)q->cap);
        q->logits = malloc(sizeof(float) * (size_t)V);
        if (!q->ids || !q->logits || (b->tok && lorad_text_stream_init(&q->ts, b->tok, q->cap) < 0))
            rc = lorad_error_set(err, -ENOMEM, "", "out of memory");
    }
    if (rc == 0) {
        memcpy(q->ids, prompt, sizeof(int32_t) * (size_t)n_prompt);
        /* the prompt's text is not the answer's: the stream starts after it */
        if (b->tok) {
            const char *t;
            size_t len;
            rc = lorad_text_stream_next(&q->ts, q->ids, n_prompt, false, &t, &len, err);
            q->prev_text_len = q->ts.text_len;
        }
    }
    if (rc < 0) {
        lorad_kv_cache_free(q->cache);
        lorad_sampler_free(q->sampler);
        lorad_text_stream_clear(&q->ts);
        free(q->ids);
        free(q->logits);
        free(q);
        return rc;
    }
    *ret = q;
    return 0;
}

/* Contract: req and its strings are borrowed for the call (stop strings are copied); the stream
 * is the caller's until lorad_infer_stream_close. */
int lorad_infer_submit(struct lorad_infer *s, const struct lorad_infer_request *req, struct lorad_infer_stream **ret,
                       struct lorad_error *err) {
    int rc = check_request(req, err);
    if (rc < 0) return rc;
    pthread_mutex_lock(&s->lock);
    bool full = s->running + req->n > s->opt.max_generations;
    pthread_mutex_unlock(&s->lock);
    if (full)
        return lorad_error_set(err, -EAGAIN, "", "all %d generation slots are busy; retry shortly", s->opt.max_generations);
    struct base_entry *b;
    struct adapter_entry *a;
    if ((rc = acquire(s, req, req->n, &b, &a, err)) < 0) return rc;
    int32_t *prompt = NULL;
    int n_prompt = 0;
    rc = tokenize(b, req, b->max_pos - 1, &prompt, &n_prompt, err);
    int max_tokens = req->max_tokens ? req->max_tokens : b->max_pos - n_prompt;
    if (rc == 0 && n_prompt + max_tokens > b->max_pos) max_tokens = b->max_pos - n_prompt; /* "length" at the context */
    struct lorad_infer_stream *st = NULL;
    if (rc == 0 && !(st = calloc(1, sizeof *st))) rc = lorad_error_set(err, -ENOMEM, "", "out of memory");
    struct seq *seqs[LORAD_INFER_MAX_CHOICES] = {0};
    int made = 0;
    if (rc == 0) {
        st->s = s;
        pthread_cond_init(&st->cond, NULL);
        st->req = *req;
        st->req.base_path = st->req.adapter_path = st->req.prompt = NULL;
        st->req.messages = NULL;
        for (int i = 0; i < req->n_stop; i++) {
            st->stop_len[i] = strlen(req->stop[i]);
            memcpy(st->stop_buf[i], req->stop[i], st->stop_len[i] + 1);
            st->req.stop[i] = st->stop_buf[i];
        }
        st->n_choices = req->n;
        st->n_prompt = n_prompt;
        st->refs = 1;
        for (; made < req->n && rc == 0; made++)
            if ((rc = seq_new(&seqs[made], st, made, b, a, prompt, n_prompt, max_tokens, err)) < 0) break;
    }
    free(prompt);
    int64_t kv = (int64_t)req->n * (n_prompt + max_tokens) * (rc == 0 ? lorad_kv_cache_bytes_per_token(b->dec) : 0);
    pthread_mutex_lock(&s->lock);
    if (rc == 0 && !make_room(s, kv))
        rc = lorad_error_set(err, -ENOMEM, "max_tokens", "the KV caches of this request (%.1f MiB) do not fit the "
                             "inference memory budget", kv / 1048576.0);
    if (rc == 0 && s->running + req->n > s->opt.max_generations)
        rc = lorad_error_set(err, -EAGAIN, "", "all %d generation slots are busy; retry shortly", s->opt.max_generations);
    if (rc < 0) {
        b->users -= req->n;
        if (a) a->users -= req->n;
        pthread_mutex_unlock(&s->lock);
        for (int i = 0; i < made; i++) {
            lorad_kv_cache_free(seqs[i]->cache);
            lorad_sampler_free(seqs[i]->sampler);
            lorad_text_stream_clear(&seqs[i]->ts);
            free(seqs[i]->ids);
            free(seqs[i]->logits);
            free(seqs[i]);
        }
        if (st) {
            pthread_cond_destroy(&st->cond);
            free(st);
        }
        return rc;
    }
    s->bytes += kv;
    s->running += req->n;
    for (int i = 0; i < req->n; i++) {
        /* at the tail, so older requests are stepped first */
        struct seq **p = &s->seqs;
        while (*p) p = &(*p)->next;
        *p = seqs[i];
        st->refs++;
    }
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->lock);
    *ret = st;
    return 0;
}

int lorad_infer_prompt_tokens(const struct lorad_infer_stream *st) { return st->n_prompt; }

int lorad_infer_next(struct lorad_infer_stream *st, int timeout_ms, struct lorad_infer_event *ret,
                     struct lorad_error *err) {
    struct lorad_infer *s = st->s;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    if (timeout_ms > 0) {
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) deadline.tv_sec++, deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->lock);
    if (st->current) {
        free(st->current->text);
        free(st->current);
        st->current = NULL;
    }
    int rc = 0;
    for (;;) {
        if (st->head) {
            struct event_node *e = st->head;
            st->head = e->next;
            if (!st->head) st->tail = NULL;
            st->current = e;
            if (e->ev.kind == LORAD_INFER_FINISH) st->n_finished_read++;
            *ret = e->ev;
            rc = 1;
            break;
        }
        if (st->failed) {
            rc = st->failed;
            *err = st->fail_err;
            break;
        }
        if (st->n_finished_read == st->n_choices) {
            rc = 2;
            break;
        }
        if (timeout_ms == 0) break;
        if (timeout_ms < 0) pthread_cond_wait(&st->cond, &s->lock);
        else if (pthread_cond_timedwait(&st->cond, &s->lock, &deadline) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void lorad_infer_stream_close(struct lorad_infer_stream *st) {
    if (!st) return;
    struct lorad_infer *s = st->s;
    pthread_mutex_lock(&s->lock);
    st->closed = true;
    for (struct seq **p = &s->seqs; *p;) {
        struct seq *q = *p;
        if (q->st != st) {
            p = &q->next;
            continue;
        }
        if (!q->finished && !q->cancelled) s->running--; /* the slot is free now, not after the step */
        q->cancelled = true;
        if (q->in_step) {
            p = &q->next; /* the scheduler frees it when its step ends */
            continue;
        }
        *p = q->next;
        seq_free(s, q);
    }
    stream_unref(st);
    pthread_mutex_unlock(&s->lock);
}

void lorad_infer_get_stats(struct lorad_infer *s, struct lorad_infer_stats *ret) {
    pthread_mutex_lock(&s->lock);
    struct lorad_infer_stats st = {.running = s->running, .bytes_loaded = s->bytes, .tokens_generated = s->tokens_generated};
    for (struct base_entry *b = s->bases; b; b = b->next) st.bases_loaded++;
    for (struct adapter_entry *a = s->adapters; a; a = a->next) st.adapters_loaded++;
    pthread_mutex_unlock(&s->lock);
    *ret = st;
}
