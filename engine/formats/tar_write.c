/* Uncompressed POSIX ustar archives: 512-byte headers with octal fields and a checksum, file data
 * padded to 512 bytes, two zero blocks at the end. Enough for one folder of regular files. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fsutil.h"
#include "tar.h"

static void octal(char *field, size_t width, unsigned long long v) {
    snprintf(field, width, "%0*llo", (int)width - 1, v);
}

static int tar_header(unsigned char block[512], const char *name, unsigned long long size, unsigned long long mtime,
                      char type, unsigned mode) {
    memset(block, 0, 512);
    if (strlen(name) >= 100) return -ENAMETOOLONG;
    memcpy(block, name, strlen(name));
    octal((char *)block + LORAD_TAR_MODE, 8, mode);
    octal((char *)block + LORAD_TAR_UID, 8, 0);
    octal((char *)block + LORAD_TAR_GID, 8, 0);
    octal((char *)block + LORAD_TAR_SIZE, 12, size);
    octal((char *)block + LORAD_TAR_MTIME, 12, mtime);
    block[LORAD_TAR_TYPE] = (unsigned char)type;
    memcpy(block + LORAD_TAR_MAGIC, "ustar", 6); /* magic "ustar\0" */
    memcpy(block + LORAD_TAR_VERSION, "00", 2);
    snprintf((char *)block + LORAD_TAR_CHKSUM, 8, "%06o", lorad_tar_header_sum(block));
    block[LORAD_TAR_CHKSUM + 7] = ' ';
    return 0;
}

static int copy_file(int out, const char *path, unsigned long long size) {
    int in = open(path, O_RDONLY | O_CLOEXEC);
    if (in < 0) return -errno;
    char buf[1 << 16];
    unsigned long long left = size;
    int r = 0;
    while (left > 0 && r == 0) {
        ssize_t n = read(in, buf, left < sizeof buf ? left : sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            r = n < 0 ? -errno : -EIO; /* the file shrank while we archived it */
            break;
        }
        r = lorad_write_all(out, buf, (size_t)n);
        left -= (unsigned long long)n;
    }
    close(in);
    return r;
}

int lorad_tar_write(const char *tar_path, const char *dir, const char *const *names, int n_names, const char *folder,
                    struct lorad_error *err) {
    struct lorad_atomic_file out;
    int r = lorad_atomic_open(&out, tar_path);
    if (r < 0) return lorad_error_set(err, r, "", "cannot create %s.tmp: %s", tar_path, strerror(-r));
    int fd = out.fd;
    unsigned char block[512];
    static const unsigned char zeros[1024];
    unsigned long long now = (unsigned long long)time(NULL);
    char entry[256];
    snprintf(entry, sizeof entry, "%s/", folder);
    r = tar_header(block, entry, 0, now, '5', 0755);
    if (r == 0) r = lorad_write_all(fd, block, 512);
    for (int i = 0; r == 0 && i < n_names; i++) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (strchr(names[i], '/') || stat(path, &st) < 0 || !S_ISREG(st.st_mode)) {
            r = lorad_error_set(err, -ENOENT, "", "cannot archive %s: not a regular file", path);
            break;
        }
        snprintf(entry, sizeof entry, "%s/%s", folder, names[i]);
        r = tar_header(block, entry, (unsigned long long)st.st_size, (unsigned long long)st.st_mtime, '0', 0644);
        if (r == 0) r = lorad_write_all(fd, block, 512);
        if (r == 0) r = copy_file(fd, path, (unsigned long long)st.st_size);
        if (r == 0) r = lorad_write_all(fd, zeros, (512 - (size_t)st.st_size % 512) % 512);
    }
    if (r == 0) r = lorad_write_all(fd, zeros, 1024);
    r = lorad_atomic_finish(&out, r);
    if (r < 0) {
        if (!err || !err->message[0]) lorad_error_set(err, r, "", "cannot write %s: %s", tar_path, strerror(-r));
    }
    return r;
}
