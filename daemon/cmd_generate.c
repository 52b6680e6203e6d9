/* lorad generate [--model] MODEL [--adapter DIR|FILE] (--prompt TEXT | --prompt-ids 1,2,3) [options]
 *
 * Samples a continuation from a base model, optionally with a LoRA adapter applied as PEFT does at
 * inference (y = W x + scale * B A x, no dropout), through the engine's KV-cache inference
 * (lorad_model_infer): the prompt is run once, then one token per step.
 *
 * Prompts. --prompt TEXT is tokenised exactly as training tokenises a prompt/completion record
 * (BOS + text, special-token strings not parsed), or with --chat as one user turn of a chat record
 * up to where the assistant's answer starts, so an adapter sees the token layout it was trained on.
 * --prompt-ids is used as given (no BOS is added) and is the only form a model without a tokenizer
 * (a llama2.c .bin) accepts.
 *
 * Output. Only the generated part is printed (the prompt too with --echo): text streamed as it is
 * decoded, or with --ids the token ids space-separated on one line. Generation stops after
 * --max-tokens tokens or at an end token (the model's and tokenizer's EOS, <|eot_id|> and
 * <|im_end|> when the tokenizer has them), which is included in --ids output and in the dump.
 *
 * Sampling. --temperature 0 (the default) is greedy: the first index of the largest logit. Above
 * 0 the logits are divided by T, cut to the top-k (ties broken by the lower id), turned into
 * probabilities, cut to the smallest set whose probability reaches top-p, and one token is drawn
 * with a uniform number that is a pure function of (--seed, step): same seed, same text.
 *
 * --dump-logits FILE writes a safetensors file (docs/training.md, "lorad generate"):
 *   logits        F32 (n_generated, vocab)  row i: the raw next-token logits (before temperature
 *                                          and cuts) from which generated token i was picked
 *   prompt_ids    I32 (n_prompt)
 *   generated_ids I32 (n_generated)
 * with __metadata__ format "lorad-generate-logits-v1", stop "eos"|"max_tokens", model, adapter,
 * temperature, top_k, top_p, seed.
 *
 * Exit status: 0 success, 1 failure at run time (unreadable model, adapter that does not fit), 2
 * usage (bad or missing flags, text prompt without a tokenizer). */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapter_read.h"
#include "cli.h"
#include "model.h"
#include "model_file.h"
#include "rng.h"
#include "safetensors_write.h"
#include "samples.h"
#include "threadpool.h"
#include "tokenizer.h"

#define GEN_DEFAULT_MAX_TOKENS 128
#define GEN_MAX_TEMPERATURE 1000.0
#define GEN_PREFILL_CHUNK 512 /* prompt tokens run per engine call: bounds the activation buffers */
#define GEN_MAX_STOP_IDS 4

struct gen_options {
    const char *model, *adapter, *prompt, *prompt_ids, *system, *tokenizer, *dump;
    int max_tokens;
    double temperature, top_p;
    int top_k;
    uint64_t seed;
    bool seed_given, ids, chat, no_bos, echo, ignore_eos, no_kv_cache;
    enum lorad_chat_template tmpl; /* AUTO: from the tokenizer's special tokens */
    int threads;                   /* 0: the online CPUs */
};

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "lorad generate: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see 'lorad generate --help')\n");
    va_end(ap);
    return LORAD_EXIT_USAGE;
}

static int runtime_error(const struct lorad_error *err) {
    if (err->param[0]) fprintf(stderr, "lorad generate: %s [%s]\n", err->message, err->param);
    else fprintf(stderr, "lorad generate: %s\n", err->message);
    return LORAD_EXIT_FAILURE;
}

/* ---- flags ---------------------------------------------------------------------------------- */

static int parse_long(const char *flag, const char *s, long lo, long hi, long *ret) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return usage_error("%s needs an integer in [%ld, %ld], got '%s'", flag, lo, hi, s);
    *ret = v;
    return 0;
}

/* A finite number in [lo, hi], or in (lo, hi] when lo_open. */
static int parse_number(const char *flag, const char *s, double lo, double hi, bool lo_open, double *ret) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi || (lo_open && v == lo))
        return usage_error("%s needs a number in %c%g, %g], got '%s'", flag, lo_open ? '(' : '[', lo, hi, s);
    *ret = v;
    return 0;
}

static int parse_template(const char *s, enum lorad_chat_template *ret) {
    static const struct {
        const char *name;
        enum lorad_chat_template t;
    } names[] = {{"auto", LORAD_TEMPLATE_AUTO},
                 {"llama2", LORAD_TEMPLATE_LLAMA2},
                 {"llama3", LORAD_TEMPLATE_LLAMA3},
                 {"chatml", LORAD_TEMPLATE_CHATML},
                 {"none", LORAD_TEMPLATE_NONE}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i].name) == 0) {
            *ret = names[i].t;
            return 0;
        }
    return usage_error("--template must be llama2, llama3, chatml, none or auto, got '%s'", s);
}

enum {
    OPT_MODEL = 256, OPT_ADAPTER, OPT_PROMPT, OPT_PROMPT_IDS, OPT_SYSTEM, OPT_MAX_TOKENS, OPT_TEMPERATURE,
    OPT_TOP_K, OPT_TOP_P, OPT_SEED, OPT_IDS, OPT_CHAT, OPT_TEMPLATE, OPT_TOKENIZER, OPT_NO_BOS, OPT_DUMP,
    OPT_THREADS, OPT_ECHO, OPT_IGNORE_EOS, OPT_NO_KV_CACHE,
};

/* Fills o from argv; returns 0, or the exit status of a usage error (already reported). */
static int parse_options(int argc, char **argv, struct gen_options *o) {
    static const struct option options[] = {
        {"model", required_argument, NULL, OPT_MODEL},
        {"adapter", required_argument, NULL, OPT_ADAPTER},
        {"prompt", required_argument, NULL, OPT_PROMPT},
        {"prompt-ids", required_argument, NULL, OPT_PROMPT_IDS},
        {"system", required_argument, NULL, OPT_SYSTEM},
        {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
        {"temperature", required_argument, NULL, OPT_TEMPERATURE},
        {"top-k", required_argument, NULL, OPT_TOP_K},
        {"top-p", required_argument, NULL, OPT_TOP_P},
        {"seed", required_argument, NULL, OPT_SEED},
        {"ids", no_argument, NULL, OPT_IDS},
        {"print-ids", no_argument, NULL, OPT_IDS},
        {"chat", no_argument, NULL, OPT_CHAT},
        {"template", required_argument, NULL, OPT_TEMPLATE},
        {"tokenizer", required_argument, NULL, OPT_TOKENIZER},
        {"no-bos", no_argument, NULL, OPT_NO_BOS},
        {"dump-logits", required_argument, NULL, OPT_DUMP},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"echo", no_argument, NULL, OPT_ECHO},
        {"ignore-eos", no_argument, NULL, OPT_IGNORE_EOS},
        {"no-kv-cache", no_argument, NULL, OPT_NO_KV_CACHE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (struct gen_options){.max_tokens = GEN_DEFAULT_MAX_TOKENS, .top_p = 1.0};
    optind = 1;
    opterr = 0;
    int c, r = 0;
    long v;
    while (r == 0 && (c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (c) {
        case OPT_MODEL: o->model = optarg; break;
        case OPT_ADAPTER: o->adapter = optarg; break;
        case OPT_PROMPT: o->prompt = optarg; break;
        case OPT_PROMPT_IDS: o->prompt_ids = optarg; break;
        case OPT_SYSTEM: o->system = optarg; break;
        case OPT_MAX_TOKENS:
            if ((r = parse_long("--max-tokens", optarg, 1, LORAD_MAX_SEQ_LEN, &v)) == 0) o->max_tokens = (int)v;
            break;
        case OPT_TEMPERATURE: r = parse_number("--temperature", optarg, 0, GEN_MAX_TEMPERATURE, false, &o->temperature); break;
        case OPT_TOP_K:
            if ((r = parse_long("--top-k", optarg, 0, LORAD_TOKENIZER_MAX_VOCAB, &v)) == 0) o->top_k = (int)v;
            break;
        case OPT_TOP_P: r = parse_number("--top-p", optarg, 0, 1, true, &o->top_p); break;
        case OPT_SEED: {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end || optarg[0] == '-')
                r = usage_error("--seed needs a non-negative integer below 2^64, got '%s'", optarg);
            o->seed = s;
            o->seed_given = true;
            break;
        }
        case OPT_IDS: o->ids = true; break;
        case OPT_CHAT: o->chat = true; break;
        case OPT_TEMPLATE:
            if ((r = parse_template(optarg, &o->tmpl)) == 0) o->chat = true;
            break;
        case OPT_TOKENIZER: o->tokenizer = optarg; break;
        case OPT_NO_BOS: o->no_bos = true; break;
        case OPT_DUMP: o->dump = optarg; break;
        case OPT_THREADS:
            if ((r = parse_long("--threads", optarg, 1, LORAD_MAX_THREADS, &v)) == 0) o->threads = (int)v;
            break;
        case OPT_ECHO: o->echo = true; break;
        case OPT_IGNORE_EOS: o->ignore_eos = true; break;
        case OPT_NO_KV_CACHE: o->no_kv_cache = true; break;
        case 'h': lorad_command_print_usage(lorad_command_find("generate"), stdout); return -1;
        case ':': return usage_error("%s needs a value", argv[optind - 1]);
        default: return usage_error("unknown option %s", argv[optind - 1]);
        }
    }
    if (r) return r;
    for (; optind < argc; optind++) {
        if (o->model) return usage_error("unexpected argument '%s' (the model is already %s)", argv[optind], o->model);
        o->model = argv[optind];
    }
    if (!o->model) return usage_error("the model is required: lorad generate MODEL or --model MODEL");
    if (!o->prompt == !o->prompt_ids) return usage_error("give exactly one of --prompt TEXT and --prompt-ids 1,2,3");
    if (o->prompt_ids && (o->chat || o->system))
        return usage_error("%s needs --prompt TEXT (--prompt-ids is used as given)", o->chat ? "--chat" : "--system");
    if (o->system && !o->chat) return usage_error("--system needs --chat");
    if (o->prompt_ids && o->no_bos) return usage_error("--no-bos applies to --prompt (--prompt-ids is used as given)");
    if ((o->top_k || o->top_p < 1.0) && o->temperature == 0)
        return usage_error("%s needs --temperature > 0 (temperature 0 is greedy)", o->top_k ? "--top-k" : "--top-p");
    return 0;
}

/* "1,2,3" (commas and/or blanks) into a malloc'd array; ids must be in [0, 2^31). */
static int parse_ids(const char *s, int32_t **ret_ids, int *ret_n) {
    size_t cap = strlen(s) / 2 + 1;
    if (cap > LORAD_MAX_SEQ_LEN) cap = LORAD_MAX_SEQ_LEN;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) {
        fprintf(stderr, "lorad generate: out of memory\n");
        return LORAD_EXIT_FAILURE;
    }
    size_t n = 0;
    const char *p = s;
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || v < 0 || v > INT32_MAX || (*end && !strchr(" ,\t\n", *end))) {
            free(ids);
            return usage_error("--prompt-ids needs comma-separated token ids (non-negative integers), got '%.40s'", p);
        }
        if (n == cap) {
            free(ids);
            return usage_error("--prompt-ids holds more than %d ids", LORAD_MAX_SEQ_LEN);
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    if (n == 0) {
        free(ids);
        return usage_error("--prompt-ids is empty");
    }
    *ret_ids = ids;
    *ret_n = (int)n;
    return 0;
}

/* ---- tokenising the prompt ------------------------------------------------------------------ */

static bool has_special(void *ctx, const char *piece) { return lorad_tokenizer_special_id(ctx, piece) >= 0; }

/* Tokenises --prompt as training would: a record is built whose answer is a placeholder
 * ({"prompt", "completion"} without --chat, {"messages": [system?, user, assistant]} with it), run
 * through the same templating and tokenising as a dataset line (lorad_sample_build), and cut where
 * the answer's first trained token begins. */
static int tokenize_prompt(const struct gen_options *o, struct lorad_tokenizer *tok, int vocab,
                           enum lorad_chat_template tmpl, int32_t **ret_ids, int *ret_n, struct lorad_error *err) {
    /* json_pack refuses strings that are not UTF-8; checked first so the error names the flag */
    if (o->system && !lorad_utf8_valid(o->system, strlen(o->system)))
        return lorad_error_set(err, -EINVAL, "--system", "--system is not valid UTF-8");
    if (!lorad_utf8_valid(o->prompt, strlen(o->prompt)))
        return lorad_error_set(err, -EINVAL, "--prompt", "--prompt is not valid UTF-8");
    json_t *rec_json;
    if (o->chat) {
        /* any NULL part (out of memory) fails the whole record */
        json_t *sys = o->system ? json_pack("{s:s, s:s}", "role", "system", "content", o->system) : NULL;
        json_t *user = json_pack("{s:s, s:s}", "role", "user", "content", o->prompt);
        json_t *answer = json_pack("{s:s, s:s}", "role", "assistant", "content", "x");
        rec_json = (o->system && !sys) || !user || !answer
                       ? NULL
                       : json_pack("{s:[o*, o, o]}", "messages", sys, user, answer);
        if (!rec_json) {
            json_decref(sys);
            json_decref(user);
            json_decref(answer);
        }
    } else {
        rec_json = json_pack("{s:s, s:s}", "prompt", o->prompt, "completion", "x");
    }
    char *line = rec_json ? json_dumps(rec_json, JSON_COMPACT) : NULL;
    json_decref(rec_json);
    if (!line) return lorad_error_set(err, -ENOMEM, "--prompt", "out of memory building the prompt");
    struct lorad_record rec;
    enum lorad_dataset_problem problem;
    int rc = lorad_record_parse(line, strlen(line), o->chat ? LORAD_DATA_MESSAGES : LORAD_DATA_PROMPT_COMPLETION, &rec,
                                &problem, err);
    if (rc < 0) {
        free(line);
        snprintf(err->param, sizeof err->param, "%s", "--prompt");
        return rc;
    }
    struct lorad_encoder enc;
    lorad_encoder_from_tokenizer(&enc, tok, vocab);
    /* Every byte gives at most one token (byte fallback), plus the template's own tokens. */
    size_t cap_z = strlen(line) + 256;
    int cap = cap_z > LORAD_MAX_SEQ_LEN ? LORAD_MAX_SEQ_LEN : (int)cap_z;
    struct lorad_sample s = {.tokens = malloc((size_t)cap * sizeof(int32_t)), .train = malloc((size_t)cap)};
    if (!s.tokens || !s.train) rc = lorad_error_set(err, -ENOMEM, "", "out of memory");
    else rc = lorad_sample_build(&s, cap, &rec, o->chat ? tmpl : LORAD_TEMPLATE_NONE, false, &enc, cap, &problem, err);
    lorad_record_clear(&rec);
    free(line);
    if (rc == 0 && s.truncated)
        rc = lorad_error_set(err, -E2BIG, "--prompt", "--prompt is longer than %d tokens", LORAD_MAX_SEQ_LEN);
    int n = 0;
    if (rc == 0) {
        while (n < s.n && !s.train[n]) n++;
        int first = 0;
        if (o->no_bos && n > 0 && s.tokens[0] == enc.bos_id) first = 1;
        if (n - first < 1) rc = lorad_error_set(err, -EINVAL, "--prompt", "the prompt is empty after tokenising");
        else {
            memmove(s.tokens, s.tokens + first, (size_t)(n - first) * sizeof(int32_t));
            n -= first;
        }
    } else if (err->param[0] == '\0' || strcmp(err->param, "data.template") == 0) {
        snprintf(err->param, sizeof err->param, "%s", strcmp(err->param, "data.template") == 0 ? "--template" : "--prompt");
    }
    free(s.train);
    if (rc < 0) {
        free(s.tokens);
        return rc;
    }
    *ret_ids = s.tokens;
    *ret_n = n;
    return 0;
}

/* ---- the adapter ---------------------------------------------------------------------------- */

/* The LoRA configuration an adapter's tensors call for: its rank, alpha and rsLoRA flag, and the
 * modules that actually carry tensors (more robust than target_modules, which PEFT also lets be a
 * regex or full module names). */
static int adapter_lora_config(const struct lorad_adapter *ad, struct lorad_lora_config *ret, struct lorad_error *err) {
    uint32_t targets = 0;
    for (int i = 0; i < ad->n_tensors; i++) {
        const char *name = ad->tensors[i].name;
        if (strncmp(name, "lm_head.", 8) == 0) {
            targets |= 1u << LORAD_LM_HEAD;
            continue;
        }
        for (int m = 0; m < LORAD_LM_HEAD; m++) {
            char key[32];
            snprintf(key, sizeof key, ".%s.lora_", lorad_lora_module_name((enum lorad_lora_module)m));
            if (strstr(name, key)) targets |= 1u << m;
        }
    }
    struct lorad_lora_config lc = {.r = ad->meta.r,
                                   .alpha = (float)ad->meta.alpha,
                                   .dropout = 0.0f,
                                   .targets = targets,
                                   .use_rslora = ad->meta.use_rslora,
                                   .init = LORAD_LORA_INIT_KAIMING};
    int rc = lorad_lora_config_validate(&lc, err);
    if (rc < 0) {
        char what[sizeof err->message];
        snprintf(what, sizeof what, "%s", err->message);
        return lorad_error_set(err, rc, "--adapter", "%s: %s", ad->path, what);
    }
    *ret = lc;
    return 0;
}

/* Copies every adapter tensor into the model's (zeroed) LoRA buffers, so modules or layers the
 * adapter leaves out contribute nothing. */
static int install_adapter(struct lorad_model *m, const struct lorad_adapter *ad, struct lorad_error *err) {
    size_t n;
    float *params = lorad_model_params(m, &n);
    memset(params, 0, n * sizeof *params);
    int rc = lorad_adapter_copy_into(ad, m, err);
    if (rc < 0) snprintf(err->param, sizeof err->param, "%s", "--adapter");
    return rc;
}

/* ---- sampling ------------------------------------------------------------------------------- */

struct candidate {
    float logit;
    int32_t id;
};

static int by_logit_desc(const void *pa, const void *pb) {
    const struct candidate *a = pa, *b = pb;
    if (a->logit != b->logit) return a->logit > b->logit ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

struct sampler {
    double temperature, top_p;
    int top_k, V;
    uint64_t seed;
    struct candidate *cand; /* (V) scratch */
    double *prob;           /* (V) scratch */
};

static int32_t argmax(const float *logits, int V) {
    int32_t best = 0;
    for (int32_t i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

/* The token for generation step `step` from logits (V). Deterministic in (seed, step, logits). */
static int32_t sample(const struct sampler *s, const float *logits, int64_t step) {
    if (s->temperature == 0) return argmax(logits, s->V);
    int n = s->V;
    for (int i = 0; i < n; i++) s->cand[i] = (struct candidate){logits[i], i};
    bool cut_k = s->top_k > 0 && s->top_k < n;
    if (cut_k || s->top_p < 1.0) {
        qsort(s->cand, (size_t)n, sizeof *s->cand, by_logit_desc);
        if (cut_k) n = s->top_k;
    }
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = s->cand[i].logit > mx ? s->cand[i].logit : mx;
    double total = 0;
    for (int i = 0; i < n; i++) total += s->prob[i] = exp(((double)s->cand[i].logit - mx) / s->temperature);
    if (s->top_p < 1.0) {
        /* Candidates are sorted: keep the shortest head whose probability reaches top_p. */
        double cum = 0;
        int keep = 0;
        while (keep < n && cum < s->top_p * total) cum += s->prob[keep++];
        n = keep > 0 ? keep : 1;
        total = 0;
        for (int i = 0; i < n; i++) total += s->prob[i];
    }
    double u = (double)(lorad_rng_u64(s->seed, 0x67656e, (uint64_t)step, 0, 0) >> 11) * 0x1.0p-53 * total;
    for (int i = 0; i < n; i++) {
        u -= s->prob[i];
        if (u < 0) return s->cand[i].id;
    }
    return s->cand[n - 1].id; /* rounding left u just above 0 */
}

/* ---- output --------------------------------------------------------------------------------- */

/* Length of the longest prefix of s[0..n) that does not end inside a UTF-8 sequence. */
static size_t complete_utf8(const char *s, size_t n) {
    size_t i = n, back = 0;
    while (i > 0 && back < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) i--, back++;
    if (i == 0) return n;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t want = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    return back + 1 < want && lead >= 0xC0 ? i - 1 : n;
}

/* Streams decoded text: decodes prompt + generated ids each step and prints what is new, so pieces
 * that only make sense in context (SentencePiece's leading space, bytes of one character split
 * over tokens) come out right. Ids the tokenizer does not know (a model whose embedding rows
 * outnumber its vocabulary) print nothing. */
struct text_stream {
    const struct lorad_tokenizer *tok;
    int32_t *known; /* (capacity of the sequence) scratch: the ids the tokenizer can decode */
    size_t printed; /* bytes of the decoded sequence already written (or, for the prompt, skipped) */
};

/* Decodes seq[0..n) and writes the bytes after ts->printed; with !final an incomplete UTF-8
 * character at the end is held back. print false only advances ts->printed. */
static int stream_text(struct text_stream *ts, const int32_t *seq, int n, bool final, bool print,
                       struct lorad_error *err) {
    int vocab = lorad_tokenizer_vocab_size(ts->tok), m = 0;
    for (int i = 0; i < n; i++)
        if (seq[i] >= 0 && seq[i] < vocab) ts->known[m++] = seq[i];
    char *text;
    size_t len;
    int rc = lorad_tokenizer_decode(ts->tok, ts->known, (size_t)m, &text, &len, err);
    if (rc < 0) return rc;
    size_t upto = final ? len : complete_utf8(text, len);
    if (upto > ts->printed) {
        if (print) {
            fwrite(text + ts->printed, 1, upto - ts->printed, stdout);
            fflush(stdout);
        }
        ts->printed = upto;
    }
    free(text);
    return 0;
}

/* ---- the run -------------------------------------------------------------------------------- */

struct gen {
    const struct gen_options *o;
    struct lorad_model_file *mf;
    struct lorad_tokenizer *tok;
    struct lorad_adapter *ad;
    struct lorad_model *model;
    int32_t *seq; /* prompt then generated ids */
    int n_prompt, n_gen, V;
    float *logits; /* (V) */
    float *dump;   /* (dump_rows, V) with --dump-logits, grown as tokens come */
    int dump_rows;
    int32_t stop[GEN_MAX_STOP_IDS];
    int n_stop;
    bool stopped_at_eos;
};

static int load_tokenizer(struct gen *g, struct lorad_error *err) {
    const struct gen_options *o = g->o;
    int rc = 0;
    if (o->tokenizer) rc = lorad_tokenizer_load(&g->tok, o->tokenizer, err);
    else if (g->mf->has_vocab) rc = lorad_tokenizer_from_vocab(&g->tok, &g->mf->vocab, err);
    else if (g->mf->tokenizer_path) rc = lorad_tokenizer_load(&g->tok, g->mf->tokenizer_path, err);
    if (rc < 0) {
        snprintf(err->param, sizeof err->param, "%s", o->tokenizer ? "--tokenizer" : "--model");
        return rc;
    }
    if (g->tok && lorad_tokenizer_vocab_size(g->tok) > g->V)
        return lorad_error_set(err, -EINVAL, o->tokenizer ? "--tokenizer" : "--model",
                               "the tokenizer has %d pieces but %s only %d (a tokenizer of another model?)",
                               lorad_tokenizer_vocab_size(g->tok), o->model, g->V);
    return 0;
}

static void add_stop(struct gen *g, int32_t id) {
    if (id < 0 || id >= g->V || g->n_stop == GEN_MAX_STOP_IDS) return;
    for (int i = 0; i < g->n_stop; i++)
        if (g->stop[i] == id) return;
    g->stop[g->n_stop++] = id;
}

static bool is_stop(const struct gen *g, int32_t id) {
    for (int i = 0; i < g->n_stop; i++)
        if (g->stop[i] == id) return true;
    return false;
}

/* Runs tokens [from, to) of seq through the model, in chunks the activation buffers hold; the
 * logits of the last one land in g->logits. */
static int feed(struct gen *g, int from, int to, int chunk, struct lorad_error *err) {
    for (int i = from; i < to; i += chunk) {
        int n = to - i < chunk ? to - i : chunk;
        int rc = lorad_model_infer(g->model, g->seq + i, n, g->ad != NULL, g->logits, err);
        if (rc < 0) return rc;
    }
    return 0;
}

static int write_dump(const struct gen *g, struct lorad_error *err) {
    const struct gen_options *o = g->o;
    struct lorad_st_writer *w;
    if (lorad_st_writer_new(&w, o->dump) < 0) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    char temp[32], top_k[16], top_p[32], seed[32];
    snprintf(temp, sizeof temp, "%.17g", o->temperature);
    snprintf(top_k, sizeof top_k, "%d", o->top_k);
    snprintf(top_p, sizeof top_p, "%.17g", o->top_p);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)o->seed);
    int64_t shape_l[2] = {g->n_gen, g->V}, shape_p[1] = {g->n_prompt}, shape_g[1] = {g->n_gen};
    int rc = lorad_st_writer_metadata(w, "format", "lorad-generate-logits-v1");
    if (!rc) rc = lorad_st_writer_metadata(w, "stop", g->stopped_at_eos ? "eos" : "max_tokens");
    if (!rc) rc = lorad_st_writer_metadata(w, "model", o->model);
    if (!rc) rc = lorad_st_writer_metadata(w, "adapter", o->adapter ? o->adapter : "");
    if (!rc) rc = lorad_st_writer_metadata(w, "temperature", temp);
    if (!rc) rc = lorad_st_writer_metadata(w, "top_k", top_k);
    if (!rc) rc = lorad_st_writer_metadata(w, "top_p", top_p);
    if (!rc) rc = lorad_st_writer_metadata(w, "seed", seed);
    if (!rc) rc = lorad_st_writer_add(w, "logits", "F32", shape_l, 2, g->dump, (size_t)g->n_gen * (size_t)g->V * sizeof(float));
    if (!rc) rc = lorad_st_writer_add(w, "prompt_ids", "I32", shape_p, 1, g->seq, (size_t)g->n_prompt * sizeof(int32_t));
    if (!rc) rc = lorad_st_writer_add(w, "generated_ids", "I32", shape_g, 1, g->seq + g->n_prompt,
                                      (size_t)g->n_gen * sizeof(int32_t));
    if (rc < 0) {
        lorad_st_writer_free(w);
        return lorad_error_set(err, rc, "--dump-logits", "cannot build %s", o->dump);
    }
    rc = lorad_st_writer_finish(w, err);
    if (rc < 0) snprintf(err->param, sizeof err->param, "%s", "--dump-logits");
    return rc;
}

/* The prompt ids into g->seq (room for the prompt and max_tokens more) and g->n_prompt. Returns
 * 0 or an exit status, the error already reported. */
static int prepare_prompt(struct gen *g) {
    const struct gen_options *o = g->o;
    struct lorad_error err = {0};
    int32_t *prompt = NULL;
    int n_prompt = 0, rc;
    if (o->prompt_ids) {
        if ((rc = parse_ids(o->prompt_ids, &prompt, &n_prompt)) != 0) return rc;
        for (int i = 0; i < n_prompt; i++)
            if (prompt[i] >= g->V) {
                fprintf(stderr, "lorad generate: --prompt-ids: id %d (position %d) is outside the vocabulary of %s (%d)\n",
                        (int)prompt[i], i, o->model, g->V);
                free(prompt);
                return LORAD_EXIT_FAILURE;
            }
    } else {
        if (!g->tok)
            return usage_error("--prompt needs a tokenizer, and %s has none: pass token ids with --prompt-ids, or a "
                               "tokenizer file with --tokenizer", o->model);
        enum lorad_chat_template tmpl = o->tmpl;
        if (tmpl == LORAD_TEMPLATE_AUTO) tmpl = lorad_chat_template_auto(has_special, g->tok);
        if (tokenize_prompt(o, g->tok, g->V, tmpl, &prompt, &n_prompt, &err) < 0) return runtime_error(&err);
    }
    if ((int64_t)n_prompt + o->max_tokens > LORAD_MAX_SEQ_LEN) {
        free(prompt);
        return usage_error("the prompt (%d tokens) plus --max-tokens %d exceed %d tokens", n_prompt, o->max_tokens,
                           LORAD_MAX_SEQ_LEN);
    }
    int total = n_prompt + o->max_tokens, max_pos = g->mf->weights.cfg.max_seq_len;
    if (max_pos > 0 && total > max_pos)
        fprintf(stderr, "lorad generate: warning: the prompt (%d tokens) plus --max-tokens %d exceed the %d positions "
                        "%s was trained for\n", n_prompt, o->max_tokens, max_pos, o->model);
    g->seq = malloc((size_t)total * sizeof *g->seq);
    if (!g->seq) {
        free(prompt);
        fprintf(stderr, "lorad generate: out of memory\n");
        return LORAD_EXIT_FAILURE;
    }
    memcpy(g->seq, prompt, (size_t)n_prompt * sizeof *prompt);
    free(prompt);
    g->n_prompt = n_prompt;
    return 0;
}

/* Loads --adapter (a directory, a GGUF LoRA or a tar of a PEFT folder) into g->ad and the LoRA
 * configuration it calls for into *ret_lc. -errno with err naming --adapter. */
static int load_adapter(struct gen *g, struct lorad_lora_config *ret_lc, struct lorad_error *err) {
    int rc = lorad_adapter_load(g->o->adapter, &g->mf->weights.cfg, &g->ad, err);
    if (rc < 0) {
        snprintf(err->param, sizeof err->param, "%s", "--adapter");
        return rc;
    }
    return adapter_lora_config(g->ad, ret_lc, err);
}

/* The engine's model for the base (with a minimal LoRA shape that stays unused) or for the
 * adapter, with a KV cache for the whole sequence. *ret_chunk: the most tokens one engine call
 * takes. */
static int build_model(struct gen *g, int *ret_chunk, struct lorad_error *err) {
    const struct gen_options *o = g->o;
    struct lorad_lora_config lc = {.r = 1, .alpha = 1.0f, .targets = 1u << LORAD_Q_PROJ};
    int rc;
    if (o->adapter && (rc = load_adapter(g, &lc, err)) < 0) return rc;
    int total = g->n_prompt + o->max_tokens;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int chunk = o->no_kv_cache ? total : (g->n_prompt < GEN_PREFILL_CHUNK ? g->n_prompt : GEN_PREFILL_CHUNK);
    struct lorad_run_options ro = {.threads = o->threads ? o->threads : (ncpu > 0 ? (int)ncpu : 1),
                                   .max_batch = 1,
                                   .max_seq = chunk,
                                   .kv_cache_len = total};
    if ((rc = lorad_model_new(&g->model, &g->mf->weights, &lc, &ro, err)) < 0) {
        if (strcmp(err->param, "threads") == 0) snprintf(err->param, sizeof err->param, "%s", "--threads");
        return rc;
    }
    if (g->ad && (rc = install_adapter(g->model, g->ad, err)) < 0) return rc;
    *ret_chunk = chunk;
    return 0;
}

/* The loop: run the prompt, then pick a token from the logits, print it, stop or feed it back.
 * Text is streamed with ts when ts->tok is set, ids printed otherwise. */
static int generate_loop(struct gen *g, const struct sampler *s, int chunk, struct text_stream *ts,
                         struct lorad_error *err) {
    const struct gen_options *o = g->o;
    bool text = ts->tok != NULL;
    int n = g->n_prompt, rc;
    if (o->echo && !text)
        for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", (int)g->seq[i]);
    if (text && (rc = stream_text(ts, g->seq, n, false, o->echo, err)) < 0) return rc;
    if ((rc = feed(g, 0, n, chunk, err)) < 0) return rc;
    for (;;) {
        for (int i = 0; i < g->V; i++)
            if (!isfinite(g->logits[i]))
                return lorad_error_set(err, -ERANGE, "", "the logits at generated position %d are not finite (id %d)",
                                       g->n_gen, i);
        if (o->dump) {
            if (g->n_gen == g->dump_rows) {
                /* Grown, not sized for --max-tokens up front: generation usually stops far earlier. */
                int rows = g->dump_rows ? 2 * g->dump_rows : 64;
                if (rows > o->max_tokens) rows = o->max_tokens;
                float *p = realloc(g->dump, (size_t)rows * (size_t)g->V * sizeof *p);
                if (!p) return lorad_error_set(err, -ENOMEM, "--dump-logits", "out of memory for %d rows of logits", rows);
                g->dump = p;
                g->dump_rows = rows;
            }
            memcpy(g->dump + (size_t)g->n_gen * (size_t)g->V, g->logits, (size_t)g->V * sizeof(float));
        }
        int32_t id = sample(s, g->logits, g->n_gen);
        g->seq[n++] = id;
        g->n_gen++;
        g->stopped_at_eos = is_stop(g, id);
        if (!text) printf((o->echo || g->n_gen > 1) ? " %d" : "%d", (int)id);
        else if (!g->stopped_at_eos && (rc = stream_text(ts, g->seq, n, false, true, err)) < 0) return rc;
        if (g->stopped_at_eos || g->n_gen == o->max_tokens) break;
        if (o->no_kv_cache) {
            /* The reference path: the whole sequence again, as one batch, for every token. */
            lorad_model_reset_cache(g->model);
            rc = feed(g, 0, n, chunk, err);
        } else {
            rc = feed(g, n - 1, n, chunk, err);
        }
        if (rc < 0) return rc;
    }
    /* The end token is not text; what was held back for a complete character is printed now. */
    return text ? stream_text(ts, g->seq, n - (g->stopped_at_eos ? 1 : 0), true, true, err) : 0;
}

/* Everything after the flags. Returns an exit status; errors are reported here. */
static int run(struct gen *g) {
    const struct gen_options *o = g->o;
    struct lorad_error err = {0};
    if (lorad_model_file_open(o->model, &g->mf, &err) < 0) {
        snprintf(err.param, sizeof err.param, "%s", "--model");
        return runtime_error(&err);
    }
    const struct lorad_llama_config *cfg = &g->mf->weights.cfg;
    g->V = cfg->vocab_size;
    if (load_tokenizer(g, &err) < 0) return runtime_error(&err);
    int rc = prepare_prompt(g), chunk;
    if (rc != 0) return rc;
    if (build_model(g, &chunk, &err) < 0) return runtime_error(&err);
    if (!o->ignore_eos) {
        add_stop(g, cfg->eos_id);
        if (g->tok) {
            add_stop(g, lorad_tokenizer_eos_id(g->tok));
            add_stop(g, lorad_tokenizer_special_id(g->tok, "<|eot_id|>"));
            add_stop(g, lorad_tokenizer_special_id(g->tok, "<|im_end|>"));
        }
    }
    int total = g->n_prompt + o->max_tokens;
    struct sampler s = {.temperature = o->temperature, .top_p = o->top_p, .top_k = o->top_k, .V = g->V, .seed = o->seed};
    struct text_stream ts = {.tok = o->ids ? NULL : g->tok};
    if (o->temperature > 0) {
        s.cand = malloc((size_t)g->V * sizeof *s.cand);
        s.prob = malloc((size_t)g->V * sizeof *s.prob);
    }
    if (ts.tok) ts.known = malloc((size_t)total * sizeof *ts.known);
    g->logits = malloc((size_t)g->V * sizeof *g->logits);
    if (!g->logits || (o->temperature > 0 && (!s.cand || !s.prob)) || (ts.tok && !ts.known))
        rc = lorad_error_set(&err, -ENOMEM, "", "out of memory");
    if (rc == 0 && !o->ids && !g->tok)
        fprintf(stderr, "lorad generate: %s has no tokenizer: printing token ids (pass --tokenizer for text)\n", o->model);
    if (rc == 0) {
        rc = generate_loop(g, &s, chunk, &ts, &err);
        putchar('\n');
    }
    free(s.cand);
    free(s.prob);
    free(ts.known);
    if (fflush(stdout) != 0 && rc == 0) rc = lorad_error_set(&err, -EIO, "", "cannot write to standard output");
    if (rc == 0 && o->dump) rc = write_dump(g, &err);
    return rc < 0 ? runtime_error(&err) : LORAD_EXIT_OK;
}

int lorad_cmd_generate(int argc, char **argv) {
    struct gen_options o;
    int rc = parse_options(argc, argv, &o);
    if (rc < 0) return LORAD_EXIT_OK; /* --help */
    if (rc > 0) return rc;
    if (!o.seed_given && getrandom(&o.seed, sizeof o.seed, 0) != (ssize_t)sizeof o.seed) o.seed = (uint64_t)getpid();
    struct gen g = {.o = &o};
    rc = run(&g);
    free(g.dump);
    free(g.logits);
    free(g.seq);
    lorad_model_free(g.model);
    lorad_adapter_free(g.ad);
    lorad_tokenizer_free(g.tok);
    lorad_model_file_close(g.mf);
    return rc;
}
