"""Just enough of clouds.yaml for configuration loading.

The launcher and builder talk to the cloud through openstacksdk, but loading
the configuration (which every CLI command does) only needs a cloud's
``image_format``; reading the YAML ourselves keeps openstacksdk off that path
unless the cloud names a vendor ``profile:`` and sets no ``image_format`` of
its own: then the profile's defaults (openstacksdk's vendor files) decide,
as they do for upstream, which asks openstacksdk for the whole cloud config.
"""

from __future__ import annotations

import functools
import logging
import os

import yaml

log = logging.getLogger("nodepool.drivers.openstack")

DEFAULT_IMAGE_FORMAT = "qcow2"


def clouds_yaml_paths() -> list[str]:
    explicit = os.environ.get("OS_CLIENT_CONFIG_FILE")
    if explicit:
        return [explicit]
    return [
        os.path.join(os.getcwd(), "clouds.yaml"),
        os.path.expanduser("~/.config/openstack/clouds.yaml"),
        "/etc/openstack/clouds.yaml",
    ]


def find_cloud(name: str) -> dict | None:
    """The clouds.yaml entry for ``name`` from the first file that has it."""
    for path in clouds_yaml_paths():
        try:
            with open(path, encoding="utf-8") as handle:
                data = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError):
            continue
        clouds = data.get("clouds") if isinstance(data, dict) else None
        if isinstance(clouds, dict) and isinstance(clouds.get(name), dict):
            return clouds[name]
    return None


@functools.lru_cache(maxsize=64)
def profile_defaults(profile: str) -> dict:
    """openstacksdk's defaults for a vendor profile (a profile that points
    at another is followed once, as openstacksdk does; a URL profile is
    fetched from its well-known address, once per process). Empty when
    openstacksdk does not know it."""
    try:
        from openstack.config import vendors
        data = vendors.get_profile(profile) or {}
        nested = data.pop("profile", None)
        if nested:
            data = vendors.get_profile(nested) or data
    except Exception as exc:
        log.warning("clouds.yaml profile %r: cannot read its defaults: %s",
                    profile, exc)
        return {}
    return data if isinstance(data, dict) else {}


def image_format(cloud_name: str | None, fallback: str = DEFAULT_IMAGE_FORMAT) -> str:
    entry = find_cloud(cloud_name) if cloud_name else None
    if not entry:
        return fallback
    value = entry.get("image_format")
    if isinstance(value, str) and value:
        return value
    # "cloud" is openstacksdk's older name for "profile".
    profile = entry.get("profile", entry.get("cloud"))
    if isinstance(profile, str) and profile:
        value = profile_defaults(profile).get("image_format")
        if isinstance(value, str) and value:
            return value
    return fallback
