#include "formats_testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

const struct lorad_tensor *fmt_hf_tensor(const struct lorad_base_weights *w, const char *name) {
    if (strcmp(name, "model.embed_tokens.weight") == 0) return &w->embed;
    if (strcmp(name, "model.norm.weight") == 0) return &w->final_norm;
    if (strcmp(name, "lm_head.weight") == 0) return &w->lm_head;
    int l, n = 0;
    char rest[96];
    if (sscanf(name, "model.layers.%d.%95s%n", &l, rest, &n) != 2 || l < 0 || l >= w->cfg.n_layers) return NULL;
    const struct lorad_layer_weights *L = &w->layers[l];
    static const struct { const char *suffix; size_t off; } map[] = {
        {"input_layernorm.weight", offsetof(struct lorad_layer_weights, attn_norm)},
        {"self_attn.q_proj.weight", offsetof(struct lorad_layer_weights, wq)},
        {"self_attn.k_proj.weight", offsetof(struct lorad_layer_weights, wk)},
        {"self_attn.v_proj.weight", offsetof(struct lorad_layer_weights, wv)},
        {"self_attn.o_proj.weight", offsetof(struct lorad_layer_weights, wo)},
        {"post_attention_layernorm.weight", offsetof(struct lorad_layer_weights, ffn_norm)},
        {"mlp.gate_proj.weight", offsetof(struct lorad_layer_weights, w_gate)},
        {"mlp.up_proj.weight", offsetof(struct lorad_layer_weights, w_up)},
        {"mlp.down_proj.weight", offsetof(struct lorad_layer_weights, w_down)},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(rest, map[i].suffix) == 0) return (const struct lorad_tensor *)((const char *)L + map[i].off);
    return NULL;
}

float fmt_tensor_get(const struct lorad_tensor *t, int64_t i) { return lorad_tensor_value(t, i / t->cols, i % t->cols); }

void fmt_write_fixtures(const char *dir) {
    char *argv[] = {LORAD_PYTHON, LORAD_SOURCE_DIR "/tests/formats/write_fixtures.py", (char *)dir, NULL};
    assert_int_equal(test_run(argv), 0);
}
