/*
 * The parts of the tiered cache that need no bucket: the eviction policy
 * (cache/policy.c), the disk budget with its waiting writers (cache/space.c)
 * and the memory tier (cache/memcache.c).
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache/memcache.h"
#include "util/buf.h"
#include "util/bufpool.h"
#include "cache/policy.h"
#include "cache/space.h"
#include "check.h"

/* ---- policy ---- */

/* Is block (1, idx) among the n coldest? */
static int among_coldest(struct policy *p, size_t n, uint64_t idx)
{
    uint64_t v[256][2];
    size_t k = policy_coldest(p, n, v);
    for (size_t i = 0; i < k; i++)
        if (v[i][0] == 1 && v[i][1] == idx)
            return 1;
    return 0;
}

static void test_lru_order(void)
{
    struct policy *p;
    CHECK(policy_new(0, 0, &p) == 0);
    for (uint64_t i = 0; i < 4; i++)
        CHECK(policy_add(p, 1, i) == 0);
    policy_hit(p, 1, 0); /* 0 is the most recent now: 1 is the coldest */
    uint64_t v[4][2];
    CHECK_EQ(policy_coldest(p, 4, v), 4);
    CHECK_EQ(v[0][1], 1);
    CHECK_EQ(v[1][1], 2);
    CHECK_EQ(v[2][1], 3);
    CHECK_EQ(v[3][1], 0);
    policy_remove(p, 1, 1);
    policy_remove(p, 1, 99); /* absent: nothing */
    CHECK_EQ(policy_count(p), 3);
    CHECK_EQ(policy_coldest(p, 1, v), 1);
    CHECK_EQ(v[0][1], 2);
    policy_hit(p, 7, 7); /* absent: nothing */
    CHECK_EQ(policy_count(p), 3);
    policy_free(p);
}

/* A hot set read again and again, then one long scan of data read once:
 * SLRU keeps the hot set at the warm end, LRU lets the scan push it out. */
static void scan_after_hot_set(unsigned protect_pct, int *hot_kept)
{
    struct policy *p;
    CHECK(policy_new(protect_pct, 40, &p) == 0);
    for (uint64_t i = 0; i < 10; i++) {
        policy_add(p, 1, i);
        policy_hit(p, 1, i);
    }
    for (uint64_t i = 100; i < 140; i++)
        policy_add(p, 1, i);
    /* The cache holds 40 blocks: the 10 coldest of 50 go. */
    *hot_kept = 1;
    for (uint64_t i = 0; i < 10; i++)
        if (among_coldest(p, 10, i))
            *hot_kept = 0;
    policy_free(p);
}

static void test_slru_resists_scans(void)
{
    int kept;
    scan_after_hot_set(80, &kept);
    CHECK(kept, "SLRU evicted the hot set for a scan");
    scan_after_hot_set(0, &kept);
    CHECK(!kept, "plain LRU should evict the hot set (the test would not tell them apart)");
}

static void test_protected_share_is_bounded(void)
{
    struct policy *p;
    CHECK(policy_new(50, 10, &p) == 0);
    for (uint64_t i = 0; i < 10; i++) {
        policy_add(p, 1, i);
        policy_hit(p, 1, i); /* all would be protected: half the capacity may be */
    }
    /* The 5 demoted to probation (the coldest of the protected) go first. */
    for (uint64_t i = 0; i < 5; i++)
        CHECK(among_coldest(p, 5, i), "block %llu", (unsigned long long)i);
    policy_free(p);
}

/* ---- space ---- */

struct waiter {
    struct space *s;
    uint64_t bytes;
    int64_t wait_ms;
    int rc;
};

static void *reserve_thread(void *arg)
{
    struct waiter *w = arg;
    w->rc = space_reserve(w->s, w->bytes, w->wait_ms);
    return NULL;
}

static void test_space_waits_for_room(void)
{
    struct space *s;
    CHECK(space_new(100, &s) == 0);
    space_add(s, 60);
    CHECK(space_reserve(s, 40, 0) == 0);
    CHECK(space_reserve(s, 1, 0) == -ENOSPC, "over the limit without waiting");
    struct waiter w = { s, 30, 10000, 1 };
    pthread_t t;
    pthread_create(&t, NULL, reserve_thread, &w);
    struct space_stats st;
    for (int i = 0; i < 500; i++) { /* until the writer waits */
        space_get_stats(s, &st);
        if (st.waiting)
            break;
        usleep(2000);
    }
    CHECK_EQ(st.waiting, 1);
    /* The evictor sees what the waiter wants: 60+40+30 over the low mark of 90. */
    CHECK_EQ(space_await_excess(s, 1), 40);
    space_release(s, 40); /* the write finished: its bytes landed */
    space_add(s, 40);
    space_add(s, -35); /* the evictor freed a block */
    pthread_join(t, NULL);
    CHECK_EQ(w.rc, 0);
    space_get_stats(s, &st);
    CHECK_EQ(st.used, 65);
    CHECK_EQ(st.reserved, 30);
    CHECK_EQ(st.waits, 1);
    CHECK_EQ(st.timeouts, 0);
    space_free(s);
}

static void test_space_times_out(void)
{
    struct space *s;
    CHECK(space_new(100, &s) == 0);
    space_add(s, 100);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(space_reserve(s, 10, 200) == -ENOSPC);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    CHECK(waited >= 0.19, "gave up after %.3f s", waited);
    struct space_stats st;
    space_get_stats(s, &st);
    CHECK_EQ(st.timeouts, 1);
    CHECK_EQ(st.reserved, 0);
    space_free(s);
}

static void test_space_unbounded(void)
{
    struct space *s;
    CHECK(space_new(0, &s) == 0);
    space_add(s, (int64_t)1 << 50);
    CHECK(space_reserve(s, (uint64_t)1 << 40, 0) == 0);
    CHECK_EQ(space_await_excess(s, 1), 0);
    space_free(s);
}

/* ---- memcache ---- */

static uint8_t *filled(size_t len, int c)
{
    uint8_t *p = malloc(len);
    memset(p, c, len);
    return p;
}

static void put(struct memcache *m, const uint8_t *name, size_t len, int c)
{
    uint8_t *p = filled(len + 16, c);
    memcache_put(m, name, p, len + 16, p + 16, len); /* the bytes need not start the block */
}

static void test_memcache(void)
{
    struct memcache *m;
    CHECK(memcache_new(300, 116, &m) == 0);
    uint8_t a[CODEC_NAME_LEN] = { 1 }, b[CODEC_NAME_LEN] = { 2 }, c[CODEC_NAME_LEN] = { 3 };
    uint8_t out[200];
    CHECK(!memcache_read(m, a, 0, 10, out));
    put(m, a, 100, 'a');
    put(m, b, 100, 'b');
    CHECK(memcache_read(m, a, 90, 20, out)); /* a is the most recent now */
    CHECK(out[0] == 'a' && out[9] == 'a' && out[10] == 0 && out[19] == 0, "zeros past the end");
    put(m, c, 150, 'c'); /* 350 > 300: b, the least recent, goes */
    CHECK(!memcache_read(m, b, 0, 1, out));
    CHECK(memcache_read(m, a, 0, 1, out) && out[0] == 'a');
    CHECK(memcache_read(m, c, 149, 1, out) && out[0] == 'c');
    put(m, c, 150, 'x'); /* already there: the old bytes stay */
    CHECK(memcache_read(m, c, 0, 1, out) && out[0] == 'c');
    put(m, b, 400, 'b'); /* bigger than the budget: not kept */
    CHECK(!memcache_read(m, b, 0, 1, out));
    struct memcache_stats st;
    memcache_get_stats(m, &st);
    CHECK_EQ(st.bytes, 250);
    CHECK_EQ(st.chunks, 2);
    CHECK_EQ(st.hits, 4);
    CHECK_EQ(st.misses, 3);
    /* b went out with 116 bytes, its buffer's size: it is handed out again. */
    void *spare = memcache_buffer(m);
    CHECK(spare != NULL);
    memcache_recycle(m, spare, 116);
    CHECK(memcache_buffer(m) == spare, "a recycled buffer is reused");
    free(spare);
    memcache_free(m);

    /* A pinned chunk outlives its eviction. */
    CHECK(memcache_new(200, 4096, &m) == 0);
    put(m, a, 150, 'a');
    void *pin;
    size_t n;
    const uint8_t *pinned = memcache_pin(m, a, &n, &pin);
    CHECK(pinned && n == 150 && pinned[149] == 'a');
    put(m, b, 150, 'b'); /* evicts a */
    CHECK(!memcache_read(m, a, 0, 1, out), "a was evicted");
    CHECK(pinned[0] == 'a' && pinned[149] == 'a', "a pinned chunk's bytes stay");
    memcache_unpin(m, pin);
    CHECK(memcache_pin(m, c, &n, &pin) == NULL && n == 0);
    memcache_free(m);

    CHECK(memcache_new(0, 116, &m) == 0); /* --memory-cache 0 */
    put(m, a, 10, 'a');
    CHECK(!memcache_read(m, a, 0, 1, out));
    memcache_free(m);
}

static void test_bufpool(void)
{
    struct bufpool *p;
    CHECK(bufpool_new(8192, 2, &p) == 0);
    CHECK_EQ(bufpool_size(p), 8192);
    void *x = bufpool_get(p), *y = bufpool_get(p), *z = bufpool_get(p);
    CHECK(x && y && z && x != y && y != z);
    CHECK((uintptr_t)x % BUFPOOL_ALIGN == 0 && (uintptr_t)z % BUFPOOL_ALIGN == 0, "aligned");
    bufpool_put(p, x, 8192);
    bufpool_put(p, y, 8192);
    bufpool_put(p, z, 8192);        /* beyond keep: freed */
    bufpool_put(p, malloc(10), 10); /* not the pool's size: freed */
    bufpool_put(p, NULL, 8192);
    void *again = bufpool_get(p);
    CHECK(again == y, "the last given back comes out first");
    bufpool_put(p, again, 8192);
    bufpool_free(p); /* frees what it keeps (ASan checks) */

    /* A fixed buffer never moves: it refuses to grow instead. */
    uint8_t block[32];
    struct buf f = { .data = block, .cap = sizeof block, .fixed = 1 };
    CHECK(buf_append(&f, "0123456789", 10) == 0 && f.data == block);
    CHECK(buf_reserve(&f, 40) == -ENOMEM && f.data == block && f.len == 10);

    /* A growing array keeps what it holds. */
    uint64_t *v = NULL;
    size_t cap = 0;
    for (size_t n = 0; n < 1000; n++) {
        CHECK(array_grow((void **)&v, &cap, n, sizeof *v) == 0 && cap > n);
        v[n] = n * 7;
    }
    CHECK(v[0] == 0 && v[999] == 6993 && v[500] == 3500);
    free(v);
}

int main(void)
{
    test_lru_order();
    test_slru_resists_scans();
    test_protected_share_is_bounded();
    test_space_waits_for_room();
    test_space_times_out();
    test_space_unbounded();
    test_memcache();
    test_bufpool();
    return check_done("cache_tiers");
}
