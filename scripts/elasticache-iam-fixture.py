#!/usr/bin/env python3
"""Writes tests/fixtures/elasticache_iam_tokens.json: ElastiCache IAM auth tokens made by
botocore's request signer for a fixed clock and fixed credentials.

cacheside mints these tokens with aws-sigv4; tests/iam.rs compares its tokens with these,
so the check is against an implementation cacheside does not share code with. The tokens are
built the way AWS's own ElastiCache IAM examples build them: the presigned URL of
GET http://<cache name>/?Action=connect&User=<user id>[&ResourceType=ServerlessCache],
service "elasticache", expiry 900 s, with the scheme stripped.

Run once (pip install botocore); the test itself needs no Python:
    python3 scripts/elasticache-iam-fixture.py > tests/fixtures/elasticache_iam_tokens.json
"""

import datetime
import json
import sys
from unittest import mock
from urllib.parse import urlencode

import botocore
import botocore.auth
import botocore.credentials
import botocore.hooks
import botocore.model
import botocore.signers

# 2024-05-17T09:30:12Z: any fixed instant works; this one is not midnight, so a wrong date or
# time format shows.
CLOCK = datetime.datetime(2024, 5, 17, 9, 30, 12, tzinfo=datetime.timezone.utc)
# AWS's documented example keys; the session token has '/', '+' and '=' so percent-encoding
# of the query shows.
ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE/Session+Token=="

CASES = [
    # name, region, cache name, user id, serverless, session token
    ("replication-group", "us-east-1", "my-replication-group", "iam-user-01", False, None),
    ("replication-group-session", "eu-west-2", "orders-cache", "app-user", False, SESSION_TOKEN),
    ("serverless", "us-west-2", "my-serverless-cache", "iam-user-01", True, None),
    ("serverless-session", "ap-southeast-1", "sessions", "svc-reader", True, SESSION_TOKEN),
]


def token(region, cache_name, user_id, serverless, session_token):
    credentials = botocore.credentials.Credentials(ACCESS_KEY, SECRET_KEY, session_token)
    # RequestSigner holds the emitter weakly: keep it alive for the call.
    emitter = botocore.hooks.HierarchicalEmitter()
    signer = botocore.signers.RequestSigner(
        botocore.model.ServiceId("elasticache"), region, "elasticache", "v4", credentials, emitter
    )
    query = {"Action": "connect", "User": user_id}
    if serverless:
        query["ResourceType"] = "ServerlessCache"
    url = f"http://{cache_name}/?{urlencode(query)}"
    request = {"method": "GET", "url": url, "body": {}, "headers": {}, "context": {}}
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=CLOCK):
        signed = signer.generate_presigned_url(
            request, operation_name="connect", expires_in=900, region_name=region
        )
    return signed.removeprefix("http://")


def main():
    cases = []
    for name, region, cache_name, user_id, serverless, session_token in CASES:
        cases.append(
            {
                "name": name,
                "region": region,
                "cache_name": cache_name,
                "user_id": user_id,
                "serverless": serverless,
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
                "session_token": session_token,
                "unix_time": int(CLOCK.timestamp()),
                "token": token(region, cache_name, user_id, serverless, session_token),
            }
        )
    json.dump(
        {"generator": f"botocore {botocore.__version__} RequestSigner.generate_presigned_url",
         "cases": cases},
        sys.stdout,
        indent=2,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
