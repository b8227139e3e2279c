"""docker-compose.yml only runs what the project provides (no Docker needed to check it)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from producer.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Services that run our image: their commands must exist in this repository.
OURS = {
    name: service
    for name, service in SERVICES.items()
    if "build" in service or str(service.get("image", "")).startswith("videoqueue")
}


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _commands(service: dict[str, Any]) -> list[list[str]]:
    """The service's command and its healthcheck command, as argv lists."""
    found = []
    if "command" in service:
        found.append(_argv(service["command"]))
    test = service.get("healthcheck", {}).get("test")
    if isinstance(test, list) and test[0] == "CMD-SHELL":
        found.append(shlex.split(test[1]))
    elif isinstance(test, list) and test[0] == "CMD":
        found.append(test[1:])
    return found


def _option_names(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def test_compose_defines_the_pipeline_services() -> None:
    assert {"redis", "s3", "sandbox", "worker", "flower"} <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_an_image_or_a_build(name: str) -> None:
    assert "image" in SERVICES[name] or "build" in SERVICES[name]


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if "build" in s))
def test_build_dockerfile_exists_and_installs_the_ops_extra(name: str) -> None:
    build = SERVICES[name]["build"]
    context = ROOT / build.get("context", ".")
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    assert dockerfile.is_file()
    text = dockerfile.read_text()
    assert re.search(r"pip install .*\.\[ops\]", text)
    assert any(d.startswith("flower") for d in PYPROJECT["project"]["optional-dependencies"]["ops"])


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_depends_on_names_services_with_the_needed_healthcheck(name: str) -> None:
    depends = SERVICES[name].get("depends_on", {})
    for other, spec in depends.items() if isinstance(depends, dict) else []:
        assert other in SERVICES
        if spec.get("condition") == "service_healthy":
            assert "healthcheck" in SERVICES[other], f"{other} has no healthcheck"


def test_celery_app_target_is_the_worker_package() -> None:
    """Every `celery -A X` names a package of this repository that defines the app."""
    targets = set()
    for service in OURS.values():
        for argv in _commands(service):
            if argv and argv[0] == "celery":
                targets.add(argv[argv.index("-A") + 1])
    assert targets == {"worker"}
    assert (ROOT / "worker" / "__init__.py").is_file()


def test_videoqueue_subcommands_and_options_exist() -> None:
    import typer.main

    from ops.cli import app  # fails until the whole tree is in place: that is the point

    group = typer.main.get_command(app)
    assert PYPROJECT["project"]["scripts"]["videoqueue"] == "ops.cli:app"
    used = [
        argv
        for service in OURS.values()
        for argv in _commands(service)
        if argv and argv[0] == "videoqueue"
    ]
    assert used, "no service runs the videoqueue command"
    for argv in used:
        subcommand = group.commands[argv[1]]  # type: ignore[attr-defined]
        known = {opt for param in subcommand.params for opt in param.opts}
        assert set(_option_names(argv[2:])) <= known, f"unknown options in {argv}"


def test_python_one_liners_compile() -> None:
    for service in OURS.values():
        for argv in _commands(service):
            if argv and argv[0] == "python" and "-c" in argv:
                compile(argv[argv.index("-c") + 1], "<compose>", "exec")


def _variable_names() -> set[str]:
    """VIDEOQUEUE_* names set in environments or interpolated (${NAME...}) anywhere."""
    text = (ROOT / "docker-compose.yml").read_text()
    names = set(re.findall(r"\$\{(VIDEOQUEUE_\w+)", text))
    for service in SERVICES.values():
        env = service.get("environment", {})
        keys = env.keys() if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        names |= {k for k in keys if k.startswith("VIDEOQUEUE_")}
    for anchor in COMPOSE.values():
        if isinstance(anchor, dict):
            names |= {k for k in anchor if isinstance(k, str) and k.startswith("VIDEOQUEUE_")}
    return names


def test_environment_names_are_settings_fields() -> None:
    names = _variable_names()
    assert "VIDEOQUEUE_BROKER_URL" in names
    fields = {f"VIDEOQUEUE_{field.upper()}" for field in Settings.model_fields}
    assert names <= fields, f"not settings fields: {sorted(names - fields)}"
