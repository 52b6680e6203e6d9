/* Llama-architecture GGUF models: hyper-parameters from "llama.*" keys, tensors (F32, F16, BF16,
 * Q8_0, Q4_0) converted to the engine's HF layout, and the embedded tokenizer vocabulary. */
#pragma once
#include "error.h"
#include "load_common.h"
#include "load_vocab.h"
#include "weights.h"

/* Loads path into *ret_w. q/k are stored by GGUF in Meta's interleaved RoPE order and are
 * permuted into HF rotate_half order (owned copies); F16/Q8_0/Q4_0 are dequantised to owned F32;
 * other F32/BF16 tensors are used in place from the shared read-only mapping. If ret_vocab is
 * non-NULL it receives the tokenizer.ggml.* arrays (all fields NULL/0/-1 when the file has no
 * vocabulary); its pointers are owned by ret_w->owner and die with lorad_base_weights_release().
 * With mode PROBE nothing is converted (load_common.h). Returns 0 or -EINVAL/-ENOMEM with err
 * naming the file and the key or tensor. */
int lorad_load_gguf(const char *path, enum lorad_load_mode mode, struct lorad_base_weights *ret_w,
                    struct lorad_vocab_arrays *ret_vocab, struct lorad_error *err);
