/*
 * Start-up of a writable mount (order and reasons in bootstrap.h).
 *
 * The marker object, PREFIX/ckptfs (JSON, format 1):
 *   {"format": 1, "block_size": 4194304, "encrypted": false}
 * Every mount of the prefix must agree with it: same block size (chunks
 * are blocks), and a key exactly when the bucket is encrypted.
 *
 * The cache directory's meta table keeps: url, mount_id, epoch, seq (the
 * last snapshot published from it), clean (1 after an unmount that
 * published everything).
 */
#include "bootstrap.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs/seed.h"
#include "fs/snapshot.h"
#include "util/err.h"
#include "util/hex.h"
#include "util/log.h"
#include "util/paths.h"

/* ---- 1. the marker ---- */

static int read_marker(const char *url, const struct buf *b, int encrypted, size_t *block_size)
{
    json_error_t jerr;
    json_t *j = json_loadb((const char *)b->data, b->len, 0, &jerr);
    json_int_t format = 0, bs = 0;
    int enc = 0;
    int rc = 0;
    if (!j ||
        json_unpack(j, "{s:I, s:I, s:b}", "format", &format, "block_size", &bs, "encrypted", &enc))
        rc = err_set(-EBADMSG, "%s/%s is not a ckptfs marker (%s)", url, MARKER_KEY,
                     j ? "fields missing" : jerr.text);
    else if (format != 1)
        rc = err_set(-EPROTONOSUPPORT, "%s uses ckptfs format %lld; this build reads format 1", url,
                     (long long)format);
    else if (bs < (json_int_t)MARKER_MIN_BLOCK || bs > (json_int_t)MARKER_MAX_BLOCK ||
             bs % (json_int_t)MARKER_MIN_BLOCK)
        rc = err_set(-EBADMSG, "%s/%s names an impossible block size %lld", url, MARKER_KEY,
                     (long long)bs);
    else if (enc && !encrypted)
        rc = err_set(-EINVAL, "%s is encrypted: mount it with --encrypt-key FILE", url);
    else if (!enc && encrypted)
        rc = err_set(-EINVAL, "%s is not encrypted, but --encrypt-key was given", url);
    *block_size = (size_t)bs;
    json_decref(j);
    return rc;
}

static int stop_at_first(void *arg, const struct store_object *o)
{
    snprintf(arg, 256, "%s", o->key);
    return 1;
}

static int write_marker(struct fs *fs, int encrypted, size_t block_size)
{
    char first[256] = "";
    int rc = store_list(fs->store, "", stop_at_first, first);
    if (rc < 0)
        return rc;
    if (first[0])
        return err_set(-EEXIST,
                       "%s holds objects that are not ckptfs's (such as '%s'): mount an empty "
                       "bucket or prefix",
                       fs->url, first);
    json_t *j = json_pack("{s:i, s:I, s:b}", "format", 1, "block_size", (json_int_t)block_size,
                          "encrypted", encrypted);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    rc = text ? store_put(fs->store, MARKER_KEY, text, strlen(text), 0) : -ENOMEM;
    free(text);
    json_decref(j);
    return rc;
}

int marker_read(struct store *s, const char *url, int encrypted, size_t *block_size)
{
    struct buf b = { 0 };
    int rc = store_get(s, MARKER_KEY, 0, 4096, &b);
    if (rc == 0)
        rc = read_marker(url, &b, encrypted, block_size);
    else if (rc == -ENOENT)
        rc = err_set(-ENOENT, "%s holds no ckptfs data (no %s object)", url, MARKER_KEY);
    buf_free(&b);
    return rc;
}

/* A read-only mount needs the marker; a writable one writes it into an
 * empty prefix, with blocks of *block_size bytes (0: the default). */
static int check_marker(struct fs *fs, int encrypted, size_t *block_size)
{
    size_t fresh = *block_size ? *block_size : BLOCKS_DEFAULT_SIZE;
    int rc = marker_read(fs->store, fs->url, encrypted, block_size);
    if (rc == -ENOENT && !fs->read_only)
        rc = write_marker(fs, encrypted, *block_size = fresh);
    return rc;
}

/* ---- 3. the cache directory ---- */

/* Returns 1 for a new cache, 0 for one of ours, or an error. A cache serves
 * one URL, in one role: a read-only mount's tables are a snapshot's copy, a
 * writer's are the truth. */
static int open_cache(struct fs *fs, char *mount_id, size_t n)
{
    char url[4096], role[8];
    const char *want = fs->read_only ? "ro" : "rw";
    int rc = make_dirs(fs->cache_dir, 0700, 1);
    if (rc == 0 && asprintf(&fs->db_path, "%s/meta.db", fs->cache_dir) < 0)
        rc = -ENOMEM;
    if (rc == 0)
        rc = db_open(fs->db_path, &fs->db);
    if (rc)
        return rc;
    rc = db_meta_get_text(fs->db, "url", url, sizeof url);
    if (rc == 0 && strcmp(url, fs->url) != 0)
        return err_set(-EINVAL,
                       "cache directory %s belongs to %s, not %s: give another --cache-dir",
                       fs->cache_dir, url, fs->url);
    int fresh = rc == -ENOENT;
    if (rc && !fresh)
        return rc;
    if (!fresh && db_meta_get_text(fs->db, "role", role, sizeof role) == 0 && strcmp(role, want))
        return err_set(-EINVAL,
                       "cache directory %s belongs to a %s mount: give another --cache-dir",
                       fs->cache_dir, strcmp(role, "ro") ? "writable" : "read-only");
    if ((rc = db_meta_set_text(fs->db, "role", want)) != 0)
        return rc;
    if (db_meta_get_text(fs->db, "mount_id", mount_id, n) == -ENOENT) {
        uint8_t r[8] = { 0 };
        if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
            return err_set(-EIO, "no randomness for a mount id");
        hex_encode(r, sizeof r, mount_id);
        rc = db_meta_set_text(fs->db, "mount_id", mount_id);
    }
    return rc ? rc : fresh;
}

static void delete_orphan(void *arg, uint64_t ino)
{
    struct fs *fs = arg;
    if (blocks_remove(fs->blocks, ino) == 0)
        ns_delete_inode(fs->ns, ino);
}

static int open_tables(struct fs *fs, size_t block_size)
{
    int rc = ns_open(fs->db, (uint32_t)getuid(), (uint32_t)getgid(), &fs->ns);
    if (rc == 0)
        rc = remote_open(fs->store, fs->codec, fs->db, &fs->remote);
    if (rc == 0) {
        char data[4096];
        snprintf(data, sizeof data, "%s", fs->cache_dir);
        struct blocks_options opt = fs->cache;
        opt.block_size = block_size;
        rc = blocks_open(fs->db, fs->remote, data, &opt, &fs->blocks);
    }
    if (rc == 0) /* files unlinked while open when the last run died */
        rc = ns_orphans(fs->ns, delete_orphan, fs);
    return rc;
}

/* ---- 5. the tree ---- */

static int load_snapshot(struct fs *fs, struct snapshot_id id)
{
    struct buf plain = { 0 };
    struct snapshot_info info;
    int rc = snapshot_fetch(fs->store, fs->codec, id, &plain);
    if (rc == 0)
        rc = snapshot_load(&plain, fs->db, fs->ns, fs->blocks, &info);
    buf_free(&plain);
    if (rc == 0)
        log_info("starting from snapshot %08llx-%012llx: %llu files, %llu bytes",
                 (unsigned long long)id.epoch, (unsigned long long)id.seq,
                 (unsigned long long)info.inodes, (unsigned long long)info.bytes);
    return rc;
}

/* Where the tree comes from, and which snapshot id comes next. */
static int settle_tree(struct fs *fs, struct bootstrap *b, int fresh)
{
    struct snapshot_id latest = { 0, 0 }, ours = { 0, 0 };
    int64_t v;
    int rc = snapshot_latest(fs->store, &latest);
    int have_latest = rc == 0;
    if (rc && rc != -ENOENT)
        return rc;
    if (!fresh && db_meta_get_int(fs->db, "epoch", &v) == 0)
        ours.epoch = (uint64_t)v;
    if (!fresh && db_meta_get_int(fs->db, "seq", &v) == 0)
        ours.seq = (uint64_t)v;
    if (fresh && have_latest && (rc = load_snapshot(fs, latest)) != 0)
        return rc;
    if (!fresh && have_latest && snapshot_newer(latest, ours) && latest.epoch >= b->claim.epoch)
        return err_set(-ESTALE,
                       "%s has snapshot %08llx-%012llx, newer than any this cache published: "
                       "another writer used the bucket; mount with a fresh --cache-dir",
                       fs->url, (unsigned long long)latest.epoch, (unsigned long long)latest.seq);
    uint64_t seq = ours.seq;
    if (have_latest && latest.epoch == b->claim.epoch && latest.seq > seq)
        seq = latest.seq;
    b->pub.next = (struct snapshot_id){ b->claim.epoch, seq + 1 };
    return 0;
}

static int remember(struct fs *fs, const struct bootstrap *b, int fresh)
{
    int64_t clean = 0;
    int rc = db_meta_set_text(fs->db, "url", fs->url);
    if (rc == 0)
        rc = db_meta_set_int(fs->db, "epoch", (int64_t)b->claim.epoch);
    if (rc == 0 && !fresh && db_meta_get_int(fs->db, "clean", &clean) != 0)
        clean = 0;
    if (rc == 0)
        rc = db_meta_set_int(fs->db, "clean", 0); /* until an unmount publishes everything */
    return rc ? rc : fresh ? 0 : clean != 1;
}

/* The snapshot a read-only mount shows: --snapshot's if it exists, else
 * the newest; -ENOENT if the bucket has none. */
static int shown(struct fs *fs, struct snapshot_id *id)
{
    if (!fs->pinned)
        return snapshot_latest(fs->store, id);
    char key[SNAPSHOT_KEY_LEN], text[SNAPSHOT_ID_LEN];
    struct store_object o;
    snapshot_key(fs->snapshot, key);
    snapshot_id_text(fs->snapshot, text);
    int rc = store_head(fs->store, key, &o);
    if (rc == -ENOENT)
        return err_set(-ESRCH, "%s has no snapshot %s (ckptctl snapshots lists them)", fs->url,
                       text);
    *id = fs->snapshot;
    return rc;
}

/* A read-only mount shows its snapshot: loaded anew when it is not the one
 * the cache holds, and never a write to the bucket. */
static int open_read_only(struct fs *fs, struct bootstrap *b)
{
    size_t block_size = 0;
    char loaded[64] = "", want[SNAPSHOT_ID_LEN] = "";
    struct snapshot_id id;
    int rc = check_marker(fs, fs->codec_keyed, &block_size);
    int fresh = rc ? rc : open_cache(fs, b->claim.mount_id, sizeof b->claim.mount_id);
    rc = fresh < 0 ? fresh : open_tables(fs, block_size);
    int found = rc ? rc : shown(fs, &id);
    if (found == 0) {
        snapshot_id_text(id, want);
        db_meta_get_text(fs->db, "loaded", loaded, sizeof loaded);
    }
    rc = found == -ENOENT ? 0 : found;
    if (rc == 0 && found == 0 && strcmp(loaded, want) != 0)
        rc = load_snapshot(fs, id);
    if (rc == 0 && found == 0)
        rc = db_meta_set_text(fs->db, "loaded", want);
    if (rc == 0)
        rc = db_meta_set_text(fs->db, "url", fs->url);
    if (rc)
        bootstrap_close(fs);
    return rc;
}

/* --seed-from: 1 if the tree came from the seed, 0 if it is not used (the
 * cache is not new, or our bucket has snapshots of its own already). */
static int seed_if_new(struct fs *fs, int fresh)
{
    struct snapshot_id ours;
    if (!fs->seed_url || !fresh)
        return 0;
    int rc = snapshot_latest(fs->store, &ours);
    if (rc == 0)
        log_warn("%s has snapshots of its own: --seed-from %s is not used", fs->url, fs->seed_url);
    if (rc != -ENOENT)
        return rc;
    rc = seed_tree(fs);
    return rc ? rc : 1;
}

/* Step 2: what the server can do, said at mount time when it matters. */
static int probe_caps(struct fs *fs)
{
    int rc = store_probe(fs->store, &fs->caps);
    if (rc == 0 && !(fs->caps & STORE_CAP_IF_ABSENT))
        log_warn("the server does not honour conditional puts (If-None-Match): two writers "
                 "could publish one snapshot sequence; ckptfs relies on the owner object and "
                 "epochs alone");
    return rc;
}

static int open_writable(struct fs *fs, struct bootstrap *b)
{
    size_t block_size = fs->block_size;
    int rc = fs->seed_url ? seed_block_size(fs, &block_size) : 0;
    if (rc == 0 && fs->seed_url && fs->block_size && fs->block_size != block_size)
        rc = err_set(-EINVAL, "--block-size %zu differs from the seed's %zu-byte blocks",
                     fs->block_size, block_size);
    if (rc == 0)
        rc = check_marker(fs, fs->codec_keyed, &block_size);
    if (rc == 0 && fs->block_size && fs->block_size != block_size)
        rc = err_set(-EINVAL,
                     "--block-size %zu differs from the %zu-byte blocks %s was created with",
                     fs->block_size, block_size, fs->url);
    if (rc == 0)
        rc = probe_caps(fs);
    int fresh = rc ? rc : open_cache(fs, b->claim.mount_id, sizeof b->claim.mount_id);
    rc = fresh < 0 ? fresh : 0;
    if (rc == 0) {
        int64_t epoch = 1;
        db_meta_get_int(fs->db, "epoch", &epoch);
        b->claim.epoch = (uint64_t)epoch;
        b->claim.force = b->force;
        b->claim.if_absent = (fs->caps & STORE_CAP_IF_ABSENT) != 0;
        rc = owner_acquire(fs->store, &b->claim);
    }
    int owned = rc == 0;
    if (rc == 0)
        rc = open_tables(fs, block_size);
    int seeded = rc ? rc : seed_if_new(fs, fresh);
    rc = seeded < 0 ? seeded : 0;
    if (rc == 0)
        rc = settle_tree(fs, b, fresh);
    int pending = rc ? rc : remember(fs, b, fresh);
    if (pending < 0) {
        if (owned) { /* give the bucket back: this mount never started */
            char keep[512];
            snprintf(keep, sizeof keep, "%s", err_msg(pending));
            owner_release(fs->store, &b->claim);
            err_set(pending, "%s", keep);
        }
        bootstrap_close(fs);
        return pending;
    }
    b->pub.pending = pending || seeded; /* a seeded tree is published as ours at once */
    b->pub.if_absent = b->claim.if_absent;
    return 0;
}

int bootstrap_promote(struct fs *fs, struct bootstrap *b, int *seized)
{
    struct snapshot_id latest = { 0, 0 };
    int rc = probe_caps(fs);
    *seized = 0;
    if (rc == 0 && (rc = snapshot_latest(fs->store, &latest)) == -ENOENT)
        rc = 0;
    if (rc == 0) {
        b->claim.epoch = latest.epoch;
        b->claim.if_absent = (fs->caps & STORE_CAP_IF_ABSENT) != 0;
        rc = owner_seize(fs->store, &b->claim);
        *seized = rc == 0;
    }
    if (rc == 0)
        rc = db_meta_set_text(fs->db, "role", "rw");
    if (rc == 0)
        rc = db_meta_set_int(fs->db, "epoch", (int64_t)b->claim.epoch);
    if (rc == 0)
        rc = db_meta_set_int(fs->db, "seq", 0);
    if (rc == 0)
        rc = db_meta_set_int(fs->db, "clean", 0);
    b->pub.next = (struct snapshot_id){ b->claim.epoch, 1 };
    b->pub.pending = 1; /* the new epoch's first snapshot goes out at once */
    b->pub.if_absent = b->claim.if_absent;
    return rc;
}

int bootstrap_open(struct fs *fs, struct bootstrap *b)
{
    return fs->read_only ? open_read_only(fs, b) : open_writable(fs, b);
}

void bootstrap_close(struct fs *fs)
{
    blocks_close(fs->blocks);
    remote_close(fs->remote);
    ns_close(fs->ns);
    db_close(fs->db);
    free(fs->db_path);
    fs->db_path = NULL;
    fs->blocks = NULL;
    fs->remote = NULL;
    fs->ns = NULL;
    fs->db = NULL;
}
