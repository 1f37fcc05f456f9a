"""The rendered commands through xpk 1.16 itself: its argument parser, and its offline dry run.

Runs only where the xpk venv exists (tests/run.sh creates .venv-xpk with `pip install
'xpk==1.16.0'`; xpk pins ~68 packages, so it never shares the main venv). Nothing here reaches a
cluster or the network: the parser runs in-process in that venv (tests/xpk_check.py), and
`xpk workload create ... --dry-run --output-manifest-file=F` writes the JobSet manifest offline.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from distillc.compiler import xpk
from distillc.compiler.launch import CONFIG_ENV, compile_launch, write
from tests.conftest import ROOT, spec_text

XPK_VENV = ROOT / ".venv-xpk"
XPK_PYTHON = XPK_VENV / "bin" / "python"
XPK_BIN = XPK_VENV / "bin" / "xpk"
CLUSTERS = ROOT / "specs" / "clusters.yaml"

pytestmark = pytest.mark.skipif(not XPK_BIN.exists(), reason="no xpk venv (.venv-xpk); tests/run.sh creates it")


def xpk_parse(argvs: list[list[str]]) -> list[dict]:
    out = subprocess.run([str(XPK_PYTHON), str(ROOT / "tests" / "xpk_check.py")], input=json.dumps(argvs),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def dry_run(argv: list[str], tmp: Path) -> dict:
    """xpk's offline dry run of one `workload create`; returns the JobSet's main container."""
    manifest = tmp / "manifest.yaml"
    env = {**os.environ, "TELEMETRY_ENABLED": "false", "HOME": str(tmp)}
    proc = subprocess.run([str(XPK_BIN), *argv[1:], "--dry-run", f"--output-manifest-file={manifest}"],
                          capture_output=True, text=True, env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if isinstance(d, dict)]
    jobset = next(d for d in docs if d.get("kind") == "JobSet")
    return jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]


def arg(argv, flag: str) -> str:
    return next(a for a in argv if a.startswith(flag + "="))[len(flag) + 1:]


def env_values(argv) -> dict[str, str]:
    """--env=K=V as given to xpk: V is the YAML double-quoted body; decode it to the intended value."""
    out = {}
    for a in argv:
        if a.startswith("--env="):
            key, _, body = a[len("--env="):].partition("=")
            out[key] = yaml.safe_load(f'v: "{body}"')["v"]
    return out


def check_manifest(container: dict, argv, artifacts: dict[str, bytes]) -> None:
    """The manifest carries the command and every env value exactly as given."""
    command = arg(argv, "--command")
    script = container["command"][2]
    assert f"({command}) & PID=$!;" in script.splitlines()[3:5] or f"({command}) & PID=$!;" in script
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    for key, value in env_values(argv).items():
        assert env[key] == value, key
    if "COMMAND" in env:  # GPU device types copy the command into an env var too
        assert env["COMMAND"] == command
    if CONFIG_ENV in env:
        file_name = command.split("> /tmp/", 1)[1].split(" ", 1)[0]
        assert base64.b64decode(env[CONFIG_ENV]) == artifacts[file_name]


def shipped_specs() -> list[Path]:
    return sorted(p for p in (ROOT / "specs").glob("*.yaml") if p.name != "clusters.yaml")


def cluster_names() -> list[str]:
    return list(yaml.safe_load(CLUSTERS.read_text())["clusters"])


def build(spec: Path, cluster: str, target: str, out: Path, clusters: Path = CLUSTERS):
    compiled = compile_launch(spec, cluster_name=cluster, clusters_file=clusters, target=target, out_dir=out)
    if compiled.ok:
        write(compiled.build)
    return compiled


def test_every_shipped_spec_on_every_cluster_parses(tmp_path):
    """Each (spec, cluster, target) that compiles gives argv xpk's parser accepts, values intact."""
    cases, argvs = [], []
    for spec in shipped_specs():
        for cluster in cluster_names():
            for target in ("distillc", "maxtext"):
                out = tmp_path / f"{spec.stem}-{cluster}-{target}"
                compiled = build(spec, cluster, target, out)
                if not compiled.ok:
                    continue
                for step in compiled.build.steps:
                    cases.append((spec.name, cluster, target, step))
                    argvs.append(list(step.argv))
    assert cases, "no shipped spec compiled for any cluster"
    assert {c[1] for c in cases} == set(cluster_names()), "some cluster took no shipped spec"
    for (spec, cluster, target, step), result in zip(cases, xpk_parse(argvs)):
        assert result["ok"], (spec, cluster, target, result["error"])
        v = result["values"]
        if step.kind == "create":
            assert v["workload"] == step.name and v["command"] == arg(step.argv, "--command")
        else:
            assert v["wait_for_job_completion"] == step.depends_on[0]


def test_dry_run_per_cluster(tmp_path):
    """xpk's offline dry run turns each cluster's command into valid YAML with command and env intact."""
    for cluster in cluster_names():
        for spec in shipped_specs():
            out = tmp_path / f"{spec.stem}-{cluster}"
            compiled = build(spec, cluster, "distillc", out)
            if compiled.ok:
                break
        else:
            pytest.fail(f"no shipped spec compiles for cluster {cluster}")
        artifacts = {a.name: a.content for a in compiled.build.artifacts}
        step = next(s for s in compiled.build.steps if s.kind == "create")
        check_manifest(dry_run(list(step.argv), tmp_path), step.argv, artifacts)


HOSTILE_ENV = {
    "QUOTES": 'say "hi" and \'bye\'',
    "BACKSLASH": "C:\\temp\\new \\t",
    "NEWLINES": "line1\nline2\r\nline3",
    "SHELL": "$(id) `id` ; && || > /tmp/x #comment",
    "UNICODE": "héllo ✓ 日本 \u2028",
    "BRACES": "{x} {0} %s",
    "YAML": "a: b - [c] {d} & *e !f | >",
}

HOSTILE_CLUSTERS = """\
version: 1
clusters:
  tpu:
    project: proj-123
    zone: us-central1-a
    cluster: c1
    accelerator: v6e-8
    docker_image: gcr.io/proj-123/distillc:1
    env: {env}
  gpu:
    project: proj-123
    zone: us-central1-a
    cluster: c2
    accelerator: h100-80gb-8
    base_docker_image: gcr.io/proj-123/distillc:1
    env: {env}
"""


@pytest.mark.parametrize("cluster", ["tpu", "gpu"])
def test_hostile_env_values_arrive_intact(tmp_path, cluster):
    env = "{" + ", ".join(f'{k}: "{xpk.yaml_dq_escape(v)}"' for k, v in HOSTILE_ENV.items()) + "}"
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text(HOSTILE_CLUSTERS.replace("{env}", env))
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text("teacher: {checkpoint: gs://b/t}\ntrain: {output_dir: gs://b/runs}\n"))
    compiled = build(spec, cluster, "distillc", tmp_path / "out", clusters)
    assert compiled.ok, compiled.diagnostics
    step = compiled.build.steps[0]
    assert {k: v for k, v in env_values(step.argv).items() if k in HOSTILE_ENV} == HOSTILE_ENV
    assert xpk_parse([list(step.argv)])[0]["ok"]
    container = dry_run(list(step.argv), tmp_path)
    check_manifest(container, step.argv, {a.name: a.content for a in compiled.build.artifacts})


@pytest.mark.parametrize("cluster", ["tpu", "gpu"])
def test_hostile_value_in_the_command_arrives_intact(tmp_path, cluster):
    """A spec value that lands in --command (MaxText's top-k upload path) survives xpk and YAML."""
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text(HOSTILE_CLUSTERS.replace("{env}", "{}"))
    data_dir = "gs://b/top k/$(id)/`x`;#y/é"
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(f"""
name: offrun
mode: offline
teacher: {{model: qwen3-0.6b, checkpoint: gs://b/t}}
student: {{model: qwen3-0.6b}}
data: {{source: gs://b/d.jsonl, tokenizer: gs://b/tok/tokenizer.json, eval_fraction: 0}}
offline: {{top_k: 8, data_dir: {json.dumps(data_dir)}, loss: renormalized}}
train: {{output_dir: gs://b/runs}}
"""))
    compiled = build(spec, cluster, "maxtext", tmp_path / "out", clusters)
    assert compiled.ok, compiled.diagnostics
    topk, wait, train = compiled.build.steps
    assert (topk.kind, wait.kind, train.kind) == ("create", "wait", "create")
    assert all(r["ok"] for r in xpk_parse([list(s.argv) for s in compiled.build.steps]))
    container = dry_run(list(topk.argv), tmp_path)
    check_manifest(container, topk.argv, {a.name: a.content for a in compiled.build.artifacts})
    script = container["command"][2]
    words = subprocess.run(["bash", "-c", "printf '%s\\0' " + arg(topk.argv, "--command").split(" && ")[-1]],
                           capture_output=True, check=True).stdout.decode().split("\0")[:-1]
    assert words[-1] == f"--gcs_upload_path={data_dir}" and "PID=$!" in script
