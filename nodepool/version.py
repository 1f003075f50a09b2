"""The release string of this nodepool."""

__version__ = "0.1.0"
# The ZooKeeper model API level published in component records. Upstream
# components exit when they see a higher minimum than they support, so this
# must stay at 0 to coexist with upstream Nodepool 11.
MODEL_API = 0
