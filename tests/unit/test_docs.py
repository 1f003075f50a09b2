"""The operator documentation agrees with the code and with itself.

An operator follows doc/installation.rst and installs the units in
doc/systemd/: every option a unit passes must be one the daemon accepts,
every path it uses one the installation creates (with the owner the unit runs
as), every file the docs say to copy from the repository must exist, every
``nodepool <command>`` the docs show must be a real command, and the README's
list of drivers must be the registry's.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from nodepool import drivers
from nodepool.cmd import builder as builder_cmd
from nodepool.cmd import launcher as launcher_cmd
from nodepool.cmd import nodepool as nodepool_cmd
from nodepool.config.model import DiskImage

REPO = Path(__file__).resolve().parents[2]
INSTALLATION = REPO / "doc" / "installation.rst"
UNITS = sorted((REPO / "doc" / "systemd").glob("*.service"))
# Where installation.rst clones the repository; a source path under it is a
# file of this repository.
SOURCE_CHECKOUT = "/opt/nodepool-src/"
VIRTUALENV = "/opt/nodepool"
DAEMON_PARSERS = {"nodepool-launcher": launcher_cmd.build_parser,
                  "nodepool-builder": builder_cmd.build_parser}
# upstream Nodepool 11.0.0's drivers (nodepool/driver/ of its release).
UPSTREAM_DRIVERS = {"aws", "azure", "fake", "gce", "ibmvpc", "kubernetes",
                    "metastatic", "openshift", "openshiftpods", "openstack", "static"}
# Directories of the base system a unit may name (PATH entries).
SYSTEM_PREFIXES = ("/usr/", "/bin", "/sbin")
# Options that would stop sudo or hide the loop devices diskimage-builder uses.
SANDBOXING_THAT_BREAKS_DIB = ("NoNewPrivileges", "PrivateDevices", "RestrictSUIDSGID",
                              "CapabilityBoundingSet", "DynamicUser", "PrivateUsers",
                              "ProtectKernelModules")


# -- reading the files ---------------------------------------------------------------

def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values in order (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: cannot parse {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_environment(values: list[str]) -> dict[str, str]:
    """``Environment=`` lines as systemd reads them (quotes group words; an
    empty assignment clears the list)."""
    env: dict[str, str] = {}
    for value in values:
        if not value:
            env.clear()
            continue
        for assignment in shlex.split(value):
            name, _, val = assignment.partition("=")
            env[name] = val
    return env


def expand_command(command: str, env: dict[str, str]) -> list[str]:
    """systemd's expansion: ``$NAME`` alone is split into zero or more words,
    ``${NAME}`` inside a word is replaced by the value."""
    argv = []
    for word in shlex.split(command):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            argv.extend(env.get(whole.group(1), "").split())
            continue
        argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}",
                           lambda m: env.get(m.group(1), ""), word))
    return argv


def literal_lines(text: str) -> list[str]:
    """The lines of the reST literal blocks (after ``::``), with backslash
    continuations joined."""
    lines, in_block, block_indent, pending = [], False, 0, ""
    for raw in text.splitlines():
        if in_block:
            if not raw.strip():
                continue
            indent = len(raw) - len(raw.lstrip())
            if block_indent == 0:
                block_indent = indent
            if indent >= block_indent and block_indent > 0:
                line = raw.strip()
                if line.endswith("\\"):
                    pending += line[:-1] + " "
                    continue
                lines.append(pending + line)
                pending = ""
                continue
            in_block = False
        if raw.rstrip().endswith("::"):
            in_block, block_indent = True, 0
    return lines


def installation_table() -> dict[str, tuple[str, str, str]]:
    """"What goes where": path -> (owner, group, mode)."""
    rows = {}
    for line in INSTALLATION.read_text().splitlines():
        match = re.match(r"``(/[^`]+)``\s+``([\w-]+):([\w-]+)``\s+(0\d{3})\s", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3), match.group(4))
    assert rows, "installation.rst has no 'What goes where' table"
    return rows


def created_by_commands() -> tuple[dict[str, tuple[str, str, str]], list[str]]:
    """What the commands of installation.rst create: path -> (owner, group,
    mode); and the sources they copy."""
    created: dict[str, tuple[str, str, str]] = {}
    sources: list[str] = []
    modes: dict[str, str] = {}
    for line in literal_lines(INSTALLATION.read_text()):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] == "install":
            opts = {"-o": "root", "-g": "root", "-m": "0755"}
            directory, rest, i = False, [], 1
            while i < len(words):
                if words[i] == "-d":
                    directory = True
                elif words[i] in opts:
                    opts[words[i]] = words[i + 1]
                    i += 1
                else:
                    rest.append(words[i])
                i += 1
            owner = (opts["-o"], opts["-g"], opts["-m"])
            if directory:
                created.update({path: owner for path in rest})
            else:
                *srcs, dest = rest
                sources.extend(s for s in srcs if s != "/dev/null")
                for src in srcs:
                    target = dest + os.path.basename(src) if dest.endswith("/") else dest
                    created[target] = owner
        elif words[0] == "echo" and len(words) == 4 and words[2] == ">":
            entry = words[1].split()
            if words[3].startswith("/etc/tmpfiles.d/") and entry[0] == "d":
                # d <path> <mode> <user> <group>; /var/run is a link to /run
                path = re.sub(r"^/run/", "/var/run/", entry[1])
                created[path] = (entry[3], entry[4], entry[2])
            created[words[3]] = ("root", "root", "0644")
        elif words[0] == "chmod":
            modes[words[2]] = words[1]
        elif words[0] == "cp":
            sources.extend(words[1:-1])
    for path, mode in modes.items():
        if path in created:
            created[path] = created[path][:2] + (mode,)
    return created, sources


def daemon_user() -> str:
    """The user (and, with --user-group, group) installation.rst creates."""
    for line in literal_lines(INSTALLATION.read_text()):
        words = shlex.split(line)
        if words and words[0] == "useradd":
            assert "--system" in words and "--user-group" in words, line
            return words[-1]
    raise AssertionError("installation.rst creates no user")


def documented_secure_override() -> dict[str, str]:
    """The drop-in line installation.rst gives for the secure file."""
    for line in literal_lines(INSTALLATION.read_text()):
        if line.startswith("Environment=") and "SECURE_FILE_OPTION" in line:
            return unit_environment([line.partition("=")[2]])
    raise AssertionError("installation.rst does not say how to pass the secure file")


def unit_command(unit: dict, extra_env: dict[str, str] | None = None) -> list[str]:
    service = unit["Service"]
    env = unit_environment(service.get("Environment", []))
    env.update(extra_env or {})
    (command,) = service["ExecStart"]
    return expand_command(command, env)


def parse_daemon_args(argv: list[str]) -> argparse.Namespace:
    program = os.path.basename(argv[0])
    assert program in DAEMON_PARSERS, f"unit runs an unknown program {argv[0]}"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return DAEMON_PARSERS[program]().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{program} rejects {shlex.join(argv[1:])}: {stderr.getvalue()}")


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the nodepool command has no subcommands")


def section(text: str, start: str, end: str) -> str:
    begin = text.index(start)
    return text[begin:text.index(end, begin + len(start))]


def literal_words(fragment: str) -> set[str]:
    """Single words in double backquotes (names, not paths or options)."""
    return set(re.findall(r"``([a-z][a-z-]*)``", fragment))


# -- the systemd units ---------------------------------------------------------------------

def test_there_are_units_for_both_daemons():
    programs = {os.path.basename(unit_command(parse_unit(u))[0]) for u in UNITS}
    assert programs == set(DAEMON_PARSERS)


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_command_line_is_accepted_and_stays_in_the_foreground(path):
    unit = parse_unit(path)
    argv = unit_command(unit)
    assert argv[0].startswith(VIRTUALENV + "/bin/")
    args = parse_daemon_args(argv)
    # Type=simple: a daemon that detached would look dead to systemd.
    assert unit["Service"]["Type"] == ["simple"]
    assert args.foreground or args.debug
    # Without the documented drop-in there is no secure file: the unit must
    # start on a host that has none.
    assert args.secure is None
    assert unit["Service"].get("KillSignal", ["SIGTERM"])[-1] in ("SIGTERM", "SIGINT")


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_documented_secure_file_drop_in_reaches_the_daemon(path):
    override = documented_secure_override()
    args = parse_daemon_args(unit_command(parse_unit(path), override))
    assert args.secure == "/etc/nodepool/secure.conf"
    assert args.secure in installation_table()


def test_a_missing_secure_file_stops_the_daemon_so_the_units_pass_it_only_on_request(tmp_path):
    # Why the units leave -s out unless the drop-in adds it: the daemons load
    # the configuration with the -s file before starting, and a missing one
    # is an error (as upstream's). Should this ever become a warning, the
    # units and installation.rst can pass -s unconditionally.
    from nodepool.config import ConfigError, load_config
    config = tmp_path / "nodepool.yaml"
    config.write_text("zookeeper-servers:\n  - host: 127.0.0.1\n")
    load_config(str(config))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(str(config), str(tmp_path / "secure.conf"))


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_every_path_a_unit_uses_is_created_by_the_installation(path):
    unit = parse_unit(path)
    table = installation_table()
    used = set()
    for argv in (unit_command(unit), unit_command(unit, documented_secure_override())):
        used.update(word for word in argv if word.startswith("/"))
    env = unit_environment(unit["Service"].get("Environment", []))
    for value in env.values():
        used.update(p for p in value.split(":") if p.startswith("/"))
    for key in ("WorkingDirectory", "PIDFile", "EnvironmentFile"):
        used.update(v.lstrip("-") for v in unit["Service"].get(key, []))
    assert VIRTUALENV in table
    # Files must be named in the table themselves (a logging file under
    # /etc/nodepool that nobody creates is the bug this catches); only the
    # virtualenv's contents come from pip.
    missing = [p for p in sorted(used)
               if not p.startswith(SYSTEM_PREFIXES) and p not in table
               and not p.startswith(VIRTUALENV + "/")]
    assert not missing, f"{path.name} uses paths installation.rst does not create: {missing}"


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_runs_as_the_user_and_group_the_installation_creates(path):
    user = daemon_user()
    service = parse_unit(path)["Service"]
    assert service["User"] == [user]
    assert service["Group"] == [user]  # useradd --user-group


def test_installation_table_owners_are_root_or_the_daemon_user():
    user = daemon_user()
    table = installation_table()
    for path, (owner, group, _) in table.items():
        assert owner in ("root", user), path
        assert group in ("root", user), path
    # What the daemons write to must be theirs.
    for path in ("/var/log/nodepool", "/var/log/nodepool/builds", "/var/lib/nodepool",
                 "/var/lib/nodepool/images", "/var/run/nodepool"):
        assert table[path][:2] == (user, user), path


def test_installation_commands_create_every_table_entry_as_the_table_says():
    created, _ = created_by_commands()
    for path, owner_group_mode in installation_table().items():
        assert path in created, f"installation.rst never creates {path}"
        assert created[path] == owner_group_mode, path


def test_files_the_docs_copy_from_the_repository_exist():
    _, sources = created_by_commands()
    from_repo = [s[len(SOURCE_CHECKOUT):] for s in sources if s.startswith(SOURCE_CHECKOUT)]
    assert "doc/examples/logging.yaml" in from_repo
    assert {f"doc/systemd/{u.name}" for u in UNITS} <= set(from_repo)
    missing = [s for s in from_repo if not (REPO / s).is_file()]
    assert not missing, f"installation.rst copies files the repository lacks: {missing}"


def test_units_logging_configuration_is_the_example_the_docs_copy():
    for path in UNITS:
        args = parse_daemon_args(unit_command(parse_unit(path)))
        assert args.logconfig == "/etc/nodepool/logging.yaml"
    example = yaml.safe_load((REPO / "doc" / "examples" / "logging.yaml").read_text())
    assert isinstance(example, dict) and example.get("version") == 1


def test_builder_unit_finds_diskimage_builder_and_lets_it_use_sudo():
    (path,) = [u for u in UNITS if "builder" in u.name]
    unit = parse_unit(path)
    service = unit["Service"]
    program = unit_command(unit)[0]
    search_path = unit_environment(service["Environment"])["PATH"].split(":")
    # dib-cmd's default is looked up on PATH: the virtualenv's comes first.
    assert DiskImage.__dataclass_fields__["dib_cmd"].default == "disk-image-create"
    assert search_path[0] == os.path.dirname(program)
    for option in SANDBOXING_THAT_BREAKS_DIB:
        assert option not in service, f"{option} would break diskimage-builder"
    # SIGTERM to the builder alone, so it can give a build its grace period
    # before anything is killed; systemd must wait longer than that grace.
    assert service["KillMode"] == ["mixed"]
    from nodepool.builder.builder import Builder
    grace = inspect.signature(Builder.stop).parameters["grace"].default
    assert float(service["TimeoutStopSec"][-1]) > grace


# -- the nodepool command in the docs ----------------------------------------------------

def command_mentions(text: str) -> list[list[str]]:
    """Every ``nodepool ...`` in inline literals and literal-block lines, as
    words after the program name (a leading ``sudo -u <user>`` dropped)."""
    candidates = [" ".join(m.split()) for m in re.findall(r"``([^`]+)``", text)]
    candidates += literal_lines(text)
    mentions = []
    for candidate in candidates:
        words = candidate.split()
        if words[:2] == ["sudo", "-u"]:
            words = words[3:]
        if words and (words[0] == "nodepool" or words[0].endswith("/bin/nodepool")):
            if len(words) > 1:
                mentions.append(words[1:])
    return mentions


def check_mention(words: list[str], commands: dict[str, argparse.ArgumentParser]) -> str | None:
    """None if the mention is a valid use of the CLI, else the problem."""
    i = 0
    global_options = {"-c", "--config", "-s", "--secure", "-l"}
    while i < len(words) and words[i].startswith("-"):
        if words[i] in global_options:
            i += 2
        elif words[i] in ("--debug", "--version", "-h", "--help"):
            i += 1
        else:
            return f"unknown option {words[i]}"
    if i >= len(words):
        return None
    names = words[i].split("|")
    for name in names:
        if name not in commands:
            return f"no command {name!r}"
        known = set(commands[name]._option_string_actions)
        for word in words[i + 1:]:
            option = word.strip("[]()|,.")
            option = option.split("=")[0]
            if re.fullmatch(r"--?[a-z][a-z-]*", option) and option not in known:
                return f"{name} has no option {option}"
    return None


DOCS_WITH_COMMANDS = [REPO / "README.rst"] + sorted((REPO / "doc").glob("*.rst"))


@pytest.mark.parametrize("path", DOCS_WITH_COMMANDS, ids=lambda p: p.name)
def test_every_nodepool_command_the_docs_show_exists(path):
    commands = subparsers(nodepool_cmd.build_parser())
    problems = []
    for words in command_mentions(path.read_text()):
        problem = check_mention(words, commands)
        if problem:
            problems.append(f"nodepool {' '.join(words)}: {problem}")
    assert not problems, f"{path.name}: " + "; ".join(problems)


def test_mention_checker_catches_a_command_or_option_that_does_not_exist():
    commands = subparsers(nodepool_cmd.build_parser())
    assert check_mention(["hold", "<id>", "[--reason", "...]"], commands) is None
    assert check_mention(["-c", "/etc/x.yaml", "config-validate"], commands) is None
    assert check_mention(["image-pause|image-unpause", "<image>"], commands) is None
    assert check_mention(["node-hold", "<id>"], commands) == "no command 'node-hold'"
    assert check_mention(["delete", "<id>", "--force"], commands) == \
        "delete has no option --force"


def test_readme_lists_exactly_the_cli_commands():
    readme = (REPO / "README.rst").read_text()
    paragraph = section(readme, "The administration command:", "\n\n")
    assert literal_words(paragraph) == set(subparsers(nodepool_cmd.build_parser()))


def test_every_listing_takes_json_as_the_readme_says():
    for name, parser in subparsers(nodepool_cmd.build_parser()).items():
        if name.endswith("list") or name in ("image-status", "info"):
            assert "--json" in parser._option_string_actions, name


# -- drivers --------------------------------------------------------------------------------

def built_in_drivers() -> set[str]:
    # Tests register drivers of their own; the shipped ones live in nodepool.drivers.
    return {name for name, package in drivers.REGISTRY.items()
            if package.startswith("nodepool.drivers.")}


def test_readme_driver_lists_are_the_registry_and_upstream_rest():
    readme = (REPO / "README.rst").read_text()
    implemented = literal_words(section(readme, "Implemented:", "\n\n"))
    missing = literal_words(section(readme, "Not implemented", ". A configuration"))
    assert implemented == built_in_drivers()
    assert missing == UPSTREAM_DRIVERS - built_in_drivers()


def test_migration_guide_names_the_drivers_as_the_registry_has_them():
    guide = (REPO / "doc" / "migration.rst").read_text()
    item = section(guide, "**Drivers.**", "\n2. ")
    assert literal_words(item) == UPSTREAM_DRIVERS
    first_sentence = item.split(". A configuration")[0]
    assert literal_words(first_sentence) == built_in_drivers()


def test_readme_and_operation_guide_link_the_migration_guide():
    assert (REPO / "doc" / "migration.rst").is_file()
    assert "doc/migration.rst" in (REPO / "README.rst").read_text()
    assert "doc/migration.rst" in (REPO / "doc" / "operation.rst").read_text()
