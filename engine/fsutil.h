/* Small durable-file helpers shared by every writer in the engine (checkpoints, exports). */
#pragma once
#include <stddef.h>

/* Writes all of buf to fd, retrying on EINTR and short writes. Returns 0 or -errno. */
int lorad_write_all(int fd, const void *buf, size_t len);

/* fsyncs the directory that contains path, so a rename into it is durable. Returns 0 or -errno. */
int lorad_fsync_parent_dir(const char *path);

/* Creates dir and its missing parents with mode 0755. Returns 0 or -errno. */
int lorad_mkdir_p(const char *dir);
