/*
 * Parsing ahead (engine/ahead.c): rows come back for exactly the lines fed
 * and parsed, in order, whatever the blocks' cuts; a line the parse
 * refused, one never fed, or one asked for with another length comes back
 * NULL; a reset forgets everything; the thread is joined cleanly.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine/ahead.h"
#include "util/buf.h"

/* "N" is the row (N); a line starting with 'x' is refused. */
static int parse_number(const void *ctx, const char *line, size_t len, struct value *row)
{
    (void)ctx;
    if (len && line[0] == 'x')
        return -1;
    char tmp[32];
    if (len >= sizeof tmp)
        return -1;
    memcpy(tmp, line, len);
    tmp[len] = 0;
    row[0] = (struct value){ .t = T_BIGINT, .i = strtoll(tmp, NULL, 10) };
    return 0;
}

/* Lines "0".."n-1", every seventh "x..." instead; offsets in at[]. */
static void make_lines(struct buf *b, uint64_t *at, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        at[i] = b->len;
        buf_printf(b, i % 7 == 3 ? "x%zu\n" : "%zu\n", i);
    }
}

static size_t line_len(const struct buf *b, const uint64_t *at, size_t i)
{
    const char *s = (const char *)b->data + at[i];
    return (size_t)((const char *)memchr(s, '\n', b->len - at[i]) - s);
}

/* Feeds what the thread has room for, from ahead_end on. */
static void feed(struct ahead *a, const struct buf *b, size_t upto)
{
    while (ahead_wants(a) && ahead_end(a) < upto) {
        uint64_t from = ahead_end(a);
        ssize_t n = ahead_feed(a, from, (const char *)b->data + from, upto - from);
        CHECK(n >= 0);
        if (n <= 0)
            break;
    }
}

static void test_in_order(void)
{
    enum { N = 200000 };
    static uint64_t at[N];
    struct buf b = { 0 };
    make_lines(&b, at, N);
    struct ahead *a = NULL;
    CHECK(ahead_new(1, parse_number, NULL, &a) == 0);
    CHECK(ahead_take(a, 0, 1) == NULL); /* nothing fed yet */
    size_t got = 0, refused = 0;
    unsigned seed = 7;
    for (size_t i = 0; i < N; i++) {
        /* The input feeds in uneven bites, as its reads cut the file. */
        size_t upto = i + 1 + (size_t)rand_r(&seed) % 50000;
        if (rand_r(&seed) % 500 == 0 || ahead_end(a) <= at[i])
            feed(a, &b, upto < N ? at[upto] : b.len);
        const struct value *row = ahead_take(a, at[i], line_len(&b, at, i));
        if (i % 7 == 3) {
            CHECK(row == NULL, "line %zu was refused by the parse", i);
            refused++;
            continue;
        }
        if (row && row[0].i == (int64_t)i)
            got++;
        else
            CHECK(row && row[0].i == (int64_t)i, "line %zu: %s", i, row ? "another row" : "none");
    }
    CHECK_EQ(got + refused, N);
    ahead_free(a);
    buf_free(&b);
}

static void test_misses_and_reset(void)
{
    enum { N = 1000 };
    uint64_t at[N];
    struct buf b = { 0 };
    make_lines(&b, at, N);
    struct ahead *a = NULL;
    CHECK(ahead_new(1, parse_number, NULL, &a) == 0);
    feed(a, &b, b.len);
    CHECK(ahead_take(a, at[10], line_len(&b, at, 10) + 1) == NULL); /* not that line */
    const struct value *row = ahead_take(a, at[20], line_len(&b, at, 20));
    CHECK(row && row[0].i == 20);
    CHECK(ahead_take(a, at[15], line_len(&b, at, 15)) == NULL); /* let go: lines go in order */
    CHECK(ahead_take(a, b.len, 1) == NULL);                     /* past what was fed */
    /* A seek: everything fed is forgotten, and feeding starts anywhere. */
    ahead_reset(a);
    CHECK(ahead_end(a) == 0 && ahead_wants(a));
    CHECK(ahead_take(a, at[501], line_len(&b, at, 501)) == NULL);
    CHECK(ahead_feed(a, at[501], (const char *)b.data + at[501], b.len - at[501]) > 0);
    row = ahead_take(a, at[501], line_len(&b, at, 501));
    CHECK(row && row[0].i == 501);
    ahead_free(a);
    buf_free(&b);
}

/* A line longer than a block cannot be fed: 0 bytes taken, the input
 * parses it itself; a block without a newline at all, the same. */
static void test_long_line(void)
{
    struct ahead *a = NULL;
    size_t n = (size_t)1 << 20;
    char *big = malloc(n + 1);
    memset(big, '1', n);
    big[n] = '\n';
    CHECK(ahead_new(1, parse_number, NULL, &a) == 0);
    CHECK(ahead_feed(a, 0, big, n + 1) == 0);
    CHECK(ahead_feed(a, 0, "12", 2) == 0);
    CHECK(ahead_feed(a, 0, "12\n3", 4) == 3); /* the whole line alone */
    const struct value *row = ahead_take(a, 0, 2);
    CHECK(row && row[0].i == 12);
    free(big);
    ahead_free(a);
    ahead_free(NULL);
}

int main(void)
{
    test_in_order();
    test_misses_and_reset();
    test_long_line();
    return check_done("ahead");
}
