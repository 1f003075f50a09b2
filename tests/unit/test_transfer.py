"""The export-image-data file (nodepool.builder.transfer); the round trip
through ZooKeeper is in tests/functional/test_builder.py."""

import json
import os

import pytest

from nodepool.builder import transfer


def test_export_file_is_private_and_truncated(tmp_path):
    data = {"/nodepool/images/ubuntu/pause": ""}
    new = str(tmp_path / "new.json")
    transfer.write_export(new, data)
    assert oct(os.stat(new).st_mode & 0o777) == "0o600"
    # Over a longer file nothing of it is left behind.
    old = str(tmp_path / "old.json")
    with open(old, "w") as handle:
        handle.write("x" * 1000)
    transfer.write_export(old, data)
    assert transfer.read_export(old) == data


@pytest.mark.parametrize("content", [
    "not json", json.dumps([]), json.dumps({"/nodepool/nodes/0000000001": "{}"}),
    json.dumps({"/nodepool/images/ubuntu/pause": None}),
])
def test_what_is_not_an_export(tmp_path, content):
    path = tmp_path / "images.json"
    path.write_text(content)
    with pytest.raises(transfer.TransferError):
        transfer.read_export(str(path))
    with pytest.raises(transfer.TransferError, match="cannot read"):
        transfer.read_export(str(tmp_path / "missing.json"))
