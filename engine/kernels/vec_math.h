/* Vectorised elementwise rows for the non-GEMM hot loops (softmax, cross-entropy, SwiGLU).
 * Compiled twice, for AVX2+FMA and for baseline x86-64, and picked at run time by CPU feature,
 * so the binary stays portable (no -march). exp uses a Cody-Waite range reduction and the
 * degree-6 polynomial of Cephes' expf (relative error ~2e-7); inputs below -87.3, including the
 * -inf of attention masks, give exactly 0. */
#pragma once
#include <stdint.h>

/* v[j] = exp(v[j] - shift), j < n. */
void lorad_exp_shift_row(float *v, int64_t n, float shift);
/* out[i] = silu(gate[i]) * up[i], i < n. */
void lorad_swiglu_row(float *out, const float *gate, const float *up, int64_t n);
/* dgate, dup from dout (dup may alias dout). */
void lorad_swiglu_back_row(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int64_t n);
