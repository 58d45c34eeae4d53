/*
 * The object-store interface: the one way the cache reaches a bucket.
 *
 * A store is a flat namespace of objects named by keys. Keys are relative to
 * the URL's prefix, use '/' as a separator, and have no empty, "." or ".."
 * segments (the file backend maps them to paths; S3 does not care, but one
 * rule for both keeps the backends interchangeable).
 *
 * store_open() composes a backend with the layers above it, as s3backer does:
 *
 *     caller ─▶ store.c (multipart split, batching, paging)
 *            ─▶ retry.c (backoff with jitter, per-operation accounting)
 *            ─▶ s3.c | filestore.c (one request per call)
 *
 * Every function is thread-safe; a store is meant to be shared by all the
 * threads of a process.
 *
 * Errors: every int-returning function returns 0 on success or a negative
 * errno, and sets the thread's message (util/err.h) to a one-line account
 * that names the key, the bucket or server, and the cause. The errnos a
 * caller can branch on:
 *
 *   -ENOENT      no such key
 *   -ENXIO       no such bucket (or the file backend's root directory is missing)
 *   -EEXIST      STORE_IF_ABSENT and the key exists (HTTP 412)
 *   -ENOTSUP     the server does not implement what was asked (HTTP 501)
 *   -EACCES      refused: bad credentials, bad signature, no permission, TLS failure
 *   -EINVAL      a malformed key or URL, or a request the server rejected (other 4xx)
 *   -ERANGE      a byte range starting past the end of the object
 *   -EBADMSG     the server's answer could not be understood, or a body was damaged
 *   -EAGAIN      a transient failure (5xx, 429, SlowDown, network) that outlived the retries
 *   -ENOSPC      the file backend's disk is full
 *   -ENOMEM      out of memory
 *   -EIO         anything else
 *
 * A large put that fails can leave an unfinished multipart upload behind
 * (always when a retried start lost its answer, see retry.c); a bucket
 * lifecycle rule AbortIncompleteMultipartUpload reclaims such parts.
 */
#ifndef CKPT_CACHE_STORE_H
#define CKPT_CACHE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

struct store;

enum store_addressing { STORE_ADDR_AUTO, STORE_ADDR_PATH, STORE_ADDR_VIRTUAL };

/* How to reach and treat a store. Zero fields take the documented defaults,
 * so `struct store_options o = { 0 };` is a valid configuration. */
struct store_options {
    const char *endpoint;         /* scheme://host[:port]; default $AWS_ENDPOINT_URL, else AWS */
    const char *region;           /* default $AWS_REGION, $AWS_DEFAULT_REGION, else us-east-1 */
    const char *profile;          /* credentials profile; default $AWS_PROFILE, else "default" */
    const char *credentials_file; /* INI file as ~/.aws/credentials; default that file */
    enum store_addressing addressing; /* AUTO: path-style with an endpoint, else virtual */
    unsigned connect_timeout_ms;      /* default 10 000 */
    unsigned timeout_ms;              /* give up on a request idle this long; default 30 000 */
    unsigned max_attempts;            /* tries per request, the first included; default 6 */
    unsigned backoff_base_ms;         /* first retry waits up to this; default 100 */
    unsigned backoff_cap_ms;          /* no wait longer than this; default 5 000 */
    unsigned list_page;               /* keys per list request; default 1000 */
    size_t multipart_threshold;       /* puts larger than this go in parts; default 64 MiB */
    size_t part_size;                 /* default 16 MiB (S3 needs >= 5 MiB) */
    unsigned part_parallel;           /* parts in flight per put; default 4 */
};

/* Opens s3://BUCKET[/PREFIX] or file:///ABS/PATH. Checks the URL and the
 * credentials' presence but sends no request: opening never writes, so a
 * read-only user can open any store. Returns 0 and *out, or -EINVAL for a
 * malformed URL, -EACCES when no credentials are found, -ENOMEM. */
int store_open(const char *url, const struct store_options *opt, struct store **out);

/* Closes the store; outstanding calls must have returned. NULL is ignored. */
void store_close(struct store *s);

/* The URL the store was opened with, for messages. */
const char *store_url(const struct store *s);

/* Puts [data, data+len) under key, replacing any object there. Objects larger
 * than the multipart threshold go up in parallel parts where the backend
 * supports it. With STORE_IF_ABSENT the put fails with -EEXIST if the key
 * exists (atomically, where store_probe() reports STORE_CAP_IF_ABSENT; a server
 * without it answers -ENOTSUP). A put is never half-visible: readers see the
 * old object, no object, or the whole new one. */
#define STORE_IF_ABSENT 1u
/* The body proves itself (a chunk named by its hash): S3 skips hashing it for
 * the signature (UNSIGNED-PAYLOAD); a damaged upload is caught when read. */
#define STORE_SELF_VERIFYING 2u
int store_put(struct store *s, const char *key, const void *data, size_t len, unsigned flags);

/* Appends bytes [off, off+len) of the object to out; len STORE_TO_END reads to
 * the end. A range running past the end is cut short (as HTTP does); one that
 * starts at or past the end is -ERANGE, except offset 0 of an empty object.
 * On failure out is as it was. */
#define STORE_TO_END UINT64_MAX
int store_get(struct store *s, const char *key, uint64_t off, uint64_t len, struct buf *out);

/* One object as head and list report it. */
struct store_object {
    const char *key;
    uint64_t size;
    int64_t mtime; /* seconds since the epoch */
};

/* Fills *obj (obj->key points at the caller's key). -ENOENT if missing (a
 * HEAD answer has no body, so a missing bucket is -ENOENT here too). */
int store_head(struct store *s, const char *key, struct store_object *obj);

/* Deletes key. Deleting a missing key succeeds, as in S3. */
int store_delete(struct store *s, const char *key);

/* Deletes n keys in as few requests as the backend allows (1000 per S3
 * request). Fails on the first key the server refused to delete, naming it. */
int store_delete_many(struct store *s, const char *const *keys, size_t n);

/* Calls fn for every object whose key starts with prefix, in byte order of
 * keys, fetching pages as it goes. fn's object is valid only during the call;
 * a non-zero return from fn stops the listing and is returned. What a server
 * lists is checked: keys outside the prefix or not well-formed (store.h's
 * rule; S3 consoles make "dir/" objects) are skipped, and keys out of order
 * or pages that do not advance are -EBADMSG, so fn never sees an object
 * twice. -EINVAL for a prefix whose directory part is not well-formed. */
typedef int (*store_list_fn)(void *arg, const struct store_object *obj);
int store_list(struct store *s, const char *prefix, store_list_fn fn, void *arg);

/* Copies from to to inside the store (server-side for S3). */
int store_copy(struct store *s, const char *from, const char *to);

/* Copies object key of src to the same key in dst without the bytes passing
 * through here: two s3:// stores on the same endpoint with the same
 * credentials (a server-side copy), or two file:// stores. -EXDEV if dst
 * and src cannot (the caller copies through itself). */
int store_copy_from(struct store *dst, struct store *src, const char *key);

/* Finds out what the server honours, by writing and deleting a probe object
 * under ".ckptfs-probe-*" (so only call it on a store you may write).
 * Sets *caps to a mask of STORE_CAP_*. */
#define STORE_CAP_IF_ABSENT 1u /* a conditional put fails with -EEXIST on an existing key */
int store_probe(struct store *s, unsigned *caps);

/* Operations as the accounting layer counts them. */
enum store_op {
    STORE_OP_PUT,
    STORE_OP_GET,
    STORE_OP_HEAD,
    STORE_OP_DELETE,
    STORE_OP_DELETE_MANY,
    STORE_OP_LIST,
    STORE_OP_COPY,
    STORE_OP_PART, /* multipart begin, part, complete and abort */
    STORE_OP_COUNT
};

struct store_op_stats {
    uint64_t requests; /* attempts sent, retries included */
    uint64_t retries;
    uint64_t errors; /* calls that failed after their last attempt */
    uint64_t bytes_up;
    uint64_t bytes_down;
    uint64_t usec; /* wall time spent in attempts */
};

struct store_stats {
    struct store_op_stats op[STORE_OP_COUNT];
    uint64_t connections;        /* new connections opened (S3) */
    uint64_t connections_reused; /* requests that reused a kept-alive connection (S3) */
    char last_error[256];        /* the newest failure's message, "" if none */
};

/* A consistent-enough copy of the counters (each counter is read atomically). */
void store_get_stats(struct store *s, struct store_stats *st);

/* "put", "get", ... for reports. */
const char *store_op_name(enum store_op op);

/* Splits OBJECT-URL into the store's URL and a key, for tools that name one
 * object: s3://BUCKET/KEY -> s3://BUCKET + KEY; file:///A/B/C -> file://DIR +
 * the rest, where DIR is the deepest existing directory above C, so a tool
 * never creates or prunes directories outside what it was given.
 * Returns 0 with *store_url and *key malloc'ed (key may be ""), or -EINVAL. */
int store_url_split(const char *object_url, char **store_url, char **key);

#endif
