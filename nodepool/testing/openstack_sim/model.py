"""The simulated cloud's records and the knobs of its faults."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


PROJECT_ID = "5f0d1a6b2c3e4d5f8a9b0c1d2e3f4a5b"
USER_ID = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"
COMPUTE_MICROVERSION = "2.79"


@dataclass
class Faults:
    """Failure injection; counters decrement as failures are served."""

    http_500: int = 0                 # next N requests of any kind
    rate_limited: int = 0             # next N requests answered 429
    over_limit: int = 0               # next N requests answered 413
    quota_creates: int = 0            # next N server creates answered 403 quota
    error_servers: int = 0            # next N servers go to ERROR
    quota_error_servers: int = 0      # ... with a quota fault
    failing_deletes: int = 0          # next N server deletes answered 500
    volumes_left_behind: int = 0      # next N server deletes keep their boot volume
    slow_seconds: float = 0.0         # every response delayed this long
    never_active: bool = False


@dataclass
class Server:
    id: str
    name: str
    flavor: dict
    image: str | None
    az: str
    metadata: dict[str, str]
    networks: Any
    key_name: str | None
    active_at: float
    status: str = "BUILD"
    fault: dict | None = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                time.gmtime()))
    address: str = ""
    address6: str = ""
    volumes: list = field(default_factory=list)
    security_groups: list = field(default_factory=list)
    config_drive: bool = False
    user_data: str | None = None
    # What os-getConsoleOutput answers once the server is ACTIVE.
    console_output: str = ""


FLAVORS = [
    {"id": "1", "name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20},
    {"id": "2", "name": "m1.medium", "vcpus": 2, "ram": 4096, "disk": 40},
    {"id": "3", "name": "m1.large", "vcpus": 4, "ram": 8192, "disk": 80},
]
