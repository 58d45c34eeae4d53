/*
 * util/slab: blocks are aligned to cache lines, zeroed, distinct, reused
 * once put back, and come from as many chunks as they need, small ones
 * first; large huge_calloc's are zeroed and aligned to a huge page.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "util/slab.h"

#define HUGE ((size_t)2 << 20)

static void test_blocks(void)
{
    struct slab *s;
    CHECK(slab_new(HUGE + 1, &s) == -EINVAL);
    CHECK(slab_new(168, &s) == 0);
    size_t n = 3 * HUGE / 192 + 5; /* more than two chunks' worth */
    unsigned char **b = calloc(n, sizeof *b);
    for (size_t i = 0; i < n; i++) {
        b[i] = slab_get(s);
        CHECK(b[i] && (uintptr_t)b[i] % 64 == 0, "block %zu at %p", i, (void *)b[i]);
        size_t zero = 0;
        while (zero < 168 && b[i][zero] == 0)
            zero++;
        CHECK(zero == 168, "block %zu not zeroed", i);
        memset(b[i], (int)(i % 251), 192); /* its whole rounded size is its own */
    }
    for (size_t i = 0; i < n; i++) /* nothing overlaps: each still holds its own bytes */
        CHECK(b[i][0] == i % 251 && b[i][191] == i % 251, "block %zu overwritten", i);
    slab_put(s, b[7]);
    slab_put(s, b[3]);
    unsigned char *again = slab_get(s), *then = slab_get(s);
    CHECK(again == b[3] && then == b[7], "put-back blocks are reused");
    CHECK(again[0] == 0 && again[191] == 0 && then[100] == 0, "and zeroed again");
    slab_put(s, NULL);
    free(b);
    slab_free(s);
    slab_free(NULL);
}

/* Resident memory, in bytes. */
static size_t resident(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    CHECK(f && fscanf(f, "%ld %ld", &pages, &rss) == 2);
    if (f)
        fclose(f);
    return (size_t)rss * 4096;
}

/* A slab of one block keeps little: a hundred of them (views without GROUP
 * BY) stay far below a hundred huge pages. */
static void test_small_slabs(void)
{
    struct slab *s[100];
    size_t before = resident();
    for (int i = 0; i < 100; i++) {
        CHECK(slab_new(168, &s[i]) == 0);
        memset(slab_get(s[i]), 1, 168);
    }
    size_t grew = resident() - before;
    CHECK(grew < ((size_t)8 << 20), "100 slabs of one block take %zu bytes", grew);
    for (int i = 0; i < 100; i++)
        slab_free(s[i]);
}

static void test_huge_calloc(void)
{
    size_t sizes[] = { 1, 4096, HUGE - 1, HUGE, 3 * HUGE + 17 };
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        unsigned char *p = huge_calloc(n);
        CHECK(p && (uintptr_t)p % 64 == 0, "%zu bytes", n);
        if (n >= HUGE)
            CHECK((uintptr_t)p % HUGE == 0, "%zu bytes aligned to a huge page", n);
        CHECK(p[0] == 0 && p[n / 2] == 0 && p[n - 1] == 0, "%zu bytes zeroed", n);
        memset(p, 1, n);
        huge_free(p, n);
    }
    huge_free(NULL, 0);
}

int main(void)
{
    test_blocks();
    test_small_slabs();
    test_huge_calloc();
    return check_failures ? 1 : 0;
}
