/* Small durable-file helpers shared by every writer in the engine (checkpoints, exports). */
#pragma once
#include <sys/types.h>
#include <stddef.h>

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
