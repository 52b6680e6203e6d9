/* Small durable-file helpers shared by every writer in the engine (checkpoints, exports). */
#pragma once
#include <stdio.h>
#include <stddef.h>
#include <sys/types.h>

#define LORAD_FSUTIL_PATH_MAX 4096

/* Writes all of buf to fd, retrying on EINTR and short writes. Returns 0 or -errno. */
int lorad_write_all(int fd, const void *buf, size_t len);

/* fsyncs the directory that contains path, so a rename into it is durable. Returns 0 or -errno. */
int lorad_fsync_parent_dir(const char *path);

/* Creates dir and its missing parents with mode 0755. Returns 0 (also when dir already exists),
 * -ENOTDIR when a file of that name is in the way, or -errno. */
int lorad_mkdir_p(const char *dir);
/* The same with the mode of every directory it creates (existing ones keep theirs). */
int lorad_mkdir_p_mode(const char *dir, mode_t mode);

/* out = "dir/name". Returns 0, or -ENAMETOOLONG when it does not fit in cap bytes. */
int lorad_path_join(char *out, size_t cap, const char *dir, const char *name);

/* Removes a directory tree (files and subdirectories). Returns 0 or -errno; missing is fine. */
int lorad_remove_tree(const char *path);

/* A file that appears at its path whole or not at all: written as path.tmp, then fsync, rename
 * over path, fsync of the directory. Every writer of a durable file goes through this. */
struct lorad_atomic_file {
    int fd;   /* write here (lorad_write_all), or through fp */
    FILE *fp; /* set by lorad_atomic_fdopen */
    char tmp[LORAD_FSUTIL_PATH_MAX];
    char path[LORAD_FSUTIL_PATH_MAX];
};
/* Creates path.tmp (mode 0644, truncated). Returns 0, -ENAMETOOLONG or open's -errno. */
int lorad_atomic_open(struct lorad_atomic_file *f, const char *path);
/* A stdio stream over f->fd, owned by f (lorad_atomic_finish closes it). Returns it or NULL. */
FILE *lorad_atomic_fdopen(struct lorad_atomic_file *f);
/* With rc == 0: flushes, fsyncs, renames path.tmp over path and fsyncs the directory; with any
 * rc or failure: closes and removes path.tmp, leaving path as it was. Returns rc, or the first
 * failure of these steps. */
int lorad_atomic_finish(struct lorad_atomic_file *f, int rc);
/* The whole of data (len bytes) as path, atomically as above. Returns 0 or -errno. */
int lorad_atomic_write_file(const char *path, const void *data, size_t len);

/* Swaps the finished directory tmp in as final so that a complete final exists at every moment:
 * every regular file in tmp and tmp itself are fsynced, an existing final moves aside to old,
 * tmp is renamed to final, the parent is fsynced, old is removed. Returns 0 or -errno (tmp left
 * for the caller to remove). */
int lorad_dir_swap_in(const char *tmp, const char *final, const char *old);
