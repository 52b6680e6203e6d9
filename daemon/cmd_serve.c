/* lorad serve: the daemon.
 *
 * Start: configuration (/etc/lorad/lorad.conf, then flags, then the api_key_file they name) ->
 * state directory layout (api/app.h) -> the store opened with startup recovery (running jobs back
 * to queued) -> jobs left in validating_files settled -> handlers, the inference service (unless
 * inference.enabled is no), worker pool, HTTP server(s) -> sd_notify READY=1.
 * Listening: the inherited sockets of systemd socket activation ($LISTEN_FDS), else bind:port;
 * plus unix_socket when configured. Each listening socket gets its own libmicrohttpd daemon; all
 * of them check one shared API key set (api_keys.h), so a SIGHUP changes the keys of all at once.
 *
 * Signals arrive through a self-pipe read by the main loop (a handler, not a blocked mask plus
 * signalfd: OpenBLAS starts its threads before main, so any thread may take a signal): SIGHUP
 * re-reads the API keys and the log level; SIGTERM/SIGINT refuse new jobs, ask running jobs to
 * checkpoint and go back to `queued`, keep systemd's stop timeout extended while they do, then stop
 * the HTTP servers, the inference service, the workers and the store in that order, and exit 0. A second SIGTERM/SIGINT
 * exits at once (startup recovery requeues whatever was running). The main loop also sends
 * WATCHDOG=1 and a STATUS= line with the queue. */
#include <arpa/inet.h>
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <netdb.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/file.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "api_keys.h"
#include "app.h"
#include "cli.h"
#include "fsutil.h"
#include "config.h"
#include "cpulist.h"
#include "job_mpirun.h"
#include "cpu_features.h"
#include "gemm.h"
#include "handlers.h"
#include "infer_service.h"
#include "log.h"
#include "meminfo.h"
#include "sd_notify.h"
#include "server.h"
#include "store.h"
#include "threadpool.h"
#include "workers.h"

#ifndef LORAD_VERSION
#define LORAD_VERSION "0.0.0"
#endif

#define LORAD_DEFAULT_CONFIG "/etc/lorad/lorad.conf"
#define MAX_LISTENERS 8
/* While jobs checkpoint at shutdown, each second tells systemd to allow this much more time. */
#define STOP_EXTEND_USEC 10000000ull

struct listener {
    int fd;
    bool inherited;        /* from $LISTEN_FDS: systemd owns the address */
    char unix_path[108];   /* a unix socket we bound ourselves (unlinked at exit) */
    char url[300];         /* what the log line says */
    struct lorad_api_server *server;
};

struct daemon {
    struct lorad_config cfg;
    struct lorad_mpirun mpirun; /* with distributed_on: how jobs are launched */
    bool distributed_on;
    cpu_set_t http_cpus, training_cpus; /* meaningful when the matching *_pinned is set */
    bool http_pinned, training_pinned;
    int argc;
    char **argv;
    char files_dir[PATH_MAX], uploads_dir[PATH_MAX], jobs_dir[PATH_MAX], db_path[PATH_MAX];
    struct lorad_store *store;
    struct lorad_app app;
    struct lorad_workers *workers;
    struct lorad_infer *infer;   /* NULL with inference.enabled no */
    struct listener listeners[MAX_LISTENERS];
    int n_listeners;
    struct lorad_api_keys *keys; /* shared by every listener; freed only after they have stopped */
    int sfd;
    int lock_fd;           /* STATE/lorad.lock, flock()ed for the life of the process */
    char last_status[160];
};

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- state directory ------------------------------------------------------------------------- */

/* Uploads in flight when the previous process died are temp files nobody will finish. */
static void clean_uploads(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, "lorad-upload-", 13) == 0 && unlinkat(dirfd(d), e->d_name, 0) == 0) n++;
    closedir(d);
    if (n) log_info("removed %d unfinished uploads from %s", n, dir);
}

/* One daemon per state directory: a second one's startup recovery would requeue the first one's
 * running jobs and both would train them. The lock goes with the process, however it ends. */
static int lock_state(struct daemon *d) {
    char path[PATH_MAX];
    if (lorad_path_join(path, sizeof path, d->cfg.state_dir, "lorad.lock") < 0) return -ENAMETOOLONG;
    d->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (d->lock_fd < 0) {
        int r = -errno;
        log_error("cannot open %s: %s", path, strerror(-r));
        return r;
    }
    if (flock(d->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        int r = -errno;
        char pid[32] = "";
        ssize_t n = pread(d->lock_fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        char holder[48] = "";
        if (pid[0]) snprintf(holder, sizeof holder, " (pid %s)", pid);
        if (r == -EWOULDBLOCK)
            log_error("another lorad serve%s is using state_dir %s; stop it or choose another state_dir", holder,
                      d->cfg.state_dir);
        else log_error("cannot lock %s: %s", path, strerror(-r));
        return r == -EWOULDBLOCK ? -EBUSY : r;
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(d->lock_fd, 0) < 0 || pwrite(d->lock_fd, pid, (size_t)n, 0) != n)
        log_warning("cannot record the pid in %s", path);
    return 0;
}

static int prepare_state(struct daemon *d) {
    const char *state = d->cfg.state_dir;
    int r = lorad_mkdir_p_mode(state, 0700);
    if (r < 0) {
        log_error("cannot create state_dir %s: %s", state, strerror(-r));
        return r;
    }
    if ((r = lock_state(d)) < 0) return r;
    if ((r = lorad_path_join(d->files_dir, sizeof d->files_dir, state, "files")) < 0 ||
        (r = lorad_path_join(d->uploads_dir, sizeof d->uploads_dir, state, "uploads")) < 0 ||
        (r = lorad_path_join(d->jobs_dir, sizeof d->jobs_dir, state, "jobs")) < 0 ||
        (r = lorad_path_join(d->db_path, sizeof d->db_path, state, "lorad.db")) < 0) {
        log_error("state_dir %s: path too long", state);
        return r;
    }
    const char *subdirs[] = {d->files_dir, d->uploads_dir, d->jobs_dir};
    for (size_t i = 0; i < 3; i++)
        if ((r = lorad_mkdir_p_mode(subdirs[i], 0700)) < 0) {
            log_error("cannot create %s: %s", subdirs[i], strerror(-r));
            return r;
        }
    clean_uploads(d->uploads_dir);
    struct stat st;
    if (stat(d->cfg.models_dir, &st) < 0 || !S_ISDIR(st.st_mode))
        log_warning("models_dir %s is not a directory: no base model is available until it exists", d->cfg.models_dir);
    return 0;
}

/* ---- store and recovery ---------------------------------------------------------------------- */

static bool file_usable(struct lorad_store *store, const char *id, const char **ret_problem) {
    json_t *f = NULL;
    if (lorad_store_file_get(store, id, &f, NULL) < 0) {
        *ret_problem = "file_not_found";
        return false;
    }
    bool ok = !json_is_string(json_object_get(f, "status")) ||
              strcmp(json_string_value(json_object_get(f, "status")), "error") != 0;
    json_decref(f);
    *ret_problem = "invalid_training_data";
    return ok;
}

/* Jobs left in validating_files by the previous process. Files are validated when they are
 * uploaded, so a job whose files exist and passed goes on to the queue; any other fails. */
static void settle_validating_jobs(struct lorad_store *store) {
    for (int round = 0; round < 10000; round++) {
        json_t *page = NULL;
        struct lorad_error err = {0};
        if (lorad_store_job_list(store, LORAD_JOB_VALIDATING_FILES, NULL, 100, &page, &err) < 0) {
            log_error("cannot list jobs waiting for file validation: %s", err.message);
            return;
        }
        json_t *data = json_object_get(page, "data");
        size_t i, moved = 0;
        json_t *job;
        json_array_foreach(data, i, job) {
            const char *id = json_string_value(json_object_get(job, "id"));
            const char *tf = json_string_value(json_object_get(job, "training_file"));
            const char *vf = json_string_value(json_object_get(job, "validation_file"));
            const char *problem = NULL, *param = NULL;
            if (!tf || !file_usable(store, tf, &problem)) param = "training_file";
            else if (vf && !file_usable(store, vf, &problem)) param = "validation_file";
            struct lorad_store_transition t = {.to = LORAD_JOB_QUEUED,
                                               .message = "Files validated at upload; job queued after a restart"};
            char msg[128]; /* outlives the transition below, which reads it */
            if (param) {
                snprintf(msg, sizeof msg, "the %s is missing or failed validation", param);
                t = (struct lorad_store_transition){.to = LORAD_JOB_FAILED, .error_code = problem,
                                                    .error_message = msg, .error_param = param};
            }
            struct lorad_error e = {0};
            if (lorad_store_job_transition(store, id, &t, NULL, &e) == 0) {
                moved++;
                log_info("job %s: was validating files at the last stop; now %s", id, lorad_job_status_name(t.to));
            } else {
                log_error("job %s: cannot settle after restart: %s", id, e.message);
            }
        }
        size_t n = json_array_size(data);
        json_decref(page);
        if (n == 0 || moved == 0) return;
    }
}

static int open_store(struct daemon *d) {
    struct lorad_error err = {0};
    struct lorad_store_options so = {.flags = LORAD_STORE_RECOVER};
    int r = lorad_store_open(d->db_path, &so, &d->store, &err);
    if (r < 0) {
        log_error("cannot open the store: %s", err.message[0] ? err.message : strerror(-r));
        return r;
    }
    settle_validating_jobs(d->store);
    int64_t counts[LORAD_JOB_STATUS_COUNT];
    if (lorad_store_job_counts(d->store, counts, &err) == 0)
        log_info("store %s: %lld queued (running jobs of the last run included), %lld paused", d->db_path,
                 (long long)counts[LORAD_JOB_QUEUED], (long long)counts[LORAD_JOB_PAUSED]);
    return 0;
}

/* ---- listening ------------------------------------------------------------------------------- */

static void describe_socket(int fd, char *out, size_t cap) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
        snprintf(out, cap, "fd %d", fd);
        return;
    }
    char host[INET6_ADDRSTRLEN] = "?";
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        snprintf(out, cap, "http://%s:%u", host, (unsigned)ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        snprintf(out, cap, "http://[%s]:%u", host, (unsigned)ntohs(a->sin6_port));
    } else if (ss.ss_family == AF_UNIX) {
        struct sockaddr_un *a = (struct sockaddr_un *)&ss;
        if (len > offsetof(struct sockaddr_un, sun_path) && a->sun_path[0])
            snprintf(out, cap, "unix:%.108s", a->sun_path);
        else snprintf(out, cap, "unix:(abstract)");
    } else {
        snprintf(out, cap, "fd %d", fd);
    }
}

static int listen_tcp(const char *bind_addr, int port, int *ret_fd) {
    /* No AI_ADDRCONFIG: it hides 127.0.0.1 on a host with only loopback, and it asks netlink,
     * which lorad.service's RestrictAddressFamilies does not allow. */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int g = getaddrinfo(bind_addr[0] ? bind_addr : NULL, ps, &hints, &res);
    if (g != 0) {
        log_error("cannot listen on %s:%d: %s", bind_addr, port, gai_strerror(g));
        return -EINVAL;
    }
    int r = -EADDRNOTAVAIL;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            r = -errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0) {
            freeaddrinfo(res);
            *ret_fd = fd;
            return 0;
        }
        r = -errno;
        close(fd);
    }
    freeaddrinfo(res);
    log_error("cannot listen on %s:%d: %s%s", bind_addr, port, strerror(-r),
              r == -EADDRINUSE ? " (another process has this port: stop it, or set port/--port)" : "");
    return r;
}

static int listen_unix(const char *path, int *ret_fd) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path) {
        log_error("unix_socket %s: path longer than %zu bytes", path, sizeof a.sun_path - 1);
        return -ENAMETOOLONG;
    }
    memcpy(a.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    struct stat st;
    if (lstat(path, &st) == 0) {
        /* A socket nobody answers on is what a killed daemon leaves behind; anything else stays. */
        if (!S_ISSOCK(st.st_mode)) {
            log_error("unix_socket %s exists and is not a socket; refusing to replace it", path);
            close(fd);
            return -EEXIST;
        }
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool live = probe >= 0 && connect(probe, (struct sockaddr *)&a, sizeof a) == 0;
        if (probe >= 0) close(probe);
        if (live) {
            log_error("unix_socket %s: another process is listening on it", path);
            close(fd);
            return -EADDRINUSE;
        }
        unlink(path);
    }
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 128) < 0) {
        int r = -errno;
        log_error("cannot listen on unix socket %s: %s", path, strerror(-r));
        close(fd);
        return r;
    }
    *ret_fd = fd;
    return 0;
}

static int add_listener(struct daemon *d, int fd, bool inherited, const char *unix_path) {
    if (d->n_listeners == MAX_LISTENERS) {
        log_warning("more than %d listening sockets; ignoring fd %d", MAX_LISTENERS, fd);
        return 0;
    }
    struct listener *l = &d->listeners[d->n_listeners++];
    *l = (struct listener){.fd = fd, .inherited = inherited};
    if (unix_path) snprintf(l->unix_path, sizeof l->unix_path, "%s", unix_path);
    /* libmicrohttpd's listening thread polls before accept(), so the socket must not block. */
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    describe_socket(fd, l->url, sizeof l->url);
    return 0;
}

static int open_listeners(struct daemon *d) {
    int n = lorad_sd_listen_fds();
    for (int i = 0; i < n; i++) {
        int fd = 3 + i;
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        add_listener(d, fd, true, NULL);
    }
    /* The passed sockets are not ours to keep passing on to children. */
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDNAMES");
    int r, fd = -1;
    if (n == 0) {
        if ((r = listen_tcp(d->cfg.bind, d->cfg.port, &fd)) < 0) return r;
        add_listener(d, fd, false, NULL);
    }
    if (d->cfg.unix_socket[0]) {
        if ((r = listen_unix(d->cfg.unix_socket, &fd)) < 0) return r;
        add_listener(d, fd, false, d->cfg.unix_socket);
    }
    return 0;
}

static int start_servers(struct daemon *d, const void *unused) {
    (void)unused;
    for (int i = 0; i < d->n_listeners; i++) {
        struct listener *l = &d->listeners[i];
        struct lorad_api_server_options o = {
            .listen_fd = l->fd,
            .max_connections = (unsigned)d->cfg.max_connections,
            .connection_timeout_s = (unsigned)d->cfg.connection_timeout_s,
            .max_request_body = (size_t)d->cfg.max_request_body,
            .max_upload_bytes = (uint64_t)d->cfg.max_upload_bytes,
            .upload_dir = d->uploads_dir,
            .max_json_depth = (unsigned)d->cfg.max_json_depth,
            .keys = d->keys,
            .app = &d->app,
        };
        int r = lorad_api_server_start(&o, &l->server);
        if (r < 0) {
            log_error("cannot start the HTTP server on %s: %s", l->url, strerror(-r));
            return r;
        }
        log_info("listening on %s", l->url);
    }
    if (d->cfg.api_key_file[0]) {
        struct stat st;
        if (stat(d->cfg.api_key_file, &st) == 0 && (st.st_mode & S_IROTH))
            log_warning("api_key_file %s is readable by every user", d->cfg.api_key_file);
        log_info("API keys required (api_key_file %s)", d->cfg.api_key_file);
        if (lorad_api_keys_count(d->keys) == 0)
            log_warning("api_key_file %s has no keys: every request but /livez and /readyz is refused",
                        d->cfg.api_key_file);
    } else {
        log_warning("api_key_file is not set: the API is open to anyone who can reach it");
    }
    return 0;
}

/* Stops every listener's HTTP server, then closes its socket (MHD may poll it until stopped).
 * Returns once no request handler or SSE stream of ours runs any more. */
static void stop_servers(struct daemon *d) {
    for (int i = 0; i < d->n_listeners; i++) {
        struct listener *l = &d->listeners[i];
        lorad_api_server_stop(l->server);
        l->server = NULL;
        if (l->fd >= 0) close(l->fd);
        if (l->unix_path[0]) unlink(l->unix_path);
    }
    d->n_listeners = 0;
}

/* ---- threads and inference ------------------------------------------------------------------- */

/* glibc gives threads up to 8 malloc arenas per core. Every HTTP client is a thread of its own, so
 * a burst of them spreads small blocks over all of them, and each arena keeps its partly used
 * pages: RSS after wrk runs crept up by about 1 MB per arena with malloc's bytes in use flat. One
 * arena per core (at least 2) keeps threads from contending on one lock and the spread small. An
 * operator's MALLOC_ARENA_MAX or GLIBC_TUNABLES, read by glibc at start, is left as it is. */
static void limit_malloc_arenas(long cores) {
    const char *tunables = getenv("GLIBC_TUNABLES");
    if (getenv("MALLOC_ARENA_MAX") || (tunables && strstr(tunables, "arena_max"))) return;
    mallopt(M_ARENA_MAX, (int)(cores < 2 ? 2 : cores > 1024 ? 1024 : cores));
}

/* The CPUs option NAME (its TEXT already checked by the config parser) names, which must all be
 * CPUs this process may run on (taskset, systemd's CPUAffinity=). Returns 1 and *ret_set, 0 when
 * TEXT is empty (any CPU: *ret_set untouched), or -EINVAL with err naming the option and the CPUs
 * there are. */
static int resolve_cpus(const char *name, const char *text, cpu_set_t *ret_set, struct lorad_error *err) {
    if (!text[0]) return 0;
    cpu_set_t want, allowed, outside;
    int r = lorad_cpulist_parse(text, &want);
    if (r < 0) return lorad_error_set(err, r, name, "%s: '%s' is not a CPU list", name, text);
    if (sched_getaffinity(0, sizeof allowed, &allowed) < 0)
        return lorad_error_set(err, -errno, name, "%s: cannot read the CPUs lorad may run on: %s", name, strerror(errno));
    CPU_XOR(&outside, &want, &allowed);
    CPU_AND(&outside, &outside, &want);
    if (CPU_COUNT(&outside) > 0) {
        char bad[128], there[128];
        lorad_cpulist_format(&outside, bad, sizeof bad);
        lorad_cpulist_format(&allowed, there, sizeof there);
        return lorad_error_set(err, -EINVAL, name, "%s names CPU %s, but lorad may run on %s only", name, bad, there);
    }
    *ret_set = want;
    return 1;
}

static int start_workers(struct daemon *d, const void *options) {
    int r = lorad_workers_start(options, &d->workers);
    if (r < 0) log_error("cannot start the workers: %s", strerror(-r));
    return r;
}

/* Runs start(d, arg) with the calling thread on CPUS (NULL: as it is), so the threads start()
 * creates inherit them, then puts the caller's CPUs back. NAME is the option and WHAT the threads,
 * for the log. Returns start's result, or -errno (logged) when the CPUs cannot be set. */
static int start_pinned(const cpu_set_t *cpus, const char *name, const char *what,
                        int (*start)(struct daemon *, const void *), struct daemon *d, const void *arg) {
    if (!cpus) return start(d, arg);
    cpu_set_t saved;
    int r = lorad_cpulist_pin_self(cpus, &saved);
    if (r < 0) {
        log_error("cannot run threads on the CPUs of %s: %s", name, strerror(-r));
        return r;
    }
    char list[128];
    lorad_cpulist_format(cpus, list, sizeof list);
    log_info("%s: %s on CPU %s", name, what, list);
    r = start(d, arg);
    int rr = lorad_cpulist_pin_self(&saved, NULL);
    assert(rr == 0); /* the set the thread had a moment ago is valid */
    (void)rr;
    return r;
}

struct thread_plan {
    int inference_threads;     /* 0: inference is off */
    int threads_per_job;       /* a job's threads when its spec leaves them null, and its ceiling */
    bool jobs_leave_inference; /* threads_per_job was derived from what inference leaves */
};

/* How the cores are shared. Inference gets inference.threads (0: a quarter of the cores, at least
 * 1), whatever the number of requests. A job gets max_threads_per_job; when that is 0 (auto), the
 * cores inference does not take, divided among the workers (at least 1 each), so generation and
 * training do not fight over the same cores. Below 4 cores an automatic inference share is not
 * set aside: a quarter would be a whole core of two, idle whenever nobody asks for text, and a
 * job with half the cores trains half as fast (the demo adapter learned 10 of 32 codes instead
 * of ~28); there the one inference thread shares the cores with the job. With training_cpus set
 * (training_cores > 0), an automatic share divides those CPUs among the workers. An explicit
 * max_threads_per_job is the operator's choice and is kept even if it overlaps. */
static void plan_threads(const struct lorad_config *cfg, long cores, long training_cores, struct thread_plan *ret) {
    if (cores < 1) cores = 1;
    struct thread_plan p = {0};
    if (strcmp(cfg->inference.enabled, "yes") == 0) {
        long t = cfg->inference.threads ? cfg->inference.threads : cores / 4;
        p.inference_threads = (int)(t < 1 ? 1 : t > LORAD_MAX_THREADS ? LORAD_MAX_THREADS : t);
    }
    p.threads_per_job = cfg->max_threads_per_job;
    if (p.threads_per_job == 0) {
        /* CPUs given to training (training_cpus) are the jobs' own: nothing is set aside there */
        bool reserve = training_cores == 0 && (cfg->inference.threads > 0 || cores >= 4);
        long for_jobs = (training_cores ? training_cores : cores) - (reserve ? p.inference_threads : 0);
        if (for_jobs < 1) for_jobs = 1;
        p.threads_per_job = for_jobs > cfg->workers ? (int)(for_jobs / cfg->workers) : 1;
        p.jobs_leave_inference = reserve && p.inference_threads > 0;
    }
    *ret = p;
}

/* Starts the inference service behind /v1/completions and /v1/chat/completions. Returns 0 or
 * -errno (logged). */
static int start_inference(struct daemon *d, int threads) {
    const struct lorad_config_inference *c = &d->cfg.inference;
    struct lorad_infer_options o = {.threads = threads, .max_generations = c->max_concurrent_generations,
                                    .memory_budget = c->memory_budget, .max_context = c->max_context};
    struct lorad_error err = {0};
    int r = lorad_infer_new(&d->infer, &o, &err);
    if (r < 0) {
        log_error("cannot start the inference service: %s", err.message[0] ? err.message : strerror(-r));
        return r;
    }
    d->app.infer = d->infer;
    d->app.infer_max_generations = c->max_concurrent_generations;
    char budget[32] = "none";
    if (c->memory_budget) snprintf(budget, sizeof budget, "%.2f GiB", (double)c->memory_budget / (1 << 30));
    log_info("inference: %d thread%s, %d generations at once, context %d tokens, memory budget %s", threads,
             threads == 1 ? "" : "s", c->max_concurrent_generations, c->max_context, budget);
    return 0;
}

/* ---- main loop ------------------------------------------------------------------------------- */

static void notify_status(struct daemon *d, bool force) {
    int64_t c[LORAD_JOB_STATUS_COUNT];
    if (lorad_store_job_counts(d->store, c, NULL) < 0) return;
    char status[160];
    snprintf(status, sizeof status, "%lld queued, %lld running, %lld paused", (long long)c[LORAD_JOB_QUEUED],
             (long long)(c[LORAD_JOB_RUNNING] + c[LORAD_JOB_CANCELLING]), (long long)c[LORAD_JOB_PAUSED]);
    if (!force && strcmp(status, d->last_status) == 0) return;
    snprintf(d->last_status, sizeof d->last_status, "%s", status);
    lorad_sd_notifyf("STATUS=%s", status);
}

static void reload(struct daemon *d) {
    lorad_sd_notify("RELOADING=1");
    struct lorad_config fresh;
    struct lorad_error err = {0};
    lorad_config_defaults(&fresh);
    /* The key file to use: the configuration's, or the running one when the configuration cannot
     * be read. */
    const char *key_file = d->cfg.api_key_file;
    if (lorad_config_from_args(&fresh, d->argc, d->argv, LORAD_DEFAULT_CONFIG, &err) < 0) {
        log_error("SIGHUP: %s; keeping the running configuration", err.message);
    } else {
        enum lorad_log_level level;
        if (lorad_log_level_parse(fresh.log_level, &level) == 0) lorad_log_set_level(level);
        snprintf(d->cfg.log_level, sizeof d->cfg.log_level, "%s", fresh.log_level);
        key_file = fresh.api_key_file;
    }
    bool switched = strcmp(key_file, d->cfg.api_key_file) != 0;
    struct lorad_error kerr = {0};
    int r = lorad_api_keys_use_file(d->keys, key_file, &kerr);
    if (r < 0) {
        log_error("SIGHUP: %s; %s", kerr.message, switched ? "the old file and keys stay" : "the old keys stay");
    } else {
        if (switched && !key_file[0])
            log_warning("SIGHUP: api_key_file is no longer set: the API is open to anyone who can reach it");
        else if (switched)
            log_info("SIGHUP: API keys now from %s (was %s)", key_file,
                     d->cfg.api_key_file[0] ? d->cfg.api_key_file : "none: the API was open");
        else if (key_file[0])
            log_info("SIGHUP: reloaded API keys from %s", key_file);
        if (switched) snprintf(d->cfg.api_key_file, sizeof d->cfg.api_key_file, "%s", key_file);
    }
    log_info("SIGHUP: log level %s", d->cfg.log_level);
    lorad_sd_notify("READY=1");
}

static int signal_pipe[2] = {-1, -1};

static void on_signal(int sig) {
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    ssize_t w = write(signal_pipe[1], &b, 1); /* full pipe: a signal of that burst is dropped, fine */
    (void)w;
    errno = saved;
}

/* Returns the signal read, 0 when none is pending. */
static int next_signal(int fd) {
    unsigned char b;
    return read(fd, &b, 1) == 1 ? (int)b : 0;
}

static int run_loop(struct daemon *d) {
    uint64_t wd_usec = lorad_sd_watchdog_usec();
    double wd_every = wd_usec ? (double)wd_usec / 2e6 : 0, last_wd = mono_s();
    double status_every = 2.0, last_status = mono_s();
    /* glibc returns free memory to the kernel only from the top of each arena's heap; after a burst
     * of connection threads (one per client, each on one of up to 8 arenas per core) the free pages
     * inside the heaps stay resident, and the RSS stays up by tens of MB with nothing in use.
     * malloc_trim hands them back (madvise) in a few milliseconds. */
    double trim_every = 10.0, last_trim = mono_s();
    for (;;) {
        double now = mono_s();
        double wait = status_every - (now - last_status);
        if (wd_every > 0 && wd_every - (now - last_wd) < wait) wait = wd_every - (now - last_wd);
        struct pollfd pfd = {.fd = d->sfd, .events = POLLIN};
        int pr = poll(&pfd, 1, wait > 0 ? (int)(wait * 1000) + 1 : 0);
        if (pr > 0) {
            int sig = next_signal(d->sfd);
            if (sig == SIGHUP) reload(d);
            else if (sig == SIGTERM || sig == SIGINT) return sig;
        }
        now = mono_s();
        if (wd_every > 0 && now - last_wd >= wd_every) {
            lorad_sd_notify("WATCHDOG=1");
            last_wd = now;
        }
        if (now - last_status >= status_every) {
            notify_status(d, false);
            last_status = now;
        }
        if (now - last_trim >= trim_every) {
            malloc_trim(0);
            last_trim = now;
        }
    }
}

/* SIGTERM/SIGINT: refuses new jobs and waits until every running job has checkpointed and gone back
 * to the queue. The HTTP servers keep answering meanwhile (/readyz says "stopping", clients can
 * still follow their jobs); freeing anything is teardown()'s job, once nothing can reach it. */
static void shutdown_daemon(struct daemon *d, int sig) {
    atomic_store(&d->app.ready, false);
    atomic_store(&d->app.stopping, true);
    int busy = lorad_workers_busy(d->workers);
    if (busy) log_info("%s: stopping; %d running job%s will checkpoint and return to the queue", strsignal(sig), busy,
                       busy == 1 ? "" : "s");
    else log_info("%s: stopping", strsignal(sig));
    lorad_sd_notifyf("STOPPING=1\nSTATUS=stopping: checkpointing %d running jobs", busy);
    lorad_workers_request_stop(d->workers);
    uint64_t wd_usec = lorad_sd_watchdog_usec();
    while (lorad_workers_busy(d->workers) > 0) {
        /* A step in flight must end before its checkpoint; keep systemd from killing us meanwhile. */
        lorad_sd_notifyf("EXTEND_TIMEOUT_USEC=%llu", STOP_EXTEND_USEC);
        if (wd_usec) lorad_sd_notify("WATCHDOG=1");
        if (lorad_workers_wait(d->workers, 1000) == 0) break;
        int again = next_signal(d->sfd);
        if (again == SIGTERM || again == SIGINT) {
            log_warning("%s again: exiting without waiting for checkpoints; running jobs resume from their last "
                        "checkpoint at the next start", strsignal(again));
            fflush(stderr);
            _exit(LORAD_EXIT_FAILURE);
        }
    }
}

/* Frees what the daemon started, in the order that keeps every object alive while something can
 * still reach it: the HTTP servers first (their handlers check the API keys, wake the workers, read
 * their rates and use the store; stopping them returns only once every handler and SSE stream has
 * returned), then the key set, the inference service (the streams that used it have been closed
 * with their connections), the workers (they use the store), then the store. Any of them may not
 * have been started. */
static void teardown(struct daemon *d) {
    stop_servers(d);
    lorad_api_keys_free(d->keys); /* only the servers' handlers read them */
    d->keys = NULL;
    lorad_infer_free(d->infer); /* only the servers' handlers and streams use it, and they have ended */
    d->infer = NULL;
    d->app.infer = NULL;
    lorad_workers_free(d->workers);
    d->workers = NULL;
    lorad_store_close(d->store);
    d->store = NULL;
}

int lorad_cmd_serve(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--print-default-config") == 0) {
        lorad_config_write_defaults(stdout);
        return LORAD_EXIT_OK;
    }
    /* --check-config parses the configuration and flags, reports, and exits (like nginx -t). */
    bool check_only = false;
    int n = 0;
    for (int i = 0; i < argc; i++) {
        if (i > 0 && strcmp(argv[i], "--check-config") == 0) check_only = true;
        else argv[n++] = argv[i];
    }
    argc = n;
    static struct daemon dm; /* one per process; static so the big path buffers are off the stack */
    struct daemon *d = &dm;
    memset(d, 0, sizeof *d);
    d->argc = argc;
    d->argv = argv;
    d->sfd = -1;
    d->lock_fd = -1;
    struct lorad_error err = {0};
    lorad_config_defaults(&d->cfg);
    int r = lorad_config_from_args(&d->cfg, argc, argv, LORAD_DEFAULT_CONFIG, &err);
    /* The key file is configuration: a bad one stops the start (and --check-config) before the
     * state directory is touched, like a bad config line. */
    if (r == 0 && (r = lorad_mpirun_from_config(&d->cfg.distributed, &d->mpirun, &err)) >= 0) {
        d->distributed_on = r == 1;
        r = 0;
    }
    if (r == 0 && (r = resolve_cpus("http_cpus", d->cfg.http_cpus, &d->http_cpus, &err)) >= 0) {
        d->http_pinned = r == 1;
        r = 0;
    }
    if (r == 0 && (r = resolve_cpus("training_cpus", d->cfg.training_cpus, &d->training_cpus, &err)) >= 0) {
        d->training_pinned = r == 1;
        r = 0;
    }
    if (r == 0) r = lorad_api_keys_open(d->cfg.api_key_file, &d->keys, &err);
    if (r < 0) {
        fprintf(stderr, "lorad serve: %s\n", err.message);
        return LORAD_EXIT_USAGE;
    }
    if (check_only) {
        lorad_api_keys_free(d->keys);
        printf("configuration ok\n");
        return LORAD_EXIT_OK;
    }
    enum lorad_log_level level;
    if (lorad_log_level_parse(d->cfg.log_level, &level) == 0) lorad_log_set_level(level);

    if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        log_error("cannot set up signal handling: %s", strerror(errno));
        lorad_api_keys_free(d->keys);
        return LORAD_EXIT_FAILURE;
    }
    d->sfd = signal_pipe[0];
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct thread_plan plan;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    limit_malloc_arenas(cores);
    plan_threads(&d->cfg, cores, d->training_pinned ? CPU_COUNT(&d->training_cpus) : 0, &plan);
    int threads = plan.threads_per_job;
    int64_t memory_limit = d->cfg.memory_limit;
    if (memory_limit == 0 && (r = lorad_default_memory_limit(&memory_limit)) < 0) {
        log_warning("cannot read MemAvailable (%s): jobs are not limited by memory; set memory_limit", strerror(-r));
        memory_limit = 0;
    }
    char infer_desc[160] = "inference off";
    if (plan.inference_threads > 0)
        snprintf(infer_desc, sizeof infer_desc, "inference %d thread%s%s, %d generations at once", plan.inference_threads,
                 plan.inference_threads == 1 ? "" : "s", d->cfg.inference.threads == 0 ? " (cores / 4)" : "",
                 d->cfg.inference.max_concurrent_generations);
    log_info("lorad %s starting: state_dir %s, models_dir %s, %d worker%s x %d threads%s, %s, memory_limit %.2f GiB%s",
             LORAD_VERSION, d->cfg.state_dir, d->cfg.models_dir, d->cfg.workers, d->cfg.workers == 1 ? "" : "s",
             threads, plan.jobs_leave_inference ? " (what inference leaves of the cores)" : "", infer_desc,
             (double)memory_limit / (1 << 30), d->cfg.memory_limit == 0 ? " (80% of MemAvailable)" : "");
    log_info("matrix products: %s; instruction set %s (the CPU has %s)", lorad_gemm_kernel_description(),
             lorad_isa_name(lorad_isa_active()), lorad_isa_name(lorad_isa_detected()));

    int status = LORAD_EXIT_FAILURE;
    if (prepare_state(d) < 0 || open_store(d) < 0) goto out;
    d->app = (struct lorad_app){.store = d->store, .state_dir = d->cfg.state_dir, .models_dir = d->cfg.models_dir,
                                .files_dir = d->files_dir, .jobs_dir = d->jobs_dir,
                                .max_queued_jobs = d->cfg.max_queued_jobs, .max_threads_per_job = threads,
                                .memory_limit = memory_limit};
    atomic_init(&d->app.ready, false);
    atomic_init(&d->app.stopping, false);
    if ((r = lorad_api_handlers_install()) < 0) {
        log_error("cannot install the API handlers: %s", strerror(-r));
        goto out;
    }
    if ((r = lorad_api_service_attach(&d->app)) < 0) {
        log_error("cannot register the job gauges of /metrics: %s", strerror(-r));
        goto out;
    }
    if (plan.inference_threads > 0 && start_inference(d, plan.inference_threads) < 0) goto out;
    struct lorad_workers_options wo = {.store = d->store, .state_dir = d->cfg.state_dir,
                                       .models_dir = d->cfg.models_dir, .jobs_dir = d->jobs_dir,
                                       .workers = d->cfg.workers, .max_threads_per_job = threads,
                                       .memory_limit = memory_limit,
                                       .distributed = d->distributed_on ? &d->mpirun : NULL};
    if (d->distributed_on) {
        const struct lorad_mpirun *m = &d->mpirun;
        log_info("distributed: jobs run through %s on %s with %d rank(s) per host", m->mpirun,
                 m->hosts[0] ? m->hosts : m->hostfile[0] ? m->hostfile : "the hosts mpirun finds", m->ranks_per_host);
    }
    if ((r = start_pinned(d->training_pinned ? &d->training_cpus : NULL, "training_cpus",
                          "job workers and their compute threads", start_workers, d, &wo)) < 0)
        goto out;
    d->app.jobs_changed = lorad_workers_wake;
    d->app.jobs_changed_ctx = d->workers;
    d->app.job_live_rate = lorad_workers_live_rate;
    d->app.job_live_rate_ctx = d->workers;
    if (open_listeners(d) < 0 ||
        start_pinned(d->http_pinned ? &d->http_cpus : NULL, "http_cpus", "HTTP threads", start_servers, d, NULL) < 0)
        goto out;
    atomic_store(&d->app.ready, true);
    notify_status(d, true);
    lorad_sd_notifyf("READY=1\nSTATUS=%s", d->last_status);
    log_info("ready");

    int sig = run_loop(d);
    shutdown_daemon(d, sig);
    status = LORAD_EXIT_OK;
out:
    if (status != LORAD_EXIT_OK) lorad_sd_notify("STOPPING=1");
    teardown(d);
    if (status == LORAD_EXIT_OK) log_info("stopped");
    if (d->sfd >= 0) close(d->sfd);
    if (d->lock_fd >= 0) close(d->lock_fd);
    return status;
}
