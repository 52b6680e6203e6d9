/* LoRA configuration and the flat parameter layout of an adapter.
 *
 * y = W x (+ b) + scale * B (A (dropout(x))), A (r, in), B (out, r), scale = alpha / r, or
 * alpha / sqrt(r) with use_rslora. With use_dora (DoRA, Liu et al. 2024, as PEFT defines it) each
 * adapted module also has a magnitude vector m (out) and
 *   y = W x (+ b) + (m/n - 1) * W d + (m/n) * scale * B (A d),   d = dropout(x),
 * n = the row norms of W + scale * B A, treated as a constant in backward (the paper's section
 * 4.3); m starts at the row norms of W, so an untrained DoRA adapter leaves the base unchanged. Every LoRA tensor lives in ONE flat f32 buffer and its gradient
 * in one flat buffer of the same layout (the single place a distributed allreduce would wrap);
 * a table maps PEFT names (without the "base_model.model." prefix) to offsets and shapes. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "llama_config.h"

enum lorad_lora_module {
    LORAD_Q_PROJ = 0,
    LORAD_K_PROJ,
    LORAD_V_PROJ,
    LORAD_O_PROJ,
    LORAD_GATE_PROJ,
    LORAD_UP_PROJ,
    LORAD_DOWN_PROJ,
    LORAD_LM_HEAD,
    LORAD_N_LORA_MODULES,
};
#define LORAD_LORA_ALL_LINEAR ((1u << LORAD_LM_HEAD) - 1u) /* the 7 projections, as PEFT's all-linear */

enum lorad_lora_init {
    LORAD_LORA_INIT_KAIMING = 0, /* PEFT default: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0 */
    LORAD_LORA_INIT_GAUSSIAN,    /* PEFT "gaussian": A ~ N(0, std = 1/r), B = 0 */
    LORAD_LORA_INIT_PISSA,       /* PEFT "pissa": A, B from the SVD of W (lora_init_decomp.h) */
    LORAD_LORA_INIT_OLORA,       /* PEFT "olora": A, B from the QR of W */
};

/* Whether init derives A and B from the base weights (PiSSA, OLoRA). Such an adapter trains on the
 * residual base W - scale B0 A0, with A0, B0 its initial values held frozen beside the parameters
 * (lorad_model_init_from_base), so it starts from exactly the base model's outputs. */
static inline bool lorad_lora_init_from_base(enum lorad_lora_init init) {
    return init == LORAD_LORA_INIT_PISSA || init == LORAD_LORA_INIT_OLORA;
}

struct lorad_lora_config {
    int r;
    float alpha;
    float dropout;     /* probability in [0, 1) */
    uint32_t targets;  /* bit set of enum lorad_lora_module */
    bool use_rslora;
    bool use_dora;
    enum lorad_lora_init init;
};

#define LORAD_MAX_LORA_RANK 4096

/* PEFT's init_lora_weights names, indexed by enum lorad_lora_init and NULL-terminated (the job
 * spec parses lora.init against it). */
extern const char *const lorad_lora_init_names[];

/* The name of init ("kaiming", "gaussian", "pissa", "olora"). */
const char *lorad_lora_init_name(enum lorad_lora_init init);

/* The one refusal of an init that does not combine with DoRA (PiSSA, OLoRA: DoRA's magnitudes
 * would start from the norms of a weight the initialisation then changes). Returns 0, or -EINVAL
 * with err on param "lora.init". The job spec checks it at creation, the model again at build. */
int lorad_lora_init_check_dora(enum lorad_lora_init init, bool use_dora, struct lorad_error *err);

/* Module name ("q_proj", ..., "lm_head"), the HF name of the module within a layer. */
const char *lorad_lora_module_name(enum lorad_lora_module m);

/* Parses target names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head,
 * or "all-linear" = the seven projections, not lm_head, as in PEFT) into *ret_targets.
 * -EINVAL with err naming "lora.target_modules" and the bad name. */
int lorad_lora_parse_targets(uint32_t *ret_targets, const char *const *names, int n_names, struct lorad_error *err);

/* Checks r, alpha, dropout, targets, init (PiSSA and OLoRA do not combine with DoRA, whose
 * magnitudes would have to start from the residual's norms); -EINVAL naming "lora.<field>". */
int lorad_lora_config_validate(const struct lorad_lora_config *lc, struct lorad_error *err);

float lorad_lora_scale(const struct lorad_lora_config *lc);

/* One LoRA tensor of the flat buffer. */
struct lorad_lora_tensor {
    char name[96];     /* PEFT name, e.g. "model.layers.3.self_attn.q_proj.lora_A.weight" */
    int layer;         /* -1 for lm_head */
    enum lorad_lora_module module;
    bool is_b;         /* lora_B (out, r) rather than lora_A (r, in) */
    bool is_magnitude; /* DoRA's lora_magnitude_vector (out): rows = out, cols = 1 */
    int64_t rows, cols;
    size_t offset;     /* in floats, into the flat parameter and gradient buffers */
};

/* The tensor's shape as PEFT stores it: 2 dimensions, or 1 (rows) for a magnitude vector.
 * Returns the number of dimensions written to shape. */
int lorad_lora_tensor_shape(const struct lorad_lora_tensor *t, int64_t shape[2]);

/* True when name (with or without "base_model.model.") ends as a DoRA magnitude vector does. */
bool lorad_lora_is_magnitude_name(const char *name);

/* (out, in) of a module for cfg. */
void lorad_lora_module_shape(const struct lorad_llama_config *cfg, enum lorad_lora_module m, int64_t *ret_out,
                             int64_t *ret_in);

/* Number of LoRA tensors and total floats for cfg/lc (no allocation). */
void lorad_lora_layout_size(const struct lorad_llama_config *cfg, const struct lorad_lora_config *lc,
                            int *ret_n_tensors, size_t *ret_n_floats);

/* Fills table (lorad_lora_layout_size entries) in a fixed order: layers ascending, modules in enum
 * order, A before B before the magnitude (with use_dora); lm_head last. */
void lorad_lora_layout(struct lorad_lora_tensor *table, const struct lorad_llama_config *cfg,
                       const struct lorad_lora_config *lc);

/* Initialises params per lc->init from counters (seed, tensor index, element): deterministic.
 * Magnitude vectors are set to 0, and so are A and B of the inits from the base (PiSSA, OLoRA):
 * they depend on the base, which the model fills in. */
void lorad_lora_init_params(float *params, const struct lorad_lora_tensor *table, int n_tensors,
                            const struct lorad_lora_config *lc, uint64_t seed);
