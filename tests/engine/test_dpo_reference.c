/* The DPO loss and its LoRA gradients against tests/reference/dpo_ref.py, an independent PyTorch
 * reference written from the paper's formula (float64 autograd over the same weights), through the
 * case/result files of docs/reference-interchange.md. The engine side is what a DPO step runs
 * (lorad_dpo_forward_backward: the reference pass with the adapter off, then the policy's forward
 * and backward weighted per row), over two accumulated micro-batches of pairs that share their
 * prompts, as a preference corpus lays them out. The tolerances are derived in dpo_ref.py from
 * the float32 error bound of the case. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpo.h"
#include "model.h"
#include "ref_case.h"
#include "safetensors_write.h"
#include "tiny_model.h"

struct dpo_case {
    const char *tag;
    struct lorad_llama_config cfg;
    struct lorad_lora_config lora;
    double beta;
    bool ckpt;
};

enum { M = 2, B = 4, T = 12 }; /* two micro-batches of two pairs */

/* Pairs as lorad_batch_fill lays them: rows 2i and 2i+1 share a prompt of 3..5 tokens, then each
 * has its own output of 2..6 tokens; labels only where a position predicts an output token. */
static void make_pairs(int32_t *ids, int32_t *labels, int vocab, uint64_t *rng) {
    for (int mb = 0; mb < M; mb++)
        for (int pair = 0; pair < B / 2; pair++) {
            int prompt = 3 + (int)(tiny_rand(rng) % 3);
            int32_t shared[T];
            for (int t = 0; t < prompt; t++) shared[t] = (int32_t)(tiny_rand(rng) % (uint64_t)vocab);
            for (int side = 0; side < 2; side++) {
                int32_t *tok = ids + ((size_t)mb * B + 2 * pair + side) * T;
                int32_t *lab = labels + ((size_t)mb * B + 2 * pair + side) * T;
                int len = prompt + 2 + (int)(tiny_rand(rng) % 5);
                for (int t = 0; t < T; t++) {
                    tok[t] = t < prompt ? shared[t] : t < len ? (int32_t)(tiny_rand(rng) % (uint64_t)vocab) : 0;
                    lab[t] = -100;
                }
                for (int t = prompt - 1; t + 1 < len; t++) lab[t] = tok[t + 1];
            }
        }
}

static void run_case(const struct dpo_case *dc) {
    const struct lorad_llama_config *c = &dc->cfg;
    struct tiny_model tm;
    tiny_model_init(&tm, c, 11 + (uint64_t)c->dim, false, false);
    struct lorad_run_options o = {.threads = 2, .max_batch = B, .max_seq = T, .seed = 3,
                                  .activation_checkpointing = dc->ckpt};
    struct lorad_model *m = NULL;
    struct lorad_error err = {0};
    if (lorad_model_new(&m, &tm.w, &dc->lora, &o, &err) < 0) fail_msg("model_new: %s", err.message);
    /* Small adapters, B nonzero: the policy differs from the reference by margins of order beta,
     * as early in training, and every gradient is informative. */
    uint64_t rng = 21;
    size_t np;
    float *params = lorad_model_params(m, &np);
    for (size_t i = 0; i < np; i++) params[i] = (float)(0.2 * tiny_normal(&rng));
    int32_t ids[M * B * T], labels[M * B * T];
    make_pairs(ids, labels, c->vocab_size, &rng);

    char *dir = test_mkdtemp(dc->tag);
    char *case_path = test_path(dir, "case.safetensors"), *result_path = test_path(dir, "result.safetensors");
    struct lorad_st_writer *w;
    assert_int_equal(lorad_st_writer_new(&w, case_path), 0);
    ref_case_write_model(w, &tm, m, &dc->lora, params);
    assert_int_equal(lorad_st_writer_metadata(w, "train",
                                              "{\"steps\":0,\"grad_accum\":1,\"lr\":0,\"warmup_steps\":0,"
                                              "\"lr_scheduler\":\"constant\",\"weight_decay\":0,\"adam_beta1\":0.9,"
                                              "\"adam_beta2\":0.999,\"adam_epsilon\":1e-08,\"max_grad_norm\":null}"),
                     0);
    char buf[64];
    snprintf(buf, sizeof buf, "{\"beta\":%.17g}", dc->beta);
    assert_int_equal(lorad_st_writer_metadata(w, "dpo", buf), 0);
    int64_t dshape[3] = {M, B, T};
    assert_int_equal(lorad_st_writer_add(w, "input_ids", "I32", dshape, 3, ids, sizeof ids), 0);
    assert_int_equal(lorad_st_writer_add(w, "labels", "I32", dshape, 3, labels, sizeof labels), 0);
    assert_int_equal(lorad_st_writer_finish(w, &err), 0);

    /* the engine: one step over both micro-batches, the loss the mean over all their pairs */
    struct lorad_dpo_sums sums = {0};
    int64_t correct = 0, n_labels = 0;
    const int pairs = M * B / 2;
    for (int mb = 0; mb < M; mb++) {
        struct lorad_batch b = {.tokens = ids + mb * B * T, .labels = labels + mb * B * T, .B = B, .T = T};
        lorad_model_set_dropout_counter(m, (uint64_t)mb);
        if (lorad_dpo_forward_backward(m, &b, dc->beta, 1.0 / pairs, &sums, &correct, &n_labels, &err) < 0)
            fail_msg("dpo forward_backward: %s", err.message);
    }
    assert_int_equal(sums.pairs, pairs);
    assert_true(n_labels > 0 && correct >= 0 && correct <= n_labels);
    struct lorad_st_writer *rw;
    assert_int_equal(lorad_st_writer_new(&rw, result_path), 0);
    int64_t one = 1;
    float loss = (float)(sums.loss / pairs), margin = (float)(sums.margin / pairs);
    float chosen = (float)(sums.chosen / pairs), rejected = (float)(sums.rejected / pairs);
    float accuracy = (float)((double)sums.correct / pairs);
    assert_int_equal(lorad_st_writer_add(rw, "loss", "F32", &one, 1, &loss, 4), 0);
    assert_int_equal(lorad_st_writer_add(rw, "rewards_margin", "F32", &one, 1, &margin, 4), 0);
    assert_int_equal(lorad_st_writer_add(rw, "rewards_chosen", "F32", &one, 1, &chosen, 4), 0);
    assert_int_equal(lorad_st_writer_add(rw, "rewards_rejected", "F32", &one, 1, &rejected, 4), 0);
    assert_int_equal(lorad_st_writer_add(rw, "rewards_accuracy", "F32", &one, 1, &accuracy, 4), 0);
    const float *grads = lorad_model_grads(m, NULL);
    int n_lora = lorad_model_n_lora_tensors(m);
    for (int i = 0; i < n_lora; i++) {
        const struct lorad_lora_tensor *t = lorad_model_lora_tensor(m, i);
        int64_t shape[2] = {t->rows, t->cols};
        char name[128];
        snprintf(name, sizeof name, "grad.%s", t->name);
        assert_int_equal(lorad_st_writer_add(rw, name, "F32", shape, 2, grads + t->offset,
                                             (size_t)(t->rows * t->cols) * 4), 0);
    }
    assert_int_equal(lorad_st_writer_finish(rw, &err), 0);

    char script[4096];
    snprintf(script, sizeof script, "%s/tests/reference/dpo_ref.py", LORAD_SOURCE_DIR);
    char *argv[] = {LORAD_PYTHON, script, "compare", case_path, result_path, NULL};
    int rc = test_run(argv);
    if (rc != 0) fail_msg("dpo_ref.py disagrees for case %s (exit %d); files kept in %s", dc->tag, rc, dir);
    lorad_model_free(m);
    tiny_model_free(&tm);
    if (!getenv("LORAD_KEEP_CASES")) test_rmtree(dir);
    free(dir);
    free(case_path);
    free(result_path);
}

static void test_dpo_gqa_untied(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    struct dpo_case dc = {"dpo-gqa", c,
                          {.r = 4, .alpha = 8, .targets = (1u << LORAD_Q_PROJ) | (1u << LORAD_V_PROJ) | (1u << LORAD_LM_HEAD)},
                          0.1, false};
    run_case(&dc);
}

static void test_dpo_tied_bias_all_targets_checkpointing(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny_config();
    c.tie_embeddings = true;
    c.attention_bias = true;
    c.rope_scaling = (struct lorad_rope_scaling){LORAD_ROPE_LLAMA3, 8, 1, 4, 64};
    struct dpo_case dc = {"dpo-all", c,
                          {.r = 3, .alpha = 5, .targets = LORAD_LORA_ALL_LINEAR | (1u << LORAD_LM_HEAD), .use_rslora = true},
                          0.5, true};
    run_case(&dc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dpo_gqa_untied),
        cmocka_unit_test(test_dpo_tied_bias_all_targets_checkpointing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
