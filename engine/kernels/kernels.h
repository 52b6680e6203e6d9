/* The non-GEMM operations of a Llama block, as *_forward / *_backward pairs (llm.c style:
 * outputs first, sizes last, a shape comment on each tensor). Each threaded kernel splits its rows
 * statically over the pool (NULL pool = run on the caller) so results do not depend on
 * scheduling; each has a plain reference loop (*_ref, double accumulation) that the tests compare
 * against. Backward kernels that feed a residual stream accumulate (+=) into their dx. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "gemm.h"
#include "llama_config.h"
#include "threadpool.h"
#include "weights.h"

#define LORAD_IGNORE_INDEX (-100)
/* Query rows per attention block: scores live in a (LORAD_ATTN_BLOCK, T) scratch per thread. */
#define LORAD_ATTN_BLOCK 64

/* out (N, C) = rows tokens[i] of E (V, C). tokens must be in range (the caller checks). */
void lorad_embedding_forward(struct lorad_pool *pool, float *out, const int32_t *tokens,
                             const struct lorad_tensor *E, int64_t N, int64_t C);

/* out (N, C) = x * rsqrt(mean(x^2) + eps) * w; inv (N) keeps the rsqrt for backward. */
void lorad_rmsnorm_forward(struct lorad_pool *pool, float *out, float *inv, const float *x, const float *w,
                           float eps, int64_t N, int64_t C);
/* dx (N, C) += d out/dx applied to dout (N, C); w frozen (no dw). */
void lorad_rmsnorm_backward(struct lorad_pool *pool, float *dx, const float *dout, const float *x,
                            const float *inv, const float *w, int64_t N, int64_t C);
void lorad_rmsnorm_forward_ref(float *out, float *inv, const float *x, const float *w, float eps, int64_t N, int64_t C);
void lorad_rmsnorm_backward_ref(float *dx, const float *dout, const float *x, const float *inv, const float *w,
                                int64_t N, int64_t C);

/* Inverse frequencies (head_dim/2) in double: theta^(-2i/head_dim), llama3-scaled when configured
 * (low/high frequency wavelengths with smooth interpolation, as transformers'
 * _compute_llama3_parameters). */
void lorad_rope_inv_freq(double *inv_freq, const struct lorad_llama_config *cfg);
/* cos/sin tables (P, head_dim/2) for positions 0..P-1, computed in double. */
void lorad_rope_tables(float *cos_t, float *sin_t, const struct lorad_llama_config *cfg, int64_t P);
/* In place on x (N, n_heads*head_dim), HF rotate_half layout, token i at position pos[i]:
 * x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin with x1/x2 the two halves of each head.
 * backward applies the transposed rotation to dx in place. */
void lorad_rope_forward(struct lorad_pool *pool, float *x, const int32_t *pos, const float *cos_t,
                        const float *sin_t, int64_t N, int n_heads, int head_dim);
void lorad_rope_backward(struct lorad_pool *pool, float *dx, const int32_t *pos, const float *cos_t,
                         const float *sin_t, int64_t N, int n_heads, int head_dim);
void lorad_rope_forward_ref(float *x, const int32_t *pos, const struct lorad_llama_config *cfg, int64_t N, int n_heads);

/* Causal softmax attention with GQA and packing. q (B, T, H*hd), k/v (B, T, KV*hd), query head h
 * reads kv head h / (H/KV); token t of row b attends to keys [seg[b*T+t], t] (seg = start of its
 * packed sample, 0 without packing). out (B, T, H*hd); lse (B, H, T) is the row log-sum-exp of
 * the scaled scores, kept for backward. scratch: per thread lorad_attention_scratch_floats(T). */
struct lorad_attn_shape {
    int B, T, H, KV, hd;
};
int64_t lorad_attention_scratch_floats(int T);
void lorad_attention_forward(struct lorad_pool *pool, float *const *scratch, float *out, float *lse,
                             const float *q, const float *k, const float *v, const int32_t *seg,
                             struct lorad_attn_shape s);
/* dq (B,T,H*hd), dk/dv (B,T,KV*hd) are overwritten. */
void lorad_attention_backward(struct lorad_pool *pool, float *const *scratch, float *dq, float *dk, float *dv,
                              const float *dout, const float *q, const float *k, const float *v,
                              const float *out, const float *lse, const int32_t *seg, struct lorad_attn_shape s);
void lorad_attention_forward_ref(float *out, const float *q, const float *k, const float *v, const int32_t *seg,
                                 struct lorad_attn_shape s);

/* out (n) = silu(gate) * up. backward: dgate, dup (n) overwritten. */
void lorad_swiglu_forward(struct lorad_pool *pool, float *out, const float *gate, const float *up, int64_t n);
void lorad_swiglu_backward(struct lorad_pool *pool, float *dgate, float *dup, const float *dout, const float *gate,
                           const float *up, int64_t n);
void lorad_swiglu_forward_ref(float *out, const float *gate, const float *up, int64_t n);

/* Cross-entropy of one chunk of logits (N, V) against labels (N) (LORAD_IGNORE_INDEX skipped).
 * row_loss (N) receives each row's loss (0 for ignored rows) and row_correct (N) 1 when the
 * first argmax equals the label. With grad, logits are overwritten by
 * dlogits = (softmax - onehot) * grad_scale (zero rows for ignored labels). */
void lorad_crossentropy_forward_backward(struct lorad_pool *pool, float *logits, double *row_loss,
                                         uint8_t *row_correct, const int32_t *labels, float grad_scale,
                                         bool grad, int64_t N, int64_t V);
void lorad_crossentropy_ref(double *row_loss, float *dlogits, const float *logits, const int32_t *labels,
                            float grad_scale, int64_t N, int64_t V);
