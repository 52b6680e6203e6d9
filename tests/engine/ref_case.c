/* The model part of a reference case (ref_case.h). */
#include "ref_case.h"

#include <stdio.h>

#include "testutil.h"

static void add_base(void *user, const char *name, const struct lorad_tensor *t) {
    struct lorad_st_writer *w = user;
    int64_t shape[2] = {t->rows, t->cols};
    int nd = t->rows == 1 ? 1 : 2;
    bool bf16 = t->dtype == LORAD_DTYPE_BF16;
    assert_int_equal(lorad_st_writer_add(w, name, bf16 ? "BF16" : "F32", nd == 1 ? shape + 1 : shape, nd, t->data,
                                         (size_t)(t->rows * t->cols) * (bf16 ? 2 : 4)), 0);
}

static void targets_json(char *out, size_t n, uint32_t targets) {
    size_t k = (size_t)snprintf(out, n, "[");
    bool first = true;
    for (int m = 0; m < LORAD_N_LORA_MODULES; m++)
        if (targets & (1u << m)) {
            k += (size_t)snprintf(out + k, n - k, "%s\"%s\"", first ? "" : ",", lorad_lora_module_name((enum lorad_lora_module)m));
            first = false;
        }
    snprintf(out + k, n - k, "]");
}

void ref_case_write_model(struct lorad_st_writer *w, const struct tiny_model *tm, const struct lorad_model *m,
                          const struct lorad_lora_config *lc, const float *init) {
    char buf[2048], tj[256];
    const struct lorad_llama_config *c = &tm->w.cfg;
    const struct lorad_rope_scaling *rs = &c->rope_scaling;
    char rope[256] = "null";
    if (rs->type == LORAD_ROPE_LLAMA3)
        snprintf(rope, sizeof rope,
                 "{\"rope_type\":\"llama3\",\"factor\":%.9g,\"low_freq_factor\":%.9g,\"high_freq_factor\":%.9g,"
                 "\"original_max_position_embeddings\":%d}",
                 rs->factor, rs->low_freq_factor, rs->high_freq_factor, rs->original_max_position_embeddings);
    snprintf(buf, sizeof buf,
             "{\"hidden_size\":%d,\"intermediate_size\":%d,\"num_hidden_layers\":%d,\"num_attention_heads\":%d,"
             "\"num_key_value_heads\":%d,\"head_dim\":%d,\"rms_norm_eps\":%.9g,\"rope_theta\":%.9g,"
             "\"rope_scaling\":%s,\"tie_word_embeddings\":%s,\"attention_bias\":%s,\"vocab_size\":%d,"
             "\"max_position_embeddings\":%d}",
             c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->norm_eps, c->rope_theta,
             rope, c->tie_embeddings ? "true" : "false", c->attention_bias ? "true" : "false", c->vocab_size,
             c->max_seq_len);
    assert_int_equal(lorad_st_writer_metadata(w, "config", buf), 0);
    targets_json(tj, sizeof tj, lc->targets);
    static const char *const inits[] = {"kaiming", "gaussian", "pissa", "olora"}; /* enum lorad_lora_init */
    snprintf(buf, sizeof buf,
             "{\"r\":%d,\"alpha\":%.9g,\"dropout\":0,\"target_modules\":%s,\"use_rslora\":%s,\"use_dora\":%s,"
             "\"init\":\"%s\"}",
             lc->r, lc->alpha, tj, lc->use_rslora ? "true" : "false", lc->use_dora ? "true" : "false", inits[lc->init]);
    assert_int_equal(lorad_st_writer_metadata(w, "lora", buf), 0);
    tiny_model_foreach(tm, add_base, w);
    int n_lora = lorad_model_n_lora_tensors(m);
    for (int i = 0; i < n_lora; i++) {
        const struct lorad_lora_tensor *t = lorad_model_lora_tensor(m, i);
        int64_t shape[2];
        int ndim = lorad_lora_tensor_shape(t, shape);
        assert_int_equal(lorad_st_writer_add(w, t->name, "F32", shape, ndim, init + t->offset,
                                             (size_t)(t->rows * t->cols) * 4), 0);
    }
}
