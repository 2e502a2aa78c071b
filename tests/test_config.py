"""Configuration: loading, interpolation, durations and sizes, secret stores, and validation
errors reported all at once with their dotted paths (SPEC §6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelmesh_core import ConfigError, ModelMesh, load_config
from modelmesh_core.config import Backoff, parse_duration, parse_size
from modelmesh_core.redaction import SecretStr
from modelmesh_core.testing import MockPlugin, mock_config

CHAT = "generation.text-generation.chat-completion"

MINIMAL_YAML = """\
providers:
  alpha:
    connector: openai.llm.v1
    config: {base_url: "http://127.0.0.1:9101/v1", api_key: "${env:ALPHA_KEY}"}
  beta:
    connector: openai.llm.v1
    config: {base_url: "http://127.0.0.1:9102/v1", api_key: sk-test}
models:
  alpha.gpt-4o-mini: {provider: alpha, capabilities: [generation.text-generation.chat-completion]}
  beta.llama-3.1-8b: {provider: beta, capabilities: [generation.text-generation.chat-completion]}
pools:
  chat:
    capability: generation.text-generation.chat-completion
    strategy: modelmesh.stick-until-failure.v1
    failure_threshold: 2
    cooldown: 30s
"""

ALPHA_KEY = "sk-alpha-0123456789abcdef"


def errors_of(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return exc.value.errors


def has(errors: list[str], path: str, *fragments: str) -> bool:
    """True when some line starts with ``path: `` and contains every fragment."""
    return any(
        line.startswith(f"{path}: ") and all(f in line for f in fragments) for line in errors
    )


def assert_has(errors: list[str], path: str, *fragments: str) -> None:
    assert has(errors, path, *fragments), f"no {path!r} error with {fragments}; got:\n" + "\n".join(
        errors
    )


async def init_error(config: Any, **options: Any) -> list[str]:
    """The ConfigError lines a mesh raises for ``config`` (mock provider available)."""
    options.setdefault("plugins", [MockPlugin()])
    options.setdefault("entry_points", False)
    mesh = ModelMesh(config, **options)
    with pytest.raises(ConfigError) as exc:
        await mesh.initialize()
    return errors_of(exc)


# --------------------------------------------------------------------------- the config


async def test_minimal_yaml_config_loads_as_written(tmp_path: Path, make_mesh: Any) -> None:
    path = tmp_path / "modelmesh.yaml"
    path.write_text(MINIMAL_YAML, encoding="utf-8")
    mesh = await make_mesh(path, env={"ALPHA_KEY": ALPHA_KEY})

    assert set(mesh.providers) == {"alpha", "beta"}
    assert {p.connector for p in mesh.providers.values()} == {"openai.llm.v1"}
    assert mesh.models["alpha.gpt-4o-mini"].upstream_id == "gpt-4o-mini"
    assert mesh.models["beta.llama-3.1-8b"].upstream_id == "llama-3.1-8b"
    assert mesh.models["alpha.gpt-4o-mini"].capabilities == (CHAT,)

    pool = mesh.router.get_pool("chat")
    assert pool.capability == CHAT
    assert pool.strategy_name == "modelmesh.stick-until-failure.v1"
    assert pool.config.failure_threshold == 2
    assert pool.config.cooldown == 30.0
    assert pool.model_ids == ["alpha.gpt-4o-mini", "beta.llama-3.1-8b"]

    api_key = mesh.config.providers["alpha"].config["api_key"]
    assert api_key == ALPHA_KEY
    assert isinstance(api_key, SecretStr)
    assert mesh.config.providers["beta"].config["api_key"] == "sk-test"
    assert ALPHA_KEY not in repr(mesh.config)
    decision = await mesh.router.route("chat")
    assert decision.model_id == "alpha.gpt-4o-mini"


def test_load_config_reads_path_text_and_dict_alike(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yml"
    path.write_text(MINIMAL_YAML, encoding="utf-8")
    env = {"ALPHA_KEY": ALPHA_KEY}
    from_path = load_config(path, env=env)
    from_str_path = load_config(str(path), env=env)
    from_text = load_config(MINIMAL_YAML, env=env)
    for cfg in (from_path, from_str_path, from_text):
        assert cfg.pools["chat"].cooldown == 30.0
        assert cfg.pools["chat"].strategy.connector == "modelmesh.stick-until-failure.v1"
        assert cfg.providers["alpha"].config["api_key"] == ALPHA_KEY
        assert cfg.models["beta.llama-3.1-8b"].provider == "beta"
    # A MeshConfig passes through unchanged.
    assert load_config(from_path) is from_path


def test_missing_env_var_is_an_error_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "modelmesh.yaml"
    path.write_text(MINIMAL_YAML, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert_has(errors_of(exc), "providers.alpha.config.api_key", "ALPHA_KEY", "not set")


async def test_missing_secret_is_an_error_with_its_path(make_mesh: Any) -> None:
    cfg = mock_config()
    cfg["secrets"] = {"connector": "modelmesh.memory-secrets.v1", "config": {"values": {}}}
    cfg["proxy"] = {"auth": {"admin_keys": ["${secrets:ADMIN_TOKEN}"]}}
    errors = await init_error(cfg)
    assert_has(errors, "proxy.auth.admin_keys.0", "secret", "ADMIN_TOKEN", "not set")


# --------------------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("7d", 604800.0),
     ("1.5s", 1.5), (12, 12.0), (0.25, 0.25), ("45", 45.0)],
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    cfg = load_config({"pools": {"p": {"capability": "chat-completion", "cooldown": text}}})
    assert cfg.pools["p"].cooldown == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5 minutes", "fast", "-3s", True, [1]])
def test_bad_durations_are_path_errors(bad: Any) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config({"timeout": {"first_byte": bad}})
    assert_has(errors_of(exc), "timeout.first_byte", "duration")


@pytest.mark.parametrize(
    ("text", "size"),
    [("512KB", 512_000), ("4MB", 4_000_000), ("1GiB", 2**30), ("64KiB", 65536), (1024, 1024),
     ("10b", 10)],
)
def test_sizes(text: Any, size: int) -> None:
    assert parse_size(text) == size
    cfg = load_config({"proxy": {"limits": {"max_body_size": text}}})
    assert cfg.proxy.limits.max_body_size == size


def test_bad_size_is_a_path_error() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config({"proxy": {"limits": {"max_body_size": "huge"}}})
    assert_has(errors_of(exc), "proxy.limits.max_body_size", "size")


def test_timeouts_accept_null_and_durations() -> None:
    cfg = load_config({"timeout": {"connect": "500ms", "idle": None, "total": "5m"}})
    assert cfg.timeout.connect == 0.5
    assert cfg.timeout.idle is None
    assert cfg.timeout.total == 300.0
    assert cfg.retry.backoff is Backoff.EXPONENTIAL_JITTER


# --------------------------------------------------------------------------- secrets


def secret_config(store: dict[str, Any]) -> dict[str, Any]:
    cfg = mock_config()
    cfg["secrets"] = store
    cfg["proxy"] = {"auth": {"admin_keys": ["${secrets:ADMIN_TOKEN}"],
                             "keys": [{"key": "${secrets:TEAM_KEY}", "name": "team"}]}}
    return cfg


def check_secrets(mesh: ModelMesh, admin: str, team: str) -> None:
    auth = mesh.config.proxy.auth
    assert auth.admin_keys == (admin,)
    assert auth.keys[0].key == team
    assert isinstance(auth.keys[0].key, SecretStr)
    text = repr(mesh.config)
    assert admin not in text and team not in text
    assert "SecretStr('***')" in text


async def test_secrets_from_memory_store(make_mesh: Any) -> None:
    admin, team = "adm-memory-secret-0001", "team-memory-secret-0002"
    cfg = secret_config({"connector": "modelmesh.memory-secrets.v1",
                         "config": {"values": {"ADMIN_TOKEN": admin, "TEAM_KEY": team}}})
    mesh = await make_mesh(cfg, plugins=[MockPlugin()])
    check_secrets(mesh, admin, team)
    assert mesh.secret_store.list() == ["ADMIN_TOKEN", "TEAM_KEY"]


async def test_secrets_from_dotenv_store(tmp_path: Path, make_mesh: Any) -> None:
    admin, team = "adm-dotenv-secret-0001", "team dotenv secret 0002"
    env_file = tmp_path / ".env"
    env_file.write_text(f"# comment\nexport ADMIN_TOKEN={admin}\nTEAM_KEY=\"{team}\"\n",
                        encoding="utf-8")
    cfg = secret_config({"connector": "modelmesh.dotenv.v1", "config": {"path": str(env_file)}})
    mesh = await make_mesh(cfg, plugins=[MockPlugin()])
    check_secrets(mesh, admin, team)


async def test_secrets_from_json_store(tmp_path: Path, make_mesh: Any) -> None:
    admin, team = "adm-json-secret-0001", "team-json-secret-0002"
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"ADMIN_TOKEN": admin, "TEAM_KEY": team}), encoding="utf-8")
    cfg = secret_config({"connector": "modelmesh.json-secrets.v1", "config": {"path": str(path)}})
    mesh = await make_mesh(cfg, plugins=[MockPlugin()])
    check_secrets(mesh, admin, team)


async def test_secrets_default_to_the_environment(
    make_mesh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin, team = "adm-env-secret-0001", "team-env-secret-0002"
    monkeypatch.setenv("ADMIN_TOKEN", admin)
    monkeypatch.setenv("TEAM_KEY", team)
    cfg = secret_config(None)  # type: ignore[arg-type]
    del cfg["secrets"]
    mesh = await make_mesh(cfg, plugins=[MockPlugin()])
    check_secrets(mesh, admin, team)


async def test_env_secret_store_prefix(make_mesh: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    admin, team = "adm-prefixed-secret-0001", "team-prefixed-secret-0002"
    monkeypatch.setenv("MMTEST_ADMIN_TOKEN", admin)
    monkeypatch.setenv("MMTEST_TEAM_KEY", team)
    cfg = secret_config({"connector": "modelmesh.env.v1", "config": {"prefix": "MMTEST_"}})
    mesh = await make_mesh(cfg, plugins=[MockPlugin()])
    check_secrets(mesh, admin, team)


async def test_unknown_secret_store_and_bad_store_config() -> None:
    cfg = secret_config({"connector": "modelmesh.memory-secret.v1"})
    errors = await init_error(cfg)
    assert_has(errors, "secrets.connector", "modelmesh.memory-secret.v1",
               "did you mean 'modelmesh.memory-secrets.v1'")

    cfg = secret_config({"connector": "modelmesh.dotenv.v1", "config": {"pth": "x"}})
    errors = await init_error(cfg)
    assert_has(errors, "secrets.config.pth", "unknown key", "did you mean 'path'")


async def test_secret_values_never_appear_in_error_messages() -> None:
    token = "cooldown-is-secret-7781"
    port = "port-is-secret-99123"
    cfg = mock_config()
    cfg["secrets"] = {"connector": "modelmesh.memory-secrets.v1",
                      "config": {"values": {"COOLDOWN": token, "PORT": port}}}
    cfg["pools"] = {"chat": {"capability": "chat-completion", "cooldown": "${secrets:COOLDOWN}",
                             "retry": {"backoff": "${secrets:COOLDOWN}"}}}
    cfg["proxy"] = {"port": "${secrets:PORT}", "host": 5}
    mesh = ModelMesh(cfg, plugins=[MockPlugin()], entry_points=False)
    with pytest.raises(ConfigError) as exc:
        await mesh.initialize()
    message = str(exc.value)
    assert_has(exc.value.errors, "pools.chat.cooldown", "duration")
    assert_has(exc.value.errors, "pools.chat.retry.backoff", "must be one of")
    assert_has(exc.value.errors, "proxy.port", "integer")
    assert token not in message and port not in message
    assert all(token not in e and port not in e for e in exc.value.errors)


# --------------------------------------------------------------------------- errors, all at once


async def test_structural_mistakes_are_all_reported_with_paths() -> None:
    config = {
        "providers": {"m": {"connector": "modelmesh.mock.v1", "enabeld": True,
                            "timeout": {"conect": "1s"}}},
        "models": {"m.mock-chat": {"priority": "high", "capabilities": "chat-completion"}},
        "pools": {"chat": {"capability": "chat-completion", "failure_threshold": "two",
                           "cooldown": "5 minutes",
                           "retry": {"backoff": "linear", "max_attempts": True, "scop": "any"}}},
        "proxy": {"port": "eighty", "limits": {"max_body_size": "huge"}},
        "storage": {"conector": "x"},
        "budget": {"daily": "lots", "on_budget_exceeded": "explode"},
        "modles": {},
    }
    errors = await init_error(config)
    assert_has(errors, "providers.m.enabeld", "unknown key", "did you mean 'enabled'")
    assert_has(errors, "providers.m.timeout.conect", "unknown key", "did you mean 'connect'")
    assert_has(errors, "models.m.mock-chat.priority", "must be an integer")
    assert_has(errors, "models.m.mock-chat.capabilities", "must be a list")
    assert_has(errors, "pools.chat.failure_threshold", "must be an integer")
    assert_has(errors, "pools.chat.cooldown", "duration")
    assert_has(errors, "pools.chat.retry.backoff",
               "must be one of fixed, exponential_jitter, retry_after")
    assert "pools.chat.retry.backoff: must be one of fixed, exponential_jitter, retry_after" in (
        errors)
    assert_has(errors, "pools.chat.retry.max_attempts", "boolean")
    assert_has(errors, "pools.chat.retry.scop", "unknown key", "did you mean 'scope'")
    assert_has(errors, "proxy.port", "must be an integer")
    assert_has(errors, "proxy.limits.max_body_size", "size")
    assert_has(errors, "storage.conector", "unknown key", "did you mean 'connector'")
    assert_has(errors, "budget.daily", "must be a number")
    assert_has(errors, "budget.on_budget_exceeded", "must be one of rotate, error")
    assert_has(errors, "modles", "unknown key", "did you mean 'models'")
    assert len(errors) == 15


def semantic_config() -> dict[str, Any]:
    return {
        "providers": {
            "m": {"connector": "modelmesh.mock.v1", "config": {"latencyy": 1}},
            "n": {"connector": "modelmesh.mock.v1", "config": {"latency": "fast"}},
            "o": {"connector": "modelmesh.mok.v1"},
        },
        "models": {
            "m.x": {"provider": "nope", "capabilities": ["chat-completion"]},
            "m.y": {"capabilities": ["chat-complet"]},
        },
        "pools": {
            "chat": {"capability": "generation.text-generation.poetry",
                     "strategy": "modelmesh.round-robbin.v1"},
            "cheap": {"capability": "chat-completion",
                      "strategy": {"connector": "modelmesh.cost-first.v1",
                                   "config": {"default_output_tokenz": 100}}},
        },
        "plugins": {"entry_points": False,
                    "stages": [{"name": "my-stage", "order": 350},
                               {"name": "state-filtre", "enabled": False}]},
    }


async def test_semantic_mistakes_are_all_reported_with_paths() -> None:
    errors = await init_error(semantic_config())
    assert_has(errors, "providers.m.config.latencyy", "unknown key", "did you mean 'latency'")
    assert_has(errors, "providers.n.config.latency", "must be a number")
    assert_has(errors, "providers.o.connector", "modelmesh.mok.v1",
               "did you mean 'modelmesh.mock.v1'")
    assert_has(errors, "models.m.x.provider", "unknown provider 'nope'")
    assert_has(errors, "models.m.y.capabilities.0", "unknown capability 'chat-complet'",
               "chat-completion")
    assert_has(errors, "pools.chat.capability", "generation.text-generation.poetry")
    assert_has(errors, "pools.chat.strategy", "modelmesh.round-robbin.v1",
               "did you mean 'modelmesh.round-robin.v1'")
    assert_has(errors, "pools.cheap.strategy.config.default_output_tokenz", "unknown key",
               "did you mean 'default_output_tokens'")
    assert_has(errors, "plugins.stages.0.name", "unknown stage 'my-stage'")
    assert_has(errors, "plugins.stages.1.name", "unknown stage 'state-filtre'",
               "did you mean 'state-filter'")


async def test_plugins_section_mistakes_are_reported_with_the_rest() -> None:
    config = {
        "plugins": {"entry_points": False, "stages": [{"name": "x", "ordr": 3}],
                    "strictt": True},
        "proxy": {"port": "eighty"},
        "pools": {"chat": {"capability": "chat-completion", "cooldown": "soon"}},
    }
    errors = await init_error(config)
    assert_has(errors, "plugins.stages.0.ordr", "unknown key", "did you mean 'order'")
    assert_has(errors, "plugins.strictt", "unknown key", "did you mean 'strict'")
    assert_has(errors, "proxy.port", "must be an integer")
    assert_has(errors, "pools.chat.cooldown", "duration")


async def test_structural_and_semantic_mistakes_come_in_one_config_error() -> None:
    config = semantic_config()
    config["proxy"] = {"port": "eighty"}
    config["pools"]["chat"]["retry"] = {"backoff": "linear"}
    config["storage"] = {"conector": "x"}
    errors = await init_error(config)
    assert_has(errors, "proxy.port", "must be an integer")
    assert_has(errors, "pools.chat.retry.backoff",
               "must be one of fixed, exponential_jitter, retry_after")
    assert_has(errors, "storage.conector", "did you mean 'connector'")
    assert_has(errors, "providers.o.connector", "did you mean 'modelmesh.mock.v1'")
    assert_has(errors, "models.m.x.provider", "unknown provider 'nope'")
    assert_has(errors, "pools.cheap.strategy.config.default_output_tokenz", "unknown key")
    assert_has(errors, "plugins.stages.0.name", "unknown stage 'my-stage'")


async def test_config_error_message_lists_every_problem() -> None:
    mesh = ModelMesh({"pools": {"chat": {"cooldown": "x", "failure_threshold": "y"}},
                      "proxy": {"port": "z"}}, plugins=[MockPlugin()], entry_points=False)
    with pytest.raises(ConfigError) as exc:
        await mesh.initialize()
    text = str(exc.value)
    # three type errors, and the pool also names neither a capability nor models
    assert text.startswith("invalid configuration (4 problems):")
    assert "pools.chat: give a capability, a models list, or both" in exc.value.errors
    for line in exc.value.errors:
        assert line in text


async def test_pool_that_nothing_serves_is_an_error() -> None:
    cfg = mock_config()
    cfg["pools"] = {"tts": {"capability": "text-to-speech"}}
    errors = await init_error(cfg)
    assert_has(errors, "pools.tts", "no enabled model")


async def test_pool_unknown_provider_filter_and_model() -> None:
    cfg = mock_config()
    cfg["pools"] = {"chat": {"capability": "chat-completion", "providers": ["mokc"],
                             "models": ["mock.mock-chatt"]}}
    errors = await init_error(cfg)
    assert_has(errors, "pools.chat.providers.0", "unknown provider 'mokc'", "did you mean 'mock'")
    assert_has(errors, "pools.chat.models.0", "unknown model 'mock.mock-chatt'",
               "did you mean 'mock.mock-chat'")


# --------------------------------------------------------------------------- YAML syntax


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("providers:\n  alpha:\n    connector: [openai.llm.v1\n  beta: 1\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    (line,) = exc.value.errors
    assert line.startswith("line 4, column ")
    assert "invalid YAML" in line


def test_yaml_text_syntax_error_and_non_mapping_root() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config("pools:\n  chat: {capability: chat-completion\n")
    assert exc.value.errors[0].startswith("line ")
    with pytest.raises(ConfigError) as exc:
        load_config("- a\n- b\n")
    assert exc.value.errors == ["(root): the configuration must be a mapping"]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "nope.yaml")
    assert "does not exist" in exc.value.errors[0]


async def test_entry_with_a_type_error_still_gets_its_semantic_checks() -> None:
    cfg = mock_config()
    cfg["pools"] = {"chat": {"capability": "chat-completion", "strategy": "round-robbin",
                             "retry": {"backoff": "linear"}, "cooldwn": "5s"}}
    errors = await init_error(cfg)
    assert_has(errors, "pools.chat.retry.backoff", "must be one of")
    assert_has(errors, "pools.chat.cooldwn", "did you mean 'cooldown'")
    assert_has(errors, "pools.chat.strategy", "did you mean 'round-robin'")
    assert len(errors) == 3


def test_literal_secrets_are_masked_and_never_echoed() -> None:
    from modelmesh_core.redaction import redact

    cfg = {
        "providers": {"alpha": {"connector": "openai.llm.v1",
                                "config": {"api_key": "sk-literal-secret-0001"}}},
        "proxy": {"auth": {"keys": [{"key": "mm-proxy-secret-0002", "name": "team-a"}],
                           "admin_keys": ["mm-admin-secret-0003"]}},
    }
    text = repr(load_config(cfg))
    for secret in ("sk-literal-secret-0001", "mm-proxy-secret-0002", "mm-admin-secret-0003"):
        assert secret not in text
        assert secret not in redact(f"log line mentioning {secret}")
    assert "team-a" in text  # names are not secrets
    cfg["providers"]["alpha"]["config"]["api_key"] = ["AIzaSyD-odd-shaped-secret-9"]
    cfg["proxy"]["port"] = "AIzaSyD-not-a-port"
    with pytest.raises(ConfigError) as exc:
        ModelMesh(cfg).validate()  # the provider's own config is checked by the mesh
    message = str(exc.value)
    assert "AIzaSyD-odd-shaped-secret-9" not in message
    assert "api_key: must be a string, not list" in message
    assert "AIzaSyD-not-a-port" in message  # ordinary values are still echoed to help


async def test_proxy_keys_are_checked_against_pools_and_each_other() -> None:
    cfg = mock_config()
    cfg["proxy"] = {"port": "eighty", "auth": {
        "keys": [{"key": "mm-k-00001", "pools": ["nopool"], "rpm": -5},
                 {"key": "mm-k-00001", "name": "dup"}],
        "admin_keys": ["mm-k-00001"]}}
    errors = await init_error(cfg)
    assert_has(errors, "proxy.port", "must be an integer")
    assert_has(errors, "proxy.auth.keys.0.rpm", "at least 1")  # checked despite proxy.port
    assert_has(errors, "proxy.auth.keys.0.pools.0", "unknown pool 'nopool'")
    assert_has(errors, "proxy.auth.keys.1.key", "same key as proxy.auth.keys.0.key")
    assert_has(errors, "proxy.auth.admin_keys.0", "admin: true")
    assert not any("mm-k-00001" in e for e in errors)


async def test_env_secret_store_reads_the_mesh_env(make_mesh: Any) -> None:
    cfg = mock_config()
    cfg["proxy"] = {"auth": {"admin_keys": ["${secrets:ADMIN_TOKEN_X}"]}}
    mesh = await make_mesh(cfg, plugins=[MockPlugin()], env={"ADMIN_TOKEN_X": "adm-0123456789"})
    assert mesh.config.proxy.auth.admin_keys == ("adm-0123456789",)
