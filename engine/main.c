/*
 * ckptpipe: runs a SQL program (sql.h) over its input files, writing its
 * views' changes, step by step (pipeline.h).
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine/pipeline.h"
#include "util/err.h"
#include "util/log.h"

#define IDLE_MS       20 /* how long a step without input waits before looking again */
#define DEFAULT_BATCH 100000

static const char usage_text[] =
    "usage: ckptpipe run PROGRAM.sql --storage DIR [OPTIONS]\n"
    "  --storage DIR            where the pipeline keeps its state (created if missing)\n"
    "  --ft none                fault tolerance: none (the default; checkpoint,\n"
    "                           at_least_once and exactly_once are not built yet)\n"
    "  --max-batch N            input changes per input in one step, at most (100000)\n"
    "  --exit-when-done         exit once every input file has been read to its end\n"
    "                           (default: follow them as they grow, until SIGTERM)\n"
    "  -h, --help  --version\n";

static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

struct run_options {
    const char *program, *storage, *ft;
    int exit_when_done;
    size_t batch;
};

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("ckptpipe: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

static int parse_run(int argc, char **argv, struct run_options *o)
{
    static const struct option opts[] = {
        { "storage", required_argument, NULL, 's' },  { "ft", required_argument, NULL, 'f' },
        { "exit-when-done", no_argument, NULL, 'x' }, { "max-batch", required_argument, NULL, 'b' },
        { "help", no_argument, NULL, 'h' },           { 0 },
    };
    int c;
    char *end;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (c == 's')
            o->storage = optarg;
        else if (c == 'f')
            o->ft = optarg;
        else if (c == 'x')
            o->exit_when_done = 1;
        else if (c == 'b' && (o->batch = strtoul(optarg, &end, 10)) && !*end && optarg[0] != '-')
            continue;
        else if (c == 'b')
            return fail("--max-batch: '%s' is not a positive number", optarg) + 1;
        else if (c == 'h')
            return printf("%s", usage_text), -1;
        else if (c == ':')
            return fail("option %s needs a value", argv[optind - 1]) + 1;
        else
            return fail("unknown option %s", argv[optind - 1]) + 1;
    }
    if (argc - optind != 1)
        return fail("run takes one PROGRAM.sql") + 1;
    o->program = argv[optind];
    if (!o->storage)
        return fail("--storage DIR is required") + 1;
    if (strcmp(o->ft, "none"))
        return fail("--ft %s: not built yet (only none is)", o->ft) + 1;
    return 0;
}

static void pause_ms(long ms)
{
    struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&t, NULL);
}

static int run(const struct run_options *o)
{
    struct pipeline *p = NULL;
    if (mkdir(o->storage, 0755) && errno != EEXIST)
        return fail("--storage %s: %s", o->storage, strerror(errno));
    int rc = pipeline_open(o->program, &p);
    if (rc)
        return fail("%s", err_msg(rc));
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    while (!stopping) {
        rc = pipeline_step(p, o->batch);
        if (rc < 0)
            break;
        if (rc == 0 && o->exit_when_done && pipeline_inputs_done(p))
            break;
        if (rc == 0)
            pause_ms(IDLE_MS);
    }
    struct pipeline_stats st;
    pipeline_get_stats(p, &st);
    pipeline_close(p);
    if (rc < 0)
        return fail("%s", err_msg(rc));
    log_info("stopped after step %llu: %llu records, %llu skipped", (unsigned long long)st.step,
             (unsigned long long)st.records, (unsigned long long)st.skipped);
    return 0;
}

int main(int argc, char **argv)
{
    log_init("ckptpipe", LOG_WARN);
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")))
        return printf("%s", usage_text), 0;
    if (argc >= 2 && !strcmp(argv[1], "--version"))
        return puts("ckptpipe " CKPT_VERSION), 0;
    if (argc < 2 || strcmp(argv[1], "run"))
        return fail("expected 'run'; try 'ckptpipe --help'") + 1;
    struct run_options o = { .ft = "none", .batch = DEFAULT_BATCH };
    int rc = parse_run(argc - 1, argv + 1, &o);
    if (rc)
        return rc < 0 ? 0 : 2;
    return run(&o);
}
