/* The whole model: gradients against finite differences, merge identity, BF16 vs F32 storage,
 * determinism and thread counts, packing, LoRA access by PEFT name, the optimiser schedule facts
 * of docs/reference-interchange.md, and bad input rejected before any allocation. */
#include "testutil.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "f64_llama.h"
#include "gradcheck.h"
#include "model.h"
#include "optim.h"
#include "tiny_model.h"

static uint64_t rng = 777;

/* Every PROBE_STRIDE-th entry of each LoRA tensor is probed by finite differences. The float64
 * reference is plain loops, 10x slower under ASan: there every second one of the same probes. */
#ifdef __SANITIZE_ADDRESS__
#define PROBE_STRIDE 14
#define DORA_PROBE_STRIDE 10
#else
#define PROBE_STRIDE 7
#define DORA_PROBE_STRIDE 5
#endif

static struct lorad_run_options opts(int threads, int B, int T) {
    struct lorad_run_options o = {.threads = threads, .max_batch = B, .max_seq = T, .seed = 42, .kv_cache_len = 0};
    return o;
}
static struct lorad_lora_config all_lora(float dropout) {
    struct lorad_lora_config l = {.r = 3, .alpha = 6, .dropout = dropout,
                                  .targets = LORAD_LORA_ALL_LINEAR | (1u << LORAD_LM_HEAD)};
    return l;
}
static struct lorad_model *new_model(const struct lorad_base_weights *w, struct lorad_lora_config lc,
                                     struct lorad_run_options o) {
    struct lorad_model *m = NULL;
    struct lorad_error err = {0};
    if (lorad_model_new(&m, w, &lc, &o, &err) < 0) fail_msg("model_new: %s", err.message);
    return m;
}
static void randomize_lora(struct lorad_model *m, double std, uint64_t seed) {
    size_t n;
    float *p = lorad_model_params(m, &n);
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) p[i] = (float)(std * tiny_normal(&s));
}
static void random_batch(int32_t *ids, int32_t *labels, int64_t n, int V) {
    for (int64_t i = 0; i < n; i++) {
        ids[i] = (int32_t)(tiny_rand(&rng) % (uint64_t)V);
        labels[i] = tiny_uniform(&rng) < 0.2 ? -100 : (int32_t)(tiny_rand(&rng) % (uint64_t)V);
    }
    labels[0] = 5;
}
static double eval_loss(struct lorad_model *m, const struct lorad_batch *b) {
    double loss;
    int64_t corr, tok;
    struct lorad_error err = {0};
    assert_int_equal(lorad_model_eval(m, b, &loss, &corr, &tok, &err), 0);
    return loss / (double)tok;
}

static void expect_gradients_pass(const struct gradcheck_report *rep, const char *what) {
    if (!(rep->worst < 1.0)) fail_msg("%s: gradient outside its float32 error bound (x%.3g): %s", what, rep->worst, rep->worst_what);
    print_message("%s: %d probes, worst at %.3g of the tolerance: %s\n", what, rep->probes, rep->worst, rep->worst_what);
    assert_true(rep->probes > 100);
    assert_true(rep->max_abs_grad > 1e-3); /* the probes saw real gradients */
}

/* Whole model on a tiny config (GQA, bias, llama3, tied): d loss / d LoRA param from
 * forward_backward against float64 central differences of the same loss (gradcheck.h; the
 * tolerance is the float32 error bound stated in f64_llama.c). The float32 loss itself must agree
 * with the float64 model's within the same kind of bound. */
static void test_whole_model_finite_differences(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    c.attention_bias = true;
    c.tie_embeddings = true;
    c.rope_scaling = (struct lorad_rope_scaling){LORAD_ROPE_LLAMA3, 8, 1, 4, 64};
    struct tiny_model tm;
    tiny_model_init(&tm, &c, 3, false, false);
    struct lorad_lora_config lc = all_lora(0);
    struct lorad_run_options o = opts(2, 2, 9);
    struct lorad_model *m = new_model(&tm.w, lc, o);
    randomize_lora(m, 0.2, 5);
    int32_t ids[18], labels[18];
    random_batch(ids, labels, 18, c.vocab_size);
    struct lorad_batch b = {.tokens = ids, .labels = labels, .B = 2, .T = 9};
    double ls;
    int64_t corr;
    struct lorad_error err = {0};
    int64_t denom = lorad_count_labels(labels, 18);
    assert_int_equal(lorad_model_forward_backward(m, &b, denom, &ls, &corr, &err), 0);
    struct f64_llama f;
    assert_int_equal(f64_llama_init(&f, m, &tm.w, &lc, o.seed), 0);
    double ref = f64_llama_loss_sum(&f, &b) / (double)denom;
    f64_llama_free(&f);
    double loss_bound = gradcheck_model_bound(&c, 18, false) * fabs(ref);
    if (!(fabs(ls / denom - ref) <= loss_bound))
        fail_msg("loss %.9g, float64 reference %.9g, bound %.3g", ls / denom, ref, loss_bound);
    assert_true(fabs(eval_loss(m, &b) - ref) <= loss_bound);
    struct gradcheck_report rep;
    assert_int_equal(gradcheck_model(&rep, m, &tm.w, &lc, o.seed, 0, &b, denom, PROBE_STRIDE), 0);
    expect_gradients_pass(&rep, "whole model");
    lorad_model_free(m);
    tiny_model_free(&tm);
}

/* With dropout the training loss is a function of the parameters for a fixed dropout counter:
 * the float64 model draws the same masks (docs/engine.md: seed, counter, layer, module, element),
 * so the gradient forward_backward leaves at that counter is checked the same way (masks on the
 * inputs of every adapted module, incl. lm_head). */
static void test_dropout_gradients_finite_differences(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    struct tiny_model tm;
    tiny_model_init(&tm, &c, 13, false, false);
    struct lorad_lora_config lc = all_lora(0.3f);
    struct lorad_run_options o = opts(2, 1, 11);
    struct lorad_model *m = new_model(&tm.w, lc, o);
    randomize_lora(m, 0.2, 6);
    int32_t ids[11], labels[11];
    random_batch(ids, labels, 11, c.vocab_size);
    struct lorad_batch b = {.tokens = ids, .labels = labels, .B = 1, .T = 11};
    int64_t denom = lorad_count_labels(labels, 11), corr;
    struct lorad_error err = {0};
    double ls, base_loss = eval_loss(m, &b);
    lorad_model_set_dropout_counter(m, 7);
    assert_int_equal(lorad_model_forward_backward(m, &b, denom, &ls, &corr, &err), 0);
    assert_true(lorad_model_dropout_counter(m) == 8);
    assert_true(fabs(ls / denom - base_loss) > 1e-4); /* dropout changed the loss */
    struct gradcheck_report rep;
    assert_int_equal(gradcheck_model(&rep, m, &tm.w, &lc, o.seed, 7, &b, denom, PROBE_STRIDE), 0);
    expect_gradients_pass(&rep, "with dropout");
    /* and the float64 model with these masks is the loss the engine trained on */
    struct f64_llama f;
    assert_int_equal(f64_llama_init(&f, m, &tm.w, &lc, o.seed), 0);
    f.counter = 7;
    double ref = f64_llama_loss_sum(&f, &b) / (double)denom;
    f64_llama_free(&f);
    assert_true(fabs(ls / denom - ref) <= gradcheck_model_bound(&c, 11, false) * fabs(ref));
    lorad_model_free(m);
    tiny_model_free(&tm);
}

/* Replaces every adapted matrix of tm by the model's merged W + s B A. */
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

static void test_merge_identity(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config(); /* untied: lm_head adapted on its own */
    struct tiny_model tm, merged;
    tiny_model_init(&tm, &c, 4, false, false);
    tiny_model_init(&merged, &c, 4, false, false);
    struct lorad_run_options o = opts(2, 1, 12);
    o.kv_cache_len = 12;
    struct lorad_model *m = new_model(&tm.w, all_lora(0), o);
    randomize_lora(m, 0.3, 9);
    merge_into(&merged, m);
    struct lorad_model *mm = new_model(&merged.w, all_lora(0), o);
    int32_t ids[12], labels[12];
    random_batch(ids, labels, 12, c.vocab_size);
    /* inference logits, adapter on the base vs no adapter on the merged base */
    float la[97], lb[97], lbase[97];
    struct lorad_error err = {0};
    assert_int_equal(lorad_model_infer(m, ids, 7, true, la, &err), 0);
    assert_int_equal(lorad_model_infer(m, ids + 7, 5, true, la, &err), 0); /* incremental */
    assert_int_equal(lorad_model_infer(mm, ids, 12, false, lb, &err), 0);
    lorad_model_reset_cache(m);
    assert_int_equal(lorad_model_infer(m, ids, 12, false, lbase, &err), 0);
    double mx = 0, md = 0, mdb = 0;
    for (int i = 0; i < 97; i++) {
        mx = fmax(mx, fabs(lb[i]));
        md = fmax(md, fabs(la[i] - lb[i]));
        mdb = fmax(mdb, fabs(lbase[i] - lb[i]));
    }
    /* two float32 computations of the same logits (the merge adds one rounding per weight) */
    double two_runs = 2 * gradcheck_model_bound(&c, 12, false);
    if (md > two_runs * mx) fail_msg("adapted vs merged logits differ by %.3g (max %.3g)", md, mx);
    assert_true(mdb > 1e-2 * mx); /* the adapter really changes the output */
    /* the training forward agrees too */
    struct lorad_batch b = {.tokens = ids, .labels = labels, .B = 1, .T = 12};
    double l1 = eval_loss(m, &b);
    /* mm with B = 0 adapters equals its base */
    size_t n;
    float *mp = lorad_model_params(mm, &n);
    memset(mp, 0, n * sizeof(float));
    double l2 = eval_loss(mm, &b);
    assert_true(fabs(l1 - l2) <= two_runs * fabs(l2));
    lorad_model_free(m);
    lorad_model_free(mm);
    tiny_model_free(&tm);
    tiny_model_free(&merged);
}

/* KV-cache inference agrees with the full forward: the loss of the last token from infer logits. */
static void test_infer_matches_training_forward(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    struct tiny_model tm;
    tiny_model_init(&tm, &c, 6, false, false);
    struct lorad_run_options o = opts(1, 1, 10);
    o.kv_cache_len = 10;
    struct lorad_model *m = new_model(&tm.w, all_lora(0), o);
    randomize_lora(m, 0.3, 2);
    int32_t ids[10], labels[10];
    random_batch(ids, labels, 10, c.vocab_size);
    for (int i = 0; i < 9; i++) labels[i] = -100;
    labels[9] = 11;
    float logits[97];
    struct lorad_error err = {0};
    for (int i = 0; i < 10; i++) assert_int_equal(lorad_model_infer(m, ids + i, 1, true, logits, &err), 0);
    assert_int_equal(lorad_model_infer(m, ids, 1, true, logits, &err), -ENOSPC);
    double mx = -INFINITY, s = 0;
    for (int i = 0; i < 97; i++) mx = fmax(mx, logits[i]);
    for (int i = 0; i < 97; i++) s += exp(logits[i] - mx);
    double ce = mx + log(s) - logits[11];
    struct lorad_batch b = {.tokens = ids, .labels = labels, .B = 1, .T = 10};
    assert_true(fabs(ce - eval_loss(m, &b)) <= 2 * gradcheck_model_bound(&c, 10, false) * fabs(ce));
    lorad_model_free(m);
    tiny_model_free(&tm);
}

static void grads_of(float *out, const struct lorad_base_weights *w, struct lorad_lora_config lc,
                     struct lorad_run_options o, int32_t *ids, int32_t *labels, int B, int T,
                     double *ret_loss) {
    struct lorad_model *m = new_model(w, lc, o);
    randomize_lora(m, 0.2, 77);
    struct lorad_batch b = {.tokens = ids, .labels = labels, .B = B, .T = T};
    double ls;
    int64_t corr;
    struct lorad_error err = {0};
    int64_t denom = lorad_count_labels(labels, (int64_t)B * T);
    assert_int_equal(lorad_model_forward_backward(m, &b, denom, &ls, &corr, &err), 0);
    size_t n;
    const float *g = lorad_model_grads(m, &n);
    memcpy(out, g, n * sizeof(float));
    *ret_loss = ls;
    lorad_model_free(m);
}

static size_t n_params_of(const struct lorad_base_weights *w, struct lorad_lora_config lc) {
    int nt;
    size_t n;
    lorad_lora_layout_size(&w->cfg, &lc, &nt, &n);
    return n;
}

static double rel_diff(const float *a, const float *b, size_t n) {
    double mx = 0, md = 0;
    for (size_t i = 0; i < n; i++) {
        mx = fmax(mx, fabs(b[i]));
        md = fmax(md, fabs((double)a[i] - b[i]));
    }
    return md / mx;
}

static void test_bf16_storage_and_determinism(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    c.dim = 64; c.hidden_dim = 300; c.vocab_size = 1500; /* bigger than one BF16 tile in places */
    c.n_heads = 4; c.n_kv_heads = 2; c.head_dim = 16;
    struct tiny_model f32m, bf16m;
    tiny_model_init(&f32m, &c, 8, true, false);
    tiny_model_init(&bf16m, &c, 8, true, true);
    int B = 2, T = 40;
    int32_t ids[80], labels[80];
    random_batch(ids, labels, 80, c.vocab_size);
    struct lorad_lora_config lc = all_lora(0.1f); /* dropout on: masks must be deterministic too */
    size_t n = n_params_of(&f32m.w, lc);
    float *g1 = malloc(n * 4), *g2 = malloc(n * 4), *g3 = malloc(n * 4), *g4 = malloc(n * 4);
    double l1, l2, l3, l4;
    grads_of(g1, &f32m.w, lc, opts(2, B, T), ids, labels, B, T, &l1);
    grads_of(g2, &f32m.w, lc, opts(2, B, T), ids, labels, B, T, &l2);
    assert_memory_equal(g1, g2, n * 4); /* same seed + threads: bit-identical */
    assert_true(l1 == l2);
    grads_of(g3, &bf16m.w, lc, opts(2, B, T), ids, labels, B, T, &l3);
    /* the same values stored two ways take different kernel paths: two float32 runs */
    double two_runs = 2 * gradcheck_model_bound(&c, (int64_t)B * T, false);
    if (rel_diff(g3, g1, n) > two_runs || fabs(l3 - l1) > two_runs * fabs(l1))
        fail_msg("bf16 vs f32 storage: grads rel %.3g, loss %.9g vs %.9g", rel_diff(g3, g1, n), l3, l1);
    grads_of(g4, &f32m.w, lc, opts(1, B, T), ids, labels, B, T, &l4);
    if (rel_diff(g4, g1, n) > two_runs) fail_msg("1 vs 2 threads: grads rel %.3g", rel_diff(g4, g1, n));
    /* activation checkpointing recomputes the same numbers */
    struct lorad_run_options ck = opts(2, B, T);
    ck.activation_checkpointing = true;
    grads_of(g4, &f32m.w, lc, ck, ids, labels, B, T, &l4);
    assert_memory_equal(g4, g1, n * 4);
    free(g1); free(g2); free(g3); free(g4);
    tiny_model_free(&f32m);
    tiny_model_free(&bf16m);
}

/* Two samples packed in one row (positions restart, attention stops at the boundary) give the
 * same loss and gradients as the two samples in separate rows. */
static void test_packing_equals_separate_rows(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    struct tiny_model tm;
    tiny_model_init(&tm, &c, 10, false, false);
    int32_t a_ids[12], a_lab[12];
    random_batch(a_ids, a_lab, 12, c.vocab_size);
    /* separate: row 0 = 5 tokens padded with labels -100 ; row 1 = 7 tokens */
    int32_t sep_ids[14] = {0}, sep_lab[14], pk_ids[12], pk_lab[12], pos[12], seg[12];
    for (int i = 0; i < 14; i++) sep_lab[i] = -100;
    for (int i = 0; i < 5; i++) { sep_ids[i] = a_ids[i]; sep_lab[i] = a_lab[i]; }
    for (int i = 0; i < 7; i++) { sep_ids[7 + i] = a_ids[5 + i]; sep_lab[7 + i] = a_lab[5 + i]; }
    for (int i = 0; i < 12; i++) {
        pk_ids[i] = a_ids[i];
        pk_lab[i] = a_lab[i];
        pos[i] = i < 5 ? i : i - 5;
        seg[i] = i < 5 ? 0 : 5;
    }
    struct lorad_lora_config lc = all_lora(0);
    size_t n = n_params_of(&tm.w, lc);
    float *g1 = malloc(n * 4), *g2 = malloc(n * 4);
    double l1, l2;
    grads_of(g1, &tm.w, lc, opts(2, 2, 7), sep_ids, sep_lab, 2, 7, &l1);
    struct lorad_model *m = new_model(&tm.w, lc, opts(2, 1, 12));
    randomize_lora(m, 0.2, 77);
    struct lorad_batch b = {.tokens = pk_ids, .labels = pk_lab, .positions = pos, .seg_start = seg, .B = 1, .T = 12};
    int64_t corr;
    struct lorad_error err = {0};
    assert_int_equal(lorad_model_forward_backward(m, &b, lorad_count_labels(pk_lab, 12), &l2, &corr, &err), 0);
    memcpy(g2, lorad_model_grads(m, NULL), n * 4);
    double two_runs = 2 * gradcheck_model_bound(&c, 14, false);
    assert_true(fabs(l1 - l2) <= two_runs * fabs(l1));
    if (rel_diff(g2, g1, n) > two_runs) fail_msg("packed vs separate grads rel %.3g", rel_diff(g2, g1, n));
    /* and the packed gradients are those of the float64 model with positions and seg_start */
    struct gradcheck_report rep;
    assert_int_equal(gradcheck_model(&rep, m, &tm.w, &lc, 42, 0, &b, lorad_count_labels(pk_lab, 12), PROBE_STRIDE), 0);
    expect_gradients_pass(&rep, "packed");
    /* without seg_start the second sample would see the first: the loss changes */
    struct lorad_batch nb = {.tokens = pk_ids, .labels = pk_lab, .positions = pos, .B = 1, .T = 12};
    assert_true(fabs(eval_loss(m, &nb) * lorad_count_labels(pk_lab, 12) - l2) > 1e-4);
    lorad_model_free(m);
    free(g1); free(g2);
    tiny_model_free(&tm);
}

static void test_lora_names_init_and_set(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    struct tiny_model tm;
    tiny_model_init(&tm, &c, 11, false, false);
    struct lorad_lora_config lc = {.r = 4, .alpha = 8, .targets = (1u << LORAD_Q_PROJ) | (1u << LORAD_DOWN_PROJ) | (1u << LORAD_LM_HEAD)};
    struct lorad_model *m = new_model(&tm.w, lc, opts(1, 1, 4));
    assert_int_equal(lorad_model_n_lora_tensors(m), 2 * (2 * 2 + 1));
    int i = lorad_model_find_lora(m, "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight");
    assert_true(i >= 0);
    const struct lorad_lora_tensor *t = lorad_model_lora_tensor(m, i);
    assert_int_equal(t->rows, 4);
    assert_int_equal(t->cols, 36);
    t = lorad_model_lora_tensor(m, lorad_model_find_lora(m, "model.layers.0.mlp.down_proj.lora_B.weight"));
    assert_int_equal(t->rows, 36);
    assert_int_equal(t->cols, 4);
    assert_true(lorad_model_find_lora(m, "lm_head.lora_A.weight") >= 0);
    assert_int_equal(lorad_model_find_lora(m, "model.layers.0.self_attn.k_proj.lora_A.weight"), -ENOENT);
    /* PEFT kaiming init: A within +-1/sqrt(in), not constant; B zero */
    size_t n;
    float *p = lorad_model_params(m, &n);
    t = lorad_model_lora_tensor(m, i);
    double bound = 1.0 / sqrt(36.0), mx = 0;
    for (int64_t k = 0; k < t->rows * t->cols; k++) {
        assert_true(fabs(p[t->offset + k]) <= bound);
        mx = fmax(mx, fabs(p[t->offset + k]));
    }
    assert_true(mx > 0.5 * bound);
    const struct lorad_lora_tensor *tb = lorad_model_lora_tensor(m, i + 1);
    for (int64_t k = 0; k < tb->rows * tb->cols; k++) assert_true(p[tb->offset + k] == 0.0f);
    assert_true(fabsf(lorad_model_lora_scale(m) - 2.0f) < 1e-7f);
    /* set by name with shape check */
    float data[36 * 4];
    for (int k = 0; k < 144; k++) data[k] = (float)k;
    struct lorad_error err = {0};
    assert_int_equal(lorad_model_set_lora_tensor(m, "model.layers.0.mlp.down_proj.lora_B.weight", data, 4, 36, &err), -EINVAL);
    assert_non_null(strstr(err.message, "[36, 4]"));
    assert_int_equal(lorad_model_set_lora_tensor(m, "model.layers.0.mlp.down_proj.lora_B.weight", data, 36, 4, &err), 0);
    t = lorad_model_lora_tensor(m, lorad_model_find_lora(m, "model.layers.0.mlp.down_proj.lora_B.weight"));
    assert_memory_equal(p + t->offset, data, sizeof data);
    assert_int_equal(lorad_model_set_lora_tensor(m, "model.layers.9.mlp.down_proj.lora_B.weight", data, 36, 4, &err), -ENOENT);
    lorad_model_free(m);
    /* rslora scale and gaussian init */
    lc.use_rslora = true;
    lc.init = LORAD_LORA_INIT_GAUSSIAN;
    m = new_model(&tm.w, lc, opts(1, 1, 4));
    assert_true(fabsf(lorad_model_lora_scale(m) - 4.0f) < 1e-6f);
    p = lorad_model_params(m, &n);
    t = lorad_model_lora_tensor(m, 0);
    double ss = 0;
    for (int64_t k = 0; k < t->rows * t->cols; k++) ss += (double)p[t->offset + k] * p[t->offset + k];
    double sd = sqrt(ss / (double)(t->rows * t->cols));
    assert_true(sd > 0.25 * 0.75 && sd < 0.25 * 1.25); /* std 1/r = 0.25 */
    lorad_model_free(m);
    tiny_model_free(&tm);
}

static int double_grads(float *grads, size_t n, void *user) {
    for (size_t i = 0; i < n; i++) grads[i] *= 2.0f;
    ++*(int *)user;
    return 0;
}
static int failing_reduce(float *grads, size_t n, void *user) {
    (void)grads; (void)n; (void)user;
    return -EIO;
}

static void test_schedules_and_adamw(void **state) {
    (void)state;
    struct lorad_optim_config c;
    lorad_optim_config_defaults(&c);
    c.lr = 0.5; c.warmup_steps = 4; c.total_steps = 10; c.schedule = LORAD_LR_COSINE;
    assert_true(fabs(lorad_lr_at(&c, 0) - 0.125) < 1e-15);
    assert_true(fabs(lorad_lr_at(&c, 3) - 0.5) < 1e-15);
    assert_true(fabs(lorad_lr_at(&c, 4) - 0.5) < 1e-15);
    assert_true(fabs(lorad_lr_at(&c, 7) - 0.25) < 1e-12); /* progress 3/6: cos(pi/2) = 0 */
    c.schedule = LORAD_LR_LINEAR;
    assert_true(fabs(lorad_lr_at(&c, 7) - 0.25) < 1e-12);
    assert_true(fabs(lorad_lr_at(&c, 10) - 0.0) < 1e-12);
    c.schedule = LORAD_LR_CONSTANT;
    assert_true(lorad_lr_at(&c, 9) == 0.5);
    /* one AdamW step from zero moments moves each parameter by about lr (sign of the grad),
     * after decoupled decay; clipping reports the unclipped norm */
    struct lorad_adamw a;
    assert_int_equal(lorad_adamw_init(&a, 2), 0);
    float p[2] = {1.0f, -2.0f}, g[2] = {3.0f, -4.0f};
    c.warmup_steps = 0; c.weight_decay = 0.1; c.max_grad_norm = 1.0; c.lr = 0.01;
    double norm, lr;
    assert_int_equal(lorad_adamw_step(&a, &c, p, g, NULL, NULL, &norm, &lr), 0);
    assert_true(fabs(norm - 5.0) < 1e-12);
    assert_true(fabs(p[0] - (1.0 * (1 - 0.001) - 0.01)) < 1e-6);
    assert_true(fabs(p[1] - (-2.0 * (1 - 0.001) + 0.01)) < 1e-6);
    assert_true(g[0] == 0 && g[1] == 0 && a.step == 1);
    /* the reduce hook sees the summed grads before the norm; a failing hook changes nothing */
    int calls = 0;
    g[0] = 3.0f; g[1] = 4.0f;
    assert_int_equal(lorad_adamw_step(&a, &c, p, g, double_grads, &calls, &norm, &lr), 0);
    assert_int_equal(calls, 1);
    assert_true(fabs(norm - 10.0) < 1e-12);
    float p_before[2] = {p[0], p[1]};
    g[0] = 1.0f;
    assert_int_equal(lorad_adamw_step(&a, &c, p, g, failing_reduce, NULL, &norm, &lr), -EIO);
    assert_true(p[0] == p_before[0] && p[1] == p_before[1] && a.step == 2);
    lorad_adamw_destroy(&a);
}

static void expect_bad(const struct lorad_base_weights *w, struct lorad_lora_config lc, struct lorad_run_options o,
                       int code, const char *param) {
    struct lorad_model *m = NULL;
    struct lorad_error err = {0};
    int r = lorad_model_new(&m, w, &lc, &o, &err);
    if (r != code) fail_msg("expected %d for %s, got %d (%s)", code, param, r, err.message);
    assert_null(m);
    assert_string_equal(err.param, param);
    assert_non_null(strstr(err.message, param));
}

static void test_bad_input_is_named(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    struct tiny_model tm;
    tiny_model_init(&tm, &c, 12, false, false);
    struct lorad_lora_config lc = all_lora(0);
    struct lorad_run_options o = opts(1, 1, 8);
    struct lorad_lora_config bad = lc;
    bad.r = 0; expect_bad(&tm.w, bad, o, -EINVAL, "lora.r");
    bad = lc; bad.dropout = 1.0f; expect_bad(&tm.w, bad, o, -EINVAL, "lora.dropout");
    bad = lc; bad.alpha = NAN; expect_bad(&tm.w, bad, o, -EINVAL, "lora.alpha");
    bad = lc; bad.targets = 0; expect_bad(&tm.w, bad, o, -EINVAL, "lora.target_modules");
    struct lorad_run_options bo = o;
    bo.threads = 0; expect_bad(&tm.w, lc, bo, -EINVAL, "threads");
    bo = o; bo.max_batch = -1; expect_bad(&tm.w, lc, bo, -EINVAL, "max_batch");
    bo = o; bo.max_seq = 0; expect_bad(&tm.w, lc, bo, -EINVAL, "max_seq");
    bo = o; bo.memory_limit_bytes = 100000; expect_bad(&tm.w, lc, bo, -E2BIG, "memory_limit_bytes");
    bo = o; bo.max_batch = 1 << 20; bo.max_seq = 1 << 20; expect_bad(&tm.w, lc, bo, -EINVAL, "max_batch");
    /* a model far beyond the machine: refused by the limit before anything is allocated */
    bo = o; bo.max_batch = 4096; bo.max_seq = 4096; bo.memory_limit_bytes = (int64_t)1 << 34;
    expect_bad(&tm.w, lc, bo, -E2BIG, "memory_limit_bytes");
    struct tiny_model broken;
    tiny_model_init(&broken, &c, 12, false, false);
    broken.w.cfg.n_kv_heads = 3;
    expect_bad(&broken.w, lc, o, -EINVAL, "num_key_value_heads");
    broken.w.cfg = c;
    broken.w.layers[1].w_up.rows = 51;
    expect_bad(&broken.w, lc, o, -EINVAL, "model.layers.1.mlp.up_proj.weight");
    tiny_model_free(&broken);

    uint32_t targets;
    struct lorad_error err = {0};
    const char *names[] = {"q_proj", "qkv_proj"};
    assert_int_equal(lorad_lora_parse_targets(&targets, names, 2, &err), -EINVAL);
    assert_string_equal(err.param, "lora.target_modules");
    assert_non_null(strstr(err.message, "qkv_proj"));
    const char *ok[] = {"all-linear", "lm_head"};
    assert_int_equal(lorad_lora_parse_targets(&targets, ok, 2, &err), 0);
    assert_int_equal(targets, 0xffu);

    /* bad batches are refused with the field named */
    struct lorad_model *m = new_model(&tm.w, lc, o);
    int32_t ids[8] = {1, 2, 3, 4, 5, 6, 7, 8}, labels[8] = {1, 2, 3, 4, 5, 6, 7, -100}, seg[8] = {0, 0, 0, 0, 5, 0, 0, 0};
    double ls;
    int64_t corr;
    struct lorad_batch b = {.tokens = ids, .labels = labels, .B = 1, .T = 8};
    ids[3] = 97;
    assert_int_equal(lorad_model_forward_backward(m, &b, 7, &ls, &corr, &err), -EINVAL);
    assert_string_equal(err.param, "input_ids");
    ids[3] = 4; labels[2] = -1;
    assert_int_equal(lorad_model_forward_backward(m, &b, 7, &ls, &corr, &err), -EINVAL);
    assert_string_equal(err.param, "labels");
    labels[2] = 3;
    b.seg_start = seg;
    assert_int_equal(lorad_model_forward_backward(m, &b, 7, &ls, &corr, &err), -EINVAL);
    assert_string_equal(err.param, "seg_start");
    b.seg_start = NULL;
    assert_int_equal(lorad_model_forward_backward(m, &b, 0, &ls, &corr, &err), -EINVAL);
    assert_string_equal(err.param, "denominator");
    b.T = 9;
    assert_int_equal(lorad_model_forward_backward(m, &b, 7, &ls, &corr, &err), -EINVAL);
    assert_string_equal(err.param, "seq_len");
    float logits[97];
    assert_int_equal(lorad_model_infer(m, ids, 1, true, logits, &err), -EINVAL); /* no cache */
    lorad_model_free(m);
    tiny_model_free(&tm);
}

/* ---- per-row weights (the entry point DPO trains through) ---- */

struct fixed_weights {
    const double *w;   /* (B) */
    double seen[8];    /* the row losses the callback was given */
    int calls;
};
static int fixed_weights_fn(void *ctx, const double *row_loss, int B, double *ret_weights) {
    struct fixed_weights *c = ctx;
    assert_true(B <= 8);
    for (int i = 0; i < B; i++) {
        c->seen[i] = row_loss[i];
        ret_weights[i] = c->w[i];
    }
    c->calls++;
    return 0;
}

/* Row r of b alone, keyed as row r of the whole batch (row0), so it draws the same masks. */
static struct lorad_batch row_view(const struct lorad_batch *b, int r) {
    return (struct lorad_batch){.tokens = b->tokens + (size_t)r * b->T, .labels = b->labels + (size_t)r * b->T,
                                .B = 1, .T = b->T, .row0 = b->row0 + r};
}

struct weighted_ce {
    const struct lorad_batch *b;
    const double *w;
};
/* sum over rows of w_r * (row r's CE sum), in float64 with the same masks */
static double weighted_ce_of(void *ctx, const struct f64_llama *f) {
    const struct weighted_ce *c = ctx;
    double total = 0;
    for (int r = 0; r < c->b->B; r++) {
        struct lorad_batch v = row_view(c->b, r);
        total += c->w[r] * f64_llama_loss_sum(f, &v);
    }
    return total;
}

/* forward_backward_rows with dropout on several rows: the losses handed to the weights come
 * from the masks the backward uses (the float64 model with those masks, row by row), and the
 * gradient is that of sum_r w_r CE_r, weights of both signs, against float64 central differences
 * (with activation checkpointing too, whose recompute must draw the same masks again). */
static void test_row_weights_finite_differences(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    c.attention_bias = true;
    struct tiny_model tm;
    tiny_model_init(&tm, &c, 17, false, false);
    struct lorad_lora_config lc = all_lora(0.3f);
    enum { B = 3, T = 7 };
    int32_t ids[B * T], labels[B * T];
    random_batch(ids, labels, B * T, c.vocab_size);
    labels[T] = 3;
    labels[2 * T] = 4; /* every row has a label */
    const double w[B] = {0.7, -0.45, 1.3};
    for (int ckpt = 0; ckpt <= 1; ckpt++) {
        struct lorad_run_options o = opts(2, B, T);
        o.activation_checkpointing = ckpt;
        struct lorad_model *m = new_model(&tm.w, lc, o);
        randomize_lora(m, 0.2, 8);
        struct lorad_batch b = {.tokens = ids, .labels = labels, .B = B, .T = T, .row0 = 2};
        struct fixed_weights fw = {.w = w};
        double row_loss[B];
        int64_t row_correct[B];
        struct lorad_error err = {0};
        lorad_model_set_dropout_counter(m, 5);
        assert_int_equal(lorad_model_forward_backward_rows(m, &b, fixed_weights_fn, &fw, row_loss, row_correct, &err), 0);
        assert_int_equal(fw.calls, 1);
        assert_true(lorad_model_dropout_counter(m) == 6);
        struct f64_llama f;
        assert_int_equal(f64_llama_init(&f, m, &tm.w, &lc, o.seed), 0);
        f.counter = 5;
        for (int r = 0; r < B; r++) {
            struct lorad_batch v = row_view(&b, r);
            double ref = f64_llama_loss_sum(&f, &v), bound = gradcheck_model_bound(&c, B * T, false) * fabs(ref);
            assert_true(row_loss[r] == fw.seen[r]);
            if (!(fabs(row_loss[r] - ref) <= bound))
                fail_msg("row %d: CE sum %.9g, float64 with the same masks %.9g, bound %.3g", r, row_loss[r], ref, bound);
            assert_true(row_correct[r] >= 0 && row_correct[r] <= T);
        }
        f64_llama_free(&f);
        struct weighted_ce wc = {&b, w};
        struct gradcheck_report rep;
        assert_int_equal(gradcheck_model_loss(&rep, m, &tm.w, &lc, o.seed, 5, weighted_ce_of, &wc, B * T, PROBE_STRIDE), 0);
        expect_gradients_pass(&rep, ckpt ? "row weights, dropout, checkpointing" : "row weights, dropout");
        lorad_model_free(m);
    }
    tiny_model_free(&tm);
}

static int uniform_weights_fn(void *ctx, const double *row_loss, int B, double *ret_weights) {
    (void)row_loss;
    for (int i = 0; i < B; i++) ret_weights[i] = *(const double *)ctx;
    return 0;
}
static int failing_weights_fn(void *ctx, const double *row_loss, int B, double *ret_weights) {
    (void)ctx, (void)row_loss, (void)B, (void)ret_weights;
    return -EDOM;
}

/* With every weight 1/denominator the per-row entry point is forward_backward: the same losses
 * and, at the same dropout counter, the same gradient up to summation order; a failing callback
 * fails the call and leaves the counter moving on. And eval_rows: with the adapter on, the
 * float64 model's per-row CE sums; with it off, those of the base model (LoRA all zero). */
static void test_rows_match_forward_backward_and_eval(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    struct tiny_model tm;
    tiny_model_init(&tm, &c, 19, false, false);
    struct lorad_lora_config lc = all_lora(0.2f);
    enum { B = 2, T = 150 }; /* more than one LM-head chunk, with a row boundary inside one */
    c.max_seq_len = T;
    struct lorad_run_options o = opts(2, B, T);
    struct lorad_model *m = new_model(&tm.w, lc, o);
    randomize_lora(m, 0.2, 9);
    int32_t *ids = malloc(B * T * sizeof(int32_t)), *labels = malloc(B * T * sizeof(int32_t));
    random_batch(ids, labels, B * T, c.vocab_size);
    struct lorad_batch b = {.tokens = ids, .labels = labels, .B = B, .T = T};
    int64_t denom = lorad_count_labels(labels, B * T), corr;
    struct lorad_error err = {0};
    size_t n;
    float *grads = lorad_model_grads(m, &n), *g1 = malloc(n * sizeof(float));
    double ls, row_loss[B], inv = 1.0 / (double)denom;
    int64_t row_correct[B];
    lorad_model_set_dropout_counter(m, 3);
    assert_int_equal(lorad_model_forward_backward(m, &b, denom, &ls, &corr, &err), 0);
    memcpy(g1, grads, n * sizeof(float));
    lorad_model_zero_grads(m);
    lorad_model_set_dropout_counter(m, 3);
    assert_int_equal(lorad_model_forward_backward_rows(m, &b, uniform_weights_fn, &inv, row_loss, row_correct, &err), 0);
    double two_runs = 2 * gradcheck_model_bound(&c, B * T, false);
    assert_true(fabs(row_loss[0] + row_loss[1] - ls) <= two_runs * fabs(ls));
    assert_int_equal(row_correct[0] + row_correct[1], corr);
    double scale = 0, diff = 0;
    for (size_t i = 0; i < n; i++) {
        scale = fmax(scale, fabs(g1[i]));
        diff = fmax(diff, fabs(g1[i] - grads[i]));
    }
    if (!(diff <= two_runs * scale)) fail_msg("gradients differ by %.3g of scale %.3g", diff, scale);
    assert_int_equal(lorad_model_forward_backward_rows(m, &b, failing_weights_fn, NULL, row_loss, NULL, &err), -EDOM);
    assert_true(lorad_model_dropout_counter(m) == 5);

    struct f64_llama f;
    assert_int_equal(f64_llama_init(&f, m, &tm.w, &lc, o.seed), 0);
    f.dropout = 0; /* evaluation draws no masks */
    for (int adapter = 1; adapter >= 0; adapter--) {
        if (!adapter) memset(f.params, 0, f.n_params * sizeof *f.params); /* the base model */
        assert_int_equal(lorad_model_eval_rows(m, &b, adapter, row_loss, row_correct, &err), 0);
        for (int r = 0; r < B; r++) {
            struct lorad_batch v = row_view(&b, r);
            double ref = f64_llama_loss_sum(&f, &v), bound = gradcheck_model_bound(&c, B * T, false) * fabs(ref);
            if (!(fabs(row_loss[r] - ref) <= bound))
                fail_msg("adapter %s, row %d: %.9g, float64 %.9g", adapter ? "on" : "off", r, row_loss[r], ref);
        }
    }
    f64_llama_free(&f);
    /* switching the adapter off for one call leaves it on afterwards */
    double on[B], again[B];
    assert_int_equal(lorad_model_eval_rows(m, &b, true, on, NULL, &err), 0);
    assert_int_equal(lorad_model_eval_rows(m, &b, false, again, NULL, &err), 0);
    assert_int_equal(lorad_model_eval_rows(m, &b, true, again, NULL, &err), 0);
    assert_memory_equal(on, again, sizeof on);
    free(g1);
    free(ids);
    free(labels);
    lorad_model_free(m);
    tiny_model_free(&tm);
}

/* LoRA+'s per-element learning rates are torch's param groups: one AdamW whose second half is
 * scaled by 16 moves every element bit for bit as two AdamWs would, the second at 16x the lr
 * (weight decay on, clipping off: torch clips over all groups at once, which one optimiser does). */
static void test_adamw_lr_scale_is_param_groups(void **state) {
    (void)state;
    enum { N = 64, H = 32 };
    struct lorad_optim_config c;
    lorad_optim_config_defaults(&c);
    c.lr = 3e-3, c.weight_decay = 0.05, c.max_grad_norm = 0, c.warmup_steps = 0;
    struct lorad_optim_config c16 = c;
    c16.lr = c.lr * 16.0;
    struct lorad_adamw one, lo, hi;
    assert_int_equal(lorad_adamw_init(&one, N), 0);
    assert_int_equal(lorad_adamw_init(&lo, H), 0);
    assert_int_equal(lorad_adamw_init(&hi, N - H), 0);
    float scale[N], p[N], q[N], g[N], h[N];
    for (int i = 0; i < N; i++) scale[i] = i < H ? 1.0f : 16.0f, p[i] = q[i] = (float)sin(i + 1.0);
    one.lr_scale = scale;
    for (int step = 0; step < 6; step++) {
        for (int i = 0; i < N; i++) g[i] = h[i] = (float)cos(7.0 * i + step);
        double n1, l1;
        assert_int_equal(lorad_adamw_step(&one, &c, p, g, NULL, NULL, &n1, &l1), 0);
        assert_int_equal(lorad_adamw_step(&lo, &c, q, h, NULL, NULL, &n1, &l1), 0);
        assert_int_equal(lorad_adamw_step(&hi, &c16, q + H, h + H, NULL, NULL, &n1, &l1), 0);
        for (int i = 0; i < N; i++)
            if (memcmp(&p[i], &q[i], sizeof p[i]) != 0)
                fail_msg("step %d element %d: one optimiser with scales %.9g, two groups %.9g", step, i, (double)p[i],
                         (double)q[i]);
    }
    assert_true(fabs(p[N - 1] - (float)sin(N)) > 4 * fabs(p[0] - (float)sin(1.0))); /* the scale acted */
    lorad_adamw_destroy(&one);
    lorad_adamw_destroy(&lo);
    lorad_adamw_destroy(&hi);
}

/* Random A and B, and DoRA magnitudes 20% off where DoRA would start them for those, so every
 * scale m/n differs from 1. */
static void randomize_dora(struct lorad_model *m, double std, uint64_t seed) {
    randomize_lora(m, std, seed);
    uint64_t s = seed + 1;
    tiny_perturb_dora_magnitudes(m, 0.2, &s);
}

/* DoRA with dropout, where PEFT's formula needs W drop(x) beside W x: the engine's gradient of
 * every A, B and magnitude (residual-fused o/down, the head, two threads, checkpointing or not)
 * against the float64 model's central differences with the same masks and the norms held (the
 * engine's backward treats them as constants, as the paper's section 4.3 prescribes). */
static void test_dora_dropout_gradients_finite_differences(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    struct tiny_model tm;
    tiny_model_init(&tm, &c, 17, false, false);
    for (int ckpt = 0; ckpt < 2; ckpt++) {
        for (int drop = 0; drop < 2; drop++) {
            struct lorad_lora_config lc = all_lora(drop ? 0.3f : 0.0f);
            lc.use_dora = true;
            struct lorad_run_options o = opts(2, 1, 11);
            o.activation_checkpointing = ckpt;
            struct lorad_model *m = new_model(&tm.w, lc, o);
            randomize_dora(m, 0.2, 8);
            int32_t ids[11], labels[11];
            random_batch(ids, labels, 11, c.vocab_size);
            struct lorad_batch b = {.tokens = ids, .labels = labels, .B = 1, .T = 11};
            int64_t denom = lorad_count_labels(labels, 11), corr;
            struct lorad_error err = {0};
            double ls;
            lorad_model_set_dropout_counter(m, 3);
            assert_int_equal(lorad_model_forward_backward(m, &b, denom, &ls, &corr, &err), 0);
            struct gradcheck_report rep;
            assert_int_equal(gradcheck_model(&rep, m, &tm.w, &lc, o.seed, 3, &b, denom, DORA_PROBE_STRIDE), 0);
            char what[64];
            snprintf(what, sizeof what, "DoRA, dropout %s, checkpointing %s", drop ? "on" : "off", ckpt ? "on" : "off");
            expect_gradients_pass(&rep, what);
            lorad_model_free(m);
        }
    }
    tiny_model_free(&tm);
}

/* A DoRA adapter equals its merge, each row of W + s B A scaled to its magnitude; and a fresh one
 * (B = 0, magnitudes = the row norms of W) leaves the base's output as it is. */
static void test_dora_merge_and_fresh_identity(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    c.attention_bias = true; /* the biases stay outside DoRA's scale */
    struct tiny_model tm, merged;
    tiny_model_init(&tm, &c, 21, false, false);
    tiny_model_init(&merged, &c, 21, false, false);
    struct lorad_lora_config lc = all_lora(0);
    lc.use_dora = true;
    struct lorad_run_options o = opts(2, 1, 12);
    o.kv_cache_len = 12;
    struct lorad_model *fresh = new_model(&tm.w, lc, o), *m = new_model(&tm.w, lc, o);
    randomize_dora(m, 0.3, 4);
    merge_into(&merged, m);
    struct lorad_model *mm = new_model(&merged.w, all_lora(0), o);
    int32_t ids[12], labels[12];
    random_batch(ids, labels, 12, c.vocab_size);
    float la[97], lb[97], lbase[97], lfresh[97];
    struct lorad_error err = {0};
    assert_int_equal(lorad_model_infer(m, ids, 7, true, la, &err), 0);
    assert_int_equal(lorad_model_infer(m, ids + 7, 5, true, la, &err), 0);
    assert_int_equal(lorad_model_infer(mm, ids, 12, false, lb, &err), 0);
    assert_int_equal(lorad_model_infer(fresh, ids, 12, false, lbase, &err), 0);
    lorad_model_reset_cache(fresh);
    assert_int_equal(lorad_model_infer(fresh, ids, 12, true, lfresh, &err), 0);
    double mx = 0, md = 0, mdb = 0, mdf = 0;
    for (int i = 0; i < 97; i++) {
        mx = fmax(mx, fabs(lb[i]));
        md = fmax(md, fabs(la[i] - lb[i]));
        mdb = fmax(mdb, fabs(lbase[i] - lb[i]));
        mdf = fmax(mdf, fabs(lfresh[i] - lbase[i]));
    }
    double two_runs = 2 * gradcheck_model_bound(&c, 12, true);
    if (md > two_runs * mx) fail_msg("DoRA vs merged logits differ by %.3g (max %.3g)", md, mx);
    if (mdf > two_runs * mx) fail_msg("a fresh DoRA adapter moved the logits by %.3g (max %.3g)", mdf, mx);
    assert_true(mdb > 1e-2 * mx); /* the adapter really changes the output */
    struct lorad_batch b = {.tokens = ids, .labels = labels, .B = 1, .T = 12};
    double l1 = eval_loss(m, &b);
    size_t n;
    float *mp = lorad_model_params(mm, &n);
    memset(mp, 0, n * sizeof(float));
    assert_true(fabs(l1 - eval_loss(mm, &b)) <= two_runs * fabs(l1));
    lorad_model_free(m);
    lorad_model_free(mm);
    lorad_model_free(fresh);
    tiny_model_free(&tm);
    tiny_model_free(&merged);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_model_finite_differences),
        cmocka_unit_test(test_dropout_gradients_finite_differences),
        cmocka_unit_test(test_merge_identity),
        cmocka_unit_test(test_infer_matches_training_forward),
        cmocka_unit_test(test_bf16_storage_and_determinism),
        cmocka_unit_test(test_packing_equals_separate_rows),
        cmocka_unit_test(test_lora_names_init_and_set),
        cmocka_unit_test(test_schedules_and_adamw),
        cmocka_unit_test(test_adamw_lr_scale_is_param_groups),
        cmocka_unit_test(test_bad_input_is_named),
        cmocka_unit_test(test_row_weights_finite_differences),
        cmocka_unit_test(test_rows_match_forward_backward_and_eval),
        cmocka_unit_test(test_dora_dropout_gradients_finite_differences),
        cmocka_unit_test(test_dora_merge_and_fresh_identity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
