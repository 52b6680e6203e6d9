/* The byte-level pre-tokenizer: the GPT-2 and Llama 3 split regexes written out by hand over
 * code points (no regex engine), plus SmolLM's Digits(individual_digits) split, and the Unicode
 * class lookups they use. Each matcher returns where the leftmost-first alternation of its
 * regex ends when started at i, exactly as a backtracking engine would. */
#include <errno.h>
#include <stdlib.h>

#include "tok_internal.h"

static bool in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid][0]) hi = mid;
        else if (cp > r[mid][1]) lo = mid + 1;
        else return true;
    }
    return false;
}

bool tok_unicode_is_letter(uint32_t cp) {
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return in_ranges(tok_unicode_letter_ranges, tok_unicode_letter_ranges_count, cp);
}

bool tok_unicode_is_number(uint32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return in_ranges(tok_unicode_number_ranges, tok_unicode_number_ranges_count, cp);
}

/* Unicode White_Space property (PropList.txt): the set HF and regex engines call whitespace. */
bool tok_unicode_is_white_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* [^\s\p{L}\p{N}] */
static bool is_other(uint32_t cp) {
    return !tok_unicode_is_white_space(cp) && !tok_unicode_is_letter(cp) && !tok_unicode_is_number(cp);
}

static bool is_newline(uint32_t cp) { return cp == '\r' || cp == '\n'; }

static size_t run_of(const uint32_t *cp, size_t i, size_t end, bool (*pred)(uint32_t)) {
    while (i < end && pred(cp[i])) i++;
    return i;
}

/* 's|'t|'re|'ve|'m|'ll|'d, case-insensitively when fold ((?i:...) of Llama 3; simple case
 * folding also maps U+017F LONG S to s). Returns the match length or 0. */
static size_t match_contraction(const uint32_t *cp, size_t i, size_t end, bool fold) {
    if (cp[i] != '\'' || i + 1 >= end) return 0;
    uint32_t a = cp[i + 1], b = i + 2 < end ? cp[i + 2] : 0;
    if (fold) {
        if (a == 0x17F) a = 's';
        if (a < 0x80 && a >= 'A' && a <= 'Z') a |= 0x20;
        if (b < 0x80 && b >= 'A' && b <= 'Z') b |= 0x20;
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* \s+(?!\S)|\s+ at a whitespace i: a run followed by a non-space gives its last space back (to
 * become the prefix of the next word) unless that would leave the match empty. */
static size_t match_space_tail(const uint32_t *cp, size_t i, size_t end) {
    size_t j = run_of(cp, i, end, tok_unicode_is_white_space);
    return j < end && j - i > 1 ? j - 1 : j;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t match_gpt2(const uint32_t *cp, size_t i, size_t end) {
    size_t k = match_contraction(cp, i, end, false);
    if (k) return i + k;
    size_t s = cp[i] == ' ' && i + 1 < end ? i + 1 : i; /* the optional space; cp[i] alone matches none */
    if (tok_unicode_is_letter(cp[s])) return run_of(cp, s, end, tok_unicode_is_letter);
    if (tok_unicode_is_number(cp[s])) return run_of(cp, s, end, tok_unicode_is_number);
    if (is_other(cp[s])) return run_of(cp, s, end, is_other);
    return match_space_tail(cp, i, end);
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
 * \s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t match_llama3(const uint32_t *cp, size_t i, size_t end) {
    size_t k = match_contraction(cp, i, end, true);
    if (k) return i + k;
    if (tok_unicode_is_letter(cp[i])) return run_of(cp, i, end, tok_unicode_is_letter);
    if (!is_newline(cp[i]) && !tok_unicode_is_number(cp[i]) && i + 1 < end && tok_unicode_is_letter(cp[i + 1]))
        return run_of(cp, i + 1, end, tok_unicode_is_letter);
    if (tok_unicode_is_number(cp[i])) {
        size_t j = i;
        while (j < end && j - i < 3 && tok_unicode_is_number(cp[j])) j++;
        return j;
    }
    size_t s = cp[i] == ' ' && i + 1 < end && is_other(cp[i + 1]) ? i + 1 : i;
    if (is_other(cp[s])) return run_of(cp, run_of(cp, s, end, is_other), end, is_newline);
    /* cp[i] is whitespace. \s*[\r\n]+ backtracks \s* to the run's last newline. */
    size_t j = run_of(cp, i, end, tok_unicode_is_white_space);
    for (size_t m = j; m > i; m--)
        if (is_newline(cp[m - 1])) return m;
    return match_space_tail(cp, i, end);
}

struct pretok_run {
    const char *text;
    const uint32_t *off; /* byte offset of each code point, n + 1 entries (text <= 4 GiB) */
    const uint32_t *cp;
    enum tok_pretok pattern;
    tok_span_fn fn;
    void *ctx;
};

/* Splits code points [a, b) by the pattern; the regex sees b as the end of its input. */
static int split_pattern(const struct pretok_run *r, size_t a, size_t b) {
    if (r->pattern == TOK_PRETOK_NONE) return a < b ? r->fn(r->ctx, r->text + r->off[a], r->off[b] - r->off[a]) : 0;
    for (size_t i = a; i < b;) {
        size_t j = r->pattern == TOK_PRETOK_LLAMA3 ? match_llama3(r->cp, i, b) : match_gpt2(r->cp, i, b);
        assert(j > i && j <= b);
        int rc = r->fn(r->ctx, r->text + r->off[i], r->off[j] - r->off[i]);
        if (rc < 0) return rc;
        i = j;
    }
    return 0;
}

int tok_pretokenize(enum tok_pretok pattern, bool split_digits, const char *text, size_t len, tok_span_fn fn,
                    void *ctx) {
    if (len == 0) return 0;
    if (len > UINT32_MAX) return -E2BIG; /* callers hold LORAD_TOKENIZER_MAX_TEXT, far below */
    uint32_t *cp = malloc(len * sizeof *cp);
    uint32_t *off = malloc((len + 1) * sizeof *off);
    int rc = cp && off ? 0 : -ENOMEM;
    size_t n = 0;
    for (size_t i = 0; rc == 0 && i < len; n++) {
        off[n] = (uint32_t)i;
        i += tok_utf8_decode(text + i, len - i, &cp[n]);
    }
    if (rc == 0) off[n] = (uint32_t)len;
    struct pretok_run r = {text, off, cp, pattern, fn, ctx};
    if (rc == 0 && !split_digits) rc = split_pattern(&r, 0, n);
    /* Digits(individual_digits): every \p{N} becomes a piece of its own before the regex runs. */
    for (size_t a = 0; rc == 0 && split_digits && a < n;) {
        size_t b = a;
        while (b < n && !tok_unicode_is_number(cp[b])) b++;
        rc = split_pattern(&r, a, b);
        if (rc == 0 && b < n) rc = split_pattern(&r, b, b + 1);
        a = b + 1;
    }
    free(cp);
    free(off);
    return rc;
}
