/* Read-only whole-file mappings (map_file.h). */
#include "map_file.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int lorad_map_file(const char *path, struct lorad_mapping *ret_map, struct lorad_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lorad_error_set(err, -errno, "model", "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int r = -errno;
        close(fd);
        return lorad_error_set(err, r, "model", "cannot stat %s: %s", path, strerror(-r));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return lorad_error_set(err, -EINVAL, "model", "%s is not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return lorad_error_set(err, -EINVAL, "model", "%s is empty", path);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    int saved = errno;
    close(fd); /* the mapping keeps the file alive */
    if (p == MAP_FAILED) return lorad_error_set(err, -saved, "model", "cannot map %s: %s", path, strerror(saved));
    *ret_map = (struct lorad_mapping){.data = p, .size = (size_t)st.st_size};
    return 0;
}

void lorad_unmap(struct lorad_mapping *map) {
    if (map->data) munmap((void *)map->data, map->size);
    *map = (struct lorad_mapping){0};
}

void *lorad_anon_alloc(size_t bytes) {
    void *p = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void lorad_anon_free(void *p, size_t bytes) {
    if (p) munmap(p, bytes ? bytes : 1);
}
