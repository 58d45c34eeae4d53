/*
 * Clocks as this code base uses them: nanoseconds since the epoch (times
 * people and object stores see), monotonic nanoseconds (intervals), and
 * deadlines for pthread_cond_timedwait, whose condition variables run on
 * CLOCK_REALTIME.
 */
#ifndef CKPT_UTIL_CLOCK_H
#define CKPT_UTIL_CLOCK_H

#include <stdint.h>
#include <time.h>

int64_t clock_realtime_ns(void);
int64_t clock_monotonic_ns(void);

/* CLOCK_REALTIME ms milliseconds from now. */
struct timespec clock_deadline_ms(int64_t ms);

#endif
