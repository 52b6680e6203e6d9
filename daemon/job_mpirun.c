#include "job_mpirun.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fsutil.h"
#include "log.h"
#include "train_mpi.h"
#include "train_wire.h"

#define MAX_ARGS 256
#define CANCEL_GRACE_S 30 /* after a cancel line, how long the ranks get before they are killed */
#define KILL_GRACE_S 10   /* after SIGTERM to mpirun's group, before SIGKILL */

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Whether `name` runs: a path that is executable, or a name found in PATH. */
static bool runnable(const char *name) {
    if (strchr(name, '/')) return access(name, X_OK) == 0;
    const char *path = getenv("PATH");
    char dir[PATH_MAX];
    for (const char *p = path ? path : "/usr/bin:/bin"; *p;) {
        size_t n = strcspn(p, ":");
        if (snprintf(dir, sizeof dir, "%.*s/%s", (int)n, p, name) < (int)sizeof dir && access(dir, X_OK) == 0)
            return true;
        p += n + (p[n] == ':');
    }
    return false;
}

int lorad_mpirun_from_config(const struct lorad_config_distributed *d, struct lorad_mpirun *ret,
                             struct lorad_error *err) {
    if (strcmp(d->enabled, "yes") != 0) return 0;
    if (!lorad_mpi_available())
        return lorad_error_set(err, -ENOTSUP, "distributed.enabled",
                               "distributed.enabled is yes, but this lorad was built without MPI (install "
                               "libopenmpi-dev and rebuild)");
    if (d->hosts[0] && d->hostfile[0])
        return lorad_error_set(err, -EINVAL, "distributed.hosts", "set distributed.hosts or distributed.hostfile, not both");
    if (d->hostfile[0] && access(d->hostfile, R_OK) < 0)
        return lorad_error_set(err, -errno, "distributed.hostfile", "distributed.hostfile %s: %s", d->hostfile,
                               strerror(errno));
    if (!runnable(d->mpirun))
        return lorad_error_set(err, -ENOENT, "distributed.mpirun", "distributed.mpirun '%s' is not an executable "
                               "or in PATH (Debian: apt install openmpi-bin)", d->mpirun);
    struct lorad_mpirun l = {.ranks_per_host = d->ranks_per_host, .collective_timeout_s = d->collective_timeout_s,
                             .max_restarts = d->max_restarts};
    snprintf(l.mpirun, sizeof l.mpirun, "%s", d->mpirun);
    snprintf(l.hosts, sizeof l.hosts, "%s", d->hosts);
    snprintf(l.hostfile, sizeof l.hostfile, "%s", d->hostfile);
    snprintf(l.args, sizeof l.args, "%s", d->mpirun_args);
    ssize_t n = readlink("/proc/self/exe", l.lorad, sizeof l.lorad - 1);
    if (n <= 0) return lorad_error_set(err, -errno, "distributed", "cannot find this binary: %s", strerror(errno));
    l.lorad[n] = '\0';
    *ret = l;
    return 1;
}

int lorad_mpirun_ranks(const struct lorad_mpirun *l) {
    if (!l->hosts[0]) return 0;
    int n = 1;
    for (const char *p = l->hosts; *p; p++) n += *p == ',';
    return n * l->ranks_per_host;
}

/* ---- the launch ------------------------------------------------------------------------------ */

/* The spec with the paths the daemon resolved, as JOB.json for the ranks. */
static int write_job_file(const struct lorad_job_spec *spec, const struct lorad_train_options *opt, const char *path,
                          struct lorad_error *err) {
    json_t *o = lorad_job_spec_to_json(spec);
    if (!o) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    json_object_set_new(o, "model", json_string(opt->model_path));
    json_object_set_new(o, "training_file", json_string(opt->training_path));
    json_object_set_new(o, "validation_file", opt->validation_path ? json_string(opt->validation_path) : json_null());
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
    json_decref(o);
    int r = text ? lorad_atomic_write_file(path, text, strlen(text)) : -ENOMEM;
    free(text);
    return r < 0 ? lorad_error_set(err, r, "", "cannot write %s: %s", path, strerror(-r)) : 0;
}

/* The launcher's argv in storage (both borrowed by argv): a NULL-terminated list. */
struct command {
    char *argv[MAX_ARGS];
    int argc;
    char text[8192]; /* the strings argv points into */
    size_t used;
};

static int add(struct command *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int add(struct command *c, const char *fmt, ...) {
    if (c->argc >= MAX_ARGS - 1) return -E2BIG;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->text + c->used, sizeof c->text - c->used, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof c->text - c->used) return -E2BIG;
    c->argv[c->argc++] = c->text + c->used;
    c->argv[c->argc] = NULL;
    c->used += (size_t)n + 1;
    return 0;
}

static int build_command(struct command *c, const struct lorad_mpirun *l, const struct lorad_train_options *opt,
                         const char *job_file) {
    int r = add(c, "%s", l->mpirun);
    if (l->hosts[0]) {
        char hosts[sizeof l->hosts * 2] = "";
        size_t used = 0;
        for (const char *p = l->hosts; *p;) {
            size_t n = strcspn(p, ",");
            used += (size_t)snprintf(hosts + used, sizeof hosts - used, "%s%.*s:%d", used ? "," : "", (int)n, p,
                                     l->ranks_per_host);
            if (used >= sizeof hosts) return -E2BIG;
            p += n + (p[n] == ',');
        }
        if (r == 0) r = add(c, "--host");
        if (r == 0) r = add(c, "%s", hosts);
        if (r == 0) r = add(c, "-np");
        if (r == 0) r = add(c, "%d", lorad_mpirun_ranks(l));
    } else {
        if (r == 0 && l->hostfile[0]) r = add(c, "--hostfile");
        if (r == 0 && l->hostfile[0]) r = add(c, "%s", l->hostfile);
        if (r == 0) r = add(c, "--map-by");
        if (r == 0) r = add(c, "ppr:%d:node", l->ranks_per_host);
    }
    char args[sizeof l->args];
    snprintf(args, sizeof args, "%s", l->args);
    char *save = NULL;
    for (char *a = strtok_r(args, " \t", &save); a && r == 0; a = strtok_r(NULL, " \t", &save)) r = add(c, "%s", a);
    int threads = opt->threads / l->ranks_per_host;
    if (r == 0) r = add(c, "%s", l->lorad);
    if (r == 0) r = add(c, "train");
    if (r == 0) r = add(c, "%s", job_file);
    if (r == 0) r = add(c, "--out");
    if (r == 0) r = add(c, "%s", opt->out_dir);
    if (r == 0 && opt->resume) r = add(c, "--resume");
    if (r == 0 && opt->skip_invalid) r = add(c, "--skip-invalid");
    if (r == 0) r = add(c, "--jsonl");
    if (r == 0) r = add(c, "--threads");
    if (r == 0) r = add(c, "%d", threads > 0 ? threads : 1);
    if (r == 0) r = add(c, "--memory-limit");
    if (r == 0) r = add(c, "%lld", (long long)opt->memory_limit_bytes);
    if (r == 0) r = add(c, "--collective-timeout");
    if (r == 0) r = add(c, "%d", l->collective_timeout_s);
    return r;
}

/* Starts argv in its own process group (so a kill reaches mpirun's whole tree) with pipes for
 * stdin, stdout and stderr. 0 and *ret_pid, or -errno. */
static int spawn(char *const argv[], int *ret_in, int *ret_out, int *ret_errfd, pid_t *ret_pid) {
    int in[2], out[2], er[2];
    if (pipe2(in, O_CLOEXEC) < 0) return -errno;
    if (pipe2(out, O_CLOEXEC) < 0) {
        int r = -errno;
        close(in[0]), close(in[1]);
        return r;
    }
    if (pipe2(er, O_CLOEXEC) < 0) {
        int r = -errno;
        close(in[0]), close(in[1]), close(out[0]), close(out[1]);
        return r;
    }
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        signal(SIGPIPE, SIG_DFL);
        if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0 || dup2(er[1], 2) < 0) _exit(127);
        execvp(argv[0], argv);
        dprintf(2, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int r = pid < 0 ? -errno : 0;
    close(in[0]), close(out[1]), close(er[1]);
    if (r < 0) {
        close(in[1]), close(out[0]), close(er[0]);
        return r;
    }
    setpgid(pid, pid); /* also here, so a kill right after fork reaches the group */
    *ret_in = in[1];
    *ret_out = out[0];
    *ret_errfd = er[0];
    *ret_pid = pid;
    return 0;
}

/* Bytes of one stream cut into lines. */
struct line_reader {
    int fd;
    char buf[LORAD_WIRE_LINE_MAX];
    size_t n;
    bool overflow; /* the current line was too long: dropped up to its newline */
};

/* Reads what is there and calls each(ctx, line) per complete line. Returns false at end of file. */
static bool read_lines(struct line_reader *lr, void (*each)(void *ctx, char *line), void *ctx) {
    ssize_t got = read(lr->fd, lr->buf + lr->n, sizeof lr->buf - 1 - lr->n);
    if (got < 0) return errno == EINTR || errno == EAGAIN;
    if (got == 0) return false;
    lr->n += (size_t)got;
    char *start = lr->buf, *nl;
    while ((nl = memchr(start, '\n', lr->n - (size_t)(start - lr->buf)))) {
        *nl = '\0';
        if (!lr->overflow) each(ctx, start);
        lr->overflow = false;
        start = nl + 1;
    }
    lr->n -= (size_t)(start - lr->buf);
    memmove(lr->buf, start, lr->n);
    if (lr->n == sizeof lr->buf - 1) { /* a line longer than the buffer: not ours */
        lr->n = 0;
        lr->overflow = true;
    }
    return true;
}

struct session {
    const struct lorad_train_callbacks *cb;
    bool have_result;
    int rc;
    struct lorad_error result_err;
    struct lorad_train_result *res;
    struct lorad_step_metrics last_step; /* for a run that ends without a result */
    int64_t steps_seen;
    char last_stderr[512];
    bool ours; /* last_stderr is a line of `lorad train` */
};

static void on_step_seen(void *ctx, const struct lorad_step_metrics *m) {
    struct session *s = ctx;
    s->last_step = *m;
    s->steps_seen++;
    if (s->cb->on_step) s->cb->on_step(s->cb->ctx, m);
}
static void on_checkpoint_seen(void *ctx, int64_t step, const char *dir, const struct lorad_step_metrics *m) {
    struct session *s = ctx;
    if (s->cb->on_checkpoint) s->cb->on_checkpoint(s->cb->ctx, step, dir, m);
}
static void on_message_seen(void *ctx, const char *level, const char *message) {
    struct session *s = ctx;
    if (s->cb->on_message) s->cb->on_message(s->cb->ctx, level, message);
}

static void stdout_line(void *ctx, char *line) {
    struct session *s = ctx;
    struct lorad_train_callbacks seen = {s, on_step_seen, on_checkpoint_seen, on_message_seen, NULL};
    if (lorad_wire_dispatch(line, &seen, &s->rc, &s->result_err, s->res) == LORAD_WIRE_RESULT) s->have_result = true;
    else if (line[0] && line[0] != '{') log_info("mpirun: %s", line);
}

static void stderr_line(void *ctx, char *line) {
    struct session *s = ctx;
    if (!line[0]) return;
    log_warning("mpirun: %s", line);
    /* The reason for the message: our ranks' own words first, else mpirun's last line of text
     * (its banners are rows of dashes). */
    bool ours = strncmp(line, "lorad train:", 12) == 0;
    if (ours && !s->ours) s->last_stderr[0] = '\0';
    s->ours = s->ours || ours;
    if ((ours || !s->ours) && strspn(line, "- ") < strlen(line)) snprintf(s->last_stderr, sizeof s->last_stderr, "%s", line);
}

static const char *control_line(enum lorad_train_control c) {
    return c == LORAD_TRAIN_CANCEL ? "cancel\n" : "pause\n";
}

int lorad_mpirun_train(const struct lorad_mpirun *l, const struct lorad_job_spec *spec,
                       const struct lorad_train_options *opt, const struct lorad_train_callbacks *cb,
                       struct lorad_train_result *ret_result, struct lorad_error *err) {
    char job_file[PATH_MAX];
    int r = lorad_mkdir_p(opt->out_dir);
    if (r < 0) return lorad_error_set(err, r, "", "cannot create %s: %s", opt->out_dir, strerror(-r));
    if ((r = lorad_path_join(job_file, sizeof job_file, opt->out_dir, "job.json")) < 0)
        return lorad_error_set(err, r, "", "the job directory path is too long");
    if ((r = write_job_file(spec, opt, job_file, err)) < 0) return r;
    struct command *cmd = calloc(1, sizeof *cmd);
    struct line_reader *out = calloc(1, sizeof *out), *errs = calloc(1, sizeof *errs);
    struct session s = {.cb = cb, .res = ret_result};
    if (!cmd || !out || !errs) {
        r = lorad_error_set(err, -ENOMEM, "", "out of memory");
        goto done;
    }
    if ((r = build_command(cmd, l, opt, job_file)) < 0) {
        lorad_error_set(err, r, "distributed.mpirun_args", "the launch command is too long");
        goto done;
    }
    int in_fd = -1;
    pid_t pid = 0;
    if ((r = spawn(cmd->argv, &in_fd, &out->fd, &errs->fd, &pid)) < 0) {
        lorad_error_set(err, r, "distributed.mpirun", "cannot start %s: %s", l->mpirun, strerror(-r));
        goto done;
    }
    log_info("launched %s ... (%d ranks%s) for %s", l->mpirun, lorad_mpirun_ranks(l),
             l->hosts[0] ? "" : " as mpirun maps them", opt->out_dir);
    memset(ret_result, 0, sizeof *ret_result);
    enum lorad_train_control asked = LORAD_TRAIN_CONTINUE;
    double asked_at = 0, termed_at = 0, heard_at = mono_s(), exited_at = 0;
    /* Rank 0 writes a line at least every LORAD_WIRE_HEARTBEAT_S; longer silence than a sum may
     * take means it is gone while mpirun lingers (it can hang when a rank dies during start-up). */
    double silence_limit = l->collective_timeout_s + 10.0;
    bool out_open = true, err_open = true, exited = false;
    int status = 0;
    while (out_open || err_open) {
        struct pollfd p[2] = {{out_open ? out->fd : -1, POLLIN, 0}, {err_open ? errs->fd : -1, POLLIN, 0}};
        int n = poll(p, 2, 500);
        if (n < 0 && errno != EINTR) break;
        if (out_open && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            out_open = read_lines(out, stdout_line, &s);
            heard_at = mono_s();
        }
        if (err_open && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) err_open = read_lines(errs, stderr_line, &s);
        double now = mono_s();
        if (!exited && waitpid(pid, &status, WNOHANG) == pid) {
            exited = true;
            exited_at = now;
        }
        if (exited && now - exited_at > 2.0) break; /* a straggler keeps the pipes open: mpirun is done */
        if (!termed_at && now - heard_at > silence_limit) {
            log_warning("no word from rank 0 for %.0f s: ending mpirun", now - heard_at);
            kill(-pid, SIGTERM);
            termed_at = now;
        }
        /* The engine asks before each step; here the runner is asked twice a second, and a request
         * becomes one line for rank 0, which the ranks agree on at their next step. */
        enum lorad_train_control c = cb->poll ? cb->poll(cb->ctx) : LORAD_TRAIN_CONTINUE;
        if (c != LORAD_TRAIN_CONTINUE && c != asked && asked != LORAD_TRAIN_CANCEL) {
            const char *line = control_line(c);
            if (write(in_fd, line, strlen(line)) < 0) log_warning("cannot ask the ranks to stop: %s", strerror(errno));
            asked = c;
            asked_at = mono_s();
        }
        if (asked == LORAD_TRAIN_CANCEL && !termed_at && now - asked_at > CANCEL_GRACE_S) {
            log_warning("the ranks did not stop %d s after a cancel: terminating mpirun", CANCEL_GRACE_S);
            kill(-pid, SIGTERM);
            termed_at = now;
        }
        if (termed_at && now - termed_at > KILL_GRACE_S) {
            kill(-pid, SIGKILL);
            termed_at = now + 1e9; /* once */
        }
    }
    close(in_fd);
    close(out->fd);
    close(errs->fd);
    kill(-pid, SIGKILL); /* whatever of mpirun's group is left */
    while (!exited && waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (s.have_result) {
        r = s.rc;
        if (r < 0) *err = s.result_err;
    } else {
        char how[64];
        if (WIFSIGNALED(status)) snprintf(how, sizeof how, "was killed by signal %d", WTERMSIG(status));
        else snprintf(how, sizeof how, "exited with status %d", WEXITSTATUS(status));
        r = lorad_error_set(err, -ECONNABORTED, "", "the ranks ended without a result (mpirun %s)%s%s", how,
                            s.last_stderr[0] ? ": " : "", s.last_stderr);
        ret_result->outcome = LORAD_TRAIN_PAUSED;
        ret_result->steps_done = s.last_step.step;
        ret_result->total_steps = s.last_step.total_steps;
        ret_result->trained_tokens = s.last_step.tokens_seen;
        ret_result->last = s.last_step;
    }
done:
    free(cmd);
    free(out);
    free(errs);
    return r;
}
