#include "lora.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "rng.h"

static const char *const module_names[LORAD_N_LORA_MODULES] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head",
};
static const char *const module_paths[LORAD_N_LORA_MODULES] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",    "lm_head",
};

const char *const lorad_lora_init_names[] = {"kaiming", "gaussian", "pissa", "olora", NULL};

const char *lorad_lora_init_name(enum lorad_lora_init init) {
    return (unsigned)init <= LORAD_LORA_INIT_OLORA ? lorad_lora_init_names[init] : "?";
}

int lorad_lora_init_check_dora(enum lorad_lora_init init, bool use_dora, struct lorad_error *err) {
    if (lorad_lora_init_from_base(init) && use_dora)
        return lorad_error_set(err, -EINVAL, "lora.init",
                               "lora.init %s does not combine with lora.use_dora: choose one of them",
                               lorad_lora_init_name(init));
    return 0;
}

const char *lorad_lora_module_name(enum lorad_lora_module m) {
    return m < LORAD_N_LORA_MODULES ? module_names[m] : "?";
}

int lorad_lora_parse_targets(uint32_t *ret_targets, const char *const *names, int n_names, struct lorad_error *err) {
    uint32_t t = 0;
    if (n_names <= 0)
        return lorad_error_set(err, -EINVAL, "lora.target_modules", "lora.target_modules is empty");
    for (int i = 0; i < n_names; i++) {
        const char *n = names[i];
        if (!n) return lorad_error_set(err, -EINVAL, "lora.target_modules", "lora.target_modules[%d] is null", i);
        if (strcmp(n, "all-linear") == 0) {
            t |= LORAD_LORA_ALL_LINEAR;
            continue;
        }
        int found = -1;
        for (int m = 0; m < LORAD_N_LORA_MODULES; m++)
            if (strcmp(n, module_names[m]) == 0) found = m;
        if (found < 0)
            return lorad_error_set(err, -EINVAL, "lora.target_modules",
                                   "lora.target_modules: unknown target \"%.64s\" (expected q_proj, k_proj, v_proj, "
                                   "o_proj, gate_proj, up_proj, down_proj, lm_head or all-linear)", n);
        t |= 1u << found;
    }
    *ret_targets = t;
    return 0;
}

int lorad_lora_config_validate(const struct lorad_lora_config *lc, struct lorad_error *err) {
    if (lc->r <= 0 || lc->r > LORAD_MAX_LORA_RANK)
        return lorad_error_set(err, -EINVAL, "lora.r", "lora.r must be in [1, %d], got %d", LORAD_MAX_LORA_RANK, lc->r);
    if (!isfinite(lc->alpha) || lc->alpha <= 0)
        return lorad_error_set(err, -EINVAL, "lora.alpha", "lora.alpha must be finite and > 0, got %g", lc->alpha);
    if (!(lc->dropout >= 0.0f && lc->dropout < 1.0f))
        return lorad_error_set(err, -EINVAL, "lora.dropout", "lora.dropout must be in [0, 1), got %g", lc->dropout);
    if (lc->targets == 0 || (lc->targets >> LORAD_N_LORA_MODULES) != 0)
        return lorad_error_set(err, -EINVAL, "lora.target_modules", "lora.target_modules selects no known module");
    if (lc->init != LORAD_LORA_INIT_KAIMING && lc->init != LORAD_LORA_INIT_GAUSSIAN && !lorad_lora_init_from_base(lc->init))
        return lorad_error_set(err, -EINVAL, "lora.init", "lora.init is unknown");
    return lorad_lora_init_check_dora(lc->init, lc->use_dora, err);
}

int lorad_lora_tensor_shape(const struct lorad_lora_tensor *t, int64_t shape[2]) {
    shape[0] = t->rows;
    shape[1] = t->cols;
    return t->is_magnitude ? 1 : 2;
}

bool lorad_lora_is_magnitude_name(const char *name) {
    static const char leaf[] = ".lora_magnitude_vector";
    size_t n = strlen(name), k = sizeof leaf - 1;
    return n > k && strcmp(name + n - k, leaf) == 0;
}

float lorad_lora_scale(const struct lorad_lora_config *lc) {
    return lc->use_rslora ? (float)(lc->alpha / sqrt((double)lc->r)) : (float)((double)lc->alpha / lc->r);
}

void lorad_lora_module_shape(const struct lorad_llama_config *c, enum lorad_lora_module m, int64_t *ret_out,
                             int64_t *ret_in) {
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    int64_t out = 0, in = c->dim;
    switch (m) {
    case LORAD_Q_PROJ: out = q; break;
    case LORAD_K_PROJ:
    case LORAD_V_PROJ: out = kv; break;
    case LORAD_O_PROJ: out = c->dim; in = q; break;
    case LORAD_GATE_PROJ:
    case LORAD_UP_PROJ: out = c->hidden_dim; break;
    case LORAD_DOWN_PROJ: out = c->dim; in = c->hidden_dim; break;
    case LORAD_LM_HEAD: out = c->vocab_size; break;
    case LORAD_N_LORA_MODULES: break;
    }
    *ret_out = out;
    *ret_in = in;
}

/* Visits the tensors in layout order; table may be NULL to only count. */
static void layout(struct lorad_lora_tensor *table, const struct lorad_llama_config *c,
                   const struct lorad_lora_config *lc, int *ret_n, size_t *ret_floats) {
    int n = 0;
    size_t off = 0;
    for (int l = -1; l <= c->n_layers; l++) {
        /* layers first, lm_head (l == n_layers) last; l == -1 is unused */
        if (l < 0) continue;
        for (int m = 0; m < LORAD_N_LORA_MODULES; m++) {
            bool head = m == LORAD_LM_HEAD;
            if ((l == c->n_layers) != head || !(lc->targets & (1u << m))) continue;
            int64_t out, in;
            lorad_lora_module_shape(c, (enum lorad_lora_module)m, &out, &in);
            /* part 0: A (r, in), 1: B (out, r), 2: the DoRA magnitude (out) */
            for (int part = 0; part < (lc->use_dora ? 3 : 2); part++) {
                int64_t rows = part == 0 ? lc->r : out, cols = part == 0 ? in : part == 1 ? lc->r : 1;
                if (table) {
                    struct lorad_lora_tensor *t = &table[n];
                    memset(t, 0, sizeof *t);
                    const char *leaf = part == 0 ? "lora_A.weight" : part == 1 ? "lora_B.weight" : "lora_magnitude_vector";
                    if (head)
                        snprintf(t->name, sizeof t->name, "lm_head.%s", leaf);
                    else
                        snprintf(t->name, sizeof t->name, "model.layers.%d.%s.%s", l, module_paths[m], leaf);
                    t->layer = head ? -1 : l;
                    t->module = (enum lorad_lora_module)m;
                    t->is_b = part == 1;
                    t->is_magnitude = part == 2;
                    t->rows = rows;
                    t->cols = cols;
                    t->offset = off;
                }
                off += (size_t)rows * (size_t)cols;
                n++;
            }
        }
    }
    if (ret_n) *ret_n = n;
    if (ret_floats) *ret_floats = off;
}

void lorad_lora_layout_size(const struct lorad_llama_config *cfg, const struct lorad_lora_config *lc,
                            int *ret_n_tensors, size_t *ret_n_floats) {
    layout(NULL, cfg, lc, ret_n_tensors, ret_n_floats);
}

void lorad_lora_layout(struct lorad_lora_tensor *table, const struct lorad_llama_config *cfg,
                       const struct lorad_lora_config *lc) {
    layout(table, cfg, lc, NULL, NULL);
}

void lorad_lora_init_params(float *params, const struct lorad_lora_tensor *table, int n_tensors,
                            const struct lorad_lora_config *lc, uint64_t seed) {
    for (int i = 0; i < n_tensors; i++) {
        const struct lorad_lora_tensor *t = &table[i];
        float *p = params + t->offset;
        int64_t n = t->rows * t->cols;
        if (t->is_b || t->is_magnitude || lorad_lora_init_from_base(lc->init)) {
            memset(p, 0, sizeof(float) * (size_t)n);
            continue;
        }
        double bound = 1.0 / sqrt((double)t->cols), std = 1.0 / lc->r;
        for (int64_t e = 0; e < n; e++) {
            uint64_t bits = lorad_rng_u64(seed, 0x6c6f7261 /* "lora" */, (uint64_t)i, (uint64_t)e, 0);
            p[e] = lc->init == LORAD_LORA_INIT_KAIMING ? (float)((2.0 * lorad_rng_uniform(bits) - 1.0) * bound)
                                                       : (float)(lorad_rng_normal(bits) * std);
        }
    }
}
