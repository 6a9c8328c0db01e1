"""S3's XML errors: one exception class carrying the code, the HTTP status and a message.

The codes and statuses are those of the S3 API reference's error table; the gateway answers
every failure with one of them (``<Error><Code>..</Code><Message>..</Message>..</Error>``), and
HEAD requests with the status alone (a HEAD response has no body).
"""

from __future__ import annotations

from xml.sax.saxutils import escape

_STATUS: dict[str, int] = {
    "AccessDenied": 403,
    "AuthorizationHeaderMalformed": 400,
    "BadDigest": 400,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "EntityTooLarge": 400,
    "EntityTooSmall": 400,
    "IncompleteBody": 400,
    "InternalError": 500,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidBucketName": 400,
    "InvalidDigest": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "KeyTooLongError": 400,
    "MalformedXML": 400,
    "MetadataTooLarge": 400,
    "AuthorizationQueryParametersError": 400,
    "MethodNotAllowed": 405,
    "MissingContentLength": 411,
    "MissingSecurityHeader": 400,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NoSuchUpload": 404,
    "NotImplemented": 501,
    "NotModified": 304,
    "PreconditionFailed": 412,
    "RequestTimeTooSkewed": 403,
    "ServiceUnavailable": 503,
    "SignatureDoesNotMatch": 403,
    "SlowDown": 503,
    "XAmzContentSHA256Mismatch": 400,
    "ConditionalRequestConflict": 409,
}


class S3Error(Exception):
    """An S3 error response: ``code`` (S3's name), ``message``, the HTTP ``status``."""

    def __init__(self, code: str, message: str, *, resource: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = _STATUS.get(code, 400)
        self.resource = resource

    def xml(self, request_id: str) -> bytes:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{self.code}</Code><Message>{escape(self.message)}</Message>"
            f"<Resource>{escape(self.resource)}</Resource>"
            f"<RequestId>{request_id}</RequestId></Error>"
        ).encode()
