/* The micro-batch the model takes: data/ fills one from the corpus (lorad_batch_fill), the model
 * reads it, tests and benchmarks point one at their own arrays. One struct for both sides, so a
 * new per-token array is added in one place. */
#pragma once
#include <stdint.h>

/* A (B, T) micro-batch, every array row-major. labels[t] is the target of position t (already
 * shifted), -100 where not trained; NULL for inference-like use. positions NULL means 0..T-1 per
 * row; seg_start NULL means 0 (no packing). With packing, positions restart per sample and
 * seg_start[b*T+t] is the index in the row of the first token of t's sample: t attends to
 * [seg_start, t] only. */
struct lorad_batch {
    int32_t *tokens;    /* (B, T) input ids; padding = eos or 0 */
    int32_t *labels;    /* (B, T) or NULL */
    int32_t *positions; /* (B, T) or NULL */
    int32_t *seg_start; /* (B, T) or NULL */
    int B, T;           /* rows used, padded length */
    int64_t row0;       /* this batch's row 0 within the batch it is a share of (0 if whole): dropout
                         * masks are keyed by that row, so a process's share draws what the whole would */
    int cap_B, cap_T;   /* what lorad_batch_alloc allocated; 0 for a view over a caller's arrays */
    int64_t n_labels;   /* labels != -100, as lorad_batch_fill counted them (the model ignores it) */
    int64_t n_tokens;   /* non-padding tokens, likewise */
};

/* Allocates all four arrays for up to (cap_B, cap_T) and zeroes the rest. Returns 0 or -ENOMEM
 * (b is then empty and lorad_batch_free-able). */
int lorad_batch_alloc(struct lorad_batch *b, int cap_B, int cap_T);
/* Frees what lorad_batch_alloc allocated and empties b. */
void lorad_batch_free(struct lorad_batch *b);
