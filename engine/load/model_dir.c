#include "model_dir.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int lorad_model_id_valid(const char *id) {
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n >= LORAD_MODEL_ID_MAX || id[0] == '.') return 0;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n > m && strcmp(s + n - m, suffix) == 0;
}

/* Classifies one entry by what it is on disk; returns 0 and the format, or -ENOENT for entries
 * that are not models. */
static int classify(const char *path, const char *name, enum lorad_model_format *ret_format) {
    struct stat st;
    if (stat(path, &st) < 0) return -ENOENT;
    if (S_ISDIR(st.st_mode)) {
        char cfg[4096 + 16];
        snprintf(cfg, sizeof cfg, "%s/config.json", path);
        if (stat(cfg, &st) < 0 || !S_ISREG(st.st_mode)) return -ENOENT;
        *ret_format = LORAD_FORMAT_HF_DIR;
        return 0;
    }
    if (!S_ISREG(st.st_mode)) return -ENOENT;
    if (ends_with(name, ".gguf")) *ret_format = LORAD_FORMAT_GGUF;
    else if (ends_with(name, ".bin")) *ret_format = LORAD_FORMAT_LLAMA2C;
    else return -ENOENT;
    return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b) {
    return strcmp((*a)->d_name, (*b)->d_name);
}

int lorad_model_dir_scan(const char *models_dir,
                         int (*fn)(void *ctx, const char *id, const char *path, enum lorad_model_format format),
                         void *ctx) {
    struct dirent **list;
    int n = scandir(models_dir, &list, NULL, by_name);
    if (n < 0) return -errno;
    int rc = 0;
    for (int i = 0; i < n; i++) {
        const char *name = list[i]->d_name;
        char path[4096];
        enum lorad_model_format format;
        if (rc == 0 && lorad_model_id_valid(name) &&
            snprintf(path, sizeof path, "%s/%s", models_dir, name) < (int)sizeof path &&
            classify(path, name, &format) == 0)
            rc = fn(ctx, name, path, format);
        free(list[i]);
    }
    free(list);
    return rc;
}

int lorad_model_dir_resolve(const char *models_dir, const char *id, char *ret_path, size_t cap,
                            enum lorad_model_format *ret_format, struct lorad_error *err) {
    if (!lorad_model_id_valid(id))
        return lorad_error_set(err, -EINVAL, "model", "'%.80s' is not a valid model name", id ? id : "");
    char path[4096];
    enum lorad_model_format format;
    int n = snprintf(path, sizeof path, "%s/%s", models_dir, id);
    if (n < 0 || (size_t)n >= sizeof path || classify(path, id, &format) < 0)
        return lorad_error_set(err, -ENOENT, "model", "model '%s' not found in the models directory", id);
    if ((size_t)n >= cap) return lorad_error_set(err, -ENAMETOOLONG, "model", "model path too long");
    memcpy(ret_path, path, (size_t)n + 1);
    if (ret_format) *ret_format = format;
    return 0;
}
