#include "checkpoint_dir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)ftw;
    return (flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 && errno != ENOENT ? -1 : 0;
}

int lorad_remove_tree(const char *path) {
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) < 0 && errno != ENOENT) return -errno;
    return 0;
}

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

static int fsync_path(const char *path, int flags) {
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0) return -errno;
    int r = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return r;
}

/* fsyncs every regular file directly inside dir, then dir itself. */
static int fsync_dir_contents(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -errno;
    int r = 0;
    struct dirent *e;
    while (r == 0 && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[LORAD_CHECKPOINT_PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path) {
            r = -ENAMETOOLONG;
            break;
        }
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISREG(st.st_mode)) r = fsync_path(path, O_RDONLY);
    }
    closedir(d);
    return r ? r : fsync_path(dir, O_RDONLY | O_DIRECTORY);
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
    int r = fsync_dir_contents(tmp);
    if (r < 0) return lorad_error_set(err, r, "", "cannot sync %s: %s", tmp, strerror(-r));
    /* A repeated step (after a resume) replaces the older copy: move it aside first so that some
     * complete step-N exists at every moment. */
    snprintf(old, sizeof old, "%s/.step-%" PRId64 ".old", root, step);
    struct stat st;
    bool had_old = stat(final, &st) == 0;
    if (had_old) {
        lorad_remove_tree(old);
        if (rename(final, old) < 0) return lorad_error_set(err, -errno, "", "cannot replace %s: %s", final, strerror(errno));
    }
    if (rename(tmp, final) < 0) return lorad_error_set(err, -errno, "", "cannot rename %s: %s", tmp, strerror(errno));
    if ((r = lorad_fsync_parent_dir(final)) < 0) return lorad_error_set(err, r, "", "cannot sync %s", root);
    if (had_old) lorad_remove_tree(old);
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
