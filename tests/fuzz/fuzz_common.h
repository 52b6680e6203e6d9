/* Shared by the libFuzzer targets (issue 20): each target feeds one parser the fuzzer's bytes and
 * frees what it built, so AddressSanitizer and UndefinedBehaviorSanitizer see every read, write
 * and leak. Parsers that take a path get the bytes as a file: a memfd named by /proc/self/fd. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* path (at least 64 bytes) names a file holding data; returns its fd (close it after) or aborts:
 * a harness that cannot make its input is broken, not a finding. */
static inline int fuzz_file(const uint8_t *data, size_t size, char *path) {
    int fd = memfd_create("fuzz", 0);
    if (fd < 0) abort();
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(fd, data + off, size - off);
        if (w <= 0) abort();
        off += (size_t)w;
    }
    snprintf(path, 64, "/proc/self/fd/%d", fd);
    return fd;
}

/* The bytes as a NUL-terminated string (a copy: the fuzzer's buffer has no terminator). */
static inline char *fuzz_string(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    if (!s) abort();
    memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* Splits data at its first NUL byte: *a the part before, *b the part after (empty if none). */
static inline void fuzz_split(const uint8_t *data, size_t size, const uint8_t **a, size_t *na, const uint8_t **b,
                              size_t *nb) {
    const uint8_t *z = memchr(data, 0, size);
    *a = data;
    *na = z ? (size_t)(z - data) : size;
    *b = z ? z + 1 : data + size;
    *nb = z ? size - *na - 1 : 0;
}

/* For the tokenizer targets: a loaded tokenizer must encode and decode a text with every kind of
 * piece (words, accents, digits, an emoji's bytes, a special token's spelling) without a fault. */
#ifdef LORAD_FUZZ_TOKENIZER
#include "tokenizer.h"
static inline void fuzz_round_trip(const struct lorad_tokenizer *t) {
    static const char text[] = "Hello world, \xc3\xa9t\xc3\xa9 123 \xf0\x9f\x99\x82 <s><|im_start|>\n\t  x";
    int32_t *ids;
    size_t n;
    struct lorad_error err = {0};
    if (lorad_tokenizer_encode(t, text, sizeof text - 1, LORAD_TOKENIZER_DEFAULT, LORAD_TOKENIZER_DEFAULT, &ids, &n,
                               &err) != 0)
        return;
    char *back;
    size_t len;
    if (lorad_tokenizer_decode(t, ids, n, &back, &len, &err) == 0) free(back);
    free(ids);
}
#endif
