"""Writing a configuration to a test's directory and loading it."""

import pytest
import yaml

from nodepool.config import ConfigError, load_config


def write(tmp_path, content, name="nodepool.yaml") -> str:
    """``content``: YAML text, or data to dump as YAML."""
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return str(path)


def load(tmp_path, content, **kwargs):
    return load_config(write(tmp_path, content), **kwargs)


def problems_of(tmp_path, content, **kwargs) -> list[str]:
    """The problems loading reports (it must fail), as printed."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, content, **kwargs)
    return [str(p) for p in info.value.problems]
