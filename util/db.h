/*
 * One SQLite database (the cache directory's meta.db) shared by the modules
 * that keep tables in it: fs/namespace.c, cache/blocks.c, cache/remote.c.
 *
 * SQLite allows one writer at a time, so there is one writer connection and
 * one mutex around its use (db_lock); a module prepares its statements on
 * it at open time and uses them only under the lock. Readers that must not
 * block the writer (the snapshot publisher) open their own connection with
 * db_open_reader and see a consistent snapshot per read transaction (WAL).
 *
 * Durability: commits are not fsynced (synchronous=NORMAL in WAL mode: they
 * survive a crash of the process, not of the machine); db_sync() makes
 * everything committed so far durable, which is what fsync() promises.
 */
#ifndef CKPT_UTIL_DB_H
#define CKPT_UTIL_DB_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

struct db;

/* Opens (creating if needed) the database at path in WAL mode.
 * Returns 0 and *out, or -EIO with a message. */
int db_open(const char *path, struct db **out);
void db_close(struct db *db);

/* A read-only connection to the same file, for long consistent reads. */
int db_open_reader(const char *path, sqlite3 **out);

sqlite3 *db_handle(struct db *db);
void db_lock(struct db *db);
void db_unlock(struct db *db);

/* Runs SQL without results (schema, BEGIN, COMMIT). Caller holds the lock. */
int db_exec(struct db *db, const char *sql);

/* Prepares a statement for the life of the connection. Returns 0 or -EIO. */
int db_prepare(struct db *db, const char *sql, sqlite3_stmt **out);

/* Steps a statement to completion (no rows expected) and resets it. Returns
 * 0, -EEXIST for a constraint violation, or -EIO with a message. */
int db_run(sqlite3_stmt *st);

/* Whether table has that column (a cache made by an older version may not). */
int db_has_column(struct db *db, const char *table, const char *column);

/* Makes every committed transaction durable (fsyncs the WAL). Takes the lock. */
int db_sync(struct db *db);

/* The meta table: small facts about the cache (its URL, the last snapshot).
 * get returns 0, -ENOENT if absent; the text form copies at most n bytes. */
int db_meta_get_int(struct db *db, const char *key, int64_t *value);
int db_meta_set_int(struct db *db, const char *key, int64_t value);
int db_meta_get_text(struct db *db, const char *key, char *value, size_t n);
int db_meta_set_text(struct db *db, const char *key, const char *value);

/* A message for a failed SQLite call; returns -EIO (or -ENOSPC, -ENOMEM). */
int db_fail(sqlite3 *h, int rc, const char *what);

#endif
