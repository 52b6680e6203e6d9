#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <ftw.h>
#include <stdbool.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int lorad_write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int fsync_path(const char *path, int flags) {
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0) return -errno;
    int r = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return r;
}

int lorad_fsync_parent_dir(const char *path) {
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir) return -ENAMETOOLONG;
    char *slash = strrchr(dir, '/');
    if (!slash) strcpy(dir, ".");
    else if (slash == dir) dir[1] = '\0';
    else *slash = '\0';
    return fsync_path(dir, O_RDONLY | O_DIRECTORY);
}

int lorad_mkdir_p_mode(const char *dir, mode_t mode) {
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) return -ENAMETOOLONG;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, mode) < 0 && errno != EEXIST) return -errno;
        *p = '/';
    }
    if (mkdir(buf, mode) == 0) return 0;
    if (errno != EEXIST) return -errno;
    /* EEXIST also means a file of that name is in the way */
    struct stat st;
    if (stat(buf, &st) < 0) return -errno;
    return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

int lorad_mkdir_p(const char *dir) {
    return lorad_mkdir_p_mode(dir, 0755);
}

int lorad_path_join(char *out, size_t cap, const char *dir, const char *name) {
    int n = snprintf(out, cap, "%s/%s", dir, name);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)ftw;
    return (flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 && errno != ENOENT ? -1 : 0;
}

int lorad_remove_tree(const char *path) {
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) < 0 && errno != ENOENT) return -errno;
    return 0;
}

/* Contract: on success f owns the open path.tmp until lorad_atomic_finish. */
int lorad_atomic_open(struct lorad_atomic_file *f, const char *path) {
    f->fd = -1;
    f->fp = NULL;
    if (snprintf(f->path, sizeof f->path, "%s", path) >= (int)sizeof f->path ||
        snprintf(f->tmp, sizeof f->tmp, "%s.tmp", path) >= (int)sizeof f->tmp)
        return -ENAMETOOLONG;
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    return f->fd < 0 ? -errno : 0;
}

FILE *lorad_atomic_fdopen(struct lorad_atomic_file *f) {
    if (!f->fp) f->fp = fdopen(f->fd, "w");
    return f->fp;
}

int lorad_atomic_finish(struct lorad_atomic_file *f, int rc) {
    if (rc == 0 && f->fp && fflush(f->fp) != 0) rc = -errno;
    if (rc == 0 && fsync(f->fd) < 0) rc = -errno;
    /* fclose closes the descriptor under the stream */
    int closed = f->fp ? fclose(f->fp) : close(f->fd);
    if (closed != 0 && rc == 0) rc = -errno;
    f->fp = NULL;
    f->fd = -1;
    if (rc == 0 && rename(f->tmp, f->path) < 0) rc = -errno;
    if (rc == 0) rc = lorad_fsync_parent_dir(f->path);
    if (rc < 0) unlink(f->tmp);
    return rc;
}

int lorad_atomic_write_file(const char *path, const void *data, size_t len) {
    struct lorad_atomic_file f;
    int r = lorad_atomic_open(&f, path);
    if (r < 0) return r;
    return lorad_atomic_finish(&f, lorad_write_all(f.fd, data, len));
}

/* fsyncs every regular file directly inside dir, then dir itself. */
static int fsync_dir_contents(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -errno;
    int r = 0;
    struct dirent *e;
    while (r == 0 && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[LORAD_FSUTIL_PATH_MAX];
        if (lorad_path_join(path, sizeof path, dir, e->d_name) < 0) {
            r = -ENAMETOOLONG;
            break;
        }
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISREG(st.st_mode)) r = fsync_path(path, O_RDONLY);
    }
    closedir(d);
    return r ? r : fsync_path(dir, O_RDONLY | O_DIRECTORY);
}

int lorad_dir_swap_in(const char *tmp, const char *final, const char *old) {
    int r = fsync_dir_contents(tmp);
    if (r < 0) return r;
    struct stat st;
    bool had_old = stat(final, &st) == 0;
    if (had_old) {
        lorad_remove_tree(old);
        if (rename(final, old) < 0) return -errno;
    }
    if (rename(tmp, final) < 0) return -errno;
    if ((r = lorad_fsync_parent_dir(final)) < 0) return r;
    if (had_old) lorad_remove_tree(old);
    return 0;
}
