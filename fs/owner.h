/*
 * The owner object, PREFIX/owner: who writes to this bucket. One writable
 * mount at a time: a second one is refused, naming the holder, unless the
 * holder's heartbeat stopped and --force is given. The format (JSON):
 *
 *   {"format": 1, "mount_id": "...", "host": "...", "pid": 123,
 *    "epoch": 1, "heartbeat": UNIX_SECONDS, "lease": SECONDS}
 *
 * The holder rewrites it every lease/3 seconds; a heartbeat older than the
 * lease means the holder is gone (or cut off).
 */
#ifndef CKPT_FS_OWNER_H
#define CKPT_FS_OWNER_H

#include <stdint.h>

#include "cache/store.h"

#define OWNER_KEY   "owner"
#define OWNER_LEASE 30

struct owner_claim {
    char mount_id[64]; /* this mount's id (kept in its cache directory) */
    uint64_t epoch;    /* in: the epoch to hold; out: the epoch held */
    int force;         /* take over from a holder whose heartbeat stopped */
    int if_absent;     /* the server honours conditional puts: claim a free bucket atomically */
};

/* Takes ownership, or fails with -EBUSY naming the holder. A holder with
 * our mount_id is ourselves, restarted: we carry on with its epoch. Taking
 * over with force raises the epoch. */
int owner_acquire(struct store *s, struct owner_claim *c);

/* Takes the bucket over whoever holds it, heartbeat or not (a promotion):
 * the epoch becomes one above both the holder's and c->epoch. */
int owner_seize(struct store *s, struct owner_claim *c);

/* 0 if the bucket is still ours (or held by nobody, or by a writer of a
 * lower epoch); -ESTALE, naming the holder, if another mount holds it with
 * an epoch at least ours. */
int owner_check(struct store *s, const struct owner_claim *c);

/* Rewrites the heartbeat. -ESTALE (with a message) if someone else holds it now. */
int owner_heartbeat(struct store *s, const struct owner_claim *c);

/* Gives ownership up (deletes the object if it is still ours). */
int owner_release(struct store *s, const struct owner_claim *c);

#endif
