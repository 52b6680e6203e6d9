#include "checkpoint_dir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"

/* Parses "step-N" (exactly) into N. */
static int parse_step_name(const char *name, int64_t *ret) {
    if (strncmp(name, "step-", 5) != 0 || !name[5]) return 0;
    char *end;
    errno = 0;
    long long v = strtoll(name + 5, &end, 10);
    if (*end || errno || v < 0) return 0;
    *ret = v;
    return 1;
}

int lorad_checkpoint_begin(const char *root, int64_t step, char *ret_tmp, size_t cap, struct lorad_error *err) {
    int r = lorad_mkdir_p(root);
    if (r < 0) return lorad_error_set(err, r, "", "cannot create %s: %s", root, strerror(-r));
    if (snprintf(ret_tmp, cap, "%s/.step-%" PRId64 ".tmp", root, step) >= (int)cap)
        return lorad_error_set(err, -ENAMETOOLONG, "", "checkpoint path too long under %s", root);
    if ((r = lorad_remove_tree(ret_tmp)) < 0) return lorad_error_set(err, r, "", "cannot clear %s", ret_tmp);
    if (mkdir(ret_tmp, 0755) < 0) return lorad_error_set(err, -errno, "", "cannot create %s: %s", ret_tmp, strerror(errno));
    return 0;
}

static int cmp_i64_desc(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Lists the steps of complete checkpoints, newest first. *ret_steps is malloc'd. */
static int list_steps(const char *root, int64_t **ret_steps, size_t *ret_n) {
    DIR *d = opendir(root);
    if (!d) {
        if (errno == ENOENT) {
            *ret_steps = NULL;
            *ret_n = 0;
            return 0;
        }
        return -errno;
    }
    int64_t *steps = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    int r = 0;
    while ((e = readdir(d))) {
        int64_t s;
        if (!parse_step_name(e->d_name, &s)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            int64_t *p = realloc(steps, cap * sizeof *p);
            if (!p) {
                r = -ENOMEM;
                break;
            }
            steps = p;
        }
        steps[n++] = s;
    }
    closedir(d);
    if (r < 0) {
        free(steps);
        return r;
    }
    if (n) qsort(steps, n, sizeof *steps, cmp_i64_desc);
    *ret_steps = steps;
    *ret_n = n;
    return 0;
}

int lorad_checkpoint_commit(const char *root, int64_t step, char *ret_final, size_t cap, struct lorad_error *err) {
    char tmp[LORAD_CHECKPOINT_PATH_MAX], final[LORAD_CHECKPOINT_PATH_MAX], old[LORAD_CHECKPOINT_PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/.step-%" PRId64 ".tmp", root, step);
    snprintf(final, sizeof final, "%s/step-%" PRId64, root, step);
    /* A repeated step (after a resume) replaces the older copy through .step-N.old, so that some
     * complete step-N exists at every moment. */
    snprintf(old, sizeof old, "%s/.step-%" PRId64 ".old", root, step);
    int r = lorad_dir_swap_in(tmp, final, old);
    if (r < 0) return lorad_error_set(err, r, "", "cannot commit %s as %s: %s", tmp, final, strerror(-r));
    if (ret_final) snprintf(ret_final, cap, "%s", final);
    return 0;
}

void lorad_checkpoint_prune(const char *root, int keep) {
    int64_t *steps;
    size_t n;
    if (keep <= 0 || list_steps(root, &steps, &n) < 0) return;
    for (size_t i = (size_t)keep; i < n; i++) {
        char path[LORAD_CHECKPOINT_PATH_MAX];
        snprintf(path, sizeof path, "%s/step-%" PRId64, root, steps[i]);
        lorad_remove_tree(path);
    }
    free(steps);
}

int lorad_checkpoint_latest(const char *root, int64_t *ret_step, char *ret_path, size_t cap) {
    int64_t *steps;
    size_t n;
    int r = list_steps(root, &steps, &n);
    if (r < 0) return r;
    if (n == 0) return 0;
    *ret_step = steps[0];
    if (ret_path) snprintf(ret_path, cap, "%s/step-%" PRId64, root, steps[0]);
    free(steps);
    return 1;
}

int lorad_checkpoint_steps(const char *root, int64_t **ret_steps, size_t *ret_n) {
    return list_steps(root, ret_steps, ret_n);
}

int lorad_checkpoint_clean_temp(const char *root) {
    DIR *d = opendir(root);
    if (!d) return errno == ENOENT ? 0 : -errno;
    struct dirent *e;
    int r = 0;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        bool temp = strncmp(e->d_name, ".step-", 6) == 0 &&
                    ((len > 4 && strcmp(e->d_name + len - 4, ".tmp") == 0) || (len > 4 && strcmp(e->d_name + len - 4, ".old") == 0));
        if (!temp) continue;
        char path[LORAD_CHECKPOINT_PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", root, e->d_name) >= (int)sizeof path) continue;
        int q = lorad_remove_tree(path);
        if (q < 0) r = q;
    }
    closedir(d);
    return r;
}
