/* The whole-model gradient check must fail when a real gradient is wrong, not only pass when it is
 * right. This binary is linked with --wrap for two of the engine's backward kernels, so the
 * engine's model code calls the wrappers below instead; each wrapper passes through to the real
 * kernel unless a test switches on its mutation:
 *   - RoPE backward dropped: dq and dk reach the projections unrotated;
 *   - one GQA kv head's dK dropped: that head's keys get no gradient from its query heads.
 * With no mutation the check passes (the wrappers are transparent); with either it must fail, on
 * the tensors the mutation feeds. */
#include "testutil.h"

#include <math.h>
#include <string.h>

#include "gradcheck.h"
#include "kernels.h"
#include "model.h"
#include "tiny_model.h"

static enum { NONE, DROP_ROPE_BACKWARD, DROP_KV_HEAD_DK } mutation;

void __real_lorad_rope_backward(struct lorad_pool *pool, float *dx, const int32_t *pos, const float *cos_t,
                                const float *sin_t, int64_t N, int n_heads, int head_dim);
void __wrap_lorad_rope_backward(struct lorad_pool *pool, float *dx, const int32_t *pos, const float *cos_t,
                                const float *sin_t, int64_t N, int n_heads, int head_dim);
void __wrap_lorad_rope_backward(struct lorad_pool *pool, float *dx, const int32_t *pos, const float *cos_t,
                                const float *sin_t, int64_t N, int n_heads, int head_dim) {
    if (mutation == DROP_ROPE_BACKWARD) return;
    __real_lorad_rope_backward(pool, dx, pos, cos_t, sin_t, N, n_heads, head_dim);
}

void __real_lorad_attention_backward(struct lorad_pool *pool, float *const *scratch, float *dq, float *dk, float *dv,
                                     const float *dout, const float *q, const float *k, const float *v,
                                     const float *out, const float *lse, const int32_t *seg, struct lorad_attn_shape s);
void __wrap_lorad_attention_backward(struct lorad_pool *pool, float *const *scratch, float *dq, float *dk, float *dv,
                                     const float *dout, const float *q, const float *k, const float *v,
                                     const float *out, const float *lse, const int32_t *seg, struct lorad_attn_shape s);
void __wrap_lorad_attention_backward(struct lorad_pool *pool, float *const *scratch, float *dq, float *dk, float *dv,
                                     const float *dout, const float *q, const float *k, const float *v,
                                     const float *out, const float *lse, const int32_t *seg, struct lorad_attn_shape s) {
    __real_lorad_attention_backward(pool, scratch, dq, dk, dv, dout, q, k, v, out, lse, seg, s);
    if (mutation != DROP_KV_HEAD_DK) return;
    for (int64_t t = 0; t < (int64_t)s.B * s.T; t++) /* the last kv head */
        memset(dk + (t * s.KV + s.KV - 1) * s.hd, 0, sizeof(float) * (size_t)s.hd);
}

/* One gradient check of the tiny GQA model (4 query heads on 2 kv heads) under the current
 * mutation. */
static struct gradcheck_report check(void) {
    struct lorad_llama_config c = tiny_config();
    struct tiny_model tm;
    tiny_model_init(&tm, &c, 3, false, false);
    struct lorad_lora_config lc = {.r = 3, .alpha = 6, .targets = LORAD_LORA_ALL_LINEAR};
    struct lorad_run_options o = {.threads = 2, .max_batch = 2, .max_seq = 9, .seed = 42};
    struct lorad_model *m = NULL;
    struct lorad_error err = {0};
    if (lorad_model_new(&m, &tm.w, &lc, &o, &err) < 0) fail_msg("model_new: %s", err.message);
    size_t n;
    float *p = lorad_model_params(m, &n);
    uint64_t s = 5;
    for (size_t i = 0; i < n; i++) p[i] = (float)(0.2 * tiny_normal(&s));
    int32_t ids[18], labels[18];
    for (int i = 0; i < 18; i++) {
        ids[i] = (int32_t)(tiny_rand(&s) % (uint64_t)c.vocab_size);
        labels[i] = (int32_t)(tiny_rand(&s) % (uint64_t)c.vocab_size);
    }
    struct lorad_batch b = {.tokens = ids, .labels = labels, .B = 2, .T = 9};
    double ls;
    int64_t corr;
    assert_int_equal(lorad_model_forward_backward(m, &b, 18, &ls, &corr, &err), 0);
    struct gradcheck_report rep;
    assert_int_equal(gradcheck_model(&rep, m, &tm.w, &lc, o.seed, 0, &b, 18, 5), 0);
    lorad_model_free(m);
    tiny_model_free(&tm);
    print_message("mutation %d: worst at %.3g of the tolerance: %s\n", (int)mutation, rep.worst, rep.worst_what);
    return rep;
}

static void test_check_passes_through_transparent_wrappers(void **state) {
    (void)state;
    mutation = NONE;
    struct gradcheck_report rep = check();
    assert_true(rep.worst < 1.0);
}

static void test_check_fails_without_rope_backward(void **state) {
    (void)state;
    mutation = DROP_ROPE_BACKWARD;
    struct gradcheck_report rep = check();
    mutation = NONE;
    if (!(rep.worst > 1.0)) fail_msg("the check missed a dropped RoPE backward (worst %.3g)", rep.worst);
    /* the wrong gradients are those that flow through the rotation: q and k */
    assert_true(strstr(rep.worst_what, "q_proj") || strstr(rep.worst_what, "k_proj"));
}

static void test_check_fails_without_one_kv_head_dk(void **state) {
    (void)state;
    mutation = DROP_KV_HEAD_DK;
    struct gradcheck_report rep = check();
    mutation = NONE;
    if (!(rep.worst > 1.0)) fail_msg("the check missed a kv head's missing dK (worst %.3g)", rep.worst);
    assert_non_null(strstr(rep.worst_what, "k_proj"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_passes_through_transparent_wrappers),
        cmocka_unit_test(test_check_fails_without_rope_backward),
        cmocka_unit_test(test_check_fails_without_one_kv_head_dk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
