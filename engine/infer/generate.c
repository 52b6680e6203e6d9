/* One sequence through the decoder (decoder.h): the same code the inference service batches, so
 * `lorad generate` and the routes give the same tokens. */
#include "generate.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decoder.h"

struct lorad_generator {
    struct lorad_decoder *dec;
    struct lorad_lora_weights *lora; /* NULL: the base alone */
    struct lorad_kv_cache *cache;
    struct lorad_generator_options opt;
    int vocab;
    float *logits; /* (vocab) */
};

/* Contract: w is borrowed for the generator's life, ad only during the call. */
int lorad_generator_new(struct lorad_generator **ret, const struct lorad_base_weights *w,
                        const struct lorad_adapter *ad, const struct lorad_generator_options *opt,
                        struct lorad_error *err) {
    if (opt->max_total < 1 || opt->max_total > LORAD_MAX_SEQ_LEN)
        return lorad_error_set(err, -EINVAL, "max_tokens", "prompt and generated tokens must be 1 to %d, got %d",
                               LORAD_MAX_SEQ_LEN, opt->max_total);
    if (opt->max_chunk < 1 || opt->max_chunk > opt->max_total || (opt->no_kv_cache && opt->max_chunk != opt->max_total))
        return lorad_error_set(err, -EINVAL, "max_chunk", "a chunk of %d tokens does not fit a sequence of %d",
                               opt->max_chunk, opt->max_total);
    struct lorad_generator *g = calloc(1, sizeof *g);
    if (!g) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    g->opt = *opt;
    g->vocab = w->cfg.vocab_size;
    g->logits = malloc((size_t)g->vocab * sizeof *g->logits);
    struct lorad_decoder_options dopt = {.threads = opt->threads, .max_rows = opt->max_chunk, .max_seqs = 1,
                                         .max_pos = opt->max_total, .compute_dtype = LORAD_COMPUTE_FLOAT32};
    int rc = 0;
    if (!g->logits) rc = lorad_error_set(err, -ENOMEM, "", "out of memory");
    if (rc == 0) rc = lorad_decoder_new(&g->dec, w, &dopt, err);
    if (rc == 0 && ad) {
        rc = lorad_lora_weights_new(&g->lora, ad, w, err);
        if (rc < 0) snprintf(err->param, sizeof err->param, "%s", "adapter");
    }
    if (rc == 0) rc = lorad_kv_cache_new(&g->cache, g->dec, opt->max_total, err);
    if (rc < 0) {
        lorad_generator_free(g);
        return rc;
    }
    *ret = g;
    return 0;
}

void lorad_generator_free(struct lorad_generator *g) {
    if (!g) return;
    lorad_kv_cache_free(g->cache);
    lorad_lora_weights_free(g->lora);
    lorad_decoder_free(g->dec);
    free(g->logits);
    free(g);
}

static void add_stop(int32_t *ids, int *n, int32_t id, int vocab) {
    if (id < 0 || id >= vocab || *n == LORAD_GENERATE_MAX_STOP_IDS) return;
    for (int i = 0; i < *n; i++)
        if (ids[i] == id) return;
    ids[(*n)++] = id;
}

int lorad_generate_stop_ids(const struct lorad_llama_config *cfg, const struct lorad_tokenizer *tok,
                            int32_t ret[LORAD_GENERATE_MAX_STOP_IDS]) {
    int n = 0;
    add_stop(ret, &n, cfg->eos_id, cfg->vocab_size);
    if (tok) {
        add_stop(ret, &n, lorad_tokenizer_eos_id(tok), cfg->vocab_size);
        add_stop(ret, &n, lorad_tokenizer_special_id(tok, "<|eot_id|>"), cfg->vocab_size);
        add_stop(ret, &n, lorad_tokenizer_special_id(tok, "<|im_end|>"), cfg->vocab_size);
    }
    return n;
}

/* Runs seq[from, to) through the decoder in chunks its rows hold; the logits of the last token
 * land in g->logits. */
static int feed(struct lorad_generator *g, const int32_t *seq, int from, int to, struct lorad_error *err) {
    for (int i = from; i < to; i += g->opt.max_chunk) {
        int n = to - i < g->opt.max_chunk ? to - i : g->opt.max_chunk;
        struct lorad_decode_item it = {.cache = g->cache, .lora = g->lora, .tokens = seq + i, .n = n,
                                       .logits = i + n == to ? g->logits : NULL};
        int rc = lorad_decoder_step(g->dec, &it, 1, err);
        if (rc < 0) return rc;
    }
    return 0;
}

static bool is_stop(const struct lorad_generation *req, int32_t id) {
    for (int i = 0; i < req->n_stop; i++)
        if (req->stop[i] == id) return true;
    return false;
}

/* Contract: seq is the caller's; the cache is reset first, so calls are independent. */
int lorad_generate(struct lorad_generator *g, const struct lorad_generation *req, int32_t *seq, int n_prompt,
                   int *ret_n_generated, bool *ret_at_stop, struct lorad_error *err) {
    if (n_prompt < 1 || req->max_tokens < 1 || (int64_t)n_prompt + req->max_tokens > g->opt.max_total)
        return lorad_error_set(err, -EINVAL, "max_tokens", "the prompt (%d tokens) plus %d more exceed the %d the "
                               "generator holds", n_prompt, req->max_tokens, g->opt.max_total);
    for (int i = 0; i < n_prompt; i++)
        if (seq[i] < 0 || seq[i] >= g->vocab)
            return lorad_error_set(err, -EINVAL, "prompt", "id %d (position %d) is outside the vocabulary (%d)",
                                   (int)seq[i], i, g->vocab);
    struct lorad_sampler *s;
    int rc = lorad_sampler_new(&s, req->sampling, g->vocab, err);
    if (rc < 0) return rc;
    lorad_kv_cache_reset(g->cache);
    int n = n_prompt, n_gen = 0;
    bool at_stop = false;
    rc = feed(g, seq, 0, n, err);
    while (rc == 0) {
        for (int i = 0; i < g->vocab; i++)
            if (!isfinite(g->logits[i])) {
                rc = lorad_error_set(err, -ERANGE, "", "the logits at generated position %d are not finite (id %d)",
                                     n_gen, i);
                break;
            }
        if (rc < 0) break;
        int32_t id = lorad_sampler_pick(s, g->logits, n_gen);
        seq[n++] = id;
        n_gen++;
        at_stop = is_stop(req, id);
        if (req->on_token && (rc = req->on_token(req->ctx, seq, n, g->logits, at_stop)) < 0) break;
        if (at_stop || n_gen == req->max_tokens) break;
        if (g->opt.no_kv_cache) {
            lorad_kv_cache_reset(g->cache);
            rc = feed(g, seq, 0, n, err);
        } else {
            rc = feed(g, seq, n - 1, n, err);
        }
    }
    lorad_sampler_free(s);
    if (rc < 0) return rc;
    *ret_n_generated = n_gen;
    *ret_at_stop = at_stop;
    return 0;
}
