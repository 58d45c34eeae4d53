/*
 * AWS Signature Version 4, built by hand: libcurl 7.88's signer neither sorts
 * query parameters nor signs value-less ones ("?uploads") as "uploads=", and
 * a verifying server answers both with 403. Only the s3 backend uses this.
 */
#ifndef CKPT_CACHE_SIGV4_H
#define CKPT_CACHE_SIGV4_H

#include <stddef.h>

#include "util/buf.h"

#define SIGV4_HEX_LEN 65 /* 64 hex digits and a NUL */

struct sigv4_header {
    const char *name;
    const char *value;
};

/* A request as it goes on the wire. */
struct sigv4_request {
    const char *method;
    const char *path;                   /* percent-encoded as sent, e.g. "/bucket/a%20b" */
    const char *query;                  /* as sent without '?', "" for none */
    const struct sigv4_header *headers; /* every header to sign, Host included */
    size_t nheaders;
    const char *payload_hash; /* hex SHA-256 of the body, or "UNSIGNED-PAYLOAD" */
};

/* Who signs, where and when. */
struct sigv4_scope {
    const char *access_key;
    const char *secret_key;
    const char *region;
    const char *service;  /* "s3" */
    const char *amz_date; /* "YYYYMMDDTHHMMSSZ", the request's x-amz-date */
};

/* The canonical request: path and query decoded and re-encoded the SigV4 way,
 * parameters sorted, value-less ones given "=", header names lowercased and
 * sorted, values trimmed with inner runs of spaces collapsed. Appends to out.
 * Returns 0, -EINVAL (a header without a name or a bad %-escape), -ENOMEM. */
int sigv4_canonical_request(const struct sigv4_request *r, struct buf *out);

/* The string to sign for a canonical request. Returns 0 or -ENOMEM. */
int sigv4_string_to_sign(const struct sigv4_scope *sc, const char *canonical_request,
                         struct buf *out);

/* The hex signature of a string to sign. Returns 0 or -ENOMEM. */
int sigv4_signature(const struct sigv4_scope *sc, const char *string_to_sign,
                    char hex[SIGV4_HEX_LEN]);

/* The whole Authorization header value ("AWS4-HMAC-SHA256 Credential=...").
 * Returns 0, -EINVAL or -ENOMEM. */
int sigv4_authorization(const struct sigv4_scope *sc, const struct sigv4_request *r,
                        struct buf *out);

/* Hex SHA-256 of data, as x-amz-content-sha256 wants it. */
void sigv4_sha256_hex(const void *data, size_t len, char hex[SIGV4_HEX_LEN]);

/* Appends s percent-encoded as SigV4 and S3 want: unreserved characters
 * (A-Z a-z 0-9 - _ . ~) as they are, '/' as it is if keep_slash, every other
 * byte as %XX in upper case. Returns 0 or -ENOMEM. */
int sigv4_uri_encode(struct buf *out, const char *s, size_t len, int keep_slash);

#endif
