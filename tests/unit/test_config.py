"""vstore.config: the template, the loader's error messages and every validation rule.

Error tests assert the file name and the exact key path appear in the one-line message,
because that is what lets an operator find and fix the line (STYLE.md §5).
"""

from __future__ import annotations

import dataclasses
import typing

import pytest

from vstore.config import (Address, ChunkserverSection, MdsSection, NetSection, NodeConfig, changed_keys,
                           load_config, parse_config, render_template)
from vstore.errors import ConfigError, UsageError

ROLES = ("mds", "cs")

# Minimal valid configs, as {section: {key: TOML literal}}, so tests can override one key.
BASE: dict[str, dict[str, dict[str, str]]] = {
    "mds": {
        "node": {"id": '"mds-1"', "role": '"mds"', "listen": '"10.0.0.1:9400"',
                 "data_dir": '"/srv/vstore/mds-1"'},
        "cluster": {"name": '"prod"', "id": '"0b5e2f6a-6d1c-4b8e-9a51-3f0c2d7e8a90"',
                    "mds": '["10.0.0.1:9400"]', "secret_file": '"/etc/vstore/cluster.secret"'},
    },
    "cs": {
        "node": {"id": '"cs-07"', "role": '"cs"', "listen": '"10.0.0.7:9402"',
                 "data_dir": '"/srv/vstore/cs-07"'},
        "cluster": {"name": '"prod"', "id": '"0b5e2f6a-6d1c-4b8e-9a51-3f0c2d7e8a90"',
                    "mds": '["10.0.0.1:9400", "10.0.0.2:9400"]', "secret_file": '"/etc/vstore/cluster.secret"'},
    },
}


def config_text(role: str = "mds", **overrides: dict[str, str | None]) -> str:
    """TOML text of the base config for ``role`` with keys set (or, with None, removed) per section."""
    sections = {name: dict(keys) for name, keys in BASE[role].items()}
    for section, keys in overrides.items():
        target = sections.setdefault(section, {})
        for key, value in keys.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    lines = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in keys.items())
        lines.append("")
    return "\n".join(lines)


def config_error(text: str, file: str = "node.toml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, file)
    message = str(info.value)
    assert "\n" not in message, "every config error is one line"
    assert message.startswith(f"{file}: "), message
    return info.value


def section_classes() -> dict[str, tuple[type, str | None]]:
    """{section name: (dataclass, role it belongs to or None)}, read from NodeConfig itself."""
    hints = typing.get_type_hints(NodeConfig)
    out = {}
    for f in dataclasses.fields(NodeConfig):
        (cls,) = [a for a in typing.get_args(hints[f.name]) or (hints[f.name],) if a is not type(None)]
        out[f.name] = (cls, f.metadata["role"])
    return out


# ---- template -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_template_parses_and_every_optional_key_equals_its_default(role: str) -> None:
    cfg = parse_config(render_template(role), f"{role}.toml")
    assert cfg.node.role == role
    checked = 0
    for name, (cls, section_role) in section_classes().items():
        section = getattr(cfg, name)
        if section_role not in (None, role):
            assert section is None, f"[{name}] must be None for role {role}"
            continue
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING:
                continue
            assert getattr(section, f.name) == f.default, f"[{name}] {f.name}"
            checked += 1
    assert checked > 10  # guards against the walk silently checking nothing


@pytest.mark.parametrize("role", ROLES)
def test_template_shows_every_key_with_its_why_unit_and_apply_marker(role: str) -> None:
    lines = render_template(role).splitlines()
    for name, (cls, section_role) in section_classes().items():
        if section_role not in (None, role):
            assert f"[{name}]" not in lines
            continue
        start = lines.index(f"[{name}]")
        for f in dataclasses.fields(cls):
            i = next(i for i in range(start, len(lines)) if lines[i].startswith(f"{f.name} = "))
            doc, facts = lines[i - 2], lines[i - 1]
            assert doc == f"# {f.metadata['doc']}"
            assert facts.endswith(f"({f.metadata['apply']})")
            if f.metadata["unit"]:
                assert f"unit {f.metadata['unit']}" in facts
            if f.default is dataclasses.MISSING:
                assert "required" in facts
            else:
                assert "default" in facts


def test_template_uses_the_documented_example_values_for_required_keys() -> None:
    cfg = parse_config(render_template("mds"))
    assert cfg.node.id == "mds-1"
    assert cfg.node.listen == Address("127.0.0.1", 9400)
    assert cfg.node.data_dir == "/var/lib/vstore/mds-1"
    assert cfg.cluster.id == "00000000-0000-0000-0000-000000000000"
    assert cfg.cluster.secret_file == "/etc/vstore/cluster.secret"


def test_template_for_an_unknown_role_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="client"):
        render_template("client")


# ---- loading and role sections ----------------------------------------------------------------


def test_a_cs_config_gets_chunkserver_defaults_and_no_mds_section() -> None:
    cfg = parse_config(config_text("cs"))
    assert cfg.mds is None
    assert cfg.chunkserver == ChunkserverSection()
    assert cfg.cluster.mds == (Address("10.0.0.1", 9400), Address("10.0.0.2", 9400))
    assert cfg.node.host == "" and cfg.node.rack == ""


def test_an_mds_config_gets_mds_defaults_and_no_chunkserver_section() -> None:
    cfg = parse_config(config_text("mds"))
    assert cfg.chunkserver is None
    assert cfg.mds == MdsSection()
    assert cfg.mds.admin_listen == Address("127.0.0.1", 9480)
    assert cfg.mds.lmdb_map_bytes == 8 * 1024**3
    assert cfg.net == NetSection()


def test_values_given_in_the_file_override_the_defaults() -> None:
    cfg = parse_config(config_text("cs", chunkserver={"scrub_rate_bytes_per_s": "0", "max_open_chunks": "8"},
                                   net={"frame_auth": '"none"'}, node={"rack": '"r2"'}))
    assert cfg.chunkserver is not None
    assert cfg.chunkserver.scrub_rate_bytes_per_s == 0
    assert cfg.chunkserver.max_open_chunks == 8
    assert cfg.net.frame_auth == "none"
    assert cfg.node.rack == "r2"


def test_an_mds_section_in_a_cs_config_is_rejected() -> None:
    exc = config_error(config_text("cs", mds={"election_timeout_ms": "1000"}), "cs.toml")
    assert exc.key == "[mds]"
    assert str(exc) == 'cs.toml: [mds]: section only valid for role "mds" (this node has role = "cs")'


def test_a_chunkserver_section_in_an_mds_config_is_rejected() -> None:
    exc = config_error(config_text("mds", chunkserver={}), "mds.toml")
    assert exc.key == "[chunkserver]"
    assert "[chunkserver]" in str(exc) and '"cs"' in str(exc)


def test_load_config_reads_a_file(tmp_path) -> None:
    path = tmp_path / "cs.toml"
    path.write_text(config_text("cs"))
    assert load_config(path) == parse_config(config_text("cs"))


def test_load_config_on_a_missing_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: cannot read config file")
    assert info.value.file == str(path)


def test_load_config_on_a_directory_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_load_config_rejects_non_utf8_and_oversized_files(tmp_path) -> None:
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"[node]\nid = \"\xff\"\n")
    with pytest.raises(ConfigError, match=rf"^{binary}: not UTF-8"):
        load_config(binary)
    huge = tmp_path / "huge.toml"
    huge.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(ConfigError, match=rf"^{huge}: larger than"):
        load_config(huge)


def test_a_toml_syntax_error_names_the_file_and_line() -> None:
    text = config_text("mds") + "\n[net\n"
    line = text.count("\n")  # the broken header is on the last line
    exc = config_error(text, "mds.toml")
    assert "TOML syntax error" in str(exc)
    assert f"line {line}" in str(exc)


# ---- unknown keys and sections --------------------------------------------------------------


def test_an_unknown_key_suggests_the_closest_known_key() -> None:
    exc = config_error(config_text("cs", chunkserver={"scrub_rate_mb_s": "16"}), "cs.toml")
    assert str(exc) == "cs.toml: [chunkserver] scrub_rate_mb_s: unknown key (did you mean scrub_rate_bytes_per_s?)"
    assert exc.key == "[chunkserver] scrub_rate_mb_s"
    assert exc.file == "cs.toml"


def test_a_key_in_the_wrong_section_points_to_the_right_one() -> None:
    exc = config_error(config_text("mds", node={"election_timeout_ms": "1000"}))
    assert exc.key == "[node] election_timeout_ms"
    assert "did you mean [mds] election_timeout_ms?" in str(exc)


def test_an_unknown_key_with_nothing_close_lists_the_section_keys() -> None:
    exc = config_error(config_text("mds", log={"colour": "true"}))
    assert exc.key == "[log] colour"
    assert "keys in [log]: level, format, file" in str(exc)


def test_an_unknown_section_suggests_the_closest_known_section() -> None:
    exc = config_error(config_text("cs", chunksrever={"max_open_chunks": "1"}), "cs.toml")
    assert exc.key == "[chunksrever]"
    assert str(exc) == "cs.toml: [chunksrever]: unknown section (did you mean [chunkserver]?)"


def test_a_key_outside_any_section_suggests_its_section() -> None:
    exc = config_error('data_dir = "/srv"\n' + config_text("mds"))
    assert exc.key == "data_dir"
    assert "did you mean [node] data_dir?" in str(exc)


def test_a_section_that_is_not_a_table_is_a_type_error() -> None:
    exc = config_error("net = 5\n" + config_text("mds"))
    assert exc.key == "[net]"
    assert "got integer 5" in str(exc)


# ---- required keys and types ------------------------------------------------------------------


@pytest.mark.parametrize(("section", "key"), [("node", "id"), ("node", "role"), ("node", "listen"),
                                              ("node", "data_dir"), ("cluster", "name"), ("cluster", "id"),
                                              ("cluster", "mds"), ("cluster", "secret_file")])
def test_a_missing_required_key_says_it_is_required_and_what_it_means(section: str, key: str) -> None:
    exc = config_error(config_text("mds", **{section: {key: None}}), "mds.toml")
    assert exc.key == f"[{section}] {key}"
    assert str(exc).startswith(f"mds.toml: [{section}] {key}: required key missing: ")
    assert f"(e.g. {key} = " in str(exc)


def test_a_missing_node_section_reports_its_first_required_key() -> None:
    text = config_text("mds").replace("[node]", "[unused]").split("[cluster]", 1)[1]
    exc = config_error("[cluster]" + text)
    assert exc.key == "[node] id"


@pytest.mark.parametrize(("section", "key", "value", "expected", "got"), [
    ("net", "max_connections", "true", "an integer", "boolean true"),
    ("mds", "election_timeout_ms", "false", "an integer", "boolean false"),
    ("net", "max_connections", '"4096"', "an integer", 'string "4096" (write it without quotes)'),
    ("net", "idle_timeout_s", "1.5", "an integer", "float 1.5"),
    ("node", "id", "5", "a string", "integer 5"),
    ("node", "data_dir", "[\"/srv\"]", "a string", 'array ["/srv"]'),
    ("tls", "enabled", '"true"', "a boolean (true or false)", 'string "true" (write it without quotes)'),
    ("tls", "enabled", "1", "a boolean (true or false)", "integer 1"),
    ("node", "listen", "9400", 'a string "HOST:PORT"', "integer 9400"),
    ("cluster", "mds", '"10.0.0.1:9400"', 'an array of "HOST:PORT" strings', 'string "10.0.0.1:9400"'),
    ("log", "level", "2", 'a string, one of "debug", "info", "warning", "error"', "integer 2"),
    ("mds", "lmdb_map_bytes", "{ size = 1 }", "an integer", "a table"),
])
def test_a_wrong_type_names_the_expected_type_and_the_value_given(section: str, key: str, value: str,
                                                                   expected: str, got: str) -> None:
    exc = config_error(config_text("mds", **{section: {key: value}}), "mds.toml")
    assert exc.key == f"[{section}] {key}"
    assert str(exc) == f"mds.toml: [{section}] {key}: expected {expected}, got {got}"


def test_a_wrong_type_inside_the_mds_array_names_the_element() -> None:
    exc = config_error(config_text("mds", cluster={"mds": '["10.0.0.1:9400", 7]'}))
    assert exc.key == "[cluster] mds[1]"
    assert "got integer 7" in str(exc)


# ---- value rules ------------------------------------------------------------------------------


def test_election_timeout_must_exceed_three_heartbeats() -> None:
    exc = config_error(config_text("mds", mds={"election_timeout_ms": "50"}), "mds.toml")
    assert str(exc) == "mds.toml: [mds] election_timeout_ms = 50 must be > 3 × heartbeat_interval_ms (= 100)"
    assert exc.key == "[mds] election_timeout_ms"


def test_election_timeout_rule_blames_the_default_when_only_the_heartbeat_was_set() -> None:
    exc = config_error(config_text("mds", mds={"heartbeat_interval_ms": "400"}), "mds.toml")
    assert str(exc) == ("mds.toml: [mds] election_timeout_ms = 1000 (default) "
                        "must be > 3 × heartbeat_interval_ms (= 400)")


def test_election_timeout_of_exactly_three_heartbeats_is_rejected_and_one_more_ms_accepted() -> None:
    config_error(config_text("mds", mds={"election_timeout_ms": "300"}))
    assert parse_config(config_text("mds", mds={"election_timeout_ms": "301"})).mds.election_timeout_ms == 301


def test_cs_failed_after_must_exceed_cs_offline_after() -> None:
    exc = config_error(config_text("mds", mds={"cs_offline_after_s": "60", "cs_failed_after_s": "60"}), "mds.toml")
    assert str(exc) == "mds.toml: [mds] cs_failed_after_s = 60 must be > cs_offline_after_s (= 60)"
    assert exc.key == "[mds] cs_failed_after_s"


def test_max_connections_per_ip_may_not_exceed_max_connections() -> None:
    exc = config_error(config_text("cs", net={"max_connections": "10", "max_connections_per_ip": "11"}), "cs.toml")
    assert str(exc) == "cs.toml: [net] max_connections_per_ip = 11 must be ≤ max_connections (= 10)"


@pytest.mark.parametrize("key", ["cert_file", "key_file", "ca_file"])
def test_tls_enabled_requires_each_file(key: str) -> None:
    files = {"cert_file": '"/etc/vstore/node.pem"', "key_file": '"/etc/vstore/node.key"',
             "ca_file": '"/etc/vstore/ca.pem"'}
    files[key] = None  # type: ignore[assignment]
    exc = config_error(config_text("cs", tls={"enabled": "true", **files}), "cs.toml")
    assert exc.key == f"[tls] {key}"
    assert str(exc) == f'cs.toml: [tls] {key} = "" (default) must be an absolute path when enabled = true'


def test_tls_enabled_with_all_files_is_accepted() -> None:
    cfg = parse_config(config_text("cs", tls={"enabled": "true", "cert_file": '"/etc/vstore/node.pem"',
                                              "key_file": '"/etc/vstore/node.key"', "ca_file": '"/etc/ca.pem"'}))
    assert cfg.tls.enabled and cfg.tls.ca_file == "/etc/ca.pem"


@pytest.mark.parametrize(("section", "key"), [("node", "data_dir"), ("cluster", "secret_file"),
                                              ("tls", "cert_file"), ("log", "file")])
def test_a_relative_path_is_rejected(section: str, key: str) -> None:
    exc = config_error(config_text("mds", **{section: {key: '"data/here"'}}), "mds.toml")
    assert exc.key == f"[{section}] {key}"
    assert str(exc) == f'mds.toml: [{section}] {key} = "data/here" must be an absolute path'


@pytest.mark.parametrize(("text", "reason"), [
    ("host", "has no port"),
    ("host:0", "has port 0, outside 1-65535"),
    ("host:99999", "has port 99999, outside 1-65535"),
    ("host:9999999999", "is not a number"),
    (":80", "has no host"),
    ("host:", "is not a number"),
    ("host:http", "is not a number"),
    ("::1:9400", "without brackets"),
    ("[::1]", 'needs ":PORT"'),
    ("[::1:9400", "without a closing"),
    ("[zz::1]:9400", "not an IPv6 address"),
    ("256.1.1.1:80", "not a valid IPv4 address"),
    ("bad_host:80", "neither an IPv4 address nor a hostname"),
    ("-lead.example:80", "neither an IPv4 address nor a hostname"),
])
def test_a_bad_listen_address_is_rejected_with_the_reason(text: str, reason: str) -> None:
    exc = config_error(config_text("mds", node={"listen": f'"{text}"'}), "mds.toml")
    assert exc.key == "[node] listen"
    assert str(exc).startswith(f'mds.toml: [node] listen = "{text}" is not a valid HOST:PORT address: ')
    assert reason in str(exc)


@pytest.mark.parametrize(("text", "host", "port"), [
    ("[::1]:9400", "::1", 9400),
    ("10.0.0.7:9402", "10.0.0.7", 9402),
    ("0.0.0.0:1", "0.0.0.0", 1),
    ("node-7.example.com:65535", "node-7.example.com", 65535),
    ("[fe80::1%eth0]:9400", "fe80::1%eth0", 9400),
])
def test_a_good_listen_address_parses_and_prints_back_unchanged(text: str, host: str, port: int) -> None:
    cfg = parse_config(config_text("mds", node={"listen": f'"{text}"'}))
    assert cfg.node.listen == Address(host, port)
    assert str(cfg.node.listen) == text


def test_a_bad_address_in_the_mds_list_names_its_index() -> None:
    exc = config_error(config_text("cs", cluster={"mds": '["10.0.0.1:9400", "10.0.0.2"]'}), "cs.toml")
    assert exc.key == "[cluster] mds[1]"
    assert str(exc).startswith('cs.toml: [cluster] mds[1] = "10.0.0.2" is not a valid HOST:PORT address')


def test_a_duplicate_mds_address_is_rejected() -> None:
    exc = config_error(config_text("cs", cluster={"mds": '["10.0.0.1:9400", "10.0.0.2:9400", "10.0.0.1:9400"]'}),
                       "cs.toml")
    assert str(exc) == 'cs.toml: [cluster] mds[2] = "10.0.0.1:9400" duplicates mds[0]'


def test_an_empty_mds_list_is_rejected() -> None:
    exc = config_error(config_text("cs", cluster={"mds": "[]"}), "cs.toml")
    assert str(exc) == "cs.toml: [cluster] mds = [] must list at least one MDS address"


@pytest.mark.parametrize("node_id", ["", "-x", "a b", "x" * 65, "é"])
def test_a_bad_node_id_is_rejected(node_id: str) -> None:
    exc = config_error(config_text("mds", node={"id": f'"{node_id}"'}))
    assert exc.key == "[node] id"
    assert "must be 1-64 characters" in str(exc)


def test_a_64_character_node_id_is_accepted() -> None:
    assert parse_config(config_text("mds", node={"id": '"' + "a" * 64 + '"'})).node.id == "a" * 64


@pytest.mark.parametrize("cluster_id", ["prod", "0B5E2F6A-6D1C-4B8E-9A51-3F0C2D7E8A90",
                                        "{0b5e2f6a-6d1c-4b8e-9a51-3f0c2d7e8a90}"])
def test_a_cluster_id_that_is_not_a_lowercase_uuid_is_rejected(cluster_id: str) -> None:
    exc = config_error(config_text("mds", cluster={"id": f'"{cluster_id}"'}))
    assert exc.key == "[cluster] id"
    assert "must be a lower-case UUID" in str(exc)


def test_a_bad_role_lists_the_roles() -> None:
    exc = config_error(config_text("mds", node={"role": '"client"'}), "mds.toml")
    assert str(exc) == 'mds.toml: [node] role = "client" must be one of "mds", "cs"'


def test_a_bad_log_level_lists_the_allowed_values() -> None:
    exc = config_error(config_text("mds", log={"level": '"verbose"'}), "mds.toml")
    assert str(exc) == 'mds.toml: [log] level = "verbose" must be one of "debug", "info", "warning", "error"'


@pytest.mark.parametrize(("section", "key", "value"), [
    ("net", "max_connections", "0"),
    ("net", "handshake_timeout_ms", "-1"),
    ("net", "idle_timeout_s", "0"),
    ("mds", "lmdb_map_bytes", "16_777_215"),
    ("mds", "heartbeat_interval_ms", "0"),
])
def test_an_integer_out_of_range_states_the_range(section: str, key: str, value: str) -> None:
    exc = config_error(config_text("mds", **{section: {key: value}}), "mds.toml")
    assert exc.key == f"[{section}] {key}"
    shown = value if int(value) >= 100_000 else str(int(value))  # large numbers are shown with "_"
    assert str(exc).startswith(f"mds.toml: [{section}] {key} = {shown} must be between ")


def test_the_lmdb_range_is_shown_in_readable_units() -> None:
    exc = config_error(config_text("mds", mds={"lmdb_map_bytes": "1024"}))
    assert "16_777_216 (16 MiB)" in str(exc)


def test_an_overlong_bad_value_is_cut_in_the_message() -> None:
    exc = config_error(config_text("mds", node={"data_dir": '"' + "x" * 500 + '"'}))
    assert len(str(exc)) < 200


def test_a_multiline_bad_value_still_gives_a_one_line_error() -> None:
    config_error(config_text("mds", node={"data_dir": '"""\nrelative\npath"""'}))


# ---- immutability and reload ----------------------------------------------------------------


def test_the_config_and_its_sections_cannot_be_mutated() -> None:
    cfg = parse_config(config_text("mds"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node = cfg.node  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.net.max_connections = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node.listen.port = 1  # type: ignore[misc]
    assert isinstance(cfg.cluster.mds, tuple)


def test_changed_keys_reports_each_changed_key_with_its_apply_marker() -> None:
    old = parse_config(config_text("mds"))
    new = parse_config(config_text("mds", log={"level": '"debug"'}, mds={"heartbeat_interval_ms": "200"}))
    assert changed_keys(old, new) == [("[log] level", "reload"), ("[mds] heartbeat_interval_ms", "restart")]
    assert changed_keys(old, old) == []
    assert ("[mds]", "restart") in changed_keys(old, parse_config(config_text("cs")))
