/* Hugging Face model directories: config.json (LlamaForCausalLM and compatible decoders) plus
 * model.safetensors, or shards listed by model.safetensors.index.json ("weight_map"). */
#pragma once
#include <stddef.h>

#include "error.h"
#include "load_common.h"
#include "llama_config.h"
#include "weights.h"

/* Parses the text of a config.json (len bytes; source names the file in errors) into *ret_cfg
 * with transformers' LlamaConfig defaults for absent keys. Accepts model_type "llama", "mistral"
 * (sliding_window ignored) and "qwen2" (attention_bias defaults to true), rope_scaling or
 * rope_parameters of type "default"/null or "llama3". eos_token_id may be a list (its first
 * entry is used). The result passes lorad_llama_config_validate(). Returns 0 or -EINVAL naming
 * the file and the key. */
int lorad_hf_config_parse(const char *text, size_t len, const char *source, struct lorad_llama_config *ret_cfg,
                          struct lorad_error *err);

/* Reads dir/config.json with lorad_hf_config_parse. */
int lorad_hf_config_load(const char *dir, struct lorad_llama_config *ret_cfg, struct lorad_error *err);

/* Loads the HF directory dir into *ret_w (HF layout). F32 and BF16 tensors point into the
 * read-only shared mappings; F16 is converted into owned F32 buffers. ret_w->owner is a
 * struct lorad_load_owner; lorad_base_weights_release(ret_w) frees everything. Tied
 * embeddings make lm_head the embed view. Missing or misshapen tensors fail with the HF name,
 * the file and the expected shape. The result passes lorad_base_weights_validate(). With mode
 * PROBE nothing is converted (load_common.h). */
int lorad_load_hf_dir(const char *dir, enum lorad_load_mode mode, struct lorad_base_weights *ret_w,
                      struct lorad_error *err);
