#include "store_options.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"

const struct option store_long_options[] = {
    { "endpoint", required_argument, NULL, STORE_OPT_BASE + 0 },
    { "region", required_argument, NULL, STORE_OPT_BASE + 1 },
    { "profile", required_argument, NULL, STORE_OPT_BASE + 2 },
    { "credentials", required_argument, NULL, STORE_OPT_BASE + 3 },
    { "addressing", required_argument, NULL, STORE_OPT_BASE + 4 },
    { "timeout", required_argument, NULL, STORE_OPT_BASE + 5 },
    { "retries", required_argument, NULL, STORE_OPT_BASE + 6 },
    { NULL, 0, NULL, 0 },
};

const char store_options_usage[] =
    "  --endpoint URL          S3 endpoint (default $AWS_ENDPOINT_URL, else AWS)\n"
    "  --region REGION         default $AWS_REGION, else us-east-1\n"
    "  --profile NAME          credentials profile (default $AWS_PROFILE, else default)\n"
    "  --credentials FILE      credentials file (default ~/.aws/credentials)\n"
    "  --addressing path|virtual   bucket in the path or in the host name\n"
    "                          (default: path with --endpoint, else virtual)\n"
    "  --timeout SECS          give up on a request idle this long (default 30)\n"
    "  --retries N             retries of a failed request (default 5)\n";

/* A whole positive number within [lo, hi], or -EINVAL. */
static int parse_uint(const char *opt, const char *v, unsigned long lo, unsigned long hi,
                      unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-' || n < lo || n > hi)
        return err_set(-EINVAL, "--%s: '%s' is not a number from %lu to %lu", opt, v, lo, hi);
    *out = (unsigned)n;
    return 0;
}

int store_options_set(struct store_options *o, const char *name, const char *value)
{
    unsigned n = 0;
    int rc;
    if (strcmp(name, "endpoint") == 0) {
        o->endpoint = value;
    } else if (strcmp(name, "region") == 0) {
        o->region = value;
    } else if (strcmp(name, "profile") == 0) {
        o->profile = value;
    } else if (strcmp(name, "credentials") == 0) {
        o->credentials_file = value;
    } else if (strcmp(name, "addressing") == 0) {
        if (strcmp(value, "path") && strcmp(value, "virtual"))
            return err_set(-EINVAL, "--addressing: '%s' is neither path nor virtual", value);
        o->addressing = value[0] == 'p' ? STORE_ADDR_PATH : STORE_ADDR_VIRTUAL;
    } else if (strcmp(name, "timeout") == 0) {
        if ((rc = parse_uint(name, value, 1, 3600, &n)) != 0)
            return rc;
        o->timeout_ms = n * 1000;
    } else if (strcmp(name, "retries") == 0) {
        if ((rc = parse_uint(name, value, 0, 100, &n)) != 0)
            return rc;
        o->max_attempts = n + 1;
    } else {
        return 0;
    }
    return 1;
}
