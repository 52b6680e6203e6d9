#include "config.h"
#include "cpulist.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <assert.h>

#define FIELD(f) offsetof(struct lorad_config, f), sizeof(((struct lorad_config *)0)->f)

const struct lorad_config_option lorad_config_options[] = {
    {"bind", LORAD_CONFIG_STRING, FIELD(bind), 0, 0, "127.0.0.1", NULL, "address to listen on"},
    {"port", LORAD_CONFIG_INT, FIELD(port), 0, 65535, "8420", NULL, "TCP port; 0 picks a free port and logs it"},
    {"unix_socket", LORAD_CONFIG_STRING, FIELD(unix_socket), 0, 0, "", NULL, "also listen on this unix socket path"},
    {"state_dir", LORAD_CONFIG_STRING, FIELD(state_dir), 0, 0, "/var/lib/lorad", NULL,
     "database, uploaded files and job outputs"},
    {"models_dir", LORAD_CONFIG_STRING, FIELD(models_dir), 0, 0, "/var/lib/lorad/models", NULL,
     "base models: each entry (HF directory, .gguf or llama2.c .bin) is a model"},
    {"workers", LORAD_CONFIG_INT, FIELD(workers), 1, 64, "1", NULL, "jobs trained at the same time"},
    {"max_threads_per_job", LORAD_CONFIG_INT, FIELD(max_threads_per_job), 0, 256, "0", NULL,
     "compute threads a job runs with; a job may ask for fewer (hyperparameters.threads), never more; "
     "0 = cores / workers"},
    {"memory_limit", LORAD_CONFIG_BYTES, FIELD(memory_limit), 0, INT64_C(1) << 50, "0", NULL,
     "memory the running jobs may take together (the engine's estimate of each); a job that alone would "
     "need more is refused at creation, others wait in the queue until it fits; 0 = 80% of MemAvailable "
     "at start"},
    {"max_upload_bytes", LORAD_CONFIG_BYTES, FIELD(max_upload_bytes), 1024, INT64_C(1) << 40, "1g", NULL,
     "largest accepted dataset upload"},
    {"max_request_body", LORAD_CONFIG_BYTES, FIELD(max_request_body), 1024, INT64_C(1) << 30, "1m", NULL,
     "largest accepted JSON request body"},
    {"max_json_depth", LORAD_CONFIG_INT, FIELD(max_json_depth), 2, 256, "32", NULL, "deepest accepted JSON nesting"},
    {"max_connections", LORAD_CONFIG_INT, FIELD(max_connections), 1, 65536, "256", NULL,
     "concurrent HTTP connections"},
    {"connection_timeout_s", LORAD_CONFIG_INT, FIELD(connection_timeout_s), 1, 86400, "60", NULL,
     "idle HTTP connection timeout in seconds"},
    {"max_queued_jobs", LORAD_CONFIG_INT, FIELD(max_queued_jobs), 1, 1000000, "1000", NULL,
     "jobs waiting at once; further jobs are refused with 429"},
    {"api_key_file", LORAD_CONFIG_STRING, FIELD(api_key_file), 0, 0, "", NULL,
     "file with one API key per line (at most 64 keys of at most 255 bytes); empty means no authentication"},
    {"http_cpus", LORAD_CONFIG_CPULIST, FIELD(http_cpus), 0, 0, "", NULL,
     "CPUs the HTTP connection threads run on, as a list like 1 or 4-7,12; empty: any. With training_cpus "
     "it keeps API load off the cores jobs train on (docs/daemon.md#cpus)"},
    {"training_cpus", LORAD_CONFIG_CPULIST, FIELD(training_cpus), 0, 0, "", NULL,
     "CPUs the job workers and their compute threads (and mpirun) run on; empty: any. When set, an automatic "
     "max_threads_per_job counts these CPUs, not all of them"},
    {"log_level", LORAD_CONFIG_ENUM, FIELD(log_level), 0, 0, "info", "error|warning|info|debug", "log verbosity"},
    /* Sections ([distributed], [inference]): their keys are SECTION.KEY as flags. Keep them last, each
     * section's keys together (lorad_config_write_defaults writes one header per run). */
    {"distributed.enabled", LORAD_CONFIG_ENUM, FIELD(distributed.enabled), 0, 0, "no", "no|yes",
     "train every job data-parallel through mpirun on the hosts below (docs/daemon.md#distributed)"},
    {"distributed.hosts", LORAD_CONFIG_STRING, FIELD(distributed.hosts), 0, 0, "", NULL,
     "comma-separated hosts that run ranks, this one first (rank 0 writes the job's files here); empty: the "
     "hostfile, or the allocation mpirun finds itself (inside a Slurm job)"},
    {"distributed.hostfile", LORAD_CONFIG_STRING, FIELD(distributed.hostfile), 0, 0, "", NULL,
     "an MPI hostfile instead of hosts"},
    {"distributed.ranks_per_host", LORAD_CONFIG_INT, FIELD(distributed.ranks_per_host), 1, 256, "1", NULL,
     "ranks started on each host; each gets max_threads_per_job / ranks_per_host threads"},
    {"distributed.mpirun", LORAD_CONFIG_STRING, FIELD(distributed.mpirun), 0, 0, "mpirun", NULL,
     "the launcher (Open MPI's mpirun)"},
    {"distributed.mpirun_args", LORAD_CONFIG_STRING, FIELD(distributed.mpirun_args), 0, 0, "", NULL,
     "extra launcher arguments, split at spaces (e.g. --mca btl_tcp_if_include 10.0.0.0/24)"},
    {"distributed.collective_timeout_s", LORAD_CONFIG_INT, FIELD(distributed.collective_timeout_s), 1, 86400, "600",
     NULL, "a rank whose sum across ranks waits longer ends the run, which restarts from its last checkpoint"},
    {"distributed.max_restarts", LORAD_CONFIG_INT, FIELD(distributed.max_restarts), 0, 1000, "3", NULL,
     "times a job is restarted after losing a rank before it fails"},
    /* [inference]: the OpenAI-compatible generation routes. */
    {"inference.enabled", LORAD_CONFIG_ENUM, FIELD(inference.enabled), 0, 0, "yes", "no|yes",
     "serve POST /v1/completions and /v1/chat/completions; with no they answer 503 and no thread is kept for them"},
    {"inference.threads", LORAD_CONFIG_INT, FIELD(inference.threads), 0, 256, "0", NULL,
     "compute threads all generations share, whatever the number of requests; training jobs whose threads are "
     "automatic leave them free; 0 = a quarter of the cores (at least 1)"},
    {"inference.max_concurrent_generations", LORAD_CONFIG_INT, FIELD(inference.max_concurrent_generations), 1, 1024,
     "8", NULL, "sequences generated at once (a request with n choices holds n); more are refused with 429 and "
     "Retry-After"},
    {"inference.memory_budget", LORAD_CONFIG_BYTES, FIELD(inference.memory_budget), 0, INT64_C(1) << 50, "0", NULL,
     "memory of the models, adapters and KV caches loaded for inference; past it the least recently used unused "
     "ones are dropped, and a request that still does not fit is refused; 0 = no limit"},
    {"inference.max_context", LORAD_CONFIG_INT, FIELD(inference.max_context), 16, 1048576, "4096", NULL,
     "most prompt + completion tokens of one sequence (a model's own context length may lower it)"},
    {NULL, 0, 0, 0, 0, 0, NULL, NULL, NULL},
};

/* Names a key had before: old config files and flags keep working. */
static const struct {
    const char *old_name, *name;
} renamed_options[] = {
    {"threads_per_job", "max_threads_per_job"}, /* it was always the threads a job got; now also their ceiling */
};

static const struct lorad_config_option *find_option(const char *name) {
    char canon[64];
    size_t n = strlen(name);
    if (n >= sizeof canon) return NULL;
    for (size_t i = 0; i <= n; i++) canon[i] = name[i] == '-' ? '_' : name[i];
    for (size_t i = 0; i < sizeof renamed_options / sizeof renamed_options[0]; i++)
        if (strcmp(canon, renamed_options[i].old_name) == 0) snprintf(canon, sizeof canon, "%s", renamed_options[i].name);
    for (const struct lorad_config_option *o = lorad_config_options; o->name; o++)
        if (strcmp(o->name, canon) == 0) return o;
    return NULL;
}

static int parse_int64(const char *s, bool allow_suffix, int64_t *ret) {
    if (!*s) return -EINVAL;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno == ERANGE) return -ERANGE;
    if (end == s) return -EINVAL;
    int shift = 0;
    if (allow_suffix && *end) {
        switch (tolower((unsigned char)*end)) {
        case 'k': shift = 10; break;
        case 'm': shift = 20; break;
        case 'g': shift = 30; break;
        case 't': shift = 40; break;
        default: return -EINVAL;
        }
        end++;
        if (tolower((unsigned char)*end) == 'b') end++;
    }
    if (*end) return -EINVAL;
    if (shift && (v > (INT64_MAX >> shift) || v < -(INT64_MAX >> shift))) return -ERANGE;
    *ret = (int64_t)v * ((int64_t)1 << shift);
    return 0;
}

static bool choice_allowed(const char *choices, const char *value) {
    size_t n = strlen(value);
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, value, n) == 0) return true;
        if (!bar) break;
        p = bar + 1;
    }
    return false;
}

int lorad_config_set(struct lorad_config *cfg, const char *name, const char *value, struct lorad_error *err) {
    const struct lorad_config_option *o = find_option(name);
    if (!o) return lorad_error_set(err, -ENOENT, name, "unknown option '%s'", name);
    char *field = (char *)cfg + o->offset;
    switch (o->type) {
    case LORAD_CONFIG_STRING:
    case LORAD_CONFIG_ENUM:
    case LORAD_CONFIG_CPULIST:
        if (o->type == LORAD_CONFIG_ENUM && !choice_allowed(o->choices, value))
            return lorad_error_set(err, -EINVAL, o->name, "%s must be one of %s, got '%s'", o->name, o->choices,
                                   value);
        if (o->type == LORAD_CONFIG_CPULIST && value[0]) {
            cpu_set_t set;
            int r = lorad_cpulist_parse(value, &set);
            if (r < 0)
                return lorad_error_set(err, r, o->name,
                                       "%s must be CPU numbers below %d and ranges LO-HI separated by commas "
                                       "(e.g. 0-3,8), or empty for any; got '%s'",
                                       o->name, CPU_SETSIZE, value);
        }
        if (strlen(value) >= o->size)
            return lorad_error_set(err, -ERANGE, o->name, "%s is longer than %zu bytes", o->name, o->size - 1);
        memcpy(field, value, strlen(value) + 1);
        return 0;
    case LORAD_CONFIG_INT:
    case LORAD_CONFIG_BYTES: {
        int64_t v = 0;
        int r = parse_int64(value, o->type == LORAD_CONFIG_BYTES, &v);
        if (r < 0 || v < o->min || v > o->max)
            return lorad_error_set(err, r < 0 ? r : -ERANGE, o->name,
                                   "%s must be %s between %lld and %lld, got '%s'", o->name,
                                   o->type == LORAD_CONFIG_BYTES ? "a size (k/m/g suffix allowed)" : "an integer",
                                   (long long)o->min, (long long)o->max, value);
        if (o->size == sizeof(int)) *(int *)field = (int)v;
        else *(int64_t *)field = v;
        return 0;
    }
    }
    return -EINVAL;
}

void lorad_config_defaults(struct lorad_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    for (const struct lorad_config_option *o = lorad_config_options; o->name; o++) {
        int r = lorad_config_set(cfg, o->name, o->def, NULL);
        (void)r;
        assert(r == 0);
    }
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    char *end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1])) *--end = '\0';
    return s;
}

/* Whether some option is named NAME.KEY (name: n bytes). */
static bool section_known(const char *name, size_t n) {
    for (const struct lorad_config_option *o = lorad_config_options; o->name; o++)
        if (strncmp(o->name, name, n) == 0 && o->name[n] == '.') return true;
    return false;
}

int lorad_config_load_file(struct lorad_config *cfg, const char *path, bool missing_ok, struct lorad_error *err) {
    FILE *f = fopen(path, "re");
    if (!f) {
        if (errno == ENOENT && missing_ok) return 0;
        return lorad_error_set(err, -errno, "config", "%s: %s", path, strerror(errno));
    }
    char line[4096], section[32] = "";
    int lineno = 0, r = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            r = lorad_error_set(err, -E2BIG, "config", "%s:%d: line longer than %zu bytes", path, lineno,
                                sizeof line - 2);
            break;
        }
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        char *s = trim(line);
        if (!*s) continue;
        if (*s == '[') { /* [section]: the keys below are section.KEY */
            size_t n = strlen(s);
            if (s[n - 1] != ']' || n < 3 || n - 2 >= sizeof section || !section_known(s + 1, n - 2)) {
                r = lorad_error_set(err, -EINVAL, "config", "%s:%d: unknown section %s (known: [distributed], [inference])",
                                    path, lineno, s);
                break;
            }
            snprintf(section, sizeof section, "%.*s", (int)(n - 2), s + 1);
            continue;
        }
        char *sep = s + strcspn(s, " \t=");
        char *value = sep;
        if (*sep) {
            *sep = '\0';
            value = sep + 1;
            value += strspn(value, " \t");
            if (*value == '=') value++;
            value = trim(value);
        }
        if (strlen(value) >= 2 && (value[0] == '"' || value[0] == '\'') && value[strlen(value) - 1] == value[0]) {
            value[strlen(value) - 1] = '\0';
            value++;
        }
        char key[128];
        if (snprintf(key, sizeof key, "%s%s%s", section, section[0] ? "." : "", s) >= (int)sizeof key) {
            r = lorad_error_set(err, -ENOENT, "config", "%s:%d: unknown option '%.64s'", path, lineno, s);
            break;
        }
        struct lorad_error e = {0};
        r = lorad_config_set(cfg, key, value, &e);
        if (r < 0) {
            lorad_error_set(err, r, e.param[0] ? e.param : key, "%s:%d: %s", path, lineno, e.message);
            break;
        }
    }
    fclose(f);
    return r;
}

int lorad_config_from_args(struct lorad_config *cfg, int argc, char **argv, const char *default_config_path,
                           struct lorad_error *err) {
    /* The file is read first so that flags override it, wherever --config appears. */
    const char *config_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) return lorad_error_set(err, -EINVAL, "config", "--config needs a value");
            config_path = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            config_path = argv[i] + 9;
        }
    }
    int r;
    if (config_path) r = lorad_config_load_file(cfg, config_path, false, err);
    else if (default_config_path) r = lorad_config_load_file(cfg, default_config_path, true, err);
    else r = 0;
    if (r < 0) return r;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--config") == 0) {
            i++;
            continue;
        }
        if (strncmp(arg, "--config=", 9) == 0) continue;
        if (strncmp(arg, "--", 2) != 0)
            return lorad_error_set(err, -EINVAL, arg, "unexpected argument '%s'", arg);
        char name[128];
        const char *value;
        const char *eq = strchr(arg, '=');
        if (eq) {
            size_t n = (size_t)(eq - arg - 2);
            if (n >= sizeof name) return lorad_error_set(err, -EINVAL, arg, "unknown flag '%s'", arg);
            memcpy(name, arg + 2, n);
            name[n] = '\0';
            value = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", arg + 2);
            if (!find_option(name)) return lorad_error_set(err, -ENOENT, name, "unknown flag '%s'", arg);
            if (i + 1 >= argc) return lorad_error_set(err, -EINVAL, name, "flag '%s' needs a value", arg);
            value = argv[++i];
        }
        struct lorad_error e = {0};
        r = lorad_config_set(cfg, name, value, &e);
        if (r == -ENOENT) return lorad_error_set(err, r, name, "unknown flag '--%s'", name);
        if (r < 0) return lorad_error_set(err, r, e.param, "--%s: %s", name, e.message);
    }
    return 0;
}

void lorad_config_write_defaults(FILE *f) {
    fprintf(f, "# lorad configuration. Every key can also be given as a flag: --key value.\n"
               "# Unknown keys and bad values stop the daemon at start, naming the line.\n\n");
    const char *section = "";
    size_t section_len = 0;
    for (const struct lorad_config_option *o = lorad_config_options; o->name; o++) {
        const char *dot = strchr(o->name, '.');
        size_t len = dot ? (size_t)(dot - o->name) : 0;
        if (len != section_len || strncmp(o->name, section, len) != 0) {
            assert(len > 0); /* sectioned options come after the plain ones */
            fprintf(f, "[%.*s]\n\n", (int)len, o->name);
            section = o->name;
            section_len = len;
        }
        fprintf(f, "# %s", o->help);
        if (o->type == LORAD_CONFIG_ENUM) fprintf(f, " (%s)", o->choices);
        if (o->type == LORAD_CONFIG_INT || o->type == LORAD_CONFIG_BYTES)
            fprintf(f, " [%lld..%lld]", (long long)o->min, (long long)o->max);
        fprintf(f, "\n#%s %s\n\n", o->name + (len ? len + 1 : 0), o->def[0] ? o->def : "\"\"");
    }
}

int lorad_config_parse_bytes(const char *s, int64_t *ret_bytes) {
    int64_t v;
    int r = parse_int64(s, true, &v);
    if (r < 0) return r;
    if (v < 0) return -ERANGE;
    *ret_bytes = v;
    return 0;
}
