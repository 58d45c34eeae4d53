/*
 * ckptpipe: runs a SQL program (sql.h) over its input files, writing its
 * views' changes, step by step (pipeline.h), with checkpoints in its storage
 * directory (checkpoint.h) as --ft asks.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/http.h"
#include "engine/pipeline.h"
#include "util/clock.h"
#include "util/err.h"
#include "util/log.h"

#define IDLE_MS       20 /* how long a step without input waits before looking again */
#define DEFAULT_BATCH 100000
#define MAX_BACKOFF_S 30 /* --supervise: the longest wait before a restart */

static const char usage_text[] =
    "usage: ckptpipe run PROGRAM.sql --storage DIR [OPTIONS]\n"
    "  --storage DIR               where the pipeline keeps its checkpoints (created if missing)\n"
    "  --http 127.0.0.1:PORT       the HTTP API: /status, /checkpoint, /stop, /ingress/TABLE,\n"
    "                              /views/VIEW, /metrics\n"
    "  --ft MODE                   fault tolerance: none (the default); checkpoint (a checkpoint\n"
    "                              on SIGTERM, resumed at the next start); at_least_once\n"
    "                              (checkpoints every --checkpoint-interval too: after a crash\n"
    "                              the next start resumes from the last one); exactly_once\n"
    "                              (and a journal of every step, made durable before its\n"
    "                              output: a restart replays it and writes each change once)\n"
    "  --checkpoint-interval SECS  the period of at_least_once's and exactly_once's\n"
    "                              checkpoints, 1 to 3600 (default 60)\n"
    "  --standby                   --storage is a ckptfs --follow mount: load each newer\n"
    "                              checkpoint as it comes, process and write nothing, until\n"
    "                              POST /activate (after ckptctl promote on the mount)\n"
    "  --start-from latest|ID      the checkpoint to resume from (default latest)\n"
    "  --fail-if-no-checkpoint     refuse to start without one (default: read the inputs\n"
    "                              from their beginning)\n"
    "  --max-batch N               input changes per input in one step, at most (100000)\n"
    "  --exit-when-done            exit once every input file has been read to its end\n"
    "                              (default: follow them as they grow, until SIGTERM)\n"
    "  --supervise                 run the pipeline in a child process and start it again,\n"
    "                              from its last checkpoint, whenever it dies of a signal\n"
    "  -h, --help  --version\n";

static volatile sig_atomic_t stopping;
static volatile pid_t worker;   /* --supervise: the pipeline's process */
static volatile int *activated; /* --supervise --standby: shared, set once a worker activates */

static void on_signal(int sig)
{
    stopping = 1;
    if (worker > 0) /* the supervisor passes a stop on */
        kill(worker, sig);
}

static void catch_stops(void)
{
    struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_RESTART };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

/* Stops held back (set) or let through again, so that the worker's pid and
 * the handler that signals it never disagree. */
static void hold_stops(int hold)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGTERM);
    sigaddset(&s, SIGINT);
    sigprocmask(hold ? SIG_BLOCK : SIG_UNBLOCK, &s, NULL);
}

struct run_options {
    const char *program, *http;
    struct pipeline_options p;
    int exit_when_done, supervise;
    size_t batch;
    unsigned interval_s;
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

/* A whole number from lo to hi, or -1. */
static long number(const char *v, long lo, long hi)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    return !*v || *end || errno || n < lo || n > hi ? -1 : n;
}

static int parse_ft(const char *v, enum ft *out)
{
    static const char *const modes[] = { "none", "checkpoint", "at_least_once", "exactly_once" };
    for (int i = 0; i < 4; i++)
        if (!strcmp(v, modes[i])) {
            *out = (enum ft)i;
            return 0;
        }
    return fail("--ft: '%s' is none, checkpoint, at_least_once or exactly_once", v);
}

/* One option; 0, or 1 after saying what is wrong. */
static int option(struct run_options *o, int c, const char *v)
{
    long n;
    switch (c) {
    case 's':
        o->p.storage = v;
        return 0;
    case 'H':
        o->http = v;
        return 0;
    case 'f':
        return parse_ft(v, &o->p.ft);
    case 'S':
        o->p.start_from = strcmp(v, "latest") ? v : NULL;
        return 0;
    case 'F':
        o->p.fail_if_none = 1;
        return 0;
    case 'x':
        o->exit_when_done = 1;
        return 0;
    case 'V':
        o->supervise = 1;
        return 0;
    case 'y':
        o->p.standby = 1;
        return 0;
    case 'i':
        if ((n = number(v, 1, 3600)) < 0)
            return fail("--checkpoint-interval: '%s' is not 1 to 3600 seconds", v);
        o->interval_s = (unsigned)n;
        return 0;
    default: /* 'b' */
        if ((n = number(v, 1, 100000000)) < 0)
            return fail("--max-batch: '%s' is not a number from 1 to 100000000", v);
        o->batch = (size_t)n;
        return 0;
    }
}

/* 0 to run, -1 after --help, else the exit status of bad usage. */
static int parse_run(int argc, char **argv, struct run_options *o)
{
    static const struct option opts[] = {
        { "storage", required_argument, NULL, 's' },
        { "http", required_argument, NULL, 'H' },
        { "ft", required_argument, NULL, 'f' },
        { "checkpoint-interval", required_argument, NULL, 'i' },
        { "start-from", required_argument, NULL, 'S' },
        { "fail-if-no-checkpoint", no_argument, NULL, 'F' },
        { "max-batch", required_argument, NULL, 'b' },
        { "exit-when-done", no_argument, NULL, 'x' },
        { "supervise", no_argument, NULL, 'V' },
        { "standby", no_argument, NULL, 'y' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (c == 'h')
            return printf("%s", usage_text), -1;
        if (c == ':')
            return fail("option %s needs a value", argv[optind - 1]) + 1;
        if (c == '?')
            return fail("unknown option %s", argv[optind - 1]) + 1;
        if (option(o, c, optarg))
            return 2;
    }
    if (argc - optind != 1)
        return fail("run takes one PROGRAM.sql") + 1;
    o->program = argv[optind];
    if (!o->p.storage)
        return fail("--storage DIR is required") + 1;
    if (o->supervise && o->p.ft == FT_NONE)
        return fail("--supervise restarts from checkpoints: give --ft checkpoint, "
                    "at_least_once or exactly_once") +
               1;
    if (o->p.standby && (o->p.ft == FT_NONE || !o->http))
        return fail("--standby loads checkpoints and waits for POST /activate: give --ft "
                    "and --http") +
               1;
    return 0;
}

static void pause_ms(long ms)
{
    struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&t, NULL);
}

/* A checkpoint, said in the log (operators and tests read it). */
static int checkpoint(struct pipeline *p)
{
    char id[32];
    uint64_t bytes = 0;
    int64_t t0 = clock_monotonic_ns();
    int rc = pipeline_checkpoint(p, id, sizeof id, &bytes);
    if (rc == 0)
        log_info("checkpoint %s committed: %llu bytes of state in %.3f s", id,
                 (unsigned long long)bytes, (double)(clock_monotonic_ns() - t0) / 1e9);
    return rc;
}

/* The HTTP API's requests run between steps: the loop holds this during one. */
static pthread_mutex_t pipeline_lock = PTHREAD_MUTEX_INITIALIZER;

#define STANDBY_POLL_MS 500 /* how often a standby looks for a newer checkpoint */

/* A standby's turn: a newer checkpoint loaded if there is one. Always 0
 * (no input): an error reading one is said, and the next turn tries again. */
static int standby_turn(struct pipeline *p, int64_t *next)
{
    struct pipeline_stats st;
    if (clock_monotonic_ns() < *next)
        return 0;
    int rc = pipeline_standby_poll(p);
    pipeline_get_stats(p, &st);
    if (rc > 0)
        log_info("standby: loaded checkpoint %s (step %llu)", st.resumed_from,
                 (unsigned long long)st.step);
    if (rc < 0)
        log_warn("standby: %s", err_msg(rc));
    *next = clock_monotonic_ns() + (int64_t)STANDBY_POLL_MS * 1000000;
    return 0;
}

/* One step, and the periodic checkpoint when due: 1, 0 (no input) or an error. */
static int step(const struct run_options *o, struct pipeline *p, int64_t *next)
{
    int64_t period = (int64_t)o->interval_s * 1000000000;
    struct pipeline_stats st;
    pthread_mutex_lock(&pipeline_lock);
    pipeline_get_stats(p, &st);
    if (st.standby) {
        int rc = standby_turn(p, next);
        pthread_mutex_unlock(&pipeline_lock);
        return rc;
    }
    if (activated) /* a worker started again after a crash starts active */
        *activated = 1;
    int rc = pipeline_step(p, o->batch);
    if (rc >= 0 && o->p.ft >= FT_AT_LEAST_ONCE && clock_monotonic_ns() >= *next) {
        int saved = checkpoint(p);
        rc = saved ? saved : rc;
        *next = clock_monotonic_ns() + period;
    }
    pthread_mutex_unlock(&pipeline_lock);
    return rc;
}

/* Steps until a stop (a signal, POST /stop, the end of the inputs), then,
 * with fault tolerance, a checkpoint of everything done unless there is one. */
static int loop(const struct run_options *o, struct pipeline *p)
{
    int64_t next = clock_monotonic_ns() + (int64_t)o->interval_s * 1000000000;
    struct pipeline_stats st;
    while (!stopping) {
        int rc = step(o, p, &next);
        if (rc < 0)
            return rc;
        if (rc == 0 && o->exit_when_done && pipeline_inputs_done(p))
            break;
        if (rc == 0)
            pause_ms(IDLE_MS);
    }
    pthread_mutex_lock(&pipeline_lock);
    pipeline_get_stats(p, &st);
    int rc = st.standby ? 0 : pipeline_drain(p, o->batch); /* what /ingress accepted is not lost */
    pipeline_get_stats(p, &st);
    if (rc == 0 && o->p.ft != FT_NONE && !st.standby &&
        !(st.checkpoints && st.checkpoint_step == st.step))
        rc = checkpoint(p);
    pthread_mutex_unlock(&pipeline_lock);
    return rc;
}

static int run(const struct run_options *o)
{
    struct pipeline *p = NULL;
    struct pipeline_stats st;
    catch_stops();
    int rc = pipeline_open(o->program, &o->p, &p);
    if (rc)
        return fail("%s", err_msg(rc));
    pipeline_get_stats(p, &st);
    if (st.standby)
        log_info("standby: %s%s", st.resumed_from[0] ? "loaded checkpoint " : "no checkpoint yet",
                 st.resumed_from);
    else if (st.resumed_from[0])
        log_info("resumed from checkpoint %s at step %llu (%llu replayed from the journal)",
                 st.resumed_from, (unsigned long long)st.step, (unsigned long long)st.replayed);
    else
        log_info("running from the beginning of the inputs (%llu steps replayed from the journal)",
                 (unsigned long long)st.replayed);
    struct http *api = NULL;
    struct http_context ctx = { p, &pipeline_lock, &stopping, o->p.ft };
    if (o->http && (rc = http_start(o->http, &ctx, &api)) != 0) {
        pipeline_close(p);
        return fail("%s", err_msg(rc));
    }
    rc = loop(o, p);
    http_stop(api);
    pipeline_get_stats(p, &st);
    pipeline_close(p);
    if (rc < 0)
        return fail("%s", err_msg(rc));
    log_info("stopped after step %llu: %llu records, %llu skipped", (unsigned long long)st.step,
             (unsigned long long)st.records, (unsigned long long)st.skipped);
    return 0;
}

/* Sleeps up to secs, less if a stop comes. */
static void wait_or_stop(unsigned secs)
{
    for (unsigned i = 0; i < secs * 10 && !stopping; i++)
        pause_ms(100);
}

/* --supervise: the pipeline runs in a child; a child killed by a signal
 * (a crash, the OOM killer, kill -9) is started again, after a pause that
 * doubles while it keeps dying young. An exit with a status is not: an error
 * (bad input, a damaged checkpoint) would only come back. */
static int supervise(const struct run_options *given)
{
    unsigned backoff = 1;
    struct run_options now = *given, *o = &now;
    activated =
        mmap(NULL, sizeof *activated, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (activated == MAP_FAILED)
        return fail("cannot share memory with the pipeline's process: %s", strerror(errno));
    catch_stops();
    for (;;) {
        if (*activated)
            now.p.standby = 0;
        int64_t born = clock_monotonic_ns();
        hold_stops(1);
        pid_t child = fork();
        if (child < 0)
            return fail("cannot start the pipeline's process: %s", strerror(errno));
        if (child == 0) {
            worker = 0;
            hold_stops(0);
            _exit(run(o));
        }
        worker = child;
        if (stopping) /* a stop that came before the worker was known */
            kill(child, SIGTERM);
        hold_stops(0);
        int status;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR)
            ;
        hold_stops(1);
        worker = 0;
        hold_stops(0);
        if (WIFEXITED(status))
            return WEXITSTATUS(status);
        if (stopping)
            return 1;
        if (clock_monotonic_ns() - born > (int64_t)60 * 1000000000)
            backoff = 1;
        log_warn("the pipeline died of signal %d; starting it again from its last checkpoint "
                 "in %u s",
                 WTERMSIG(status), backoff);
        wait_or_stop(backoff);
        if (stopping)
            return 0;
        backoff = backoff * 2 > MAX_BACKOFF_S ? MAX_BACKOFF_S : backoff * 2;
    }
}

int main(int argc, char **argv)
{
    log_init("ckptpipe", getenv("CKPTPIPE_VERBOSE") ? LOG_INFO : LOG_WARN);
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")))
        return printf("%s", usage_text), 0;
    if (argc >= 2 && !strcmp(argv[1], "--version"))
        return puts("ckptpipe " CKPT_VERSION), 0;
    if (argc < 2 || strcmp(argv[1], "run"))
        return fail("expected 'run'; try 'ckptpipe --help'") + 1;
    struct run_options o = { .batch = DEFAULT_BATCH, .interval_s = 60 };
    int rc = parse_run(argc - 1, argv + 1, &o);
    if (rc)
        return rc < 0 ? 0 : rc;
    return o.supervise ? supervise(&o) : run(&o);
}
