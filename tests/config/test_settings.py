"""Settings: defaults, TOML, environment, validation, masking, safe defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from config.settings import DuplicatePolicy, Settings, load_settings, masked_dump
from gateway.cli import app


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No configuration leaks in from the environment running the tests."""
    import os

    for key in list(os.environ):
        if key.startswith("FRACTURE_GATEWAY_") and key != "FRACTURE_GATEWAY_SHARED":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults_match_the_documentation(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.node.ae_title == "FRACTUREGW"
    assert settings.node.port == 11112
    assert (settings.api.host, settings.api.port) == ("127.0.0.1", 8000)
    assert settings.home == tmp_path / "fracture-gateway-data"
    assert settings.database_url.startswith("sqlite:///")
    assert settings.database_url.endswith("fracture-gateway-data/fracture-gateway.sqlite3")
    assert settings.storage_folder == tmp_path / "fracture-gateway-data" / "storage"
    assert settings.grouping.quiet_period_s == 1.5
    assert settings.grouping.analyse_on_arrival is True
    assert settings.node.duplicate_policy is DuplicatePolicy.KEEP_FIRST
    assert settings.node.maximum_pdu_size == 1024 * 1024
    assert settings.node.artim_timeout == 5
    assert (settings.node.max_pending, settings.node.max_pending_per_peer) == (128, 16)


def test_unlimited_pdu_size_is_refused() -> None:
    """0 would mean "any length": a peer could make the node read gigabytes into memory."""
    with pytest.raises(ValidationError, match="0 \\(unlimited\\) is not allowed"):
        Settings(node={"maximum_pdu_size": 0})
    with pytest.raises(ValidationError, match="greater than or equal to 4096"):
        Settings(node={"maximum_pdu_size": 1000})


def test_home_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FRACTURE_GATEWAY_HOME", str(tmp_path / "elsewhere"))
    settings = load_settings()
    assert settings.storage_folder == tmp_path / "elsewhere" / "storage"


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRACTURE_GATEWAY_NODE__PORT", "4242")
    monkeypatch.setenv("FRACTURE_GATEWAY_NODE__AE_TITLE", "MYGW")
    monkeypatch.setenv("FRACTURE_GATEWAY_GROUPING__QUIET_PERIOD_S", "2.5")
    settings = load_settings()
    assert settings.node.port == 4242
    assert settings.node.ae_title == "MYGW"
    assert settings.grouping.quiet_period_s == 2.5


def test_toml_file_and_environment_precedence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        '[node]\nport = 5000\nae_title = "FROMTOML"\n'
        '[[node.known_sources]]\nae_title = "PACS1"\nhost = "10.0.0.5"\n'
        '[[destinations]]\nname = "pacs"\nae_title = "PACS1"\nhost = "10.0.0.5"\nport = 104\n'
        '[[destinations]]\nname = "viewer"\nae_title = "VIEW"\nhost = "10.0.0.6"\nport = 104\n'
        'objects = ["sr", "sc", "gsps"]\n'
    )
    monkeypatch.setenv("FRACTURE_GATEWAY_CONFIG", str(config))
    monkeypatch.setenv("FRACTURE_GATEWAY_NODE__PORT", "6000")
    settings = load_settings()
    assert settings.node.ae_title == "FROMTOML"
    assert settings.node.port == 6000  # the environment wins over the file
    assert settings.node.known_sources[0].host == "10.0.0.5"
    assert settings.destinations[0].port == 104
    assert settings.destinations[0].objects == ["sr", "sc"]  # the default: SR and SCs
    assert settings.destinations[1].objects == ["sr", "sc", "gsps"]


def test_destination_objects_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "FRACTURE_GATEWAY_DESTINATIONS",
        '[{"name": "viewer", "ae_title": "VIEW", "host": "10.0.0.6", "port": 104,'
        ' "objects": ["gsps"]}]',
    )
    assert load_settings().destinations[0].objects == ["gsps"]


def test_missing_config_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRACTURE_GATEWAY_CONFIG", "/nonexistent/gw.toml")
    with pytest.raises(FileNotFoundError, match=r"/nonexistent/gw\.toml"):
        load_settings()


DESTINATION = {"name": "pacs", "ae_title": "PACS1", "host": "10.0.0.5", "port": 104}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"node": {"ae_title": "WAY_TOO_LONG_AE_TITLE"}}, "invalid AE title"),
        ({"node": {"ae_title": "BAD\\AE"}}, "invalid AE title"),
        ({"node": {"port": 70000}}, "less than or equal to 65535"),
        ({"node": {"known_sources": [{"ae_title": "X", "host": "not-an-ip"}]}}, "not-an-ip"),
        ({"routing": [{"when": "always", "destinations": ["nowhere"]}]}, "unknown destinations"),
        ({"api": {"environment": "production"}}, "secret_key"),
        ({"destinations": [{**DESTINATION, "objects": ["pdf"]}]}, "'sr', 'sc' or 'gsps'"),
        ({"destinations": [{**DESTINATION, "objects": ["sr", "sr"]}]}, "more than once"),
        ({"destinations": [{**DESTINATION, "objects": []}]}, "at least 1 item"),
    ],
)
def test_invalid_settings_are_refused_with_the_bad_value(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**overrides)


def test_safe_by_default_on_a_non_loopback_address() -> None:
    public = Settings(node={"bind_address": "0.0.0.0"})
    assert not public.calling_ae_allowed("ANYONE", "10.0.0.9")
    assert public.calling_ae_allowed("LOCALTOOL", "127.0.0.1")  # a process on this machine
    assert Settings(node={"bind_address": "127.0.0.1"}).calling_ae_allowed("ANYONE", "127.0.0.1")
    opened = Settings(node={"bind_address": "0.0.0.0", "accept_any_calling_ae": True})
    assert opened.calling_ae_allowed("ANYONE", "10.0.0.9")
    pinned = Settings(node={"known_sources": [{"ae_title": "PACS1", "host": "10.0.0.5"}]})
    assert pinned.calling_ae_allowed("PACS1", "10.0.0.5")
    assert not pinned.calling_ae_allowed("PACS1", "10.0.0.6")
    assert not pinned.calling_ae_allowed("OTHER", "10.0.0.5")


def test_config_show_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "FRACTURE_GATEWAY_DATABASE__URL", "postgresql+psycopg://gw:s3cr3t-pw@db.example/gw"
    )
    monkeypatch.setenv("FRACTURE_GATEWAY_API__SECRET_KEY", "very-secret-signing-key")
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert "s3cr3t-pw" not in result.output
    assert "very-secret-signing-key" not in result.output
    shown = json.loads(result.output)
    assert shown["database"]["url"] == "postgresql+psycopg://gw:********@db.example/gw"
    assert shown["api"]["secret_key"] == "********"
    assert masked_dump(load_settings())["node"]["ae_title"] == "FRACTUREGW"


def test_config_show_reports_invalid_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRACTURE_GATEWAY_NODE__PORT", "not-a-number")
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 2
    assert "configuration error" in result.output


def test_tls_settings_must_be_complete(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    with pytest.raises(ValidationError, match=r"needs node\.tls\.certificate"):
        Settings(node={"tls": {"enabled": True}})
    with pytest.raises(ValidationError, match="go together"):
        Settings(node={"tls": {"certificate": str(pem)}})
    with pytest.raises(ValidationError, match=r"needs node\.tls\.ca_certificates"):
        Settings(node={"tls": {"enabled": True, "certificate": str(pem), "private_key": str(pem)}})
    with pytest.raises(ValidationError, match="minimum_version"):
        Settings(node={"tls": {"minimum_version": "1.1"}})
    ok = Settings(
        node={
            "tls": {
                "enabled": True,
                "certificate": str(pem),
                "private_key": str(pem),
                "require_client_certificate": False,
            }
        }
    )
    assert ok.node.tls.minimum_version == "1.2"
