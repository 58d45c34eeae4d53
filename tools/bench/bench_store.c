/*
 * Store throughput: N objects of SIZE bytes put, then got, with JOBS in
 * flight, through the same store stack ckptfs uses.
 *
 *   bench_store URL [--objects N] [--size BYTES] [--jobs J] [--json] [store options]
 *
 * Prints MB/s (10^6 bytes per second) and the process's CPU seconds per
 * phase. Objects go under URL/bench-<pid>/ and are deleted afterwards.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "cache/store.h"
#include "cache/store_options.h"
#include "util/err.h"

struct job {
    struct store *s;
    const uint8_t *data;
    size_t size;
    unsigned objects;
    unsigned next;
    int get;
    int rc;
    pthread_mutex_t lock;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static int take(struct job *j, unsigned *i)
{
    pthread_mutex_lock(&j->lock);
    int ok = j->rc == 0 && j->next < j->objects;
    if (ok)
        *i = j->next++;
    pthread_mutex_unlock(&j->lock);
    return ok;
}

static void key_of(unsigned i, char *key, size_t n)
{
    snprintf(key, n, "bench-%d/obj-%04u", (int)getpid(), i);
}

static int one(struct job *j, unsigned i, struct buf *b)
{
    char key[64];
    key_of(i, key, sizeof key);
    if (!j->get)
        return store_put(j->s, key, j->data, j->size, 0);
    buf_reset(b);
    int rc = store_get(j->s, key, 0, STORE_TO_END, b);
    if (rc == 0 && (b->len != j->size || memcmp(b->data, j->data, j->size) != 0))
        rc = err_set(-EBADMSG, "%s came back different", key);
    return rc;
}

static void *worker(void *arg)
{
    struct job *j = arg;
    struct buf b = { 0 };
    unsigned i;
    buf_reserve(&b, j->size);
    while (take(j, &i)) {
        int rc = one(j, i, &b);
        if (rc) {
            pthread_mutex_lock(&j->lock);
            if (!j->rc) {
                j->rc = rc;
                fprintf(stderr, "bench_store: %s\n", err_msg(rc));
            }
            pthread_mutex_unlock(&j->lock);
        }
    }
    buf_free(&b);
    return NULL;
}

static int phase(struct job *j, unsigned jobs, int get, int json)
{
    pthread_t t[64];
    j->get = get;
    j->next = 0;
    double t0 = now(), c0 = cpu_seconds();
    for (unsigned i = 0; i < jobs; i++)
        pthread_create(&t[i], NULL, worker, j);
    for (unsigned i = 0; i < jobs; i++)
        pthread_join(t[i], NULL);
    double secs = now() - t0, cpu = cpu_seconds() - c0;
    double mb = (double)j->size * j->objects / 1e6;
    if (j->rc)
        return j->rc;
    if (json)
        printf("{\"op\":\"%s\",\"objects\":%u,\"size\":%zu,\"jobs\":%u,\"seconds\":%.3f,"
               "\"mb_per_s\":%.1f,\"cpu_seconds\":%.3f}\n",
               get ? "get" : "put", j->objects, j->size, jobs, secs, mb / secs, cpu);
    else
        printf("%s: %u x %zu bytes, %u in flight: %.2f s, %.1f MB/s, %.2f CPU s\n",
               get ? "get" : "put", j->objects, j->size, jobs, secs, mb / secs, cpu);
    return 0;
}

static void cleanup(struct job *j)
{
    char key[64];
    for (unsigned i = 0; i < j->objects; i++) {
        key_of(i, key, sizeof key);
        store_delete(j->s, key);
    }
}

int main(int argc, char **argv)
{
    struct store_options opt = { 0 };
    unsigned objects = 16, jobs = 8;
    size_t size = 16u << 20;
    int json = 0;
    const char *url = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json"))
            json = 1;
        else if (!strcmp(a, "--objects") && v && ++i)
            objects = (unsigned)atoi(v);
        else if (!strcmp(a, "--size") && v && ++i)
            size = (size_t)strtoull(v, NULL, 10);
        else if (!strcmp(a, "--jobs") && v && ++i)
            jobs = (unsigned)atoi(v);
        else if (!strncmp(a, "--", 2) && v && store_options_set(&opt, a + 2, v) == 1)
            i++;
        else
            url = a;
    }
    if (!url || !objects || !jobs || jobs > 64) {
        fprintf(stderr, "usage: bench_store URL [--objects N] [--size BYTES] [--jobs 1-64] "
                        "[--json]\n");
        return 2;
    }
    uint8_t *data = malloc(size);
    for (size_t i = 0; i < size; i++) /* incompressible, like encoded chunks */
        data[i] = (uint8_t)((i * 2654435761u) >> 11 ^ i);
    struct job j = {
        .data = data, .size = size, .objects = objects, .lock = PTHREAD_MUTEX_INITIALIZER
    };
    int rc = store_open(url, &opt, &j.s);
    if (rc == 0)
        rc = phase(&j, jobs, 0, json);
    if (rc == 0)
        rc = phase(&j, jobs, 1, json);
    if (j.s)
        cleanup(&j);
    if (rc && !j.rc)
        fprintf(stderr, "bench_store: %s\n", err_msg(rc));
    store_close(j.s);
    free(data);
    return rc ? 1 : 0;
}
