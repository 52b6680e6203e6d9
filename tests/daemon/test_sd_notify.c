/* sd_notify datagrams reach a real AF_UNIX socket, by path and abstract name; without
 * NOTIFY_SOCKET nothing is sent; LISTEN_FDS is honoured only for our pid. */
#include "testutil.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "sd_notify.h"

static int bind_socket(const char *name, bool abstract) {
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t len = strlen(name);
    memcpy(a.sun_path, name, len);
    if (abstract) a.sun_path[0] = '\0';
    assert_int_equal(bind(fd, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)), 0);
    return fd;
}

static void expect_datagram(int fd, const char *want) {
    char buf[512];
    ssize_t n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_string_equal(buf, want);
}

static void test_notify_path_and_abstract(void **state) {
    (void)state;
    char *dir = test_mkdtemp("notify");
    char *path = test_path(dir, "notify.sock");
    int fd = bind_socket(path, false);
    setenv("NOTIFY_SOCKET", path, 1);
    assert_int_equal(lorad_sd_notify("READY=1\nSTATUS=queue 0, running 0"), 1);
    expect_datagram(fd, "READY=1\nSTATUS=queue 0, running 0");
    assert_int_equal(lorad_sd_notifyf("STATUS=%d queued", 3), 1);
    expect_datagram(fd, "STATUS=3 queued");
    close(fd);

    char abstract[64];
    snprintf(abstract, sizeof abstract, "@lorad-test-%d", (int)getpid());
    fd = bind_socket(abstract, true);
    setenv("NOTIFY_SOCKET", abstract, 1);
    assert_int_equal(lorad_sd_notify("WATCHDOG=1"), 1);
    expect_datagram(fd, "WATCHDOG=1");
    close(fd);

    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(lorad_sd_notify("READY=1"), 0);
    free(path);
    test_rmtree(dir);
    free(dir);
}

static void test_listen_fds_and_watchdog(void **state) {
    (void)state;
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("LISTEN_FDS", "1", 1);
    setenv("LISTEN_PID", pid, 1);
    assert_int_equal(lorad_sd_listen_fds(), 1);
    setenv("LISTEN_PID", "1", 1); /* another process's fds are not ours */
    assert_int_equal(lorad_sd_listen_fds(), 0);
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    setenv("WATCHDOG_USEC", "30000000", 1);
    assert_true(lorad_sd_watchdog_usec() == 30000000);
    setenv("WATCHDOG_PID", "1", 1);
    assert_true(lorad_sd_watchdog_usec() == 0);
    unsetenv("WATCHDOG_PID");
    unsetenv("WATCHDOG_USEC");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_notify_path_and_abstract),
        cmocka_unit_test(test_listen_fds_and_watchdog),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
