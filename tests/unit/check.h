/*
 * The unit tests' assertions: a failed check prints where and what, and the
 * test program exits non-zero at the end (every check still runs, so one
 * run shows every failure).
 */
#ifndef CKPT_TESTS_CHECK_H
#define CKPT_TESTS_CHECK_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int check_failures;

/* CHECK(cond) or CHECK(cond, "format", args...) to say more when it fails. */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s", __FILE__, __LINE__, #cond);                 \
            check_note(" " __VA_ARGS__);                                                           \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

static inline void check_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void check_note(const char *fmt, ...)
{
    va_list ap;
    if (fmt[1]) { /* fmt is " " followed by the caller's format, if any */
        fputc(':', stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
    }
    fputc('\n', stderr);
}

/* Compares two integers and prints both when they differ. */
#define CHECK_EQ(a, b)                                                                             \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_) {                                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n", __FILE__, __LINE__,  \
                    #a, #b, a_, b_);                                                               \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

/* Compares two strings and prints both when they differ. */
#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                                   \
            fprintf(stderr,                                                                        \
                    "%s:%d: CHECK failed: %s == %s\n  got:      \"%s\"\n  expected: \"%s\"\n",     \
                    __FILE__, __LINE__, #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");           \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

/* Ends main(): a summary line and the exit status. */
static inline int check_done(const char *name)
{
    if (check_failures)
        fprintf(stderr, "%s: %d check(s) failed\n", name, check_failures);
    else
        printf("%s: all checks passed\n", name);
    return check_failures ? 1 : 0;
}

#endif
