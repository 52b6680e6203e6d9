/* SHA-256 (FIPS 180-4), incremental, so uploads are hashed while they stream to disk. */
#pragma once
#include <stddef.h>
#include <stdint.h>

struct lorad_sha256 {
    uint32_t h[8];
    uint64_t total_bytes;
    uint8_t block[64];
    size_t block_len;
};

void lorad_sha256_init(struct lorad_sha256 *s);
void lorad_sha256_update(struct lorad_sha256 *s, const void *data, size_t n);
/* Writes the 32-byte digest; s must be re-initialised before reuse. */
void lorad_sha256_final(struct lorad_sha256 *s, uint8_t ret_digest[32]);
/* Writes 64 lowercase hex digits and a NUL. */
void lorad_sha256_hex(const uint8_t digest[32], char ret_hex[65]);
