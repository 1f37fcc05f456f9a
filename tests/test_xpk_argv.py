"""xpk argv: every flag --flag=value, quoting for each shell a value lands in, hostile strings."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from distillc.compiler import xpk
from distillc.compiler.launch import compile_launch
from tests.conftest import line_of, spec_text

HOSTILE = [
    "$(touch /tmp/pwned)",
    "`id`",
    "a;b && c || d",
    'say "hi"',
    "it's",
    "a'b\"c",
    "#comment",
    "x #y",
    "back\\slash \\t \\n",
    "tab\there",
    "new\nline",
    "cr\rhere",
    "héllo ✓ 日本",
    "{braces} %s %(x)s",
    "a: b - c",
    "*glob?[x]",
    "~user $HOME ${HOME}",
    "\x01ctrl\x7f",
    "  spaces  ",
    "",
]


def bash_words(line: str) -> list[str]:
    """The words bash makes of `line` (NUL-separated by printf)."""
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], capture_output=True, check=True).stdout
    return out.decode("utf-8").split("\0")[:-1]


class TestShellQuoting:
    @pytest.mark.parametrize("value", HOSTILE, ids=repr)
    def test_launch_sh_words_round_trip(self, value):
        argv = ["xpk", "workload", "create", f"--command={value}", f"--env=K={value}"]
        assert bash_words(xpk.shell_line(argv)) == argv

    @pytest.mark.parametrize("value", [v for v in HOSTILE if "\n" not in v and "\r" not in v], ids=repr)
    def test_command_word_reaches_the_container_shell_intact(self, value):
        quoted, problem = xpk.command_word(value, gpu=False)
        assert problem is None
        assert bash_words(quoted) == [value]

    @pytest.mark.parametrize("value", ["new\nline", "cr\rhere"])
    def test_newlines_cannot_go_into_the_command(self, value):
        assert "newline" in xpk.command_word(value, gpu=False)[1] or "carriage" in xpk.command_word(value, gpu=False)[1]

    @pytest.mark.parametrize("value", ['say "hi"', "it's", "back\\slash"])
    def test_gpu_command_rejects_quotes_and_backslashes(self, value):
        _, problem = xpk.command_word(value, gpu=True)
        assert problem is not None and "GPU" in problem
        assert xpk.command_word(value, gpu=False)[1] is None

    def test_hash_word_is_quoted(self):
        quoted, problem = xpk.command_word("#x", gpu=True)
        assert problem is None and quoted == "'#x'"


class TestYamlEnvEncoding:
    @pytest.mark.parametrize("value", HOSTILE + ["\u2028sep", "\x00nul", "\x85nel"], ids=repr)
    def test_double_quoted_yaml_reads_back_exactly(self, value):
        encoded = xpk.yaml_dq_escape(value)
        assert "\n" not in encoded and "\r" not in encoded  # xpk keeps only the first line of --env
        assert yaml.safe_load(f'value: "{encoded}"')["value"] == value

    def test_plain_values_are_unchanged(self):
        assert xpk.yaml_dq_escape("gs://bucket/run-1") == "gs://bucket/run-1"


TARGET = xpk.Target(
    project="proj-123", zone="us-central1-a", cluster="c1", device_flag="tpu-type", device_type="v5p-128",
    accelerator_kind="tpu", num_slices=2, priority="high", max_restarts=3, restart_on_exit_codes=(1, 42),
    env=(("A", "1"), ("B", 'x"y')), image=xpk.Image("docker_image", "gcr.io/p/img:1"),
)

# xpk 1.16 `workload create` / `workload list` flags, spelled in full (argparse also takes prefixes).
CREATE_FLAGS = {
    "--cluster", "--workload", "--tpu-type", "--device-type", "--num-slices", "--docker-image",
    "--base-docker-image", "--script-dir", "--command", "--project", "--zone", "--priority",
    "--max-restarts", "--restart-on-exit-codes", "--env",
}
LIST_FLAGS = {"--cluster", "--wait-for-job-completion", "--project", "--zone"}


class TestArgv:
    def test_every_flag_is_flag_equals_value_in_full(self):
        argv = xpk.workload_create(TARGET, "w1", "python3 -m x", [("C", "3")])
        assert argv[:3] == ("xpk", "workload", "create")
        for arg in argv[3:]:
            flag, eq, _ = arg.partition("=")
            assert eq and flag in CREATE_FLAGS, arg

    def test_values(self):
        argv = xpk.workload_create(TARGET, "w1", "python3 -m x", [("C", "3")])
        assert "--tpu-type=v5p-128" in argv and "--num-slices=2" in argv
        assert "--restart-on-exit-codes=1,42" in argv and "--max-restarts=3" in argv
        assert [a for a in argv if a.startswith("--env=")] == ["--env=A=1", '--env=B=x\\"y', "--env=C=3"]

    def test_base_image_needs_a_script_dir(self):
        t = xpk.Target(**{**TARGET.__dict__, "image": xpk.Image("base_docker_image", "python:3.11")})
        argv = xpk.workload_create(t, "w1", "true", script_dir="build/x")
        assert "--base-docker-image=python:3.11" in argv and "--script-dir=build/x" in argv
        with pytest.raises(ValueError):
            xpk.workload_create(t, "w1", "true")

    def test_wait(self):
        argv = xpk.wait_for(TARGET, "run-topk")
        assert argv[:3] == ("xpk", "workload", "list")
        assert {a.partition("=")[0] for a in argv[3:]} == LIST_FLAGS
        assert "--wait-for-job-completion=run-topk" in argv


# ---------------------------------------------------------------- hostile values through compile_launch

CLUSTERS = """\
version: 1
clusters:
  tpu:
    project: proj-123
    zone: us-central1-a
    cluster: c1
    accelerator: v6e-8
    docker_image: gcr.io/proj-123/distillc:1
  gpu:
    project: proj-123
    zone: us-central1-a
    cluster: c2
    accelerator: h100-80gb-8
    base_docker_image: gcr.io/proj-123/distillc:1
"""

SPEC = """
teacher: {checkpoint: gs://b/teacher}
train: {output_dir: gs://b/runs}
"""


def write(tmp_path: Path, spec_fragment: str = "", clusters: str = CLUSTERS) -> tuple[Path, Path]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(spec_fragment, base=spec_text(SPEC)))
    cl = tmp_path / "clusters.yaml"
    cl.write_text(clusters)
    return spec, cl


def codes(compiled) -> list[str]:
    return [d.code for d in compiled.diagnostics]


class TestHostileClusterValues:
    @pytest.mark.parametrize("field,value", [
        ("project", "p; rm -rf /"),
        ("project", "$(id)"),
        ("zone", "us-central1-a --quiet"),
        ("cluster", "Bad_Name"),
        ("cluster", "c" * 41),
        ("docker_image", "img:1 && curl x"),
    ])
    def test_rejected_with_position(self, tmp_path, field, value):
        text = CLUSTERS.replace({"project": "    project: proj-123", "zone": "    zone: us-central1-a",
                                 "cluster": "    cluster: c1", "docker_image": "    docker_image: gcr.io/proj-123/distillc:1"}[field],
                                f"    {field}: {yaml.safe_dump(value).splitlines()[0]}", 1)
        spec, cl = write(tmp_path, clusters=text)
        compiled = compile_launch(spec, cluster_name="tpu", clusters_file=cl, out_dir=tmp_path / "out")
        assert compiled.build is None
        d = next(d for d in compiled.diagnostics if d.code == "DC402")
        assert d.file == str(cl) and d.span.line == line_of(text, f"    {field}:")
        # the hint names the one form this field needs, not every field's
        expected = {"project": "GCP project id", "zone": "GCP zone", "cluster": "xpk names match",
                    "docker_image": "docker image reference"}[field]
        assert expected in d.hint
        others = {"GCP project id", "GCP zone", "docker image reference"} - {expected}
        assert not any(o in d.hint for o in others), d.hint

    def test_reserved_env_name_rejected_at_its_line(self, tmp_path):
        text = CLUSTERS.replace("    docker_image: gcr.io/proj-123/distillc:1\n",
                                "    docker_image: gcr.io/proj-123/distillc:1\n    env:\n      DISTILLC_CONFIG_B64: x\n", 1)
        spec, cl = write(tmp_path, clusters=text)
        compiled = compile_launch(spec, cluster_name="tpu", clusters_file=cl, out_dir=tmp_path / "out")
        assert compiled.build is None
        d = next(d for d in compiled.diagnostics if d.code == "DC402")
        assert d.file == str(cl) and d.span.line == line_of(text, "      DISTILLC_CONFIG_B64:")
        assert "set by distillc" in d.message

    def test_env_name_rejected_value_encoded(self, tmp_path):
        text = CLUSTERS.replace("    docker_image: gcr.io/proj-123/distillc:1\n",
                                "    docker_image: gcr.io/proj-123/distillc:1\n    env: {\"BAD-NAME\": x}\n", 1)
        spec, cl = write(tmp_path, clusters=text)
        compiled = compile_launch(spec, cluster_name="tpu", clusters_file=cl, out_dir=tmp_path / "out")
        assert "DC402" in codes(compiled) and compiled.build is None

    @pytest.mark.parametrize("value", HOSTILE, ids=repr)
    def test_env_values_are_encoded_not_rejected(self, tmp_path, value):
        text = CLUSTERS.replace("    docker_image: gcr.io/proj-123/distillc:1\n",
                                "    docker_image: gcr.io/proj-123/distillc:1\n    env:\n      V: \"" + xpk.yaml_dq_escape(value) + "\"\n", 1)
        spec, cl = write(tmp_path, clusters=text)
        compiled = compile_launch(spec, cluster_name="tpu", clusters_file=cl, out_dir=tmp_path / "out")
        assert compiled.ok, compiled.diagnostics
        env = [a for a in compiled.build.steps[0].argv if a.startswith("--env=V=")]
        assert env == [f"--env=V={xpk.yaml_dq_escape(value)}"]


class TestHostileSpecValues:
    @pytest.mark.parametrize("value", ["gs://b/top k", "gs://b/$(id)", "gs://b/`id`;x", "gs://b/#x", "gs://b/it's", "gs://b/é✓"])
    def test_maxtext_topk_dir_is_quoted_on_tpu(self, tmp_path, value):
        spec, cl = write(tmp_path, f"""
name: offrun
mode: offline
data: {{source: gs://b/d.jsonl, tokenizer: gs://b/tok/tokenizer.json, eval_fraction: 0}}
offline: {{top_k: 8, data_dir: {yaml.safe_dump(value).splitlines()[0]}, loss: renormalized}}
teacher: {{model: qwen3-0.6b}}
student: {{model: qwen3-0.6b}}
""")
        compiled = compile_launch(spec, cluster_name="tpu", clusters_file=cl, target="maxtext", out_dir=tmp_path / "o")
        if not compiled.ok:
            pytest.skip(f"spec does not validate here: {[(d.code, d.message) for d in compiled.diagnostics if d.is_error]}")
        command = next(a for a in compiled.build.steps[0].argv if a.startswith("--command="))[len("--command="):]
        words = bash_words(command.split(" && ", 1)[1])
        assert words[-1].endswith("=" + value)

    @pytest.mark.parametrize("value,gpu_only", [("gs://b/x\ny", False), ('gs://b/"x"', True), ("gs://b/x\\y", True)])
    def test_uncarriable_values_are_DC406(self, tmp_path, value, gpu_only):
        spec, cl = write(tmp_path, f"""
name: offrun
mode: offline
data: {{source: gs://b/d.jsonl, tokenizer: gs://b/tok/tokenizer.json, eval_fraction: 0}}
offline: {{top_k: 8, data_dir: {yaml.safe_dump(value, default_style='"').strip()}, loss: renormalized}}
teacher: {{model: qwen3-0.6b}}
student: {{model: qwen3-0.6b}}
""")
        gpu = compile_launch(spec, cluster_name="gpu", clusters_file=cl, target="maxtext", out_dir=tmp_path / "o")
        tpu = compile_launch(spec, cluster_name="tpu", clusters_file=cl, target="maxtext", out_dir=tmp_path / "o")
        bad = next((d for d in gpu.diagnostics if d.code == "DC406"), None)
        if bad is None and any(d.is_error for d in gpu.diagnostics):
            pytest.skip(f"spec does not validate here: {[(d.code, d.message) for d in gpu.diagnostics if d.is_error]}")
        assert bad is not None and bad.path == ("offline", "data_dir")
        assert ("DC406" in codes(tpu)) == (not gpu_only)
        assert "cannot arrive intact in --command" in bad.message
        assert bad.message.rstrip(")").endswith("on GPU device types (xpk 1.16") == gpu_only, bad.message
