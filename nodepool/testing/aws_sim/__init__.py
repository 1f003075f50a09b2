"""An AWS API server on loopback for the aws driver's tests and benchmark:
moto's server mode (``moto[server]``) in a process of its own, with the
calls moto lacks filled in (see :mod:`moto_extras`), spoken to by
unmodified boto3 over HTTP.

The driver reaches it only the way an operator's boto3 reaches any endpoint:
``AWS_ENDPOINT_URL`` and credentials in the environment (:meth:`env`).
Tests shape it through :meth:`set` (vCPU quotas, boot delay, import faults)
and read how many API calls were made through :meth:`calls`.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

REGION = "us-east-1"
BUCKET = "nodepool-images"
KEY_NAME = "zuul"
# Public images the simulated region offers (cloud-images find them by id,
# or by filters on their name).
UBUNTU_AMI = "ami-0a1b2c3d4e5f60001"
DEBIAN_AMI = "ami-0a1b2c3d4e5f60002"
AMIS = [
    {"ami_id": UBUNTU_AMI, "name": "ubuntu-jammy-22.04-amd64-server-20240101",
     "description": "Ubuntu 22.04", "owner_id": "099720109477", "public": True,
     "virtualization_type": "hvm", "architecture": "x86_64", "state": "available",
     "root_device_type": "ebs", "root_device_name": "/dev/sda1",
     "creation_date": "2024-01-01T00:00:00.000Z", "hypervisor": "xen",
     "image_type": "machine", "platform": None, "sriov": "simple"},
    {"ami_id": DEBIAN_AMI, "name": "debian-12-amd64-20240102",
     "description": "Debian 12", "owner_id": "136693071363", "public": True,
     "virtualization_type": "hvm", "architecture": "x86_64", "state": "available",
     "root_device_type": "ebs", "root_device_name": "/dev/xvda",
     "creation_date": "2024-01-02T00:00:00.000Z", "hypervisor": "xen",
     "image_type": "machine", "platform": None, "sriov": "simple"},
]
START_TIMEOUT = 60.0


class AWSSimulator:
    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.port = 0
        self.workdir = ""
        self.process: subprocess.Popen | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> "AWSSimulator":
        self.workdir = tempfile.mkdtemp(prefix="nodepool-aws-sim-")
        amis = os.path.join(self.workdir, "amis.json")
        with open(amis, "w", encoding="utf-8") as handle:
            json.dump(AMIS, handle)
        env = dict(os.environ, MOTO_AMIS_PATH=amis,
                   # As in AWS: unknown AMIs and key pairs are refused.
                   MOTO_ENABLE_AMI_VALIDATION="true",
                   MOTO_ENABLE_KEYPAIR_VALIDATION="true",
                   PYTHONUNBUFFERED="1")
        log = open(os.path.join(self.workdir, "server.log"), "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nodepool.testing.aws_sim", "--host", self.host,
             "--port", "0"], stdout=subprocess.PIPE, stderr=log, env=env)
        log.close()
        self.port = self._read_port()
        return self

    def _read_port(self) -> int:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.5)
            if ready:
                line = self.process.stdout.readline()
                if line.startswith(b"PORT "):
                    return int(line.split()[1])
            if self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"the AWS simulator did not start ({line!r}); see "
                           f"{self.workdir}/server.log")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = ""

    # -- how boto3 reaches it -----------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for boto3: this endpoint, dummy credentials, and no
        look-ups beyond loopback (no instance metadata service, no files)."""
        return {"AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": os.path.join(self.workdir, "no-config"),
                "AWS_SHARED_CREDENTIALS_FILE": os.path.join(self.workdir, "no-creds")}

    def client(self, service: str, region: str = REGION):
        import boto3
        return boto3.client(service, region_name=region, endpoint_url=self.endpoint,
                            aws_access_key_id="testing",
                            aws_secret_access_key="testing")

    # -- control ----------------------------------------------------------------------

    def _post(self, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.endpoint}{path}", data=json.dumps(body or {}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            data = response.read()
        return json.loads(data) if data.strip().startswith(b"{") else {}

    def reset(self, region: str = REGION) -> None:
        """Empty every service, then the test's usual furniture: the image
        bucket and the key pair."""
        self._post("/moto-api/reset")
        self._post("/_sim/reset")
        self.client("s3", region).create_bucket(Bucket=BUCKET)
        self.client("ec2", region).create_key_pair(KeyName=KEY_NAME)

    def set(self, **state) -> None:
        """Shape the simulation: ``quotas={"L-1216C47A": 4}``,
        ``boot_delay=0.5``, ``import_describes=3``, ``import_limit_failures=1``,
        ``fail_imports=1``, ``capacity_failures=2``."""
        self._post("/_sim/set", state)

    def calls(self, reset: bool = False) -> dict[str, int]:
        """API calls made so far, by ``service.Action``."""
        return self._post("/_sim/calls", {"reset": reset})
