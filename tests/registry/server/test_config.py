"""The registry configuration: distribution's config.yml shape (YAML or TOML), strata's
access rules, and clear errors for what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.errors import InvalidArgument
from strata.registry.server.config import AccessConfig, AccessRule, ServerConfig, load_config, resolve_config

DISTRIBUTION_YAML = """\
version: 0.1
log:
  accesslog:
    disabled: false
  level: info
http:
  addr: 0.0.0.0:5000
  headers:
    X-Content-Type-Options: [nosniff]
storage:
  s3:
    bucket: images
    region: us-east-1
    regionendpoint: http://127.0.0.1:9000
    accesskey: AK
    secretkey: SK
    rootdirectory: /registry
    chunksize: 10485760
    secure: false
  delete:
    enabled: false
  maintenance:
    uploadpurging:
      enabled: false
auth:
  htpasswd:
    realm: basic-realm
    path: htpasswd
access:
  anonymous: [pull]
  rules:
    - repository: "team/*"
      users: [alice]
      actions: [pull, push, delete]
"""


def test_reads_a_distribution_style_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(DISTRIBUTION_YAML)
    config = load_config(path)
    assert config.addr == "0.0.0.0:5000"
    assert config.storage_driver == "s3"
    assert config.storage_options["bucket"] == "images"
    assert config.storage_options["chunksize"] == 10485760
    assert config.delete_enabled is False
    assert config.htpasswd is not None
    assert config.htpasswd.realm == "basic-realm" and config.htpasswd.path == tmp_path / "htpasswd"
    assert config.access.anonymous == frozenset({"pull"})
    assert config.access.rules == (AccessRule("team/*", ("alice",), frozenset({"pull", "push", "delete"})),)


def test_reads_toml_and_root_and_listen_override(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[http]\naddr = "127.0.0.1:1"\n[storage.filesystem]\nrootdirectory = "data"\n')
    config = load_config(path)
    assert config.storage_options == {"rootdirectory": str(tmp_path / "data")}
    config = resolve_config(path, root=tmp_path / "elsewhere", listen="127.0.0.1:2")
    assert config.storage_options == {"rootdirectory": str(tmp_path / "elsewhere")}
    assert config.addr == "127.0.0.1:2"
    assert resolve_config(None) == ServerConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("storage:\n  filesystem: {}\n  s3: {}\n", "storage names several drivers: filesystem, s3"),
        ("http: [1, 2]\n", "http must be a mapping"),
        ("storage:\n  delete:\n    enabled: maybe\n", "storage.delete.enabled must be true or false"),
        ("auth:\n  htpasswd: {realm: r}\n", "auth.htpasswd.path must be a non-empty string"),
        ("auth:\n  token: {service: s, issuer: i}\n", "auth.token.realm is required without signingkey"),
        ("auth:\n  token: {realm: https://x, service: s, issuer: i}\n",
         "auth.token needs rootcertbundle or signingkey"),
        ("auth:\n  token: {service: s, issuer: i, signingkey: k.pem}\n",
         "auth.token.signingkey (built-in token endpoint) needs auth.htpasswd"),
        ("access:\n  anonymous: [pull]\n", "access rules need auth.htpasswd or auth.token"),
        ("auth:\n  htpasswd: {path: p}\naccess:\n  rules: [{repository: x, actions: [write]}]\n",
         "unknown action(s) write"),
        ("auth:\n  htpasswd: {path: p}\naccess:\n  rules: {}\n", "access.rules must be a list"),
        ("limits:\n  manifestsize: -1\n", "limits.manifestsize must be a positive integer"),
        ("- just\n- a list\n", "must be a mapping at the top level"),
        ("key: [unclosed\n", "is malformed"),
    ],
    ids=["two-drivers", "http-not-mapping", "delete-not-bool", "htpasswd-no-path", "token-no-realm",
         "token-no-keys", "signing-without-htpasswd", "rules-without-auth", "unknown-action",
         "rules-not-list", "negative-limit", "top-level-list", "bad-yaml"],
)
def test_invalid_configuration_is_refused_with_the_key_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yml"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match="registry config") as info:
        load_config(path)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("user", "repository", "expected"),
    [
        (None, "team/app", {"pull"}),
        ("alice", "team/app", {"pull", "push", "delete"}),
        ("bob", "team/app", {"pull"}),
        ("bob", "public/x", {"pull", "push"}),
        (None, "public/x", {"pull"}),
    ],
    ids=["anonymous", "owner", "other-user", "public-any-user", "public-anonymous"],
)
def test_access_rules_first_match_wins_plus_anonymous_grants(
    user: str | None, repository: str, expected: set[str]
) -> None:
    access = AccessConfig(
        anonymous=frozenset({"pull"}),
        rules=(
            AccessRule("team/*", ("alice",), frozenset({"pull", "push", "delete"})),
            AccessRule("public/*", ("*",), frozenset({"pull", "push"})),
        ),
    )
    assert access.allowed(repository, user) == expected
