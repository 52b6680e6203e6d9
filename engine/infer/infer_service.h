/* The inference service behind the OpenAI-compatible routes: bases and adapters loaded on first use
 * and cached under a memory budget, and one scheduler thread that steps every running generation of
 * a base together (engine/infer/decoder.h), each with its own adapter, sampler and stop strings.
 *
 * It knows nothing of HTTP or SQL: the caller resolves a model name to a base path and an adapter
 * path (never from a client string), submits a request and reads its stream of events; closing the
 * stream ends the generation and frees its slots at once, whether it finished or not.
 *
 * Threads: `threads` compute threads in all (the scheduler and its pool), whatever the number of
 * requests. A submit or a read never blocks on another request's computation, except that the
 * first request for a base or adapter loads it (mmap and header parsing, under the service lock).
 *
 * Memory: a base costs its mapped and owned bytes, an adapter its f32 tensors, a sequence its KV
 * cache (sized for its prompt + max_tokens). Past memory_budget, the least recently used bases and
 * adapters that no generation uses are dropped; a request that cannot fit even then is refused
 * (-ENOMEM). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_template.h"
#include "error.h"
#include "prompt.h"
#include "sampler.h"

#define LORAD_INFER_MAX_STOP 4          /* stop strings, as OpenAI */
#define LORAD_INFER_MAX_STOP_BYTES 256  /* bytes of one stop string */
#define LORAD_INFER_MAX_CHOICES 16      /* n */
#define LORAD_INFER_MAX_TOP_LOGPROBS 20 /* as OpenAI */
#define LORAD_INFER_MAX_TOKEN_BYTES 64  /* bytes of one token's text in logprobs (longer is cut) */

struct lorad_infer_options {
    int threads;           /* compute threads for all generations, 1..LORAD_MAX_THREADS */
    int max_generations;   /* sequences in flight (a request with n choices holds n); more: -EAGAIN */
    int64_t memory_budget; /* bytes of loaded bases, adapters and KV caches; 0: no limit */
    int max_context;       /* most prompt + completion tokens of one sequence (the base's
                            * max_seq_len lowers it); 1..LORAD_MAX_SEQ_LEN */
};

struct lorad_infer;

/* Starts the scheduler thread. Returns 0 and *ret, or -errno with err naming the field. */
int lorad_infer_new(struct lorad_infer **ret, const struct lorad_infer_options *opt, struct lorad_error *err);
/* Joins the scheduler and frees what is loaded. Every stream must have been closed first (the
 * daemon stops its HTTP server, whose connections close theirs, before this). NULL is fine. */
void lorad_infer_free(struct lorad_infer *s);

struct lorad_infer_request {
    const char *base_path;    /* the base model (file or HF directory), resolved by the caller */
    const char *adapter_path; /* PEFT directory, adapter.tar or GGUF LoRA; NULL: the base alone */
    /* Exactly one of prompt (tokenised as a prompt/completion record's prompt: BOS + text) and
     * messages (a chat so far, rendered with tmpl up to where the assistant's answer starts). */
    const char *prompt;
    const struct lorad_prompt_message *messages;
    int n_messages;
    enum lorad_chat_template tmpl; /* AUTO: from the base's tokenizer */
    int max_tokens;                /* completion tokens per choice; 0: up to the context */
    struct lorad_sampling sampling; /* choice i draws with seed + i; temperature 0 is greedy */
    const char *stop[LORAD_INFER_MAX_STOP]; /* generation ends before the first occurrence of any */
    int n_stop;
    int n;                         /* choices, 1..LORAD_INFER_MAX_CHOICES */
    bool logprobs;                 /* report each token's log-probability ... */
    int top_logprobs;              /* ... and the most likely alternatives, 0..LORAD_INFER_MAX_TOP_LOGPROBS */
};

struct lorad_infer_stream;

/* Loads what req needs (once), tokenises the prompt and queues req's n sequences. Returns 0 and
 * *ret (read with lorad_infer_next, end with lorad_infer_stream_close), or -errno with err naming
 * the field: -EAGAIN when max_generations sequences are already running (answer 429), -EINVAL for
 * a bad field ("prompt", "messages[i].content", "stop", "max_tokens", "n", ...), -E2BIG when the
 * prompt leaves no room in the context ("messages" or "prompt"), -ENOENT / -EINVAL with param
 * "model" when the base or adapter cannot be loaded or do not fit each other, -ENOMEM when it cannot
 * fit the memory budget. */
int lorad_infer_submit(struct lorad_infer *s, const struct lorad_infer_request *req, struct lorad_infer_stream **ret,
                       struct lorad_error *err);

/* Tokens of the prompt (the same for every choice). */
int lorad_infer_prompt_tokens(const struct lorad_infer_stream *st);

struct lorad_infer_top_logprob {
    int32_t id;
    float logprob;
    char text[LORAD_INFER_MAX_TOKEN_BYTES + 1]; /* the token's bytes (maybe not whole UTF-8), NUL-ended */
    int text_len;
};

enum lorad_infer_event_kind {
    LORAD_INFER_TOKEN,  /* a choice generated a token */
    LORAD_INFER_FINISH, /* a choice ended */
};

struct lorad_infer_event {
    enum lorad_infer_event_kind kind;
    int choice;
    /* TOKEN and FINISH: text of the choice released now (whole UTF-8 characters; text held back
     * while it may still turn out to start a stop string, or end inside a character, comes with a
     * later event; the FINISH releases what is left, a stop string cut off). Valid until the next
     * lorad_infer_next. */
    const char *text;
    size_t text_len;
    /* TOKEN: the token, and with logprobs its log-probability under the sampling distribution's
     * logits (log-softmax of the raw logits) and the top_logprobs most likely tokens. An end token
     * (EOS, <|eot_id|>, <|im_end|>) comes as a FINISH instead and is not counted as text. */
    struct lorad_infer_top_logprob token;
    int n_top;
    struct lorad_infer_top_logprob top[LORAD_INFER_MAX_TOP_LOGPROBS];
    /* FINISH: "stop" (end token or stop string) or "length" (max_tokens or the context), and the
     * completion tokens the choice generated (an end token counts). */
    const char *finish_reason;
    int completion_tokens;
};

/* Waits up to timeout_ms (-1: no limit) for the next event of st. Returns 1 with *ret (valid until
 * the next call on st), 0 when none came in time, 2 when every choice has finished and its FINISH
 * was read, or -errno with err when generation failed (-ERANGE: logits not finite, or the engine's
 * error). Events of one choice come in order; choices interleave. */
int lorad_infer_next(struct lorad_infer_stream *st, int timeout_ms, struct lorad_infer_event *ret,
                     struct lorad_error *err);

/* Ends st's generations if they are still running and frees their slots and KV caches at once
 * (the scheduler never touches them again). NULL is fine. */
void lorad_infer_stream_close(struct lorad_infer_stream *st);

struct lorad_infer_stats {
    int running;         /* sequences in flight */
    int bases_loaded;
    int adapters_loaded;
    int64_t bytes_loaded; /* bases + adapters + KV caches */
    uint64_t tokens_generated; /* since start */
};
void lorad_infer_get_stats(struct lorad_infer *s, struct lorad_infer_stats *ret);
