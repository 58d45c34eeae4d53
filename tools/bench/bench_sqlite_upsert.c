/*
 * The SQLite side of the engine benchmark: the view of bytes per user kept
 * by one UPSERT per input record, as a program without an incremental
 * engine would keep it. Reads CSV lines (user_id,url,bytes) on stdin; prints
 * {"records": N, "seconds": S, "groups": G} as JSON.
 *
 *   bench_sqlite_upsert DB < clicks.csv
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The CSV's third field (bytes); -1 if empty (NULL). */
static long long bytes_of(const char *line, long long *user)
{
    char *end;
    *user = strtoll(line, &end, 10);
    const char *p = strrchr(line, ',');
    return p && p[1] && p[1] != '\n' ? strtoll(p + 1, NULL, 10) : -1;
}

int main(int argc, char **argv)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    if (argc != 2 || sqlite3_open(argv[1], &db) != SQLITE_OK) {
        fprintf(stderr, "usage: bench_sqlite_upsert DB < clicks.csv\n");
        return 2;
    }
    sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                     "CREATE TABLE agg(user_id INTEGER PRIMARY KEY, n INTEGER, total INTEGER,"
                     " smallest INTEGER, biggest INTEGER); BEGIN",
                 NULL, NULL, NULL);
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO agg VALUES (?1, 1, ?2, ?2, ?2) ON CONFLICT(user_id) DO "
                           "UPDATE SET n = n + 1, total = total + ?2, smallest = min(smallest, "
                           "?2), biggest = max(biggest, ?2)",
                           -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "%s\n", sqlite3_errmsg(db));
        return 1;
    }
    char line[4096];
    long long records = 0, user;
    double t0 = now();
    while (fgets(line, sizeof line, stdin)) {
        long long b = bytes_of(line, &user);
        records++;
        if (b <= 0) /* WHERE bytes > 0 */
            continue;
        sqlite3_bind_int64(st, 1, user);
        sqlite3_bind_int64(st, 2, b);
        sqlite3_step(st);
        sqlite3_reset(st);
    }
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    double secs = now() - t0;
    sqlite3_stmt *count;
    sqlite3_prepare_v2(db, "SELECT count(*) FROM agg", -1, &count, NULL);
    sqlite3_step(count);
    printf("{\"records\": %lld, \"seconds\": %.3f, \"groups\": %lld}\n", records, secs,
           (long long)sqlite3_column_int64(count, 0));
    sqlite3_finalize(count);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return 0;
}
