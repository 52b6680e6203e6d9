#include "optim.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void lorad_optim_config_defaults(struct lorad_optim_config *c) {
    memset(c, 0, sizeof *c);
    c->lr = 1e-3;
    c->beta1 = 0.9;
    c->beta2 = 0.999;
    c->eps = 1e-8;
    c->weight_decay = 0.01;
    c->schedule = LORAD_LR_CONSTANT;
}

int lorad_optim_config_validate(const struct lorad_optim_config *c, struct lorad_error *err) {
    if (!isfinite(c->lr) || c->lr < 0) return lorad_error_set(err, -EINVAL, "optimizer.lr", "optimizer.lr must be >= 0");
    if (!(c->beta1 >= 0 && c->beta1 < 1))
        return lorad_error_set(err, -EINVAL, "optimizer.beta1", "optimizer.beta1 must be in [0, 1)");
    if (!(c->beta2 >= 0 && c->beta2 < 1))
        return lorad_error_set(err, -EINVAL, "optimizer.beta2", "optimizer.beta2 must be in [0, 1)");
    if (!(c->eps > 0) || !isfinite(c->eps))
        return lorad_error_set(err, -EINVAL, "optimizer.eps", "optimizer.eps must be > 0");
    if (!isfinite(c->weight_decay) || c->weight_decay < 0)
        return lorad_error_set(err, -EINVAL, "optimizer.weight_decay", "optimizer.weight_decay must be >= 0");
    if (!isfinite(c->max_grad_norm))
        return lorad_error_set(err, -EINVAL, "optimizer.max_grad_norm", "optimizer.max_grad_norm must be finite");
    if (c->warmup_steps < 0)
        return lorad_error_set(err, -EINVAL, "optimizer.warmup_steps", "optimizer.warmup_steps must be >= 0");
    if (c->total_steps < 0)
        return lorad_error_set(err, -EINVAL, "optimizer.total_steps", "optimizer.total_steps must be >= 0");
    if (c->schedule != LORAD_LR_CONSTANT && c->schedule != LORAD_LR_LINEAR && c->schedule != LORAD_LR_COSINE)
        return lorad_error_set(err, -EINVAL, "optimizer.lr_scheduler", "optimizer.lr_scheduler is unknown");
    return 0;
}

double lorad_lr_at(const struct lorad_optim_config *c, int64_t s) {
    if (s < c->warmup_steps) return c->lr * (double)(s + 1) / (double)c->warmup_steps;
    if (c->schedule == LORAD_LR_CONSTANT) return c->lr;
    int64_t span = c->total_steps - c->warmup_steps;
    double p = (double)(s - c->warmup_steps) / (double)(span > 1 ? span : 1);
    if (c->schedule == LORAD_LR_LINEAR) return c->lr * (1.0 - p);
    return c->lr * 0.5 * (1.0 + cos(M_PI * p));
}

double lorad_grad_norm(const float *g, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    return sqrt(s);
}

int lorad_adamw_init(struct lorad_adamw *a, size_t n) {
    memset(a, 0, sizeof *a);
    a->m = calloc(n ? n : 1, sizeof(float));
    a->v = calloc(n ? n : 1, sizeof(float));
    if (!a->m || !a->v) {
        lorad_adamw_destroy(a);
        return -ENOMEM;
    }
    a->n = n;
    return 0;
}

void lorad_adamw_destroy(struct lorad_adamw *a) {
    free(a->m);
    free(a->v);
    memset(a, 0, sizeof *a);
}

int lorad_adamw_step(struct lorad_adamw *a, const struct lorad_optim_config *c, float *params, float *grads,
                     lorad_grad_reduce_fn reduce, void *reduce_user, double *ret_norm, double *ret_lr) {
    if (reduce) {
        int r = reduce(grads, a->n, reduce_user);
        if (r < 0) return r;
    }
    double norm = lorad_grad_norm(grads, a->n);
    double clip = 1.0;
    if (c->max_grad_norm > 0 && norm > c->max_grad_norm) clip = c->max_grad_norm / (norm + 1e-6);
    double lr = lorad_lr_at(c, a->step);
    int64_t t = a->step + 1;
    double bc1 = 1.0 - pow(c->beta1, (double)t), bc2 = 1.0 - pow(c->beta2, (double)t);
    double sqrt_bc2 = sqrt(bc2), step_size = lr / bc1, decay = 1.0 - lr * c->weight_decay;
    float b1 = (float)c->beta1, b2 = (float)c->beta2;
    for (size_t i = 0; i < a->n; i++) {
        float g = (float)(grads[i] * clip);
        /* a scaled element computes its group's lr, decay and step size the same way */
        double s = a->lr_scale ? (double)a->lr_scale[i] : 1.0;
        float p = (float)(params[i] * (a->lr_scale ? 1.0 - lr * s * c->weight_decay : decay));
        a->m[i] = b1 * a->m[i] + (1.0f - b1) * g;
        a->v[i] = b2 * a->v[i] + (1.0f - b2) * g * g;
        double denom = sqrt((double)a->v[i]) / sqrt_bc2 + c->eps;
        params[i] = (float)(p - (a->lr_scale ? lr * s / bc1 : step_size) * a->m[i] / denom);
        grads[i] = 0.0f;
    }
    a->step = t;
    if (ret_norm) *ret_norm = norm;
    if (ret_lr) *ret_lr = lr;
    return 0;
}
