/*
 * The engine's SQL front end and incremental views: errors name the line
 * and column; views maintained under random inserts and deletes, step by
 * step, end up equal to what SQLite computes with the same SELECT over the
 * same final table.
 */
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine/ivm.h"
#include "engine/sql.h"
#include "engine/value.h"
#include "util/err.h"
#include "util/hmap.h"
#include "util/le.h"

#include <xxhash.h>

static const char program_text[] =
    "-- the issue's example, with two more views\n"
    "CREATE TABLE clicks (user_id BIGINT, url VARCHAR, bytes BIGINT, ratio DOUBLE)\n"
    "  WITH ('connector' = 'file', 'path' = 'in/clicks.csv', 'format' = 'json');\n"
    "CREATE VIEW bytes_per_user\n"
    "  WITH ('connector' = 'file', 'path' = 'out/bytes_per_user.jsonl')\n"
    "  AS SELECT user_id, COUNT(*) AS n, SUM(bytes) AS total, MIN(bytes) AS smallest,\n"
    "     MAX(bytes) AS biggest, AVG(bytes) AS mean\n"
    "     FROM clicks WHERE bytes > 0 GROUP BY user_id;\n"
    "CREATE VIEW by_url AS SELECT url, COUNT(bytes) AS counted, COUNT(*) AS n,\n"
    "     MIN(ratio) AS lo, MAX(url) AS same, SUM(ratio) AS s FROM clicks\n"
    "     WHERE NOT (url IS NULL) AND (ratio < 0.9 OR bytes IS NULL) GROUP BY url;\n"
    "CREATE VIEW everything AS SELECT COUNT(*) AS n, SUM(bytes) AS total, MAX(url) AS last\n"
    "     FROM clicks;\n";

/* ---- errors ---- */

static void check_error(const char *text, const char *want)
{
    struct program *p = NULL;
    int rc = program_parse(text, &p);
    CHECK(rc == -EINVAL, "%s: rc %d", text, rc);
    CHECK(strstr(err_msg(rc), want) != NULL, "%s: got '%s', want '%s'", text, err_msg(rc), want);
    program_free(p);
}

static void test_errors(void)
{
    check_error("CREATE TABLE t (a BIGINT, b VARCHR);", "line 1, column 29: expected a type");
    check_error("CREATE TABLE t (a BIGINT);\nCREATE VIEW v AS SELECT SUM(b) AS s FROM t;",
                "line 2, column 29: t has no column b");
    check_error("CREATE TABLE t (a BIGINT);\nCREATE VIEW v AS\n  SELECT COUNT(*) AS n FROM t "
                "WHERE a + 'x' > 1;",
                "line 3, column 41: arithmetic needs numbers, not VARCHAR");
    check_error("CREATE TABLE t (a VARCHAR);\nCREATE VIEW v AS SELECT SUM(a) AS s FROM t;",
                "line 2, column 29: SUM needs a number, not VARCHAR");
    check_error("CREATE TABLE t (a BIGINT, b BIGINT);\nCREATE VIEW v AS SELECT a, COUNT(*) AS n "
                "FROM t GROUP BY b;",
                "line 2, column 25: a is neither in GROUP BY nor aggregated");
    check_error("CREATE TABLE t (a BIGINT);\nCREATE VIEW v AS SELECT COUNT(*) FROM u;",
                "line 2, column 39: there is no table u");
    check_error("CREATE TABLE t (a VARCHAR);\nCREATE VIEW v AS SELECT COUNT(*) AS n FROM t "
                "WHERE a = 1;",
                "line 2, column 54: cannot compare VARCHAR with BIGINT");
    check_error("CREATE TABLE t (a BIGINT) WITH ('path' = 'x);",
                "line 1, column 42: string not closed");
    check_error("CREATE TABLE t (a BIGINT, a DOUBLE);",
                "line 1, column 27: column a is defined twice");
    check_error("CREATE TABLE t (a BIGINT);\nCREATE VIEW v AS SELECT COUNT(*) AS n FROM t WHERE a;",
                "line 2, column 52: WHERE needs BOOLEAN, not BIGINT");
    check_error("CREATE TABLE t (a BIGINT)\nCREATE TABLE u (b BIGINT);",
                "line 2, column 1: expected ';'");
    check_error("", "the program has no CREATE TABLE");
}

static void test_parse(void)
{
    struct program *p = NULL;
    int rc = program_parse(program_text, &p);
    CHECK(rc == 0, "%s", err_msg(rc));
    if (rc)
        return;
    CHECK(p->ntables == 1 && p->nviews == 3);
    CHECK(!strcmp(option_get(p->tables[0]->opts, p->tables[0]->nopts, "path"), "in/clicks.csv"));
    const struct view *v = &p->views[0];
    CHECK(v->nitems == 6 && !strcmp(v->items[5].name, "mean") && v->items[5].type == T_DOUBLE);
    CHECK(v->items[2].type == T_BIGINT && v->items[0].type == T_BIGINT);
    CHECK(!strcmp(option_get(v->opts, v->nopts, "path"), "out/bytes_per_user.jsonl"));
    CHECK(strncmp(v->sql, "SELECT user_id", 14) == 0, "%s", v->sql);
    program_free(p);
}

/* ---- incremental views against SQLite ---- */

/* A row as text, doubles to 9 digits (sums of doubles under deletes differ
 * from sums made afresh in the last bits). */
static void row_text(const struct value *row, size_t n, char *out, size_t cap)
{
    size_t at = 0;
    for (size_t i = 0; i < n && at < cap; i++) {
        const struct value *v = &row[i];
        if (v->t == T_NULL)
            at += (size_t)snprintf(out + at, cap - at, "null|");
        else if (v->t == T_DOUBLE)
            at += (size_t)snprintf(out + at, cap - at, "%.9g|", v->d);
        else if (v->t == T_VARCHAR)
            at += (size_t)snprintf(out + at, cap - at, "'%.*s'|", (int)v->len, v->s);
        else
            at += (size_t)snprintf(out + at, cap - at, "%lld|", (long long)v->i);
    }
}

struct multiset { /* rows as text, each with a count */
    char **rows;
    long *counts;
    size_t n, cap;
};

static void ms_add(struct multiset *m, const char *row, long weight)
{
    for (size_t i = 0; i < m->n; i++)
        if (!strcmp(m->rows[i], row)) {
            m->counts[i] += weight;
            CHECK(m->counts[i] >= 0, "row %s deleted more often than inserted", row);
            return;
        }
    CHECK(weight > 0, "row %s deleted but never inserted", row);
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 64;
        m->rows = realloc(m->rows, m->cap * sizeof *m->rows);
        m->counts = realloc(m->counts, m->cap * sizeof *m->counts);
    }
    m->rows[m->n] = strdup(row);
    m->counts[m->n++] = weight;
}

static void ms_free(struct multiset *m)
{
    for (size_t i = 0; i < m->n; i++)
        free(m->rows[i]);
    free(m->rows);
    free(m->counts);
}

struct sink {
    const struct view *v;
    struct multiset out;
    int last_weight; /* per flush: a group's deletion comes before its insertion */
};

static int emit(void *arg, const struct value *row, int weight)
{
    struct sink *s = arg;
    char text[1024];
    row_text(row, s->v->nitems, text, sizeof text);
    ms_add(&s->out, text, weight);
    return 0;
}

/* What SQLite says the view holds over db's table. */
static void sqlite_rows(sqlite3 *db, const struct view *v, struct multiset *out)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, v->sql, -1, &st, NULL);
    CHECK(rc == SQLITE_OK, "%s: %s", v->sql, sqlite3_errmsg(db));
    while (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
        struct value row[16];
        for (size_t i = 0; i < v->nitems; i++) {
            enum type t = v->items[i].type;
            if (sqlite3_column_type(st, (int)i) == SQLITE_NULL)
                row[i] = (struct value){ .t = T_NULL };
            else if (t == T_DOUBLE)
                row[i] = (struct value){ .t = T_DOUBLE, .d = sqlite3_column_double(st, (int)i) };
            else if (t == T_VARCHAR)
                row[i] = (struct value){ .t = T_VARCHAR,
                                         .s = (const char *)sqlite3_column_text(st, (int)i),
                                         .len = (uint32_t)sqlite3_column_bytes(st, (int)i) };
            else
                row[i] = (struct value){ .t = t, .i = sqlite3_column_int64(st, (int)i) };
        }
        char text[1024];
        row_text(row, v->nitems, text, sizeof text);
        ms_add(out, text, 1);
    }
    sqlite3_finalize(st);
}

static int same_rows(const struct multiset *a, const struct multiset *b)
{
    size_t live = 0;
    for (size_t i = 0; i < a->n; i++) {
        if (!a->counts[i])
            continue;
        live++;
        int found = 0;
        for (size_t j = 0; j < b->n; j++)
            found |= !strcmp(a->rows[i], b->rows[j]) && a->counts[i] == b->counts[j];
        if (!found) {
            fprintf(stderr, "  incremental has %s x%ld, SQLite not\n", a->rows[i], a->counts[i]);
            return 0;
        }
    }
    return live == b->n;
}

struct input {
    int64_t user;
    char url[8];
    int64_t bytes; /* -1: NULL */
    double ratio;
};

static void to_values(const struct input *in, struct value *v)
{
    v[0] = (struct value){ .t = T_BIGINT, .i = in->user };
    v[1] = in->url[0]
               ? (struct value){ .t = T_VARCHAR, .s = in->url, .len = (uint32_t)strlen(in->url) }
               : (struct value){ .t = T_NULL };
    v[2] = in->bytes < 0 ? (struct value){ .t = T_NULL }
                         : (struct value){ .t = T_BIGINT, .i = in->bytes };
    v[3] = (struct value){ .t = T_DOUBLE, .d = in->ratio };
}

static void random_input(struct input *in, unsigned *seed)
{
    in->user = rand_r(seed) % 97; /* many small groups: some empty out, some come back */
    int u = rand_r(seed) % 6;
    if (u)
        snprintf(in->url, sizeof in->url, "/p%d", u);
    else
        in->url[0] = '\0';
    in->bytes = rand_r(seed) % 5 == 0 ? -1 : rand_r(seed) % 50 - 5;
    in->ratio = (rand_r(seed) % 1000) / 1000.0;
}

static void load_sqlite(sqlite3 *db, const struct input *live, size_t n)
{
    sqlite3_exec(db,
                 "DROP TABLE IF EXISTS clicks; CREATE TABLE clicks(user_id INTEGER, url TEXT, "
                 "bytes INTEGER, ratio REAL)",
                 NULL, NULL, NULL);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db, "INSERT INTO clicks VALUES (?, ?, ?, ?)", -1, &st, NULL);
    for (size_t i = 0; i < n; i++) {
        sqlite3_bind_int64(st, 1, live[i].user);
        if (live[i].url[0])
            sqlite3_bind_text(st, 2, live[i].url, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 2);
        if (live[i].bytes < 0)
            sqlite3_bind_null(st, 3);
        else
            sqlite3_bind_int64(st, 3, live[i].bytes);
        sqlite3_bind_double(st, 4, live[i].ratio);
        sqlite3_step(st);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
}

/* The view's rows now, as a multiset. */
static void scan_rows(struct ivm *m, const struct view *v, struct multiset *out)
{
    struct sink s = { .v = v };
    CHECK(ivm_scan(m, emit, &s) == 0);
    *out = s.out;
}

/* A chain of batches (a base and its deltas) loaded into a new view gives
 * the rows of the view saved. */
struct chain {
    struct buf b[64];
    size_t n;
};

static void save_step(struct ivm *m, struct chain *c, unsigned *seed)
{
    int base = c->n == 0 || c->n == 64 || rand_r(seed) % 5 == 0;
    if (base) {
        for (size_t i = 0; i < c->n; i++)
            buf_free(&c->b[i]);
        c->n = 0;
    }
    c->b[c->n] = (struct buf){ 0 };
    CHECK(ivm_save(m, base, &c->b[c->n]) == 0);
    c->n++;
}

static void check_chain(struct ivm *m, const struct view *v, struct chain *c)
{
    struct ivm *again = NULL;
    struct multiset want, got;
    CHECK(ivm_new(v, &again) == 0);
    for (size_t i = 0; i < c->n; i++)
        CHECK(ivm_load(again, c->b[i].data, c->b[i].len) == 0, "%s", err_msg(-EBADMSG));
    scan_rows(m, v, &want);
    scan_rows(again, v, &got);
    CHECK(same_rows(&got, &want) && same_rows(&want, &got), "view %s from %zu batches", v->name,
          c->n);
    /* Loaded state is not output again, and changes keep applying to it. */
    struct sink none = { .v = v };
    CHECK(ivm_flush(again, emit, &none) == 0 && none.out.n == 0);
    ms_free(&want);
    ms_free(&got);
    ms_free(&none.out);
    /* A damaged batch is refused, naming the view. */
    if (c->n && c->b[c->n - 1].len > 40) {
        struct ivm *bad = NULL;
        CHECK(ivm_new(v, &bad) == 0);
        ((uint8_t *)c->b[c->n - 1].data)[30] ^= 1;
        CHECK(ivm_load(bad, c->b[c->n - 1].data, c->b[c->n - 1].len) == -EBADMSG);
        ((uint8_t *)c->b[c->n - 1].data)[30] ^= 1;
        ivm_free(bad);
    }
    ivm_free(again);
}

/* The program over an append-only table: the same, the input CSV. */
static char *append_only_text(void)
{
    char *t = strdup(program_text), *at = strstr(t, "'json'");
    memcpy(at, "'csv' ", 6);
    return t;
}

/* Random inserts and deletes (inserts alone for an append-only table), a
 * flush per step, compared with SQLite every ten steps. */
static void test_against_sqlite(unsigned first, int append_only)
{
    unsigned seed = first;
    struct program *p = NULL;
    char *text = append_only ? append_only_text() : strdup(program_text);
    CHECK(program_parse(text, &p) == 0);
    CHECK(table_append_only(p->tables[0]) == append_only);
    struct ivm *m[3] = { 0 };
    struct sink sinks[3];
    for (size_t i = 0; i < p->nviews; i++) {
        CHECK(ivm_new(&p->views[i], &m[i]) == 0);
        sinks[i] = (struct sink){ .v = &p->views[i] };
    }
    struct chain chains[3] = { 0 };
    struct input *live = calloc(4000, sizeof *live);
    size_t nlive = 0;
    sqlite3 *db;
    sqlite3_open(":memory:", &db);
    for (int step = 0; step < 60; step++) {
        int changes = rand_r(&seed) % 40;
        for (int c = 0; c < changes; c++) {
            struct value row[4];
            int del = !append_only && nlive && rand_r(&seed) % 3 == 0; /* empties groups too */
            struct input in;
            if (del) {
                size_t at = (size_t)rand_r(&seed) % nlive;
                in = live[at];
                live[at] = live[--nlive];
            } else {
                random_input(&in, &seed);
                live[nlive++] = in;
            }
            to_values(&in, row);
            for (size_t i = 0; i < p->nviews; i++)
                CHECK(ivm_change(m[i], row, del ? -1 : 1) == 0, "%s", err_msg(-EINVAL));
        }
        for (size_t i = 0; i < p->nviews; i++) {
            CHECK(ivm_flush(m[i], emit, &sinks[i]) == 0);
            if (step % 3 == 0)
                save_step(m[i], &chains[i], &seed);
        }
        if (step % 10 != 9)
            continue;
        load_sqlite(db, live, nlive);
        for (size_t i = 0; i < p->nviews; i++) {
            struct multiset want = { 0 };
            sqlite_rows(db, &p->views[i], &want);
            CHECK(same_rows(&sinks[i].out, &want), "seed %u, step %d, view %s", first, step,
                  p->views[i].name);
            ms_free(&want);
        }
    }
    /* Deleting what was never there is refused, and changes nothing. */
    struct value ghost[4];
    struct input never = { .user = 99, .url = "/x", .bytes = 7, .ratio = 0.5 };
    to_values(&never, ghost);
    CHECK(ivm_change(m[0], ghost, -1) == -EINVAL);
    if (append_only) { /* a delete of what is there: refused too */
        to_values(&live[0], ghost);
        CHECK(ivm_change(m[0], ghost, -1) == -EINVAL);
        CHECK(strstr(err_msg(-EINVAL), "append-only") != NULL, "%s", err_msg(-EINVAL));
    }
    sqlite3_close(db);
    free(live);
    free(text);
    for (size_t i = 0; i < p->nviews; i++) {
        save_step(m[i], &chains[i], &seed);
        check_chain(m[i], &p->views[i], &chains[i]);
        for (size_t k = 0; k < chains[i].n; k++)
            buf_free(&chains[i].b[k]);
        ivm_free(m[i]);
        ms_free(&sinks[i].out);
    }
    program_free(p);
}

static int ignore(void *arg, const struct value *row, int weight)
{
    (void)arg, (void)row, (void)weight;
    return 0;
}

/* MIN and MAX state saved from a table with deletes (a bag of values),
 * loaded for the same table now append-only: the extremes carry on. */
static void test_extremes_from_a_bag(void)
{
    struct program *with_deletes = NULL, *append = NULL;
    char *text = append_only_text();
    CHECK(program_parse(program_text, &with_deletes) == 0 && program_parse(text, &append) == 0);
    struct ivm *a = NULL, *b = NULL;
    CHECK(ivm_new(&with_deletes->views[0], &a) == 0 && ivm_new(&append->views[0], &b) == 0);
    struct sink sink = { .v = &append->views[0] };
    struct value row[4];
    const int before[] = { 5, 3, 9, 7 }, after[] = { 4, 10, 1 };
    const char *want[] = { "1|5|24|3|9|4.8|", "1|6|34|3|10|5.66666667|", "1|7|35|1|10|5|" };
    for (int i = 0; i < 4; i++) {
        to_values(&(struct input){ .user = 1, .url = "/u", .bytes = before[i] }, row);
        CHECK(ivm_change(a, row, 1) == 0);
    }
    CHECK(ivm_change(a, row, -1) == 0); /* 7 goes: the bag holds 3, 5, 9 and 3 */
    to_values(&(struct input){ .user = 1, .url = "/u", .bytes = 3 }, row);
    CHECK(ivm_change(a, row, 1) == 0);
    struct buf batch = { 0 };
    CHECK(ivm_flush(a, emit, &sink) == 0 && ivm_save(a, 1, &batch) == 0);
    CHECK(ivm_load(b, batch.data, batch.len) == 0);
    for (int i = 0; i < 3; i++) {
        to_values(&(struct input){ .user = 1, .url = "/u", .bytes = after[i] }, row);
        CHECK(ivm_change(b, row, 1) == 0);
        CHECK(ivm_flush(b, ignore, NULL) == 0);
        struct sink rows = { .v = &append->views[0] };
        CHECK(ivm_scan(b, emit, &rows) == 0);
        CHECK(rows.out.n == 1 && !strcmp(rows.out.rows[0], want[i]), "after %d: %s", after[i],
              rows.out.n ? rows.out.rows[0] : "nothing");
        ms_free(&rows.out);
    }
    /* The other way, extremes alone into a view that takes deletes: refused. */
    struct buf cut = { 0 };
    struct ivm *c = NULL;
    CHECK(ivm_save(b, 1, &cut) == 0 && ivm_new(&with_deletes->views[0], &c) == 0);
    CHECK(ivm_load(c, cut.data, cut.len) == -EINVAL);
    CHECK(strstr(err_msg(-EINVAL), "append-only") != NULL, "%s", err_msg(-EINVAL));
    ivm_free(c);
    buf_free(&cut);
    ms_free(&sink.out);
    buf_free(&batch);
    ivm_free(a);
    ivm_free(b);
    program_free(with_deletes);
    program_free(append);
    free(text);
}

/* A batch of an append-only table as written before SUM and AVG, MIN and
 * MAX shared a state: each MIN and MAX item with its own extreme alone.
 * Loaded, the group carries on from both. */
static void test_extremes_apart(void)
{
    struct program *p = NULL;
    struct ivm *m = NULL;
    char *text = append_only_text();
    CHECK(program_parse(text, &p) == 0 && ivm_new(&p->views[0], &m) == 0);
    struct buf b = { 0 };
    const uint64_t head[] = { 1 | 1 << 8 | 1 << 16, 6 }; /* version 1, a base, extremes alone */
    buf_append(&b, "CKIV", 4);
    le_put(&b, head[0], 4), le_put(&b, head[1], 4), le_put(&b, 1, 8); /* one record */
    le_put(&b, 1, 1), le_put(&b, T_BIGINT, 1), le_put(&b, 1, 8);      /* group user 1 */
    le_put(&b, 2, 8);                                                 /* rows */
    const uint64_t sums[] = { 2, 12, 0, 0 }, smallest = 3, biggest = 9;
    for (int item = 0; item < 4; item++) { /* total, smallest, biggest, mean */
        if (item == 0 || item == 3) {
            for (int i = 0; i < 4; i++)
                le_put(&b, sums[i], 8);
            continue;
        }
        le_put(&b, 2, 8), le_put(&b, 1, 8); /* n, one entry */
        le_put(&b, T_BIGINT, 1), le_put(&b, item == 1 ? smallest : biggest, 8), le_put(&b, 1, 8);
    }
    le_put(&b, XXH3_64bits(b.data, b.len), 8);
    CHECK(ivm_load(m, b.data, b.len) == 0, "%s", err_msg(-EBADMSG));
    const int64_t next[] = { 0, 10, 1 };
    const char *want[] = { "1|2|12|3|9|6|", "1|3|22|3|10|7.33333333|", "1|4|23|1|10|5.75|" };
    struct value row[4];
    for (int i = 0; i < 3; i++) {
        if (next[i]) {
            to_values(&(struct input){ .user = 1, .url = "/u", .bytes = next[i] }, row);
            CHECK(ivm_change(m, row, 1) == 0 && ivm_flush(m, ignore, NULL) == 0);
        }
        struct sink rows = { .v = &p->views[0] };
        CHECK(ivm_scan(m, emit, &rows) == 0);
        CHECK(rows.out.n == 1 && !strcmp(rows.out.rows[0], want[i]), "step %d: %s", i,
              rows.out.n ? rows.out.rows[0] : "nothing");
        ms_free(&rows.out);
    }
    buf_free(&b);
    ivm_free(m);
    program_free(p);
    free(text);
}

/* A batch crafted with a valid checksum but a tombstone for the one group of
 * a view without GROUP BY: refused, nothing freed twice. */
static void test_hostile_batch(void)
{
    struct program *p = NULL;
    struct ivm *m = NULL;
    CHECK(program_parse(program_text, &p) == 0);
    const struct view *v = &p->views[2]; /* everything: no GROUP BY */
    CHECK(v->ngroup == 0 && ivm_new(v, &m) == 0);
    uint8_t b[64] = "CKIV";
    size_t n = 4;
    b[n++] = 1, b[n++] = 2, b[n++] = 0, b[n++] = 0; /* version 1, a delta */
    b[n++] = (uint8_t)v->nitems, b[n++] = 0, b[n++] = 0, b[n++] = 0;
    b[n++] = 1; /* one record */
    for (int i = 0; i < 7; i++)
        b[n++] = 0;
    b[n++] = 2; /* a tombstone, no key */
    uint64_t h = XXH3_64bits(b, n);
    for (int i = 0; i < 8; i++)
        b[n++] = (uint8_t)(h >> (8 * i));
    CHECK(ivm_load(m, b, n) == -EBADMSG);
    ivm_free(m);
    program_free(p);
}

/* A batch saved when the GROUP BY column was a VARCHAR, loaded after the
 * program made it a BIGINT: refused, naming the column, since a group's
 * block is sized by the key's types (long strings would overrun it). */
static void test_key_types_changed(void)
{
    static const char *text[2] = {
        "CREATE TABLE t (k VARCHAR, x BIGINT);\n"
        "CREATE VIEW v AS SELECT k, COUNT(*) AS n, SUM(x) AS s FROM t GROUP BY k;",
        "CREATE TABLE t (k BIGINT, x BIGINT);\n"
        "CREATE VIEW v AS SELECT k, COUNT(*) AS n, SUM(x) AS s FROM t GROUP BY k;",
    };
    struct program *before = NULL, *after = NULL;
    struct ivm *m = NULL, *again = NULL;
    struct buf batch = { 0 };
    char key[300];
    memset(key, 'k', sizeof key);
    CHECK(program_parse(text[0], &before) == 0 && program_parse(text[1], &after) == 0);
    CHECK(ivm_new(&before->views[0], &m) == 0 && ivm_new(&after->views[0], &again) == 0);
    for (int i = 0; i < 4; i++) {
        key[0] = (char)('a' + i);
        struct value row[2] = { { .t = T_VARCHAR, .len = sizeof key, .s = key },
                                { .t = T_BIGINT, .i = i } };
        CHECK(ivm_change(m, row, 1) == 0);
    }
    CHECK(ivm_flush(m, ignore, NULL) == 0 && ivm_save(m, 1, &batch) == 0);
    CHECK(ivm_load(again, batch.data, batch.len) == -EINVAL);
    CHECK(strstr(err_msg(-EINVAL), "k is a VARCHAR, not a BIGINT") != NULL, "%s", err_msg(-EINVAL));
    CHECK(ivm_groups(again) == 0, "nothing loaded");
    buf_free(&batch);
    ivm_free(m);
    ivm_free(again);
    program_free(before);
    program_free(after);
}

/* ---- BIGINT text: what strtoll took, no more and no less ---- */

static void same_as_strtoll(const char *text)
{
    char tmp[64], *end;
    struct value v;
    snprintf(tmp, sizeof tmp, "%s", text);
    errno = 0;
    long long want = strtoll(tmp, &end, 10);
    int want_ok = *text && !*end && !errno;
    int rc = value_parse(T_BIGINT, text, strlen(text), &v);
    CHECK((rc == 0) == want_ok, "'%s': rc %d, strtoll %s", text, rc, want_ok ? "took it" : "not");
    CHECK(rc || v.i == want, "'%s': %lld, strtoll %lld", text, (long long)v.i, want);
}

static void test_bigint_text(void)
{
    static const char *const texts[] = {
        "0",
        "-0",
        "+0",
        "7",
        "-7",
        "+7",
        " 12",
        "\t-3",
        "12 ",
        "1a",
        "a1",
        "-",
        "+",
        " ",
        "--1",
        "+-1",
        "0x10",
        "1e3",
        "1.0",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999",
        "000000000000000000000042",
    };
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++)
        same_as_strtoll(texts[i]);
    char text[32];
    for (unsigned i = 0; i < 100000; i++) {
        long long x =
            (long long)((uint64_t)rand() << 33 ^ (uint64_t)rand() << 11 ^ (uint64_t)rand());
        snprintf(text, sizeof text, "%lld", i & 1 ? -x : x);
        same_as_strtoll(text);
    }
}

/* BIGINT out: what printf writes, every digit count, both ends of the range. */
static void same_as_printf(int64_t x)
{
    char want[32];
    struct buf got = { 0 };
    struct value v = { .t = T_BIGINT, .i = x };
    snprintf(want, sizeof want, "%lld", (long long)x);
    CHECK(value_json(&v, &got) == 0 && got.len == strlen(want) && !strcmp((char *)got.data, want),
          "%s: got '%s'", want, got.data ? (char *)got.data : "");
    buf_free(&got);
}

static void test_bigint_json(void)
{
    for (int64_t p = 1, d = 0; d < 19; d++, p = d < 19 ? p * 10 : p)
        for (int64_t x = p - 2; x <= p + 2; x++) {
            same_as_printf(x);
            same_as_printf(-x);
        }
    same_as_printf(INT64_MAX);
    same_as_printf(INT64_MIN);
    same_as_printf(INT64_MIN + 1);
    for (unsigned i = 0; i < 100000; i++)
        same_as_printf(
            (int64_t)((uint64_t)rand() << 40 ^ (uint64_t)rand() << 20 ^ (uint64_t)rand()) >>
            (i % 60));
}

int main(void)
{
    test_bigint_text();
    test_bigint_json();
    test_hostile_batch();
    test_key_types_changed();
    test_errors();
    test_parse();
    for (unsigned seed = 1; seed <= 20; seed++) {
        test_against_sqlite(seed, 0);
        test_against_sqlite(seed, 1);
    }
    test_extremes_from_a_bag();
    test_extremes_apart();
    return check_failures ? 1 : 0;
}
