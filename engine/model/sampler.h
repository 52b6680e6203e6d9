/* Picking the next token from a row of logits: greedy, or temperature with top-k and top-p cuts.
 * The draw is a pure function of (seed, step, logits), so the same seed gives the same text
 * whatever the thread count. Used by `lorad generate` and by the inference routes. */
#pragma once
#include <stdint.h>

#include "error.h"

#define LORAD_SAMPLER_MAX_TEMPERATURE 1000.0

struct lorad_sampling {
    double temperature; /* 0: greedy (the first index of the largest logit); else in (0, 1000] */
    int top_k;          /* 0: no cut; else keep the k largest logits (ties: the lower id first) */
    double top_p;       /* in (0, 1]; 1: no cut; else the shortest head whose probability reaches it */
    uint64_t seed;
};

struct lorad_sampler;

/* A sampler for rows of vocab logits. Returns 0 and *ret (free with lorad_sampler_free), -EINVAL
 * with err naming the field ("temperature", "top_k", "top_p") when a value is out of range or a
 * cut is asked for with greedy decoding, or -ENOMEM. */
int lorad_sampler_new(struct lorad_sampler **ret, const struct lorad_sampling *opt, int vocab, struct lorad_error *err);
void lorad_sampler_free(struct lorad_sampler *s);

/* The token for generation step `step` from logits (vocab), which must be finite. Deterministic
 * in (seed, step, logits). */
int32_t lorad_sampler_pick(struct lorad_sampler *s, const float *logits, int64_t step);
