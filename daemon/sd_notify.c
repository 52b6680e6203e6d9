#include "sd_notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int lorad_sd_notify(const char *state) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return 0;
    size_t len = strlen(path);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof addr.sun_path) return -EINVAL;
    memcpy(addr.sun_path, path, len);
    if (path[0] == '@') addr.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    ssize_t n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&addr, alen);
    int r = n < 0 ? -errno : 1;
    close(fd);
    return r;
}

int lorad_sd_notifyf(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return lorad_sd_notify(buf);
}

static int env_pid_is_us(const char *name) {
    const char *v = getenv(name);
    if (!v) return -1;
    return strtol(v, NULL, 10) == (long)getpid();
}

uint64_t lorad_sd_watchdog_usec(void) {
    const char *v = getenv("WATCHDOG_USEC");
    if (!v) return 0;
    if (env_pid_is_us("WATCHDOG_PID") == 0) return 0;
    char *end;
    unsigned long long usec = strtoull(v, &end, 10);
    return *end ? 0 : (uint64_t)usec;
}

int lorad_sd_listen_fds(void) {
    if (env_pid_is_us("LISTEN_PID") != 1) return 0;
    const char *v = getenv("LISTEN_FDS");
    if (!v) return 0;
    long n = strtol(v, NULL, 10);
    return n > 0 && n < 64 ? (int)n : 0;
}
