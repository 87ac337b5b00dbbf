"""s3fs with one retry layer, botocore's, so ``TOOLKIT_STORAGE_MAX_ATTEMPTS`` means attempts.

s3fs wraps each botocore call in its own retry loop (five tries, twice over for a read:
once around the request, once around reading the body), and botocore retries inside each
try. The two multiply. Here s3fs tries once and botocore alone retries, with the budget
and backoff the client config gives it. Imported only for ``s3://`` URLs: s3fs costs
half a second to import.
"""

from __future__ import annotations

from s3fs import S3FileSystem

__all__ = ["OneRetryLayerS3FileSystem"]


class OneRetryLayerS3FileSystem(S3FileSystem):
    retries = 1  # s3fs's retry count, a class attribute meant for overriding
