/* POSIX ustar archives: the header, shared by the archive writer (tar_write.c) and the
 * adapter.tar reader (adapter_read.c) as 512-byte blocks with these field offsets, and the writer. */
#pragma once
#include <stdint.h>

#include "error.h"

enum {
    LORAD_TAR_BLOCK = 512,
    LORAD_TAR_NAME = 0,      /* name[100] */
    LORAD_TAR_MODE = 100,    /* octal[8] */
    LORAD_TAR_UID = 108,     /* octal[8] */
    LORAD_TAR_GID = 116,     /* octal[8] */
    LORAD_TAR_SIZE = 124,    /* octal[12] */
    LORAD_TAR_MTIME = 136,   /* octal[12] */
    LORAD_TAR_CHKSUM = 148,  /* octal[8] */
    LORAD_TAR_TYPE = 156,    /* '0' or '\0' regular file, 'x'/'g' pax, 'L'/'K' GNU long name/link */
    LORAD_TAR_MAGIC = 257,   /* "ustar\0" (POSIX) or "ustar " (GNU) */
    LORAD_TAR_VERSION = 263, /* "00" */
    LORAD_TAR_PREFIX = 345,  /* prefix[155], POSIX only */
};

/* The header checksum: the sum of the header's bytes with the checksum field counted as spaces. */
static inline unsigned lorad_tar_header_sum(const uint8_t h[LORAD_TAR_BLOCK]) {
    unsigned sum = 0;
    for (int i = 0; i < LORAD_TAR_BLOCK; i++) sum += (i >= LORAD_TAR_CHKSUM && i < LORAD_TAR_CHKSUM + 8) ? ' ' : h[i];
    return sum;
}

/* Writes an uncompressed POSIX ustar archive at tar_path holding the named regular files of dir
 * under the archive folder name `folder`/ (names are plain file names, no '/'). */
int lorad_tar_write(const char *tar_path, const char *dir, const char *const *names, int n_names, const char *folder,
                    struct lorad_error *err);
