/* One query row against the cached keys and values of its sequence: the attention of a decoding
 * token (or of a prompt chunk's row whose earlier positions are cached). Compiled with -O3 so the
 * fixed-width partial sums below vectorise (engine/CMakeLists.txt); the plain loop of the same
 * maths is lorad_decode_attend_ref, for the tests. */
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
