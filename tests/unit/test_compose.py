"""docker-compose.yml only runs what the project provides (no Docker needed to check it)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from producer.core.settings import Settings

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
    assert {"redis", "s3", "sandbox", "worker", "flower", "api"} <= set(SERVICES)


def test_api_serves_on_every_interface_at_8080_from_our_image() -> None:
    api = SERVICES["api"]
    assert api in OURS.values()
    argv = _argv(api["command"])
    assert argv[:2] == ["videoqueue", "serve"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert argv[argv.index("--port") + 1] == "8080"
    assert "8080:8080" in api["ports"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"


def test_api_has_the_workers_settings() -> None:
    """The same VIDEOQUEUE_* settings (and S3's credentials) as the worker: only the worker's
    own metrics port is left out."""
    worker, api = SERVICES["worker"]["environment"], SERVICES["api"]["environment"]
    shared = {k: v for k, v in worker.items() if k != "VIDEOQUEUE_METRICS_PORT"}
    assert shared.items() <= api.items()
    assert {"VIDEOQUEUE_BROKER_URL", "VIDEOQUEUE_S3_BUCKET", "AWS_ACCESS_KEY_ID"} <= set(api)


def test_api_healthcheck_asks_healthz_on_its_port() -> None:
    (argv,) = [a for a in _commands(SERVICES["api"]) if a[0] != "videoqueue"]
    assert argv[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8080/healthz" in argv[2]


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


# --- images, the Dockerfile, observability and CI (checked statically, as above) ---

DOCKERFILE = ROOT / "ops" / "docker" / "Dockerfile"


def _volume_sources(service: dict[str, Any]) -> list[str]:
    """The host paths a service bind-mounts (named volumes left out)."""
    found = []
    for volume in service.get("volumes", []):
        source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
        if source and source.startswith((".", "/")):
            found.append(source)
    return found


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if "build" not in s))
def test_every_third_party_image_has_a_pinned_tag(name: str) -> None:
    image = str(SERVICES[name]["image"])
    repository, _, tag = image.rpartition(":")
    assert repository and tag and "/" not in tag, f"{name}: {image} has no tag"
    assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned"


def test_dockerfile_pins_its_base_and_installs_dependencies_before_the_sources() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    base = next(line for line in lines if line.startswith("FROM "))
    assert re.search(r":\d+\.\d+\.\d+", base), base
    deps = next(i for i, line in enumerate(lines) if re.search(r"pip install .*\.\[ops\]", line)
                or "pip install \".[ops]\"" in line)  # fmt: skip
    sources = [i for i, line in enumerate(lines) if re.match(r"COPY (producer|worker|ops)\b", line)]
    assert sources and deps < min(sources), "dependencies must install before sources are copied"
    copied_first = [line for line in lines[:deps] if line.startswith("COPY ")]
    assert copied_first == ["COPY pyproject.toml README.md ./"]


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "tests", "bench"} <= ignored
    assert not ignored & {"producer", "worker", "ops", "pyproject.toml", "README.md"}


def test_flower_requires_basic_auth() -> None:
    flower = SERVICES["flower"]
    argv = _argv(flower["command"])
    env = flower.get("environment", {})
    auth = env.get("FLOWER_BASIC_AUTH", "") if isinstance(env, dict) else ""
    assert any(a.startswith("--basic-auth") for a in argv) or auth
    # No default password: compose refuses to start without one (${VAR:?message}).
    assert "${FLOWER_BASIC_AUTH:?" in str(auth) or "--basic-auth=${" in " ".join(argv)
    assert "Authorization" in " ".join(flower["healthcheck"]["test"])


def test_prometheus_scrapes_the_workers_metrics_port() -> None:
    worker_env = SERVICES["worker"]["environment"]
    port = int(worker_env["VIDEOQUEUE_METRICS_PORT"])
    assert "VIDEOQUEUE_METRICS_PORT" in {f"VIDEOQUEUE_{f.upper()}" for f in Settings.model_fields}
    prometheus = SERVICES["prometheus"]
    (config_path,) = [s for s in _volume_sources(prometheus) if s.endswith(".yml")]
    config = yaml.safe_load((ROOT / config_path).read_text())
    targets = []
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            targets += [(name, sd["port"]) for name in sd["names"]]
        for static in job.get("static_configs", []):
            targets += [tuple(t.rsplit(":", 1)) for t in static["targets"]]
    assert ("worker", port) in [(n, int(p)) for n, p in targets]


def test_grafana_provisions_prometheus_and_the_dashboard() -> None:
    grafana = SERVICES["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"] if v.startswith("./")}
    for source in mounts:
        assert (ROOT / source).exists(), source
    dashboards_dir = next(src for src, dst in mounts.items() if "dashboards" in dst)
    assert (ROOT / dashboards_dir / "videoqueue.json").is_file()
    provisioning = ROOT / next(src for src, dst in mounts.items() if dst.endswith("provisioning"))
    provider = yaml.safe_load((provisioning / "dashboards" / "videoqueue.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == mounts[dashboards_dir]
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"].startswith("http://prometheus:")
    assert "GF_SECURITY_ADMIN_PASSWORD" in grafana["environment"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_bind_mounts_exist_in_the_repository(name: str) -> None:
    for source in _volume_sources(SERVICES[name]):
        assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repo"


def test_ci_runs_lint_typecheck_and_the_tests() -> None:
    commands = [
        line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip().startswith("make ")
    ]  # fmt: skip
    assert commands == ["make lint", "make typecheck", "make test"]
