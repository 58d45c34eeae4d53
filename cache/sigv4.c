/*
 * SigV4, step by step as AWS documents it: canonical request, string to
 * sign, signing key derived by a chain of HMACs, signature. Each step is a
 * function of its own so the unit test can hold every intermediate against
 * AWS's published test vectors.
 */
#include "sigv4.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "util/hex.h"

void sigv4_sha256_hex(const void *data, size_t len, char hex[SIGV4_HEX_LEN])
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(data, len, md);
    hex_encode(md, sizeof md, hex);
}

static int unreserved(unsigned char c)
{
    return isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~';
}

int sigv4_uri_encode(struct buf *out, const char *s, size_t len, int keep_slash)
{
    static const char up[] = "0123456789ABCDEF";
    int rc = buf_reserve(out, 3 * len);
    for (size_t i = 0; rc == 0 && i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (unreserved(c) || (keep_slash && c == '/')) {
            out->data[out->len++] = c;
        } else {
            out->data[out->len++] = '%';
            out->data[out->len++] = up[c >> 4];
            out->data[out->len++] = up[c & 15];
        }
    }
    if (rc == 0)
        out->data[out->len] = 0;
    return rc;
}

/* Decodes %XX escapes of s[0..len) into out; '+' stays '+', as S3 treats it. */
static int uri_decode(struct buf *out, const char *s, size_t len)
{
    buf_reset(out);
    int rc = buf_reserve(out, len);
    for (size_t i = 0; rc == 0 && i < len; i++) {
        int c = (unsigned char)s[i];
        uint8_t byte = (uint8_t)c;
        if (c == '%') {
            if (i + 2 >= len || hex_decode(s + i + 1, 1, &byte, 1))
                return -EINVAL;
            i += 2;
        }
        out->data[out->len++] = byte;
    }
    if (rc == 0)
        out->data[out->len] = 0;
    return rc;
}

/* Decodes then re-encodes, so a path or parameter sent in any valid encoding
 * signs the same way the server will canonicalize it. */
static int reencode(struct buf *out, const char *s, size_t len, int keep_slash)
{
    struct buf raw = { 0 };
    int rc = uri_decode(&raw, s, len);
    if (rc == 0)
        rc = sigv4_uri_encode(out, (const char *)raw.data, raw.len, keep_slash);
    buf_free(&raw);
    return rc;
}

struct param {
    char *kv; /* "key=value", both encoded */
    size_t klen;
};

static int param_cmp(const void *a, const void *b)
{
    const struct param *x = a, *y = b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = memcmp(x->kv, y->kv, n);
    if (c || x->klen != y->klen)
        return c ? c : (x->klen < y->klen ? -1 : 1);
    return strcmp(x->kv + x->klen, y->kv + y->klen);
}

static int canonical_param(const char *p, size_t n, struct param *out)
{
    const char *eq = memchr(p, '=', n);
    size_t kl = eq ? (size_t)(eq - p) : n;
    struct buf b = { 0 };
    int rc = reencode(&b, p, kl, 0);
    out->klen = b.len;
    if (rc == 0)
        rc = buf_append(&b, "=", 1);
    if (rc == 0 && eq)
        rc = reencode(&b, eq + 1, n - kl - 1, 0);
    if (rc) {
        buf_free(&b);
        return rc;
    }
    out->kv = (char *)b.data;
    return 0;
}

static int canonical_query(const char *q, struct buf *out)
{
    size_t cap = 1;
    for (const char *p = q; *p; p++)
        cap += *p == '&';
    struct param *v = calloc(cap, sizeof *v);
    size_t n = 0;
    int rc = v ? 0 : -ENOMEM;
    for (const char *p = q; rc == 0 && *p;) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        if (len)
            rc = canonical_param(p, len, &v[n++]);
        p += len + (amp != NULL);
    }
    if (rc == 0)
        qsort(v, n, sizeof *v, param_cmp);
    for (size_t i = 0; i < n; i++) {
        if (rc == 0 && i)
            rc = buf_append(out, "&", 1);
        if (rc == 0)
            rc = buf_append(out, v[i].kv, strlen(v[i].kv));
        free(v[i].kv);
    }
    free(v);
    return rc;
}

struct hdr {
    char *name;  /* lowercased */
    char *value; /* trimmed, runs of spaces collapsed */
};

static int hdr_cmp(const void *a, const void *b)
{
    return strcmp(((const struct hdr *)a)->name, ((const struct hdr *)b)->name);
}

static char *trim_value(const char *v)
{
    char *out = malloc(strlen(v) + 1), *o = out;
    if (!out)
        return NULL;
    while (*v == ' ' || *v == '\t')
        v++;
    for (; *v; v++) {
        if ((*v == ' ' || *v == '\t') && (v[1] == ' ' || v[1] == '\t' || v[1] == '\0'))
            continue;
        *o++ = *v == '\t' ? ' ' : *v;
    }
    *o = '\0';
    return out;
}

static int load_headers(const struct sigv4_request *r, struct hdr *h)
{
    for (size_t i = 0; i < r->nheaders; i++) {
        if (!r->headers[i].name[0])
            return -EINVAL;
        h[i].name = strdup(r->headers[i].name);
        h[i].value = trim_value(r->headers[i].value);
        if (!h[i].name || !h[i].value)
            return -ENOMEM;
        for (char *c = h[i].name; *c; c++)
            *c = (char)tolower((unsigned char)*c);
    }
    qsort(h, r->nheaders, sizeof *h, hdr_cmp);
    return 0;
}

/* "name:value\n" lines (repeated names joined by ','), a blank line, then the
 * signed header list "a;b;c". */
static int canonical_headers(const struct sigv4_request *r, struct buf *out,
                             struct buf *signed_list)
{
    struct hdr *h = calloc(r->nheaders + 1, sizeof *h);
    int rc = h ? load_headers(r, h) : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < r->nheaders; i++) {
        int same = i > 0 && strcmp(h[i].name, h[i - 1].name) == 0;
        if (same)
            rc = buf_printf(out, ",%s", h[i].value);
        else
            rc = buf_printf(out, "%s%s:%s", i ? "\n" : "", h[i].name, h[i].value);
        if (rc == 0 && !same)
            rc = buf_printf(signed_list, "%s%s", i ? ";" : "", h[i].name);
    }
    if (rc == 0)
        rc = buf_append(out, "\n\n", 2);
    for (size_t i = 0; h && i < r->nheaders; i++) {
        free(h[i].name);
        free(h[i].value);
    }
    free(h);
    return rc;
}

/* The canonical request into out, and the signed header list into signed_list. */
static int canonical(const struct sigv4_request *r, struct buf *out, struct buf *signed_list)
{
    int rc = buf_printf(out, "%s\n", r->method);
    if (rc == 0)
        rc = reencode(out, r->path, strlen(r->path), 1);
    if (rc == 0)
        rc = buf_append(out, "\n", 1);
    if (rc == 0)
        rc = canonical_query(r->query ? r->query : "", out);
    if (rc == 0)
        rc = buf_append(out, "\n", 1);
    if (rc == 0)
        rc = canonical_headers(r, out, signed_list);
    if (rc == 0)
        rc = buf_printf(out, "%s\n%s", (char *)signed_list->data, r->payload_hash);
    return rc;
}

int sigv4_canonical_request(const struct sigv4_request *r, struct buf *out)
{
    struct buf signed_list = { 0 };
    int rc = canonical(r, out, &signed_list);
    buf_free(&signed_list);
    return rc;
}

int sigv4_string_to_sign(const struct sigv4_scope *sc, const char *creq, struct buf *out)
{
    char hash[SIGV4_HEX_LEN];
    sigv4_sha256_hex(creq, strlen(creq), hash);
    return buf_printf(out, "AWS4-HMAC-SHA256\n%s\n%.8s/%s/%s/aws4_request\n%s", sc->amz_date,
                      sc->amz_date, sc->region, sc->service, hash);
}

static void hmac(const void *key, size_t klen, const char *msg, unsigned char out[32])
{
    unsigned int n = 32;
    HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, strlen(msg), out, &n);
}

int sigv4_signature(const struct sigv4_scope *sc, const char *sts, char hex[SIGV4_HEX_LEN])
{
    char date[9];
    unsigned char k[32], sig[32];
    size_t n = strlen(sc->secret_key) + 5;
    char *secret = malloc(n);
    snprintf(date, sizeof date, "%.8s", sc->amz_date);
    if (!secret)
        return -ENOMEM;
    snprintf(secret, n, "AWS4%s", sc->secret_key);
    hmac(secret, n - 1, date, k);
    hmac(k, 32, sc->region, k);
    hmac(k, 32, sc->service, k);
    hmac(k, 32, "aws4_request", k);
    hmac(k, 32, sts, sig);
    hex_encode(sig, 32, hex);
    OPENSSL_cleanse(secret, n);
    OPENSSL_cleanse(k, sizeof k);
    free(secret);
    return 0;
}

int sigv4_authorization(const struct sigv4_scope *sc, const struct sigv4_request *r,
                        struct buf *out)
{
    struct buf creq = { 0 }, sts = { 0 }, list = { 0 };
    char sig[SIGV4_HEX_LEN];
    int rc = canonical(r, &creq, &list);
    if (rc == 0)
        rc = sigv4_string_to_sign(sc, (char *)creq.data, &sts);
    if (rc == 0)
        rc = sigv4_signature(sc, (char *)sts.data, sig);
    if (rc == 0) {
        rc = buf_printf(out,
                        "AWS4-HMAC-SHA256 Credential=%s/%.8s/%s/%s/aws4_request, "
                        "SignedHeaders=%s, Signature=%s",
                        sc->access_key, sc->amz_date, sc->region, sc->service, (char *)list.data,
                        sig);
    }
    buf_free(&creq);
    buf_free(&sts);
    buf_free(&list);
    return rc;
}
