"""Just enough of clouds.yaml for configuration loading.

The launcher and builder talk to the cloud through openstacksdk, but loading
the configuration (which every CLI command does) only needs a cloud's
``image_format``; reading the YAML ourselves keeps openstacksdk off that path.
"""

from __future__ import annotations

import os

import yaml

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


def image_format(cloud_name: str | None, fallback: str = DEFAULT_IMAGE_FORMAT) -> str:
    entry = find_cloud(cloud_name) if cloud_name else None
    value = entry.get("image_format") if entry else None
    return value if isinstance(value, str) and value else fallback
