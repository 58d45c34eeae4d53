/*
 * Parsing ahead (contract in ahead.h).
 *
 * Lines are fed in blocks, copies of the input's bytes, to NBLOCKS slots
 * used as a ring in feeding order, [head, head + count); each block is a
 * job for a pool of one thread (util/pool), which parses blocks in the
 * order they come.
 *   1. A slot in the ring has a job submitted (its batch); until the input
 *      has waited for that batch, the thread alone touches the slot, and
 *      after, the input alone (`ready`).
 *   2. A slot's lines lie after those of the slots before it in the ring.
 *   3. A slot leaves the ring only once its job is done: a job cannot be
 *      taken back, so a reset waits for the blocks it forgets.
 */
#include "ahead.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/pool.h"

#define NBLOCKS 4

struct line {
    uint64_t at;
    size_t len;
    int ok;
};

struct block {
    struct ahead *a;
    struct batch job;
    uint64_t at; /* the input's offset of bytes.data[0] */
    struct buf bytes;
    struct line *lines;
    struct value *rows; /* ncols per line */
    size_t nlines, lines_cap, rows_cap;
    size_t next; /* the input's cursor */
    int ready;   /* invariant 1 */
};

struct ahead {
    size_t ncols;
    ahead_parse_fn parse;
    const void *ctx;
    struct pool *pool;
    struct block blocks[NBLOCKS];
    size_t head, count;
    uint64_t end;
};

/* Room for one more line in b, and its row; 0 or -ENOMEM. */
static int grow(const struct ahead *a, struct block *b)
{
    if (array_grow((void **)&b->lines, &b->lines_cap, b->nlines, sizeof *b->lines))
        return -ENOMEM;
    return array_grow((void **)&b->rows, &b->rows_cap, b->nlines, a->ncols * sizeof *b->rows);
}

/* Out of memory, the block's remaining lines are left out: the input
 * parses them itself. */
static void parse_block(struct ahead *a, struct block *b)
{
    const char *base = (const char *)b->bytes.data, *s = base, *end = s + b->bytes.len;
    b->nlines = 0;
    while (s < end && grow(a, b) == 0) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        struct line *l = &b->lines[b->nlines];
        l->at = b->at + (uint64_t)(s - base);
        l->len = (size_t)(nl - s);
        l->ok = a->parse(a->ctx, s, l->len, &b->rows[b->nlines * a->ncols]) == 0;
        b->nlines++;
        s = nl + 1;
    }
}

static int parse_job(void *arg)
{
    struct block *b = arg;
    parse_block(b->a, b);
    return 0;
}

int ahead_new(size_t ncols, ahead_parse_fn parse, const void *ctx, struct ahead **out)
{
    struct ahead *a = calloc(1, sizeof *a);
    if (!a)
        return -ENOMEM;
    *a = (struct ahead){ .ncols = ncols ? ncols : 1, .parse = parse, .ctx = ctx };
    for (size_t i = 0; i < NBLOCKS; i++)
        a->blocks[i].a = a;
    int rc = pool_new(1, NBLOCKS, &a->pool);
    if (rc) {
        free(a);
        return rc;
    }
    *out = a;
    return 0;
}

void ahead_free(struct ahead *a)
{
    if (!a)
        return;
    ahead_reset(a);
    pool_free(a->pool);
    for (size_t i = 0; i < NBLOCKS; i++) {
        buf_free(&a->blocks[i].bytes);
        free(a->blocks[i].lines);
        free(a->blocks[i].rows);
    }
    free(a);
}

uint64_t ahead_end(const struct ahead *a)
{
    return a->end;
}

int ahead_wants(const struct ahead *a)
{
    return a->count < NBLOCKS;
}

ssize_t ahead_feed(struct ahead *a, uint64_t at, const char *bytes, size_t len)
{
    size_t take = len < AHEAD_BLOCK ? len : AHEAD_BLOCK;
    const char *nl = take ? memrchr(bytes, '\n', take) : NULL;
    if (!nl || a->count == NBLOCKS)
        return 0;
    take = (size_t)(nl - bytes) + 1;
    struct block *b = &a->blocks[(a->head + a->count) % NBLOCKS];
    buf_reset(&b->bytes);
    if (buf_append(&b->bytes, bytes, take))
        return -ENOMEM;
    b->at = at;
    b->next = 0;
    b->ready = 0;
    batch_init(&b->job);
    if (pool_submit(a->pool, &b->job, parse_job, b)) {
        batch_destroy(&b->job);
        return -ENOMEM;
    }
    a->count++;
    a->end = at + take;
    return (ssize_t)take;
}

/* Invariant 1: waits for the thread to be done with b. */
static void wait_parsed(struct block *b)
{
    if (!b->ready)
        batch_wait(&b->job);
    b->ready = 1;
}

/* Invariant 3. */
static void drop_oldest(struct ahead *a)
{
    struct block *b = &a->blocks[a->head];
    wait_parsed(b);
    batch_destroy(&b->job);
    a->head = (a->head + 1) % NBLOCKS;
    a->count--;
}

const struct value *ahead_take(struct ahead *a, uint64_t at, size_t len)
{
    while (a->count) {
        struct block *b = &a->blocks[a->head];
        if (at < b->at)
            return NULL;
        if (at >= b->at + b->bytes.len) {
            drop_oldest(a);
            continue;
        }
        wait_parsed(b);
        while (b->next < b->nlines && b->lines[b->next].at < at)
            b->next++;
        const struct line *l = b->next < b->nlines ? &b->lines[b->next] : NULL;
        return l && l->at == at && l->len == len && l->ok ? &b->rows[b->next * a->ncols] : NULL;
    }
    return NULL;
}

void ahead_reset(struct ahead *a)
{
    while (a->count)
        drop_oldest(a);
    a->end = 0;
}
