/* The systemd notification protocol (sd_notify(3)), written out so lorad needs no libsystemd:
 * a datagram of "KEY=VALUE\n" lines to the AF_UNIX socket named by $NOTIFY_SOCKET (an abstract
 * socket when it starts with '@'). Without $NOTIFY_SOCKET every call is a no-op returning 0. */
#pragma once
#include <stdint.h>

/* Sends state (e.g. "READY=1\nSTATUS=ready"). Returns 1 if sent, 0 if not under systemd, -errno. */
int lorad_sd_notify(const char *state);
/* printf-style convenience. */
int lorad_sd_notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The watchdog interval in microseconds from $WATCHDOG_USEC (when $WATCHDOG_PID is unset or ours),
 * or 0 when no watchdog is configured. */
uint64_t lorad_sd_watchdog_usec(void);

/* Listening sockets passed by socket activation ($LISTEN_FDS for our $LISTEN_PID): returns how many
 * (they start at fd 3), or 0. */
int lorad_sd_listen_fds(void);
