"""Configuration: YAML file -> validated, typed :class:`Config`."""

from nodepool.config.loader import (  # noqa: F401
    config_files_changed, load_config, validate_file,
)
from nodepool.config.model import Config  # noqa: F401
from nodepool.config.schema import ConfigError, Problem  # noqa: F401
