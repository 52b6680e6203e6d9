#include "cli.h"

#include <stdio.h>
#include <string.h>

#include "cpu_features.h"

const struct lorad_command lorad_commands[] = {
    {"serve", "run the fine-tuning daemon (HTTP API, job queue, workers)",
     "usage: lorad serve [--config FILE] [--check-config] [--print-default-config]\n"
     "                   [--bind ADDR] [--port N] [--unix-socket PATH] [--state-dir DIR]\n"
     "                   [--models-dir DIR] [--workers N] [--threads-per-job N]\n"
     "                   [--api-key-file FILE] [--log-level LEVEL]\n"
     "Runs the daemon. Every key of the config file (default /etc/lorad/lorad.conf) can also be\n"
     "given as a flag; --print-default-config lists them. --port 0 picks a free port; the log line\n"
     "'listening on http://ADDR:PORT' says which. SIGHUP re-reads the API keys and the log level;\n"
     "SIGTERM/SIGINT checkpoint running jobs back to the queue and exit.\n",
     lorad_cmd_serve},
    {"train", "run one fine-tuning job in the foreground",
     "usage: lorad train JOB.json --out DIR [--resume] [--skip-invalid] [--threads N] [--memory-limit SIZE]\n"
     "                   [--quiet | --json] [--collective-timeout S] [--jsonl]\n"
     "Runs the job spec JOB.json (the body of POST /v1/fine_tuning/jobs) and writes metrics,\n"
     "checkpoints and the final adapter under DIR. lora.init_adapter may name a PEFT directory,\n"
     "an adapter.tar (as GET /v1/models/{id}/adapter.tar serves it) or a GGUF LoRA.\n"
     "--memory-limit refuses a job whose memory estimate (lorad inspect --job) is larger\n"
     "(default: 80% of MemAvailable; 0: no limit).\n"
     "Under mpirun -np K (or srun --mpi=pmix) it trains data-parallel on K ranks; a rank whose sum\n"
     "across ranks waits more than --collective-timeout seconds (a rank died or hangs) exits 75.\n"
     "Progress: on a terminal one live line (bar, step/total, smoothed loss, tokens/s, elapsed<ETA);\n"
     "otherwise a line at each evaluation and at most every 10 s. --quiet prints only warnings,\n"
     "errors and the last line; --json one JSON object a line on stdout (step, checkpoint, message,\n"
     "result) for scripts. --jsonl speaks lorad serve's line protocol on stdin/stdout instead.\n",
     lorad_cmd_train},
    {"generate", "generate text from a base model, optionally with an adapter",
     "usage: lorad generate [--model] MODEL [--adapter DIR|FILE] (--prompt TEXT | --prompt-ids 1,2,3)\n"
     "                      [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]\n"
     "                      [--ids] [--echo] [--chat] [--template llama2|llama3|chatml|none] [--system TEXT]\n"
     "                      [--tokenizer PATH] [--no-bos] [--ignore-eos] [--dump-logits FILE]\n"
     "                      [--threads N] [--no-kv-cache]\n"
     "Continues a prompt with MODEL (HF directory, .gguf or llama2.c .bin), with the LoRA adapter\n"
     "(PEFT directory, GGUF LoRA or adapter.tar) applied when given. Prints the generated text, or\n"
     "the generated token ids on one line with --ids (--print-ids is the same).\n"
     "  --prompt TEXT        tokenised as in training: BOS + TEXT (--no-bos drops the BOS)\n"
     "  --prompt-ids IDS     token ids, used as given; the only prompt a model without tokenizer takes\n"
     "  --chat               TEXT is one user turn of the chat template (--template, default from the\n"
     "                       tokenizer's special tokens), --system adds a system turn\n"
     "  --max-tokens N       stop after N tokens (default 128) or at an end-of-sequence token\n"
     "  --temperature T      0 (default) picks the most likely token; above 0 samples from softmax(z/T)\n"
     "  --top-k K, --top-p P sample only from the K most likely tokens / the smallest set holding P\n"
     "  --seed S             the sampling seed (default: random); same seed, same output\n"
     "  --echo               print the prompt before the continuation\n"
     "  --tokenizer PATH     use this tokenizer instead of the model's own\n"
     "  --ignore-eos         do not stop at end-of-sequence tokens\n"
     "  --threads N          compute threads (default: the online CPUs)\n"
     "  --dump-logits FILE   write the next-token logits of every generated position and the ids\n"
     "                       (safetensors: logits, prompt_ids, generated_ids)\n"
     "  --no-kv-cache        recompute the whole sequence for every token (slow; for checking)\n",
     lorad_cmd_generate},
    {"inspect", "describe a model file or directory",
     "usage: lorad inspect PATH [--job JOB.json] [--seq-len N] [--batch N] [--lora-r N] [--threads N] [--json]\n"
     "Detects the format (HF directory, GGUF, llama2.c .bin) and prints the architecture,\n"
     "hyper-parameters, parameter count, dtypes, tokenizer and the memory a LoRA job needs: the\n"
     "estimate lorad train and the daemon enforce, for JOB.json (PATH is its model) or for LoRA r\n"
     "on all seven projections at --seq-len (512) and --batch (1) with --threads (all cores).\n",
     lorad_cmd_inspect},
    {"tokenize", "tokenize text with a model's tokenizer",
     "usage: lorad tokenize --model PATH [--ids] [TEXT]\n"
     "Prints ids and pieces of TEXT. Without TEXT, tokenizes each line of standard input.\n",
     lorad_cmd_tokenize},
    {"export", "convert an adapter to another format",
     "usage: lorad export --adapter DIR|FILE --format peft|gguf|merged --out PATH [--model PATH]\n"
     "--adapter is a PEFT directory, an adapter.tar (as the API serves it) or a GGUF LoRA.\n",
     lorad_cmd_export},
    {"version", "print the version and build details",
     "usage: lorad version\n",
     lorad_cmd_version},
    {NULL, NULL, NULL, NULL},
};

const struct lorad_command *lorad_command_find(const char *name) {
    for (const struct lorad_command *c = lorad_commands; c->name; c++)
        if (strcmp(c->name, name) == 0) return c;
    return NULL;
}

void lorad_print_usage(FILE *f) {
    fprintf(f, "usage: lorad COMMAND [OPTIONS]\n\ncommands:\n");
    for (const struct lorad_command *c = lorad_commands; c->name; c++)
        fprintf(f, "  %-10s %s\n", c->name, c->summary);
    fprintf(f, "\nRun 'lorad COMMAND --help' for a command's options.\n");
}

void lorad_command_print_usage(const struct lorad_command *cmd, FILE *f) {
    fputs(cmd->usage, f);
}

int lorad_wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) break;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) return 1;
    }
    return 0;
}

int lorad_not_implemented(const char *name) {
    fprintf(stderr, "lorad %s: not implemented yet\n", name);
    return LORAD_EXIT_USAGE;
}

int lorad_main(int argc, char **argv) {
    if (argc < 2) {
        lorad_print_usage(stderr);
        return LORAD_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "-h") == 0 || strcmp(name, "--help") == 0 || strcmp(name, "help") == 0) {
        lorad_print_usage(stdout);
        return LORAD_EXIT_OK;
    }
    if (strcmp(name, "--version") == 0) name = "version";
    const struct lorad_command *cmd = lorad_command_find(name);
    if (!cmd) {
        fprintf(stderr, "lorad: unknown command '%s'\n\n", name);
        lorad_print_usage(stderr);
        return LORAD_EXIT_USAGE;
    }
    if (lorad_wants_help(argc - 1, argv + 1)) {
        lorad_command_print_usage(cmd, stdout);
        return LORAD_EXIT_OK;
    }
    /* A misspelt LORAD_ISA would silently run the full instruction set: refuse it up front. */
    struct lorad_error err = {0};
    if (lorad_isa_check_env(&err) < 0) {
        fprintf(stderr, "lorad %s: %s\n", cmd->name, err.message);
        return LORAD_EXIT_USAGE;
    }
    return cmd->run(argc - 1, argv + 1);
}
