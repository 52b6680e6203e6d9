/* lorad train JOB.json --out DIR [--resume] [--skip-invalid] [--threads N] [--memory-limit SIZE]
 *             [--quiet | --json | --jsonl] [--collective-timeout S]
 * Runs one job in the foreground on the same code path as the daemon's workers, showing its
 * progress as train_progress.h says (--quiet, --json or by the terminal). SIGINT/SIGTERM pause the run
 * at the next step boundary: it checkpoints, so `--resume` continues exactly where it stopped (a
 * second signal exits at once). --jsonl speaks the daemon's line protocol instead (train_wire.h):
 * that is how `lorad serve` runs a job under mpirun. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "meminfo.h"
#include "train.h"
#include "train_mpi.h"
#include "train_progress.h"
#include "train_wire.h"

static atomic_int stop_requested;

static void on_signal(int sig) {
    if (atomic_fetch_add(&stop_requested, 1) > 0) {
        signal(sig, SIG_DFL);
        raise(sig);
    }
}

static enum lorad_train_control poll_stop(void *ctx) {
    (void)ctx;
    return atomic_load(&stop_requested) ? LORAD_TRAIN_PAUSE : LORAD_TRAIN_CONTINUE;
}

/* --jsonl: rank 0 reports through the wire, and takes requests from stdin as well as signals. */
static struct lorad_wire_control wire_control;

static void wire_step(void *ctx, const struct lorad_step_metrics *m) {
    (void)ctx;
    lorad_wire_step(stdout, m);
}
static void wire_checkpoint(void *ctx, int64_t step, const char *dir, const struct lorad_step_metrics *m) {
    (void)ctx;
    lorad_wire_checkpoint(stdout, step, dir, m);
}
static void wire_message(void *ctx, const char *level, const char *message) {
    (void)ctx;
    lorad_wire_message(stdout, level, message);
}
static enum lorad_train_control wire_poll(void *ctx) {
    enum lorad_train_control c = lorad_wire_control_poll(&wire_control);
    return c != LORAD_TRAIN_CONTINUE ? c : poll_stop(ctx);
}

/* Resolves a job-spec path relative to the job file's directory when it is not absolute and does
 * not exist relative to the working directory. */
static void resolve(char *out, size_t n, const char *job_path, const char *ref) {
    if (ref[0] == '/' || access(ref, F_OK) == 0) {
        snprintf(out, n, "%s", ref);
        return;
    }
    const char *slash = strrchr(job_path, '/');
    if (!slash) snprintf(out, n, "%s", ref);
    else snprintf(out, n, "%.*s/%s", (int)(slash - job_path), job_path, ref);
}

int lorad_cmd_train(int argc, char **argv) {
    static const struct option options[] = {
        {"out", required_argument, NULL, 'o'},
        {"resume", no_argument, NULL, 'r'},
        {"skip-invalid", no_argument, NULL, 's'},
        {"threads", required_argument, NULL, 't'},
        {"memory-limit", required_argument, NULL, 'm'},
        {"jsonl", no_argument, NULL, 'j'},
        {"json", no_argument, NULL, 'J'},
        {"quiet", no_argument, NULL, 'q'},
        {"collective-timeout", required_argument, NULL, 'c'},
        {NULL, 0, NULL, 0},
    };
    const char *out = NULL;
    bool resume = false, skip_invalid = false, jsonl = false, json_lines = false, quiet = false;
    int threads = 0, collective_timeout_s = 0, c;
    int64_t memory_limit = -1; /* -1: the default share of MemAvailable */
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "o:", options, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'r': resume = true; break;
        case 's': skip_invalid = true; break;
        case 't':
            threads = atoi(optarg);
            if (threads < 1 || threads > 256) {
                fprintf(stderr, "lorad train: --threads must be between 1 and 256\n");
                return LORAD_EXIT_USAGE;
            }
            break;
        case 'j': jsonl = true; break;
        case 'J': json_lines = true; break;
        case 'q': quiet = true; break;
        case 'c':
            collective_timeout_s = atoi(optarg);
            if (collective_timeout_s < 1 || collective_timeout_s > 86400) {
                fprintf(stderr, "lorad train: --collective-timeout must be between 1 and 86400 seconds\n");
                return LORAD_EXIT_USAGE;
            }
            break;
        case 'm':
            if (lorad_config_parse_bytes(optarg, &memory_limit) < 0) {
                fprintf(stderr, "lorad train: --memory-limit takes a size such as 6g, 512m or 0 (no limit), got '%s'\n",
                        optarg);
                return LORAD_EXIT_USAGE;
            }
            break;
        default:
            fprintf(stderr, "lorad train: unknown option '%s'\n", argv[optind - 1]);
            lorad_command_print_usage(lorad_command_find("train"), stderr);
            return LORAD_EXIT_USAGE;
        }
    }
    if (optind != argc - 1 || !out) {
        lorad_command_print_usage(lorad_command_find("train"), stderr);
        return LORAD_EXIT_USAGE;
    }
    const char *job_path = argv[optind];
    json_error_t jerr;
    json_t *body = json_load_file(job_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!body) {
        fprintf(stderr, "lorad train: %s:%d: %s\n", job_path, jerr.line, jerr.text);
        return LORAD_EXIT_FAILURE;
    }
    struct lorad_job_spec spec;
    struct lorad_error err = {0};
    int r = lorad_job_spec_parse(body, &spec, &err);
    json_decref(body);
    if (r < 0) {
        fprintf(stderr, "lorad train: %s: %s\n", job_path, err.message);
        return LORAD_EXIT_FAILURE;
    }
    char model[PATH_MAX], train[PATH_MAX], valid[PATH_MAX];
    resolve(model, sizeof model, job_path, spec.model);
    resolve(train, sizeof train, job_path, spec.training_file);
    if (spec.validation_file[0]) resolve(valid, sizeof valid, job_path, spec.validation_file);

    if (memory_limit < 0 && lorad_default_memory_limit(&memory_limit) < 0) memory_limit = 0; /* unknown: none */
    struct lorad_progress progress;
    lorad_progress_init(&progress, json_lines ? LORAD_PROGRESS_JSON
                                   : quiet    ? LORAD_PROGRESS_QUIET
                                   : isatty(STDERR_FILENO) && isatty(STDOUT_FILENO) ? LORAD_PROGRESS_TTY
                                                                                    : LORAD_PROGRESS_LINES);
    struct lorad_train_callbacks cb = {&progress, lorad_progress_step, lorad_progress_checkpoint,
                                       lorad_progress_message, poll_stop};
    if (jsonl) cb = (struct lorad_train_callbacks){&progress, wire_step, wire_checkpoint, wire_message, wire_poll};
    struct lorad_train_options opt = {
        .model_path = model, .training_path = train, .validation_path = spec.validation_file[0] ? valid : NULL,
        .out_dir = out, .resume = resume, .skip_invalid = skip_invalid, .threads = threads,
        .memory_limit_bytes = memory_limit};
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    /* Under mpirun every rank runs this with the same arguments; rank 0 alone reports and writes. */
    struct lorad_train_collective coll = {0};
    bool ranks = lorad_mpi_launched();
    if (ranks) {
        char why[256];
        if (lorad_mpi_start(&coll, collective_timeout_s, &argc, &argv, why, sizeof why) < 0) {
            fprintf(stderr, "lorad train: launched as one of several MPI ranks, but %s\n", why);
            lorad_job_spec_clear(&spec);
            return LORAD_EXIT_FAILURE;
        }
        opt.collective = &coll;
        if (coll.rank == 0) {
            char what[160];
            snprintf(what, sizeof what, "data-parallel over %d MPI ranks: each takes 1/%d of every batch's rows",
                     coll.world_size, coll.world_size);
            if (jsonl) lorad_wire_message(stdout, "info", what);
            else lorad_progress_message(&progress, "info", what);
        } else {
            cb = (struct lorad_train_callbacks){.ctx = &progress, .poll = poll_stop};
        }
        fflush(stdout);
    }
    if (jsonl && coll.rank == 0) {
        fcntl(STDIN_FILENO, F_SETFL, fcntl(STDIN_FILENO, F_GETFL) | O_NONBLOCK);
        lorad_wire_control_init(&wire_control, STDIN_FILENO);
        /* After MPI_Init, which a lost rank can hang: silence then tells the daemon to end mpirun. */
        if (lorad_wire_heartbeat_start(stdout, LORAD_WIRE_HEARTBEAT_S) < 0)
            fprintf(stderr, "lorad train: cannot start the heartbeat thread\n");
    }
    struct lorad_train_result *result = calloc(1, sizeof *result);
    if (!result) return LORAD_EXIT_FAILURE;
    r = lorad_train_run(&spec, &opt, &cb, result, &err);
    if (ranks && coll.rank == 0 && lorad_mpi_repairs() > 0) {
        char what[200];
        snprintf(what, sizeof what, "%lld sums left the ranks with different bits after MPI_Allreduce; rank 0's "
                 "were broadcast", lorad_mpi_repairs());
        if (jsonl) lorad_wire_message(stdout, "info", what);
        else fprintf(stderr, "lorad train: %s\n", what);
    }
    if (ranks) lorad_mpi_finish();
    lorad_progress_finish(&progress);
    int status = LORAD_EXIT_OK;
    if (json_lines && coll.rank == 0) {
        /* the result line says what happened; the status says it to a shell as well */
        lorad_wire_result(stdout, r, &err, result);
        status = r < 0 ? LORAD_EXIT_FAILURE : result->outcome != LORAD_TRAIN_FINISHED ? 130 : LORAD_EXIT_OK;
    } else if (jsonl) {
        /* The daemon reads the outcome from the wire; the exit status only says the run reported. */
        if (coll.rank == 0 && !lorad_wire_result(stdout, r, &err, result)) status = LORAD_EXIT_FAILURE;
        if (r < 0 && coll.rank != 0) fprintf(stderr, "lorad train: rank %d: %s\n", coll.rank, err.message);
    } else if (r < 0) {
        if (err.param[0]) fprintf(stderr, "lorad train: %s [%s]\n", err.message, err.param);
        else fprintf(stderr, "lorad train: %s\n", err.message[0] ? err.message : strerror(-r));
        for (int i = 0; i < result->train_report.n_bad; i++)
            fprintf(stderr, "  line %lld: %s: %s\n", (long long)result->train_report.bad[i].line,
                    lorad_dataset_problem_name(result->train_report.bad[i].problem), result->train_report.bad[i].reason);
        status = LORAD_EXIT_FAILURE;
    } else if (result->outcome != LORAD_TRAIN_FINISHED) {
        fprintf(stderr, "lorad train: stopped after step %lld of %lld; continue with: lorad train %s --out %s --resume\n",
                (long long)result->steps_done, (long long)result->total_steps, job_path, out);
        status = 130;
    } else if (coll.rank == 0) {
        printf("done: %lld steps, %lld tokens, final train_loss %.4f%s -> %s/adapter\n", (long long)result->steps_done,
               (long long)result->trained_tokens, result->last.train_loss,
               result->truncated ? " (some samples truncated)" : "", out);
    }
    free(result);
    lorad_job_spec_clear(&spec);
    return status;
}
