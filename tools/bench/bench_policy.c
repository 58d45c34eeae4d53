/*
 * The disk tier's eviction policy (cache/policy.h), plain LRU against SLRU,
 * replayed on access traces a checkpointing engine produces, with the cache
 * a fraction of the data as in the randread benchmark. Prints each trace's
 * hit rate under both, as a markdown table or (--json) one object per line.
 * The traces are synthetic and seeded, so the figures repeat exactly.
 *
 *   bench_policy [--json]
 */
#include "cache/policy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLRU_PCT 80 /* as fs/main.c */
#define CACHE    64 /* blocks: 256 MiB of 4 MiB blocks */
#define ACCESSES 200000

struct trace {
    const char *name, *what;
    uint64_t (*next)(struct trace *t);
    uint64_t rng, step, scan_base;
    double *zipf_cdf;
};

static uint64_t rnd(struct trace *t)
{
    t->rng ^= t->rng << 13;
    t->rng ^= t->rng >> 7;
    t->rng ^= t->rng << 17;
    return t->rng;
}

/* Random 4 KiB reads over 1 GiB: every block alike. */
static uint64_t uniform(struct trace *t)
{
    return rnd(t) % 256;
}

/* An engine's hot state (32 blocks, 90% of reads, the rest over 512), and
 * every 5,000 reads a new checkpoint of 256 blocks read once, end to end
 * (a backfill, a verify, a warm-up of another snapshot). */
static uint64_t hot_and_scans(struct trace *t)
{
    uint64_t i = t->step++ % 5256;
    if (i >= 5000)
        return 1000000 + t->scan_base++;
    return rnd(t) % 10 ? rnd(t) % 32 : 32 + rnd(t) % 480;
}

/* A restore read again and again, 1.5 times the cache. */
static uint64_t loop(struct trace *t)
{
    return t->step++ % (CACHE * 3 / 2);
}

/* Skewed reads over 1,024 blocks (Zipf, s = 0.9). */
static uint64_t zipf(struct trace *t)
{
    double u = (double)(rnd(t) % 1000000000) / 1e9;
    uint64_t lo = 0, hi = 1023;
    while (lo < hi) {
        uint64_t mid = (lo + hi) / 2;
        if (t->zipf_cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static double *zipf_table(void)
{
    static double cdf[1024];
    double sum = 0;
    for (int i = 0; i < 1024; i++)
        sum += 1 / pow(i + 1, 0.9);
    double acc = 0;
    for (int i = 0; i < 1024; i++)
        cdf[i] = (acc += 1 / pow(i + 1, 0.9) / sum);
    return cdf;
}

/* Hit rate of the trace through a cache of CACHE blocks under the policy. */
static double replay(struct trace proto, unsigned protect_pct)
{
    struct trace t = proto;
    struct policy *p;
    if (policy_new(protect_pct, CACHE, &p))
        exit(1);
    uint64_t hits = 0;
    for (int i = 0; i < ACCESSES; i++) {
        uint64_t blk = t.next(&t), victim[1][2];
        size_t before = policy_count(p);
        policy_add(p, 1, blk); /* a hit if it is there */
        if (policy_count(p) == before) {
            hits++;
            continue;
        }
        if (policy_count(p) > CACHE && policy_coldest(p, 1, victim) == 1)
            policy_remove(p, victim[0][0], victim[0][1]);
    }
    policy_free(p);
    return 100.0 * (double)hits / ACCESSES;
}

int main(int argc, char **argv)
{
    int json = argc > 1 && !strcmp(argv[1], "--json");
    struct trace traces[] = {
        { "uniform", "random reads over 1 GiB", uniform, 88172645463325252ULL, 0, 0, NULL },
        { "hot+scans", "hot state, with checkpoints read once", hot_and_scans, 7, 0, 0, NULL },
        { "loop", "a restore read again, 1.5x the cache", loop, 9, 0, 0, NULL },
        { "zipf", "skewed reads over 4 GiB (s=0.9)", zipf, 11, 0, 0, zipf_table() },
    };
    if (!json)
        printf("| trace | what | LRU hits | SLRU hits |\n|---|---|---:|---:|\n");
    for (size_t i = 0; i < sizeof traces / sizeof traces[0]; i++) {
        double lru = replay(traces[i], 0), slru = replay(traces[i], SLRU_PCT);
        if (json)
            printf("{\"trace\": \"%s\", \"what\": \"%s\", \"lru\": %.2f, \"slru\": %.2f}\n",
                   traces[i].name, traces[i].what, lru, slru);
        else
            printf("| %s | %s | %.1f%% | %.1f%% |\n", traces[i].name, traces[i].what, lru, slru);
    }
    return 0;
}
