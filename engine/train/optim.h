/* AdamW over the flat LoRA buffers, learning-rate schedules and global-norm clipping, with the
 * semantics of torch.optim.AdamW and docs/reference-interchange.md. State is two flat f32 buffers
 * (m, v) plus the step count, so a checkpoint can save and restore it bit-exactly. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "error.h"

enum lorad_lr_schedule {
    LORAD_LR_CONSTANT = 0,
    LORAD_LR_LINEAR,
    LORAD_LR_COSINE,
};

struct lorad_optim_config {
    double lr;
    double beta1, beta2, eps;
    double weight_decay;   /* decoupled: p -= lr * wd * p */
    double max_grad_norm;  /* <= 0: no clipping */
    int64_t warmup_steps;
    int64_t total_steps;   /* optimiser steps of the whole run (for linear/cosine decay) */
    enum lorad_lr_schedule schedule;
};

/* Fills torch defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, wd 0.01, no clipping, constant. */
void lorad_optim_config_defaults(struct lorad_optim_config *c);
/* -EINVAL naming "optimizer.<field>" for out-of-range values. */
int lorad_optim_config_validate(const struct lorad_optim_config *c, struct lorad_error *err);

/* Learning rate of 0-based step s: linear warmup lr*(s+1)/warmup for s < warmup, then constant,
 * linear to 0 or cosine to 0 with progress (s - warmup) / max(1, total - warmup). */
double lorad_lr_at(const struct lorad_optim_config *c, int64_t step);

/* Global L2 norm of g (n), accumulated in double in a fixed order. */
double lorad_grad_norm(const float *g, size_t n);

struct lorad_adamw {
    size_t n;
    float *m;      /* (n) first moment */
    float *v;      /* (n) second moment */
    int64_t step;  /* optimiser steps taken so far */
    const float *lr_scale; /* (n) or NULL: element i's learning rate is lr * lr_scale[i], as if it were
                            * in its own torch param group (LoRA+: B at lr_ratio times A's); borrowed */
};

/* 0 or -ENOMEM. Moments start at zero. */
int lorad_adamw_init(struct lorad_adamw *a, size_t n);
void lorad_adamw_destroy(struct lorad_adamw *a);

/* Called on the summed gradients before the norm: the one place a data-parallel allreduce goes. */
typedef int (*lorad_grad_reduce_fn)(float *grads, size_t n, void *user);

/* One optimiser step on params (n) with grads (n), in this order: reduce hook (if any), global
 * norm (returned in *ret_norm, before clipping), clip by max_grad_norm/(norm+1e-6) when the norm
 * exceeds max_grad_norm, AdamW with lorad_lr_at(c, a->step) (returned in *ret_lr; times lr_scale[i]
 * for element i, weight decay included, when a->lr_scale is set), step += 1,
 * grads zeroed for the next accumulation. Returns 0 or the hook's error (nothing updated). */
int lorad_adamw_step(struct lorad_adamw *a, const struct lorad_optim_config *c, float *params, float *grads,
                     lorad_grad_reduce_fn reduce, void *reduce_user, double *ret_norm, double *ret_lr);
