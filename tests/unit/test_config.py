"""Configuration loading: the spec's examples, inheritance, and bad input."""

import copy
import os

import pytest
import yaml

from nodepool.config import ConfigError, load_config
from nodepool.config.loader import config_files_changed, substitute_env
from nodepool.drivers import capabilities

from config_files import load, problems_of, write

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")

BASE = {
    "zookeeper-servers": [{"host": "127.0.0.1", "port": 2181, "chroot": "/np"}],
    "labels": [{"name": "small", "min-ready": 1}, {"name": "large"}],
    "diskimages": [
        {"name": "base", "abstract": True, "elements": ["vm"],
         "env-vars": {"A": "1"}},
        {"name": "debian", "parent": "base", "elements": ["debian-minimal"],
         "release": 12, "env-vars": {"B": "2"}},
    ],
    "providers": [
        {"name": "cloud-a", "cloud": "a", "diskimages": [{"name": "debian"}],
         "cloud-images": [{"name": "ubuntu", "image-name": "Ubuntu 24.04"}],
         "pools": [{"name": "main", "max-servers": 10, "labels": [
             {"name": "small", "diskimage": "debian", "min-ram": 2048},
             {"name": "large", "cloud-image": "ubuntu", "flavor-name": "xl"}]}]},
        {"name": "rack", "driver": "static", "pools": [{"name": "p", "nodes": [
            {"name": "host1.example.org", "labels": ["small"]}]}]},
    ],
    "tenant-resource-limits": [{"tenant-name": "acme", "max-cores": 100}],
}


@pytest.mark.parametrize("name", ["spec-example.yaml", "spec-static.yaml",
                                  "spec-fake.yaml"])
def test_spec_examples_validate(name):
    # The example names TLS files of a production host.
    config = load_config(os.path.join(FIXTURES, name), check_files=False)
    assert config.providers


def test_spec_example_is_built_as_the_spec_describes():
    config = load_config(os.path.join(FIXTURES, "spec-example.yaml"),
                         check_files=False)
    image = config.diskimages["debian-bookworm"]
    assert "common" not in config.diskimages  # abstract
    assert image.elements == ["vm", "simple-init", "growroot", "nodepool-base",
                              "debian-minimal"]
    assert image.env_vars == {"TMPDIR": "/opt/dib_tmp",
                              "DIB_IMAGE_CACHE": "/opt/dib_cache",
                              "DIB_DEBIAN_COMPONENTS": "main,contrib"}
    assert image.release == "bookworm" and image.rebuild_age == 43200
    assert image.formats == ["qcow2"]  # from the provider's default image_format
    provider = config.providers["cloud-east"]
    assert provider.driver == "openstack" and provider.rate == 0.5
    pool = provider.pools["general"]
    assert pool.max_servers == 40 and pool.networks == ["ci-net"]
    large = pool.labels["debian-bookworm-large"]
    assert large.boot_from_volume and large.volume_size == 80
    assert large.networks == ["ci-net"]  # inherited from the pool
    assert config.zookeeper_timeout == 30.0
    assert config.zookeeper_tls.ca == "/etc/nodepool/tls/ca.pem"
    assert config.webapp.listen_address == "127.0.0.1"
    assert config.max_hold_age == 86400
    assert config.labels["debian-bookworm-large"].max_ready_age == 7200


def test_static_example_splits_label_strings_and_keeps_ports():
    config = load_config(os.path.join(FIXTURES, "spec-static.yaml"))
    pool = config.providers["lab-rack"].pools["rack-a"]
    arm, win = pool.nodes
    assert arm.slots == 2 and arm.host_keys[0].startswith("ssh-ed25519")
    assert win.labels == ["win-2022"] and win.connection_port == 5986
    assert pool.label_names == ["arm64-bare", "win-2022"]
    assert not capabilities(config.providers["lab-rack"]).manages_images


def test_fake_provider_names_force_the_fake_driver(tmp_path):
    data = copy.deepcopy(BASE)
    data["providers"][0]["name"] = "fake-cloud"
    data["providers"][0]["driver"] = "openstack"
    config = load(tmp_path, data)
    assert config.providers["fake-cloud"].driver == "fake"


def test_defaults(tmp_path):
    config = load(tmp_path, BASE)
    provider = config.providers["cloud-a"]
    assert provider.boot_timeout == 60 and provider.launch_timeout == 3600
    assert provider.launch_retries == 3 and provider.max_concurrency == -1
    assert provider.pool_priority(provider.pools["main"]) == 100
    assert config.zookeeper_timeout == 10.0
    assert config.webapp.port == 8005
    assert config.build_log_retention == 7
    assert config.tenant_resource_limits["acme"].limits == {"cores": 100}
    image = config.diskimages["debian"]
    assert image.elements == ["vm", "debian-minimal"]
    assert image.env_vars == {"A": "1", "B": "2"}
    assert image.release == "12"
    assert image.rebuild_age == 86400 and image.dib_cmd == "disk-image-create"
    static = config.providers["rack"].pools["p"].nodes[0]
    assert static.username == "zuul" and static.connection_port == 22


def test_three_level_inheritance_from_the_spec(tmp_path):
    data = copy.deepcopy(BASE)
    data["diskimages"] = [
        {"name": "base", "abstract": True, "elements": ["fedora"], "env-vars": {"A": "1"}},
        {"name": "mid", "abstract": True, "parent": "base",
         "elements": ["intermediate"], "env-vars": {"B": "2"}, "pause": True},
        {"name": "debian", "parent": "mid", "elements": ["vm"], "env-vars": {"A": "3"},
         "formats": ["raw"]},
    ]
    image = load(tmp_path, data).diskimages["debian"]
    assert image.elements == ["fedora", "intermediate", "vm"]
    assert image.env_vars == {"A": "3", "B": "2"}
    assert image.pause is True  # a child cannot un-pause an ancestor
    assert image.formats == ["qcow2", "raw"]  # explicit + the provider's format


def test_image_format_comes_from_clouds_yaml(tmp_path, monkeypatch):
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump({"clouds": {"a": {"image_format": "raw"}}}))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    config = load(tmp_path, BASE)
    assert config.providers["cloud-a"].image_type == "raw"
    assert config.diskimages["debian"].formats == ["raw"]


def test_environment_substitution(tmp_path):
    text = yaml.safe_dump(BASE).replace("port: 2181", "port: %(NODEPOOL_ZK_PORT)")
    config = load_config(write(tmp_path, text), env={"NODEPOOL_ZK_PORT": "2999"})
    assert config.zookeeper_servers[0].port == 2999  # substituted before parsing


def test_only_nodepool_variables_are_substituted():
    text, problems = substitute_env("a: %(HOME) b: %(NODEPOOL_X)", {"HOME": "/root",
                                                                  "NODEPOOL_X": "1"})
    assert text == "a: %(HOME) b: 1" and problems == []


def test_secure_file_merge(tmp_path):
    secure = write(tmp_path, {
        "zookeeper-servers": [{"host": "zk.secure", "port": 2281}],
        "zookeeper-tls": {"cert": "c", "key": "k", "ca": "a"},
        "diskimages": [{"name": "debian", "env-vars": {"B": "secret", "C": "3"}}],
    }, name="secure.yaml")
    config = load(tmp_path, BASE, secure_path=secure, check_files=False)
    assert [s.host for s in config.zookeeper_servers] == ["zk.secure"]
    assert config.zookeeper_tls.cert == "c"
    assert config.diskimages["debian"].env_vars == {"A": "1", "B": "secret", "C": "3"}


def test_empty_secure_file_is_accepted(tmp_path):
    secure = write(tmp_path, "", name="secure.yaml")
    assert load(tmp_path, BASE, secure_path=secure).zookeeper_servers[0].port == 2181


def test_typed_config_compares_by_value(tmp_path):
    first = load(tmp_path, BASE)
    second = load(tmp_path, BASE)
    assert first == second
    assert first.providers["cloud-a"] == second.providers["cloud-a"]
    changed = copy.deepcopy(BASE)
    changed["providers"][0]["pools"][0]["max-servers"] = 5
    third = load(tmp_path, changed)
    assert third.providers["cloud-a"] != first.providers["cloud-a"]
    assert third.providers["rack"] == first.providers["rack"]


def test_file_change_detection(tmp_path):
    path = write(tmp_path, BASE)
    config = load_config(path)
    assert not config_files_changed(config)
    os.utime(path, ns=(0, config.mtimes[path] + 1_000_000))
    assert config_files_changed(config)


def mutate(fn):
    data = copy.deepcopy(BASE)
    fn(data)
    return data


def _set(path, value):
    def apply(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return apply


def _delete(path):
    def apply(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return apply


def _append(path, value):
    def apply(data):
        target = data
        for key in path:
            target = target[key]
        target.append(value)
    return apply


# Each case: (how to break the base config, key path expected, words expected).
BAD_INPUT = {
    "missing required key": (
        _delete(["providers", 0, "cloud"]), "providers[0].cloud", "missing"),
    "wrong type (int)": (
        _set(["providers", 0, "pools", 0, "max-servers"], "ten"),
        "providers[0].pools[0].max-servers", "expected an integer"),
    "wrong type (bool is not int)": (
        _set(["labels", 0, "min-ready"], True), "labels[0].min-ready",
        "expected an integer"),
    "wrong type (list)": (
        _set(["labels"], {"name": "x"}), "labels", "expected a list"),
    "unknown key": (
        _set(["providers", 0, "pools", 0, "max-server"], 3),
        "providers[0].pools[0].max-server", "unknown key"),
    "unknown top-level key": (
        _set(["zookeeper-server"], []), "zookeeper-server", "unknown key"),
    "unknown driver": (
        _set(["providers", 1, "driver"], "vmware"), "providers[1].driver",
        "unknown driver 'vmware'"),
    "duplicate diskimage names": (
        _append(["diskimages"], {"name": "debian"}), "diskimages[2].name",
        "duplicate diskimage"),
    "label used but not defined": (
        _set(["providers", 0, "pools", 0, "labels", 0, "name"], "medium"),
        "providers[0].pools[0].labels[0].name", "'medium' is not defined"),
    "static label not defined": (
        _set(["providers", 1, "pools", 0, "nodes", 0, "labels"], ["gpu"]),
        "providers[1].pools[0].nodes[0].labels", "'gpu' is not defined"),
    "bad diskimage parent": (
        _set(["diskimages", 1, "parent"], "bsae"), "diskimages[1].parent",
        "unknown parent diskimage 'bsae'"),
    "diskimage inheritance cycle": (
        _set(["diskimages", 0, "parent"], "debian"), "diskimages",
        "inheritance cycle"),
    "label diskimage unknown": (
        _set(["providers", 0, "pools", 0, "labels", 0, "diskimage"], "centos"),
        "providers[0].pools[0].labels[0].diskimage", "unknown diskimage 'centos'"),
    "provider uses an abstract diskimage": (
        _append(["providers", 0, "diskimages"], {"name": "base"}),
        "providers[0].diskimages[1].name", "abstract"),
    "cloud-image unknown": (
        _set(["providers", 0, "pools", 0, "labels", 1, "cloud-image"], "centos"),
        "providers[0].pools[0].labels[1].cloud-image", "unknown cloud-image"),
    "label with both image kinds": (
        _set(["providers", 0, "pools", 0, "labels", 0, "cloud-image"], "ubuntu"),
        "providers[0].pools[0].labels[0]", "exactly one of"),
    "label without flavor or ram": (
        _delete(["providers", 0, "pools", 0, "labels", 0, "min-ram"]),
        "providers[0].pools[0].labels[0]", "'min-ram' or 'flavor-name'"),
    "cloud-image id and name": (
        _set(["providers", 0, "cloud-images", 0, "image-id"], "abc"),
        "providers[0].cloud-images[0]", "mutually exclusive"),
    "bad image-name-format placeholder": (
        _set(["providers", 0, "image-name-format"], "{image}-{timestamp}"),
        "providers[0].image-name-format", "unknown placeholder"),
    "differing chroots": (
        _append(["zookeeper-servers"], {"host": "h2", "chroot": "/other"}),
        "zookeeper-servers", "same chroot"),
    "zookeeper server without host": (
        _set(["zookeeper-servers", 0], {"port": 2181}), "zookeeper-servers[0].host",
        "missing"),
    "incomplete zookeeper-tls": (
        _set(["zookeeper-tls"], {"cert": "c", "key": "k"}), "zookeeper-tls.ca",
        "missing"),
    "duplicate static host": (
        _append(["providers", 1, "pools", 0, "nodes"],
                {"name": "host1.example.org", "labels": ["small"]}),
        "providers[1].pools[0].nodes[1].name", "already defined at"),
    "tenant limit not an integer": (
        _set(["tenant-resource-limits", 0, "max-ram"], 1.5),
        "tenant-resource-limits[0].max-ram", "expected an integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_names_the_key_path(tmp_path, case):
    breaker, key_path, words = BAD_INPUT[case]
    problems = problems_of(tmp_path, mutate(breaker))
    matching = [p for p in problems if p.startswith(key_path) and words in p]
    assert matching, f"no problem at {key_path!r} mentioning {words!r}: {problems}"


def test_all_problems_are_reported_at_once(tmp_path):
    data = mutate(_set(["providers", 0, "pools", 0, "labels", 0, "name"], "medium"))
    data["diskimages"][1]["parent"] = "nope"
    data["labels"].append({"name": "large"})
    problems = problems_of(tmp_path, data)
    assert len(problems) >= 3


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    path = write(tmp_path, "labels:\n  - name: a\n   bad: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "line 3" in str(info.value) and "YAML syntax error" in str(info.value)
    assert path in str(info.value)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path))
    path = write(tmp_path, BASE)
    os.chmod(path, 0)
    if os.access(path, os.R_OK):  # root reads anything: use undecodable text instead
        with open(path, "wb") as handle:
            handle.write(b"labels: \xff\xfe\n")
        with pytest.raises(ConfigError, match="not valid UTF-8"):
            load_config(path)
    else:
        with pytest.raises(ConfigError, match="permission denied"):
            load_config(path)


def test_empty_main_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="empty"):
        load_config(write(tmp_path, ""))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_secure_file_unknown_diskimage(tmp_path):
    secure = write(tmp_path, {"diskimages": [{"name": "base", "env-vars": {"X": "1"}}]},
                   name="secure.yaml")
    with pytest.raises(ConfigError, match=r"diskimages\[0\]\.name: unknown diskimage "
                       "'base'") as info:
        load(tmp_path, BASE, secure_path=secure)
    assert info.value.source == secure
