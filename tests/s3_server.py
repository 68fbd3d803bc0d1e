"""A real S3 API server on the loopback interface: moto's server mode, in its own process.

Requests are authenticated (moto's IAM): :func:`start` creates one user with full access and
its access key, so a wrong key is refused as S3 refuses it. ``env`` is what a client needs in
its standard environment (endpoint, key, secret, region); nothing else points at the server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import attrs
import boto3

BUCKET = "clipcore-data"
_UNAUTHENTICATED_SETUP_CALLS = 3  # create_user, put_user_policy, create_access_key


@attrs.define
class S3Server:
    process: subprocess.Popen
    endpoint: str
    key: str
    secret: str

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS environment of a client of this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self, key: str | None = None, secret: str | None = None):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=key or self.key, aws_secret_access_key=secret or self.secret)

    def upload(self, folder: Path, prefix: str) -> str:
        """Every file under ``folder`` as ``s3://BUCKET/<prefix>/<relative path>``; the prefix's URL."""
        client = self.client()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
        return f"s3://{BUCKET}/{prefix}"

    def put(self, name: str, data: bytes) -> str:
        self.client().put_object(Bucket=BUCKET, Key=name, Body=data)
        return f"s3://{BUCKET}/{name}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def tar_folder(folder: Path, out: Path) -> Path:
    """The files of ``folder`` (by name, sorted) as the archive ``out`` (``.tar.gz``: gzip-compressed),
    laid out as TAO's ``images.tar.gz`` / ``captions.tar.gz``."""
    with tarfile.open(out, "w:gz" if out.name.endswith(".gz") else "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.add(path, arcname=path.name)
    return out


def start(log: Path | None = None) -> S3Server:
    """Start the server on a free loopback port, with one user, its key and the bucket."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_UNAUTHENTICATED_SETUP_CALLS)}
    out = open(log, "wb") if log else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               env=env, stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"moto's S3 server did not start on {endpoint}") from None
            time.sleep(0.1)
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="clipcore")
    iam.put_user_policy(UserName="clipcore", PolicyName="everything", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="clipcore")["AccessKey"]
    server = S3Server(process, endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    server.client().create_bucket(Bucket=BUCKET)
    return server
