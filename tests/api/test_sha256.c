/* SHA-256 against the FIPS 180-2 / NIST example vectors, fed in odd-sized pieces. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "sha256.h"

static void hash_in_pieces(const char *data, size_t n, size_t piece, char hex[65]) {
    struct lorad_sha256 s;
    uint8_t d[32];
    lorad_sha256_init(&s);
    for (size_t i = 0; i < n; i += piece) lorad_sha256_update(&s, data + i, n - i < piece ? n - i : piece);
    lorad_sha256_final(&s, d);
    lorad_sha256_hex(d, hex);
}

static void test_vectors(void **state) {
    (void)state;
    char hex[65];
    hash_in_pieces("abc", 3, 1, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    hash_in_pieces("", 0, 1, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    for (size_t piece = 1; piece <= 64; piece += 7) {
        hash_in_pieces(two, strlen(two), piece, hex);
        assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    }
    size_t n = 1000000;
    char *a = malloc(n);
    assert_non_null(a);
    memset(a, 'a', n);
    hash_in_pieces(a, n, 4093, hex);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(a);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_vectors)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
