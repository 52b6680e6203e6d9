/* Data-driven LoRA initialisations from the base weight: PEFT's init_lora_weights="pissa" and
 * "olora", as pure functions on one dense f32 matrix (the model decides which modules get them).
 *
 * For a base weight W (out, in), rank r and the adapter's scale s (alpha / r, or alpha / sqrt(r)
 * with rsLoRA; lorad_lora_scale()):
 *   PiSSA (Meng et al. 2024): thin SVD W = V S U^T, S descending;
 *         A = diag(sqrt(S[:r] / s)) U^T[:r]    (r, in)
 *         B = V[:, :r] diag(sqrt(S[:r] / s))   (out, r)
 *         so s B A = V[:, :r] diag(S[:r]) U^T[:r], the best rank-r approximation of W.
 *   OLoRA (Buyukakyuz 2024): thin QR W = Q R (Householder, as LAPACK and torch.linalg.qr);
 *         B = Q[:, :r] (out, r), orthonormal columns;  A = R[:r] (r, in), upper trapezoidal.
 *         s does not enter A or B (PEFT does not rescale them), so s B A = s Q[:, :r] R[:r].
 * Either way the model then trains on the residual base W - s B A (lorad_lora_init_residual), so
 * that at step 0 the adapted layer computes exactly the original W x.
 *
 * The factorisations run in double (LAPACK dgesdd, and dgeqrf + dorgqr on the first r columns,
 * from OpenBLAS); only the outputs are rounded to f32. PiSSA costs a full SVD (O(out in k) time,
 * k = min(out, in); seconds for a 2048 x 5632 weight on one core); OLoRA only r Householder steps
 * and one product (O(out in r)). Signs follow LAPACK's conventions; a sign flip of a singular pair
 * (or of a column of Q with the row of R) changes neither B A nor training under Adam, which is
 * invariant to the sign of a coordinate.
 *
 * An adapter trained from these inits fits only the residual base: PEFT exports it as a plain
 * LoRA of rank 2r ([A; A0], [B, -B0], with r and alpha doubled, alpha * sqrt(2) with rsLoRA),
 * A0/B0 the initial factors (save_pretrained(path_initial_model_for_weight_conversion=...)). */
#pragma once
#include <stdint.h>

#include "error.h"

/* PiSSA factors of W (out, in), row-major, into ret_A (r, in) and ret_B (out, r), row-major.
 * Requires 1 <= r <= min(out, in) (else -EINVAL naming "lora.r"), scale finite and > 0 (else
 * -EINVAL naming "lora.alpha"), every element of W finite (else -ERANGE), out and in within
 * LAPACK's 32-bit sizes (else -EOVERFLOW). -ENOMEM when the scratch
 * (lorad_lora_init_pissa_scratch_bytes) cannot be allocated; -ERANGE when the SVD does not
 * converge or the factors overflow f32. ret_A and ret_B are written only on success and must not
 * overlap W. Deterministic for a given OpenBLAS build and kernel; the engine's thread count does
 * not enter. */
int lorad_lora_init_pissa(float *ret_A /* (r, in) */, float *ret_B /* (out, r) */, const float *W /* (out, in) */,
                          int64_t out, int64_t in, int r, float scale, struct lorad_error *err);

/* OLoRA factors of W (out, in) into ret_A = R[:r] (r, in) and ret_B = Q[:, :r] (out, r), with the
 * same requirements, errors and guarantees as lorad_lora_init_pissa (scale is checked the same
 * way for symmetry, though only the residual uses it; -ERANGE also when R overflows f32). */
int lorad_lora_init_olora(float *ret_A /* (r, in) */, float *ret_B /* (out, r) */, const float *W /* (out, in) */,
                          int64_t out, int64_t in, int r, float scale, struct lorad_error *err);

/* The bytes of scratch lorad_lora_init_pissa / _olora allocate for these sizes (PiSSA: an f64
 * copy of W, its singular vectors and dgesdd's workspace; OLoRA: Q[:, :r] and R[:r] in f64 and
 * the QR workspace; LAPACK's own workspace query), so a caller can respect a memory limit before
 * starting. ret_bytes is written only on success; the errors are
 * the size errors of the init call (-EINVAL for r, -EOVERFLOW). PiSSA needs about
 * 8 (out in + k (out + in) + 4 k^2) bytes, k = min(out, in); OLoRA about 8 r (out + in). */
int lorad_lora_init_pissa_scratch_bytes(int64_t *ret_bytes, int64_t out, int64_t in, int r, struct lorad_error *err);
int lorad_lora_init_olora_scratch_bytes(int64_t *ret_bytes, int64_t out, int64_t in, int r, struct lorad_error *err);

/* residual (out, in) = W - scale * B @ A, each element accumulated in double and rounded once,
 * so that residual + scale * B A reproduces W to f32 rounding with the f32 factors the model
 * holds. residual may be W itself (in place). Inputs assumed valid (the shapes of a successful
 * init call); allocates nothing. */
void lorad_lora_init_residual(float *residual /* (out, in) */, const float *W /* (out, in) */,
                              const float *A /* (r, in) */, const float *B /* (out, r) */, int64_t out, int64_t in,
                              int r, float scale);
