"""What upstream Nodepool's ``config-validate`` accepts loads here (with a
warning where upstream silently does something surprising), and what would
break a daemon is refused with the key path, quickly, whatever the input."""

import copy
import os
import threading

import pytest
import yaml

from nodepool.config import ConfigError, load_config, validate_file
from nodepool.config.reading import MAX_DEPTH, MAX_FILE_BYTES

from config_files import load, problems_of, write

BASE = {
    "zookeeper-servers": [{"host": "127.0.0.1", "port": 2181}],
    "labels": [{"name": "small", "min-ready": 1}, {"name": "large"}],
    "diskimages": [{"name": "debian", "elements": ["debian-minimal"]},
                   {"name": "centos", "elements": ["centos"]}],
    "providers": [
        {"name": "cloud-a", "cloud": "a", "diskimages": [{"name": "debian"}],
         "cloud-images": [{"name": "ubuntu", "image-name": "Ubuntu 24.04"}],
         "pools": [{"name": "main", "max-servers": 10, "labels": [
             {"name": "small", "diskimage": "debian", "min-ram": 2048},
             {"name": "large", "cloud-image": "ubuntu", "flavor-name": "xl"}]}]},
        {"name": "rack", "driver": "static", "pools": [{"name": "p", "nodes": [
            {"name": "host1.example.org", "labels": ["small"]}]}]},
    ],
}


def data(change=None):
    copied = copy.deepcopy(BASE)
    if change:
        change(copied)
    return copied


def pool(config, provider="cloud-a", name="main"):
    return config.providers[provider].pools[name]


# -- accepted as upstream accepts them ------------------------------------------


def test_label_whose_diskimage_is_not_uploaded_to_the_provider(tmp_path):
    def change(d):
        d["providers"][0]["pools"][0]["labels"][0]["diskimage"] = "centos"
    config = load(tmp_path, data(change))
    # Loaded, but the label is not offered where it can never boot.
    assert "small" not in pool(config).labels
    assert "large" in pool(config).labels
    assert [p.name for p, _ in config.pools_with_label("small")] == ["rack"]
    [warning] = config.warnings
    assert "providers[0].pools[0].labels[0].diskimage" in warning
    assert "label 'small' is not launched in provider 'cloud-a' pool 'main'" in warning


def test_non_string_instance_properties_are_kept(tmp_path):
    def change(d):
        label = d["providers"][0]["pools"][0]["labels"][1]
        label["instance-properties"] = {"count": 3, "flag": True, "none": None}
        label["dynamic-instance-properties"] = {"n": 7, "ratio": 0.5, "on": False,
                                                "tenant": "{request.tenant_name}"}
    label = pool(load(tmp_path, data(change))).labels["large"]
    assert label.instance_properties == {"count": 3, "flag": True, "none": None}
    assert label.dynamic_instance_properties == {
        "n": 7, "ratio": 0.5, "on": False, "tenant": "{request.tenant_name}"}


@pytest.mark.parametrize("written,expected", [("'1.0'", 1.0), ("'0.25'", 0.25),
                                              ("2", 2.0), ("' 3 '", 3.0)])
def test_rate_written_as_a_string_or_integer(tmp_path, written, expected):
    text = yaml.safe_dump(BASE).replace("cloud: a\n", f"cloud: a\n  rate: {written}\n")
    assert load(tmp_path, text).providers["cloud-a"].rate == expected


def test_empty_diskimage_username_means_the_default(tmp_path):
    def change(d):
        d["diskimages"][0]["username"] = ""
        d["diskimages"][1]["username"] = "centos"
    config = load(tmp_path, data(change))
    assert config.diskimages["debian"].username == "zuul"
    assert config.diskimages["centos"].username == "centos"


def test_duplicate_top_level_labels_keep_the_last(tmp_path):
    def change(d):
        d["labels"].append({"name": "small", "min-ready": 4})
    config = load(tmp_path, data(change))
    assert config.labels["small"].min_ready == 4  # upstream: the later wins
    assert list(config.labels) == ["small", "large"]
    [warning] = config.warnings
    assert "labels[2].name: duplicate label 'small'" in warning


def test_unset_environment_reference_is_kept_verbatim(tmp_path):
    text = yaml.safe_dump(BASE).replace("- debian-minimal",
                                        "- debian-minimal\n  env-vars:\n"
                                        "    TOKEN: '%(NODEPOOL_NOT_SET)'")
    path = write(tmp_path, text)
    config = load_config(path, env={})
    assert config.diskimages["debian"].env_vars == {"TOKEN": "%(NODEPOOL_NOT_SET)"}
    line = text.splitlines().index("    TOKEN: '%(NODEPOOL_NOT_SET)'") + 1
    [warning] = config.warnings
    assert warning.startswith(f"{path}: line {line}: environment variable "
                              "NODEPOOL_NOT_SET is not set")


def test_unset_reference_where_yaml_cannot_take_it_explains_the_syntax_error(tmp_path):
    text = yaml.safe_dump(BASE).replace("port: 2181", "port: %(NODEPOOL_ZK_PORT)")
    problems = problems_of(tmp_path, text, env={})
    assert any("YAML syntax error" in p for p in problems)
    assert any("NODEPOOL_ZK_PORT is not set" in p for p in problems)


def test_unknown_keys_in_the_secure_file_are_warnings(tmp_path):
    secure = write(tmp_path, {"diskimages": [{"name": "debian", "env-vars": {"A": "1"}}],
                              "database": {"dburi": "x"}, "webapp": {"port": 1}},
                   name="secure.yaml")
    config = load(tmp_path, BASE, secure_path=secure)
    assert config.diskimages["debian"].env_vars == {"A": "1"}
    assert sorted(config.warnings) == [
        f"{secure}: database: unknown key in the secure file, ignored (only "
        "zookeeper-servers, zookeeper-tls, diskimages are read from it)",
        f"{secure}: webapp: unknown key in the secure file, ignored (only "
        "zookeeper-servers, zookeeper-tls, diskimages are read from it)"]


@pytest.mark.parametrize("case", ["provider", "pool", "pool label", "cloud-image",
                                  "provider diskimage", "tenant", "static pool"])
def test_other_duplicates_keep_the_last_with_a_warning(tmp_path, case):
    def change(d):
        cloud = d["providers"][0]
        if case == "provider":
            d["providers"].append(dict(copy.deepcopy(cloud), **{"region-name": "r2"}))
        elif case == "pool":
            cloud["pools"].append({"name": "main", "max-servers": 3})
        elif case == "pool label":
            cloud["pools"][0]["labels"].append(
                {"name": "large", "cloud-image": "ubuntu", "min-ram": 8})
        elif case == "cloud-image":
            cloud["cloud-images"].append({"name": "ubuntu", "image-id": "u-2"})
        elif case == "provider diskimage":
            cloud["diskimages"].append({"name": "debian", "pause": True})
        elif case == "tenant":
            d["tenant-resource-limits"] = [{"tenant-name": "t", "max-servers": 1},
                                           {"tenant-name": "t", "max-servers": 2}]
        else:
            d["providers"][1]["pools"].append({"name": "p", "nodes": [
                {"name": "host2.example.org", "labels": "small"}]})
    config = load(tmp_path, data(change))
    [warning] = config.warnings
    assert "duplicate" in warning and "replaces the earlier one" in warning
    cloud = config.providers["cloud-a"]
    kept = {"provider": lambda: cloud.region_name == "r2",
            "pool": lambda: cloud.pools["main"].max_servers == 3,
            "pool label": lambda: cloud.pools["main"].labels["large"].min_ram == 8,
            "cloud-image": lambda: cloud.cloud_images["ubuntu"].image_id == "u-2",
            "provider diskimage": lambda: cloud.diskimages["debian"].pause,
            "tenant": lambda: config.tenant_resource_limits["t"].limits ==
            {"instances": 2},
            "static pool": lambda: [n.name for n in config.providers["rack"].pools[
                "p"].nodes] == ["host2.example.org"]}
    assert kept[case]()


def test_webapp_port_zero_asks_for_a_free_port(tmp_path):
    config = load(tmp_path, data(lambda d: d.update(webapp={"port": 0})))
    assert config.webapp.port == 0


def test_build_timeout_zero_means_the_default_as_upstream(tmp_path):
    def change(d):
        d["diskimages"][0]["build-timeout"] = 0
    assert load(tmp_path, data(change)).diskimages["debian"].build_timeout == 28800


def test_validate_file_returns_warnings_separately(tmp_path):
    path = write(tmp_path, data(lambda d: d["labels"].append({"name": "large"})))
    problems, warnings = validate_file(path)
    assert problems == [] and len(warnings) == 1


# -- refused, naming the key path ------------------------------------------------


def _at(path, value):
    def change(d):
        target = d
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


PROVIDER = ["providers", 0]
STATIC_NODE = ["providers", 1, "pools", 0, "nodes", 0]
REFUSED = {
    "zookeeper port 0": (_at(["zookeeper-servers", 0, "port"], 0),
                         "zookeeper-servers[0].port", "from 1 to 65535"),
    "zookeeper port 65536": (_at(["zookeeper-servers", 0, "port"], 65536),
                             "zookeeper-servers[0].port", "from 1 to 65535"),
    "webapp port": (_at(["webapp"], {"port": 70000}), "webapp.port",
                    "from 0 to 65535"),
    "webapp port negative": (_at(["webapp"], {"port": -1}), "webapp.port",
                             "from 0 to 65535"),
    "static connection-port": (_at(STATIC_NODE + ["connection-port"], 0),
                               "providers[1].pools[0].nodes[0].connection-port",
                               "from 1 to 65535"),
    "static ssh-port": (_at(STATIC_NODE + ["ssh-port"], 99999),
                        "providers[1].pools[0].nodes[0].ssh-port", "from 1 to 65535"),
    "cloud-image connection-port": (
        _at(PROVIDER + ["cloud-images", 0, "connection-port"], 65536),
        "providers[0].cloud-images[0].connection-port", "from 1 to 65535"),
    "diskimage connection-port": (
        _at(PROVIDER + ["diskimages", 0, "connection-port"], -22),
        "providers[0].diskimages[0].connection-port", "from 1 to 65535"),
    "empty zookeeper-servers": (_at(["zookeeper-servers"], []),
                                "zookeeper-servers", "at least one server"),
    "zookeeper-timeout zero": (_at(["zookeeper-timeout"], 0), "zookeeper-timeout",
                               "positive number of seconds"),
    "zookeeper-timeout negative": (_at(["zookeeper-timeout"], -5.0),
                                   "zookeeper-timeout", "positive"),
    "zookeeper-timeout infinite": (_at(["zookeeper-timeout"], float("inf")),
                                   "zookeeper-timeout", "positive"),
    "zookeeper-timeout nan": (_at(["zookeeper-timeout"], float("nan")),
                              "zookeeper-timeout", "positive"),
    "boot-timeout -1": (_at(PROVIDER + ["boot-timeout"], -1),
                        "providers[0].boot-timeout", "positive number of seconds"),
    "boot-timeout 0": (_at(PROVIDER + ["boot-timeout"], 0),
                       "providers[0].boot-timeout", "positive"),
    "launch-timeout 0": (_at(PROVIDER + ["launch-timeout"], 0),
                         "providers[0].launch-timeout", "positive"),
    "image-upload-timeout negative": (_at(PROVIDER + ["image-upload-timeout"], -3),
                                      "providers[0].image-upload-timeout", "positive"),
    "static timeout 0": (_at(STATIC_NODE + ["timeout"], 0),
                         "providers[1].pools[0].nodes[0].timeout", "positive"),
    "build-timeout negative": (_at(["diskimages", 0, "build-timeout"], -1),
                               "diskimages[0].build-timeout", "not be negative"),
    "rate infinite": (_at(PROVIDER + ["rate"], "inf"), "providers[0].rate",
                      "finite"),
    "rate nan": (_at(PROVIDER + ["rate"], float("nan")), "providers[0].rate",
                 "finite"),
    "rate not a number": (_at(PROVIDER + ["rate"], "fast"), "providers[0].rate",
                          "expected a number"),
    "provider name with /": (_at(PROVIDER + ["name"], "a/b"), "providers[0].name",
                             "must not contain '/' or '..'"),
    "pool name ..": (_at(PROVIDER + ["pools", 0, "name"], ".."),
                     "providers[0].pools[0].name", "'/' or '..'"),
    "static pool name": (_at(["providers", 1, "pools", 0, "name"], "x/y"),
                         "providers[1].pools[0].name", "'/' or '..'"),
    "diskimage name": (_at(["diskimages", 1, "name"], "../etc"), "diskimages[1].name",
                       "'/' or '..'"),
    "name with control character": (_at(PROVIDER + ["name"], "a\nb"),
                                    "providers[0].name", "control characters"),
    "label diskimage abstract": (
        lambda d: d["diskimages"].append({"name": "base", "abstract": True}) or
        _at(PROVIDER + ["pools", 0, "labels", 0, "diskimage"], "base")(d),
        "providers[0].pools[0].labels[0].diskimage", "abstract"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_the_key_path(tmp_path, case):
    change, key_path, words = REFUSED[case]
    problems = problems_of(tmp_path, data(change))
    assert [p for p in problems if p.startswith(key_path + ":") and words in p], \
        problems


def test_missing_tls_files_stop_loading_and_fail_validation(tmp_path):
    cert = tmp_path / "client.pem"
    cert.write_text("cert")
    tls = {"cert": str(cert), "key": str(tmp_path / "client.key"),
           "ca": str(tmp_path)}
    path = write(tmp_path, data(lambda d: d.update({"zookeeper-tls": tls})))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(p) for p in info.value.problems] == [
        f"zookeeper-tls.key: file '{tmp_path / 'client.key'}' not found",
        f"zookeeper-tls.ca: '{tmp_path}' is not a regular file"]
    problems, warnings = validate_file(path)
    assert warnings == []
    assert problems == [f"{path}: zookeeper-tls.key: file "
                        f"'{tmp_path / 'client.key'}' not found",
                        f"{path}: zookeeper-tls.ca: '{tmp_path}' is "
                        "not a regular file"]


def test_tls_from_the_secure_file_is_reported_against_it(tmp_path):
    secure = write(tmp_path, {"zookeeper-tls": {"cert": "/nonexistent/c",
                                                "key": "/nonexistent/k",
                                                "ca": "/nonexistent/a"}},
                   name="secure.yaml")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, BASE, secure_path=secure)
    assert info.value.source == secure
    assert str(info.value.problems[0]) == \
        "zookeeper-tls.cert: file '/nonexistent/c' not found"


# -- hostile or broken files ---------------------------------------------------


def _load_bounded(path, timeout=30):
    """load_config in a thread: a hang fails the test instead of freezing it."""
    outcome = {}

    def run():
        try:
            outcome["config"] = load_config(path)
        except ConfigError as exc:
            outcome["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"loading {path} did not return"
    return outcome


def test_huge_integer_is_refused_with_its_line(tmp_path):
    text = yaml.safe_dump(BASE) + "max-hold-age: " + "9" * 5000 + "\n"
    error = _load_bounded(write(tmp_path, text))["error"]
    line = len(text.splitlines())
    assert f"line {line}, column 15: YAML refused" in str(error)
    assert "a number of 5000 characters is too long" in str(error)


def test_big_but_short_integer_in_a_port_names_the_key(tmp_path):
    problems = problems_of(tmp_path, data(_at(["zookeeper-servers", 0, "port"],
                                              10 ** 40)))
    assert problems == ["zookeeper-servers[0].port: must be a port number from 1 "
                        f"to 65535, got {10 ** 40}"]


@pytest.mark.parametrize("opening,closing", [("[", "]"), ("{a: ", "}")])
def test_deep_nesting_is_refused(tmp_path, opening, closing):
    text = "labels: " + opening * 5000 + closing * 5000 + "\n"
    error = _load_bounded(write(tmp_path, text))["error"]
    assert f"nested more than {MAX_DEPTH} levels deep" in str(error)
    assert "line 1" in str(error)


def test_deep_nesting_in_block_style_is_refused(tmp_path):
    text = "".join("  " * i + f"k{i}:\n" for i in range(3000)) + "  " * 3000 + "v\n"
    error = _load_bounded(write(tmp_path, text))["error"]
    assert f"nested more than {MAX_DEPTH} levels deep" in str(error)


def test_alias_bomb_and_recursive_alias_are_refused(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    bomb = "\n".join(lines) + "\n"
    error = _load_bounded(write(tmp_path, bomb))["error"]
    assert "expands to more than 1000000 values through aliases" in str(error)
    error = _load_bounded(write(tmp_path, "labels: &loop [*loop]\n"))["error"]
    assert "alias *loop refers to a value that contains it" in str(error)


def test_anchors_and_merge_keys_still_work(tmp_path):
    text = ("labels:\n  - &s {name: small, min-ready: 2}\n  - <<: *s\n"
            "    name: other\n")
    config = load(tmp_path, text)
    assert config.labels["other"].min_ready == 2


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "nodepool.yaml"
    os.mkfifo(fifo)
    error = _load_bounded(str(fifo))["error"]
    assert str(error) == f"{fifo}: is a FIFO (named pipe), not a regular file"


def test_device_and_oversized_files_are_refused(tmp_path):
    error = _load_bounded("/dev/zero")["error"]
    assert str(error) == "/dev/zero: is a character device, not a regular file"
    big = tmp_path / "big.yaml"
    with open(big, "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing is written
    error = _load_bounded(str(big))["error"]
    assert f"larger than the {MAX_FILE_BYTES} bytes" in str(error)
