/*
 * The file connector's prepared rows (engine/input.h, struct input_prep):
 * every row passed on carries what the prep function made of it, whether
 * the parse-ahead thread parsed its line (plain CSV) or the input did
 * (quoted CSV, JSON), and a skipped line is never passed on.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "engine/input.h"
#include "util/err.h"

/* row[3] = a * 1000 + b, or NULL if either is. */
static void prep_sum(const void *ctx, struct value *row)
{
    (void)ctx;
    row[3] = row[0].t == T_NULL || row[2].t == T_NULL
                 ? (struct value){ .t = T_NULL }
                 : (struct value){ .t = T_BIGINT, .i = row[0].i * 1000 + row[2].i };
}

struct seen {
    size_t rows, quoted, wrong;
};

static int take(void *arg, const struct value *row, int weight)
{
    struct seen *s = arg;
    s->rows++;
    s->quoted += row[1].t == T_VARCHAR && row[1].len == 4 && !memcmp(row[1].s, "q,\"x", 4);
    if (weight != 1 || row[3].t != T_BIGINT || row[3].i != row[0].i * 1000 + row[2].i) {
        if (s->wrong++ < 5)
            fprintf(stderr, "row %lld: prepared %lld\n", (long long)row[0].i, (long long)row[3].i);
    }
    return 0;
}

/* Reads the file of table 0 of the program to its end. */
static struct seen read_all(const char *program)
{
    struct program *p = NULL;
    struct input *in = NULL;
    struct seen s = { 0 };
    struct input_prep prep = { prep_sum, NULL, 1 };
    CHECK(program_parse(program, &p) == 0, "%s", err_msg(-EINVAL));
    CHECK(input_open(p->tables[0], &prep, &in) == 0);
    ssize_t n;
    while ((n = input_poll(in, 5000, take, &s)) > 0)
        ;
    CHECK(n == 0, "poll: %zd", n);
    input_close(in);
    program_free(p);
    return s;
}

static void test_csv(const char *dir)
{
    char path[512], program[1024];
    snprintf(path, sizeof path, "%s/t.csv", dir);
    FILE *f = fopen(path, "w");
    size_t want = 0, quoted = 0;
    for (int i = 0; i < 60000; i++) { /* 700 KiB: several blocks parsed ahead */
        if (i % 1000 == 999)
            fputs("\n", f); /* blank: no row */
        else if (i % 9973 == 500)
            fputs("zz,y,1\n", f); /* malformed: skipped */
        else if (i % 100 == 42)
            fprintf(f, "%d,\"q,\"\"x\",%d\n", i, 2 * i), want++, quoted++;
        else
            fprintf(f, "%d,/page/%d,%d\n", i, i % 64, 2 * i), want++;
    }
    fclose(f);
    snprintf(program, sizeof program,
             "CREATE TABLE t (a BIGINT, s VARCHAR, b BIGINT) WITH ('connector' = 'file', "
             "'path' = '%s', 'format' = 'csv', 'on_error' = 'skip');",
             path);
    struct seen s = read_all(program);
    CHECK(s.rows == want && s.quoted == quoted, "%zu rows (%zu quoted), want %zu (%zu)", s.rows,
          s.quoted, want, quoted);
    CHECK(s.wrong == 0, "%zu rows prepared wrong", s.wrong);
}

static void test_json(const char *dir)
{
    char path[512], program[1024];
    snprintf(path, sizeof path, "%s/t.jsonl", dir);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 50; i++)
        fprintf(f, "{\"insert\": {\"a\": %d, \"s\": \"x\", \"b\": %d}}\n", i, 7 * i);
    fclose(f);
    snprintf(program, sizeof program,
             "CREATE TABLE t (a BIGINT, s VARCHAR, b BIGINT) WITH ('connector' = 'file', "
             "'path' = '%s', 'format' = 'json');",
             path);
    struct seen s = read_all(program);
    CHECK(s.rows == 50 && s.wrong == 0, "%zu rows, %zu prepared wrong", s.rows, s.wrong);
}

int main(void)
{
    char dir[] = "/tmp/test_input.XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    test_csv(dir);
    test_json(dir);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    return check_failures ? 1 : 0;
}
