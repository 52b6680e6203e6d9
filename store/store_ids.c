/* Object ids: a type prefix and 24 random alphanumerics, and the validator that keeps client
 * strings from ever reaching a path or a query unless they have exactly that shape. */
#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "store_internal.h"

static const char ALPHABET[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

int lorad_store_new_id(const char *prefix, char out[LORAD_STORE_ID_MAX]) {
    size_t plen = strlen(prefix);
    if (plen + LORAD_STORE_ID_RANDOM_LEN + 1 > LORAD_STORE_ID_MAX) return -ENAMETOOLONG;
    memcpy(out, prefix, plen);
    size_t have = 0;
    while (have < LORAD_STORE_ID_RANDOM_LEN) {
        unsigned char buf[64];
        ssize_t n = getrandom(buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        /* 248 = 4 * 62: rejecting bytes above it keeps every character equally likely. */
        for (ssize_t i = 0; i < n && have < LORAD_STORE_ID_RANDOM_LEN; i++)
            if (buf[i] < 248) out[plen + have++] = ALPHABET[buf[i] % 62];
    }
    out[plen + LORAD_STORE_ID_RANDOM_LEN] = '\0';
    return 0;
}

bool lorad_store_id_valid(const char *prefix, const char *str) {
    if (!prefix || !str) return false;
    size_t plen = strlen(prefix);
    if (strncmp(str, prefix, plen) != 0) return false;
    const char *p = str + plen;
    for (int i = 0; i < LORAD_STORE_ID_RANDOM_LEN; i++) {
        char ch = p[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        if (!ok) return false; /* also stops at the NUL of a short string */
    }
    return p[LORAD_STORE_ID_RANDOM_LEN] == '\0';
}
