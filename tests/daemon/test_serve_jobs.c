/* The real `lorad serve` process with jobs in its store: it trains a queued job; SIGTERM mid-run
 * makes the job checkpoint and go back to `queued` (with STOPPING=1 and EXTEND_TIMEOUT_USEC sent to
 * $NOTIFY_SOCKET) and the process exit 0; a SIGKILL mid-run leaves the job `running`, which the next
 * start's recovery requeues; and after both interruptions the job ends byte-identical to an
 * uninterrupted run of the engine, with every step's metrics row exactly once. Jobs left in
 * validating_files are settled at start (queued when their files passed, failed otherwise). The test process
 * reads the same SQLite file the daemon writes (a second, non-recovering handle). */
#include "jobs_fixture.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

struct daemon {
    pid_t pid;
    int notify_fd;
    char notify_path[256];
    char msgs[16384]; /* every datagram received, '|'-separated */
};

static void start_daemon(struct daemon *d) {
    memset(d, 0, sizeof *d);
    snprintf(d->notify_path, sizeof d->notify_path, "%s/notify", E.dir);
    unlink(d->notify_path);
    d->notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    assert_true(d->notify_fd >= 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", d->notify_path);
    assert_int_equal(bind(d->notify_fd, (struct sockaddr *)&a, sizeof a), 0);
    d->pid = fork();
    assert_true(d->pid >= 0);
    if (d->pid == 0) {
        setenv("NOTIFY_SOCKET", d->notify_path, 1);
        execl(LORAD_BINARY_DIR "/daemon/lorad", "lorad", "serve", "--port", "0", "--state-dir", E.state,
              "--models-dir", E.models, "--workers", "1", "--threads-per-job", "1", (char *)NULL);
        _exit(127);
    }
}

static void collect(struct daemon *d) {
    char buf[1024];
    ssize_t n;
    while ((n = recv(d->notify_fd, buf, sizeof buf - 1, 0)) > 0) {
        buf[n] = '\0';
        size_t used = strlen(d->msgs);
        snprintf(d->msgs + used, sizeof d->msgs - used, "%s|", buf);
    }
}

static void wait_notify(struct daemon *d, const char *what, double timeout_s) {
    double end = now_s() + timeout_s;
    for (collect(d); !strstr(d->msgs, what); collect(d)) {
        if (now_s() > end) fail_msg("no %s from the daemon; got: %s", what, d->msgs);
        usleep(5000);
    }
}

/* Returns the exit status after the process ended (fails the test after timeout_s). */
static int wait_exit(struct daemon *d, double timeout_s) {
    double end = now_s() + timeout_s;
    int st;
    while (waitpid(d->pid, &st, WNOHANG) == 0) {
        if (now_s() > end) {
            kill(d->pid, SIGKILL);
            waitpid(d->pid, &st, 0);
            fail_msg("the daemon did not exit within %.0f s", timeout_s);
        }
        usleep(5000);
    }
    collect(d);
    close(d->notify_fd);
    unlink(d->notify_path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void test_daemon_trains_stops_and_recovers(void **state) {
    (void)state;
    char file[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX];
    make_file(24, -1, 12, file);
    char *text = spec_text(JOBS_MODEL_ID, file, 30, 0, 40); /* 360 steps, a checkpoint every 40 */
    make_job(text, job);
    /* Jobs a previous process left validating their files: files are validated at upload, so one
     * whose file passed is queued (and runs after the first), one whose file failed fails. */
    char bad_file[LORAD_STORE_ID_MAX], waiting[LORAD_STORE_ID_MAX], doomed[LORAD_STORE_ID_MAX];
    make_file_status(24, 3, 12, "error", bad_file);
    char *t_waiting = spec_text(JOBS_MODEL_ID, file, 1, 0, 0);
    char *t_doomed = spec_text(JOBS_MODEL_ID, bad_file, 1, 0, 0);
    make_job_status(t_waiting, LORAD_JOB_VALIDATING_FILES, waiting);
    make_job_status(t_doomed, LORAD_JOB_VALIDATING_FILES, doomed);

    /* 1. A graceful stop in the middle of the run. */
    struct daemon d;
    start_daemon(&d);
    wait_notify(&d, "READY=1", 20);
    assert_int_equal(status_of(waiting), LORAD_JOB_QUEUED);
    assert_int_equal(status_of(doomed), LORAD_JOB_FAILED);
    json_t *dj = get_job(doomed);
    json_t *derr = json_object_get(dj, "error");
    assert_string_equal(json_string_value(json_object_get(derr, "code")), "invalid_training_data");
    assert_string_equal(json_string_value(json_object_get(derr, "param")), "training_file");
    json_decref(dj);
    wait_progress(job, 3, 30);
    assert_int_equal(kill(d.pid, SIGTERM), 0);
    assert_int_equal(wait_exit(&d, 30), 0);
    assert_non_null(strstr(d.msgs, "STOPPING=1"));
    assert_non_null(strstr(d.msgs, "EXTEND_TIMEOUT_USEC=")); /* a job was checkpointing */
    assert_int_equal(status_of(job), LORAD_JOB_QUEUED);
    int64_t stopped_at = progress_step(job), step = 0;
    assert_true(stopped_at >= 3 && stopped_at < 360);
    char *path = NULL;
    assert_int_equal(lorad_store_checkpoint_latest(E.store, job, NULL, &step, &path, NULL), 1);
    assert_int_equal(step, stopped_at);
    free(path);

    /* 2. A crash in the middle of the resumed run: the job is left `running` in the store. */
    start_daemon(&d);
    wait_notify(&d, "READY=1", 20);
    wait_progress(job, stopped_at + 50, 30);
    assert_int_equal(kill(d.pid, SIGKILL), 0);
    assert_int_equal(wait_exit(&d, 10), 128 + SIGKILL);
    assert_int_equal(status_of(job), LORAD_JOB_RUNNING);

    /* 3. Recovery requeues it; it resumes from its newest checkpoint and finishes. */
    start_daemon(&d);
    wait_notify(&d, "READY=1", 20);
    wait_status(job, LORAD_JOB_SUCCEEDED, 60);
    wait_status(waiting, LORAD_JOB_SUCCEEDED, 60);
    assert_int_equal(kill(d.pid, SIGTERM), 0);
    assert_int_equal(wait_exit(&d, 30), 0);

    assert_metrics_complete(job, 360);
    json_t *j = get_job(job);
    char want[256];
    snprintf(want, sizeof want, "ft:%s:lorad:%s", JOBS_MODEL_ID, job);
    assert_string_equal(json_string_value(json_object_get(j, "fine_tuned_model")), want);
    json_decref(j);
    size_t na, nb;
    void *a = job_adapter(job, &na), *b = reference_adapter(text, file, &nb);
    assert_same_bytes(a, na, b, nb);
    assert_metrics_complete(waiting, 12);
    free(text);
    free(t_waiting);
    free(t_doomed);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_daemon_trains_stops_and_recovers),
    };
    return cmocka_run_group_tests(tests, jobs_env_setup, jobs_env_teardown);
}
