/*
 * The publisher: one thread that turns the mount's changes into snapshots in
 * the bucket — at least every interval while something changed, at once
 * when asked (fsync with --sync=remote, --publish-on, ckptctl sync,
 * unmount). Callers asking together share one publish.
 */
#ifndef CKPT_FS_PUBLISHER_H
#define CKPT_FS_PUBLISHER_H

#include <stdint.h>

#include "fs/fs.h"
#include "fs/owner.h"
#include "fs/retention.h"
#include "fs/snapshot.h"

struct publisher;

struct publisher_options {
    unsigned interval_ms;            /* publish at least this often while changed */
    struct snapshot_id next;         /* the id the first snapshot gets */
    int if_absent;                   /* create snapshot keys with If-None-Match: * */
    int pending;                     /* the cache holds changes no snapshot has (an unclean stop) */
    struct retention keep;           /* old snapshots deleted after each publish */
    const struct owner_claim *claim; /* checked before each publish (fencing), if not NULL */
};

int publisher_start(struct fs *fs, const struct publisher_options *opt, struct publisher **out);

/* Returns once a snapshot holding every change made before the call is in
 * the bucket (or there was nothing to publish), or with the error that
 * stopped it. p NULL (a read-only mount): -EROFS. */
int publisher_sync(struct publisher *p);

/* Asks for a publish soon, without waiting for it. */
void publisher_kick(struct publisher *p);

/* Another mount holds the bucket now (why: -ESTALE with its message): no
 * more snapshots from this one, which turns read-only; every publish from
 * now on fails with that error. Logged once. NULL-safe. */
void publisher_fence(struct publisher *p, int why);

/* Publishes what is left (as publisher_sync), then stops the thread.
 * Returns the last publish's result. */
int publisher_stop(struct publisher *p);

struct publisher_status {
    struct snapshot_id last; /* the newest snapshot published ({0,0}: none yet) */
    int64_t last_ns;         /* when (realtime), 0 if never */
    uint64_t published;      /* snapshots published by this mount */
    int publishing;          /* a publish is under way */
    int64_t last_error_ns;   /* when the last failure happened, 0 if none since success */
    int fenced;              /* another mount took the bucket over (last_error says which) */
    char last_error[256];
};

void publisher_get_status(struct publisher *p, struct publisher_status *st);

#endif
