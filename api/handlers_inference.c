/* POST /v1/completions and POST /v1/chat/completions: OpenAI's inference routes over the engine's
 * inference service (engine/infer/infer_service.h, app->infer).
 *
 * A request is checked (inference_request.c), its model name resolved to paths the server built
 * (model_resolve.c), and submitted to the service: one engine stream per prompt, each with n
 * choices, so a prompt list's choice index is prompt_i * n + choice as OpenAI numbers them. Without
 * stream the handler collects every event and answers one object; with stream it hands the
 * transport a raw stream (routes.h, stream_next) that formats OpenAI's chunks as the events come.
 * Either way the engine streams are closed as soon as the answer is complete, the client hangs up
 * or the server stops, so a generation nobody reads never keeps its slots. */
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "handlers_internal.h"
#include "inference_request.h"
#include "store.h"

#define RETRY_AFTER_S 1      /* a 429's Retry-After: slots free as soon as any generation ends */
#define COLLECT_POLL_MS 100  /* without stream, how often a hung-up client or a stop is looked for */
#define MULTI_WAIT_MS 5      /* with several prompts, the wait on one stream before trying the next */
#define LOGPROB_FLOOR (-9999.0) /* what OpenAI reports for a log-probability too small to print */

/* What one choice has produced so far (without stream: the whole answer). */
struct choice {
    char *text;
    size_t len, cap;
    json_t *logprobs; /* chat: the content array; completions: {tokens, token_logprobs, top_logprobs, text_offset} */
    size_t offset;    /* completions: bytes of this choice's tokens so far (text_offset) */
    const char *finish_reason;
    int completion_tokens;
};

enum stream_phase { PHASE_START, PHASE_RUN, PHASE_END, PHASE_OVER };

/* One request's generation: its engine streams and what they have produced. Owns everything in
 * it; freed by generation_free (the raw stream's free callback when streaming). */
struct generation {
    json_t *body;                       /* a reference: params borrow its strings */
    struct lorad_api_infer_params p;
    struct handler_model *model;
    struct lorad_infer_stream *streams[LORAD_API_INFER_MAX_PROMPTS];
    bool ended[LORAD_API_INFER_MAX_PROMPTS];
    int n_streams, next_stream;
    struct choice *choices;             /* n_prompts * n */
    int n_choices;
    char id[LORAD_STORE_ID_MAX];
    json_int_t created;
    int prompt_tokens, completion_tokens;
    enum stream_phase phase;
};

static void generation_free(void *ctx) {
    struct generation *g = ctx;
    if (!g) return;
    /* First, so the slots are free before anything else is done. */
    for (int i = 0; i < g->n_streams; i++) lorad_infer_stream_close(g->streams[i]);
    for (int i = 0; i < g->n_choices; i++) {
        free(g->choices[i].text);
        json_decref(g->choices[i].logprobs);
    }
    free(g->choices);
    free(g->model);
    lorad_api_infer_params_clear(&g->p);
    json_decref(g->body);
    free(g);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

/* ---- JSON pieces -------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 when it is not one (RFC 3629). */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f; /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else return 0;
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf) return 0;
    return len;
}

/* A JSON string of n bytes of model output: as is when it is valid UTF-8 (the engine releases
 * whole characters), else with each invalid byte as U+FFFD (a token's own bytes may be half a
 * character; its "bytes" array keeps them exact). NULL on ENOMEM. */
static json_t *text_json(const char *s, size_t n) {
    json_t *j = json_stringn(s, n);
    if (j) return j;
    char *clean = malloc(3 * n + 1);
    if (!clean) return NULL;
    size_t out = 0;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq((const unsigned char *)s + i, n - i);
        if (k && !(k == 1 && s[i] == '\0')) {
            memcpy(clean + out, s + i, k);
            out += k;
            i += k;
        } else {
            memcpy(clean + out, "\xef\xbf\xbd", 3);
            out += 3;
            i++;
        }
    }
    j = json_stringn(clean, out);
    free(clean);
    return j;
}

static json_t *logprob_json(float lp) {
    return json_real(isfinite(lp) ? (double)lp : LOGPROB_FLOOR);
}

/* Chat's {token, logprob, bytes} of one token. */
static json_t *chat_token(const struct lorad_infer_top_logprob *t) {
    json_t *bytes = json_array();
    for (int i = 0; bytes && i < t->text_len; i++) json_array_append_new(bytes, json_integer((unsigned char)t->text[i]));
    return json_pack("{s:o, s:o, s:o}", "token", text_json(t->text, (size_t)t->text_len), "logprob",
                     logprob_json(t->logprob), "bytes", bytes);
}

/* Chat's logprobs entry of a TOKEN event: the token and its top_logprobs alternatives. */
static json_t *chat_logprob_entry(const struct lorad_infer_event *ev) {
    json_t *e = chat_token(&ev->token), *top = json_array();
    for (int i = 0; top && i < ev->n_top; i++) json_array_append_new(top, chat_token(&ev->top[i]));
    if (!e || !top || json_object_set_new(e, "top_logprobs", top) < 0) {
        json_decref(e);
        return NULL;
    }
    return e;
}

/* Legacy completions' top_logprobs dict of a token: its top alternatives, then the token itself
 * when it is not among them (OpenAI: "up to logprobs+1 elements"). */
static json_t *completion_top(const struct lorad_infer_event *ev) {
    json_t *d = json_object();
    bool has_token = false;
    for (int i = 0; d && i < ev->n_top; i++) {
        json_t *k = text_json(ev->top[i].text, (size_t)ev->top[i].text_len);
        if (k && !json_object_get(d, json_string_value(k)))
            json_object_set_new(d, json_string_value(k), logprob_json(ev->top[i].logprob));
        json_decref(k);
        if (ev->top[i].id == ev->token.id) has_token = true;
    }
    json_t *k = text_json(ev->token.text, (size_t)ev->token.text_len);
    if (d && k && !has_token && !json_object_get(d, json_string_value(k)))
        json_object_set_new(d, json_string_value(k), logprob_json(ev->token.logprob));
    json_decref(k);
    return d;
}

/* Appends one TOKEN event to the legacy completions logprobs object lp ({tokens, token_logprobs,
 * top_logprobs, text_offset}, created when NULL), at byte offset. Returns lp or NULL. */
static json_t *completion_logprobs_add(json_t *lp, const struct lorad_infer_event *ev, size_t offset) {
    if (!lp) lp = json_pack("{s:[], s:[], s:[], s:[]}", "tokens", "token_logprobs", "top_logprobs", "text_offset");
    if (!lp) return NULL;
    json_array_append_new(json_object_get(lp, "tokens"), text_json(ev->token.text, (size_t)ev->token.text_len));
    json_array_append_new(json_object_get(lp, "token_logprobs"), logprob_json(ev->token.logprob));
    json_array_append_new(json_object_get(lp, "top_logprobs"), completion_top(ev));
    json_array_append_new(json_object_get(lp, "text_offset"), json_integer((json_int_t)offset));
    return lp;
}

static json_t *usage_json(const struct generation *g) {
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", g->prompt_tokens, "completion_tokens", g->completion_tokens,
                     "total_tokens", g->prompt_tokens + g->completion_tokens);
}

static const char *finish_name(const char *engine_reason) {
    return engine_reason && strcmp(engine_reason, "length") == 0 ? "length" : "stop";
}

/* ---- the engine's events ------------------------------------------------------------------ */

/* The next event of any of g's streams within timeout_ms, round robin so no prompt waits behind
 * another. Returns 1 with *ev and the choice's OpenAI index in *ret_index, 0 when none came in
 * time, 2 when every stream has ended, or the engine's -errno (err set). */
static int generation_next(struct generation *g, int timeout_ms, struct lorad_infer_event *ev, int *ret_index,
                           struct lorad_error *err) {
    double deadline = now_ms() + timeout_ms;
    for (;;) {
        int open = 0, wait_on = -1;
        for (int k = 0; k < g->n_streams; k++) {
            int i = (g->next_stream + k) % g->n_streams;
            if (g->ended[i]) continue;
            int r = lorad_infer_next(g->streams[i], 0, ev, err);
            if (r < 0) return r;
            if (r == 1) {
                g->next_stream = (i + 1) % g->n_streams;
                *ret_index = i * g->p.req.n + ev->choice;
                return 1;
            }
            if (r == 2) {
                g->ended[i] = true;
                continue;
            }
            open++;
            if (wait_on < 0) wait_on = i;
        }
        if (open == 0) return 2;
        int left = (int)(deadline - now_ms());
        if (left <= 0) return 0;
        /* One open stream: wait on it for the rest of the time; several: briefly on each in turn. */
        int r = lorad_infer_next(g->streams[wait_on], open == 1 || left < MULTI_WAIT_MS ? left : MULTI_WAIT_MS, ev, err);
        g->next_stream = (wait_on + 1) % g->n_streams;
        if (r < 0) return r;
        if (r == 1) {
            *ret_index = wait_on * g->p.req.n + ev->choice;
            return 1;
        }
        if (r == 2) g->ended[wait_on] = true;
    }
}

/* Without stream: adds an event to its choice. Returns 0 or -ENOMEM. */
static int collect_event(struct generation *g, int index, const struct lorad_infer_event *ev) {
    if (index < 0 || index >= g->n_choices) return 0; /* not ours: the engine numbers 0..n-1 */
    struct choice *c = &g->choices[index];
    if (c->len + ev->text_len + 1 > c->cap) {
        size_t cap = 2 * (c->len + ev->text_len + 1);
        char *t = realloc(c->text, cap);
        if (!t) return -ENOMEM;
        c->text = t;
        c->cap = cap;
    }
    memcpy(c->text + c->len, ev->text, ev->text_len);
    c->len += ev->text_len;
    c->text[c->len] = '\0';
    if (ev->kind == LORAD_INFER_FINISH) {
        c->finish_reason = finish_name(ev->finish_reason);
        c->completion_tokens = ev->completion_tokens;
        g->completion_tokens += ev->completion_tokens;
        return 0;
    }
    if (!g->p.req.logprobs) return 0;
    if (g->p.kind == LORAD_API_INFER_CHAT) {
        if (!c->logprobs) c->logprobs = json_array();
        if (!c->logprobs || json_array_append_new(c->logprobs, chat_logprob_entry(ev)) < 0) return -ENOMEM;
    } else {
        c->logprobs = completion_logprobs_add(c->logprobs, ev, c->offset);
        if (!c->logprobs) return -ENOMEM;
    }
    c->offset += (size_t)ev->token.text_len;
    return 0;
}

/* Without stream: the whole answer, chat.completion or text_completion. NULL on ENOMEM. */
static json_t *collected_reply(const struct generation *g) {
    bool chat = g->p.kind == LORAD_API_INFER_CHAT;
    json_t *choices = json_array();
    for (int i = 0; choices && i < g->n_choices; i++) {
        const struct choice *c = &g->choices[i];
        json_t *text = text_json(c->text ? c->text : "", c->len), *lp = json_null();
        if (c->logprobs)
            lp = chat ? json_pack("{s:O, s:n}", "content", c->logprobs, "refusal") : json_incref(c->logprobs);
        else if (chat && g->p.req.logprobs)
            lp = json_pack("{s:[], s:n}", "content", "refusal"); /* no token came before the end */
        else if (!chat && g->p.req.logprobs)
            lp = json_pack("{s:[], s:[], s:[], s:[]}", "tokens", "token_logprobs", "top_logprobs", "text_offset");
        const char *reason = c->finish_reason ? c->finish_reason : "stop";
        json_t *ch = chat ? json_pack("{s:i, s:{s:s, s:o, s:n}, s:o, s:s}", "index", i, "message", "role", "assistant",
                                      "content", text, "refusal", "logprobs", lp, "finish_reason", reason)
                          : json_pack("{s:i, s:o, s:o, s:s}", "index", i, "text", text, "logprobs", lp,
                                      "finish_reason", reason);
        if (!ch || json_array_append_new(choices, ch) < 0) {
            json_decref(choices);
            return NULL;
        }
    }
    if (!choices) return NULL;
    return json_pack("{s:s, s:s, s:I, s:s, s:o, s:o}", "id", g->id, "object", chat ? "chat.completion" : "text_completion",
                     "created", g->created, "model", g->p.model, "choices", choices, "usage", usage_json(g));
}

/* ---- streaming ---------------------------------------------------------------------------- */

/* Writes one `data: {chunk}` event to f: g's id, object, created and model around choices (stolen;
 * may be an empty array), and usage (stolen; NULL: null, written only with include_usage). */
static int write_chunk(FILE *f, const struct generation *g, json_t *choices, json_t *usage) {
    bool chat = g->p.kind == LORAD_API_INFER_CHAT;
    json_t *chunk = json_pack("{s:s, s:s, s:I, s:s, s:o}", "id", g->id, "object",
                              chat ? "chat.completion.chunk" : "text_completion", "created", g->created, "model",
                              g->p.model, "choices", choices);
    if (chunk && g->p.include_usage) json_object_set_new(chunk, "usage", usage ? usage : json_null());
    else json_decref(usage);
    int r = chunk && fputs("data: ", f) >= 0 && json_dumpf(chunk, f, JSON_COMPACT) == 0 && fputs("\n\n", f) >= 0
                ? 0
                : -ENOMEM;
    json_decref(chunk);
    return r;
}

/* Writes the chunks of one event: its text (with its token's logprobs when asked for), and at a
 * FINISH the choice's final chunk. A token whose text is held back and whose logprobs nobody asked
 * for writes nothing. */
static int write_event(FILE *f, struct generation *g, int index, const struct lorad_infer_event *ev) {
    bool chat = g->p.kind == LORAD_API_INFER_CHAT, finish = ev->kind == LORAD_INFER_FINISH;
    bool with_lp = !finish && g->p.req.logprobs;
    int r = 0;
    if (finish) g->completion_tokens += ev->completion_tokens;
    if (ev->text_len > 0 || with_lp) {
        json_t *lp = json_null();
        if (with_lp && chat) {
            lp = json_pack("{s:[o], s:n}", "content", chat_logprob_entry(ev), "refusal");
        } else if (with_lp && index >= 0 && index < g->n_choices) {
            lp = completion_logprobs_add(NULL, ev, g->choices[index].offset);
            g->choices[index].offset += (size_t)ev->token.text_len;
        }
        json_t *text = text_json(ev->text, ev->text_len);
        json_t *choice = chat ? json_pack("{s:i, s:{s:o}, s:o, s:n}", "index", index, "delta", "content", text,
                                          "logprobs", lp ? lp : json_null(), "finish_reason")
                              : json_pack("{s:i, s:o, s:o, s:o}", "index", index, "text", text, "logprobs",
                                          lp ? lp : json_null(), "finish_reason",
                                          finish ? json_string(finish_name(ev->finish_reason)) : json_null());
        r = write_chunk(f, g, json_pack("[o]", choice), NULL);
        if (r < 0 || !chat || !finish) return r;
    } else if (!finish) {
        return 0;
    } else if (!chat) {
        return write_chunk(f, g,
                           json_pack("[{s:i, s:s, s:n, s:s}]", "index", index, "text", "", "logprobs", "finish_reason",
                                     finish_name(ev->finish_reason)),
                           NULL);
    }
    return write_chunk(f, g,
                       json_pack("[{s:i, s:{}, s:n, s:s}]", "index", index, "delta", "logprobs", "finish_reason",
                                 finish_name(ev->finish_reason)),
                       NULL);
}

/* Answers a generation that failed after it started (logits not finite, the service stopping):
 * the server's fault, never the request's. Returns 0. */
static int reply_generation_failure(struct lorad_api_reply *ret_reply, int r, const struct lorad_error *err) {
    if (r == -ESHUTDOWN) return lorad_api_reply_error(ret_reply, 503, "the server is stopping", NULL, "shutting_down");
    /* the service's own refusal names the budget (inference.memory_budget): pass it on, a 503 the
     * client may retry once other models are idle */
    if (r == -ENOMEM && err->message[0])
        return lorad_api_reply_error(ret_reply, 503, err->message, err->param[0] ? err->param : NULL,
                                     "inference_memory_budget");
    if (r == -ENOMEM) return handler_reply_oom(ret_reply);
    char msg[sizeof err->message];
    snprintf(msg, sizeof msg, "%s", err->message[0] ? err->message : strerror(-r));
    return lorad_api_reply_error(ret_reply, 500, msg, NULL, "generation_failed");
}

/* The error event of a generation that failed mid-stream: OpenAI's error shape, as the SDKs read it
 * from a stream. */
static int write_error(FILE *f, int r, const struct lorad_error *err) {
    struct lorad_api_reply tmp = {0};
    reply_generation_failure(&tmp, r, err);
    int ok = tmp.json && fputs("data: ", f) >= 0 && json_dumpf(tmp.json, f, JSON_COMPACT) == 0 && fputs("\n\n", f) >= 0;
    json_decref(tmp.json);
    return ok ? 0 : -ENOMEM;
}

/* lorad_api_stream_next_fn: the chunks of whatever the engine produced within timeout_ms. */
static int stream_next(void *ctx, int timeout_ms, char **ret_bytes) {
    struct generation *g = ctx;
    if (g->phase == PHASE_OVER) return 2;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return -ENOMEM;
    int r = 0;
    if (g->phase == PHASE_START) {
        /* OpenAI's first chunk of each chat choice names the role: sent at once, so the client sees
         * the answer begin while the prompt is still being read. */
        for (int i = 0; r == 0 && g->p.kind == LORAD_API_INFER_CHAT && i < g->n_choices; i++)
            r = write_chunk(f, g,
                            json_pack("[{s:i, s:{s:s, s:s}, s:n, s:n}]", "index", i, "delta", "role", "assistant",
                                      "content", "", "logprobs", "finish_reason"),
                            NULL);
        g->phase = PHASE_RUN;
    }
    double deadline = now_ms() + timeout_ms;
    while (r == 0 && g->phase == PHASE_RUN && ftell(f) == 0) {
        struct lorad_infer_event ev;
        struct lorad_error err = {0};
        int index = 0, left = (int)(deadline - now_ms());
        int e = generation_next(g, left > 0 ? left : 0, &ev, &index, &err);
        if (e == 0) break;
        if (e == 1) {
            r = write_event(f, g, index, &ev);
        } else if (e == 2) {
            g->phase = PHASE_END;
        } else {
            r = write_error(f, e, &err);
            g->phase = PHASE_OVER;
            if (r == 0 && fputs("data: [DONE]\n\n", f) < 0) r = -ENOMEM;
        }
        if (left <= 0) break;
    }
    if (r == 0 && g->phase == PHASE_END) {
        if (g->p.include_usage) r = write_chunk(f, g, json_array(), usage_json(g));
        if (r == 0 && fputs("data: [DONE]\n\n", f) < 0) r = -ENOMEM;
        g->phase = PHASE_OVER;
    }
    if (fclose(f) != 0 && r == 0) r = -ENOMEM;
    if (r < 0 || len == 0) {
        free(text);
        return r;
    }
    *ret_bytes = text;
    return 1;
}

/* ---- the handlers ------------------------------------------------------------------------- */

/* A seed for a request that gave none: different every time, as OpenAI's sampling is. */
static uint64_t random_seed(void) {
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) == (ssize_t)sizeof seed) return seed;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec ^ (uint64_t)getpid();
}

/* Answers a failed lorad_infer_submit: 429 with Retry-After past max_concurrent_generations, 404
 * for a model the engine cannot find, the mapped error otherwise. Returns 0. */
static int reply_submit_failure(struct lorad_api_reply *ret_reply, int r, struct lorad_error *err) {
    if (r == -EAGAIN) {
        if (!err->message[0])
            snprintf(err->message, sizeof err->message,
                     "the server is generating as many sequences as it runs at once (max_concurrent_generations); "
                     "retry later");
        handler_reply_failure(ret_reply, r, err, "rate_limit_exceeded");
        ret_reply->retry_after_s = RETRY_AFTER_S;
        return 0;
    }
    if (r == -ENOENT) return lorad_api_reply_error(ret_reply, 404, err->message[0] ? err->message : "model not found",
                                                   "model", "model_not_found");
    if (r == -ESHUTDOWN) return lorad_api_reply_error(ret_reply, 503, "the server is stopping", NULL, "shutting_down");
    return handler_reply_failure(ret_reply, r, err, NULL);
}

/* Submits one engine stream per prompt. Returns 0, or the first failure (err set); the streams
 * already submitted stay in g, for generation_free to close. */
static int submit(struct lorad_infer *infer, struct generation *g, uint64_t seed, struct lorad_error *err) {
    for (int i = 0; i < g->p.n_prompts; i++) {
        struct lorad_infer_request rq = g->p.req;
        rq.base_path = g->model->base_path;
        rq.adapter_path = g->model->adapter_path[0] ? g->model->adapter_path : NULL;
        rq.tmpl = g->model->tmpl;
        if (g->p.kind == LORAD_API_INFER_COMPLETION) rq.prompt = g->p.prompts[i];
        /* choice i of the engine draws with seed + i: offsetting each prompt by its first index
         * gives every OpenAI index its own seed. */
        rq.sampling.seed = seed + (uint64_t)i * (uint64_t)rq.n;
        int r = lorad_infer_submit(infer, &rq, &g->streams[i], err);
        if (r < 0) return r;
        g->n_streams++;
        g->prompt_tokens += lorad_infer_prompt_tokens(g->streams[i]);
    }
    return 0;
}

/* The answer without stream: every event collected, then one object. Gives up (and frees the
 * slots) when the client hangs up or the server stops. Returns 0. */
static int reply_collected(const struct lorad_api_request *req, struct generation *g,
                           struct lorad_api_reply *ret_reply) {
    double last_check = now_ms();
    for (;;) {
        struct lorad_infer_event ev;
        struct lorad_error err = {0};
        int index = 0;
        int r = generation_next(g, COLLECT_POLL_MS, &ev, &index, &err);
        if (r == 2) break;
        if (r < 0) return reply_generation_failure(ret_reply, r, &err);
        if (r == 1 && collect_event(g, index, &ev) < 0) return handler_reply_oom(ret_reply);
        if (now_ms() - last_check >= COLLECT_POLL_MS) {
            last_check = now_ms();
            if (req->gone && req->gone(req))
                return lorad_api_reply_error(ret_reply, 503,
                                             "generation abandoned: the client hung up or the server is stopping", NULL,
                                             "shutting_down");
        }
    }
    return handler_reply_json(ret_reply, 200, collected_reply(g));
}

static int handle_inference(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply,
                            enum lorad_api_infer_kind kind) {
    struct lorad_app *app = handler_app(req);
    if (!app || !app->store) return handler_reply_not_ready(ret_reply);
    if (!app->infer)
        return lorad_api_reply_error(ret_reply, 503,
                                     "inference is disabled on this server (inference.enabled is no); fine-tuning "
                                     "routes work as usual",
                                     NULL, "inference_disabled");
    if (atomic_load(&app->stopping))
        return lorad_api_reply_error(ret_reply, 503, "lorad is shutting down and starts no new generations", NULL,
                                     "shutting_down");
    struct generation *g = calloc(1, sizeof *g);
    if (!g) return handler_reply_oom(ret_reply);
    struct lorad_error err = {0};
    int r = lorad_api_infer_parse(req->json_body, kind, &g->p, &err);
    if (r < 0) {
        free(g);
        if (r == -ENOMEM) return handler_reply_oom(ret_reply);
        return lorad_api_reply_error(ret_reply, 400, err.message, err.param[0] ? err.param : NULL,
                                     r == -EOPNOTSUPP ? "unsupported_parameter" : "invalid_value");
    }
    g->body = json_incref((json_t *)req->json_body);
    int n_choices = g->p.n_prompts * g->p.req.n;
    if (app->infer_max_generations > 0 && n_choices > app->infer_max_generations) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "this request needs %d sequences (prompts x n), more than this server runs at once (%d, "
                 "inference.max_concurrent_generations)",
                 n_choices, app->infer_max_generations);
        generation_free(g);
        return lorad_api_reply_error(ret_reply, 400, msg, "n", "invalid_value");
    }
    g->choices = calloc((size_t)n_choices, sizeof *g->choices);
    if (g->choices) g->n_choices = n_choices; /* only now: generation_free walks n_choices entries */
    g->model = malloc(sizeof *g->model);
    if (!g->choices || !g->model) {
        generation_free(g);
        return handler_reply_oom(ret_reply);
    }
    r = handler_model_resolve(app, g->p.model, g->model, &err);
    if (r < 0) {
        generation_free(g);
        if (r == -ENOENT) return lorad_api_reply_error(ret_reply, 404, err.message, "model", "model_not_found");
        return handler_reply_failure(ret_reply, r, &err, NULL);
    }
    if (lorad_store_new_id(kind == LORAD_API_INFER_CHAT ? "chatcmpl-" : "cmpl-", g->id) < 0) {
        generation_free(g);
        return lorad_api_reply_error(ret_reply, 500, "cannot make a completion id", NULL, "internal_error");
    }
    g->created = (json_int_t)time(NULL);
    r = submit(app->infer, g, g->p.has_seed ? g->p.req.sampling.seed : random_seed(), &err);
    if (r < 0) {
        generation_free(g); /* closes what was submitted: a refused request holds no slot */
        return reply_submit_failure(ret_reply, r, &err);
    }
    if (g->p.stream) {
        ret_reply->status = 200;
        ret_reply->content_type = "text/event-stream";
        ret_reply->stream_next = stream_next;
        ret_reply->stream_ctx = g;
        ret_reply->stream_free = generation_free;
        return 0;
    }
    r = reply_collected(req, g, ret_reply);
    generation_free(g);
    return r;
}

static int handle_completions(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    return handle_inference(req, ret_reply, LORAD_API_INFER_COMPLETION);
}

static int handle_chat_completions(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    return handle_inference(req, ret_reply, LORAD_API_INFER_CHAT);
}

int lorad_api_install_inference_routes(void) {
    int r = lorad_api_set_handler("POST", "/v1/completions", handle_completions);
    if (r == 0) r = lorad_api_set_handler("POST", "/v1/chat/completions", handle_chat_completions);
    return r;
}
