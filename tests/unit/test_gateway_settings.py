"""What the in-process services inherit from the gateway's `INFERAG_*` settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common.settings import CommonSettings
from services.gateway.settings import GatewaySettings

# A value other than the default for each common setting (a new one must be added here).
GIVEN: dict[str, Any] = {
    "log_level": "debug",
    "log_json": True,
    "data_dir": Path("elsewhere"),
    "shutdown_grace_s": 7,
    "shutdown_drain_s": 2.5,
    "api_key": "k" * 16,
    "api_keys": [{"name": "team-a", "key": "a" * 16, "collections": ["docs"], "write": False}],
    "rate_limit_rps": 3.0,
    "rate_limit_burst": 5,
    "max_body_bytes": 4096,
    "cors_origins": ["https://app.example"],
}
WHERE_TO_LISTEN = {"host": "0.0.0.0", "port": 9000}


def test_every_common_setting_has_a_value_here() -> None:
    assert set(GIVEN) | set(WHERE_TO_LISTEN) == set(CommonSettings.model_fields)


@pytest.mark.parametrize("name", sorted(GIVEN))
def test_each_in_process_service_inherits_every_common_setting(name: str) -> None:
    gateway = GatewaySettings(**{name: GIVEN[name]})
    for service in gateway.in_process():
        assert getattr(service, name) == getattr(gateway, name), f"{type(service).__name__} lost {name}"
        assert getattr(service, name) != CommonSettings.model_fields[name].get_default(call_default_factory=True)


def test_where_to_listen_stays_the_gateways() -> None:
    gateway = GatewaySettings(**WHERE_TO_LISTEN)
    for service in gateway.in_process():
        assert (service.host, service.port) != (gateway.host, gateway.port)
