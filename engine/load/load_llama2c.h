/* llama2.c legacy checkpoints (.bin): seven little-endian int32 (dim, hidden_dim, n_layers,
 * n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means an untied classifier is
 * stored at the end), then f32 weights in the order token_embedding, rms_att[L], wq[L], wk[L],
 * wv[L], wo[L], rms_ffn[L], w1[L] (gate), w2[L] (down), w3[L] (up), rms_final, freq_cis_real and
 * freq_cis_imag (seq_len*head_size/2 each, ignored), then wcls when untied. q/k are in Meta's
 * interleaved RoPE order. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "load_common.h"
#include "weights.h"

#define LORAD_LLAMA2C_HEADER_BYTES 28

/* Parses the 28-byte header and checks it is sane and that file_size is exactly what it implies.
 * Returns 0 and *ret_cfg (norm_eps 1e-5, rope_theta 10000, bos 1, eos 2), or -EINVAL with err
 * naming source and the problem. Used both by the loader and by format auto-detection. */
int lorad_llama2c_parse_header(const uint8_t *header, size_t header_len, uint64_t file_size, const char *source,
                               struct lorad_llama_config *ret_cfg, struct lorad_error *err);

/* Loads path into *ret_w (HF layout): f32 tensors are used in place from the read-only shared
 * mapping, except wq/wk, which are permuted from Meta to HF RoPE order into owned copies.
 * lorad_base_weights_release(ret_w) frees everything. With mode PROBE nothing is converted
 * (load_common.h). */
int lorad_load_llama2c(const char *path, enum lorad_load_mode mode, struct lorad_base_weights *ret_w,
                       struct lorad_error *err);
