"""Dockerfile lint: Docker cannot run here, so parse the files with BuildKit's parser
(the ``dockerfile`` package in .venv-deploy) and check what matters for the cluster."""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.deploylib import DEPLOY, REPO, Rendered, pod_spec, run_tool, tool

DOCKERFILES = {"cpu": DEPLOY / "Dockerfile", "gpu": DEPLOY / "Dockerfile.gpu"}
KNOWN_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}
PARSE = (
    "import json, sys, dockerfile\n"
    "cmds = dockerfile.parse_file(sys.argv[1])\n"
    "json.dump([{'cmd': c.cmd.upper(), 'value': list(c.value), 'flags': list(c.flags),\n"
    "            'json': c.json, 'line': c.start_line} for c in cmds], sys.stdout)\n"
)


@dataclass
class Instruction:
    """One parsed Dockerfile instruction."""

    cmd: str
    value: list[str]
    flags: list[str]
    json: bool
    line: int


def parse(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile, parsed by BuildKit's own parser."""
    result = run_tool([tool("python"), "-c", PARSE, path])
    assert result.returncode == 0, f"{path.name} does not parse:\n{result.stderr}"
    return [Instruction(**item) for item in json.loads(result.stdout)]


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions split into build stages (each starts with FROM)."""
    out: list[list[Instruction]] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


@pytest.fixture(params=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, list[Instruction]]:
    """(flavour, parsed instructions) for each Dockerfile."""
    return request.param, parse(DOCKERFILES[request.param])


def test_instructions_are_known(dockerfile: tuple[str, list[Instruction]]) -> None:
    _, instructions = dockerfile
    assert instructions and instructions[0].cmd in {"FROM", "ARG"}
    unknown = [(i.line, i.cmd) for i in instructions if i.cmd not in KNOWN_INSTRUCTIONS]
    assert not unknown, f"unknown instructions: {unknown}"


def test_multi_stage_with_pinned_bases(dockerfile: tuple[str, list[Instruction]]) -> None:
    _, instructions = dockerfile
    parts = stages(instructions)
    assert len(parts) >= 2, "build and runtime stages"
    names = set()
    for stage in parts:
        value = stage[0].value
        image = value[0]
        if len(value) == 3 and value[1].upper() == "AS":
            names.add(value[2])
        if image in names:
            continue
        assert "$" not in image, f"{image}: spell the base out so scanners can check the pin"
        if "@sha256:" in image:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{image} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{image}: pin a versioned tag"
    copies_from = [f for i in instructions if i.cmd == "COPY" for f in i.flags if f.startswith("--from=")]
    assert copies_from, "the runtime stage copies its install from the build stage"


def test_runtime_stage(dockerfile: tuple[str, list[Instruction]], rendered_overlays: dict[str, Rendered]) -> None:
    flavour, instructions = dockerfile
    runtime = stages(instructions)[-1]
    users = [i.value[0] for i in runtime if i.cmd == "USER"]
    assert users, "the runtime stage sets USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, f"USER must be a numeric non-root UID, got {users[-1]}"
    assert not group or (group.isdigit() and int(group) != 0)
    overlay = rendered_overlays["gpu" if flavour == "gpu" else "cpu"]
    assert pod_spec(overlay)["securityContext"]["runAsUser"] == int(user), "image UID == pod UID"

    entrypoints = [i for i in runtime if i.cmd == "ENTRYPOINT"]
    assert entrypoints and entrypoints[-1].json and entrypoints[-1].value == ["lstm-serve"]
    exposed = {v for i in runtime if i.cmd == "EXPOSE" for v in i.value}
    assert {"50051", "9090"} <= exposed
    assert any(i.cmd == "HEALTHCHECK" for i in runtime)
    copied = [i.value for i in runtime if i.cmd == "COPY" and not any(f.startswith("--from") for f in i.flags)]
    assert any(v[0].rstrip("/") == "models" and v[-1].rstrip("/") == "/app/models" for v in copied), (
        "the image bundles models/ at /app/models"
    )
    env = " ".join(" ".join(i.value) for i in runtime if i.cmd == "ENV")
    assert "PYTHONDONTWRITEBYTECODE" in env, "read-only root filesystem: no .pyc writes"


def test_gpu_image_uses_cuda_and_the_gpu_extra() -> None:
    instructions = parse(DOCKERFILES["gpu"])
    for stage in stages(instructions):
        assert stage[0].value[0].startswith("nvidia/cuda:") and "cudnn" in stage[0].value[0]
    runs = " ".join(" ".join(i.value) for i in instructions if i.cmd == "RUN")
    assert '".[gpu]"' in runs and "onnxruntime-gpu" in runs
    env = " ".join(" ".join(i.value) for i in instructions if i.cmd == "ENV")
    assert "CUDAExecutionProvider" in env


def dockerignore_patterns() -> list[str]:
    """Patterns of the repository's .dockerignore (the one build context)."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_copied_sources_exist_in_the_build_context(dockerfile: tuple[str, list[Instruction]]) -> None:
    _, instructions = dockerfile
    patterns = dockerignore_patterns()
    for ins in instructions:
        if ins.cmd not in {"COPY", "ADD"} or any(f.startswith("--from") for f in ins.flags):
            continue
        for source in ins.value[:-1]:
            path = source.rstrip("/")
            if path != "models":  # models/ is filled by training; it may be empty in a checkout
                assert (REPO / path).exists(), f"line {ins.line}: {source} is not in the repo"
            ignored = [p for p in patterns if not p.startswith("!") and fnmatch.fnmatch(path, p.lstrip("/"))]
            assert not ignored, f"line {ins.line}: {source} is excluded by .dockerignore {ignored}"


def test_cpu_image_installs_the_runtime_dependencies_from_the_lock_only() -> None:
    """requirements.lock, hash-checked, is the only source of the CPU image's
    dependencies: the package itself installs with --no-deps, and pip check proves the
    lock satisfies it (issue 14 item 7)."""
    build = stages(parse(DOCKERFILES["cpu"]))[0]
    copied = [v for i in build if i.cmd == "COPY" for v in i.value[:-1]]
    assert "requirements.lock" in copied
    installs = [" ".join(i.value) for i in build if i.cmd == "RUN" and "pip install" in " ".join(i.value)]
    from_lock = [r for r in installs if "-r requirements.lock" in r]
    assert from_lock and all("--require-hashes" in r and "--no-deps" in r for r in from_lock)
    for run in installs:
        for command in run.split("&&"):
            if "pip install" in command and "-r requirements.lock" not in command:
                assert "--no-deps" in command, f"installs dependencies outside the lock: {command.strip()}"
    assert any("pip check" in r for r in installs)


def test_gpu_image_takes_the_lock_as_constraints() -> None:
    build = stages(parse(DOCKERFILES["gpu"]))[0]
    copied = [v for i in build if i.cmd == "COPY" for v in i.value[:-1]]
    assert "requirements.lock" in copied
    runs = " ".join(" ".join(i.value) for i in build if i.cmd == "RUN")
    for command in runs.split("&&"):
        if "pip install" in command and "TENSORRT_PIP" not in command:
            assert "-c /tmp/constraints.txt" in command, command.strip()
