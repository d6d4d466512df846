"""Static checks of docker-compose.yml and the Dockerfiles (this machine has no Docker engine).

Everything a `docker compose up` would trip over first is checked against the
repository itself: files and build targets exist, commands are real console
scripts whose --help runs, volumes and ports are consistent, long-running
services have healthchecks, and every EMQ_<COMPONENT>__… variable is a field of
that component's typed config (and the whole environment validates).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from common.config import load_config
from edge.config import EdgeConfig
from tests.conftest import DEVICES
from tests.test_deploy_support import (
    COMPONENT_VARIABLE,
    COMPOSE_FILE,
    CONFIG_MODELS,
    ENV_EXAMPLE,
    PLANNED_SCRIPTS,
    REPO_ROOT,
    compose,
    config_model,
    console_scripts,
    dockerfile_stages,
    dockerignore_patterns,
    duration_seconds,
    env_example,
    environment_of,
    extras_installed,
    field_path_problem,
    optional_extras,
    packages,
    referenced_variables,
    resolved_service,
    script_launcher,
    service_argv,
    services,
    stage_chain,
)

DOCKERFILES = (REPO_ROOT / "deploy" / "Dockerfile", REPO_ROOT / "deploy" / "Dockerfile.jetson")
EXPECTED_SERVICES = {"init", "broker", "ingest", "webui", "retrain", "edge", "postgres"}
PROFILES = {"retrain": ["retrain"], "edge": ["edge"], "postgres": ["postgres"]}
# Where deploy/Dockerfile puts deploy/docker/ inside the images.
IMAGE_DEPLOY_DIR = "/opt/emq/deploy/"
LOCAL_DEPLOY_DIR = REPO_ROOT / "deploy" / "docker"
# Time the agent needs on SIGTERM beyond the outbox flush: announcing `stopped` waits up to 5 s.
STOPPED_ANNOUNCE_S = 5.0


def our_services() -> list[str]:
    """Services built from this repository (the others run third-party images as they are)."""
    return sorted(name for name, service in services().items() if "build" in service)


def component_variables() -> list[tuple[str, str]]:
    return sorted(
        (service_name, variable)
        for service_name, service in services().items()
        for variable in environment_of(service)
        if COMPONENT_VARIABLE.match(variable)
    )


def local_path(container_path: str) -> Path:
    assert container_path.startswith(IMAGE_DEPLOY_DIR), f"{container_path} is not a script this repository ships"
    return LOCAL_DEPLOY_DIR / container_path[len(IMAGE_DEPLOY_DIR):]


# -- structure ---------------------------------------------------------------------------------------
def test_compose_parses_with_the_expected_services_and_profiles():
    assert set(services()) == EXPECTED_SERVICES
    for name, service in services().items():
        assert service.get("profiles") == PROFILES.get(name), name


def test_build_contexts_dockerfiles_and_targets_exist():
    for name in our_services():
        build = services()[name]["build"]
        context = REPO_ROOT / build["context"]
        dockerfile = context / build["dockerfile"]
        assert context.is_dir() and dockerfile.is_file(), name
        assert build["target"] in dockerfile_stages(dockerfile), f"{name}: no stage {build['target']!r} in {dockerfile}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_copies_only_what_exists_and_is_let_in(dockerfile):
    patterns = dockerignore_patterns(dockerfile)
    assert patterns[0] == "*", "the build context filter must be an allowlist"
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    for stage in dockerfile_stages(dockerfile).values():
        for copy in stage.copies():
            if "--from=" in copy:
                continue
            for source in [word for word in copy.split() if not word.startswith("--")][:-1]:
                source = source.rstrip("/")
                if source != ".":
                    assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
                    assert any(source == entry or source.startswith(entry + "/") for entry in allowed), f"{source} is filtered out"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_build_context_lets_in_every_package_and_never_secrets(dockerfile):
    patterns = dockerignore_patterns(dockerfile)
    for package in packages():
        assert f"!{package}/" in patterns, f"package {package} is missing from {dockerfile.name}.dockerignore"
    for required in ("!pyproject.toml", "!README.md"):
        assert required in patterns  # pyproject.toml names README.md as the readme
    assert not any(pattern.startswith(("!var", "!.venv", "!tests")) for pattern in patterns)
    assert "models/store/" in patterns, "the local model store must come through --build-context, not the context"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_pip_extras_in_dockerfiles_exist(dockerfile):
    for stage in dockerfile_stages(dockerfile).values():
        assert extras_installed(stage) <= optional_extras(), f"{dockerfile.name} stage {stage.name}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_edge_image_never_contains_tensorflow(dockerfile):
    stages = dockerfile_stages(dockerfile)
    chain = stage_chain(stages, "edge")
    assert chain, f"{dockerfile.name} has no edge target"
    assert extras_installed(chain[0]) == {"edge"}
    for stage in chain:
        assert "train" not in extras_installed(stage), f"{stage.name} installs the train extra"
        assert stage.name != "model-converter"
    copied_from = {re.search(r"--from=(\S+)", copy).group(1) for copy in chain[0].copies() if "--from=" in copy}
    assert "model-converter" not in copied_from, "copy the model store through the `models` stage only"
    assert "models" in copied_from, "the edge image needs the converted model"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_model_stage_can_be_replaced_by_a_named_context(dockerfile):
    # `--build-context models=models` must fit: the stage holds exactly store/ at its root.
    models = dockerfile_stages(dockerfile)["models"]
    assert models.base == "scratch" and models.copies() == ["--from=model-converter /opt/emq/models/store /store"]


def test_jetson_image_builds_its_own_python_on_l4t():
    stages = dockerfile_stages(DOCKERFILES[1])
    assert stages["edge"].base == "${L4T_BASE}"
    text = DOCKERFILES[1].read_text()
    assert "ARG L4T_BASE=nvcr.io/nvidia/l4t-base:r32" in text
    version = re.search(r"ARG PYTHON_VERSION=(\d+)\.(\d+)", text)
    required = re.search(r">=(\d+)\.(\d+)", REPO_ROOT.joinpath("pyproject.toml").read_text().split("requires-python")[1])
    assert (int(version[1]), int(version[2])) >= (int(required[1]), int(required[2]))
    # CSI cameras through a gst-launch-1.0 child: the stock OpenCV wheel, no OpenCV compile stage.
    assert "OPENCV" not in text and not any(name.startswith("opencv") for name in stages)
    assert "gstreamer1.0-tools" in text and "EMQ_EDGE__SOURCE__GSTREAMER__BACKEND=subprocess" in text


# -- commands ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("service_name", our_services())
def test_command_is_a_console_script_or_a_shipped_script(service_name):
    argv = service_argv(services()[service_name])
    if argv[0] in ("sh", "python"):
        script = local_path(argv[1])
        assert script.is_file(), f"{service_name}: {script} missing"
        for used in set(re.findall(r"\b(emq-[a-z]+)\b", script.read_text())):
            assert used in console_scripts(), f"{script.name} calls {used}, which pyproject.toml does not define"
        return
    if argv[0] in PLANNED_SCRIPTS and argv[0] not in console_scripts():
        pytest.skip(f"{argv[0]}: {PLANNED_SCRIPTS[argv[0]]}")
    assert argv[0] in console_scripts(), f"{service_name} runs {argv[0]}, not in [project.scripts]"


@pytest.mark.parametrize("service_name", [name for name in our_services() if service_argv(services()[name])[0].startswith("emq-")])
def test_command_help_runs(service_name):
    argv = service_argv(services()[service_name])
    completed = subprocess.run([*script_launcher(argv[0]), *argv[1:], "--help"], check=False, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert "usage" in completed.stdout.lower()


# -- volumes, ports, healthchecks, stop times -----------------------------------------------------
def named_volume_sources() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for name, service in services().items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount.get("source", "")
            if source and not source.startswith((".", "/", "~", "$")):
                used.setdefault(source, set()).add(name)
    return used


def test_every_named_volume_is_declared_and_used():
    declared = set(compose()["volumes"])
    used = named_volume_sources()
    assert set(used) <= declared, f"undeclared volumes: {set(used) - declared}"
    assert declared <= set(used), f"declared but unused: {declared - set(used)}"
    assert {"pki", "broker-data", "cloud-data", "models"} <= declared


def published_host_ports(service: dict) -> list[tuple[str, int]]:
    bindings = []
    for port in service.get("ports", []):
        parts = str(port).split("/")[0].split(":")
        if len(parts) >= 2:
            address = parts[0] if len(parts) == 3 else "0.0.0.0"
            bindings.append((address, int(parts[-2])))
    return bindings


def test_no_two_services_publish_the_same_host_port():
    seen: dict[int, str] = {}
    for name in services():
        for _address, host_port in published_host_ports(resolved_service(name)):
            assert host_port not in seen, f"host port {host_port}: {seen.get(host_port)} and {name}"
            seen[host_port] = name
    assert {8883, 8884, 8000} <= set(seen)


def test_long_running_services_have_healthchecks():
    for name, service in services().items():
        if service.get("restart", "no") == "no":
            continue  # one-shot jobs (init, retrain)
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"


@pytest.mark.parametrize("service_name", [name for name in our_services() if "healthcheck" in services()[name]])
def test_our_healthchecks_use_shipped_scripts(service_name):
    test = services()[service_name]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"], "slim images have no curl: checks go through deploy/docker/healthcheck.py"
    assert local_path(test[2]).is_file()
    assert test[3] in ("connected", "http", "progress")


def test_dockerfile_ships_the_deploy_scripts_where_compose_expects_them():
    copies = dockerfile_stages(DOCKERFILES[0])["runtime"].copies()
    assert f"deploy/docker/ {IMAGE_DEPLOY_DIR}" in copies


def test_dependencies_wait_for_a_healthy_broker_and_a_finished_init():
    assert services()["broker"]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    for name in ("ingest", "webui", "edge", "retrain"):
        assert services()[name]["depends_on"]["broker"]["condition"] == "service_healthy", name
    postgres = services()["ingest"]["depends_on"]["postgres"]
    assert postgres == {"condition": "service_healthy", "required": False}  # optional profile


def test_edge_and_ingest_get_time_to_flush_on_stop():
    flush_s = EdgeConfig.model_fields["outbox"].default_factory().flush_timeout_s
    assert duration_seconds(services()["edge"]["stop_grace_period"]) > flush_s + STOPPED_ANNOUNCE_S
    assert duration_seconds(services()["ingest"]["stop_grace_period"]) > 10


def test_edge_maps_the_camera_with_the_video_group():
    edge = resolved_service("edge")
    assert edge["devices"] == ["/dev/video0:/dev/video0"]
    assert edge["group_add"], "the container user needs the host's video group for /dev/video0"


# -- variables --------------------------------------------------------------------------------------
def compose_strings(value: object) -> list[str]:
    """Every string in a parsed compose value (keys included): what Compose interpolates, comments excluded."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in [*compose_strings(key), *compose_strings(item)]]
    if isinstance(value, list):
        return [text for item in value for text in compose_strings(item)]
    return []


def test_every_variable_is_documented_in_the_env_example_and_vice_versa():
    used = {name for text in compose_strings(compose()) for name in referenced_variables(text)}
    documented = set(env_example())
    assert used - documented == set(), "add these to deploy/.env.example"
    assert documented - used == set(), "deploy/.env.example lists variables compose never reads"


def test_dollar_signs_are_escaped_or_braced_variables():
    # A bare $SYS would be interpolated by Compose (to nothing); $$ is a literal $.
    for text in compose_strings(compose()):
        for match in re.finditer(r"\$+", text):
            if len(match.group()) % 2:
                assert text[match.end():match.end() + 1] == "{", f"unescaped $ in {text!r}"


def test_healthcheck_topics_survive_interpolation():
    test = resolved_service("broker")["healthcheck"]["test"]
    assert "$SYS/broker/version" in test


def test_every_service_resolves_with_the_example_env():
    for name in services():
        resolved_service(name)


@pytest.mark.parametrize(("prefix", "variable", "problem"), [
    ("EMQ_EDGE__", "MQTT__TLS__CA_FILE", None),
    ("EMQ_INGEST__", "RETENTION__ENABLED", None),
    ("EMQ_EDGE__", "SOURCES__SPEC", "has no field 'sources'"),
    ("EMQ_EDGE__", "MQTT__TLS__CAFILE", "has no field 'cafile'"),
    ("EMQ_INGEST__", "DATABASE_URL__HOST", "plain value"),
])
def test_field_walker_catches_misspelt_variables(prefix, variable, problem):
    found = field_path_problem(config_model(prefix), [part.lower() for part in variable.split("__")])
    assert (found is None) if problem is None else (problem in found)


@pytest.mark.parametrize(("service_name", "variable"), component_variables())
def test_component_variable_names_a_config_field(service_name, variable):
    prefix = COMPONENT_VARIABLE.match(variable).group()
    assert prefix in CONFIG_MODELS, f"{variable}: no component reads {prefix}*"
    model = config_model(prefix)
    if model is None:
        pytest.skip(f"{CONFIG_MODELS[prefix][0]} does not exist yet; {variable} cannot be checked")
    problem = field_path_problem(model, [part.lower() for part in variable[len(prefix):].split("__")])
    assert problem is None, f"{service_name}: {variable}: {problem}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_env_names_config_fields(dockerfile):
    for stage in dockerfile_stages(dockerfile).values():
        for variable in stage.env_names():
            if COMPONENT_VARIABLE.match(variable):
                prefix = COMPONENT_VARIABLE.match(variable).group()
                parts = [part.lower() for part in variable[len(prefix):].split("__")]
                assert field_path_problem(config_model(prefix), parts) is None, variable


def test_topic_prefix_is_the_same_everywhere():
    prefixes = {
        value
        for name in services()
        for variable, value in environment_of(resolved_service(name)).items()
        if variable.endswith("TOPIC_PREFIX")
    }
    assert prefixes == {env_example()["EMQ_TOPIC_PREFIX"]}


def container_environment(service_name: str, pki_dir: Path) -> dict[str, str]:
    """The service's environment as the container sees it, with its PKI mount pointed at the test PKI."""
    environment = environment_of(resolved_service(service_name))
    return {name: str(pki_dir) if value == "/pki" else value for name, value in environment.items()}


@pytest.mark.parametrize(("service_name", "prefix"), [("init", "EMQ_BROKER__"), ("ingest", "EMQ_INGEST__"), ("webui", "EMQ_WEBUI__"), ("edge", "EMQ_EDGE__")])
def test_service_environment_is_a_valid_config(service_name, prefix, pki_dir):
    model = config_model(prefix)
    environment = container_environment(service_name, pki_dir)
    if service_name == "edge":
        environment["EMQ_EDGE__DEVICE_ID"] = DEVICES[0]  # a device the test PKI has a certificate for
    config = load_config(model, env_prefix=prefix, environ=environment)
    if hasattr(config, "mqtt"):
        assert config.mqtt.host == "broker" and config.mqtt.tls is not None
        assert config.mqtt.tls.ca_file == pki_dir / "ca.crt"


def test_edge_source_from_the_env_example_is_a_camera(pki_dir):
    environment = container_environment("edge", pki_dir) | {"EMQ_EDGE__DEVICE_ID": DEVICES[0]}
    config = load_config(EdgeConfig, env_prefix="EMQ_EDGE__", environ=environment)
    assert config.source.spec == "camera:0"


# -- the real tool, when it happens to be installed ------------------------------------------------------
def test_docker_compose_config_when_available(tmp_path):
    """Not required (no engine here); `docker compose config` needs only the CLI plugin."""
    if shutil.which("docker") is None:
        pytest.skip("docker CLI not installed")
    version = subprocess.run(["docker", "compose", "version"], check=False, capture_output=True, text=True, timeout=20)
    if version.returncode != 0:
        pytest.skip(f"docker compose plugin not available: {version.stderr.strip() or version.stdout.strip()}")
    completed = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE),
         *[argument for profile in sorted({p for ps in PROFILES.values() for p in ps}) for argument in ("--profile", profile)],
         "config", "--format", "json"],
        check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    assert set(json.loads(completed.stdout)["services"]) == EXPECTED_SERVICES
