#include "train_metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsutil.h"

json_t *lorad_step_metrics_json(const struct lorad_step_metrics *m) {
    json_t *o = json_pack("{s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:I, s:f, s:f, s:f}", "step", (json_int_t)m->step,
                          "total_steps", (json_int_t)m->total_steps, "epoch", m->epoch, "train_loss", m->train_loss,
                          "train_mean_token_accuracy", m->train_mean_token_accuracy, "lr", m->lr, "grad_norm",
                          m->grad_norm, "tokens_seen", (json_int_t)m->tokens_seen, "tokens_per_s", m->tokens_per_s,
                          "elapsed_s", m->elapsed_s, "eta_s", m->eta_s);
    if (o && m->has_valid) {
        json_object_set_new(o, "valid_loss", json_real(m->valid_loss));
        json_object_set_new(o, "valid_mean_token_accuracy", json_real(m->valid_mean_token_accuracy));
    }
    if (o && m->has_full_valid) {
        json_object_set_new(o, "full_valid_loss", json_real(m->full_valid_loss));
        json_object_set_new(o, "full_valid_mean_token_accuracy", json_real(m->full_valid_mean_token_accuracy));
    }
    if (o && m->has_dpo) {
        json_object_set_new(o, "rewards_margin", json_real(m->rewards_margin));
        json_object_set_new(o, "rewards_accuracy", json_real(m->rewards_accuracy));
        json_object_set_new(o, "rewards_chosen", json_real(m->rewards_chosen));
        json_object_set_new(o, "rewards_rejected", json_real(m->rewards_rejected));
    }
    return o;
}

static int get_number(const json_t *o, const char *key, double *ret) {
    const json_t *v = json_object_get(o, key);
    if (!json_is_number(v)) return -EINVAL;
    *ret = json_number_value(v);
    return 0;
}

int lorad_step_metrics_from_json(const json_t *o, struct lorad_step_metrics *ret) {
    struct lorad_step_metrics m = {0};
    double step, total, tokens;
    if (get_number(o, "step", &step) || get_number(o, "total_steps", &total) || get_number(o, "epoch", &m.epoch) ||
        get_number(o, "train_loss", &m.train_loss) ||
        get_number(o, "train_mean_token_accuracy", &m.train_mean_token_accuracy) || get_number(o, "lr", &m.lr) ||
        get_number(o, "grad_norm", &m.grad_norm) || get_number(o, "tokens_seen", &tokens) ||
        get_number(o, "tokens_per_s", &m.tokens_per_s) || get_number(o, "elapsed_s", &m.elapsed_s) ||
        get_number(o, "eta_s", &m.eta_s))
        return -EINVAL;
    m.step = (int64_t)step;
    m.total_steps = (int64_t)total;
    m.tokens_seen = (int64_t)tokens;
    if (get_number(o, "valid_loss", &m.valid_loss) == 0 &&
        get_number(o, "valid_mean_token_accuracy", &m.valid_mean_token_accuracy) == 0)
        m.has_valid = true;
    if (get_number(o, "full_valid_loss", &m.full_valid_loss) == 0 &&
        get_number(o, "full_valid_mean_token_accuracy", &m.full_valid_mean_token_accuracy) == 0)
        m.has_full_valid = true;
    if (get_number(o, "rewards_margin", &m.rewards_margin) == 0 &&
        get_number(o, "rewards_accuracy", &m.rewards_accuracy) == 0 &&
        get_number(o, "rewards_chosen", &m.rewards_chosen) == 0 &&
        get_number(o, "rewards_rejected", &m.rewards_rejected) == 0)
        m.has_dpo = true;
    *ret = m;
    return 0;
}

int lorad_metrics_append(const char *path, const struct lorad_step_metrics *m) {
    json_t *o = lorad_step_metrics_json(m);
    if (o && m->world_size > 0) json_object_set_new(o, "world_size", json_integer(m->world_size));
    if (o && m->world_size > 1) {
        json_object_set_new(o, "collective_s", json_real(m->collective_s));
        json_object_set_new(o, "collective_bytes", json_integer(m->collective_bytes));
    }
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(o);
    if (!text) return -ENOMEM;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int r = fd < 0 ? -errno : 0;
    if (r == 0) {
        size_t len = strlen(text);
        text[len] = '\n'; /* json_dumps leaves room for its NUL, which becomes the newline */
        r = lorad_write_all(fd, text, len + 1);
        if (r == 0 && fdatasync(fd) < 0) r = -errno;
        close(fd);
    }
    free(text);
    return r;
}

int lorad_metrics_truncate_after(const char *path, int64_t last_step) {
    FILE *in = fopen(path, "re");
    if (!in) return errno == ENOENT ? 0 : -errno;
    struct lorad_atomic_file file;
    int r = lorad_atomic_open(&file, path);
    FILE *out = r == 0 ? lorad_atomic_fdopen(&file) : NULL;
    if (!out) {
        if (r == 0) r = lorad_atomic_finish(&file, -ENOMEM);
        fclose(in);
        return r;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, in)) > 0) {
        json_t *o = json_loadb(line, (size_t)n, 0, NULL);
        const json_t *step = o ? json_object_get(o, "step") : NULL;
        /* A torn last line (a crash mid-append) has no valid JSON and is dropped. */
        bool keep = json_is_integer(step) && json_integer_value(step) <= last_step && line[n - 1] == '\n';
        json_decref(o);
        if (keep && fwrite(line, 1, (size_t)n, out) != (size_t)n) {
            r = -EIO;
            break;
        }
    }
    free(line);
    fclose(in);
    return lorad_atomic_finish(&file, r);
}
