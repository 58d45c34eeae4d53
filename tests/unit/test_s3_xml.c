/* Reading and writing the S3 API's XML documents, with the shapes servers really send. */
#include <errno.h>
#include <stdlib.h>

#include "cache/s3_xml.h"
#include "check.h"

#define DOC(s) s, sizeof(s) - 1

static void check_list(void)
{
    struct s3_list l;
    CHECK_EQ(s3_xml_list(DOC("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                             "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                             "<Name>b</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount>"
                             "<MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>"
                             "<Contents><Key>p/a&amp;b</Key>"
                             "<LastModified>2009-10-12T17:50:30.000Z</LastModified>"
                             "<ETag>\"x\"</ETag><Size>434234</Size></Contents>"
                             "<Contents><Key>p/c</Key><Size>0</Size></Contents>"
                             "<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="
                             "</NextContinuationToken></ListBucketResult>"),
                         &l),
             0);
    CHECK_EQ(l.n, 2);
    CHECK_STR(l.items[0].key, "p/a&b");
    CHECK_EQ(l.items[0].size, 434234);
    CHECK_EQ(l.items[0].mtime, 1255369830);
    CHECK_STR(l.items[1].key, "p/c");
    CHECK_EQ(l.truncated, 1);
    CHECK_STR(l.next_token, "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=");
    s3_list_free(&l);

    CHECK_EQ(s3_xml_list(DOC("<ListBucketResult><IsTruncated>false</IsTruncated>"
                             "</ListBucketResult>"),
                         &l),
             0);
    CHECK_EQ(l.n, 0);
    CHECK_EQ(l.truncated, 0);
    s3_list_free(&l);

    /* A truncated page without a token would make the pager loop forever. */
    CHECK_EQ(s3_xml_list(DOC("<ListBucketResult><IsTruncated>true</IsTruncated>"
                             "</ListBucketResult>"),
                         &l),
             -EBADMSG);
    s3_list_free(&l);
    CHECK_EQ(s3_xml_list(DOC("<ListBucketResult><Contents>"), &l), -EBADMSG);
    s3_list_free(&l);
    CHECK_EQ(s3_xml_list(DOC("<Error><Code>x</Code></Error>"), &l), -EBADMSG);
    s3_list_free(&l);
}

static void check_error(void)
{
    struct s3_error e;
    CHECK_EQ(s3_xml_error(DOC("<?xml version='1.0' encoding='UTF-8'?>\n<Error>"
                              "<Code>SignatureDoesNotMatch</Code><Message>The request signature "
                              "we calculated does not match</Message><RequestId>tx</RequestId>"
                              "</Error>"),
                          &e),
             0);
    CHECK_STR(e.code, "SignatureDoesNotMatch");
    CHECK_STR(e.message, "The request signature we calculated does not match");
    CHECK_EQ(s3_xml_error(DOC("<html>502 Bad Gateway</html>"), &e), -EBADMSG);
    CHECK_STR(e.code, "");
    CHECK_EQ(s3_xml_error(DOC("not xml at all"), &e), -EBADMSG);
}

static void check_upload_and_delete(void)
{
    char *id = NULL;
    CHECK_EQ(s3_xml_upload_id(DOC("<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>"
                                  "<UploadId>VXBsb2FkIElE</UploadId>"
                                  "</InitiateMultipartUploadResult>"),
                              &id),
             0);
    CHECK_STR(id, "VXBsb2FkIElE");
    free(id);
    CHECK_EQ(s3_xml_upload_id(DOC("<InitiateMultipartUploadResult/>"), &id), -EBADMSG);
    CHECK(id == NULL);

    struct s3_error e;
    CHECK_EQ(s3_xml_delete_result(DOC("<DeleteResult><Deleted><Key>a</Key></Deleted>"
                                      "</DeleteResult>"),
                                  &e),
             0);
    CHECK_EQ(s3_xml_delete_result(DOC("<DeleteResult><Error><Key>b</Key><Code>AccessDenied</Code>"
                                      "<Message>no</Message></Error><Error><Key>c</Key>"
                                      "</Error></DeleteResult>"),
                                  &e),
             1);
    CHECK_STR(e.key, "b");
    CHECK_STR(e.code, "AccessDenied");
    CHECK_EQ(s3_xml_delete_result(DOC("<Other/>"), &e), -EBADMSG);
}

/* Review findings: shapes of answers that once slipped through. */
static void check_hostile_shapes(void)
{
    struct s3_list l;
    struct s3_error e;
    /* Keep-alive whitespace before the declaration, as some servers send. */
    CHECK_EQ(s3_xml_error(DOC("  \n\t<?xml version=\"1.0\"?><Error><Code>InternalError</Code>"
                              "</Error>"),
                          &e),
             0);
    CHECK_STR(e.code, "InternalError");
    /* A size from a <Contents> without a key must not carry over to the next. */
    CHECK_EQ(s3_xml_list(DOC("<ListBucketResult><Contents><Size>99</Size></Contents>"
                             "<Contents><Key>k</Key></Contents></ListBucketResult>"),
                         &l),
             0);
    CHECK_EQ(l.n, 1);
    CHECK_EQ(l.n == 1 ? l.items[0].size : 1, 0);
    s3_list_free(&l);
    /* Nesting deeper than the walker tracks: an error, never a silently shorter listing. */
    struct buf deep = { 0 };
    buf_printf(&deep, "<ListBucketResult>");
    for (int i = 0; i < 200; i++)
        buf_printf(&deep, "<junk>");
    for (int i = 0; i < 200; i++)
        buf_printf(&deep, "</junk>");
    buf_printf(&deep, "<Contents><Key>after</Key></Contents><IsTruncated>true</IsTruncated>"
                      "<NextContinuationToken>t</NextContinuationToken></ListBucketResult>");
    CHECK_EQ(s3_xml_list((char *)deep.data, deep.len, &l), -EBADMSG);
    s3_list_free(&l);
    buf_free(&deep);
}

static void check_result(void)
{
    struct s3_error e;
    CHECK_EQ(s3_xml_result(DOC("<CompleteMultipartUploadResult><ETag>x</ETag>"
                               "</CompleteMultipartUploadResult>"),
                           "CompleteMultipartUploadResult", &e),
             0);
    CHECK_EQ(s3_xml_result(DOC("\n   <?xml version=\"1.0\"?><Error><Code>InternalError</Code>"
                               "<Message>try again</Message></Error>"),
                           "CompleteMultipartUploadResult", &e),
             1);
    CHECK_STR(e.code, "InternalError");
    CHECK_EQ(s3_xml_result(DOC(""), "CopyObjectResult", &e), -EBADMSG);
    CHECK_EQ(s3_xml_result(DOC("<Something/>"), "CopyObjectResult", &e), -EBADMSG);
}

static void check_bodies(void)
{
    struct buf b = { 0 };
    const char *keys[] = { "a<&>'\"", "z" };
    CHECK_EQ(s3_xml_delete_body(&b, "p/", keys, 2), 0);
    CHECK_STR((char *)b.data,
              "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Delete><Quiet>true</Quiet>"
              "<Object><Key>p/a&lt;&amp;&gt;&apos;&quot;</Key></Object>"
              "<Object><Key>p/z</Key></Object></Delete>");
    buf_reset(&b);
    char *etags[] = { "\"e1\"", "\"e2\"" };
    CHECK_EQ(s3_xml_complete_body(&b, etags, 2), 0);
    CHECK_STR((char *)b.data, "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>"
                              "&quot;e1&quot;</ETag></Part><Part><PartNumber>2</PartNumber><ETag>"
                              "&quot;e2&quot;</ETag></Part></CompleteMultipartUpload>");
    buf_free(&b);
}

int main(void)
{
    check_list();
    check_error();
    check_upload_and_delete();
    check_bodies();
    check_hostile_shapes();
    check_result();
    return check_done("test_s3_xml");
}
