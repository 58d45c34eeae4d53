#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *prog = "ckpt";
static enum log_level threshold = LOG_WARN;
static const char *const names[] = { "debug", "info", "warning", "error" };

void log_init(const char *program, enum log_level level)
{
    prog = program;
    threshold = level;
    const char *env = getenv("CKPT_LOG");
    if (!env)
        return;
    for (int i = LOG_DEBUG; i <= LOG_ERROR; i++)
        if (strncmp(env, names[i], strlen(env)) == 0 && env[0])
            threshold = (enum log_level)i;
}

int log_enabled(enum log_level level)
{
    return level >= threshold;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* One fprintf per line so lines from different threads do not interleave. */
    fprintf(stderr, "%s: %s: %s\n", prog, names[level], line);
}
