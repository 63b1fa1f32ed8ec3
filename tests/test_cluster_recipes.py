"""The recipes in cluster/ (no logic there, so these are their only checks): every YAML parses; the
job entrypoint is a command our own parser accepts; GPU workers ask for GPUs; one image tag and one Ray
version everywhere, equal to the Ray installed here; no credential is written into any of them."""

from __future__ import annotations

import re
import shlex
from importlib import metadata
from pathlib import Path

import pytest
import ray
import yaml
from ray.runtime_env import RuntimeEnv

from jobs.cli import build_parser
from jobs.config import config_from_args

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAY_MINOR = ".".join(ray.__version__.split(".")[:2])
KUBERAY = ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml")
LAUNCHERS = ("launcher-aws.yaml", "launcher-gcp.yaml")
# Environment variables whose value is a credential: only ever from a Secret, never written down.
SECRET_NAME = re.compile(r"(^|_)(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIALS?)(_|$)", re.IGNORECASE)


def load(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d is not None]
    assert len(docs) == 1, name
    return docs[0]


def dockerfile() -> str:
    return (CLUSTER / "Dockerfile").read_text()


def cluster_spec(name: str) -> dict:
    doc = load(name)
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def pods(name: str) -> list[tuple[str, dict]]:
    spec = cluster_spec(name)
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(group, g["template"]["spec"]) for group, g in groups]


def containers(name: str) -> list[tuple[str, dict, dict]]:
    return [(group, pod, c) for group, pod in pods(name) for c in pod["containers"]]


def images() -> dict[str, str]:
    found = {}
    for name in KUBERAY:
        for group, _, container in containers(name):
            found[f"{name}:{group}"] = container["image"]
    for name in LAUNCHERS:
        docker = load(name)["docker"]
        for key in ("image", "head_image", "worker_image"):
            if key in docker:
                found[f"{name}:{key}"] = docker[key]
    found["Dockerfile:build"] = re.search(r"docker build .*-t (\S+)", dockerfile()).group(1)
    return found


# --- every file ---------------------------------------------------------------------------------


def test_every_yaml_parses_and_nothing_is_missing():
    names = sorted(p.name for p in CLUSTER.glob("*.yaml"))
    assert names == sorted((*KUBERAY, *LAUNCHERS, "runtime_env.yaml"))
    for name in names:
        load(name)
    assert (CLUSTER / "Dockerfile").is_file()


def test_one_image_tag_everywhere_naming_the_project_and_ray_versions():
    found = images()
    assert len(set(found.values())) == 1, found
    tag = next(iter(found.values())).rsplit(":", 1)[1]
    assert tag.startswith(metadata.version("chatsieve") + "-"), tag
    assert f"ray{RAY_MINOR}" in tag.split("-"), tag


def test_no_credentials_are_written_into_any_recipe():
    texts = {p.name: p.read_text() for p in CLUSTER.iterdir() if p.is_file()}
    for name, text in texts.items():
        assert not re.search(r"\bA(KIA|SIA)[0-9A-Z]{16}\b", text), name  # an AWS access key id
        # A secret key given a value (the comments' `--from-literal=AWS_SECRET_ACCESS_KEY=...` is a placeholder).
        assert not re.search(r"SECRET_ACCESS_KEY['\"]?\s*[:=]\s*['\"]?(?!\.\.\.)[A-Za-z0-9/+]", text), name
    for name in KUBERAY:
        for group, _, container in containers(name):
            for env in container.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env and "valueFrom" in env, (name, group, env["name"])
            assert {"secretRef": {"name": "chatsieve-object-store"}} in container["envFrom"], (name, group)
    assert not SECRET_NAME.search(" ".join(load("runtime_env.yaml").get("env_vars", {})))


# --- Dockerfile -------------------------------------------------------------------------------------


def test_dockerfile_pins_ray_installs_torch_first_and_the_gpu_extra():
    text = dockerfile()
    run_lines = [line for line in text.splitlines() if line.startswith("RUN ")]
    assert re.search(r"^FROM nvidia/cuda:\S+$", text, re.MULTILINE)
    pinned = re.findall(r'ray\[([a-z,]+)\]==([0-9]+\.[0-9]+)\.\*', text)
    assert pinned == [("data,default", RAY_MINOR)], pinned
    torch = next(i for i, line in enumerate(run_lines) if "pip install torch==2.13.0" in line)
    project = next(i for i, line in enumerate(run_lines) if 'pip install ".[gpu]"' in line)
    assert torch < project
    assert torch == min(i for i, line in enumerate(run_lines) if "pip install" in line and "--upgrade pip" not in line)
    installs = " ".join(line for line in run_lines if "pip install" in line)
    assert "faiss-cpu" not in installs and ".[cpu" not in installs  # one faiss per environment (docs/notes.md)
    # What `pip install .` needs is copied before it.
    for needed in ("pyproject.toml", "README.md", "jobs/", "operators/"):
        assert re.search(rf"^COPY .*{re.escape(needed)}", text, re.MULTILINE), needed
    assert "wget" in text  # KubeRay's probes


# --- runtime_env.yaml ----------------------------------------------------------------------------------


def test_runtime_env_is_offline_installs_nothing_and_uploads_only_the_code():
    env = load("runtime_env.yaml")
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert not {"pip", "conda", "uv", "working_dir", "py_modules"} & set(env)
    RuntimeEnv(**env)  # Ray's own validation of the fields

    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    uploaded: list[Path] = []
    # The excludes alone, without .gitignore: a checkout may lack one, and .venv is gigabytes.
    _dir_travel(REPO, [_get_excludes(REPO, env["excludes"])], uploaded.append, include_gitignore=False)
    relative = {p.relative_to(REPO).as_posix() for p in uploaded if p.is_file()}
    assert {"jobs/cli.py", "operators/read.py", "operators/templates/mistral_v0.1.jinja", "pyproject.toml"} <= relative
    for excluded in (".venv/", ".ci-venv/", ".git/", "out/"):
        assert not any(r.startswith(excluded) for r in relative), excluded
    assert not any(r.endswith(".parquet") for r in relative)
    assert sum(p.stat().st_size for p in uploaded if p.is_file()) < 32 * 2**20  # the limit is 512 MiB


# --- KubeRay ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_cluster_has_a_cpu_head_and_a_gpu_worker_group(name):
    spec = cluster_spec(name)
    assert spec["rayVersion"].startswith(RAY_MINOR + ".")
    assert spec["authOptions"]["mode"] == "token"  # Ray 2.61 requires it on every cluster
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group, pod, container in containers(name):
        limits = container["resources"]["limits"]
        requests = container["resources"].get("requests", {})
        if group == "head":
            assert "nvidia.com/gpu" not in limits
        else:
            assert int(limits["nvidia.com/gpu"]) >= 1, group
            assert requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"]) == limits["nvidia.com/gpu"]
            assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
        # Ray's object store needs a memory-backed /dev/shm (a container's default is 64 MiB).
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        # Models offline, from the cache volume.
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["HF_HUB_OFFLINE"] == "1"
        cache = next(path for path, volume in mounts.items() if "persistentVolumeClaim" in volumes[volume])
        assert env["HF_HOME"].startswith(cache.rstrip("/") + "/")
    assert any(g != "head" for g, _, _ in containers(name))


def test_rayjob_entrypoint_is_a_prepare_command_our_parser_accepts():
    job = load("kuberay-rayjob.yaml")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["chatsieve", "prepare"]
    args = build_parser().parse_args(argv[1:])
    config = config_from_args(args)
    # Inside a job the cwd is a temporary directory: inputs and outputs must be URIs.
    assert config.inputs and all("://" in i for i in config.inputs)
    assert "://" in config.output.path
    assert config.index.shards == 4
    assert config.resources.embed_gpus_per_actor >= 1  # one GPU per pod below
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"] == load("runtime_env.yaml")["env_vars"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True


# --- cluster launcher ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_passes_rays_own_schema_and_asks_for_gpus(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(name)
    validate_config(prepare_config(config))  # what `ray up` runs first
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert any("--num-cpus=0" in c for c in config["head_start_ray_commands"])
    workers = [t for key, t in types.items() if key != config["head_node_type"]]
    assert workers and all(t["resources"]["GPU"] >= 1 for t in workers)
    for worker in workers:
        node = worker["node_config"]
        if config["provider"]["type"] == "aws":
            assert re.match(r"^(g|p)\d", node["InstanceType"]), node["InstanceType"]  # GPU instance families
        else:
            assert sum(a["acceleratorCount"] for a in node["guestAccelerators"]) == worker["resources"]["GPU"]
            assert {"onHostMaintenance": "TERMINATE"} in node["scheduling"]
    # Token authentication (Ray 2.60 on local clusters, 2.61 on all): same token and mode on every node.
    assert "~/.ray/auth_token" in config["file_mounts"]
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert any("RAY_AUTH_MODE=token" in c for c in commands)
    assert not config["setup_commands"]  # everything is in the image
