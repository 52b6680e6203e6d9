/* One query row against the cached keys and values of its sequence: the attention of a decoding
 * token (or of a prompt chunk's row whose earlier positions are cached). AVX-512, AVX2 and plain
 * x86-64 kernels, picked by lorad_isa_active(); the double-precision loop of the same maths is
 * lorad_decode_attend_ref, which tests/engine/test_decode_attention.c holds the kernels to. */
#pragma once
#include <stdint.h>

/* out (hd) = sum_j softmax_j(q . K_j / sqrt(hd)) V_j over j < n_keys, K_j and V_j the rows
 * j * stride of K and V (f32). scores (n_keys) is scratch. */
void lorad_decode_attend_f32(float *out, float *scores, const float *q, const float *K, const float *V,
                             int64_t stride, int n_keys, int hd);
/* The same with K and V stored as bf16 (the top halves of f32). */
void lorad_decode_attend_bf16(float *out, float *scores, const float *q, const uint16_t *K, const uint16_t *V,
                              int64_t stride, int n_keys, int hd);
/* Double-precision reference over f32 K and V. */
void lorad_decode_attend_ref(float *out, const float *q, const float *K, const float *V, int64_t stride, int n_keys,
                             int hd);
