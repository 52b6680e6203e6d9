/* lorad generate [--model] MODEL [--adapter DIR|FILE] (--prompt TEXT | --prompt-ids 1,2,3) [options]
 *
 * Samples a continuation from a base model, optionally with a LoRA adapter applied as PEFT does at
 * inference (y = W x + scale * B A x, no dropout), through the engine's generator
 * (engine/infer/generate.h): the prompt is run once, then one token per step. This file holds
 * only the command: flags, printing and the logits dump.
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
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "adapter_read.h"
#include "cli.h"
#include "dataset.h"
#include "generate.h"
#include "model_file.h"
#include "model_tokenizer.h"
#include "prompt.h"
#include "safetensors_write.h"
#include "sampler.h"
#include "samples.h"
#include "threadpool.h"
#include "tok_stream.h"
#include "tokenizer.h"

#define GEN_DEFAULT_MAX_TOKENS 128

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
    for (int i = 0; lorad_chat_template_names[i]; i++)
        if (strcmp(s, lorad_chat_template_names[i]) == 0) {
            *ret = (enum lorad_chat_template)i;
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
        case OPT_TEMPERATURE: r = parse_number("--temperature", optarg, 0, LORAD_SAMPLER_MAX_TEMPERATURE, false, &o->temperature); break;
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

/* ---- the run -------------------------------------------------------------------------------- */

struct gen {
    const struct gen_options *o;
    struct lorad_model_file *mf;
    struct lorad_tokenizer *tok;
    struct lorad_adapter *ad;
    struct lorad_generator *gen;
    int32_t *seq; /* prompt then generated ids */
    int n_prompt, n_gen, V;
    float *dump;  /* (dump_rows, V) with --dump-logits, grown as tokens come */
    int dump_rows;
    bool stopped_at_eos;
    struct lorad_text_stream ts; /* ts.tok NULL: ids are printed */
    struct lorad_error *err;
};

/* The engine names the prompt's parts as an API request would; the command names its flags. */
static void name_flag(struct lorad_error *err, const struct gen_options *o) {
    const char *flag = NULL;
    if (strcmp(err->param, "template") == 0) flag = "--template";
    else if (strcmp(err->param, "tokenizer") == 0) flag = "--tokenizer";
    else if (strcmp(err->param, "model") == 0) flag = "--model";
    else if (strcmp(err->param, "adapter") == 0) flag = "--adapter";
    else if (strcmp(err->param, "threads") == 0) flag = "--threads";
    else if (strncmp(err->param, "messages[0]", 11) == 0 && o->system) flag = "--system";
    else if (strcmp(err->param, "prompt") == 0 || strncmp(err->param, "messages", 8) == 0) flag = "--prompt";
    if (flag) snprintf(err->param, sizeof err->param, "%s", flag);
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

/* Writes the text of seq[0..n) that is new since the last call (print false only skips it). */
static int print_text(struct gen *g, const int32_t *seq, int n, bool final, bool print) {
    const char *text;
    size_t len;
    int rc = lorad_text_stream_next(&g->ts, seq, n, final, &text, &len, g->err);
    if (rc == 0 && print && len) {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
    }
    return rc;
}

/* Each generated token: kept for --dump-logits, then printed as an id or as new text (an end
 * token is not text). */
static int on_token(void *ctx, const int32_t *seq, int n, const float *logits, bool at_stop) {
    struct gen *g = ctx;
    const struct gen_options *o = g->o;
    int i = n - 1 - g->n_prompt; /* this token's index among the generated */
    if (o->dump) {
        if (i == g->dump_rows) {
            /* Grown, not sized for --max-tokens up front: generation usually stops far earlier. */
            int rows = g->dump_rows ? 2 * g->dump_rows : 64;
            if (rows > o->max_tokens) rows = o->max_tokens;
            float *p = realloc(g->dump, (size_t)rows * (size_t)g->V * sizeof *p);
            if (!p) return lorad_error_set(g->err, -ENOMEM, "--dump-logits", "out of memory for %d rows of logits", rows);
            g->dump = p;
            g->dump_rows = rows;
        }
        memcpy(g->dump + (size_t)i * (size_t)g->V, logits, (size_t)g->V * sizeof(float));
    }
    g->n_gen = i + 1;
    if (!g->ts.tok) {
        printf((o->echo || i > 0) ? " %d" : "%d", (int)seq[n - 1]);
        return 0;
    }
    return at_stop ? 0 : print_text(g, seq, n, false, true);
}

/* The prompt ids into g->seq (room for the prompt and max_tokens more) and g->n_prompt. Returns
 * 0 or an exit status, the error already reported. */
static int prepare_prompt(struct gen *g) {
    const struct gen_options *o = g->o;
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
        /* checked here too so the message names the flag */
        if (o->system && !lorad_utf8_valid(o->system, strlen(o->system)))
            return runtime_error(&(struct lorad_error){.param = "--system",
                                                       .message = "--system is not valid UTF-8"});
        if (!lorad_utf8_valid(o->prompt, strlen(o->prompt)))
            return runtime_error(&(struct lorad_error){.param = "--prompt",
                                                       .message = "--prompt is not valid UTF-8"});
        struct lorad_encoder enc;
        lorad_encoder_from_tokenizer(&enc, g->tok, g->V);
        struct lorad_prompt_message msgs[2] = {{"system", o->system}, {"user", o->prompt}};
        struct lorad_prompt p = {.no_bos = o->no_bos};
        if (o->chat) {
            p.messages = o->system ? msgs : msgs + 1;
            p.n_messages = o->system ? 2 : 1;
            p.tmpl = lorad_encoder_template(&enc, o->tmpl);
        } else {
            p.text = o->prompt;
        }
        if (lorad_prompt_tokenize(&prompt, &n_prompt, &p, &enc, LORAD_MAX_SEQ_LEN, g->err) < 0) {
            name_flag(g->err, o);
            return runtime_error(g->err);
        }
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

/* The generator for the base or for --adapter, with a KV cache for the whole sequence. */
static int build_generator(struct gen *g) {
    const struct gen_options *o = g->o;
    int rc;
    if (o->adapter && (rc = lorad_adapter_load(o->adapter, &g->mf->weights.cfg, &g->ad, g->err)) < 0) {
        snprintf(g->err->param, sizeof g->err->param, "%s", "--adapter");
        return rc;
    }
    int total = g->n_prompt + o->max_tokens;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    struct lorad_generator_options go = {
        .threads = o->threads ? o->threads : (ncpu > 0 ? (int)ncpu : 1),
        .max_total = total,
        .max_chunk = o->no_kv_cache ? total
                                    : (g->n_prompt < LORAD_GENERATE_PREFILL_CHUNK ? g->n_prompt : LORAD_GENERATE_PREFILL_CHUNK),
        .no_kv_cache = o->no_kv_cache};
    if ((rc = lorad_generator_new(&g->gen, &g->mf->weights, g->ad, &go, g->err)) < 0) name_flag(g->err, o);
    return rc;
}

/* Everything after the flags. Returns an exit status; errors are reported here. */
static int run(struct gen *g) {
    const struct gen_options *o = g->o;
    if (lorad_model_file_open(o->model, &g->mf, g->err) < 0) {
        snprintf(g->err->param, sizeof g->err->param, "%s", "--model");
        return runtime_error(g->err);
    }
    const struct lorad_llama_config *cfg = &g->mf->weights.cfg;
    g->V = cfg->vocab_size;
    if (lorad_model_file_tokenizer(g->mf, o->tokenizer, &g->tok, g->err) < 0) {
        name_flag(g->err, o);
        return runtime_error(g->err);
    }
    int rc = prepare_prompt(g);
    if (rc != 0) return rc;
    if (build_generator(g) < 0) return runtime_error(g->err);
    int32_t stop[LORAD_GENERATE_MAX_STOP_IDS];
    int n_stop = o->ignore_eos ? 0 : lorad_generate_stop_ids(cfg, g->tok, stop);
    struct lorad_sampling sampling = {.temperature = o->temperature, .top_k = o->top_k, .top_p = o->top_p,
                                      .seed = o->seed};
    struct lorad_generation req = {.sampling = &sampling, .max_tokens = o->max_tokens, .stop = stop, .n_stop = n_stop,
                                   .on_token = on_token, .ctx = g};
    if (!o->ids && g->tok && lorad_text_stream_init(&g->ts, g->tok, g->n_prompt + o->max_tokens) < 0)
        rc = lorad_error_set(g->err, -ENOMEM, "", "out of memory");
    if (rc == 0 && !o->ids && !g->tok)
        fprintf(stderr, "lorad generate: %s has no tokenizer: printing token ids (pass --tokenizer for text)\n", o->model);
    if (rc == 0) {
        if (o->echo && !g->ts.tok)
            for (int i = 0; i < g->n_prompt; i++) printf(i ? " %d" : "%d", (int)g->seq[i]);
        if (g->ts.tok) rc = print_text(g, g->seq, g->n_prompt, false, o->echo);
        if (rc == 0) rc = lorad_generate(g->gen, &req, g->seq, g->n_prompt, &g->n_gen, &g->stopped_at_eos, g->err);
        /* The end token is not text; what was held back for a complete character is printed now. */
        if (rc == 0 && g->ts.tok)
            rc = print_text(g, g->seq, g->n_prompt + g->n_gen - (g->stopped_at_eos ? 1 : 0), true, true);
        putchar('\n');
    }
    if (fflush(stdout) != 0 && rc == 0) rc = lorad_error_set(g->err, -EIO, "", "cannot write to standard output");
    if (rc == 0 && o->dump) rc = write_dump(g, g->err);
    return rc < 0 ? runtime_error(g->err) : LORAD_EXIT_OK;
}

int lorad_cmd_generate(int argc, char **argv) {
    struct gen_options o;
    int rc = parse_options(argc, argv, &o);
    if (rc < 0) return LORAD_EXIT_OK; /* --help */
    if (rc > 0) return rc;
    if (!o.seed_given && getrandom(&o.seed, sizeof o.seed, 0) != (ssize_t)sizeof o.seed) o.seed = (uint64_t)getpid();
    struct lorad_error err = {0};
    struct gen g = {.o = &o, .err = &err};
    rc = run(&g);
    lorad_text_stream_clear(&g.ts);
    free(g.dump);
    free(g.seq);
    lorad_generator_free(g.gen);
    lorad_adapter_free(g.ad);
    lorad_tokenizer_free(g.tok);
    lorad_model_file_close(g.mf);
    return rc;
}
