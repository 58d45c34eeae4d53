/*
 * Errors travel as values: functions return 0 or a negative errno. The errno
 * says what kind of failure it was (callers branch on it); the thread's error
 * message says what exactly went wrong, in words a user can act on ("bucket
 * 'x' does not exist", not "ENXIO"). Whoever returns the negative errno first
 * sets the message; layers above may prefix context with err_wrap().
 */
#ifndef CKPT_UTIL_ERR_H
#define CKPT_UTIL_ERR_H

#include <stdarg.h>

/* Sets this thread's message and returns err (which must be negative), so a
 * failure reads as one line: return err_set(-ENOENT, "no key '%s'", key); */
int err_set(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefixes this thread's message with context ("get chunks/ab: ...") and
 * returns err unchanged. */
int err_wrap(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* This thread's last message; never NULL. Falls back to strerror(-err) when a
 * callee returned an errno without setting a message. */
const char *err_msg(int err);

/* Forgets this thread's message (so a later err_msg() cannot show a stale one). */
void err_clear(void);

#endif
