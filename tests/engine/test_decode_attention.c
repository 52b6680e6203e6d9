/* The decode attention kernels (lorad_decode_attend_f32/_bf16) against the double-precision
 * reference lorad_decode_attend_ref, within an error bound derived below, for head sizes that
 * fill whole vectors and ones that leave tails, and key counts from 1 up.
 *
 * The kernels pick their code by lorad_isa_active(), fixed per process, so ctest runs this file
 * again under LORAD_ISA=avx2 and LORAD_ISA=baseline (tests/engine/CMakeLists.txt).
 *
 * Error bound, u = 2^-24. A score s_j = scale * q.K_j passes through at most hd + 6 roundings
 * (products, lane sums, the horizontal sum, the scale), so |ds_j| <= e_s = 1.1 (hd + 6) u
 * scale * sum_k |q_k K_jk|. The weights p_j / sum p are invariant to the shift by the maximum, so
 * each is off by a relative 2 max_j e_s (its score and, through the sum, the others'), plus the
 * polynomial exp's relative error (below 4e-7, vec_math.h says ~2e-7), plus gamma_n for the sum
 * of n weights. The output sum_j p_j V_jk adds gamma_{n+2} relative to sum_j w_j |V_jk| (n FMAs,
 * the product by 1/sum, the reciprocal itself). So
 *   |out_k - ref_k| <= (2 max e_s + 4e-7 + 1.1 (2n + 2) u) * sum_j w_j |V_jk|
 * with w the exact softmax weights; the test allows twice that. Dropping one key of n moves an
 * output by about w_j |V_jk| ~ 1/n, far above the bound at every n tested. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_features.h"
#include "decode_attention.h"
#include "weights.h"

static uint64_t rng = 0xD1B54A32D192ED03ull;
/* uniform in [-1, 1) (splitmix64) */
static float uniform(void) {
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) * 0x1p-52 - 1.0);
}

/* One case: n_keys rows of K and V with row stride `stride`, the head at offset `off`. */
static void check_case(int hd, int n_keys, int64_t stride, int64_t off, bool bf16) {
    size_t n = (size_t)(n_keys * stride);
    float *K = malloc(n * sizeof(float)), *V = malloc(n * sizeof(float)), *q = malloc((size_t)hd * sizeof(float));
    uint16_t *Kb = malloc(n * sizeof(uint16_t)), *Vb = malloc(n * sizeof(uint16_t));
    float *out = malloc((size_t)hd * sizeof(float)), *ref = malloc((size_t)hd * sizeof(float));
    float *scores = malloc((size_t)n_keys * sizeof(float));
    double *w = malloc((size_t)n_keys * sizeof(double));
    assert_true(K && V && q && Kb && Vb && out && ref && scores && w);
    /* scores of a few units, as trained heads give, so the softmax is neither flat nor one-hot */
    for (int k = 0; k < hd; k++) q[k] = 3.0f * uniform();
    for (size_t i = 0; i < n; i++) {
        K[i] = uniform();
        V[i] = uniform();
        Kb[i] = lorad_f32_to_bf16(K[i]);
        Vb[i] = lorad_f32_to_bf16(V[i]);
        if (bf16) { /* the reference sees exactly the values the kernel reads */
            K[i] = lorad_bf16_to_f32(Kb[i]);
            V[i] = lorad_bf16_to_f32(Vb[i]);
        }
    }
    /* poison: the kernel must write every output element */
    for (int k = 0; k < hd; k++) out[k] = NAN;
    if (bf16) lorad_decode_attend_bf16(out, scores, q, Kb + off, Vb + off, stride, n_keys, hd);
    else lorad_decode_attend_f32(out, scores, q, K + off, V + off, stride, n_keys, hd);
    lorad_decode_attend_ref(ref, q, K + off, V + off, stride, n_keys, hd);

    const double u = 0x1p-24, scale = 1.0 / sqrt((double)hd);
    double e_s = 0, mx = -INFINITY, sum = 0;
    for (int j = 0; j < n_keys; j++) {
        double s = 0, a = 0;
        for (int k = 0; k < hd; k++) {
            s += (double)q[k] * K[off + j * stride + k];
            a += fabs((double)q[k] * K[off + j * stride + k]);
        }
        w[j] = s * scale;
        mx = w[j] > mx ? w[j] : mx;
        double e = 1.1 * (hd + 6) * u * scale * a;
        e_s = e > e_s ? e : e_s;
    }
    for (int j = 0; j < n_keys; j++) sum += (w[j] = exp(w[j] - mx));
    double rel = 2 * e_s + 4e-7 + 1.1 * (2 * n_keys + 2) * u;
    for (int k = 0; k < hd; k++) {
        double mag = 0;
        for (int j = 0; j < n_keys; j++) mag += w[j] / sum * fabs((double)V[off + j * stride + k]);
        double bound = 2 * rel * mag + 1e-30, err = fabs((double)out[k] - (double)ref[k]);
        if (!(err <= bound))
            fail_msg("%s hd %d keys %d stride %lld: out[%d] = %.9g, reference %.9g, error %.3g > bound %.3g",
                     bf16 ? "bf16" : "f32", hd, n_keys, (long long)stride, k, out[k], ref[k], err, bound);
    }
    free(K), free(V), free(q), free(Kb), free(Vb), free(out), free(ref), free(scores), free(w);
}

static void test_isa_follows_env(void **state) {
    (void)state;
    const char *env = getenv("LORAD_ISA");
    enum lorad_isa active = lorad_isa_active(), want = lorad_isa_detected();
    for (int i = LORAD_ISA_BASELINE; i <= LORAD_ISA_AVX512_BF16; i++)
        if (env && strcmp(env, lorad_isa_name((enum lorad_isa)i)) == 0 && (enum lorad_isa)i < want) want = (enum lorad_isa)i;
    print_message("decode attention runs the %s code (LORAD_ISA=%s)\n", lorad_isa_name(active), env ? env : "");
    assert_int_equal(active, want);
}

static void test_matches_reference(void **state) {
    (void)state;
    /* whole vectors of 16 and 8 lanes, tails of each, a head smaller than one vector */
    const int hds[] = {64, 128, 80, 72, 8, 5};
    const int keys[] = {1, 2, 7, 33, 300};
    for (size_t h = 0; h < sizeof hds / sizeof hds[0]; h++)
        for (size_t n = 0; n < sizeof keys / sizeof keys[0]; n++)
            for (int bf16 = 0; bf16 <= 1; bf16++) {
                int hd = hds[h];
                check_case(hd, keys[n], hd, 0, bf16);              /* one head per row */
                check_case(hd, keys[n], 4 * (int64_t)hd, 2 * hd, bf16); /* the third of four KV heads */
            }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_isa_follows_env),
        cmocka_unit_test(test_matches_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
