/* CPU lists as the config writes them ("1", "0-3,8", the kernel's cpulist format), and pinning
 * the threads a daemon part starts to one.
 *
 * Why: on a small host the HTTP threads and a load generator take CPU from a training job
 * whenever the scheduler shares the cores fairly. http_cpus / training_cpus (config.c) let the
 * operator give the job cores of its own, as Redis's server_cpulist does for its threads. */
#pragma once
#include <sched.h>
#include <stddef.h>

/* Parses TEXT: comma-separated items, each a CPU number or an inclusive range LO-HI (LO <= HI),
 * every number below CPU_SETSIZE; spaces around items are allowed. Returns 0 and *ret_set (the
 * union), -EINVAL for a malformed list (empty included), -ERANGE for a number too large. */
int lorad_cpulist_parse(const char *text, cpu_set_t *ret_set);

/* Writes SET in the same format, ranges collapsed ("0-3,8"), into buf (always terminated). */
void lorad_cpulist_format(const cpu_set_t *set, char *buf, size_t size);

/* Sets the calling thread's CPUs to SET; threads it starts afterwards inherit them. With
 * ret_old, the previous set is saved there first so the caller can put it back. Returns 0 or
 * -errno (-EINVAL: SET has no CPU this process may run on). */
int lorad_cpulist_pin_self(const cpu_set_t *set, cpu_set_t *ret_old);
