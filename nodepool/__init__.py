"""nodepool: keeps a pool of cloud nodes ready for Zuul."""
