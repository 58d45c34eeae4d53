/*
 * ckptctl: inspect and operate ckptfs buckets and mounts without the engine.
 */
#include "ckptctl.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cache/store_options.h"
#include "util/err.h"
#include "util/log.h"

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
};

static const struct command commands[] = {
    { "store", cmd_store, "use the object store by hand: put, get, ls, rm, head, probe" },
    { "sync", cmd_sync, "publish a snapshot of a mount now; return once it is in the bucket" },
    { "status", cmd_status, "what a mount has not uploaded, its last snapshot and error" },
    { "warm", cmd_warm, "fetch a subtree of a mount into its disk cache" },
    { "promote", cmd_promote, "make a follower mount (--follow) its bucket's writer" },
    { "snapshots", cmd_snapshots, "list a bucket's snapshots: ID, epoch, time, files, bytes" },
    { "verify", cmd_verify, "check that every chunk a bucket's snapshots name is there and sound" },
    { "pull", cmd_pull, "restore a snapshot of a bucket into a plain directory" },
    { "gc", cmd_gc, "delete expired snapshots and the chunks no snapshot names" },
};

static void usage(FILE *f)
{
    fprintf(f, "usage: ckptctl COMMAND [ARGS...]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'ckptctl COMMAND --help' describes a command.\n"
               "Exit status: 0 success, 1 failure, 2 bad usage.\n");
}

static void vprint(const char *prefix, const char *fmt, va_list ap)
{
    char line[2048];
    vsnprintf(line, sizeof line, fmt, ap);
    fprintf(stderr, "ckptctl: %s%s\n", prefix, line);
}

int ctl_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprint("error: ", fmt, ap);
    va_end(ap);
    return EXIT_FAIL;
}

int ctl_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprint("", fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try 'ckptctl --help'.\n");
    return EXIT_USAGE;
}

int ctl_parse(int argc, char **argv, const struct option *own, struct store_options *opt,
              int (*on)(void *arg, int val, const char *value), void *arg)
{
    struct option all[64];
    size_t n = 0;
    for (; own[n].name && n < 32; n++)
        all[n] = own[n];
    for (const struct option *o = store_long_options; o->name && n < 63; o++)
        all[n++] = *o;
    all[n] = (struct option){ 0 };
    int c, idx;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", all, &idx)) != -1) {
        if (c == '?')
            return EXIT_USAGE;
        if (c >= STORE_OPT_BASE && store_options_set(opt, all[idx].name, optarg) < 0)
            return ctl_usage_error("%s", err_msg(-EINVAL));
        if (c < STORE_OPT_BASE && on(arg, c, optarg))
            return EXIT_USAGE;
    }
    return EXIT_OK;
}

int main(int argc, char **argv)
{
    log_init("ckptctl", LOG_WARN);
    /* A closed pipe or connection is an error to report, not a reason to die mid-upload. */
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2)
        return usage(stderr), EXIT_USAGE;
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
        return usage(stdout), EXIT_OK;
    if (strcmp(argv[1], "--version") == 0)
        return puts("ckptctl " CKPT_VERSION), EXIT_OK;
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    return ctl_usage_error("unknown command '%s'", argv[1]);
}
