/* SigV4 signing against AWS's published test vectors, step by step. */
#include <errno.h>

#include "cache/sigv4.h"
#include "check.h"
#include "sigv4_vectors.h"

static void check_vector(const struct sigv4_vector *v)
{
    struct sigv4_header h[8];
    size_t n = 0;
    for (; v->headers[n].name; n++)
        h[n] = (struct sigv4_header){ v->headers[n].name, v->headers[n].value };
    struct sigv4_request r = { v->method, v->path, v->query, h, n, v->payload_hash };
    struct sigv4_scope sc = { v->access_key, v->secret_key, v->region, v->service, v->amz_date };
    struct buf creq = { 0 }, sts = { 0 }, auth = { 0 };
    char sig[SIGV4_HEX_LEN];

    fprintf(stderr, "vector %s\n", v->name);
    CHECK_EQ(sigv4_canonical_request(&r, &creq), 0);
    CHECK_STR((char *)creq.data, v->canonical_request);
    CHECK_EQ(sigv4_string_to_sign(&sc, v->canonical_request, &sts), 0);
    CHECK_STR((char *)sts.data, v->string_to_sign);
    CHECK_EQ(sigv4_signature(&sc, v->string_to_sign, sig), 0);
    CHECK_STR(sig, v->signature);
    CHECK_EQ(sigv4_authorization(&sc, &r, &auth), 0);
    CHECK(auth.data && strstr((char *)auth.data, v->signature));
    CHECK(auth.data && strncmp((char *)auth.data, "AWS4-HMAC-SHA256 Credential=", 28) == 0);
    buf_free(&creq);
    buf_free(&sts);
    buf_free(&auth);
}

static void check_encode(const char *in, int keep_slash, const char *want)
{
    struct buf b = { 0 };
    CHECK_EQ(sigv4_uri_encode(&b, in, strlen(in), keep_slash), 0);
    CHECK_STR((char *)b.data, want);
    buf_free(&b);
}

/* A raw key and its encoded form canonicalize alike, so what we send is what we sign. */
static void check_raw_path_same_as_encoded(void)
{
    struct sigv4_header h[] = { { "Host", "h" } };
    struct sigv4_request raw = { "PUT", "/test$file.text", "", h, 1, "x" };
    struct sigv4_request enc = { "PUT", "/test%24file.text", "", h, 1, "x" };
    struct buf a = { 0 }, b = { 0 };
    CHECK_EQ(sigv4_canonical_request(&raw, &a), 0);
    CHECK_EQ(sigv4_canonical_request(&enc, &b), 0);
    CHECK_STR((char *)a.data, (char *)b.data);
    buf_free(&a);
    buf_free(&b);
}

/* The two libcurl 7.88 pitfalls: unsorted parameters and "uploads" without '='. */
static void check_query_rules(void)
{
    struct sigv4_header h[] = { { "Host", "h" } };
    struct sigv4_request r = { "POST", "/b/k", "uploads", h, 1, "x" };
    struct buf c = { 0 };
    CHECK_EQ(sigv4_canonical_request(&r, &c), 0);
    CHECK(c.data && strstr((char *)c.data, "\nuploads=\n"));
    buf_reset(&c);
    r.query = "uploadId=a%2Bb&partNumber=2";
    CHECK_EQ(sigv4_canonical_request(&r, &c), 0);
    CHECK(c.data && strstr((char *)c.data, "\npartNumber=2&uploadId=a%2Bb\n"));
    buf_reset(&c);
    r.query = "bad=%G1";
    CHECK_EQ(sigv4_canonical_request(&r, &c), -EINVAL);
    buf_free(&c);
}

int main(void)
{
    for (size_t i = 0; i < sizeof sigv4_vectors / sizeof sigv4_vectors[0]; i++)
        check_vector(&sigv4_vectors[i]);
    check_encode("a b/c~d_e.f-g", 1, "a%20b/c~d_e.f-g");
    check_encode("a b/c", 0, "a%20b%2Fc");
    check_encode("\xe1\x88\xb4+=&", 0, "%E1%88%B4%2B%3D%26");
    check_raw_path_same_as_encoded();
    check_query_rules();
    return check_done("test_sigv4");
}
