"""nodepool-builder against a real ZooKeeper, running tools/fake-image-create
(a disk-image-create compatible command) as a subprocess and uploading to
the fake cloud."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import wait_until
from nodepool.drivers.fake.adapter import FakeCloud
from nodepool.zk.records import BuildState, UploadState

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIB = os.path.join(ROOT, "tools", "fake-image-create")

CONFIG = """
images-dir: {images}
build-log-dir: {logs}
build-log-retention: {retention}
labels:
  - name: small
diskimages:
  - name: ubuntu
    elements: [ubuntu-minimal, vm]
    release: noble
    dib-cmd: {dib}
    rebuild-age: {rebuild_age}
    build-timeout: {build_timeout}
    username: ci
    metadata: {{os: ubuntu}}
    env-vars:
      FAKE_DIB_EXPECT_DIB_RELEASE: noble
      FAKE_DIB_EXPECT_DIB_IMAGE_NAME: ubuntu
{image_extra}
providers:
  - name: fake-cloud
    cloud: fake
{provider_extra}
    diskimages:
{provider_images}
    pools:
      - name: main
        max-servers: 5
        labels:
          - name: small
            diskimage: ubuntu
            min-ram: 1
"""


def config_text(tmp_path, rebuild_age=86400, build_timeout=600, retention=7,
                image_extra="", provider_extra="",
                provider_images="      - name: ubuntu\n        meta: {team: ci}\n"):
    images = tmp_path / "images"
    logs = tmp_path / "logs"
    images.mkdir(exist_ok=True)
    return CONFIG.format(images=images, logs=logs, dib=DIB, rebuild_age=rebuild_age,
                         build_timeout=build_timeout, retention=retention,
                         image_extra=image_extra, provider_extra=provider_extra,
                         provider_images=provider_images)


def ready_builds(store, image="ubuntu"):
    return [b for b in store.get_builds(image) if b.state == BuildState.READY]


def ready_uploads(store, image="ubuntu", provider="fake-cloud"):
    return [u for b in store.get_builds(image)
            for u in store.get_uploads(image, b.id, provider)
            if u.state == UploadState.READY]


def wait_for_ready_upload(store, count=1, timeout=30, image="ubuntu"):
    wait_until(lambda: len(ready_uploads(store, image)) >= count, timeout=timeout,
               message=f"{count} ready upload(s) of {image}")
    return ready_uploads(store, image)


def with_dib_env(text: str, **variables: str) -> str:
    """A config whose diskimage passes extra env-vars to the DIB command."""
    line = "      FAKE_DIB_EXPECT_DIB_IMAGE_NAME: ubuntu\n"
    extra = "".join(f"      {k}: '{v}'\n" for k, v in variables.items())
    return text.replace(line, line + extra)


def wait_for_log(tmp_path, text: str, message: str) -> None:
    logs = tmp_path / "logs"
    wait_until(lambda: logs.exists() and any(
        text in (logs / n).read_text() for n in os.listdir(logs)),
        timeout=30, message=message)


def cloud():
    return FakeCloud.get("fake")


def test_build_upload_and_a_launcher_boots_the_image(env, store, zuul, tmp_path):
    path = env.config(config_text(tmp_path))
    builder = env.start_builder(path)
    [upload] = wait_for_ready_upload(store)
    [build] = ready_builds(store)
    # The build record: who built it, formats, the diskimage's user.
    assert build.builder == builder.hostname and build.builder_id == builder.builder_id
    assert build.formats == ["qcow2"] and build.username == "ci"
    assert open(tmp_path / "images" / "builder_id.txt").read() == builder.builder_id
    # DIB's files: a real qcow2 image, checksums, manifest; and a log.
    base = tmp_path / "images" / f"ubuntu-{build.id}"
    with open(f"{base}.qcow2", "rb") as handle:
        assert handle.read(4) == b"QFI\xfb"
    assert os.path.exists(f"{base}.qcow2.md5") and os.path.isdir(f"{base}.d")
    build_log = (tmp_path / "logs" / f"ubuntu-{build.id}.log").read_text()
    assert "-t qcow2 --checksum --no-tmpfs --qemu-img-options compat=0.10" in build_log
    assert "elements: ubuntu-minimal vm; release: 'noble'" in build_log
    assert build_log.endswith("Exit code: 0\n")
    # The upload: in the cloud with our properties and the configured meta.
    image = cloud().images[upload.external_id]
    assert image.metadata["nodepool_build_id"] == build.id
    assert image.metadata["nodepool_upload_id"] == upload.id
    assert image.metadata["nodepool_provider_name"] == "fake-cloud"
    assert image.metadata["team"] == "ci" and image.metadata["os"] == "ubuntu"
    assert upload.external_name == image.name and upload.format == "qcow2"
    assert upload.username == "ci"
    # A launcher on the same configuration boots it.
    env.start(path)
    request = zuul.wait_for_request(zuul.submit(["small"]), timeout=30)
    assert request["state"] == "fulfilled"
    node = zuul.get_node(request["nodes"][0])
    assert node["image_id"].endswith(f"/{build.id}/providers/fake-cloud/images/"
                                     f"{upload.id}")
    assert node["username"] == "ci"
    server = cloud().servers[node["external_id"]]
    assert server.image == upload.external_id


def test_manual_build_and_pause(env, store, tmp_path):
    path = env.config(config_text(tmp_path))
    env.start_builder(path)
    wait_for_ready_upload(store)
    store.pause_image("ubuntu")
    store.request_build("ubuntu")
    env.settle()
    assert len(store.get_builds("ubuntu")) == 1  # paused: the request waits
    assert store.build_request_status("ubuntu") == "pending"
    store.unpause_image("ubuntu")
    wait_until(lambda: len(ready_builds(store)) == 2, timeout=30,
               message="the requested build")
    wait_until(lambda: store.build_requested_at("ubuntu") is None, timeout=10,
               message="request flag removed after a successful build")
    wait_for_ready_upload(store, count=2)


def test_scheduled_rebuilds_keep_exactly_two_builds_and_uploads(env, store, tmp_path):
    path = env.config(config_text(tmp_path, rebuild_age=1, retention=1))
    env.start_builder(path)
    seen = set()

    def four_builds_seen():
        seen.update(b.id for b in store.get_builds("ubuntu"))
        return len(seen) >= 4
    wait_until(four_builds_seen, timeout=60, message="four builds over time")
    env.rewrite(path, config_text(tmp_path, rebuild_age=86400, retention=1))

    def settled():
        builds = store.get_builds("ubuntu")
        return (len(builds) == 2 and all(b.state == BuildState.READY for b in builds)
                and len(ready_uploads(store)) == 2 and len(cloud().images) == 3)
    wait_until(settled, timeout=30, message="two builds, two uploads, two images")
    kept = {b.id for b in store.get_builds("ubuntu")}
    on_disk = {name.split("-", 1)[1].split(".")[0]
               for name in os.listdir(tmp_path / "images") if name.startswith("ubuntu-")}
    assert on_disk == kept  # the older builds' files are gone
    uploaded = {u.external_id for u in ready_uploads(store)}
    assert uploaded | {"fake-image-id"} == set(cloud().images)
    # build-log-retention 1: one older log kept plus the newest.
    assert len(os.listdir(tmp_path / "logs")) <= 2


def test_failed_build_keeps_its_log_and_is_cleaned_up(env, store, tmp_path, statsd,
                                                     caplog):
    env.start_builder(env.config(with_dib_env(config_text(tmp_path),
                                              FAKE_DIB_FAIL="127")))
    wait_for_log(tmp_path, "Exit code: 127", "a failed build's log")
    # Failed records are removed, and their files with them; no upload.
    wait_until(lambda: all(b.state != BuildState.FAILED
                           for b in store.get_builds("ubuntu"))
               and not any(n.endswith(".qcow2")
                           for n in os.listdir(tmp_path / "images")
                           if n.startswith("ubuntu-") and
                           store.get_build("ubuntu", n[7:39]) is None),
               timeout=30, message="failed build cleaned")
    assert not ready_uploads(store)
    assert statsd.wait_for(lambda keys: "nodepool.dib_image_build.ubuntu.status.rc"
                           in keys)
    assert "nodepool.dib_image_build.ubuntu.status.rc:127|g" in statsd.packets
    # A failing build is retried once per build interval (0.5 s here), not
    # at once on its own record's event.
    started = time.monotonic()
    time.sleep(2.0)
    window = time.monotonic() - started
    failures = [r.created for r in caplog.records
                if "failed (exit code 127)" in r.getMessage()]
    in_window = [t for t in failures if t >= time.time() - window]
    assert len(in_window) <= 1 + window / 0.5, failures


def test_disk_full_gives_a_failed_build_with_the_log(env, store, tmp_path):
    env.start_builder(env.config(with_dib_env(config_text(tmp_path),
                                              FAKE_DIB_ENOSPC="1")))
    wait_for_log(tmp_path, "No space left on device",
                 "the failed build's log names the cause")
    assert not ready_builds(store)


def test_build_timeout(env, store, tmp_path):
    env.start_builder(env.config(with_dib_env(config_text(tmp_path, build_timeout=1),
                                              FAKE_DIB_SLEEP="60")))
    wait_for_log(tmp_path, "timed out after 1s", "the build timed out")
    assert not ready_builds(store)
    # The timed-out command was killed, not left running.
    wait_until(lambda: subprocess.run(
        ["pgrep", "-f", str(tmp_path / "images")], capture_output=True).returncode == 1,
        timeout=10, message="no DIB process left")


def test_upload_failure_is_retried(env, store, tmp_path):
    text = config_text(tmp_path, provider_extra="    simulation: {fail-uploads: 2}\n")
    env.start_builder(env.config(text))
    [upload] = wait_for_ready_upload(store)
    assert cloud().settings.fail_uploads == 0
    assert int(upload.id) >= 2  # the failed attempts had their own records


def test_multiple_formats(env, store, tmp_path):
    text = config_text(tmp_path, image_extra="    formats: [raw, vhd]\n")
    env.start_builder(env.config(text))
    wait_for_ready_upload(store)
    [build] = ready_builds(store)
    assert build.formats == ["qcow2", "raw", "vhd"]
    for fmt in build.formats:
        assert os.path.getsize(tmp_path / "images" / f"ubuntu-{build.id}.{fmt}") > 0
    [upload] = ready_uploads(store)
    assert upload.format == "qcow2"


def test_provider_diskimages_emptied_removes_its_uploads(env, store, tmp_path):
    path = env.config(config_text(tmp_path))
    env.start_builder(path)
    [upload] = wait_for_ready_upload(store)
    text = config_text(tmp_path, provider_images="      []\n").replace(
        "            diskimage: ubuntu\n", "            cloud-image: precise\n").replace(
        "    diskimages:\n      []\n",
        "    diskimages: []\n    cloud-images:\n      - name: precise\n"
        "        image-name: Fake Precise\n")
    env.rewrite(path, text)
    wait_until(lambda: not [u for b in store.get_builds("ubuntu")
                            for u in store.get_uploads("ubuntu", b.id, "fake-cloud")],
               timeout=30, message="uploads removed")
    assert upload.external_id not in cloud().images
    assert ready_builds(store)  # the build itself stays


def test_removed_diskimage_is_cleaned_up_everywhere(env, store, tmp_path):
    path = env.config(config_text(tmp_path))
    env.start_builder(path)
    [upload] = wait_for_ready_upload(store)
    env.rewrite(path, f"images-dir: {tmp_path / 'images'}\n"
                f"build-log-dir: {tmp_path / 'logs'}\nlabels: []\nproviders:\n"
                "  - name: fake-cloud\n    cloud: fake\n")
    wait_until(lambda: not store.get_builds("ubuntu"), timeout=30,
               message="build records removed")
    assert upload.external_id not in cloud().images
    wait_until(lambda: not [n for n in os.listdir(tmp_path / "images")
                            if n.startswith("ubuntu-")], timeout=10,
               message="local files removed")


def test_image_delete_falls_back_and_is_reuploaded(env, store, zuul, tmp_path):
    path = env.config(config_text(tmp_path))
    env.start_builder(path)
    wait_for_ready_upload(store)
    store.request_build("ubuntu")
    wait_until(lambda: len(ready_builds(store)) == 2 and len(ready_uploads(store)) == 2,
               timeout=30, message="two builds uploaded")
    previous, newest = sorted(ready_uploads(store), key=lambda u: u.state_time)
    # Hold uploads to this provider, so the fallback is what the launcher sees.
    paused = "      - name: ubuntu\n        pause: true\n"
    env.rewrite(path, config_text(tmp_path, provider_images=paused))
    env.start(path)
    result = nodepool_cli(path, "image-delete", "--provider", "fake-cloud",
                          "--image", "ubuntu", "--build-id", newest.build_id,
                          "--upload-id", newest.id)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: newest.external_id not in cloud().images, timeout=30,
               message="deleted from the cloud")
    request = zuul.wait_for_request(zuul.submit(["small"]), timeout=30)
    node = zuul.get_node(request["nodes"][0])
    assert node["image_id"] == previous.path
    assert cloud().servers[node["external_id"]].image == previous.external_id
    # Unpaused, the newest build is uploaded again (a new upload record).
    env.rewrite(path, config_text(tmp_path))
    wait_until(lambda: any(u.build_id == newest.build_id and u.id != newest.id
                           for u in ready_uploads(store)), timeout=30,
               message="re-uploaded")


def test_two_builders_never_build_the_same_image_at_once(env, store, tmp_path):
    first_dir, second_dir = tmp_path / "one", tmp_path / "two"
    first_dir.mkdir()
    second_dir.mkdir()
    paths = [env.config(config_text(d), name=f"{d.name}.yaml")
             for d in (first_dir, second_dir)]
    for d in (first_dir, second_dir):
        (d / "images" / "fake-image-create.pause").touch()
    for path in paths:
        env.start_builder(path)
    wait_until(lambda: store.get_builds("ubuntu"), timeout=15, message="a build")
    for _ in range(20):
        building = [b for b in store.get_builds("ubuntu")
                    if b.state == BuildState.BUILDING]
        assert len(building) == 1
        time.sleep(0.1)
    for d in (first_dir, second_dir):
        (d / "images" / "fake-image-create.pause").unlink()
    wait_for_ready_upload(store)
    assert len(store.get_builds("ubuntu")) == 1


def test_builder_killed_mid_build_leaves_nothing_blocking(env, store, tmp_path):
    path = env.config(config_text(tmp_path))
    pause = tmp_path / "images" / "fake-image-create.pause"
    pause.touch()
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "nodepool-builder"), "-f",
         "-c", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: store.get_builds("ubuntu"), timeout=30,
                   message="the build started")
        [killed] = store.get_builds("ubuntu")
        assert killed.state == BuildState.BUILDING
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    pause.unlink()
    env.start_builder(path)
    [upload] = wait_for_ready_upload(store)
    wait_until(lambda: store.get_build("ubuntu", killed.id) is None, timeout=30,
               message="the killed build's record removed")
    assert upload.build_id != killed.id
    wait_until(lambda: not [n for n in os.listdir(tmp_path / "images")
                            if killed.id in n], timeout=30,
               message="the killed build's files removed")


def test_orphaned_upload_of_a_kept_build_is_removed(env, store, tmp_path):
    path = env.config(config_text(tmp_path))
    env.start_builder(path)
    [upload] = wait_for_ready_upload(store)
    # An uploader that died: an `uploading` record nobody holds a lock for.
    orphan = type(upload)(image_name="ubuntu", build_id=upload.build_id,
                          provider_name="fake-cloud", state=UploadState.UPLOADING)
    store.store_upload(orphan)
    wait_until(lambda: store.get_upload("ubuntu", upload.build_id, "fake-cloud",
                                        orphan.id) is None, timeout=30,
               message="orphaned record removed")
    assert store.get_upload("ubuntu", upload.build_id, "fake-cloud", upload.id)


def test_cloud_image_deletion_is_retried_until_it_succeeds(env, store, tmp_path):
    path = env.config(config_text(tmp_path,
                                  provider_extra="    simulation: "
                                  "{fail-image-deletes: 3}\n"))
    env.start_builder(path)
    [upload] = wait_for_ready_upload(store)
    upload.state = UploadState.DELETING
    store.store_upload(upload)
    wait_until(lambda: store.get_upload("ubuntu", upload.build_id, "fake-cloud",
                                        upload.id) is None, timeout=30,
               message="record removed once the cloud deletion worked")
    assert cloud().settings.fail_image_deletes == 0
    assert upload.external_id not in cloud().images


def test_invalid_config_keeps_the_builder_running(env, store, tmp_path):
    path = env.config(config_text(tmp_path))
    builder = env.start_builder(path)
    wait_for_ready_upload(store)
    with open(path, "a") as handle:
        handle.write("bogus-key: 1\n")
    os.utime(path)
    env.settle()
    assert builder.config.images_dir == str(tmp_path / "images")
    store.request_build("ubuntu")
    wait_until(lambda: len(ready_builds(store)) == 2, timeout=30,
               message="still building on the last good configuration")


def test_session_loss_during_a_build_records_it_failed(env, store, tmp_path, zk_server):
    from conftest import expire_session
    path = env.config(config_text(tmp_path))
    pause = tmp_path / "images" / "fake-image-create.pause"
    pause.touch()
    builder = env.start_builder(path)
    wait_until(lambda: store.get_builds("ubuntu"), timeout=15, message="building")
    [first] = store.get_builds("ubuntu")
    expire_session(builder.client, zk_server.hosts)
    pause.unlink()
    # Either the build is recorded failed, or (its record removed by a
    # cleanup first) dropped with its files; never ready.
    wait_until(lambda: (store.get_build("ubuntu", first.id) is None or
                        store.get_build("ubuntu", first.id).state != "building"),
               timeout=30, message="the interrupted build settled")
    record = store.get_build("ubuntu", first.id)
    assert record is None or record.state in (BuildState.FAILED, BuildState.DELETING)
    wait_for_ready_upload(store)  # and the next build goes through


@pytest.mark.parametrize("keep", [False, True])
def test_delete_after_upload(env, store, tmp_path, keep):
    extra = "    formats: [raw]\n    delete-after-upload: true\n"
    if keep:
        extra += "    keep-formats: [raw]\n"
    env.start_builder(env.config(config_text(tmp_path, image_extra=extra)))
    wait_for_ready_upload(store)
    [build] = ready_builds(store)
    images = tmp_path / "images"
    # Both decisions are made in one cleanup pass; wait for its end.
    wait_until(lambda: not (images / f"ubuntu-{build.id}.qcow2").exists() and
               (images / f"ubuntu-{build.id}.raw").exists() == keep, timeout=30,
               message="the uploaded format deleted, raw kept only if asked")
    env.settle()  # (and a later pass does not change its mind)
    assert (images / f"ubuntu-{build.id}.raw").exists() == keep
    assert (images / f"ubuntu-{build.id}.d").is_dir()


def test_post_upload_hook(env, store, tmp_path):
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\necho \"$@\" > \"$3.post\"\n")
    hook.chmod(0o755)
    text = config_text(tmp_path, provider_extra=f"    post-upload-hook: {hook}\n")
    env.start_builder(env.config(text))
    [upload] = wait_for_ready_upload(store)
    [build] = ready_builds(store)
    marker = tmp_path / "images" / f"ubuntu-{build.id}.qcow2.post"
    assert marker.read_text().split()[:2] == ["fake-cloud", upload.external_id]


def test_failing_post_upload_hook_fails_the_upload(env, store, tmp_path, caplog):
    text = config_text(tmp_path, provider_extra="    post-upload-hook: /bin/false\n")
    builder = env.start_builder(env.config(text))
    wait_until(lambda: [u for b in store.get_builds("ubuntu")
                        for u in store.get_uploads("ubuntu", b.id, "fake-cloud")
                        if int(u.id) >= 1], timeout=30, message="upload attempted")
    # The upload is retried for ever, so the builder never settles: give the
    # next attempts time to fail too.
    time.sleep(2.0)
    assert not ready_uploads(store)
    # Failed attempts are retried once per upload interval (0.5 s here, two
    # workers), not at once on their own record's event.
    # (Failed records are removed by the cleanup, so count the hook's runs.)
    attempts = sum("post-upload-hook /bin/false exited" in r.getMessage()
                   for r in caplog.records)
    assert 1 <= attempts <= 10, attempts
    # Nothing of ours stays in the cloud once no attempt is in progress (a
    # snapshot taken mid-attempt sees the image before its hook failed).
    builder.stop()
    assert not [i for i in cloud().images.values()
                if i.metadata.get("nodepool_build_id")]


def test_builder_metrics_arrive_over_udp(env, store, tmp_path, statsd):
    env.start_builder(env.config(config_text(tmp_path)))
    wait_for_ready_upload(store)
    expected = {"nodepool.dib_image_build.ubuntu.qcow2.size",
                "nodepool.dib_image_build.ubuntu.status.duration",
                "nodepool.dib_image_build.ubuntu.status.rc",
                "nodepool.dib_image_build.ubuntu.status.last_build",
                "nodepool.image_update.ubuntu.fake-cloud",
                "nodepool.image_build_requests",
                "nodepool.image.ubuntu.image_build_requests"}
    assert statsd.wait_for(lambda keys: expected <= keys), \
        sorted(expected - statsd.keys())
    assert any(k.startswith("nodepool.builder.") and k.endswith(
        ".image.ubuntu.build.state") for k in statsd.keys())


def nodepool_cli(path, *args):
    return subprocess.run([sys.executable, "-m", "nodepool.cmd.nodepool", "-c", path,
                           *args], capture_output=True, text=True, timeout=60)


def test_image_commands(env, store, tmp_path):
    import json
    path = env.config(config_text(tmp_path))
    env.start_builder(path)
    [upload] = wait_for_ready_upload(store)
    [build] = ready_builds(store)
    [row] = json.loads(nodepool_cli(path, "dib-image-list", "--json").stdout)
    assert row["id"] == f"ubuntu-{build.id}" and row["state"] == "ready"
    assert row["formats"] == ["qcow2"] and row["builder"] == build.builder
    [row] = json.loads(nodepool_cli(path, "image-list", "--json").stdout)
    assert (row["id"], row["upload_id"], row["provider"], row["external_id"],
            row["state"]) == (build.id, upload.id, "fake-cloud", upload.external_id,
                              "ready")
    table = nodepool_cli(path, "image-list").stdout
    assert "| Build ID " in table and upload.external_id in table
    # Pause: shown by image-status and dib-image-list; no build while paused.
    assert nodepool_cli(path, "image-pause", "ubuntu").returncode == 0
    [status] = json.loads(nodepool_cli(path, "image-status", "--json").stdout)
    assert status == {"image": "ubuntu", "paused": True, "build_request": None,
                      "build_request_age": None}
    assert json.loads(nodepool_cli(path, "dib-image-list", "--json").stdout)[0][
        "state"] == "paused"
    assert nodepool_cli(path, "image-build", "ubuntu").returncode == 0
    [status] = json.loads(nodepool_cli(path, "image-status", "--json").stdout)
    assert status["build_request"] == "pending"
    assert nodepool_cli(path, "image-unpause", "ubuntu").returncode == 0
    wait_until(lambda: len(ready_uploads(store)) == 2, timeout=30,
               message="the requested build, uploaded")
    # Errors a script can rely on.
    missing = nodepool_cli(path, "image-build", "nosuch")
    assert missing.returncode == 1
    assert "Trying to build a non disk-image-builder image: nosuch" in missing.stderr
    assert "Traceback" not in missing.stderr
    gone = nodepool_cli(path, "image-delete", "--provider", "fake-cloud", "--image",
                        "ubuntu", "--build-id", build.id, "--upload-id", "0000000099")
    assert gone.returncode == 0 and "Image upload not found" in gone.stdout
    # Delete the first build: its upload and record go.
    assert nodepool_cli(path, "dib-image-delete", f"ubuntu-{build.id}").returncode == 0
    wait_until(lambda: store.get_build("ubuntu", build.id) is None, timeout=30,
               message="build deleted")
    assert upload.external_id not in cloud().images
    assert "Build ubuntu-feed not found" in nodepool_cli(
        path, "dib-image-delete", "ubuntu-feed").stdout


def test_export_then_import_into_an_empty_zookeeper(env, store, zuul, tmp_path,
                                                     zk_chroot, make_zk_client):
    import json
    from nodepool.zk.store import Store
    path = env.config(config_text(tmp_path))
    builder = env.start_builder(path)
    [upload] = wait_for_ready_upload(store)
    store.pause_image("ubuntu")
    backup = tmp_path / "images.json"
    result = nodepool_cli(path, "export-image-data", str(backup))
    assert result.returncode == 0, result.stderr
    assert oct(os.stat(backup).st_mode & 0o777) == "0o600"
    exported = json.loads(backup.read_text())
    assert upload.path in exported and "/nodepool/images/ubuntu/pause" in exported
    builder.stop()
    # An empty ZooKeeper (a fresh chroot) gets the backup.
    restored_chroot = f"{zk_chroot}/restored"
    restored = env.config(config_text(tmp_path).replace(
        "diskimages:\n  - name: ubuntu\n",
        "diskimages:\n  - name: ubuntu\n    pause: true\n"), name="restored.yaml")
    text = open(restored).read().replace(f"chroot: {zk_chroot}\n",
                                         f"chroot: {restored_chroot}\n")
    open(restored, "w").write(text)
    result = nodepool_cli(restored, "import-image-data", str(backup))
    assert result.returncode == 0, result.stderr
    client = make_zk_client(hosts=f"127.0.0.1:{env.zk_server.port}{restored_chroot}")
    fresh = Store(client)
    back = fresh.get_upload("ubuntu", upload.build_id, "fake-cloud", upload.id)
    assert back.external_id == upload.external_id and back.state == "ready"
    assert fresh.is_image_paused("ubuntu")
    # New uploads are numbered after the restored ones.
    from nodepool.zk.image_records import ImageUpload
    later = ImageUpload(image_name="ubuntu", build_id=upload.build_id,
                        provider_name="fake-cloud", state="failed")
    fresh.store_upload(later)
    assert int(later.id) > int(upload.id)
    fresh.delete_upload(later)
    # A launcher on the restored data boots the restored image.
    from nodepool.testing.zuul_client import FakeZuul
    env.start(restored)
    restored_zuul = FakeZuul(f"127.0.0.1:{env.zk_server.port}{restored_chroot}")
    try:
        request = restored_zuul.wait_for_request(restored_zuul.submit(["small"]),
                                                 timeout=30)
        assert request["state"] == "fulfilled"
        node = restored_zuul.get_node(request["nodes"][0])
        assert node["image_id"] == upload.path
        assert cloud().servers[node["external_id"]].image == upload.external_id
    finally:
        restored_zuul.stop()


def test_uploads_to_openstack_through_glance(env, store, tmp_path, monkeypatch):
    """The builder against the OpenStack simulator: real openstacksdk image
    upload over HTTP, properties in Glance, and deletion of superseded
    images."""
    import yaml
    from nodepool.testing.openstack_sim import OpenStackSimulator
    sim = OpenStackSimulator().start()
    try:
        clouds = tmp_path / "clouds.yaml"
        clouds.write_text(yaml.safe_dump(sim.clouds_yaml()))
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
        text = config_text(tmp_path).replace(
            "  - name: fake-cloud\n    cloud: fake\n",
            "  - name: cloud-sim\n    cloud: sim\n    region-name: RegionOne\n"
            "    rate: 0.001\n    image-name-format: 'np-{image_name}-{upload_id}'\n")
        path = env.config(text)
        env.start_builder(path)
        wait_until(lambda: ready_uploads(store, provider="cloud-sim"), timeout=30,
                   message="uploaded to the simulator")
        [upload] = ready_uploads(store, provider="cloud-sim")
        image = sim.images[upload.external_id]
        assert image["status"] == "active" and image["disk_format"] == "qcow2"
        assert image["name"] == f"np-ubuntu-{upload.id}" == upload.external_name
        assert image["nodepool_build_id"] == upload.build_id
        assert image["nodepool_upload_id"] == upload.id
        assert image["nodepool_provider_name"] == "cloud-sim"
        assert image["team"] == "ci"
        # Rebuild twice: the first image is superseded and deleted in Glance.
        for count in (2, 3):
            store.request_build("ubuntu")
            wait_until(lambda: len({u.build_id for u in ready_uploads(
                store, provider="cloud-sim")} | {upload.build_id}) >= count
                and store.build_requested_at("ubuntu") is None, timeout=30,
                message=f"build {count} uploaded")
        wait_until(lambda: upload.external_id not in sim.images, timeout=30,
                   message="the oldest image deleted from Glance")
        ours = [i for i in sim.images.values() if "nodepool_build_id" in i]
        assert len(ours) == 2
    finally:
        sim.stop()


@pytest.mark.skipif(
    not os.environ.get("NODEPOOL_TEST_REAL_DIB"),
    reason="builds a real Debian image with diskimage-builder: needs root, "
           "loop devices, debootstrap, a Debian mirror and several minutes; set "
           "NODEPOOL_TEST_REAL_DIB=1 to run it")
def test_real_diskimage_builder_debian_image(env, store, tmp_path):
    disk_image_create = os.path.join(os.path.dirname(sys.executable),
                                     "disk-image-create")
    text = config_text(tmp_path, build_timeout=3600).replace(
        f"    dib-cmd: {DIB}\n", f"    dib-cmd: {disk_image_create}\n").replace(
        "    elements: [ubuntu-minimal, vm]\n    release: noble\n",
        # No `vm` element: its partitioning needs device-mapper (kpartx),
        # which containers often lack; a whole-disk filesystem needs only
        # a loop device.
        "    elements: [debian-minimal]\n    release: bookworm\n"
    ).replace("      FAKE_DIB_EXPECT_DIB_RELEASE: noble\n",
              "      DIB_DEBIAN_COMPONENTS: main\n"
              # deb.debian.org serves the security suite too (some networks
              # only let the main mirror through).
              "      DIB_DEBIAN_SECURITY_MIRROR: http://deb.debian.org/debian-security/\n")
    started = time.monotonic()
    env.start_builder(env.config(text))
    wait_until(lambda: ready_builds(store) or any(
        b.state == BuildState.FAILED for b in store.get_builds("ubuntu")),
        timeout=3600, interval=5, message="the real build finished")
    [build] = ready_builds(store)
    path = tmp_path / "images" / f"ubuntu-{build.id}.qcow2"
    info = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                          capture_output=True, text=True, check=True).stdout
    assert '"format": "qcow2"' in info
    wait_for_ready_upload(store)
    print(f"real diskimage-builder build took {time.monotonic() - started:.0f}s")


def test_config_reload_adds_a_provider_and_pauses_an_image(env, store, tmp_path):
    path = env.config(config_text(tmp_path))
    env.start_builder(path)
    wait_for_ready_upload(store)
    second = ("  - name: fake-two\n    cloud: fake-two\n    diskimages:\n"
              "      - name: ubuntu\n")
    env.rewrite(path, config_text(tmp_path) + second)
    wait_until(lambda: ready_uploads(store, provider="fake-two"), timeout=30,
               message="uploaded to the added provider")
    assert len(store.get_builds("ubuntu")) == 1  # the same build, not a new one
    # pause: true in the configuration stops builds, even requested ones.
    env.rewrite(path, config_text(tmp_path, image_extra="    pause: true\n") + second)
    env.settle()
    store.request_build("ubuntu")
    env.settle()
    assert len(store.get_builds("ubuntu")) == 1
    env.rewrite(path, config_text(tmp_path) + second)
    wait_until(lambda: len(ready_builds(store)) == 2, timeout=30,
               message="built once unpaused")


def test_stopping_kills_a_build_that_outlasts_the_grace_period(env, store, tmp_path):
    path = env.config(config_text(tmp_path))
    pause = tmp_path / "images" / "fake-image-create.pause"
    pause.touch()
    builder = env.start_builder(path)
    wait_until(lambda: store.get_builds("ubuntu"), timeout=15, message="building")
    [build] = store.get_builds("ubuntu")
    builder.stop(grace=0.5)
    # No DIB process is left behind, and the build is not left "building".
    assert subprocess.run(["pgrep", "-f", str(tmp_path / "images")],
                          capture_output=True).returncode == 1
    assert store.get_build("ubuntu", build.id).state == BuildState.FAILED
    log_text = (tmp_path / "logs" / f"ubuntu-{build.id}.log").read_text()
    assert "Build interrupted: the builder is stopping" in log_text
