"""`distillc validate / explain / schema / rules`: exit codes, output formats, select/ignore/strict."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from distillc.compiler.cli import app
from tests.conftest import ROOT, spec_text

QUICKSTART = str(ROOT / "specs" / "quickstart.yaml")
KEYS = {"code", "severity", "message", "hint", "path", "line", "column"}


def run(*args):
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def write(tmp_path):
    def _write(fragment: str, name: str = "spec.yaml") -> str:
        p = tmp_path / name
        p.write_text(spec_text(fragment))
        return str(p)

    return _write


class TestExitCodes:
    def test_valid(self):
        r = run("validate", QUICKSTART)
        assert r.exit_code == 0, r.output
        assert "ok: no problems found" in r.stderr

    def test_errors(self, write):
        r = run("validate", write("loss: {alpha: 1.5}"))
        assert r.exit_code == 1
        assert "error[DC130]" in r.stderr and "^" in r.stderr and "1 error" in r.stderr

    def test_warnings_only_is_valid(self, write):
        assert run("validate", write("loss: {temperature: 12.0}")).exit_code == 0

    def test_usage_error(self):
        r = run("validate", QUICKSTART, "--format", "yaml")
        assert r.exit_code == 2 and "Traceback" not in r.output

    def test_no_arguments(self):
        assert run("validate").exit_code == 2

    def test_several_files(self, write):
        r = run("validate", QUICKSTART, write("loss: {alpha: 2}", "bad.yaml"), "--format", "concise")
        assert r.exit_code == 1
        assert "bad.yaml:" in r.stderr and "quickstart" not in r.stderr.split("\n")[0]


class TestJson:
    def test_shape(self, write):
        path = write("loss: {alpha: {start: 1.5, end: 0.5, schedule: cosine}}\nname: Bad_Name")
        r = run("validate", path, "--format", "json")
        assert r.exit_code == 1
        items = json.loads(r.stdout)
        assert isinstance(items, list) and len(items) == 2
        for it in items:
            assert KEYS <= set(it)
            assert isinstance(it["line"], int) and isinstance(it["column"], int)
            assert it["severity"] in ("error", "warning", "note")
        by = {it["code"]: it for it in items}
        assert by["DC130"]["path"] == "loss.alpha.start" and by["DC160"]["path"] == "name"
        assert by["DC130"]["hint"]

    def test_clean_is_an_empty_list_on_stdout(self):
        r = run("validate", QUICKSTART, "--format", "json")
        assert r.exit_code == 0 and json.loads(r.stdout) == [] and r.stderr == ""

    def test_io_error_is_not_json(self, tmp_path):
        r = run("validate", str(tmp_path / "none.yaml"), "--format", "json")
        assert r.exit_code == 2 and r.stdout == ""


class TestSelectIgnoreStrict:
    FRAGMENT = "loss: {alpha: 1.5, temperature: 12.0}"

    def _codes(self, r):
        return sorted(it["code"] for it in json.loads(r.stdout))

    def test_select(self, write):
        r = run("validate", write(self.FRAGMENT), "--format", "json", "--select", "DC132")
        assert self._codes(r) == ["DC132"] and r.exit_code == 0

    def test_select_prefix_comma(self, write):
        r = run("validate", write(self.FRAGMENT), "-f", "json", "--select", "dc130,DC132")
        assert self._codes(r) == ["DC130", "DC132"]

    def test_ignore(self, write):
        r = run("validate", write(self.FRAGMENT), "-f", "json", "--ignore", "DC130")
        assert self._codes(r) == ["DC132"] and r.exit_code == 0

    def test_ignore_prefix(self, write):
        r = run("validate", write(self.FRAGMENT), "-f", "json", "--ignore", "DC13")
        assert self._codes(r) == [] and r.exit_code == 0

    def test_strict(self, write):
        path = write("loss: {temperature: 12.0}")
        assert run("validate", path).exit_code == 0
        assert run("validate", path, "--strict").exit_code == 1


class TestFormats:
    def test_concise(self, write):
        path = write("loss: {alpha: 1.5}")
        r = run("validate", path, "--format", "concise")
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(f"{path}:") and ": error: DC130 " in line

    def test_github(self, write):
        r = run("validate", write("loss: {alpha: 1.5}"), "--format", "github")
        assert r.stderr.startswith("::error file=") and "title=DC130" in r.stderr


class TestExplain:
    def test_known(self):
        r = run("explain", "DC152")
        assert r.exit_code == 0
        assert r.stdout.startswith("DC152 (error): ") and "Korthikanti" in r.stdout and "Fails::" in r.stdout

    def test_lower_case(self):
        assert run("explain", "dc101").exit_code == 0

    def test_unknown(self):
        r = run("explain", "DC999")
        assert r.exit_code == 2 and r.stderr.startswith("distillc: error:")


class TestSchemaAndRules:
    def test_schema_is_json_schema(self):
        r = run("schema")
        assert r.exit_code == 0
        doc = json.loads(r.stdout)
        assert doc["$schema"].startswith("https://json-schema.org/")
        assert {"name", "teacher", "student", "loss", "data", "train", "runtime", "resources"} <= set(doc["properties"])
        assert doc.get("additionalProperties") is False

    def test_rules_lists_every_code(self):
        from distillc.compiler.registry import iter_codes

        r = run("rules")
        listed = [line.split()[0] for line in r.stdout.splitlines()]
        assert listed == [c.code for c in iter_codes()]

    def test_rules_markdown(self):
        r = run("rules", "--markdown")
        assert r.exit_code == 0 and r.stdout.startswith("# Diagnostic codes")


class TestReviewFindings:
    """Validate over many files, clusters files, stdin, select/ignore misuse, partial I/O failure."""

    def test_all_shipped_yaml_including_clusters_file(self):
        files = sorted(str(p) for p in (ROOT / "specs").glob("*.yaml"))
        assert any(f.endswith("clusters.yaml") for f in files)
        r = run("validate", *files)
        assert r.exit_code == 0, r.output
        assert r.stderr.strip().splitlines()[-1] == f"{len(files)} files: ok: no problems found"

    def test_broken_clusters_file_gives_its_diagnostics(self, tmp_path):
        p = tmp_path / "clusters.yaml"
        p.write_text("version: 1\nclusters:\n  v5p:\n    project: my-tpu-project\n    zone: nowhere\n"
                     "    cluster: v5p-cluster\n    accelerator: v5p-128\n    colour: red\n")
        r = run("validate", str(p), "-f", "json")
        assert r.exit_code == 1, r.output
        got = {(d["code"], d["path"]) for d in json.loads(r.stdout)}
        assert ("DC010", "clusters.v5p.colour") in got

    def test_broken_clusters_entry_values(self, tmp_path):
        p = tmp_path / "clusters.yaml"
        p.write_text("version: 1\nclusters:\n  v5p:\n    project: my-tpu-project\n    zone: nowhere\n"
                     "    cluster: v5p-cluster\n    accelerator: v5p-128000\n")
        r = run("validate", str(p), "-f", "json")
        assert r.exit_code == 1, r.output
        got = {(d["code"], d["path"]) for d in json.loads(r.stdout)}
        assert {("DC402", "clusters.v5p.zone"), ("DC014", "clusters.v5p.accelerator")} <= got

    @pytest.mark.parametrize("text, path, message", [
        ("clusters:\n  e:\n", "clusters.e", "expected the mapping of cluster 'e' (project, zone, cluster, accelerator, ...) (got null)"),
        ("clusters:\n  e: {project: my-tpu-project, zone: us-central1-a, cluster: c1, accelerator: v5p-8, num_slices: true}\n",
         "clusters.e.num_slices", "expected an integer, not true/false (got true)"),
        ("clusters:\n  e: {project: my-tpu-project, zone: us-central1-a, cluster: c1, accelerator: v5p-8, env: {A: 1}}\n",
         "clusters.e.env.A", "expected a string (got 1)"),
    ], ids=["empty-entry", "bool-slices", "int-env"])
    def test_clusters_file_messages_speak_yaml_not_pydantic(self, tmp_path, text, path, message):
        p = tmp_path / "clusters.yaml"
        p.write_text(text)
        r = run("validate", str(p), "-f", "json")
        assert r.exit_code == 1
        assert [(d["path"], d["message"]) for d in json.loads(r.stdout)] == [(path, message)]

    def test_ablation_axes_are_checked_as_ablate_checks_them(self, tmp_path):
        """A spec that validates clean also ablates: its own ablation.axes are checked here too."""
        text = (ROOT / "specs" / "ablation-example.yaml").read_text()
        bad = text.replace("loss.alpha.end: [0.3, 0.5, 0.7]", "loss.alpha.end: [0.3, .inf, 0.3]")
        bad = bad.replace("loss.layers.count: [8]", "loss.layers.cnt: [8]")
        assert bad.count("\n") == text.count("\n") and bad != text
        p = tmp_path / "abl.yaml"
        p.write_text(bad)
        r = run("validate", str(p), "-f", "json")
        assert r.exit_code == 1, r.output
        got = [(d["code"], d["path"]) for d in json.loads(r.stdout)]
        assert got == [("DC171", "ablation.axes.loss.alpha.end[1]"), ("DC174", "ablation.axes.loss.alpha.end[2]"),
                       ("DC170", "ablation.axes.loss.layers.cnt")]
        assert run("validate", str(p), "--ignore", "DC17").exit_code == 0

    def test_clusters_file_with_a_duplicate_key_is_still_a_clusters_file(self, tmp_path):
        p = tmp_path / "clusters.yaml"
        p.write_text("version: 1\nclusters:\n  a: {project: my-tpu-project}\n  a: {project: my-tpu-project}\n")
        r = run("validate", str(p), "-f", "json")
        assert r.exit_code == 1
        assert [d["code"] for d in json.loads(r.stdout)] == ["DC002"]

    @pytest.mark.parametrize("option", ["--ignore", "--select"])
    @pytest.mark.parametrize(
        "text, code",
        [("teacher: [\n", "DC000"), ("", "DC003"), ("name: a\nnmae: b\n", "DC010")],
    )
    def test_structure_errors_cannot_be_suppressed(self, tmp_path, option, text, code):
        p = tmp_path / "s.yaml"
        p.write_text(text)
        r = run("validate", str(p), "-f", "json", option, "DC0" if option == "--ignore" else "DC13")
        assert r.exit_code == 1, r.output
        assert code in {d["code"] for d in json.loads(r.stdout)}

    def test_invalid_value_cannot_be_ignored(self, write):
        r = run("validate", write("train: {steps: many}"), "-f", "json", "--ignore", "DC011")
        assert r.exit_code == 1 and "DC011" in r.stdout

    @pytest.mark.parametrize("option", ["--ignore", "--select"])
    def test_unknown_selector_is_a_usage_error(self, option):
        r = run("validate", QUICKSTART, option, "DC130,XY12")
        assert r.exit_code == 2
        assert "XY12" in r.stderr and "Traceback" not in r.output

    def test_json_keeps_loaded_files_when_one_is_missing(self, tmp_path, write):
        bad = write("loss: {alpha: 2}", "bad.yaml")
        missing = str(tmp_path / "missing.yaml")
        r = run("validate", "-f", "json", bad, missing)
        assert r.exit_code == 2
        diags = json.loads(r.stdout)
        assert diags and all(d["file"] == bad for d in diags)
        assert "missing.yaml" in r.stderr and "no such file" in r.stderr

    def test_stdin(self):
        text = (ROOT / "specs" / "quickstart.yaml").read_text()
        r = CliRunner().invoke(app, ["validate", "-"], input=text)
        assert r.exit_code == 0, r.output
        assert "<stdin>: ok" in r.stderr

    def test_stdin_bytes_that_are_not_utf8_are_one_error(self):
        """Real stdin (a process, not CliRunner): Python's text stdin would smuggle the bad byte in
        as a surrogate, which crashed the YAML reader; stdin is read as bytes and decoded strictly."""
        import subprocess
        import sys

        r = subprocess.run([sys.executable, "-c", "from distillc.compiler.cli import main; main()", "validate", "-"],
                           input=b"name: caf\xe9\n", capture_output=True, env={**os.environ, "LC_ALL": "C.UTF-8"})
        assert r.returncode == 2 and b"Traceback" not in r.stderr
        assert r.stderr.decode().strip() == "distillc: error: <stdin>: not UTF-8 text (byte 9); is this a binary file?"

    @pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
    @pytest.mark.parametrize("argv", [["rules"], ["validate", "specs/quickstart.yaml", "--format", "json"]])
    def test_output_on_a_full_disk_is_one_error(self, argv):
        import subprocess
        import sys

        with open("/dev/full", "w") as full:
            r = subprocess.run([sys.executable, "-c", "from distillc.compiler.cli import main; main()", *argv],
                               stdout=full, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        assert (r.returncode, r.stderr) == (2, "distillc: error: cannot write the output: No space left on device\n")

    def test_stdin_errors_are_named_stdin(self):
        r = CliRunner().invoke(app, ["validate", "-", "-f", "concise"], input="teacher: [\n")
        assert r.exit_code == 1
        assert r.stderr.startswith("<stdin>:2:1: error: DC000")

    def test_few_files_are_listed(self, write):
        r = run("validate", QUICKSTART, QUICKSTART)
        assert r.stderr.strip().splitlines()[-1] == f"{QUICKSTART}, {QUICKSTART}: ok: no problems found"


class TestTarget:
    """validate checks a spec for the target it will compile for (default distillc), as launch does."""

    MOE = "teacher: {model: {num_layers: 2, emb_dim: 128, num_heads: 4, num_kv_heads: 4, head_dim: 32, mlp_dim: 512, vocab_size: 256, tokenizer: byte, num_experts: 4, experts_per_token: 2}}"

    def test_distillc_by_default(self, write):
        r = run("validate", write(self.MOE), "-f", "json")
        assert r.exit_code == 1 and "DC100" in [d["code"] for d in json.loads(r.stdout)]

    def test_maxtext_target_runs_the_maxtext_rules_instead(self, write):
        r = run("validate", write(self.MOE), "-f", "json", "--target", "maxtext")
        assert "DC100" not in [d["code"] for d in json.loads(r.stdout)]

    def test_unknown_target_is_a_usage_error(self):
        assert run("validate", QUICKSTART, "--target", "other").exit_code == 2
