/* The worker pool's timed waits must not depend on the wall clock (issue 13): a step of the system
 * clock (NTP, an administrator, a VM resumed) must neither make an idle worker sleep far past its
 * poll interval nor make it spin, and lorad_workers_wait() must wait as long as it was asked.
 *
 * A step of CLOCK_REALTIME between the moment a deadline is computed and the moment the kernel
 * compares it is what breaks a wall-clock deadline. This test makes that happen on every wait:
 * it defines clock_gettime() in the test executable, so every call of the process (the pool's
 * included; the executable's definition comes first in symbol lookup) sees CLOCK_REALTIME shifted
 * by `realtime_skew_s`, while the kernel's futex keeps comparing against the real clock. Skew
 * +3600 is the clock stepped back an hour after the deadline was taken (the wait would last an
 * hour), -3600 stepped forward (every deadline is already past: the wait returns at once). Other
 * clocks pass through untouched. The pool, the store, the jobs and the model are the real ones
 * (jobs_fixture). */
#include "testutil.h"

#include <stdbool.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "jobs_fixture.h"
#include "workers.h"

static volatile long realtime_skew_s;

int clock_gettime(clockid_t clk, struct timespec *ts) {
    /* The raw system call: this definition replaces libc's for the whole process. */
    long r = syscall(SYS_clock_gettime, clk, ts);
    if (r == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) ts->tv_sec += realtime_skew_s;
    return (int)r;
}

static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A job that runs far longer than any test here (10000 steps). */
static void make_long_job(char job[LORAD_STORE_ID_MAX]) {
    char file[LORAD_STORE_ID_MAX];
    make_file(20, -1, 12, file);
    char *text = spec_text(JOBS_MODEL_ID, file, 1000, 0, 0);
    make_job(text, job);
    free(text);
}

/* A queued job nobody announced (no lorad_workers_wake) is the idle worker's poll to find: within
 * its 50 ms poll interval, not after the wall-clock jump. */
static void check_poll_finds_unannounced_job(char job[LORAD_STORE_ID_MAX]) {
    usleep(300000); /* the worker found the queue empty and is waiting */
    make_long_job(job);
    double t0 = now_s();
    while (status_of(job) == LORAD_JOB_QUEUED) {
        if (now_s() - t0 > 5)
            fail_msg("an idle worker polling every 50 ms did not claim a queued job within 5 s (REALTIME skew %+ld s)",
                     (long)realtime_skew_s);
        usleep(5000);
    }
}

/* lorad_workers_wait with a job running returns after its timeout: neither at once nor when the
 * job ends. */
static void check_wait_lasts_its_timeout(struct lorad_workers *pool) {
    double t0 = now_s();
    int busy = lorad_workers_wait(pool, 400);
    double took = now_s() - t0;
    assert_int_equal(busy, 1);
    if (took < 0.35 || took > 3)
        fail_msg("lorad_workers_wait(400 ms) with a job running returned after %.3f s (REALTIME skew %+ld s)", took,
                 (long)realtime_skew_s);
}

/* An idle pool costs next to no CPU: a 50 ms poll is a store query twenty times a second. A
 * deadline that is always past makes the worker query the store back to back on a whole core. */
static void check_idle_pool_does_not_spin(void) {
    double c0 = cpu_s(), t0 = now_s();
    usleep(1000000);
    double cpu = cpu_s() - c0, wall = now_s() - t0;
    if (cpu > 0.25 * wall)
        fail_msg("an idle pool used %.2f s of CPU in %.2f s (REALTIME skew %+ld s): it spins", cpu, wall,
                 (long)realtime_skew_s);
}

static void run_with_skew(long skew_s) {
    realtime_skew_s = skew_s;
    struct lorad_workers *pool = start_pool(1);
    check_idle_pool_does_not_spin();
    char job[LORAD_STORE_ID_MAX];
    check_poll_finds_unannounced_job(job);
    check_wait_lasts_its_timeout(pool);
    /* The shutdown still hands the job back to the queue. */
    lorad_workers_request_stop(pool);
    assert_int_equal(lorad_workers_wait(pool, 30000), 0);
    lorad_workers_free(pool);
    assert_int_equal(status_of(job), LORAD_JOB_QUEUED);
    /* Leave nothing for the next test's pool to claim. */
    json_t *cancelled = NULL;
    assert_int_equal(lorad_store_job_cancel(E.store, job, &cancelled, NULL), 0);
    json_decref(cancelled);
    realtime_skew_s = 0;
}

static void test_wall_clock_unchanged(void **state) {
    (void)state;
    run_with_skew(0);
}

static void test_wall_clock_stepped_back(void **state) {
    (void)state;
    run_with_skew(3600);
}

static void test_wall_clock_stepped_forward(void **state) {
    (void)state;
    run_with_skew(-3600);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wall_clock_unchanged),
        cmocka_unit_test(test_wall_clock_stepped_back),
        cmocka_unit_test(test_wall_clock_stepped_forward),
    };
    return cmocka_run_group_tests(tests, jobs_env_setup, jobs_env_teardown);
}
