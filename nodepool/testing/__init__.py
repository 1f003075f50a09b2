"""Real parts to test, demonstrate and measure nodepool against, on loopback:
a ZooKeeper server (and ensemble, and a TCP proxy to cut connections), sshd
hosts, an OpenStack API simulator, a statsd receiver, and a Zuul-role client
of the ZooKeeper protocol. Used by the test suite and by ``tools/`` (soak,
benchmarks, quickstart); nothing in the daemons imports them."""
