/*
 * Start-up of a writable mount: everything between "the command line is
 * good" and "the FUSE session may start", in an order that reads before it
 * writes, so a wrong URL, wrong credentials or a foreign prefix fail with a
 * clear message and nothing written:
 *
 *   1. the marker object PREFIX/ckptfs says this prefix is ckptfs's (format,
 *      block size, encryption); a prefix without it must be empty, and then
 *      gets one;
 *   2. the server's capabilities (conditional put) are probed;
 *   3. the cache directory is opened (or created), and must belong to URL;
 *   4. ownership is claimed (owner.h);
 *   5. a new cache starts from the newest snapshot in the bucket; if there
 *      is none and --seed-from names a seed, from the seed's (seed.h), whose
 *      block size the marker of step 1 then takes.
 *
 * A read-only mount does 1 (the marker must exist), 3, and 5 (the newest
 * snapshot, loaded again if the cache holds an older one), and no more: it
 * sends no write request of any kind.
 */
#ifndef CKPT_FS_BOOTSTRAP_H
#define CKPT_FS_BOOTSTRAP_H

#include "fs/fs.h"
#include "fs/owner.h"
#include "fs/publisher.h"

#define MARKER_KEY       "ckptfs"
#define MARKER_MIN_BLOCK ((size_t)64 << 10) /* block sizes are multiples of it */
#define MARKER_MAX_BLOCK ((size_t)64 << 20)

struct bootstrap {
    int force; /* --force */
    struct owner_claim claim;
    struct publisher_options pub;
};

/* Fills fs (whose url, cache_dir, store and codec are set) and b. On error
 * everything opened is closed again (bootstrap_close). */
int bootstrap_open(struct fs *fs, struct bootstrap *b);

/* A follower becomes the writer (writer.h, promotion step 2): takes the
 * bucket over with an epoch above the holder's and the newest snapshot's,
 * and makes its cache a writer's, its publisher's first snapshot the new
 * epoch's first. */
int bootstrap_promote(struct fs *fs, struct bootstrap *b, int *seized);

/* Reads and checks the marker of the bucket at url: its block size into
 * *block_size. -ENOENT (said) if there is none; -EINVAL if encrypted (a key
 * given) does not match the bucket; -EBADMSG, -EPROTONOSUPPORT if the marker
 * is not one this build reads. */
int marker_read(struct store *s, const char *url, int encrypted, size_t *block_size);

/* Closes what bootstrap_open opened (NULL-safe field by field). */
void bootstrap_close(struct fs *fs);

#endif
