"""ServerSettings: defaults, the [server] table, validation."""

import pytest

from rusteeze.errors import ConfigError
from rusteeze.server.settings import ServerSettings


def test_defaults_bind_locally_with_cors_and_auth_off():
    s = ServerSettings()
    assert (s.host, s.port, s.api_key, s.allowed_origins) == ("127.0.0.1", 8000, None, ())
    assert s.max_body_bytes == 4 * 1024**2
    assert s.trust_request_chat_template is False
    assert ServerSettings.from_table({"trust_request_chat_template": True}).trust_request_chat_template


def test_table_values_and_flags_over_them():
    s = ServerSettings.from_table({"port": 9000, "api_key": "k", "allowed_origins": "*", "max_body_bytes": "1MiB"})
    assert (s.port, s.api_key, s.allowed_origins, s.max_body_bytes) == (9000, "k", ("*",), 1024**2)
    s = s.replace(port=9001, api_key=None)  # None: the flag was not given
    assert (s.port, s.api_key) == (9001, "k")


def test_unknown_table_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"unknown key 'api_keys' in x.toml \[server\]; did you mean 'api_key'\?"):
        ServerSettings.from_table({"api_keys": "k"}, source="x.toml [server]")


@pytest.mark.parametrize(
    "kw",
    [
        {"port": -1},
        {"port": "80"},
        {"host": ""},
        {"api_key": ""},
        {"allowed_origins": [1]},
        {"max_body_bytes": "lots"},
        {"max_waiting_requests": 0},
        {"shutdown_timeout": -1},
        {"shutdown_timeout": True},
        {"trust_request_chat_template": "yes"},
    ],
)
def test_invalid_values(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        ServerSettings(**kw)


def test_served_model_name_is_one_name_or_a_list_of_aliases():
    assert ServerSettings().served_model_name is None
    assert ServerSettings(served_model_name="smol").served_model_name == ("smol",)
    table = ServerSettings.from_table({"served_model_name": ["smol", "gpt-4o-mini", "smol"]})
    assert table.served_model_name == ("smol", "gpt-4o-mini")  # order kept, repeats dropped
    assert table.replace(served_model_name=("other",)).served_model_name == ("other",)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], r"served_model_name = \[\] must be a model name or a non-empty list of names"),
        (3, "served_model_name = 3 must be a model name or a non-empty list of names"),
        (["a", ""], "served_model_name = '' must be a non-empty model name"),
        (["a", 2], "served_model_name = 2 must be a non-empty model name"),
        ("  ", "served_model_name = '  ' must be a non-empty model name"),
    ],
)
def test_invalid_served_model_names(value, message):
    with pytest.raises(ConfigError, match=message):
        ServerSettings(served_model_name=value)
