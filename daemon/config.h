/* The daemon's configuration: one declarative table (name, type, bounds, default, help) drives the
 * config file parser, the command-line flags, the defaults and the documentation alike.
 *
 * File format (/etc/lorad/lorad.conf): one `key value` (or `key = value`) per line, '#' starts a
 * comment, blank lines are ignored. An unknown key or a bad value is fatal at start and names the
 * file and line. Every key is also a flag: `--state-dir DIR` or `--state-dir=DIR` sets state_dir.
 * A `[section]` line puts the keys below it in that section: `hosts` under `[distributed]` is the
 * option distributed.hosts, flag `--distributed.hosts`; likewise `[inference]`. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "error.h"

#define LORAD_CONFIG_PATH_MAX 1024

struct lorad_config {
    char bind[256];              /* listen address */
    int port;                    /* 0 = pick a free port and log it */
    char unix_socket[LORAD_CONFIG_PATH_MAX]; /* also listen on this unix socket if set */
    char state_dir[LORAD_CONFIG_PATH_MAX];   /* SQLite database, uploaded files, job outputs */
    char models_dir[LORAD_CONFIG_PATH_MAX];  /* base models: one entry per model */
    int workers;                 /* jobs trained at once */
    int max_threads_per_job;     /* threads a job runs with, and the most it may ask for; 0 = cores / workers */
    int64_t memory_limit;        /* bytes the running jobs' estimates may add up to; 0 = 80% of MemAvailable */
    int64_t max_upload_bytes;    /* POST /v1/files body limit */
    int64_t max_request_body;    /* JSON body limit */
    int max_json_depth;          /* JSON nesting limit */
    int max_connections;         /* concurrent HTTP connections */
    int connection_timeout_s;    /* idle connection timeout */
    int max_queued_jobs;         /* jobs waiting at once; more get 429 */
    char api_key_file[LORAD_CONFIG_PATH_MAX]; /* one key per line; empty = no auth */
    char log_level[16];          /* error | warning | info | debug */
    char http_cpus[256];         /* CPUs of the HTTP threads (cpulist.h); empty = any */
    char training_cpus[256];     /* CPUs of the job workers and their compute threads; empty = any */
    struct lorad_config_distributed { /* [distributed]: jobs trained through mpirun (issue 16) */
        char enabled[4];             /* no | yes */
        char hosts[LORAD_CONFIG_PATH_MAX]; /* comma-separated; empty: hostfile or mpirun's allocation */
        char hostfile[LORAD_CONFIG_PATH_MAX];
        int ranks_per_host;
        char mpirun[LORAD_CONFIG_PATH_MAX];
        char mpirun_args[LORAD_CONFIG_PATH_MAX]; /* split at spaces */
        int collective_timeout_s;
        int max_restarts;
    } distributed;
    struct lorad_config_inference { /* [inference]: /v1/completions and /v1/chat/completions (issue 17) */
        char enabled[4];             /* no | yes */
        int threads;                 /* compute threads of all generations; 0 = max(1, cores / 4) */
        int max_concurrent_generations; /* sequences in flight (n choices hold n); more get 429 */
        int64_t memory_budget;       /* bytes of loaded models, adapters and KV caches; 0 = no limit */
        int max_context;             /* prompt + completion tokens of one sequence (the model's may be less) */
    } inference;
};

enum lorad_config_type {
    LORAD_CONFIG_STRING,
    LORAD_CONFIG_INT,
    LORAD_CONFIG_BYTES, /* integer with optional k/m/g suffix (powers of 1024) */
    LORAD_CONFIG_ENUM,  /* string restricted to `choices` */
    LORAD_CONFIG_CPULIST, /* string: empty, or CPUs as "1" or "0-3,8" (cpulist.h) */
};

struct lorad_config_option {
    const char *name;
    enum lorad_config_type type;
    size_t offset;         /* into struct lorad_config */
    size_t size;           /* of the field (strings: buffer size) */
    int64_t min, max;      /* bounds for INT/BYTES */
    const char *def;       /* default, as it would be written in the file */
    const char *choices;   /* ENUM: '|'-separated */
    const char *help;
};

/* The table, terminated by name == NULL. */
extern const struct lorad_config_option lorad_config_options[];

/* Fills cfg with every default. Cannot fail: defaults are checked by the unit tests. */
void lorad_config_defaults(struct lorad_config *cfg);

/* Sets one option from its text value. name may use '-' or '_'. Returns 0, or -ENOENT for an
 * unknown name, -EINVAL/-ERANGE for a bad value; err names the option and says what is allowed. */
int lorad_config_set(struct lorad_config *cfg, const char *name, const char *value, struct lorad_error *err);

/* Parses a config file into cfg (on top of what cfg holds). Errors name "PATH:LINE". A missing
 * file is -ENOENT unless missing_ok. */
int lorad_config_load_file(struct lorad_config *cfg, const char *path, bool missing_ok, struct lorad_error *err);

/* Parses command-line flags (argv[0] is skipped): every table option as --name VALUE or
 * --name=VALUE, plus --config FILE which is read first wherever it appears (flags override the
 * file). *ret_config_path receives the config file used. Positional arguments are an error. */
int lorad_config_from_args(struct lorad_config *cfg, int argc, char **argv, const char *default_config_path,
                           struct lorad_error *err);

/* Parses a size as the config file writes one ("512m", "2g", "1048576"): 0, -EINVAL or -ERANGE
 * (negative or too large). For flags of other commands that take a size. */
int lorad_config_parse_bytes(const char *s, int64_t *ret_bytes);

/* Writes a commented default config file (every option with its help and default) to f. */

void lorad_config_write_defaults(FILE *f);
