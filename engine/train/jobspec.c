#include "jobspec.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

/* One row per scalar field: where it lives, its JSON type, bounds, default and whether JSON null
 * is allowed (null stores 0, meaning "off"). The parser, the defaults and the normaliser all read
 * this table, so they cannot disagree. */
enum field_type { F_INT, F_INT64, F_NUM, F_BOOL, F_ENUM };

struct field {
    const char *name;
    enum field_type type;
    size_t offset;
    double min, max;    /* inclusive bounds for numbers */
    bool min_exclusive; /* e.g. learning_rate > 0 */
    bool max_exclusive; /* e.g. adam_beta1 < 1 */
    bool nullable;
    double def;         /* default for numbers/bools/enums (enum: index) */
    bool def_null;      /* the default is null */
    const char *const *choices; /* F_ENUM: NULL-terminated names, index = value */
};

static const char *const schedule_names[] = {"constant", "linear", "cosine", NULL};
static const char *const method_names[] = {"supervised", "dpo", NULL};

#define HP(f) offsetof(struct lorad_job_spec, hp.f)
static const struct field hyperparameter_fields[] = {
    {"n_epochs", F_INT, HP(n_epochs), 1, 1000, false, false, false, 1, false, NULL},
    {"batch_size", F_INT, HP(batch_size), 1, 1024, false, false, false, 2, false, NULL},
    {"learning_rate", F_NUM, HP(learning_rate), 0, 1, true, false, false, 3e-4, false, NULL},
    {"gradient_accumulation_steps", F_INT, HP(gradient_accumulation_steps), 1, 1024, false, false, false, 1, false, NULL},
    {"max_steps", F_INT64, HP(max_steps), 1, 1e9, false, false, true, 0, true, NULL},
    {"max_seq_len", F_INT, HP(max_seq_len), 8, 131072, false, false, false, 512, false, NULL},
    {"lr_scheduler", F_ENUM, HP(lr_scheduler), 0, 0, false, false, false, LORAD_LR_COSINE, false, schedule_names},
    {"warmup_steps", F_INT64, HP(warmup_steps), 0, 1e9, false, false, false, 0, false, NULL},
    {"weight_decay", F_NUM, HP(weight_decay), 0, 10, false, false, false, 0.01, false, NULL},
    {"max_grad_norm", F_NUM, HP(max_grad_norm), 0, 1e6, true, false, true, 1.0, false, NULL},
    {"adam_beta1", F_NUM, HP(adam_beta1), 0, 1, false, true, false, 0.9, false, NULL},
    {"adam_beta2", F_NUM, HP(adam_beta2), 0, 1, false, true, false, 0.999, false, NULL},
    {"adam_epsilon", F_NUM, HP(adam_epsilon), 0, 1, true, false, false, 1e-8, false, NULL},
    {"packing", F_BOOL, HP(packing), 0, 0, false, false, false, 0, false, NULL},
    {"train_on_input", F_BOOL, HP(train_on_input), 0, 0, false, false, false, 0, false, NULL},
    {"eval_every_steps", F_INT64, HP(eval_every_steps), 1, 1e9, false, false, true, 0, true, NULL},
    {"checkpoint_every_steps", F_INT64, HP(checkpoint_every_steps), 1, 1e9, false, false, true, 0, true, NULL},
    {"keep_checkpoints", F_INT, HP(keep_checkpoints), 1, 1000, false, false, false, 3, false, NULL},
    {"activation_checkpointing", F_BOOL, HP(activation_checkpointing), 0, 0, false, false, false, 0, false, NULL},
    {"compute_dtype", F_ENUM, HP(compute_dtype), 0, 0, false, false, false, LORAD_COMPUTE_AUTO, false, lorad_compute_dtype_names},
    {"threads", F_INT, HP(threads), 1, 256, false, false, true, 0, true, NULL},
};
#undef HP

/* The hyperparameters only DPO has (method.dpo.hyperparameters), beside the shared ones. */
static const struct field dpo_fields[] = {
    {"beta", F_NUM, offsetof(struct lorad_job_spec, method.beta), 0, 10, true, false, false, 0.1, false, NULL},
};

#define LO(f) offsetof(struct lorad_job_spec, lora.f)
static const struct field lora_fields[] = {
    {"r", F_INT, LO(r), 1, 1024, false, false, false, 8, false, NULL},
    {"alpha", F_NUM, LO(alpha), 0, 1e6, true, false, false, 16, false, NULL},
    {"dropout", F_NUM, LO(dropout), 0, 1, false, true, false, 0.0, false, NULL},
    {"use_rslora", F_BOOL, LO(use_rslora), 0, 0, false, false, false, 0, false, NULL},
    /* DoRA: a trained magnitude per output beside the low-rank direction (lora.h) */
    {"use_dora", F_BOOL, LO(use_dora), 0, 0, false, false, false, 0, false, NULL},
    {"init", F_ENUM, LO(init), 0, 0, false, false, false, LORAD_LORA_INIT_KAIMING, false, lorad_lora_init_names},
    /* LoRA+: B's learning rate over A's (the paper suggests 2^4 for most models); 1 is plain LoRA */
    {"lr_ratio", F_NUM, LO(lr_ratio), 0, 1e4, true, false, false, 1.0, false, NULL},
};
#undef LO

static const struct field data_fields[] = {
    {"format", F_ENUM, offsetof(struct lorad_job_spec, data_format), 0, 0, false, false, false, LORAD_DATA_AUTO, false, lorad_data_format_names},
    {"template", F_ENUM, offsetof(struct lorad_job_spec, template), 0, 0, false, false, false, LORAD_TEMPLATE_AUTO, false, lorad_chat_template_names},
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* The seven projections "all-linear" stands for (PEFT excludes the output head from it). */
static const char *const projection_names[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
static const char *const default_targets[] = {"q_proj", "v_proj"};

static void set_default(struct lorad_job_spec *s, const struct field *f) {
    char *p = (char *)s + f->offset;
    double v = f->def_null ? 0 : f->def;
    switch (f->type) {
    case F_INT: *(int *)p = (int)v; break;
    case F_INT64: *(int64_t *)p = (int64_t)v; break;
    case F_NUM: *(double *)p = v; break;
    case F_BOOL: *(bool *)p = v != 0; break;
    case F_ENUM: *(int *)p = (int)v; break;
    }
}

static int set_field(struct lorad_job_spec *s, const struct field *f, const json_t *v, const char *path,
                     struct lorad_error *err) {
    char *p = (char *)s + f->offset;
    if (json_is_string(v) && strcmp(json_string_value(v), "auto") == 0) {
        set_default(s, f);
        return 0;
    }
    if (json_is_null(v)) {
        if (!f->nullable) return lorad_error_set(err, -EINVAL, path, "%s must not be null", path);
        set_default(s, f);
        if (f->type == F_NUM) *(double *)p = 0; /* null switches the feature off */
        else if (f->type == F_INT) *(int *)p = 0;
        else if (f->type == F_INT64) *(int64_t *)p = 0;
        return 0;
    }
    switch (f->type) {
    case F_BOOL:
        if (!json_is_boolean(v)) return lorad_error_set(err, -EINVAL, path, "%s must be true or false", path);
        *(bool *)p = json_is_true(v);
        return 0;
    case F_ENUM: {
        if (!json_is_string(v)) goto bad_enum;
        for (int i = 0; f->choices[i]; i++)
            if (strcmp(f->choices[i], json_string_value(v)) == 0) {
                *(int *)p = i;
                return 0;
            }
    bad_enum: {
        char list[256] = "";
        for (int i = 0; f->choices[i]; i++) {
            strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
            strncat(list, f->choices[i], sizeof list - strlen(list) - 1);
        }
        return lorad_error_set(err, -EINVAL, path, "%s must be one of: %s", path, list);
    }
    }
    case F_INT:
    case F_INT64:
    case F_NUM: {
        if (!json_is_number(v))
            return lorad_error_set(err, -EINVAL, path, "%s must be a number%s", path,
                                   f->nullable ? ", null or \"auto\"" : " or \"auto\"");
        double x = json_number_value(v);
        if (f->type != F_NUM && (!json_is_integer(v) && x != floor(x)))
            return lorad_error_set(err, -EINVAL, path, "%s must be an integer, got %g", path, x);
        bool low = f->min_exclusive ? !(x > f->min) : !(x >= f->min);
        bool high = f->max_exclusive ? !(x < f->max) : !(x <= f->max);
        if (!isfinite(x) || low || high)
            return lorad_error_set(err, -EINVAL, path, "%s must be in %s%g, %g%s, got %g", path,
                                   f->min_exclusive ? "(" : "[", f->min, f->max, f->max_exclusive ? ")" : "]", x);
        if (f->type == F_INT) *(int *)p = (int)x;
        else if (f->type == F_INT64) *(int64_t *)p = (int64_t)x;
        else *(double *)p = x;
        return 0;
    }
    }
    return -EINVAL;
}

static void join_path(char *out, size_t n, const char *prefix, const char *key) {
    snprintf(out, n, "%s%s%s", prefix, *prefix ? "." : "", key);
}

/* Applies obj's keys to the fields of table; unknown keys are errors. */
static int parse_object(struct lorad_job_spec *s, const json_t *obj, const struct field *table, size_t n,
                        const char *prefix, const char *const *extra_keys, struct lorad_error *err) {
    char path[256];
    if (!json_is_object(obj)) return lorad_error_set(err, -EINVAL, prefix, "%s must be an object", prefix);
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        join_path(path, sizeof path, prefix, key);
        const struct field *f = NULL;
        for (size_t i = 0; i < n; i++)
            if (strcmp(table[i].name, key) == 0) f = &table[i];
        if (!f) {
            bool extra = false;
            for (int i = 0; extra_keys && extra_keys[i]; i++) extra |= strcmp(extra_keys[i], key) == 0;
            if (extra) continue;
            return lorad_error_set(err, -EINVAL, path, "unknown key '%s'", path);
        }
        int r = set_field(s, f, v, path, err);
        if (r < 0) return r;
    }
    return 0;
}

static int copy_string(char *dst, size_t cap, const json_t *v, const char *path, bool nullable, bool required,
                       struct lorad_error *err) {
    if (!v || json_is_null(v)) {
        if (!v && required) return lorad_error_set(err, -EINVAL, path, "missing required key '%s'", path);
        if (v && !nullable) return lorad_error_set(err, -EINVAL, path, "%s must be a string", path);
        dst[0] = '\0';
        return 0;
    }
    if (!json_is_string(v)) return lorad_error_set(err, -EINVAL, path, "%s must be a string", path);
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    if (required && len == 0) return lorad_error_set(err, -EINVAL, path, "%s must not be empty", path);
    if (len >= cap) return lorad_error_set(err, -EINVAL, path, "%s is longer than %zu bytes", path, cap - 1);
    if (memchr(s, '\0', len)) return lorad_error_set(err, -EINVAL, path, "%s contains a NUL byte", path);
    memcpy(dst, s, len + 1);
    return 0;
}

static int add_target(struct lorad_lora_spec *l, const char *name, const char *path, struct lorad_error *err) {
    for (int i = 0; i < l->n_targets; i++)
        if (strcmp(l->targets[i], name) == 0) return 0; /* duplicates collapse */
    assert(l->n_targets < LORAD_JOB_MAX_TARGETS);
    snprintf(l->targets[l->n_targets++], sizeof l->targets[0], "%s", name);
    (void)path;
    (void)err;
    return 0;
}

static int parse_targets(struct lorad_lora_spec *l, const json_t *v, struct lorad_error *err) {
    l->n_targets = 0;
    if (json_is_string(v) && (strcmp(json_string_value(v), "all-linear") == 0 ||
                              strcmp(json_string_value(v), "all_linear") == 0)) {
        for (size_t i = 0; i < N(projection_names); i++) add_target(l, projection_names[i], "", err);
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) == 0)
        return lorad_error_set(err, -EINVAL, "lora.target_modules",
                               "lora.target_modules must be \"all-linear\" or a non-empty list of module names");
    if (json_array_size(v) > 64)
        return lorad_error_set(err, -EINVAL, "lora.target_modules", "lora.target_modules has too many entries");
    size_t i;
    const json_t *t;
    json_array_foreach((json_t *)v, i, t) {
        char path[64];
        snprintf(path, sizeof path, "lora.target_modules[%zu]", i);
        const char *name = json_is_string(t) ? json_string_value(t) : NULL;
        if (name && (strcmp(name, "all-linear") == 0 || strcmp(name, "all_linear") == 0)) {
            for (size_t k = 0; k < N(projection_names); k++) add_target(l, projection_names[k], path, err);
            continue;
        }
        bool known = name && strcmp(name, "lm_head") == 0;
        for (size_t k = 0; name && k < N(projection_names); k++) known |= strcmp(name, projection_names[k]) == 0;
        if (!known)
            return lorad_error_set(err, -EINVAL, path,
                                   "%s: unknown target module%s%s%s; use q_proj, k_proj, v_proj, o_proj, gate_proj, "
                                   "up_proj, down_proj, lm_head or all-linear",
                                   path, name ? " '" : "", name ? name : "", name ? "'" : "");
        add_target(l, name, path, err);
    }
    return 0;
}

static int parse_lora(struct lorad_job_spec *s, const json_t *lora, struct lorad_error *err) {
    static const char *const extra[] = {"target_modules", "init_adapter", NULL};
    int r = parse_object(s, lora, lora_fields, N(lora_fields), "lora", extra, err);
    if (r < 0) return r;
    const json_t *t = json_object_get(lora, "target_modules");
    if (t && !json_is_null(t) && !(json_is_string(t) && strcmp(json_string_value(t), "auto") == 0)) {
        r = parse_targets(&s->lora, t, err);
        if (r < 0) return r;
    }
    r = copy_string(s->lora.init_adapter, sizeof s->lora.init_adapter, json_object_get(lora, "init_adapter"),
                    "lora.init_adapter", true, false, err);
    if (r < 0) return r;
    /* PiSSA and OLoRA start from factors of the base weights: an adapter to start from instead
     * leaves nothing for them to do, and DoRA's magnitudes would start from the wrong norms */
    if (lorad_lora_init_from_base(s->lora.init) && s->lora.init_adapter[0])
        return lorad_error_set(err, -EINVAL, "lora.init",
                               "lora.init %s computes the initial weights from the base model; it does not combine "
                               "with lora.init_adapter", lorad_lora_init_name(s->lora.init));
    return lorad_lora_init_check_dora(s->lora.init, s->lora.use_dora, err);
}

static void spec_defaults(struct lorad_job_spec *s) {
    memset(s, 0, sizeof *s);
    s->seed = 42;
    for (size_t i = 0; i < N(hyperparameter_fields); i++) set_default(s, &hyperparameter_fields[i]);
    for (size_t i = 0; i < N(lora_fields); i++) set_default(s, &lora_fields[i]);
    for (size_t i = 0; i < N(data_fields); i++) set_default(s, &data_fields[i]);
    for (size_t i = 0; i < N(dpo_fields); i++) set_default(s, &dpo_fields[i]);
    s->method.type = LORAD_METHOD_SUPERVISED;
    for (size_t i = 0; i < N(default_targets); i++)
        snprintf(s->lora.targets[s->lora.n_targets++], sizeof s->lora.targets[0], "%s", default_targets[i]);
}

/* OpenAI's learning_rate_multiplier scales our default learning rate. */
static int apply_lr_multiplier(struct lorad_job_spec *s, const json_t *hp, const char *prefix, struct lorad_error *err) {
    const json_t *m = json_object_get(hp, "learning_rate_multiplier");
    if (!m || (json_is_string(m) && strcmp(json_string_value(m), "auto") == 0)) return 0;
    char path[256];
    join_path(path, sizeof path, prefix, "learning_rate_multiplier");
    if (json_object_get(hp, "learning_rate"))
        return lorad_error_set(err, -EINVAL, path, "give learning_rate or learning_rate_multiplier, not both");
    if (!json_is_number(m) || !(json_number_value(m) > 0) || json_number_value(m) > 1000)
        return lorad_error_set(err, -EINVAL, path, "%s must be a number in (0, 1000]", path);
    s->hp.learning_rate = 3e-4 * json_number_value(m);
    return 0;
}

static int parse_hyperparameters(struct lorad_job_spec *s, const json_t *hp, const char *prefix,
                                 struct lorad_error *err) {
    static const char *const extra[] = {"learning_rate_multiplier", NULL};
    int r = parse_object(s, hp, hyperparameter_fields, N(hyperparameter_fields), prefix, extra, err);
    if (r < 0) return r;
    return apply_lr_multiplier(s, hp, prefix, err);
}

/* Whether field f holds the same value in a and b. */
static bool field_equal(const struct lorad_job_spec *a, const struct lorad_job_spec *b, const struct field *f) {
    const char *pa = (const char *)a + f->offset, *pb = (const char *)b + f->offset;
    switch (f->type) {
    case F_INT:
    case F_ENUM: return *(const int *)pa == *(const int *)pb;
    case F_INT64: return *(const int64_t *)pa == *(const int64_t *)pb;
    case F_NUM: return *(const double *)pa == *(const double *)pb;
    case F_BOOL: return *(const bool *)pa == *(const bool *)pb;
    }
    return false;
}

/* Whether hp (an object or NULL) gives hyperparameter f (learning_rate also as its multiplier). */
static bool gives(const json_t *hp, const struct field *f) {
    if (!hp) return false;
    if (json_object_get(hp, f->name)) return true;
    return strcmp(f->name, "learning_rate") == 0 && json_object_get(hp, "learning_rate_multiplier");
}

/* The hyperparameters of method.<type> (at prefix) applied to s, which holds the top-level ones
 * of top_hp (NULL when none): beta for DPO, the shared ones otherwise, each of which must agree
 * with the top level where both give it (OpenAI's job object echoes both, and so does ours). */
static int parse_method_hyperparameters(struct lorad_job_spec *s, const json_t *hp, const json_t *top_hp,
                                        const char *prefix, struct lorad_error *err) {
    if (!json_is_object(hp)) return lorad_error_set(err, -EINVAL, prefix, "%s must be an object", prefix);
    json_t *shared = json_copy((json_t *)hp); /* shallow: only its keys change */
    if (!shared) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    char path[256];
    int r = 0;
    for (size_t i = 0; r == 0 && s->method.type == LORAD_METHOD_DPO && i < N(dpo_fields); i++) {
        const json_t *v = json_object_get(hp, dpo_fields[i].name);
        if (!v) continue;
        join_path(path, sizeof path, prefix, dpo_fields[i].name);
        r = set_field(s, &dpo_fields[i], v, path, err);
        json_object_del(shared, dpo_fields[i].name);
    }
    struct lorad_job_spec here;
    spec_defaults(&here);
    if (r == 0) r = parse_hyperparameters(&here, shared, prefix, err);
    for (size_t i = 0; r == 0 && i < N(hyperparameter_fields); i++) {
        const struct field *f = &hyperparameter_fields[i];
        if (!gives(shared, f) || !gives(top_hp, f) || field_equal(s, &here, f)) continue;
        join_path(path, sizeof path, prefix, f->name);
        r = lorad_error_set(err, -EINVAL, path,
                            "%s disagrees with hyperparameters.%s; give it in one place (method's hyperparameters "
                            "replace the deprecated top-level ones)",
                            path, f->name);
    }
    if (r == 0) r = parse_hyperparameters(s, shared, prefix, err);
    json_decref(shared);
    return r;
}

static int parse_method(struct lorad_job_spec *s, const json_t *method, const json_t *top_hp, struct lorad_error *err) {
    if (!json_is_object(method)) return lorad_error_set(err, -EINVAL, "method", "method must be an object");
    const json_t *type = json_object_get(method, "type");
    if (!type) return lorad_error_set(err, -EINVAL, "method.type", "missing required key 'method.type'");
    int t = -1;
    for (int i = 0; json_is_string(type) && method_names[i]; i++)
        if (strcmp(json_string_value(type), method_names[i]) == 0) t = i;
    if (t < 0) {
        if (json_is_string(type) && strcmp(json_string_value(type), "reinforcement") == 0)
            return lorad_error_set(err, -EINVAL, "method.type",
                                   "method.type \"reinforcement\" is not supported; lorad trains \"supervised\" and "
                                   "\"dpo\"");
        return lorad_error_set(err, -EINVAL, "method.type", "method.type must be \"supervised\" or \"dpo\"");
    }
    const char *name = method_names[t];
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)method, key, v) {
        if (strcmp(key, "type") == 0 || strcmp(key, name) == 0) continue;
        char path[128];
        snprintf(path, sizeof path, "method.%.100s", key);
        bool other = strcmp(key, "reinforcement") == 0;
        for (int i = 0; method_names[i]; i++) other |= strcmp(key, method_names[i]) == 0;
        if (other)
            return lorad_error_set(err, -EINVAL, path, "%s does not apply to method.type \"%s\"", path, name);
        return lorad_error_set(err, -EINVAL, path, "unknown key '%s'", path);
    }
    s->method.type = (enum lorad_train_method)t;
    const json_t *body = json_object_get(method, name);
    if (!body || json_is_null(body)) return 0;
    char prefix[128];
    snprintf(prefix, sizeof prefix, "method.%s", name);
    if (!json_is_object(body)) return lorad_error_set(err, -EINVAL, prefix, "%s must be an object", prefix);
    json_object_foreach((json_t *)body, key, v) {
        if (strcmp(key, "hyperparameters") != 0) {
            char path[256];
            snprintf(path, sizeof path, "%s.%.100s", prefix, key);
            return lorad_error_set(err, -EINVAL, path, "unknown key '%s'", path);
        }
    }
    const json_t *hp = json_object_get(body, "hyperparameters");
    if (!hp || json_is_null(hp)) return 0;
    snprintf(prefix, sizeof prefix, "method.%s.hyperparameters", name);
    return parse_method_hyperparameters(s, hp, top_hp, prefix, err);
}

/* Where the job gave hyperparameter `name`: in method's hyperparameters or at the top level. */
static void hyperparameter_param(char *out, size_t n, const json_t *body, const struct lorad_job_spec *s,
                                 const char *name) {
    const char *m = method_names[s->method.type];
    const json_t *hp = json_object_get(json_object_get(json_object_get(body, "method"), m), "hyperparameters");
    if (json_is_object(hp) && json_object_get(hp, name)) snprintf(out, n, "method.%s.hyperparameters.%s", m, name);
    else snprintf(out, n, "hyperparameters.%s", name);
}

/* The choices that do not go together with the method. */
static int check_method(const struct lorad_job_spec *s, const json_t *body, struct lorad_error *err) {
    char path[128];
    if (s->method.type == LORAD_METHOD_SUPERVISED) {
        if (s->data_format == LORAD_DATA_PREFERENCE)
            return lorad_error_set(err, -EINVAL, "data.format",
                                   "data.format \"preference\" trains with method.type \"dpo\"");
        return 0;
    }
    if (s->data_format != LORAD_DATA_AUTO && s->data_format != LORAD_DATA_PREFERENCE)
        return lorad_error_set(err, -EINVAL, "data.format",
                               "method dpo trains on preference pairs: data.format must be \"preference\" or \"auto\", "
                               "not \"%s\"", lorad_data_format_name(s->data_format));
    if (s->hp.packing) {
        hyperparameter_param(path, sizeof path, body, s, "packing");
        return lorad_error_set(err, -EINVAL, path, "%s: a DPO pair's two rows are compared, not packed; use false", path);
    }
    if (s->hp.train_on_input) {
        hyperparameter_param(path, sizeof path, body, s, "train_on_input");
        return lorad_error_set(err, -EINVAL, path,
                               "%s: DPO compares the log-probabilities of the outputs alone; use false", path);
    }
    return 0;
}

int lorad_job_spec_parse(const json_t *body, struct lorad_job_spec *ret_spec, struct lorad_error *err) {
    static const char *const known[] = {"model", "training_file", "validation_file", "seed", "suffix", "metadata",
                                        "hyperparameters", "lora", "data", "method", NULL};
    if (!json_is_object(body)) return lorad_error_set(err, -EINVAL, "", "the job spec must be a JSON object");
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)body, key, v) {
        bool ok = false;
        for (int i = 0; known[i]; i++) ok |= strcmp(known[i], key) == 0;
        if (!ok) return lorad_error_set(err, -EINVAL, key, "unknown key '%s'", key);
    }
    struct lorad_job_spec s;
    spec_defaults(&s);
    int r;
    if ((r = copy_string(s.model, sizeof s.model, json_object_get(body, "model"), "model", false, true, err)) < 0) return r;
    if ((r = copy_string(s.training_file, sizeof s.training_file, json_object_get(body, "training_file"),
                         "training_file", false, true, err)) < 0)
        return r;
    if ((r = copy_string(s.validation_file, sizeof s.validation_file, json_object_get(body, "validation_file"),
                         "validation_file", true, false, err)) < 0)
        return r;
    if ((r = copy_string(s.suffix, sizeof s.suffix, json_object_get(body, "suffix"), "suffix", true, false, err)) < 0)
        return r;
    for (const char *c = s.suffix; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-' || *c == '_'))
            return lorad_error_set(err, -EINVAL, "suffix", "suffix may contain only letters, digits, '-' and '_'");
    v = json_object_get(body, "seed");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 2147483647)
            return lorad_error_set(err, -EINVAL, "seed", "seed must be an integer in [0, 2147483647]");
        s.seed = json_integer_value(v);
    }
    v = json_object_get(body, "metadata");
    if (v && !json_is_null(v)) {
        if (!json_is_object(v) || json_object_size(v) > 16)
            return lorad_error_set(err, -EINVAL, "metadata", "metadata must be an object of at most 16 strings");
        const char *mk;
        const json_t *mv;
        json_object_foreach((json_t *)v, mk, mv) {
            if (strlen(mk) > 64 || !json_is_string(mv) || json_string_length(mv) > 512)
                return lorad_error_set(err, -EINVAL, "metadata",
                                       "metadata keys must be <= 64 bytes and values strings of <= 512 bytes");
        }
    }
    const json_t *hp = json_object_get(body, "hyperparameters");
    bool have_top_hp = hp && !json_is_null(hp);
    if (have_top_hp && (r = parse_hyperparameters(&s, hp, "hyperparameters", err)) < 0) return r;
    if (have_top_hp && json_object_get(hp, "beta"))
        return lorad_error_set(err, -EINVAL, "hyperparameters.beta",
                               "hyperparameters.beta belongs in method.dpo.hyperparameters");
    v = json_object_get(body, "method");
    if (v && !json_is_null(v) && (r = parse_method(&s, v, have_top_hp ? hp : NULL, err)) < 0) return r;
    v = json_object_get(body, "lora");
    if (v && !json_is_null(v) && (r = parse_lora(&s, v, err)) < 0) return r;
    v = json_object_get(body, "data");
    if (v && !json_is_null(v) && (r = parse_object(&s, v, data_fields, N(data_fields), "data", NULL, err)) < 0) return r;
    if ((r = check_method(&s, body, err)) < 0) return r;

    const json_t *meta = json_object_get(body, "metadata");
    s.metadata = meta && !json_is_null(meta) ? json_deep_copy(meta) : NULL;
    if (meta && !json_is_null(meta) && !s.metadata) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    *ret_spec = s;
    return 0;
}

static json_t *field_json(const struct lorad_job_spec *s, const struct field *f) {
    const char *p = (const char *)s + f->offset;
    switch (f->type) {
    case F_INT: return f->nullable && *(const int *)p == 0 ? json_null() : json_integer(*(const int *)p);
    case F_INT64: return f->nullable && *(const int64_t *)p == 0 ? json_null() : json_integer(*(const int64_t *)p);
    case F_NUM: return f->nullable && *(const double *)p == 0 ? json_null() : json_real(*(const double *)p);
    case F_BOOL: return json_boolean(*(const bool *)p);
    case F_ENUM: return json_string(f->choices[*(const int *)p]);
    }
    return NULL;
}

static json_t *fields_json(const struct lorad_job_spec *s, const struct field *table, size_t n) {
    json_t *o = json_object();
    for (size_t i = 0; o && i < n; i++)
        if (json_object_set_new(o, table[i].name, field_json(s, &table[i])) < 0) {
            json_decref(o);
            return NULL;
        }
    return o;
}

static json_t *string_or_null(const char *s) {
    return s[0] ? json_string(s) : json_null();
}

/* {"type": T, T: {"hyperparameters": {...}}} as OpenAI's job object has it. NULL on ENOMEM. */
static json_t *method_json(const struct lorad_job_spec *s) {
    json_t *hp = fields_json(s, hyperparameter_fields, N(hyperparameter_fields));
    for (size_t i = 0; hp && s->method.type == LORAD_METHOD_DPO && i < N(dpo_fields); i++)
        if (json_object_set_new(hp, dpo_fields[i].name, field_json(s, &dpo_fields[i])) < 0) {
            json_decref(hp);
            hp = NULL;
        }
    if (!hp) return NULL;
    const char *name = method_names[s->method.type];
    return json_pack("{s:s, s:{s:o}}", "type", name, name, "hyperparameters", hp);
}

json_t *lorad_job_spec_to_json(const struct lorad_job_spec *s) {
    json_t *hp = fields_json(s, hyperparameter_fields, N(hyperparameter_fields));
    json_t *lora = fields_json(s, lora_fields, N(lora_fields));
    json_t *data = fields_json(s, data_fields, N(data_fields));
    json_t *targets = json_array();
    for (int i = 0; targets && i < s->lora.n_targets; i++) json_array_append_new(targets, json_string(s->lora.targets[i]));
    if (lora) {
        json_object_set_new(lora, "target_modules", targets);
        targets = NULL;
        json_object_set_new(lora, "init_adapter", string_or_null(s->lora.init_adapter));
    }
    json_t *method = method_json(s);
    if (!hp || !lora || !data || !method) {
        json_decref(hp);
        json_decref(lora);
        json_decref(data);
        json_decref(targets);
        json_decref(method);
        return NULL;
    }
    /* "o" steals each reference even when json_pack fails, so nothing is released here after it. */
    json_t *o = json_pack("{s:s, s:s, s:o, s:I, s:o, s:o, s:o, s:o, s:o, s:o}", "model", s->model, "training_file",
                          s->training_file, "validation_file", string_or_null(s->validation_file), "seed",
                          (json_int_t)s->seed, "suffix", string_or_null(s->suffix), "metadata",
                          s->metadata ? json_deep_copy(s->metadata) : json_null(), "hyperparameters", hp, "method",
                          method, "lora", lora, "data", data);
    json_decref(targets);
    return o;
}

void lorad_job_spec_clear(struct lorad_job_spec *spec) {
    json_decref(spec->metadata);
    spec->metadata = NULL;
}

const char *lorad_lr_schedule_name(enum lorad_lr_schedule s) { return schedule_names[s]; }
const char *lorad_train_method_name(enum lorad_train_method t) { return method_names[t]; }
int lorad_job_rows_per_example(const struct lorad_job_spec *spec) {
    return spec->method.type == LORAD_METHOD_DPO ? 2 : 1;
}

int lorad_job_lora_config(const struct lorad_job_spec *spec, struct lorad_lora_config *ret_config,
                          struct lorad_error *err) {
    const struct lorad_lora_spec *l = &spec->lora;
    struct lorad_lora_config lc = {.r = l->r,
                                   .alpha = (float)l->alpha,
                                   .dropout = (float)l->dropout,
                                   .use_rslora = l->use_rslora,
                                   .use_dora = l->use_dora,
                                   .init = l->init};
    const char *names[LORAD_JOB_MAX_TARGETS];
    for (int i = 0; i < l->n_targets; i++) names[i] = l->targets[i];
    int r = lorad_lora_parse_targets(&lc.targets, names, l->n_targets, err);
    if (r < 0) return r;
    *ret_config = lc;
    return 0;
}
