/* The engine against our float64 PyTorch reference (tests/reference/llama_lora_ref.py) through the
 * case/result files of docs/reference-interchange.md: gradients of every LoRA tensor at 1e-4 and
 * 20 AdamW steps (warmup, cosine/linear, clipping, accumulation) at 1e-3, on odd-sized random
 * configs covering MHA/GQA, tied/untied, head_dim != dim/heads, q/k/v bias, llama3 RoPE scaling,
 * all eight targets and -100 masking. */
#include "testutil.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "optim.h"
#include "ref_case.h"
#include "safetensors_write.h"
#include "tiny_model.h"

struct ref_case {
    const char *tag;
    struct lorad_llama_config cfg;
    struct lorad_lora_config lora;
    int M, B, T;
    /* train */
    int steps, grad_accum, warmup;
    const char *sched;
    double lr, wd, clip;
    int threads;
    bool ckpt;
    enum lorad_compute_dtype compute; /* FLOAT32 (0) unless a case asks */
    bool bf16_base;                   /* the base matrices stored as BF16 */
};

static void run_case(const struct ref_case *rc) {
    const struct lorad_llama_config *c = &rc->cfg;
    struct tiny_model tm;
    tiny_model_init(&tm, c, (uint64_t)rc->M * 31 + (uint64_t)c->dim, rc->bf16_base, rc->bf16_base);
    struct lorad_run_options o = {.threads = rc->threads, .max_batch = rc->B, .max_seq = rc->T, .seed = 5,
                                  .activation_checkpointing = rc->ckpt, .compute_dtype = rc->compute};
    struct lorad_model *m = NULL;
    struct lorad_error err = {0};
    int r = lorad_model_new(&m, &tm.w, &rc->lora, &o, &err);
    if (r < 0) fail_msg("model_new: %s", err.message);
    /* PiSSA / OLoRA: the frozen factors from the base; the trained A and B are then set below like
     * any case's, and the reference builds the residual base from the maths */
    if (lorad_model_init_from_base(m, &err) < 0) fail_msg("init_from_base: %s", err.message);

    /* LoRA initial values: B nonzero too, so every gradient is informative. Training cases start
     * smaller: with large adapters the 20-step trajectory is chaotic (grad norms ~70) and float32
     * rounding alone moves it by more than 1e-3, which would test conditioning, not the engine. */
    uint64_t rng = 99 + (uint64_t)rc->steps;
    size_t np;
    float *params = lorad_model_params(m, &np);
    for (size_t i = 0; i < np; i++) params[i] = (float)((rc->steps ? 0.05 : 0.3) * tiny_normal(&rng));
    if (rc->lora.use_dora) {
        /* magnitudes where DoRA starts them for these A and B, then moved by 20% so that every
         * scale m/n differs from 1 and the (m/n - 1) W x term is exercised */
        tiny_perturb_dora_magnitudes(m, 0.2, &rng);
    }
    float *init = malloc(np * sizeof(float));
    memcpy(init, params, np * sizeof(float));

    /* data */
    int64_t per = (int64_t)rc->B * rc->T, total = per * rc->M;
    int32_t *ids = malloc((size_t)total * 4), *labels = malloc((size_t)total * 4);
    for (int64_t i = 0; i < total; i++) {
        ids[i] = (int32_t)(tiny_rand(&rng) % (uint64_t)c->vocab_size);
        labels[i] = tiny_uniform(&rng) < 0.25 ? -100 : (int32_t)(tiny_rand(&rng) % (uint64_t)c->vocab_size);
    }
    for (int mb = 0; mb < rc->M; mb++) labels[mb * per] = 1; /* every micro-batch has a label */

    char *dir = test_mkdtemp(rc->tag);
    char *case_path = test_path(dir, "case.safetensors"), *result_path = test_path(dir, "result.safetensors");
    struct lorad_st_writer *w;
    assert_int_equal(lorad_st_writer_new(&w, case_path), 0);
    char buf[2048];
    ref_case_write_model(w, &tm, m, &rc->lora, init);
    snprintf(buf, sizeof buf,
             "{\"steps\":%d,\"grad_accum\":%d,\"lr\":%.9g,\"warmup_steps\":%d,\"lr_scheduler\":\"%s\","
             "\"weight_decay\":%.9g,\"adam_beta1\":0.9,\"adam_beta2\":0.999,\"adam_epsilon\":1e-08,"
             "\"max_grad_norm\":%.9g}",
             rc->steps, rc->grad_accum, rc->lr, rc->warmup, rc->sched, rc->wd, rc->clip);
    assert_int_equal(lorad_st_writer_metadata(w, "train", buf), 0);
    snprintf(buf, sizeof buf, "{\"dtype\":\"%s\"}", lorad_compute_dtype_names[rc->compute]);
    assert_int_equal(lorad_st_writer_metadata(w, "compute", buf), 0);
    int n_lora = lorad_model_n_lora_tensors(m);
    int64_t dshape[3] = {rc->M, rc->B, rc->T};
    assert_int_equal(lorad_st_writer_add(w, "input_ids", "I32", dshape, 3, ids, (size_t)total * 4), 0);
    assert_int_equal(lorad_st_writer_add(w, "labels", "I32", dshape, 3, labels, (size_t)total * 4), 0);
    assert_int_equal(lorad_st_writer_finish(w, &err), 0);

    /* engine */
    float *grads = lorad_model_grads(m, NULL);
    struct lorad_st_writer *rw;
    assert_int_equal(lorad_st_writer_new(&rw, result_path), 0);
    float loss_first = 0;
    int n_steps = rc->steps > 0 ? rc->steps : 1, ga = rc->steps > 0 ? rc->grad_accum : rc->M;
    float *step_loss = calloc((size_t)n_steps, 4), *gnorm = calloc((size_t)n_steps, 4);
    struct lorad_optim_config oc;
    lorad_optim_config_defaults(&oc);
    oc.lr = rc->lr; oc.weight_decay = rc->wd; oc.max_grad_norm = rc->clip; oc.warmup_steps = rc->warmup;
    oc.total_steps = rc->steps; oc.beta1 = 0.9; oc.beta2 = 0.999; oc.eps = 1e-8;
    oc.schedule = strcmp(rc->sched, "cosine") == 0 ? LORAD_LR_COSINE
                  : strcmp(rc->sched, "linear") == 0 ? LORAD_LR_LINEAR : LORAD_LR_CONSTANT;
    struct lorad_adamw opt;
    assert_int_equal(lorad_adamw_init(&opt, np), 0);
    for (int s = 0; s < n_steps; s++) {
        int64_t denom = lorad_count_labels(labels + (int64_t)s * ga * per, (int64_t)ga * per);
        double sum = 0;
        for (int k = 0; k < ga; k++) {
            int64_t off = ((int64_t)s * ga + k) * per;
            struct lorad_batch b = {.tokens = ids + off, .labels = labels + off, .B = rc->B, .T = rc->T};
            double ls;
            int64_t corr;
            r = lorad_model_forward_backward(m, &b, denom, &ls, &corr, &err);
            if (r < 0) fail_msg("forward_backward: %s", err.message);
            sum += ls;
        }
        step_loss[s] = (float)(sum / (double)denom);
        if (s == 0) loss_first = step_loss[s];
        if (rc->steps == 0) break;
        double norm, lr;
        assert_int_equal(lorad_adamw_step(&opt, &oc, params, grads, NULL, NULL, &norm, &lr), 0);
        gnorm[s] = (float)norm;
    }
    int64_t one = 1, ns = rc->steps;
    assert_int_equal(lorad_st_writer_add(rw, "loss", "F32", &one, 1, &loss_first, 4), 0);
    char (*names)[128] = calloc((size_t)n_lora, 128);
    for (int i = 0; i < n_lora; i++) {
        const struct lorad_lora_tensor *t = lorad_model_lora_tensor(m, i);
        int64_t shape[2];
        int ndim = lorad_lora_tensor_shape(t, shape);
        snprintf(names[i], 128, "%s.%s", rc->steps ? "final" : "grad", t->name);
        const float *src = (rc->steps ? params : grads) + t->offset;
        assert_int_equal(lorad_st_writer_add(rw, names[i], "F32", shape, ndim, src, (size_t)(t->rows * t->cols) * 4), 0);
    }
    if (rc->steps) {
        assert_int_equal(lorad_st_writer_add(rw, "step_loss", "F32", &ns, 1, step_loss, (size_t)ns * 4), 0);
        assert_int_equal(lorad_st_writer_add(rw, "grad_norm", "F32", &ns, 1, gnorm, (size_t)ns * 4), 0);
    }
    assert_int_equal(lorad_st_writer_finish(rw, &err), 0);

    char script[4096];
    snprintf(script, sizeof script, "%s/tests/reference/llama_lora_ref.py", LORAD_SOURCE_DIR);
    char *argv[] = {LORAD_PYTHON, script, "compare", case_path, result_path, NULL};
    int rc_exit = test_run(argv);
    if (rc_exit != 0) fail_msg("reference disagrees for case %s (exit %d); files kept in %s", rc->tag, rc_exit, dir);

    lorad_adamw_destroy(&opt);
    free(names); free(step_loss); free(gnorm); free(ids); free(labels); free(init);
    lorad_model_free(m);
    tiny_model_free(&tm);
    if (!getenv("LORAD_KEEP_CASES")) test_rmtree(dir); /* set it to inspect the files */
    free(dir); free(case_path); free(result_path);
}

static struct lorad_lora_config lora(int r, float alpha, uint32_t targets, bool rslora) {
    struct lorad_lora_config l = {.r = r, .alpha = alpha, .dropout = 0, .targets = targets, .use_rslora = rslora};
    return l;
}

static void test_grads_mha_untied(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    c.n_heads = 3; c.n_kv_heads = 3; c.head_dim = 12; c.vocab_size = 97;
    struct ref_case rc = {"ref-mha", c, lora(4, 8, (1u << LORAD_Q_PROJ) | (1u << LORAD_V_PROJ), false), 2, 2, 13,
                          0, 1, 0, "constant", 1e-3, 0, 0, 1, false, LORAD_COMPUTE_FLOAT32, false};
    run_case(&rc);
}

static void test_grads_gqa_tied_bias_llama3_all_targets(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config(); /* 4 heads, 2 kv heads, head_dim 10 != 36/4 */
    c.tie_embeddings = true; c.attention_bias = true; c.rope_theta = 10000;
    c.rope_scaling = (struct lorad_rope_scaling){LORAD_ROPE_LLAMA3, 8, 1, 4, 64};
    struct ref_case rc = {"ref-gqa", c, lora(3, 5, LORAD_LORA_ALL_LINEAR | (1u << LORAD_LM_HEAD), true), 3, 2, 13,
                          0, 1, 0, "constant", 1e-3, 0, 0, 2, false, LORAD_COMPUTE_FLOAT32, false};
    run_case(&rc);
}

static void test_grads_checkpointing_gqa_untied(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    c.n_kv_heads = 1; c.n_layers = 3;
    struct ref_case rc = {"ref-ckpt", c, lora(2, 4, (1u << LORAD_K_PROJ) | (1u << LORAD_O_PROJ) | (1u << LORAD_DOWN_PROJ) |
                                                       (1u << LORAD_LM_HEAD), false),
                          2, 1, 13, 0, 1, 0, "constant", 1e-3, 0, 0, 2, true, LORAD_COMPUTE_FLOAT32, false};
    run_case(&rc);
}

/* More tokens per micro-batch (2 x 150) than the LM head's 128-token chunk (engine/model/model.c
 * HEAD_CHUNK), so the chunked loss, the head's input gradient and lm_head's LoRA gradient are
 * summed over two whole chunks and a ragged one. */
static void test_grads_lm_head_chunks(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    c.max_seq_len = 160;
    struct ref_case rc = {"ref-chunks", c, lora(3, 6, (1u << LORAD_Q_PROJ) | (1u << LORAD_V_PROJ) | (1u << LORAD_LM_HEAD), false),
                          2, 2, 150, 0, 1, 0, "constant", 1e-3, 0, 0, 2, false, LORAD_COMPUTE_FLOAT32, false};
    run_case(&rc);
}

static void test_train_cosine_clip_accum(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    c.attention_bias = true;
    c.rope_scaling = (struct lorad_rope_scaling){LORAD_ROPE_LLAMA3, 4, 1, 4, 32};
    struct ref_case rc = {"ref-train-cos", c, lora(4, 8, LORAD_LORA_ALL_LINEAR | (1u << LORAD_LM_HEAD), false), 40, 1,
                          13, 20, 2, 3, "cosine", 1e-2, 0.01, 0.5, 2, false, LORAD_COMPUTE_FLOAT32, false};
    run_case(&rc);
}

static void test_train_linear_tied_mha(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    c.n_heads = 3; c.n_kv_heads = 3; c.head_dim = 12; c.tie_embeddings = true;
    struct ref_case rc = {"ref-train-lin", c, lora(2, 2, (1u << LORAD_Q_PROJ) | (1u << LORAD_V_PROJ) | (1u << LORAD_LM_HEAD), true),
                          40, 2, 9, 20, 2, 4, "linear", 5e-3, 0.1, 1.0, 1, false, LORAD_COMPUTE_FLOAT32, false};
    run_case(&rc);
}

/* One step computing the frozen-weight products in bf16 on a bf16 base (the reference rounds the
 * same operands, tests/reference/llama_lora_ref.py Bf16Product; tolerance derived there), and
 * bf16 compute on an f32 base, whose weights are rounded while packed. */
static void test_grads_bf16_compute(void **state) {
    (void)state;
    if (!lorad_gemm_bf16_usable()) skip();
    struct lorad_llama_config c = tiny_config();
    struct ref_case rc = {"ref-bf16", c, lora(4, 8, LORAD_LORA_ALL_LINEAR | (1u << LORAD_LM_HEAD), false), 2, 2, 13,
                          0, 1, 0, "constant", 1e-3, 0, 0, 2, false, LORAD_COMPUTE_BFLOAT16, true};
    run_case(&rc);
    c.tie_embeddings = true; c.attention_bias = true;
    struct ref_case rc2 = {"ref-bf16-f32base", c, lora(3, 6, LORAD_LORA_ALL_LINEAR, false), 2, 2, 13,
                           0, 1, 0, "constant", 1e-3, 0, 0, 2, true, LORAD_COMPUTE_BFLOAT16, false};
    run_case(&rc2);
}

static struct lorad_lora_config dora(struct lorad_lora_config l) {
    l.use_dora = true;
    return l;
}

/* DoRA (PEFT's definition, tests/reference/llama_lora_ref.py): the magnitudes' gradients beside
 * A's and B's, on every module and the tied head, with biases (which DoRA leaves unscaled). */
static void test_grads_dora_gqa_tied_bias_all_targets(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    c.tie_embeddings = true; c.attention_bias = true;
    c.rope_scaling = (struct lorad_rope_scaling){LORAD_ROPE_LLAMA3, 8, 1, 4, 64};
    struct ref_case rc = {"ref-dora", c, dora(lora(3, 5, LORAD_LORA_ALL_LINEAR | (1u << LORAD_LM_HEAD), true)), 3, 2, 13,
                          0, 1, 0, "constant", 1e-3, 0, 0, 2, false, LORAD_COMPUTE_FLOAT32, false};
    run_case(&rc);
}

/* DoRA with activation checkpointing (the recomputed forward) and an LM head of more tokens than
 * one chunk, so the head's magnitude gradient sums over chunks. */
static void test_grads_dora_checkpointing_chunks(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    c.n_kv_heads = 1; c.max_seq_len = 160;
    struct ref_case rc = {"ref-dora-ckpt", c, dora(lora(2, 4, (1u << LORAD_K_PROJ) | (1u << LORAD_O_PROJ) |
                                                              (1u << LORAD_DOWN_PROJ) | (1u << LORAD_LM_HEAD), false)),
                          2, 2, 150, 0, 1, 0, "constant", 1e-3, 0, 0, 2, true, LORAD_COMPUTE_FLOAT32, false};
    run_case(&rc);
}

static struct lorad_lora_config init_from(struct lorad_lora_config l, enum lorad_lora_init init) {
    l.init = init;
    return l;
}

/* PiSSA's residual base (W - scale B0 A0 with B0 A0 the truncated SVD of W / scale, built by the
 * reference from torch's SVD): forward and the input gradients through it, on every module and
 * the tied head, with biases and GQA. */
static void test_grads_pissa_gqa_tied_bias_all_targets(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    c.tie_embeddings = true; c.attention_bias = true;
    struct ref_case rc = {"ref-pissa", c, init_from(lora(3, 5, LORAD_LORA_ALL_LINEAR | (1u << LORAD_LM_HEAD), false),
                                                    LORAD_LORA_INIT_PISSA),
                          3, 2, 13, 0, 1, 0, "constant", 1e-3, 0, 0, 2, false, LORAD_COMPUTE_FLOAT32, false};
    run_case(&rc);
}

/* OLoRA with rsLoRA (scale alpha / sqrt(r) enters the residual) and activation checkpointing (the
 * recomputed forward), an LM head of more tokens than one chunk. */
static void test_grads_olora_rslora_checkpointing(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    c.max_seq_len = 160;
    struct ref_case rc = {"ref-olora", c, init_from(lora(2, 4, (1u << LORAD_Q_PROJ) | (1u << LORAD_V_PROJ) |
                                                                    (1u << LORAD_UP_PROJ) | (1u << LORAD_LM_HEAD), true),
                                                    LORAD_LORA_INIT_OLORA),
                          2, 2, 150, 0, 1, 0, "constant", 1e-3, 0, 0, 2, true, LORAD_COMPUTE_FLOAT32, false};
    run_case(&rc);
}

/* 20 AdamW steps on a PiSSA residual base. */
static void test_train_pissa_cosine_clip(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    struct ref_case rc = {"ref-train-pissa", c, init_from(lora(4, 8, LORAD_LORA_ALL_LINEAR, false), LORAD_LORA_INIT_PISSA),
                          40, 1, 13, 20, 2, 3, "cosine", 1e-2, 0.01, 0.5, 2, false, LORAD_COMPUTE_FLOAT32, false};
    run_case(&rc);
}

/* 20 AdamW steps of a DoRA adapter: the magnitudes train with A and B (weight decay on all). */
static void test_train_dora_cosine_clip(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    c.attention_bias = true;
    struct ref_case rc = {"ref-train-dora", c, dora(lora(4, 8, LORAD_LORA_ALL_LINEAR, false)), 40, 1,
                          13, 20, 2, 3, "cosine", 1e-2, 0.01, 0.5, 2, false, LORAD_COMPUTE_FLOAT32, false};
    run_case(&rc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grads_mha_untied),
        cmocka_unit_test(test_grads_gqa_tied_bias_llama3_all_targets),
        cmocka_unit_test(test_grads_checkpointing_gqa_untied),
        cmocka_unit_test(test_grads_lm_head_chunks),
        cmocka_unit_test(test_grads_bf16_compute),
        cmocka_unit_test(test_train_cosine_clip_accum),
        cmocka_unit_test(test_train_linear_tied_mha),
        cmocka_unit_test(test_grads_dora_gqa_tied_bias_all_targets),
        cmocka_unit_test(test_grads_dora_checkpointing_chunks),
        cmocka_unit_test(test_train_dora_cosine_clip),
        cmocka_unit_test(test_grads_pissa_gqa_tied_bias_all_targets),
        cmocka_unit_test(test_grads_olora_rslora_checkpointing),
        cmocka_unit_test(test_train_pissa_cosine_clip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
