/*
 * The s3 backend: each call is one signed HTTP request made with libcurl.
 *
 * Connections are kept alive in a pool of curl handles: a handle returned to
 * the pool keeps its connection, and curl_easy_reset() keeps it too, so
 * consecutive requests from any thread reuse warm connections.
 *
 * Status mapping (store.h lists the errnos):
 *   2xx -> 0 (but CopyObject and CompleteMultipartUpload may answer 200
 *          with an <Error> body, which counts as that error)
 *   404 -> -ENOENT, or -ENXIO for NoSuchBucket
 *   401, 403 -> -EACCES        412 -> -EEXIST        416 -> -ERANGE
 *   501 -> -ENOTSUP            429, 5xx, SlowDown, RequestTimeout -> -EAGAIN
 *   BadDigest -> -EBADMSG      other 4xx -> -EINVAL
 *   network: refused -> -ECONNREFUSED, timeout -> -ETIMEDOUT,
 *            reset/partial -> -ECONNRESET, DNS -> -EHOSTUNREACH, TLS -> -EACCES
 */
#include "store_impl.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "credentials.h"
#include "s3_xml.h"
#include "sigv4.h"
#include "util/err.h"

#define POOL_MAX       64
#define MAX_ERROR_BODY (64u << 10) /* kept of an error body: enough for any <Error> */
#define MAX_XML_BODY   (16u << 20) /* a list page of 1000 keys is well under 1 MiB */
#define MAX_RESERVE    (64u << 20) /* trust a server's size claim this far up front */
#define RECV_BUFFER                                                                                \
    (256L << 10) /* per pooled handle; curl's 16 KiB costs a recv and a callback each */
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

struct s3 {
    char *bucket;
    char *prefix;      /* "" or ending in '/': prepended to every key */
    char *origin;      /* scheme://host[:port] requests go to */
    char *host;        /* the Host header, signed */
    char *bucket_path; /* "/BUCKET" with path-style addressing, "" with virtual */
    char *region;
    char *ca_bundle; /* AWS_CA_BUNDLE, used for https only */
    struct credentials cred;
    unsigned connect_timeout_ms, timeout_ms;
    pthread_mutex_t pool_lock;
    CURL *pool[POOL_MAX];
    int npool;
    uint64_t connections, reused;
};

/* One request and what came back. */
struct req {
    const char *method;
    const char *key; /* NULL for a bucket-level request */
    const char *query;
    struct sigv4_header extra[4];
    size_t nextra;
    const void *body;
    size_t body_len;
    int unsigned_payload; /* sign UNSIGNED-PAYLOAD instead of the body's SHA-256 */
    struct buf *out;      /* where a 2xx body goes; NULL: into resp */
    uint64_t range_off, range_len;
    int ranged;

    long status;
    struct buf resp;
    char etag[160];
    uint64_t content_length;
    int64_t last_modified;
    uint64_t range_start; /* from Content-Range, UINT64_MAX if absent */
    uint64_t received;    /* 2xx body bytes so far */
    size_t sent;          /* read-callback position in body */
    int overflow;         /* out of memory, or more body than can be right */
    char curl_err[CURL_ERROR_SIZE];
};

/* ---- the connection pool ---- */

static CURL *pool_take(struct s3 *s)
{
    CURL *h = NULL;
    pthread_mutex_lock(&s->pool_lock);
    if (s->npool)
        h = s->pool[--s->npool];
    pthread_mutex_unlock(&s->pool_lock);
    return h ? h : curl_easy_init();
}

static void pool_give(struct s3 *s, CURL *h)
{
    pthread_mutex_lock(&s->pool_lock);
    if (s->npool < POOL_MAX) {
        s->pool[s->npool++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&s->pool_lock);
    if (h)
        curl_easy_cleanup(h);
}

/* ---- curl callbacks ---- */

/* A ranged 206 may not bring more than was asked for, and an XML answer no
 * more than any real one holds: a server sending more is broken or hostile. */
static int body_too_long(const struct req *r, size_t len)
{
    uint64_t total = r->received + len;
    if (r->out)
        return r->ranged && r->status == 206 && r->range_len != STORE_TO_END &&
               total > r->range_len;
    return total > MAX_XML_BODY;
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct req *r = arg;
    size_t len = size * n;
    if (r->status / 100 != 2) {
        /* Keep the start of an error body (the <Error> is there), drop the rest. */
        size_t keep = r->resp.len < MAX_ERROR_BODY ? MAX_ERROR_BODY - r->resp.len : 0;
        if (buf_append(&r->resp, p, len < keep ? len : keep))
            r->overflow = 1;
        return r->overflow ? 0 : len;
    }
    if (body_too_long(r, len) || buf_append(r->out ? r->out : &r->resp, p, len)) {
        r->overflow = 1;
        return 0;
    }
    r->received += len;
    return len;
}

static int header_is(const char *line, size_t len, const char *name)
{
    size_t n = strlen(name);
    return len > n && strncasecmp(line, name, n) == 0 && line[n] == ':';
}

static void header_value(const char *line, size_t len, size_t skip, char *dst, size_t cap)
{
    const char *v = line + skip + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && isspace((unsigned char)end[-1]))
        end--;
    snprintf(dst, cap, "%.*s", (int)(end - v), v);
}

static size_t on_header(char *line, size_t size, size_t n, void *arg)
{
    struct req *r = arg;
    size_t len = size * n;
    char v[160];
    if (len > 5 && strncmp(line, "HTTP/", 5) == 0) {
        /* A new response (after a 100 Continue, say): forget the last one's headers. */
        sscanf(line, "HTTP/%*s %ld", &r->status);
        r->etag[0] = '\0';
        r->range_start = UINT64_MAX;
    } else if (header_is(line, len, "etag")) {
        header_value(line, len, 4, r->etag, sizeof r->etag);
    } else if (header_is(line, len, "content-length")) {
        header_value(line, len, 14, v, sizeof v);
        r->content_length = strtoull(v, NULL, 10);
        /* One allocation for the whole body instead of a chain of doublings,
         * as far as a size claim can be trusted before the bytes arrive. */
        uint64_t want = r->content_length < MAX_RESERVE ? r->content_length : MAX_RESERVE;
        if (r->out && r->status / 100 == 2 && buf_reserve(r->out, (size_t)want)) {
            r->overflow = 1;
            return 0;
        }
    } else if (header_is(line, len, "content-range")) {
        header_value(line, len, 13, v, sizeof v);
        unsigned long long start;
        if (sscanf(v, "bytes %llu-", &start) == 1)
            r->range_start = start;
    } else if (header_is(line, len, "last-modified")) {
        header_value(line, len, 13, v, sizeof v);
        r->last_modified = (int64_t)curl_getdate(v, NULL);
    }
    return len;
}

static size_t on_read(char *dst, size_t size, size_t n, void *arg)
{
    struct req *r = arg;
    size_t want = size * n, left = r->body_len - r->sent;
    size_t k = want < left ? want : left;
    memcpy(dst, (const char *)r->body + r->sent, k);
    r->sent += k;
    return k;
}

/* curl rewinds the body when it must resend it on a fresh connection. */
static int on_seek(void *arg, curl_off_t off, int origin)
{
    struct req *r = arg;
    if (origin != SEEK_SET || off < 0 || (size_t)off > r->body_len)
        return CURL_SEEKFUNC_CANTSEEK;
    r->sent = (size_t)off;
    return CURL_SEEKFUNC_OK;
}

/* ---- building and signing a request ---- */

static int request_path(const struct s3 *s, const struct req *r, struct buf *path)
{
    int rc = buf_printf(path, "%s", s->bucket_path);
    if (rc == 0 && !r->key)
        return *s->bucket_path ? 0 : buf_append(path, "/", 1);
    if (rc == 0)
        rc = buf_append(path, "/", 1);
    if (rc == 0)
        rc = sigv4_uri_encode(path, s->prefix, strlen(s->prefix), 1);
    if (rc == 0)
        rc = sigv4_uri_encode(path, r->key, strlen(r->key), 1);
    return rc;
}

static void amz_now(char date[17])
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(date, 17, "%Y%m%dT%H%M%SZ", &tm);
}

/* Signs r and turns its headers into a curl list. */
static int sign(const struct s3 *s, const struct req *r, const char *path, struct curl_slist **list)
{
    char date[17], hash[SIGV4_HEX_LEN];
    amz_now(date);
    if (r->unsigned_payload)
        snprintf(hash, sizeof hash, "UNSIGNED-PAYLOAD");
    else if (r->body_len)
        sigv4_sha256_hex(r->body, r->body_len, hash);
    else
        snprintf(hash, sizeof hash, "%s", EMPTY_SHA256);

    struct sigv4_header h[8] = { { "Host", s->host },
                                 { "x-amz-date", date },
                                 { "x-amz-content-sha256", hash } };
    size_t n = 3;
    if (s->cred.session_token)
        h[n++] = (struct sigv4_header){ "x-amz-security-token", s->cred.session_token };
    for (size_t i = 0; i < r->nextra; i++)
        h[n++] = r->extra[i];

    struct sigv4_request sr = { r->method, path, r->query ? r->query : "", h, n, hash };
    struct sigv4_scope sc = { s->cred.access_key, s->cred.secret_key, s->region, "s3", date };
    struct buf line = { 0 }, auth = { 0 };
    int rc = sigv4_authorization(&sc, &sr, &auth);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        buf_reset(&line);
        rc = buf_printf(&line, "%s: %s", h[i].name, h[i].value);
        if (rc == 0 && !(*list = curl_slist_append(*list, (char *)line.data)))
            rc = -ENOMEM;
    }
    buf_reset(&line);
    if (rc == 0)
        rc = buf_printf(&line, "Authorization: %s", (char *)auth.data);
    /* No "Expect: 100-continue" round trip; no form content type on POST. */
    const char *fixed[] = { (char *)line.data, "Expect:", "Content-Type:" };
    for (size_t i = 0; rc == 0 && i < 3; i++)
        if (!(*list = curl_slist_append(*list, fixed[i])))
            rc = -ENOMEM;
    buf_free(&line);
    buf_free(&auth);
    return rc;
}

static void set_method(CURL *h, struct req *r)
{
    if (strcmp(r->method, "HEAD") == 0) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (strcmp(r->method, "PUT") == 0) {
        curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(h, CURLOPT_READDATA, r);
        curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, on_seek);
        curl_easy_setopt(h, CURLOPT_SEEKDATA, r);
        curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->body_len);
    } else if (strcmp(r->method, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, r->body ? r->body : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
    } else if (strcmp(r->method, "GET") != 0) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, r->method);
    }
}

static void set_options(const struct s3 *s, CURL *h, struct req *r, const char *url,
                        struct curl_slist *list)
{
    long idle_s = (long)((s->timeout_ms + 999) / 1000);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)s->connect_timeout_ms);
    /* An idle limit, not a total one: a large transfer may take long, a stalled one may not. */
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, idle_s > 0 ? idle_s : 1L);
    curl_easy_setopt(h, CURLOPT_BUFFERSIZE, RECV_BUFFER);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, r->curl_err);
    if (s->ca_bundle && strncmp(s->origin, "https:", 6) == 0)
        curl_easy_setopt(h, CURLOPT_CAINFO, s->ca_bundle);
    set_method(h, r);
}

/* ---- turning outcomes into errors ---- */

static int curl_errno(CURLcode c)
{
    switch (c) {
    case CURLE_COULDNT_CONNECT:
        return -ECONNREFUSED;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return -EHOSTUNREACH;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR: /* also a reset during the handshake: worth a retry */
        return -ECONNRESET;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
        return -EACCES;
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    default:
        return -EIO;
    }
}

/* Error codes that mean "try again" whatever the status, as AWS's SDKs treat them. */
static int code_transient(const char *code)
{
    static const char *const codes[] = { "SlowDown", "RequestTimeout", "InternalError",
                                         "ServiceUnavailable", "ConditionalRequestConflict" };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (strcmp(code, codes[i]) == 0)
            return 1;
    return 0;
}

static int http_errno(long status, const char *code)
{
    if (status == 501)
        return -ENOTSUP;
    if (code_transient(code) || status == 429 || status >= 500)
        return -EAGAIN;
    if (status == 404)
        return strcmp(code, "NoSuchBucket") == 0 ? -ENXIO : -ENOENT;
    if (status == 401 || status == 403)
        return -EACCES;
    if (status == 412)
        return -EEXIST;
    if (status == 416)
        return -ERANGE;
    if (!strcmp(code, "BadDigest") || !strcmp(code, "XAmzContentSHA256Mismatch"))
        return -EBADMSG;
    return -EINVAL;
}

static const char *object_name(const struct s3 *s, const struct req *r, struct buf *b)
{
    buf_reset(b);
    buf_printf(b, "s3://%s/%s%s", s->bucket, s->prefix, r->key ? r->key : "");
    return b->data ? (const char *)b->data : "?";
}

static int fail_http(const struct s3 *s, const struct req *r, const struct s3_error *e)
{
    struct buf name = { 0 };
    int rc = http_errno(r->status, e->code);
    const char *what = object_name(s, r, &name);
    if (rc == -ENXIO)
        err_set(rc, "bucket '%s' does not exist at %s", s->bucket, s->origin);
    else if (rc == -ENOENT)
        err_set(rc, "%s %s: no such object (HTTP 404%s%s)", r->method, what, e->code[0] ? " " : "",
                e->code);
    else
        err_set(rc, "%s %s: HTTP %ld%s%s%s%s", r->method, what, r->status, e->code[0] ? " " : "",
                e->code, e->message[0] ? ": " : "", e->message);
    buf_free(&name);
    return rc;
}

static int fail_curl(const struct s3 *s, const struct req *r, CURLcode c)
{
    struct buf name = { 0 };
    int rc = curl_errno(c);
    err_set(rc, "%s %s: %s (%s)", r->method, object_name(s, r, &name),
            r->curl_err[0] ? r->curl_err : curl_easy_strerror(c), s->origin);
    buf_free(&name);
    return rc;
}

static int outcome(const struct s3 *s, struct req *r, CURLcode c)
{
    struct s3_error e = { 0 };
    if (r->overflow && c == CURLE_WRITE_ERROR) {
        struct buf name = { 0 };
        int rc = err_set(-EBADMSG, "%s %s: the answer from %s is larger than the request allows",
                         r->method, object_name(s, r, &name), s->origin);
        buf_free(&name);
        return rc;
    }
    if (c == CURLE_OK && r->status == 206 && r->range_start != r->range_off)
        return err_set(-EBADMSG, "%s: %s sent a range other than the one asked for", r->method,
                       s->origin);
    if (c != CURLE_OK)
        return fail_curl(s, r, c);
    if (r->status / 100 == 2)
        return 0;
    if (r->resp.len)
        s3_xml_error((const char *)r->resp.data, r->resp.len, &e);
    return fail_http(s, r, &e);
}

/* Makes one request. A 2xx body lands in r->out (or r->resp). */
static int perform(struct s3 *s, struct req *r)
{
    struct buf path = { 0 }, url = { 0 };
    struct curl_slist *list = NULL;
    int rc = request_path(s, r, &path);
    if (rc == 0)
        rc = buf_printf(&url, "%s%s%s%s", s->origin, (char *)path.data,
                        r->query && *r->query ? "?" : "", r->query ? r->query : "");
    if (rc == 0)
        rc = sign(s, r, (char *)path.data, &list);
    CURL *h = rc == 0 ? pool_take(s) : NULL;
    if (rc == 0 && !h)
        rc = -ENOMEM;
    if (rc == 0) {
        size_t out_mark = r->out ? r->out->len : 0;
        curl_easy_reset(h);
        set_options(s, h, r, (char *)url.data, list);
        CURLcode c = curl_easy_perform(h);
        long fresh = 0;
        curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &fresh);
        __atomic_fetch_add(fresh ? &s->connections : &s->reused, 1, __ATOMIC_RELAXED);
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
        rc = outcome(s, r, c);
        if (rc && r->out)
            r->out->len = out_mark;
        pool_give(s, h);
    }
    curl_slist_free_all(list);
    buf_free(&path);
    buf_free(&url);
    return rc;
}

static void req_free(struct req *r)
{
    buf_free(&r->resp);
}

/* ---- operations ---- */

static int s_put(void *impl, const char *key, const void *data, size_t len, unsigned flags)
{
    struct req r = { .method = "PUT",
                     .key = key,
                     .body = data,
                     .body_len = len,
                     .unsigned_payload = (flags & STORE_SELF_VERIFYING) != 0 };
    if (flags & STORE_IF_ABSENT)
        r.extra[r.nextra++] = (struct sigv4_header){ "If-None-Match", "*" };
    int rc = perform(impl, &r);
    req_free(&r);
    return rc;
}

/* A server that ignored our Range sent the whole object: keep only the range. */
static int cut_to_range(struct req *r, size_t mark)
{
    size_t got = r->out->len - mark;
    if (r->range_off >= got && (got > 0 || r->range_off > 0))
        return err_set(-ERANGE, "range starts at %llu, past the end of %s (%zu bytes)",
                       (unsigned long long)r->range_off, r->key, got);
    size_t off = (size_t)r->range_off;
    size_t n = got - off < r->range_len ? got - off : (size_t)r->range_len;
    if (n)
        memmove(r->out->data + mark, r->out->data + mark + off, n);
    r->out->len = mark + n;
    if (r->out->data)
        r->out->data[r->out->len] = 0;
    return 0;
}

static int s_get(void *impl, const char *key, uint64_t off, uint64_t len, struct buf *out)
{
    char range[64];
    struct req r = { .method = "GET", .key = key, .out = out, .range_off = off, .range_len = len };
    size_t mark = out->len;
    r.ranged = off > 0 || len != STORE_TO_END;
    if (r.ranged) {
        if (len == STORE_TO_END || off + len < off)
            snprintf(range, sizeof range, "bytes=%llu-", (unsigned long long)off);
        else
            snprintf(range, sizeof range, "bytes=%llu-%llu", (unsigned long long)off,
                     (unsigned long long)(off + len - 1));
        r.extra[r.nextra++] = (struct sigv4_header){ "Range", range };
    }
    int rc = perform(impl, &r);
    if (rc == 0 && r.ranged && r.status == 200)
        rc = cut_to_range(&r, mark);
    if (rc == -ERANGE && off == 0)
        rc = 0; /* bytes=0-N of an empty object: empty, not an error */
    if (rc)
        out->len = mark;
    req_free(&r);
    return rc;
}

static int s_head(void *impl, const char *key, struct store_object *obj)
{
    struct req r = { .method = "HEAD", .key = key };
    int rc = perform(impl, &r);
    if (rc == 0) {
        obj->key = key;
        obj->size = r.content_length;
        obj->mtime = r.last_modified > 0 ? r.last_modified : 0;
    }
    req_free(&r);
    return rc;
}

static int s_del(void *impl, const char *key)
{
    struct req r = { .method = "DELETE", .key = key };
    int rc = perform(impl, &r);
    req_free(&r);
    return rc == -ENOENT ? 0 : rc;
}

static int content_md5(const void *data, size_t len, char b64[32])
{
    unsigned char md[16];
    unsigned int n = 0;
    if (EVP_Digest(data, len, md, &n, EVP_md5(), NULL) != 1)
        return err_set(-EIO, "MD5 is not available (FIPS mode?): batch delete needs it");
    EVP_EncodeBlock((unsigned char *)b64, md, 16);
    return 0;
}

/* A batch delete answers 200 and lists the keys it could not delete. */
static int key_errno(const char *code)
{
    if (code_transient(code))
        return -EAGAIN;
    return strcmp(code, "AccessDenied") == 0 ? -EACCES : -EIO;
}

static int s_del_many(void *impl, const char *const *keys, size_t n)
{
    struct s3 *s = impl;
    struct buf body = { 0 };
    char md5[32];
    int rc = s3_xml_delete_body(&body, s->prefix, keys, n);
    if (rc == 0)
        rc = content_md5(body.data, body.len, md5);
    struct req r = { .method = "POST", .query = "delete", .body = body.data, .body_len = body.len };
    r.extra[r.nextra++] = (struct sigv4_header){ "Content-MD5", md5 };
    if (rc == 0)
        rc = perform(s, &r);
    struct s3_error e;
    int found = rc ? 0 : s3_xml_delete_result((const char *)r.resp.data, r.resp.len, &e);
    if (found < 0)
        rc = err_set(-EAGAIN, "batch delete in s3://%s: unreadable answer from %s", s->bucket,
                     s->origin);
    else if (found > 0)
        rc = err_set(key_errno(e.code), "delete s3://%s/%s: %s: %s", s->bucket, e.key, e.code,
                     e.message);
    req_free(&r);
    buf_free(&body);
    return rc;
}

static int list_query(const struct s3 *s, const struct store_page *p, struct buf *q)
{
    struct buf full = { 0 };
    int rc = buf_printf(&full, "%s%s", s->prefix, p->prefix ? p->prefix : "");
    if (rc == 0)
        rc = buf_printf(q, "list-type=2&max-keys=%u&prefix=", p->max_keys);
    if (rc == 0)
        rc = sigv4_uri_encode(q, (char *)full.data, full.len, 0);
    if (rc == 0 && p->marker) {
        rc = buf_printf(q, "&continuation-token=");
        if (rc == 0)
            rc = sigv4_uri_encode(q, p->marker, strlen(p->marker), 0);
    }
    buf_free(&full);
    return rc;
}

/* Only keys under the store's prefix are ours; store_list checks the rest. */
static int deliver_page(const struct s3 *s, const struct s3_list *l, struct store_page *p)
{
    size_t skip = strlen(s->prefix);
    for (size_t i = 0; i < l->n; i++) {
        if (strncmp(l->items[i].key, s->prefix, skip) != 0)
            continue;
        struct store_object obj = { l->items[i].key + skip, l->items[i].size, l->items[i].mtime };
        int rc = p->fn(p->arg, &obj);
        if (rc)
            return rc;
    }
    if (l->truncated && !(p->next = strdup(l->next_token)))
        return -ENOMEM;
    return 0;
}

static int s_list_page(void *impl, struct store_page *p)
{
    struct s3 *s = impl;
    struct buf q = { 0 };
    int rc = list_query(s, p, &q);
    struct req r = { .method = "GET", .query = (char *)q.data };
    if (rc == 0)
        rc = perform(s, &r);
    struct s3_list l = { 0 };
    if (rc == 0 && (rc = s3_xml_list((const char *)r.resp.data, r.resp.len, &l)) != 0)
        err_set(rc, "list s3://%s/%s: unreadable answer from %s", s->bucket, s->prefix, s->origin);
    if (rc == 0)
        rc = deliver_page(s, &l, p);
    s3_list_free(&l);
    req_free(&r);
    buf_free(&q);
    return rc;
}

/* CopyObject and CompleteMultipartUpload can fail after answering 200: only
 * their own result document means success. */
static int check_result(const struct s3 *s, struct req *r, const char *root)
{
    struct s3_error e;
    int rc = s3_xml_result((const char *)r->resp.data, r->resp.len, root, &e);
    if (rc == 1) {
        r->status = code_transient(e.code) ? 500 : 400;
        return fail_http(s, r, &e);
    }
    struct buf name = { 0 };
    if (rc)
        rc = err_set(-EAGAIN, "%s %s: unreadable answer from %s (no %s)", r->method,
                     object_name(s, r, &name), s->origin, root);
    buf_free(&name);
    return rc;
}

static int s_copy(void *impl, const char *from, const char *to)
{
    struct s3 *s = impl;
    struct buf src = { 0 };
    int rc = 0;
    if (from[0] == '/') /* another bucket's object (store_copy_from) */
        rc = sigv4_uri_encode(&src, from, strlen(from), 1);
    else {
        rc = buf_printf(&src, "/%s/", s->bucket);
        if (rc == 0)
            rc = sigv4_uri_encode(&src, s->prefix, strlen(s->prefix), 1);
        if (rc == 0)
            rc = sigv4_uri_encode(&src, from, strlen(from), 1);
    }
    struct req r = { .method = "PUT", .key = to };
    r.extra[r.nextra++] = (struct sigv4_header){ "x-amz-copy-source", (char *)src.data };
    if (rc == 0)
        rc = perform(s, &r);
    if (rc == 0)
        rc = check_result(s, &r, "CopyObjectResult");
    req_free(&r);
    buf_free(&src);
    return rc;
}

/* The x-amz-copy-source of key: /BUCKET/PREFIXKEY. */
static int s_copy_source(void *impl, const char *key, struct buf *out)
{
    struct s3 *s = impl;
    return buf_printf(out, "/%s/%s%s", s->bucket, s->prefix, key);
}

static int s_mp_begin(void *impl, const char *key, char **upload_id)
{
    struct req r = { .method = "POST", .key = key, .query = "uploads" };
    int rc = perform(impl, &r);
    if (rc == 0 && s3_xml_upload_id((const char *)r.resp.data, r.resp.len, upload_id))
        rc = err_set(-EBADMSG, "start multipart upload of %s: no UploadId in the answer", key);
    req_free(&r);
    return rc;
}

static int upload_query(struct buf *q, const char *upload_id, unsigned partno)
{
    int rc = partno ? buf_printf(q, "partNumber=%u&", partno) : 0;
    if (rc == 0)
        rc = buf_printf(q, "uploadId=");
    return rc ? rc : sigv4_uri_encode(q, upload_id, strlen(upload_id), 0);
}

static int s_mp_part(void *impl, const char *key, const char *upload_id, unsigned partno,
                     const void *data, size_t len, char **etag)
{
    struct buf q = { 0 };
    int rc = upload_query(&q, upload_id, partno);
    struct req r = {
        .method = "PUT", .key = key, .query = (char *)q.data, .body = data, .body_len = len
    };
    if (rc == 0)
        rc = perform(impl, &r);
    if (rc == 0 && !r.etag[0])
        rc = err_set(-EBADMSG, "part %u of %s: no ETag in the answer", partno, key);
    if (rc == 0 && !(*etag = strdup(r.etag)))
        rc = -ENOMEM;
    req_free(&r);
    buf_free(&q);
    return rc;
}

static int s_mp_complete(void *impl, const char *key, const char *upload_id, char *const *etags,
                         unsigned nparts)
{
    struct buf q = { 0 }, body = { 0 };
    int rc = upload_query(&q, upload_id, 0);
    if (rc == 0)
        rc = s3_xml_complete_body(&body, etags, nparts);
    struct req r = { .method = "POST",
                     .key = key,
                     .query = (char *)q.data,
                     .body = body.data,
                     .body_len = body.len };
    if (rc == 0)
        rc = perform(impl, &r);
    if (rc == 0)
        rc = check_result(impl, &r, "CompleteMultipartUploadResult");
    req_free(&r);
    buf_free(&q);
    buf_free(&body);
    return rc;
}

static int s_mp_abort(void *impl, const char *key, const char *upload_id)
{
    struct buf q = { 0 };
    int rc = upload_query(&q, upload_id, 0);
    struct req r = { .method = "DELETE", .key = key, .query = (char *)q.data };
    if (rc == 0)
        rc = perform(impl, &r);
    req_free(&r);
    buf_free(&q);
    return rc == -ENOENT ? 0 : rc;
}

static void s_stats(void *impl, struct store_stats *st)
{
    struct s3 *s = impl;
    st->connections = __atomic_load_n(&s->connections, __ATOMIC_RELAXED);
    st->connections_reused = __atomic_load_n(&s->reused, __ATOMIC_RELAXED);
}

static void s_close(void *impl)
{
    struct s3 *s = impl;
    for (int i = 0; i < s->npool; i++)
        curl_easy_cleanup(s->pool[i]);
    pthread_mutex_destroy(&s->pool_lock);
    credentials_free(&s->cred);
    free(s->bucket);
    free(s->prefix);
    free(s->origin);
    free(s->host);
    free(s->bucket_path);
    free(s->region);
    free(s->ca_bundle);
    free(s);
}

static const struct store_ops s3_ops = {
    .put = s_put,
    .get = s_get,
    .head = s_head,
    .del = s_del,
    .del_many = s_del_many,
    .list_page = s_list_page,
    .copy = s_copy,
    .copy_source = s_copy_source,
    .mp_begin = s_mp_begin,
    .mp_part = s_mp_part,
    .mp_complete = s_mp_complete,
    .mp_abort = s_mp_abort,
    .stats = s_stats,
    .close = s_close,
};

/* ---- opening: URL, endpoint, addressing ---- */

static const char *env_first(const char *a, const char *b)
{
    const char *v = getenv(a);
    if (v && *v)
        return v;
    v = b ? getenv(b) : NULL;
    return v && *v ? v : NULL;
}

/* Bucket names as S3 allows them: 3-63 of [a-z0-9.-] (and '_' for older
 * buckets some servers still have); anything else cannot be a bucket. */
static int check_bucket(const char *b, const char *url)
{
    size_t n = strlen(b);
    for (const char *p = b; *p; p++)
        if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || strchr(".-_", *p)))
            return err_set(-EINVAL, "'%s': '%s' is not a valid bucket name", url, b);
    if (n < 3 || n > 63)
        return err_set(-EINVAL, "'%s': a bucket name has 3 to 63 characters", url);
    return 0;
}

static int parse_url(struct s3 *s, const char *url)
{
    const char *b = url + 5, *slash = strchr(b, '/');
    s->bucket = slash ? strndup(b, (size_t)(slash - b)) : strdup(b);
    if (!s->bucket)
        return -ENOMEM;
    int rc = check_bucket(s->bucket, url);
    const char *p = slash ? slash + 1 : "";
    size_t n = strlen(p);
    while (n && p[n - 1] == '/')
        n--;
    char *trimmed = strndup(p, n);
    if (rc == 0 && !trimmed)
        rc = -ENOMEM;
    if (rc == 0 && n && store_check_key(trimmed) != 0)
        rc = err_set(-EINVAL, "'%s': the prefix has empty, '.' or '..' segments", url);
    free(trimmed);
    if (rc == 0 && asprintf(&s->prefix, "%.*s%s", (int)n, p, n ? "/" : "") < 0)
        rc = -ENOMEM;
    return rc;
}

static int parse_endpoint(const char *ep, char **scheme, char **hostport)
{
    const char *sep = strstr(ep, "://");
    if (!sep || (strncmp(ep, "http://", 7) && strncmp(ep, "https://", 8)))
        return err_set(-EINVAL, "endpoint '%s' must start with http:// or https://", ep);
    const char *h = sep + 3;
    size_t n = strcspn(h, "/?#");
    if (n == 0)
        return err_set(-EINVAL, "endpoint '%s' names no host", ep);
    *scheme = strndup(ep, (size_t)(sep - ep));
    *hostport = strndup(h, n);
    return *scheme && *hostport ? 0 : -ENOMEM;
}

static int set_addressing(struct s3 *s, const char *endpoint, enum store_addressing mode)
{
    char *scheme = NULL, *hostport = NULL;
    int rc = 0;
    if (endpoint)
        rc = parse_endpoint(endpoint, &scheme, &hostport);
    else if (!(scheme = strdup("https")) ||
             asprintf(&hostport, "s3.%s.amazonaws.com", s->region) < 0)
        rc = -ENOMEM;
    if (mode == STORE_ADDR_AUTO)
        /* Dotted bucket names break TLS wildcard certificates in virtual-host form. */
        mode = endpoint || strchr(s->bucket, '.') ? STORE_ADDR_PATH : STORE_ADDR_VIRTUAL;
    if (rc == 0 && mode == STORE_ADDR_PATH) {
        if (asprintf(&s->host, "%s", hostport) < 0 ||
            asprintf(&s->bucket_path, "/%s", s->bucket) < 0)
            rc = -ENOMEM;
    } else if (rc == 0) {
        if (asprintf(&s->host, "%s.%s", s->bucket, hostport) < 0 || !(s->bucket_path = strdup("")))
            rc = -ENOMEM;
    }
    if (rc == 0 && asprintf(&s->origin, "%s://%s", scheme, s->host) < 0)
        rc = -ENOMEM;
    free(scheme);
    free(hostport);
    return rc;
}

static void global_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

int s3_store_open(const char *url, const struct store_options *opt, struct store **out)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, global_init);
    struct s3 *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    pthread_mutex_init(&s->pool_lock, NULL);
    s->connect_timeout_ms = opt->connect_timeout_ms;
    s->timeout_ms = opt->timeout_ms;
    const char *region = opt->region ? opt->region : env_first("AWS_REGION", "AWS_DEFAULT_REGION");
    const char *endpoint =
        opt->endpoint ? opt->endpoint : env_first("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL");
    const char *ca = getenv("AWS_CA_BUNDLE");
    s->region = strdup(region ? region : "us-east-1");
    s->ca_bundle = ca && *ca ? strdup(ca) : NULL;
    int rc = s->region ? parse_url(s, url) : -ENOMEM;
    if (rc == 0)
        rc = set_addressing(s, endpoint, opt->addressing);
    if (rc == 0)
        rc = credentials_load(opt->credentials_file, opt->profile, &s->cred);
    if (rc) {
        s_close(s);
        return rc;
    }
    *out = store_new(&s3_ops, s, url, opt);
    return *out ? 0 : -ENOMEM;
}
