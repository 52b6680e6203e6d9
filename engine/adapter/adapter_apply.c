#include "adapter_apply.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Contract: a is borrowed; *ret is written only on success. */
int lorad_adapter_lora_config(const struct lorad_adapter *a, struct lorad_lora_config *ret, struct lorad_error *err) {
    uint32_t targets = 0;
    for (int i = 0; i < a->n_tensors; i++) {
        const char *name = a->tensors[i].name;
        if (strncmp(name, "lm_head.", 8) == 0) {
            targets |= 1u << LORAD_LM_HEAD;
            continue;
        }
        for (int m = 0; m < LORAD_LM_HEAD; m++) {
            char key[32];
            snprintf(key, sizeof key, ".%s.lora_", lorad_lora_module_name((enum lorad_lora_module)m));
            if (strstr(name, key)) targets |= 1u << m;
        }
    }
    struct lorad_lora_config lc = {.r = a->meta.r,
                                   .alpha = (float)a->meta.alpha,
                                   .dropout = 0.0f,
                                   .targets = targets,
                                   .use_rslora = a->meta.use_rslora,
                                   .use_dora = a->meta.use_dora,
                                   .init = LORAD_LORA_INIT_KAIMING};
    int rc = lorad_lora_config_validate(&lc, err);
    if (rc < 0) {
        char what[sizeof err->message];
        snprintf(what, sizeof what, "%s", err->message);
        return lorad_error_set(err, rc, "adapter", "%s: %s", a->path, what);
    }
    *ret = lc;
    return 0;
}

/* Contract: a is borrowed; m's LoRA tensors named by a are overwritten, the rest untouched. */
int lorad_adapter_copy_into(const struct lorad_adapter *a, struct lorad_model *m, struct lorad_error *err) {
    for (int i = 0; i < a->n_tensors; i++) {
        const struct lorad_adapter_tensor *t = &a->tensors[i];
        int rc = lorad_model_set_lora_tensor(m, t->name, t->data, t->rows, t->cols, err);
        if (rc < 0) return rc;
    }
    return 0;
}

/* Contract: a is borrowed; on failure m's LoRA buffer holds zeros and part of a. */
int lorad_adapter_install(const struct lorad_adapter *a, struct lorad_model *m, struct lorad_error *err) {
    size_t n;
    float *params = lorad_model_params(m, &n);
    memset(params, 0, n * sizeof *params);
    int rc = lorad_adapter_copy_into(a, m, err);
    if (rc < 0) snprintf(err->param, sizeof err->param, "%s", "adapter");
    return rc;
}
