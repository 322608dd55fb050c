"""Static checks of the container deployment files (no Docker, no database).

These pin the contract between the Dockerfile / docker-compose.yml and the
project: the compose file is valid per the compose specification, the stack is
wired so migrations run once before the server and the (scalable) workers, and
every container runs the same commands the project documents.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PGADMIN_SERVERS = ROOT / "deploy" / "pgadmin" / "servers.json"

try:  # PyYAML ships with uvicorn[standard], a runtime dependency.
    import yaml

    def _load_yaml(text: str) -> Any:
        return yaml.safe_load(text)

except ImportError:  # pragma: no cover - fall back to check-jsonschema's parser
    from ruamel.yaml import YAML

    def _load_yaml(text: str) -> Any:
        return YAML(typ="safe", pure=True).load(text)


def _compose() -> dict[str, Any]:
    data = _load_yaml(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _as_argv(command: Any) -> list[str]:
    """Normalise a compose/Dockerfile command (exec list or shell string) to argv."""
    if isinstance(command, str):
        return command.split()
    return list(command)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def _dockerfile_cmd() -> list[str]:
    cmds = [args for keyword, args in _dockerfile_instructions() if keyword == "CMD"]
    assert cmds, "Dockerfile has no CMD"
    last = cmds[-1]  # only the last CMD takes effect
    return json.loads(last) if last.startswith("[") else last.split()


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):  # short syntax means condition: service_started
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def test_compose_file_validates_against_compose_spec() -> None:
    """docker-compose.yml is accepted by the compose-spec JSON schema."""
    executable = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [
            str(executable),
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE_FILE),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"check-jsonschema rejected docker-compose.yml "
        f"(rc={result.returncode}):\n{result.stdout}\n{result.stderr}"
    )


def test_compose_has_no_obsolete_version_key() -> None:
    """The compose file omits the obsolete top-level `version:` key."""
    assert "version" not in _compose()


def test_worker_service_can_be_scaled() -> None:
    """The worker has no container_name and no host ports, so `--scale worker=N` works."""
    worker = _services()["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker.get("stop_grace_period") == "30s"


def test_server_and_worker_wait_for_migrations() -> None:
    """Server and worker start only after postgres is healthy and migrate exited successfully."""
    services = _services()
    for name in ("server", "worker"):
        deps = _depends_on(services[name])
        assert deps.get("migrate", {}).get("condition") == "service_completed_successfully", name
        assert deps.get("postgres", {}).get("condition") == "service_healthy", name
        assert services[name]["environment"]["AUTO_MIGRATE"] == "false", name
    migrate = services["migrate"]
    assert _depends_on(migrate)["postgres"]["condition"] == "service_healthy"
    assert migrate.get("restart") == "no"


def test_app_services_share_one_image_and_database() -> None:
    """migrate, server and worker are built from the project Dockerfile and use the same DATABASE_URL."""
    services = _services()
    app_services = [services[name] for name in ("migrate", "server", "worker")]
    for service in app_services:
        build = service["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (ROOT / context / "Dockerfile").resolve() == DOCKERFILE
    assert len({service["image"] for service in app_services}) == 1
    urls = {service["environment"]["DATABASE_URL"] for service in app_services}
    assert urls == {"postgresql://postgres:postgres@postgres:5432/postgres"}


def test_postgres_has_healthcheck_and_named_volume() -> None:
    """postgres has a pg_isready healthcheck and keeps its data in a named volume."""
    compose = _compose()
    postgres = compose["services"]["postgres"]
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    named_volumes = compose.get("volumes") or {}
    data_mounts = [
        volume.split(":")[0]
        for volume in postgres["volumes"]
        if isinstance(volume, str) and volume.split(":")[1] == "/var/lib/postgresql/data"
    ]
    assert data_mounts, "postgres data directory is not mounted"
    assert all(source in named_volumes for source in data_mounts)


def test_pgadmin_is_optional_and_preregisters_the_database() -> None:
    """pgadmin only runs under a profile and mounts a servers.json that points at the postgres service."""
    pgadmin = _services()["pgadmin"]
    assert pgadmin.get("profiles"), "pgadmin must be opt-in via a profile"
    mounts = [v for v in pgadmin["volumes"] if isinstance(v, str)]
    servers_mounts = [v for v in mounts if v.split(":")[1] == "/pgadmin4/servers.json"]
    assert len(servers_mounts) == 1
    assert (ROOT / servers_mounts[0].split(":")[0]).resolve() == PGADMIN_SERVERS

    servers = json.loads(PGADMIN_SERVERS.read_text())["Servers"]
    assert len(servers) == 1
    (server,) = servers.values()
    assert server["Host"] == "postgres"
    assert server["Port"] == 5432
    assert server["Username"] == "postgres"


def test_container_commands_match_project_entry_points() -> None:
    """The image runs `menagerie server`; compose runs `menagerie worker` and `menagerie migrate`."""
    assert _dockerfile_cmd() == ["menagerie", "server"]
    services = _services()
    assert "command" not in services["server"]  # uses the image CMD
    assert _as_argv(services["worker"]["command"]) == ["menagerie", "worker"]
    assert _as_argv(services["migrate"]["command"]) == ["menagerie", "migrate"]


def test_every_container_command_is_one_the_readme_documents() -> None:
    """The commands the image and compose run are the ones the README tells people to run."""
    readme = (ROOT / "README.md").read_text()
    services = _services()
    for argv in (
        _dockerfile_cmd(),
        _as_argv(services["worker"]["command"]),
        _as_argv(services["migrate"]["command"]),
    ):
        assert " ".join(argv) in readme, argv


def test_server_and_worker_have_health_checks() -> None:
    """The server is checked on /readyz and each worker on its metrics port, which compose sets."""
    services = _services()
    assert "/readyz" in " ".join(services["server"]["healthcheck"]["test"])
    worker = services["worker"]
    assert worker["environment"]["WORKER_METRICS_PORT"] == "9100"
    assert "9100/metrics" in " ".join(worker["healthcheck"]["test"])


def test_the_image_installs_the_lock_and_the_wheel_as_a_non_root_user() -> None:
    """The Dockerfile builds menagerie's wheel in a first stage; the image's stage installs
    requirements.lock (hashes required), then that wheel, checks them with pip check, copies
    no source tree, runs as a non-root user and has a health check."""
    instructions = _dockerfile_instructions()
    stages = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(stages) == 2 and all(stage.startswith("python:3.11-slim") for stage in stages)
    final = instructions[[keyword for keyword, _ in instructions].index("FROM", 1) :]
    runs = " ".join(args for keyword, args in final if keyword == "RUN")
    assert "--require-hashes" in runs and "requirements.lock" in runs
    assert "/tmp/wheels/*.whl" in runs and "pip check" in runs
    copied = [args for keyword, args in final if keyword == "COPY"]
    assert all("requirements.lock" in args or "--from=build" in args for args in copied), copied
    assert ("EXPOSE", "8000") in final
    users = [args for keyword, args in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(keyword == "HEALTHCHECK" for keyword, _ in final)


def test_published_ports_are_this_machines_only_and_images_are_pinned() -> None:
    """Every port compose publishes is bound to 127.0.0.1 but the API's, and every image it
    pulls names a version (no implicit `latest`)."""
    for name, service in _services().items():
        if "image" in service and "build" not in service:
            assert ":" in service["image"] and not service["image"].endswith(":latest"), name
        if name == "server":
            continue
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_pgadmin_asks_for_a_login() -> None:
    """pgAdmin runs in server mode (with a login), as the README says, not desktop mode."""
    environment = _services()["pgadmin"]["environment"]
    assert "PGADMIN_CONFIG_SERVER_MODE" not in environment
    assert environment["PGADMIN_DEFAULT_EMAIL"] and environment["PGADMIN_DEFAULT_PASSWORD"]


def test_pre_commit_runs_the_lint_targets_tools_locally() -> None:
    """Every pre-commit hook is a `repo: local` hook running a tool from the project's venv
    (nothing fetched from a git host), and together they run what `make lint` runs."""
    config = _load_yaml((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert {repo["repo"] for repo in config["repos"]} == {"local"}
    assert all(hook["entry"].startswith(".venv/bin/") for hook in hooks)
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]

    def words(command: str) -> set[str]:
        return {word for word in command.split() if word != "."}

    entries = [words(hook["entry"].removeprefix(".venv/bin/")) for hook in hooks]
    for line in lint.splitlines()[1:]:
        command = words(line.strip().removeprefix("$(BIN)/"))
        assert any(command <= entry for entry in entries), command


def test_images_go_to_a_pinned_seaweedfs_whose_bucket_migrate_creates_once() -> None:
    """Compose runs SeaweedFS at a pinned version with a health check on its S3 port; server
    and worker store images there (IMAGE_STORE=s3) once it is healthy; migrate alone may create
    the bucket; the credentials are the ones SeaweedFS is configured with."""
    services = _services()
    seaweedfs = services["seaweedfs"]
    image, _, tag = seaweedfs["image"].partition(":")
    assert image == "chrislusf/seaweedfs" and tag and tag != "latest"
    assert "8333/healthz" in " ".join(seaweedfs["healthcheck"]["test"])
    identities = json.loads((ROOT / "deploy" / "seaweedfs" / "s3.json").read_text())["identities"]
    keys = {(c["accessKey"], c["secretKey"]) for i in identities for c in i["credentials"]}
    for name in ("migrate", "server", "worker"):
        env = services[name]["environment"]
        assert env["IMAGE_STORE"] == "s3" and env["S3_ENDPOINT_URL"] == "http://seaweedfs:8333", name
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) in keys, name
        assert _depends_on(services[name])["seaweedfs"]["condition"] == "service_healthy", name
        assert (env.get("S3_CREATE_BUCKET") == "true") == (name == "migrate"), name
