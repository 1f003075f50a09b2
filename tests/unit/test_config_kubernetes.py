"""Configuration of the kubernetes, openshift and openshiftpods drivers:
upstream's keys, and errors that name the key path."""

import copy

import pytest

from nodepool.drivers import capabilities

from config_files import load, problems_of

LABELS = [{"name": "ns"}, {"name": "pod"}, {"name": "bad_name"}]


def config(driver="kubernetes", provider=None, pool=None, labels=None):
    default_labels = {"kubernetes": [{"name": "ns", "type": "namespace"},
                                     {"name": "pod", "type": "pod", "image": "f:40"}],
                      "openshift": [{"name": "ns", "type": "project"},
                                    {"name": "pod", "type": "pod", "image": "f:40"}],
                      "openshiftpods": [{"name": "pod", "image": "f:40"}]}[driver]
    entry = {"name": "main", "labels": labels if labels is not None else default_labels}
    entry.update(pool or {})
    body = {"name": "k", "driver": driver, "context": "ctx", "pools": [entry]}
    body.update(provider or {})
    return {"labels": copy.deepcopy(LABELS), "providers": [body]}


def test_capabilities_no_images_no_cloud_quota(tmp_path):
    for driver in ("kubernetes", "openshift", "openshiftpods"):
        provider = load(tmp_path, config(driver)).providers["k"]
        found = capabilities(provider)
        assert found.launches_instances and not found.manages_images
        assert not found.reports_quota


def test_provider_limits_are_the_pools_defaults(tmp_path):
    provider = load(tmp_path, config(provider={
        "max-pods": 9, "max-cores": 8, "max-ram": 4096,
        "max-resources": {"gpu": 2, "licences": 5}},
        pool={"max-resources": {"licences": 1}})).providers["k"]
    pool = provider.pools["main"]
    assert (pool.max_servers, pool.max_cores, pool.max_ram) == (9, 8, 4096)
    assert pool.max_resources == {"gpu": 2, "licences": 1}
    assert provider.launch_retries == 3 and provider.context == "ctx"


@pytest.mark.parametrize("driver,alias", [("kubernetes", "max-pods"),
                                          ("openshift", "max-projects"),
                                          ("openshiftpods", "max-pods")])
def test_an_alias_of_max_servers_is_not_given_with_it(tmp_path, driver, alias):
    assert problems_of(tmp_path, config(driver, provider={alias: 2, "max-servers": 3})) \
        == [f"providers[0].{alias}: '{alias}' is an alias of 'max-servers'; give "
            "only one of them"]
    pool = load(tmp_path, config(driver, provider={alias: 2})).providers["k"].pools["main"]
    assert pool.max_servers == 2


def test_pool_max_pods_is_max_servers(tmp_path):
    assert load(tmp_path, config(pool={"max-pods": 4})).providers["k"] \
        .pools["main"].max_servers == 4
    assert problems_of(tmp_path, config(pool={"max-pods": 4, "max-servers": 2})) == [
        "providers[0].pools[0].max-pods: 'max-pods' is an alias of 'max-servers'; "
        "give only one of them"]


@pytest.mark.parametrize("labels,expected", [
    ([{"name": "pod", "type": "vm"}],
     "providers[0].pools[0].labels[0].type: must be one of namespace, pod"),
    ([{"name": "pod", "type": "pod", "image": "f", "env": [{"name": "A"}]}],
     "providers[0].pools[0].labels[0].env[0].value: required key is missing"),
    ([{"name": "pod", "type": "pod", "image": "f", "cpu": "2"}],
     "providers[0].pools[0].labels[0].cpu: expected an integer, got string '2'"),
    ([{"name": "pod", "type": "pod", "spec": {}, "image": "f"}],
     "providers[0].pools[0].labels[0].image: unknown key"),
    ([{"name": "nope", "type": "namespace"}],
     "providers[0].pools[0].labels[0].name: label 'nope' is not defined in the "
     "top-level labels"),
])
def test_label_errors_name_the_key(tmp_path, labels, expected):
    assert problems_of(tmp_path, config(labels=labels)) == [expected]


def test_openshift_needs_a_context_and_has_projects(tmp_path):
    body = config("openshift")
    del body["providers"][0]["context"]
    assert problems_of(tmp_path, body) == ["providers[0].context: required key is "
                                           "missing"]
    assert problems_of(tmp_path, config("openshift", labels=[
        {"name": "ns", "type": "namespace"}])) == [
        "providers[0].pools[0].labels[0].type: must be one of project, pod"]


def test_openshiftpods_labels_are_pods_with_an_image(tmp_path):
    assert problems_of(tmp_path, config("openshiftpods", labels=[{"name": "pod"}])) == [
        "providers[0].pools[0].labels[0].image: required key is missing"]
    assert problems_of(tmp_path, config("openshiftpods", labels=[
        {"name": "pod", "type": "pod", "image": "f"}])) == [
        "providers[0].pools[0].labels[0].type: unknown key"]


def test_labels_that_could_never_launch_are_loaded_but_not_offered(tmp_path):
    # Upstream accepts these and fails every launch; we say why and leave
    # them out of the pool.
    loaded = load(tmp_path, config(labels=[
        {"name": "pod", "type": "pod"},
        {"name": "bad_name", "type": "pod", "image": "f"},
        {"name": "ns", "type": "namespace"}]))
    assert list(loaded.providers["k"].pools["main"].labels) == ["ns"]
    warnings = "\n".join(loaded.warnings)
    assert "providers[0].pools[0].labels[0]: a pod label needs 'image' or 'spec'" \
        in warnings
    assert "providers[0].pools[0].labels[1]: label name 'bad_name' is not a valid " \
        "pod name" in warnings
    bad_pool = load(tmp_path, config(pool={"name": "Main_Pool"}))
    assert bad_pool.providers["k"].pools["Main_Pool"].labels == {}
    assert "providers[0].pools[0].name: pool name 'Main_Pool' cannot start a " \
        "namespace name" in "\n".join(bad_pool.warnings)
