#include "err.h"

#include <stdio.h>
#include <string.h>

static __thread char msg[1024];
static __thread int msg_err;

static int vset(int err, const char *tail, const char *fmt, va_list ap)
{
    char tmp[sizeof msg];
    /* A message cut at the buffer's end is still the right message. */
    if (vsnprintf(tmp, sizeof tmp, fmt, ap) < 0)
        tmp[0] = '\0';
    if (snprintf(msg, sizeof msg, "%s%s%s", tmp, tail ? ": " : "", tail ? tail : "") < 0)
        msg[0] = '\0';
    msg_err = err;
    return err;
}

int err_set(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vset(err, NULL, fmt, ap);
    va_end(ap);
    return err;
}

int err_wrap(int err, const char *fmt, ...)
{
    char old[sizeof msg];
    va_list ap;
    snprintf(old, sizeof old, "%s", err_msg(err));
    va_start(ap, fmt);
    vset(err, old, fmt, ap);
    va_end(ap);
    return err;
}

const char *err_msg(int err)
{
    if (msg[0] == '\0' || (err != 0 && msg_err != err))
        return strerror(err < 0 ? -err : err);
    return msg;
}

void err_clear(void)
{
    msg[0] = '\0';
    msg_err = 0;
}
