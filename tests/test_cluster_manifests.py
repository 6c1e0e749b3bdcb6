"""The cluster files under cluster/ stay runnable as the code changes.

Every YAML document is loaded and checked for the structure its kind needs (KubeRay RayCluster,
RayJob, RayService; Ray cluster launcher config, validated with Ray's own schema). Every
entrypoint, script, module, import path and config file they name must exist, accept the flags
used, and (configs) validate with `load_config`; a renamed script or config fails here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from xqg_ray.config import RunConfig, load_config
from xqg_ray.paths import RunPaths
from xqg_ray.serve.config import ServeConfig

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
DOCKERFILE = CLUSTER / "Dockerfile"
IMAGE = "ghcr.io/YOUR-ORG/xqg-ray:latest"
KUBERAY_KINDS = {"RayCluster", "RayJob", "RayService"}
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}
GPU_INSTANCE = re.compile(r"^(g\d|p\d)[a-z0-9-]*\.")  # EC2 GPU families: g4dn, g5, g6, p4d, p5...
# Repository paths quoted in comments and docs: jobs/..., cluster/..., xqg_ray/..., tests/...
REPO_PATH = re.compile(r"(?<![\w./~-])((?:jobs|cluster|xqg_ray|tests)/[\w./-]*[\w/])")


def yaml_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(CLUSTER.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((str(path.relative_to(REPO)), doc))
    return docs


DOCUMENTS = yaml_documents()
KUBE = [(name, doc) for name, doc in DOCUMENTS if doc.get("kind") in KUBERAY_KINDS]
LAUNCHERS = [(name, doc) for name, doc in DOCUMENTS if "provider" in doc]


def ids(pairs):
    return [f"{name}:{doc.get('kind') or doc.get('cluster_name')}" for name, doc in pairs]


def dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, f"cluster/Dockerfile has no default for ARG {name}"
    return match.group(1)


def dockerfile_workdir() -> str:
    workdirs = re.findall(r"^WORKDIR (\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert len(workdirs) == 1, "cluster/Dockerfile: expected exactly one WORKDIR"
    return workdirs[0]


def cluster_spec(doc: dict) -> dict:
    """The RayCluster spec inside any of the three kinds."""
    spec = doc["spec"]
    return {
        "RayCluster": lambda: spec,
        "RayJob": lambda: spec["rayClusterSpec"],
        "RayService": lambda: spec["rayClusterConfig"],
    }[doc["kind"]]()


def containers(group: dict) -> list[dict]:
    found = group["template"]["spec"]["containers"]
    assert found, "a group needs at least one container"
    return found


def shell_commands(line: str) -> list[list[str]]:
    """`a --x 1 && b` -> [["a", "--x", "1"], ["b"]], split with shell quoting rules."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SHELL_OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def option_values(argv: list[str], names: tuple[str, ...]) -> list[str]:
    values = []
    for i, token in enumerate(argv):
        if token in names and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif token.split("=", 1)[0] in names and "=" in token:
            values.append(token.split("=", 1)[1])
    return values


@cache
def help_text(target: tuple[str, ...]) -> str:
    """`python <script|-m module> [verbs] --help`, run in the repository root."""
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, *target, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == 0, f"{' '.join(target)} --help failed:\n{done.stderr[-2000:]}"
    return done.stdout


def check_python_command(argv: list[str]) -> list[str]:
    """Assert the script or module exists and accepts the flags given; return its configs."""
    assert argv[0] in ("python", "python3"), f"entrypoint command {argv} is not a python command"
    if argv[1] == "-m":
        module, rest = argv[2], argv[3:]
        assert importlib.util.find_spec(module) is not None, f"module {module} does not exist"
        target = ["-m", module]
    else:
        script, rest = argv[1], argv[2:]
        assert (REPO / script).is_file(), f"script {script} does not exist in the repository"
        target = [script]
    verbs = []
    for token in rest:
        if token.startswith("-"):
            break
        verbs.append(token)
    text = help_text(tuple(target + verbs))
    for flag in {t.split("=", 1)[0] for t in rest if t.startswith("-")}:
        assert flag in text, f"{' '.join(target + verbs)} does not accept {flag}"
    for token in rest:
        if "/" in token and token.endswith((".py", ".yaml", ".yml", ".json")):
            assert (REPO / token).is_file(), f"{token} named by {argv} does not exist"
    return option_values(rest, ("--config", "-c"))


def check_config(path: str) -> RunConfig:
    assert (REPO / path).is_file(), f"config {path} does not exist"
    return load_config(str(REPO / path))


def rayjob_configs() -> list[RunConfig]:
    configs = []
    for _, doc in KUBE:
        if doc["kind"] == "RayJob":
            for argv in shell_commands(doc["spec"]["entrypoint"]):
                configs.extend(check_config(path) for path in check_python_command(argv))
    assert configs, "the RayJob names no config"
    return configs


def gpu_groups(spec: dict) -> list[dict]:
    return [g for g in spec["workerGroupSpecs"] if float(g["rayStartParams"].get("num-gpus", 0))]


def assert_fits(configs: list[RunConfig], cpus: float, gpus: float, gpu_nodes: int, where: str):
    """Each GPU stage's actors fit one per node, and all of them at once fit the cluster."""
    for cfg in configs:
        for stage in ("generate", "encode"):
            res = getattr(cfg.stages, stage)
            if res.num_gpus == 0:
                continue
            assert res.num_gpus <= gpus and res.num_cpus <= cpus, (
                f"{where}: a {stage} actor ({res.num_cpus} CPU, {res.num_gpus} GPU) does not "
                f"fit a {cpus} CPU / {gpus} GPU worker"
            )
            per_node = min(int(gpus // res.num_gpus), int(cpus // res.num_cpus))
            assert res.actors <= per_node * gpu_nodes, (
                f"{where}: {res.actors} {stage} actors need more than {gpu_nodes} GPU workers"
            )


def test_every_document_is_a_known_kind_and_all_kinds_exist():
    assert DOCUMENTS, "no YAML under cluster/"
    unknown = [name for name, doc in DOCUMENTS if (name, doc) not in KUBE + LAUNCHERS]
    assert not unknown, f"documents of no checked kind: {unknown}"
    assert {doc["kind"] for _, doc in KUBE} == KUBERAY_KINDS
    assert any(doc["provider"]["type"] == "aws" for _, doc in LAUNCHERS)


@pytest.mark.parametrize(("name", "doc"), KUBE, ids=ids(KUBE))
def test_kuberay_structure_and_gpu_claims(name, doc):
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["metadata"].get("name") or doc["metadata"].get("generateName")
    spec = cluster_spec(doc)
    assert spec["rayVersion"] == dockerfile_arg("RAY_VERSION"), f"{name}: Ray version differs"
    head = spec["headGroupSpec"]
    groups = spec["workerGroupSpecs"]
    assert groups, f"{name}: no worker group"
    for group in [head, *groups]:
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), "rayStartParams must be strings"
        for container in containers(group):
            assert container["image"] == IMAGE, f"{name}: image {container['image']}"
    assert not any("nvidia.com/gpu" in c["resources"].get("limits", {}) for c in containers(head))
    for group in groups:
        assert group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        claimed = float(group["rayStartParams"].get("num-gpus", 0))
        for container in containers(group):
            resources = container["resources"]
            limit = float(resources.get("limits", {}).get("nvidia.com/gpu", 0))
            assert limit == claimed, f"{name}/{group['groupName']}: num-gpus vs GPU limit"
            if "nvidia.com/gpu" in resources.get("requests", {}):
                assert float(resources["requests"]["nvidia.com/gpu"]) == limit
    if doc["kind"] in ("RayCluster", "RayJob"):
        assert gpu_groups(spec), f"{name}: no GPU worker group"


@pytest.mark.parametrize(
    ("name", "doc"),
    [(n, d) for n, d in KUBE if d["kind"] != "RayService"],
    ids=ids([(n, d) for n, d in KUBE if d["kind"] != "RayService"]),
)
def test_gpu_clusters_fit_the_jobs_configs(name, doc):
    spec = cluster_spec(doc)
    for group in gpu_groups(spec):
        limits = containers(group)[0]["resources"]["limits"]
        assert_fits(
            rayjob_configs(),
            cpus=float(group["rayStartParams"].get("num-cpus", limits["cpu"])),
            gpus=float(group["rayStartParams"]["num-gpus"]),
            gpu_nodes=group["maxReplicas"],
            where=f"{name}/{group['groupName']}",
        )


def test_rayjob_entrypoint_scripts_flags_and_configs_exist():
    jobs = [doc for _, doc in KUBE if doc["kind"] == "RayJob"]
    assert jobs
    for doc in jobs:
        spec = doc["spec"]
        commands = shell_commands(spec["entrypoint"])
        assert len(commands) >= 2, "the RayJob runs the pipeline, then the evaluation"
        for argv in commands:
            for path in check_python_command(argv):
                check_config(path)
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert runtime_env["working_dir"] == dockerfile_workdir()
        assert spec["shutdownAfterJobFinishes"] is True


def test_rayservice_import_path_args_and_index_match_the_job():
    services = [doc for _, doc in KUBE if doc["kind"] == "RayService"]
    assert services
    job_configs = rayjob_configs()
    for doc in services:
        serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
        assert serve_config["http_options"]["host"] == "0.0.0.0"  # reachable through the Service
        assert serve_config["applications"]
        for app in serve_config["applications"]:
            module_name, _, attr = app["import_path"].partition(":")
            assert attr, f"import_path {app['import_path']} must be module:attribute"
            builder = getattr(importlib.import_module(module_name), attr, None)
            assert callable(builder), f"{app['import_path']} is not a callable in the code"
            cfg = ServeConfig.model_validate(app.get("args", {}))
            indexes = {
                RunPaths(job.root).index(job.encoder.name, strategy)
                for job in job_configs
                for strategy in job.augment.strategies
            }
            assert cfg.index in indexes, f"{cfg.index} is not an index the RayJob builds"
            if cfg.corpus:
                assert cfg.corpus in {RunPaths(job.root).corpus("passages") for job in job_configs}
            if cfg.auth_token_env:
                spec = cluster_spec(doc)
                for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
                    for container in containers(group):
                        names = {env["name"] for env in container.get("env", [])}
                        assert cfg.auth_token_env in names, "router replicas need the token"


@pytest.mark.parametrize(("name", "doc"), LAUNCHERS, ids=ids(LAUNCHERS))
def test_launcher_config_validates_and_installs_the_project(name, doc):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(doc))  # Ray's own JSON schema, with its defaults filled in
    assert doc["provider"]["type"] == "aws"
    types = doc["available_node_types"]
    head = types[doc["head_node_type"]]
    assert not GPU_INSTANCE.match(head["node_config"]["InstanceType"]), "the head is a CPU node"
    workers = {k: v for k, v in types.items() if k != doc["head_node_type"]}
    gpu_workers = {k: v for k, v in workers.items() if v.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu_workers, f"{name}: no worker type declares GPU resources"
    for worker in gpu_workers.values():
        assert GPU_INSTANCE.match(worker["node_config"]["InstanceType"])
        assert 0 <= worker["min_workers"] <= worker["max_workers"] <= doc["max_workers"]
        assert_fits(
            rayjob_configs(),
            cpus=worker["resources"]["CPU"],
            gpus=worker["resources"]["GPU"],
            gpu_nodes=worker["max_workers"],
            where=name,
        )
    image_version = re.search(r"rayproject/ray:([\d.]+)-", doc["docker"]["image"]).group(1)
    assert image_version == dockerfile_arg("RAY_VERSION")

    mounts = {remote: local for remote, local in doc["file_mounts"].items()}
    for local in mounts.values():
        assert (REPO / local).exists(), f"file_mounts source {local} does not exist"
    project = [
        remote for remote, local in mounts.items() if (REPO / local / "pyproject.toml").is_file()
    ]
    assert project, "the project is neither mounted nor cloned"
    commands = [shell_commands(line) for line in doc["setup_commands"]]
    installs = [argv for group in commands for argv in group if argv[:2] == ["pip", "install"]]
    torch_at = next(i for i, argv in enumerate(installs) if "torch" in argv)
    assert re.search(r"download\.pytorch\.org/whl/cu\d+", " ".join(installs[torch_at]))
    project_at = next(i for i, argv in enumerate(installs) if any(m in argv for m in project))
    assert torch_at < project_at, "install the CUDA torch before the project"


def test_dockerfile_builds_the_project_on_the_ray_gpu_image():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-gpu$", text, re.MULTILINE)
    assert re.search(r"download\.pytorch\.org/whl/cu\d+", text)
    assert re.search(r"pip install --no-cache-dir \.\s", text)
    ignored = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)


def test_repository_paths_named_in_cluster_files_exist():
    named = set()
    for path in sorted(CLUSTER.rglob("*")):
        if path.is_file():
            named.update(REPO_PATH.findall(path.read_text()))
    assert "jobs/build_index.py" in named
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"named in cluster/ but missing from the repository: {missing}"


def test_no_credentials_in_cluster_files():
    for path in sorted(CLUSTER.rglob("*")):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"\bAKIA[0-9A-Z]{16}\b", text), f"{path}: access key id"
            assert not re.search(r"aws_secret_access_key\s*[:=]", text, re.IGNORECASE), path
