"""The YAML of a configuration is read by libyaml when it is within the
limits, and by the bounded pure-Python loader otherwise: both must read the
same document the same way."""

import os

import yaml

from nodepool.config import reading

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIED = """
plain: text
quoted: "a: b"
folded: >
  one
  two
literal: |
  keep
    this
yes_no: [yes, no, on, off, true, False]
numbers: [1, -2, 0x1f, 0o17, 1_000, 3.5, 1e3, .inf, -.nan]
nothing: [~, null, ]
mapping: {a: 1, b: [x, y], "c d": {e: f}}
stamp: 2026-12-01
octal_string: '0755'
block:
  - name: a
    value: 1
  - name: b
"""


def limited(text):
    return reading.LimitedLoader(text).get_single_data()


def same(a, b):
    # NaN is not equal to itself: compare through repr.
    return repr(a) == repr(b)


def test_libyaml_reads_what_the_limited_loader_reads():
    assert reading._plain(VARIED)
    assert same(reading.parse_yaml("x", VARIED, False), limited(VARIED))
    for name in os.listdir(os.path.join(ROOT, "doc", "examples")):
        with open(os.path.join(ROOT, "doc", "examples", name)) as handle:
            text = reading.ENV_REFERENCE.sub("value", handle.read())
        assert same(reading.parse_yaml(name, text, False), limited(text)), name


def test_documents_with_aliases_or_deep_nesting_take_the_limited_loader():
    merged = "base: &base {a: 1}\nchild:\n  <<: *base\n  b: 2\n"
    assert not reading._plain(merged)
    assert reading.parse_yaml("x", merged, False)["child"] == {"a": 1, "b": 2}
    deep = "k: " + "[" * (reading.MAX_DEPTH + 1) + "]" * (reading.MAX_DEPTH + 1) + "\n"
    assert not reading._plain(deep)
    shallow = "k: " + "[" * (reading.MAX_DEPTH - 1) + "]" * (reading.MAX_DEPTH - 1) + "\n"
    assert reading._plain(shallow)
    assert not reading._plain("a: [unclosed\n")


def test_libyaml_is_what_reads_plain_documents():
    # The speed-up is only real if the C loader is installed and used.
    assert yaml.__with_libyaml__
    assert issubclass(reading._LibyamlLoader, yaml.CSafeLoader)
