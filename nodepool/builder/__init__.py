"""nodepool-builder: disk image builds, uploads and their clean-up."""
