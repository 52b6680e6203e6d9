/* PEFT adapter directories: adapter_model.safetensors + adapter_config.json. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapter.h"
#include "fsutil.h"
#include "lora.h"
#include "safetensors_write.h"

#define PEFT_PREFIX "base_model.model."

double lorad_adapter_scale(const struct lorad_adapter_meta *meta) {
    return meta->use_rslora ? meta->alpha / sqrt((double)meta->r) : meta->alpha / meta->r;
}

static json_t *peft_config_json(const struct lorad_adapter_meta *m) {
    json_t *targets = json_array();
    for (int i = 0; targets && i < m->n_targets; i++) json_array_append_new(targets, json_string(m->targets[i]));
    if (!targets) return NULL;
    /* The keys PEFT's LoraConfig reads; values we do not use are written as PEFT's defaults so the
     * file loads with PeftModel.from_pretrained as it is. */
    return json_pack("{s:s, s:s, s:i, s:f, s:f, s:o, s:b, s:s, s:b, s:b, s:s, s:b, s:n, s:n, s:{}, s:{}, s:b, s:n}",
                     "peft_type", "LORA", "task_type", "CAUSAL_LM", "r", m->r, "lora_alpha", m->alpha,
                     "lora_dropout", m->dropout, "target_modules", targets, "use_rslora", m->use_rslora, "bias",
                     "none", "fan_in_fan_out", 0, "inference_mode", 1, "base_model_name_or_path", m->base_model,
                     "init_lora_weights", 1, "modules_to_save", "layers_to_transform", "rank_pattern",
                     "alpha_pattern", "use_dora", m->use_dora, "revision");
}

static int write_text_atomic(const char *path, const char *text, struct lorad_error *err) {
    int r = lorad_atomic_write_file(path, text, strlen(text));
    if (r < 0) return lorad_error_set(err, r, "", "cannot write %s: %s", path, strerror(-r));
    return 0;
}

int lorad_adapter_write_peft(const char *dir, const struct lorad_adapter_meta *meta,
                             const struct lorad_adapter_tensor *tensors, int n_tensors, struct lorad_error *err) {
    int r = lorad_mkdir_p(dir);
    if (r < 0) return lorad_error_set(err, r, "", "cannot create %s: %s", dir, strerror(-r));
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    struct lorad_st_writer *w;
    if ((r = lorad_st_writer_new(&w, path)) < 0) return lorad_error_set(err, r, "", "out of memory");
    r = lorad_st_writer_metadata(w, "format", "pt");
    for (int i = 0; r == 0 && i < n_tensors; i++) {
        char name[256];
        snprintf(name, sizeof name, PEFT_PREFIX "%s", tensors[i].name);
        int64_t shape[2] = {tensors[i].rows, tensors[i].cols};
        int ndim = lorad_lora_is_magnitude_name(tensors[i].name) ? 1 : 2; /* PEFT's magnitude is (out) */
        r = lorad_st_writer_add(w, name, "F32", shape, ndim, tensors[i].data,
                                (size_t)(tensors[i].rows * tensors[i].cols) * sizeof(float));
    }
    if (r < 0) {
        lorad_st_writer_free(w);
        return lorad_error_set(err, r, "", "cannot add adapter tensors: %s", strerror(-r));
    }
    if ((r = lorad_st_writer_finish(w, err)) < 0) return r;

    json_t *cfg = peft_config_json(meta);
    char *text = cfg ? json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(cfg);
    if (!text) return lorad_error_set(err, -ENOMEM, "", "out of memory writing adapter_config.json");
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    size_t len = strlen(text);
    char *with_newline = realloc(text, len + 2);
    if (!with_newline) {
        free(text);
        return -ENOMEM;
    }
    memcpy(with_newline + len, "\n", 2);
    r = write_text_atomic(path, with_newline, err);
    free(with_newline);
    return r;
}

static int parse_config(json_t *root, const char *path, struct lorad_adapter_meta *ret_meta, struct lorad_error *err);

int lorad_adapter_read_config(const char *dir, struct lorad_adapter_meta *ret_meta, struct lorad_error *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return lorad_error_set(err, -EINVAL, "adapter_config.json", "%s: %s (line %d)", path, jerr.text, jerr.line);
    return parse_config(root, path, ret_meta, err);
}

int lorad_adapter_parse_config(const char *text, size_t len, const char *source, struct lorad_adapter_meta *ret_meta,
                               struct lorad_error *err) {
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return lorad_error_set(err, -EINVAL, "adapter_config.json", "%s: %s (line %d)", source, jerr.text, jerr.line);
    return parse_config(root, source, ret_meta, err);
}

/* Checks a parsed adapter_config.json (consumed: root is released) and fills ret_meta. */
static int parse_config(json_t *root, const char *path, struct lorad_adapter_meta *ret_meta, struct lorad_error *err) {
    struct lorad_adapter_meta m = {0};
    int r = 0;
    const json_t *v;
#define FAIL(key, ...) do { r = lorad_error_set(err, -EINVAL, key, __VA_ARGS__); goto out; } while (0)
    v = json_object_get(root, "peft_type");
    if (!json_is_string(v) || strcmp(json_string_value(v), "LORA") != 0)
        FAIL("peft_type", "%s: peft_type must be \"LORA\"", path);
    v = json_object_get(root, "r");
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 1024)
        FAIL("r", "%s: r must be an integer in [1, 1024]", path);
    m.r = (int)json_integer_value(v);
    v = json_object_get(root, "lora_alpha");
    if (!json_is_number(v) || !(json_number_value(v) > 0)) FAIL("lora_alpha", "%s: lora_alpha must be > 0", path);
    m.alpha = json_number_value(v);
    v = json_object_get(root, "lora_dropout");
    m.dropout = json_is_number(v) ? json_number_value(v) : 0;
    v = json_object_get(root, "use_rslora");
    m.use_rslora = json_is_true(v);
    v = json_object_get(root, "fan_in_fan_out");
    if (json_is_true(v)) FAIL("fan_in_fan_out", "%s: fan_in_fan_out adapters are not supported", path);
    v = json_object_get(root, "use_dora");
    if (v && !json_is_boolean(v) && !json_is_null(v)) FAIL("use_dora", "%s: use_dora must be true or false", path);
    m.use_dora = json_is_true(v);
    v = json_object_get(root, "bias");
    if (json_is_string(v) && strcmp(json_string_value(v), "none") != 0)
        FAIL("bias", "%s: bias \"%s\" is not supported (only \"none\")", path, json_string_value(v));
    v = json_object_get(root, "target_modules");
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > LORAD_ADAPTER_MAX_TARGETS)
        FAIL("target_modules", "%s: target_modules must be a list of 1 to %d names", path, LORAD_ADAPTER_MAX_TARGETS);
    size_t i;
    const json_t *t;
    json_array_foreach(v, i, t) {
        if (!json_is_string(t) || json_string_length(t) >= sizeof m.targets[0])
            FAIL("target_modules", "%s: target_modules[%zu] is not a module name", path, i);
        snprintf(m.targets[m.n_targets++], sizeof m.targets[0], "%s", json_string_value(t));
    }
    v = json_object_get(root, "base_model_name_or_path");
    if (json_is_string(v)) snprintf(m.base_model, sizeof m.base_model, "%s", json_string_value(v));
#undef FAIL
    *ret_meta = m;
out:
    json_decref(root);
    return r;
}
