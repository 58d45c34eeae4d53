/*
 * The XML documents of the S3 API that the s3 backend reads and writes:
 * error bodies, ListObjectsV2 pages, multipart initiation, batch delete
 * request and result, multipart completion. Parsed with expat; element
 * names are matched without namespaces, as S3-compatible servers differ in
 * whether they send one.
 */
#ifndef CKPT_CACHE_S3_XML_H
#define CKPT_CACHE_S3_XML_H

#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

struct s3_error {
    char code[64]; /* "NoSuchKey", "SignatureDoesNotMatch", ... ("" if absent) */
    char message[256];
    char key[256]; /* the key a batch-delete error is about */
};

struct s3_list_item {
    char *key;
    uint64_t size;
    int64_t mtime;
};

struct s3_list {
    struct s3_list_item *items;
    size_t n;
    int truncated;
    char *next_token; /* NextContinuationToken, or NULL */
};

/* Reads an <Error> document into *err. Returns 0, or -EBADMSG if doc is not
 * XML or holds no <Error> (err is then left with empty strings). */
int s3_xml_error(const char *doc, size_t len, struct s3_error *err);

/* Checks the answer of a request that can fail after its 200 status
 * (CopyObject, CompleteMultipartUpload): 0 if its root element is root, 1 if
 * it is an <Error> (then in *err), -EBADMSG if it is neither or unreadable. */
int s3_xml_result(const char *doc, size_t len, const char *root, struct s3_error *err);

/* Reads a ListBucketResult (ListObjectsV2). Returns 0, -EBADMSG, -ENOMEM.
 * Free with s3_list_free() whatever the result. */
int s3_xml_list(const char *doc, size_t len, struct s3_list *out);
void s3_list_free(struct s3_list *l);

/* Reads the UploadId of an InitiateMultipartUploadResult (malloc'ed).
 * Returns 0, -EBADMSG (no UploadId), -ENOMEM. */
int s3_xml_upload_id(const char *doc, size_t len, char **upload_id);

/* Reads a DeleteResult: 0 if it reports no <Error>, 1 with the first one in
 * *err, -EBADMSG if doc cannot be read. */
int s3_xml_delete_result(const char *doc, size_t len, struct s3_error *err);

/* Builds the body of a quiet batch delete of prefix+keys[i]. */
int s3_xml_delete_body(struct buf *out, const char *prefix, const char *const *keys, size_t n);

/* Builds the body of CompleteMultipartUpload for parts 1..n with their ETags. */
int s3_xml_complete_body(struct buf *out, char *const *etags, unsigned n);

#endif
