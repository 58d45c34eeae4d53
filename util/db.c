#include "db.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "err.h"

struct db {
    sqlite3 *h;
    pthread_mutex_t lock;
    sqlite3_stmt *sync_touch;
};

int db_fail(sqlite3 *h, int rc, const char *what)
{
    int err = rc == SQLITE_FULL ? -ENOSPC : rc == SQLITE_NOMEM ? -ENOMEM : -EIO;
    return err_set(err, "%s: SQLite: %s", what, h ? sqlite3_errmsg(h) : sqlite3_errstr(rc));
}

static int configure(sqlite3 *h)
{
    /* WAL: readers never block the writer. NORMAL: a commit survives the
     * process dying; db_sync() is the point where it also survives the machine. */
    static const char *const pragmas[] = {
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=NORMAL",
        "PRAGMA busy_timeout=10000",
        "PRAGMA foreign_keys=OFF",
    };
    for (size_t i = 0; i < sizeof pragmas / sizeof pragmas[0]; i++) {
        int rc = sqlite3_exec(h, pragmas[i], NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            return db_fail(h, rc, pragmas[i]);
    }
    return 0;
}

int db_open(const char *path, struct db **out)
{
    struct db *db = calloc(1, sizeof *db);
    if (!db)
        return -ENOMEM;
    int rc = sqlite3_open_v2(
        path, &db->h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    rc = rc == SQLITE_OK ? configure(db->h) : db_fail(db->h, rc, path);
    if (rc == 0)
        rc = db_exec(db, "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value)");
    if (rc == 0)
        rc = db_prepare(db, "INSERT OR REPLACE INTO meta(key, value) VALUES('synced', 1)",
                        &db->sync_touch);
    if (rc) {
        err_wrap(rc, "cache database %s", path);
        db_close(db);
        return rc;
    }
    pthread_mutex_init(&db->lock, NULL);
    *out = db;
    return 0;
}

void db_close(struct db *db)
{
    if (!db)
        return;
    sqlite3_finalize(db->sync_touch);
    /* Statements the modules prepared are finalized by them before this. */
    sqlite3_close_v2(db->h);
    pthread_mutex_destroy(&db->lock);
    free(db);
}

int db_open_reader(const char *path, sqlite3 **out)
{
    int rc = sqlite3_open_v2(path, out, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(*out, "PRAGMA busy_timeout=10000", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        int err = db_fail(*out, rc, path);
        sqlite3_close_v2(*out);
        *out = NULL;
        return err;
    }
    return 0;
}

sqlite3 *db_handle(struct db *db)
{
    return db->h;
}

void db_lock(struct db *db)
{
    pthread_mutex_lock(&db->lock);
}

void db_unlock(struct db *db)
{
    pthread_mutex_unlock(&db->lock);
}

int db_exec(struct db *db, const char *sql)
{
    int rc = sqlite3_exec(db->h, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : db_fail(db->h, rc, sql);
}

int db_prepare(struct db *db, const char *sql, sqlite3_stmt **out)
{
    int rc = sqlite3_prepare_v3(db->h, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL);
    return rc == SQLITE_OK ? 0 : db_fail(db->h, rc, sql);
}

int db_has_column(struct db *db, const char *table, const char *column)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db->h, "SELECT 1 FROM pragma_table_info(?) WHERE name = ?", -1, &st,
                           NULL) != SQLITE_OK)
        return 0;
    sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, column, -1, SQLITE_STATIC);
    int found = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return found;
}

int db_run(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_DONE || rc == SQLITE_ROW)
        return 0;
    if ((rc & 0xff) == SQLITE_CONSTRAINT)
        return -EEXIST;
    return db_fail(sqlite3_db_handle(st), rc, sqlite3_sql(st));
}

int db_sync(struct db *db)
{
    /* A commit with synchronous=FULL fsyncs the WAL, and with it every
     * earlier commit: one fsync makes all of them durable. */
    db_lock(db);
    int rc = db_exec(db, "PRAGMA synchronous=FULL");
    if (rc == 0)
        rc = db_run(db->sync_touch);
    int rc2 = db_exec(db, "PRAGMA synchronous=NORMAL");
    db_unlock(db);
    return rc ? rc : rc2;
}

/* ---- the meta table ---- */

static int meta_get(struct db *db, const char *key, sqlite3_stmt **out)
{
    int rc = sqlite3_prepare_v2(db->h, "SELECT value FROM meta WHERE key = ?", -1, out, NULL);
    if (rc != SQLITE_OK)
        return db_fail(db->h, rc, "meta");
    sqlite3_bind_text(*out, 1, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(*out);
    if (rc == SQLITE_ROW)
        return 0;
    int err = rc == SQLITE_DONE ? -ENOENT : db_fail(db->h, rc, "meta");
    sqlite3_finalize(*out);
    return err;
}

static int meta_set(struct db *db, const char *key, const char *text, int64_t value)
{
    sqlite3_stmt *s;
    db_lock(db);
    int rc = sqlite3_prepare_v2(db->h, "INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", -1,
                                &s, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
        if (text)
            sqlite3_bind_text(s, 2, text, -1, SQLITE_STATIC);
        else
            sqlite3_bind_int64(s, 2, value);
        rc = db_run(s);
        sqlite3_finalize(s);
    } else {
        rc = db_fail(db->h, rc, "meta");
    }
    db_unlock(db);
    return rc;
}

int db_meta_get_int(struct db *db, const char *key, int64_t *value)
{
    sqlite3_stmt *s;
    db_lock(db);
    int rc = meta_get(db, key, &s);
    if (rc == 0) {
        *value = sqlite3_column_int64(s, 0);
        sqlite3_finalize(s);
    }
    db_unlock(db);
    return rc;
}

int db_meta_set_int(struct db *db, const char *key, int64_t value)
{
    return meta_set(db, key, NULL, value);
}

int db_meta_get_text(struct db *db, const char *key, char *value, size_t n)
{
    sqlite3_stmt *s;
    db_lock(db);
    int rc = meta_get(db, key, &s);
    if (rc == 0) {
        const unsigned char *t = sqlite3_column_text(s, 0);
        snprintf(value, n, "%s", t ? (const char *)t : "");
        sqlite3_finalize(s);
    }
    db_unlock(db);
    return rc;
}

int db_meta_set_text(struct db *db, const char *key, const char *value)
{
    return meta_set(db, key, value, 0);
}
