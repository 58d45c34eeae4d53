/*
 * What a backend or a layer implements to sit behind store.h. Not for users
 * of the store: they call the store_* functions.
 *
 * Each call is one attempt: a backend never retries (retry.c does, for every
 * backend alike), and a layer calls the store below it through store_call().
 * Return values and messages are as documented in store.h.
 */
#ifndef CKPT_CACHE_STORE_IMPL_H
#define CKPT_CACHE_STORE_IMPL_H

#include "store.h"

/* One page of a listing: the backend calls fn for each object of the page,
 * then sets *next to a malloc'ed marker for the following page, or NULL when
 * the listing is complete. marker is NULL for the first page. */
struct store_page {
    const char *prefix;
    const char *marker;
    unsigned max_keys;
    store_list_fn fn;
    void *arg;
    char *next;
};

struct store_ops {
    int (*put)(void *impl, const char *key, const void *data, size_t len, unsigned flags);
    int (*get)(void *impl, const char *key, uint64_t off, uint64_t len, struct buf *out);
    int (*head)(void *impl, const char *key, struct store_object *obj);
    int (*del)(void *impl, const char *key);
    int (*del_many)(void *impl, const char *const *keys, size_t n); /* n <= 1000 */
    int (*list_page)(void *impl, struct store_page *page);
    /* from is a key, or (store_copy_from) another store's copy_source. */
    int (*copy)(void *impl, const char *from, const char *to);

    /* Optional: how another store of this backend names key as the source
     * of a copy (it starts with '/', which no key does). */
    int (*copy_source)(void *impl, const char *key, struct buf *out);

    /* Multipart upload; all NULL for a backend that takes any size in one put.
     * Part numbers start at 1. mp_part sets *etag (malloc'ed). */
    int (*mp_begin)(void *impl, const char *key, char **upload_id);
    int (*mp_part)(void *impl, const char *key, const char *upload_id, unsigned partno,
                   const void *data, size_t len, char **etag);
    int (*mp_complete)(void *impl, const char *key, const char *upload_id, char *const *etags,
                       unsigned nparts);
    int (*mp_abort)(void *impl, const char *key, const char *upload_id);

    /* Optional: adds the backend's own counters (connections) to *st. */
    void (*stats)(void *impl, struct store_stats *st);
    void (*close)(void *impl);
};

struct store {
    const struct store_ops *ops;
    void *impl;
    char *url;
    struct store_options opt; /* with defaults filled in */
};

/* Wraps impl in a store; takes ownership of impl (closed by store_close, also
 * when this fails). Returns NULL only for lack of memory. */
struct store *store_new(const struct store_ops *ops, void *impl, const char *url,
                        const struct store_options *opt);

/* Backends. Each returns 0 and a store, or a negative errno with a message. */
int s3_store_open(const char *url, const struct store_options *opt, struct store **out);
int file_store_open(const char *url, const struct store_options *opt, struct store **out);

/* The retry and accounting layer over inner (which it owns). */
int retry_store_wrap(struct store *inner, struct store **out);

/* 0 if key is a well-formed key (store.h), else -EINVAL with a message. */
int store_check_key(const char *key);

/* True for errors worth another attempt: transient server and network failures. */
int store_err_retryable(int err);

#endif
