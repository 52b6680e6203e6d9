/* LoRA adapters on disk, in the formats other tools read:
 *   - Hugging Face PEFT: DIR/adapter_model.safetensors (F32, __metadata__ {"format":"pt"}, tensors
 *     "base_model.model.<module>.lora_A.weight" (r, in) and ".lora_B.weight" (out, r)) and
 *     DIR/adapter_config.json;
 *   - llama.cpp GGUF LoRA: general.type "adapter", adapter.type "lora", adapter.lora.alpha,
 *     tensors "blk.N.attn_q.weight.lora_a" / ".lora_b" with q/k rows in GGUF's (Meta) RoPE order;
 *   - a tar of the PEFT directory, for one-file downloads.
 * The writers take a plain list of tensors, so they know nothing of the engine's buffers. Every file
 * appears atomically (temp + fsync + rename). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "llama_config.h"

#define LORAD_ADAPTER_MAX_TARGETS 8

struct lorad_adapter_meta {
    int r;
    double alpha;
    double dropout;
    bool use_rslora;
    bool use_dora;                               /* DoRA: every module has a lora_magnitude_vector */
    int n_targets;
    char targets[LORAD_ADAPTER_MAX_TARGETS][16]; /* q_proj ... down_proj, lm_head */
    char base_model[1024];                       /* base_model_name_or_path */
};

/* One LoRA matrix, named as in PEFT without the "base_model.model." prefix, e.g.
 * "model.layers.3.self_attn.q_proj.lora_A.weight" (r, in) or "lm_head.lora_B.weight" (out, r),
 * or DoRA's "....q_proj.lora_magnitude_vector" (out), held as (out, 1) and stored 1-D.
 * data is row-major f32, borrowed for the duration of the call. */
struct lorad_adapter_tensor {
    char name[128];
    const float *data;
    int64_t rows;
    int64_t cols;
};

/* Writes DIR/adapter_model.safetensors and DIR/adapter_config.json (DIR is created if missing). */
int lorad_adapter_write_peft(const char *dir, const struct lorad_adapter_meta *meta,
                             const struct lorad_adapter_tensor *tensors, int n_tensors, struct lorad_error *err);

/* Writes a llama.cpp LoRA GGUF (v3) for a base with config cfg; a DoRA adapter (meta->use_dora)
 * is refused with -EOPNOTSUPP and param "format", as the format cannot hold it. lora_B rows of q_proj / k_proj are
 * permuted from HF's rotate_half order to GGUF's interleaved order. With use_rslora the stored alpha
 * is alpha*sqrt(r), because llama.cpp scales by alpha/r. */
int lorad_adapter_write_gguf(const char *path, const struct lorad_adapter_meta *meta,
                             const struct lorad_adapter_tensor *tensors, int n_tensors,
                             const struct lorad_llama_config *cfg, struct lorad_error *err);

/* Reads DIR/adapter_config.json into ret_meta, checking peft_type "LORA" and the fields lorad
 * supports; err names the file and key on any mismatch. */
int lorad_adapter_read_config(const char *dir, struct lorad_adapter_meta *ret_meta, struct lorad_error *err);

/* The same checks on the len bytes of an adapter_config.json held in memory (e.g. a member of an
 * adapter.tar); source names it in errors. */
int lorad_adapter_parse_config(const char *text, size_t len, const char *source, struct lorad_adapter_meta *ret_meta,
                               struct lorad_error *err);

/* PEFT scale of an adapter: alpha/r, or alpha/sqrt(r) with rslora. */
double lorad_adapter_scale(const struct lorad_adapter_meta *meta);
