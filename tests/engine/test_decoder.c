/* The batched decoder (engine/infer/decoder.h): an item's logits are bit-identical whether it is
 * stepped alone or beside other sequences with other adapters, prompt chunks or decode tokens; an
 * adapter applied unmerged equals the merged base; the decoder agrees with the training model's
 * forward; bad items are refused with nothing cached. (Agreement with PyTorch is checked end to
 * end by tests/generate/generate_reference.py, through lorad generate, which runs this decoder.) */
#include "testutil.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_read.h"
#include "decoder.h"
#include "gradcheck.h"
#include "model.h"
#include "tiny_model.h"

#define V 97

static struct lorad_lora_config lora_all(void) {
    return (struct lorad_lora_config){.r = 3, .alpha = 6, .targets = LORAD_LORA_ALL_LINEAR | (1u << LORAD_LM_HEAD)};
}

/* A training model with random LoRA tensors: the source of adapters and of merged weights. With
 * dora, its magnitudes are 20% off their starting norms, so every DoRA scale differs from 1. */
static struct lorad_model *random_lora_model_of(const struct lorad_base_weights *w, uint64_t seed, int kv, bool dora) {
    struct lorad_lora_config lc = lora_all();
    lc.use_dora = dora;
    struct lorad_run_options o = {.threads = 1, .max_batch = 1, .max_seq = 16, .seed = 1, .kv_cache_len = kv};
    struct lorad_model *m = NULL;
    struct lorad_error err = {0};
    if (lorad_model_new(&m, w, &lc, &o, &err) < 0) fail_msg("model_new: %s", err.message);
    size_t n;
    float *p = lorad_model_params(m, &n);
    for (size_t i = 0; i < n; i++) p[i] = (float)(0.3 * tiny_normal(&seed));
    if (dora) tiny_perturb_dora_magnitudes(m, 0.2, &seed);
    return m;
}
static struct lorad_model *random_lora_model(const struct lorad_base_weights *w, uint64_t seed, int kv) {
    return random_lora_model_of(w, seed, kv, false);
}

/* m's LoRA tensors as an adapter (borrowing m's buffer; free with free_view). */
static struct lorad_adapter *adapter_view(struct lorad_model *m) {
    struct lorad_adapter *a = calloc(1, sizeof *a);
    int n = lorad_model_n_lora_tensors(m);
    a->path = "test-adapter";
    a->meta.r = 3;
    a->meta.alpha = 6;
    a->n_tensors = n;
    a->tensors = calloc((size_t)n, sizeof *a->tensors);
    float *p = lorad_model_params(m, NULL);
    for (int i = 0; i < n; i++) {
        const struct lorad_lora_tensor *t = lorad_model_lora_tensor(m, i);
        a->meta.use_dora = a->meta.use_dora || t->is_magnitude;
        snprintf(a->tensors[i].name, sizeof a->tensors[i].name, "%s", t->name);
        a->tensors[i].data = p + t->offset;
        a->tensors[i].rows = t->rows;
        a->tensors[i].cols = t->cols;
    }
    return a;
}
static void free_view(struct lorad_adapter *a) {
    free(a->tensors);
    free(a);
}

static struct lorad_lora_weights *lora_of(struct lorad_model *m, const struct lorad_base_weights *w) {
    struct lorad_adapter *a = adapter_view(m);
    struct lorad_lora_weights *lw = NULL;
    struct lorad_error err = {0};
    if (lorad_lora_weights_new(&lw, a, w, &err) < 0) fail_msg("lora_weights_new: %s", err.message);
    free_view(a);
    return lw;
}

static struct lorad_decoder *new_decoder_rows(const struct lorad_base_weights *w, int threads, int max_rows) {
    struct lorad_decoder_options o = {.threads = threads, .max_rows = max_rows, .max_seqs = 8, .max_pos = 48};
    struct lorad_decoder *d = NULL;
    struct lorad_error err = {0};
    if (lorad_decoder_new(&d, w, &o, &err) < 0) fail_msg("decoder_new: %s", err.message);
    return d;
}
static struct lorad_decoder *new_decoder(const struct lorad_base_weights *w, int threads) {
    return new_decoder_rows(w, threads, 64);
}

static struct lorad_kv_cache *new_cache(struct lorad_decoder *d, int cap) {
    struct lorad_kv_cache *c = NULL;
    struct lorad_error err = {0};
    if (lorad_kv_cache_new(&c, d, cap, &err) < 0) fail_msg("kv_cache_new: %s", err.message);
    return c;
}

static void step(struct lorad_decoder *d, struct lorad_decode_item *items, int n) {
    struct lorad_error err = {0};
    if (lorad_decoder_step(d, items, n, &err) < 0) fail_msg("step: %s", err.message);
}

/* Three sequences (two adapters and the base) of prompt lengths 7, 5, 6, then 4 decode tokens
 * each; logits of every prefill end and decode token go to out (3, 5, V). mode 0: each sequence
 * alone; 1: all together every step; 2: staggered, so prompts are processed beside other
 * sequences' decode tokens. */
static void run_three(const struct lorad_base_weights *w, struct lorad_lora_weights *l1, struct lorad_lora_weights *l2,
                      int threads, int mode, float *out) {
    static const int32_t toks[3][11] = {{5, 9, 3, 77, 12, 40, 1, 8, 90, 33, 2},
                                        {60, 61, 2, 13, 4, 7, 55, 23, 10, 0, 0},
                                        {1, 2, 3, 4, 5, 6, 70, 71, 72, 73, 0}};
    const int np[3] = {7, 5, 6};
    struct lorad_lora_weights *lw[3] = {l1, l2, NULL};
    struct lorad_decoder *d = new_decoder(w, threads);
    struct lorad_kv_cache *c[3];
    for (int s = 0; s < 3; s++) c[s] = new_cache(d, 16);
    int done[3] = {0, 0, 0}; /* stages done: 0 = nothing, 1 = prefilled, 1+k = k decode tokens */
    for (int round = 0; round < 20; round++) {
        struct lorad_decode_item items[3];
        int n = 0, who[3];
        for (int s = 0; s < 3; s++) {
            if (done[s] == 5) continue;
            if (mode == 0 && s > 0 && done[s - 1] < 5) continue;     /* strictly one after another */
            if (mode == 2 && s > 0 && done[s - 1] < 2) continue;     /* start once the previous decodes */
            int from = done[s] == 0 ? 0 : np[s] + done[s] - 1, len = done[s] == 0 ? np[s] : 1;
            items[n] = (struct lorad_decode_item){c[s], lw[s], toks[s] + from, len, out + ((size_t)s * 5 + (size_t)done[s]) * V};
            who[n++] = s;
        }
        if (n == 0) break;
        step(d, items, n);
        for (int i = 0; i < n; i++) done[who[i]]++;
    }
    for (int s = 0; s < 3; s++) {
        assert_int_equal(done[s], 5);
        assert_int_equal(lorad_kv_cache_len(c[s]), np[s] + 4);
        lorad_kv_cache_free(c[s]);
    }
    lorad_decoder_free(d);
}

/* dora: sequence 0's adapter is DoRA (its per-row scale beside a plain adapter's rows). */
static void check_batch_invariance(bool bf16, bool dora) {
    struct lorad_llama_config c = tiny_config();
    c.attention_bias = dora; /* DoRA's scale leaves the bias out */
    struct tiny_model tm;
    tiny_model_init(&tm, &c, 3, bf16, bf16);
    struct lorad_model *m1 = random_lora_model_of(&tm.w, 11, 0, dora), *m2 = random_lora_model(&tm.w, 12, 0);
    struct lorad_lora_weights *l1 = lora_of(m1, &tm.w), *l2 = lora_of(m2, &tm.w);
    size_t n = 3 * 5 * V;
    float *alone = malloc(n * sizeof(float)), *together = malloc(n * sizeof(float)), *stagger = malloc(n * sizeof(float));
    float *threads3 = malloc(n * sizeof(float));
    run_three(&tm.w, l1, l2, 2, 0, alone);
    run_three(&tm.w, l1, l2, 2, 1, together);
    run_three(&tm.w, l1, l2, 2, 2, stagger);
    run_three(&tm.w, l1, l2, 3, 1, threads3);
    assert_memory_equal(alone, together, n * sizeof(float));
    assert_memory_equal(alone, stagger, n * sizeof(float));
    assert_memory_equal(alone, threads3, n * sizeof(float));
    /* the adapters matter: sequence 0 with adapter 2 gives other logits */
    run_three(&tm.w, l2, l1, 2, 0, together);
    assert_true(memcmp(alone, together, 5 * V * sizeof(float)) != 0);
    free(alone), free(together), free(stagger), free(threads3);
    lorad_lora_weights_free(l1), lorad_lora_weights_free(l2);
    lorad_model_free(m1), lorad_model_free(m2);
    tiny_model_free(&tm);
}

static void test_batching_never_changes_an_answer(void **state) {
    (void)state;
    check_batch_invariance(false, false);
}

static void test_batching_never_changes_an_answer_bf16(void **state) {
    (void)state;
    check_batch_invariance(true, false);
}

static void test_batching_never_changes_a_dora_answer(void **state) {
    (void)state;
    check_batch_invariance(false, true);
}

/* Replaces each adapted matrix of tm by W + scale B A (what an export merges). */
static void merge_into(struct tiny_model *tm, const struct lorad_model *m) {
    const struct lorad_llama_config *c = &tm->w.cfg;
    struct lorad_error err = {0};
    for (int l = -1; l < c->n_layers; l++)
        for (int mod = 0; mod < LORAD_N_LORA_MODULES; mod++) {
            if ((l < 0) != (mod == LORAD_LM_HEAD)) continue;
            struct lorad_tensor *t;
            if (l < 0) {
                t = &tm->w.lm_head;
            } else {
                struct lorad_layer_weights *L = &tm->w.layers[l];
                struct lorad_tensor *all[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
                t = all[mod];
            }
            assert_int_equal(lorad_model_merged_weight(m, l, (enum lorad_lora_module)mod, (float *)t->data, &err), 0);
        }
}

static double max_abs(const float *a, int n) {
    double mx = 0;
    for (int i = 0; i < n; i++) mx = fmax(mx, fabs(a[i]));
    return mx;
}
static double max_diff(const float *a, const float *b, int n) {
    double md = 0;
    for (int i = 0; i < n; i++) md = fmax(md, fabs((double)a[i] - b[i]));
    return md;
}

/* Prompt of 9 then 3 single tokens, logits of the last; with or without an adapter. */
static void decode_12(const struct lorad_base_weights *w, struct lorad_lora_weights *lw, const int32_t *ids, float *out) {
    struct lorad_decoder *d = new_decoder(w, 2);
    struct lorad_kv_cache *c = new_cache(d, 12);
    struct lorad_decode_item it = {c, lw, ids, 9, NULL};
    step(d, &it, 1);
    for (int i = 9; i < 12; i++) {
        it = (struct lorad_decode_item){c, lw, ids + i, 1, out};
        step(d, &it, 1);
    }
    lorad_kv_cache_free(c);
    lorad_decoder_free(d);
}

/* An adapter unmerged gives the logits of its merge and of the training model's forward. With
 * dora, a DoRA adapter (each output scaled by m / ||W + s B A||) on a base with biases, which
 * DoRA's scale leaves out. */
static void check_unmerged_equals_merged(bool dora) {
    struct lorad_llama_config c = tiny_config();
    c.attention_bias = dora;
    struct tiny_model tm, merged;
    tiny_model_init(&tm, &c, 4, false, false);
    tiny_model_init(&merged, &c, 4, false, false);
    struct lorad_model *m = random_lora_model_of(&tm.w, 9, 12, dora);
    merge_into(&merged, m);
    struct lorad_lora_weights *lw = lora_of(m, &tm.w);
    int32_t ids[12] = {3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26};
    float la[V], lb[V], lbase[V], lref[V];
    decode_12(&tm.w, lw, ids, la);
    decode_12(&merged.w, NULL, ids, lb);
    decode_12(&tm.w, NULL, ids, lbase);
    /* two float32 computations of the same logits (the merge adds one rounding per weight) */
    double bound = 2 * gradcheck_model_bound(&c, 12, dora) * max_abs(lb, V);
    const char *what = dora ? "DoRA" : "LoRA";
    if (max_diff(la, lb, V) > bound)
        fail_msg("%s: adapted vs merged logits differ by %.3g > %.3g", what, max_diff(la, lb, V), bound);
    assert_true(max_diff(lbase, lb, V) > 1e-2 * max_abs(lb, V)); /* the adapter really changes the output */
    /* and the training model's forward (its own kernels) gives the same logits */
    struct lorad_error err = {0};
    assert_int_equal(lorad_model_infer(m, ids, 12, true, lref, &err), 0);
    if (max_diff(la, lref, V) > bound)
        fail_msg("%s: decoder vs model forward differ by %.3g > %.3g", what, max_diff(la, lref, V), bound);
    lorad_lora_weights_free(lw);
    lorad_model_free(m);
    tiny_model_free(&tm);
    tiny_model_free(&merged);
}

static void test_unmerged_adapter_equals_merged_base(void **state) {
    (void)state;
    check_unmerged_equals_merged(false);
}

static void test_unmerged_dora_equals_merged_base(void **state) {
    (void)state;
    check_unmerged_equals_merged(true);
}

static void test_bad_items_are_refused_with_nothing_cached(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    struct tiny_model tm;
    tiny_model_init(&tm, &c, 5, false, false);
    struct lorad_decoder *d = new_decoder_rows(&tm.w, 1, 6), *other = new_decoder(&tm.w, 1);
    struct lorad_kv_cache *a = new_cache(d, 4), *b = new_cache(d, 8), *foreign = new_cache(other, 8);
    int32_t ids[70] = {0};
    float logits[V];
    struct lorad_error err = {0};
    struct lorad_decode_item it[2] = {{a, NULL, ids, 2, logits}, {b, NULL, ids, 3, logits}};
    ids[1] = V; /* outside the vocabulary */
    assert_int_equal(lorad_decoder_step(d, it, 2, &err), -EINVAL);
    assert_string_equal(err.param, "tokens");
    ids[1] = 1;
    it[1].n = 5;
    it[0].n = 5; /* a holds 4 */
    assert_int_equal(lorad_decoder_step(d, it, 2, &err), -ENOSPC);
    it[0].n = 2;
    it[1].cache = a; /* shared */
    assert_int_equal(lorad_decoder_step(d, it, 2, &err), -EINVAL);
    it[1].cache = foreign;
    assert_int_equal(lorad_decoder_step(d, it, 2, &err), -EINVAL);
    it[1] = (struct lorad_decode_item){b, NULL, ids, 5, logits}; /* 2 + 5 rows: more than max_rows 6 */
    assert_int_equal(lorad_decoder_step(d, it, 2, &err), -EINVAL);
    assert_int_equal(lorad_kv_cache_len(a), 0);
    assert_int_equal(lorad_kv_cache_len(b), 0);
    struct lorad_kv_cache *big = NULL;
    assert_int_equal(lorad_kv_cache_new(&big, d, 49, &err), -EINVAL); /* past max_pos 48 */
    it[1].n = 3;
    assert_int_equal(lorad_decoder_step(d, it, 2, &err), 0);
    assert_int_equal(lorad_kv_cache_len(a), 2);
    assert_int_equal(lorad_kv_cache_len(b), 3);
    lorad_kv_cache_free(a), lorad_kv_cache_free(b), lorad_kv_cache_free(foreign);
    lorad_decoder_free(d), lorad_decoder_free(other);
    tiny_model_free(&tm);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batching_never_changes_an_answer),
        cmocka_unit_test(test_batching_never_changes_an_answer_bf16),
        cmocka_unit_test(test_unmerged_adapter_equals_merged_base),
        cmocka_unit_test(test_batching_never_changes_a_dora_answer),
        cmocka_unit_test(test_unmerged_dora_equals_merged_base),
        cmocka_unit_test(test_bad_items_are_refused_with_nothing_cached),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
