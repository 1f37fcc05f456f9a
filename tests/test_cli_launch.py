"""`distillc plan` and `distillc launch` end to end: exit codes, outputs, files, --execute, --local."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distillc.compiler.cli import app
from tests.conftest import ROOT, line_of, spec_text

GOLDEN_INPUTS = ROOT / "tests" / "golden" / "inputs"
CLUSTERS = GOLDEN_INPUTS / "clusters.yaml"
QUICKSTART = ROOT / "specs" / "quickstart.yaml"


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path


class TestPlan:
    def test_text(self):
        r = run("plan", GOLDEN_INPUTS / "pruning.yaml")
        assert r.exit_code == 0, r.output
        out = r.stdout
        for needle in ("schedules", "alpha  cosine 0.9 -> 0.5", "5000    0.7000    1.5000    0.5500",
                       "3<->3, 7<->7", "data 8 x fsdp 8 x tensor 1", "per chip 4", "memory   train:",
                       "GiB usable per chip", "golden-prune", "gs://golden/runs/golden-prune"):
            assert needle in out, needle

    def test_json(self):
        r = run("plan", GOLDEN_INPUTS / "offline.yaml", "--format", "json")
        doc = json.loads(r.stdout)
        assert [w["name"] for w in doc["workloads"]] == ["golden-offline-topk", "golden-offline-train"]
        assert doc["workloads"][1]["depends_on"] == ["golden-offline-topk"]
        assert len(doc["schedule"]) == 11 and doc["schedule"][0]["alpha"] == 0.7
        assert set(doc["memory"]) == {"save_topk", "train"}

    def test_offline_cache_storage(self, tmp_path):
        # hand-computed from runtime/offline/store.py's record layout: 60-byte header; per token
        # 4 input + 4 label + 1 mask + 4 segment id + 4 position + 4 label logit, k x (4 id + value bytes), G x (4 lse + 4 slope)
        doc = json.loads(run("plan", GOLDEN_INPUTS / "offline.yaml", "--format", "json").stdout)["topk_storage"]
        assert doc["record_bytes"] == 60 + 2048 * (21 + 64 * (4 + 4) + 1 * 8)
        assert (doc["header_bytes"], doc["slot_bytes"]) == (60, 8)  # read from the record spec, not re-derived
        assert doc["train_tokens"] == 5000 * 256 * 2048 and doc["train_bytes"] == 5000 * 256 * doc["record_bytes"]
        assert doc["eval_bytes_per_batch"] == 0  # eval_fraction 0
        spec = tmp_path / "s.yaml"
        spec.write_text((GOLDEN_INPUTS / "offline.yaml").read_text()
                        .replace("  temperature: 1.0\n", "  temperature: {start: 2.0, end: 1.0, schedule: cosine}\n")
                        .replace("  loss: renormalized\n", "  loss: renormalized\n  dtype: bfloat16\n"))
        r = run("plan", spec, "--format", "json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)["topk_storage"]
        # bfloat16 values: 2 bytes; T 2 -> 1 is beta 0.5 -> 1.0 in steps of at most 0.125: 5 temperatures
        assert doc["temperature_grid"] == 5 and doc["record_bytes"] == 60 + 2048 * (21 + 64 * (4 + 2) + 5 * 8)
        text = run("plan", spec).stdout
        assert "2,621,440,000 training tokens (5000 steps x 256 x 2048) x 445.0 B/token" in text
        assert "64 slots x (4 id + 2 (bfloat16) value) + 5 temperatures x 8" in text
        online = json.loads(run("plan", GOLDEN_INPUTS / "pruning.yaml", "--format", "json").stdout)
        assert online["topk_storage"] is None

    def test_vocab_note(self, tmp_path):
        spec = tmp_path / "s.yaml"
        spec.write_text(spec_text("teacher: {model: qwen2.5-7b, checkpoint: gs://b/t}\nstudent: {model: qwen2.5-1.5b}\n"
                                  "data: {tokenizer: gs://b/q/tokenizer.json}\nresources: {accelerator: v5p-8}\n"
                                  "train: {output_dir: gs://b/runs}"))
        r = run("plan", spec)
        assert r.exit_code == 0, r.output
        assert "logits are compared over the 151665 shared real tokens" in r.stdout

    def test_cluster_accelerator_wins(self):
        r = run("plan", GOLDEN_INPUTS / "offline.yaml", "--cluster", "h100", "--clusters", CLUSTERS)
        assert r.exit_code == 0, r.output
        assert "h100-80gb-8 x 2 slices = 16 devices" in r.stdout
        assert "DC400" in r.stderr

    def test_one_device_is_singular(self):
        r = run("plan", QUICKSTART)
        assert r.exit_code == 0, r.output
        assert "x 1 slice = 1 device:" in r.stdout and "1 devices" not in r.stdout

    def test_errors_exit_1(self, tmp_path):
        spec = tmp_path / "s.yaml"
        spec.write_text(spec_text("loss: {beta: {start: 0.0, end: 0.5, schedule: cosine}}"))
        assert run("plan", spec).exit_code == 1


class TestLaunchUsage:
    def test_needs_a_cluster(self, in_tmp):
        r = run("launch", QUICKSTART)
        assert r.exit_code == 2 and "--cluster" in r.stderr

    def test_unknown_cluster(self, in_tmp):
        r = run("launch", GOLDEN_INPUTS / "pruning.yaml", "--cluster", "v5q", "--clusters", CLUSTERS)
        assert r.exit_code == 2 and "did you mean 'v5p'" in r.stderr

    def test_no_clusters_file(self, in_tmp):
        r = run("launch", QUICKSTART, "--cluster", "v5p")
        assert r.exit_code == 2 and "no clusters file" in r.stderr and "clusters.yaml" in r.stderr

    def test_missing_clusters_file(self, in_tmp):
        r = run("launch", QUICKSTART, "--cluster", "v5p", "--clusters", in_tmp / "nope.yaml")
        assert r.exit_code == 2 and "no such file" in r.stderr

    def test_clusters_file_lookup_order(self, in_tmp):
        text = CLUSTERS.read_text()
        (in_tmp / "config" / "distillc").mkdir(parents=True)
        (in_tmp / "config" / "distillc" / "clusters.yaml").write_text(text.replace("golden-v5p", "from-config-dir"))
        r = run("launch", GOLDEN_INPUTS / "pruning.yaml", "--cluster", "v5p", "--format", "json")
        assert r.exit_code == 0, r.output
        assert "--cluster=from-config-dir" in json.loads(r.stdout)["workloads"][0]["argv"]
        (in_tmp / "clusters.yaml").write_text(text.replace("golden-v5p", "from-cwd"))
        r = run("launch", GOLDEN_INPUTS / "pruning.yaml", "--cluster", "v5p", "--format", "json")
        assert "--cluster=from-cwd" in json.loads(r.stdout)["workloads"][0]["argv"]

    def test_bad_clusters_file_points_at_line_and_column(self, in_tmp):
        text = CLUSTERS.read_text().replace("    zone: us-east5-a", "    zonee: us-east5-a")
        (in_tmp / "clusters.yaml").write_text(text)
        r = run("launch", GOLDEN_INPUTS / "pruning.yaml", "--cluster", "v5p")
        assert r.exit_code == 1
        assert f"clusters.yaml:{line_of(text, 'zonee:')}:5" in r.stderr and "DC010" in r.stderr and "did you mean 'zone'" in r.stderr


class TestLaunchDryRun:
    def test_writes_build_dir_and_prints_commands(self, in_tmp):
        r = run("launch", GOLDEN_INPUTS / "offline.yaml", "--cluster", "v5p", "--clusters", CLUSTERS)
        assert r.exit_code == 0, r.output
        build = in_tmp / "build" / "golden-offline"
        assert sorted(p.name for p in build.iterdir()) == ["config-save_topk.json", "config-train.json", "launch.sh", "manifest.json"]
        lines = r.stdout.splitlines()
        assert len(lines) == 3 and all(line.startswith("xpk workload ") for line in lines)
        assert "--wait-for-job-completion=golden-offline-topk" in lines[1]

    def test_json_contract(self, in_tmp):
        r = run("launch", GOLDEN_INPUTS / "offline.yaml", "--cluster", "v5p", "--clusters", CLUSTERS,
                "--format", "json", "--out", "out")
        doc = json.loads(r.stdout)
        assert set(doc) == {"workloads", "artifacts", "diagnostics"}
        assert r.stderr.count("DC") == 0  # json mode: every diagnostic is in the document, none as text
        topk, train = doc["workloads"]
        assert set(topk) == {"name", "argv", "depends_on"}
        assert (topk["name"], topk["depends_on"]) == ("golden-offline-topk", [])
        assert (train["name"], train["depends_on"]) == ("golden-offline-train", ["golden-offline-topk"])
        assert topk["argv"][:3] == ["xpk", "workload", "create"]
        assert {a["path"] for a in doc["artifacts"]} == {f"out/{n}" for n in
                                                           ("config-save_topk.json", "config-train.json", "launch.sh", "manifest.json")}

    def test_validation_errors_are_the_validate_diagnostics(self, in_tmp):
        spec = in_tmp / "bad.yaml"
        spec.write_text((GOLDEN_INPUTS / "pruning.yaml").read_text().replace("start: 1.0, end: 0.1", "start: 0.0, end: 0.1"))
        launched = run("launch", spec, "--cluster", "v5p", "--clusters", CLUSTERS, "--format", "json", "--target", "maxtext")
        validated = run("validate", spec, "--format", "json", "--target", "maxtext")  # DC120: a MaxText limit
        assert launched.exit_code == validated.exit_code == 1
        doc = json.loads(launched.stdout)
        assert set(doc) == {"workloads", "artifacts", "diagnostics"}
        assert doc["workloads"] == doc["artifacts"] == []
        assert doc["diagnostics"] == json.loads(validated.stdout)
        assert "DC" not in launched.stderr
        assert not (in_tmp / "build").exists()

    def test_plan_json_errors_keep_the_shape(self, in_tmp):
        spec = in_tmp / "bad.yaml"
        spec.write_text((GOLDEN_INPUTS / "pruning.yaml").read_text().replace("start: 1.0, end: 0.1", "start: 0.0, end: 0.1"))
        r = run("plan", spec, "--format", "json", "--target", "maxtext")  # DC120: a MaxText limit
        assert r.exit_code == 1
        doc = json.loads(r.stdout)
        assert doc["workloads"] == [] and doc["diagnostics"] and all("code" in d for d in doc["diagnostics"])
        assert "DC" not in r.stderr

    def test_json_success_carries_warnings(self, in_tmp):
        r = run("launch", GOLDEN_INPUTS / "offline.yaml", "--cluster", "h100", "--clusters", CLUSTERS,
                "--format", "json", "--out", "out")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        assert "DC400" in {d["code"] for d in doc["diagnostics"]}
        assert "DC400" not in r.stderr
        p = run("plan", GOLDEN_INPUTS / "offline.yaml", "--cluster", "h100", "--clusters", CLUSTERS, "--format", "json")
        assert "DC400" in {d["code"] for d in json.loads(p.stdout)["diagnostics"]} and "DC400" not in p.stderr

    def test_maxtext_target(self, in_tmp):
        r = run("launch", GOLDEN_INPUTS / "pruning.yaml", "--cluster", "v5p", "--clusters", CLUSTERS, "--target", "maxtext")
        assert r.exit_code == 0, r.output
        assert (in_tmp / "build" / "golden-prune" / "maxtext.yml").exists()
        assert "train_distill" in r.stdout

    def test_maxtext_target_reports_what_it_cannot_express(self, in_tmp):
        spec = in_tmp / "s.yaml"
        spec.write_text((GOLDEN_INPUTS / "pruning.yaml").read_text().replace(
            "{start: 0.9, end: 0.5, schedule: cosine}", "{schedule: piecewise, points: [[0, 0.9], [5000, 0.5]]}"))
        r = run("launch", spec, "--cluster", "v5p", "--clusters", CLUSTERS, "--target", "maxtext")
        assert r.exit_code == 1 and "DC421" in r.stderr
        assert run("launch", spec, "--cluster", "v5p", "--clusters", CLUSTERS).exit_code == 0

    def test_refuses_to_overwrite_a_foreign_directory(self, in_tmp):
        (in_tmp / "mine").mkdir()
        (in_tmp / "mine" / "notes.txt").write_text("x")
        r = run("launch", GOLDEN_INPUTS / "pruning.yaml", "--cluster", "v5p", "--clusters", CLUSTERS, "--out", "mine")
        assert r.exit_code == 2 and (in_tmp / "mine" / "notes.txt").exists()


FAKE_XPK = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "{log}"
if [ -n "${{FAIL_ON:-}}" ] && [[ "$*" == *"$FAIL_ON"* ]]; then echo "xpk: error: quota exceeded for $FAIL_ON" ; exit 3; fi
echo "xpk ok: $1 $2"
"""


class TestExecute:
    def fake_xpk(self, tmp: Path, monkeypatch) -> Path:
        bindir = tmp / "bin"
        bindir.mkdir()
        log = tmp / "xpk.log"
        (bindir / "xpk").write_text(FAKE_XPK.format(log=log))
        (bindir / "xpk").chmod(0o755)
        monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
        return log

    def test_no_xpk_on_path(self, in_tmp, monkeypatch):
        monkeypatch.setenv("PATH", str(in_tmp))
        r = run("launch", GOLDEN_INPUTS / "pruning.yaml", "--cluster", "v5p", "--clusters", CLUSTERS, "--execute")
        assert r.exit_code == 2 and "pip install 'distillc[xpk]'" in r.stderr

    def test_runs_each_command_in_order(self, in_tmp, monkeypatch):
        log = self.fake_xpk(in_tmp, monkeypatch)
        r = run("launch", GOLDEN_INPUTS / "offline.yaml", "--cluster", "h100", "--clusters", CLUSTERS, "--execute")
        assert r.exit_code == 0, r.output
        calls = log.read_text().splitlines()
        assert [c.split()[:2] for c in calls] == [["workload", "create"], ["workload", "list"], ["workload", "create"]]
        assert "--workload=golden-offline-topk" in calls[0] and "--workload=golden-offline-train" in calls[2]
        assert "--script-dir=build/golden-offline" in calls[0]  # the build dir, as written

    def test_stops_at_the_first_failure_with_xpks_message(self, in_tmp, monkeypatch):
        log = self.fake_xpk(in_tmp, monkeypatch)
        monkeypatch.setenv("FAIL_ON", "--wait-for-job-completion")
        r = run("launch", GOLDEN_INPUTS / "offline.yaml", "--cluster", "v5p", "--clusters", CLUSTERS, "--execute")
        assert r.exit_code == 1
        assert "quota exceeded" in r.stderr and "failed (exit 3)" in r.stderr
        assert len(log.read_text().splitlines()) == 2  # the train workload was never created


class TestLocal:
    def test_compiles_then_calls_the_runtime(self, in_tmp, monkeypatch):
        calls = []
        fake = types.ModuleType("distillc.runtime.local")
        fake.run_local = lambda configs, spec_path, restart=False: calls.append((configs, spec_path, restart)) or 0
        monkeypatch.setitem(sys.modules, "distillc.runtime.local", fake)
        r = run("launch", QUICKSTART, "--local")
        assert r.exit_code == 0, r.output
        (configs, spec_path, restart), = calls
        assert [c.stage for c in configs] == ["train"] and configs[0].name == "quickstart"
        assert spec_path == QUICKSTART and restart is False
        assert sorted(p.name for p in (in_tmp / "build" / "quickstart").iterdir()) == ["config-train.json", "manifest.json"]
        assert run("launch", QUICKSTART, "--local", "--restart").exit_code == 0 and calls[-1][2] is True

    def test_restart_goes_with_local(self, in_tmp):
        r = run("launch", QUICKSTART, "--cluster", "v5p", "--clusters", CLUSTERS, "--restart")
        assert r.exit_code == 2 and "--restart goes with --local" in r.stderr

    def test_exit_code_is_the_runtimes(self, in_tmp, monkeypatch):
        fake = types.ModuleType("distillc.runtime.local")
        fake.run_local = lambda configs, spec_path, restart=False: 3
        monkeypatch.setitem(sys.modules, "distillc.runtime.local", fake)
        assert run("launch", QUICKSTART, "--local").exit_code == 3

    def test_local_and_maxtext_do_not_mix(self, in_tmp):
        assert run("launch", QUICKSTART, "--local", "--target", "maxtext").exit_code == 2


def test_cluster_slices_note_and_rules_rerun(in_tmp):
    """The h100 entry has 2 slices and another accelerator: notes for both, rules run for them."""
    r = run("launch", GOLDEN_INPUTS / "pruning.yaml", "--cluster", "h100", "--clusters", CLUSTERS)
    assert r.exit_code == 1
    assert "DC400" in r.stderr and "DC401" in r.stderr
    assert "h100-80gb-8 x 2 slices (16 devices)" in r.stderr  # the memory rule ran for the cluster


def test_local_takes_no_cluster(in_tmp):
    assert run("launch", QUICKSTART, "--local", "--cluster", "v5p").exit_code == 2


def test_unquoted_env_value_is_pointed_at(in_tmp):
    text = CLUSTERS.read_text().replace('JAX_TRACEBACK_FILTERING: "off"', "JAX_TRACEBACK_FILTERING: true")
    (in_tmp / "clusters.yaml").write_text(text)
    r = run("launch", GOLDEN_INPUTS / "pruning.yaml", "--cluster", "v5p")
    assert r.exit_code == 1 and "DC011" in r.stderr and "quote them" in r.stderr


def test_unquoted_off_is_the_text_off(in_tmp):
    """YAML 1.2, as in specs: `off` is a string (YAML 1.1 would read false), so it needs no quotes."""
    text = CLUSTERS.read_text().replace('JAX_TRACEBACK_FILTERING: "off"', "JAX_TRACEBACK_FILTERING: off")
    (in_tmp / "clusters.yaml").write_text(text)
    r = run("launch", GOLDEN_INPUTS / "pruning.yaml", "--cluster", "v5p", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert "JAX_TRACEBACK_FILTERING=off" in r.stdout


class TestSelectIgnore:
    """--select / --ignore on plan and launch take the cluster and plan rules' codes (DC4xx) as
    validate takes the spec rules'; an error that makes nothing renderable is never hidden."""

    def piecewise(self, in_tmp) -> Path:
        spec = in_tmp / "s.yaml"
        spec.write_text((GOLDEN_INPUTS / "pruning.yaml").read_text().replace(
            "{start: 0.9, end: 0.5, schedule: cosine}", "{schedule: piecewise, points: [[0, 0.9], [5000, 0.5]]}"))
        return spec

    def test_ignore_a_maxtext_error_on_launch(self, in_tmp):
        spec = self.piecewise(in_tmp)
        args = ("launch", spec, "--cluster", "v5p", "--clusters", CLUSTERS, "--target", "maxtext", "--format", "json")
        assert run(*args).exit_code == 1
        r = run(*args, "--ignore", "DC421")
        assert r.exit_code == 0, r.output
        assert "DC421" not in {d["code"] for d in json.loads(r.stdout)["diagnostics"]}
        assert run(*args, "--ignore", "DC42").exit_code == 0  # a prefix

    def test_select_keeps_only_the_codes_named(self, in_tmp):
        spec = self.piecewise(in_tmp)
        r = run("launch", spec, "--cluster", "v5p", "--clusters", CLUSTERS, "--target", "maxtext", "--format", "json",
                "--select", "DC400,DC421")
        assert r.exit_code == 1
        assert {d["code"] for d in json.loads(r.stdout)["diagnostics"]} == {"DC421"}  # no DC400: v5p is the spec's

    def test_ignore_a_cluster_note_on_plan_and_launch(self, in_tmp):
        base = ("--cluster", "h100", "--clusters", CLUSTERS, "--format", "json")
        for command, extra in (("plan", ()), ("launch", ("--out", "out"))):
            got = run(command, GOLDEN_INPUTS / "offline.yaml", *base, *extra)
            assert "DC400" in {d["code"] for d in json.loads(got.stdout)["diagnostics"]}, command
            quiet = run(command, GOLDEN_INPUTS / "offline.yaml", *base, *extra, "--ignore", "DC400")
            assert quiet.exit_code == 0, quiet.output
            assert "DC400" not in {d["code"] for d in json.loads(quiet.stdout)["diagnostics"]}, command

    def test_unknown_selector_is_a_usage_error(self, in_tmp):
        r = run("plan", GOLDEN_INPUTS / "offline.yaml", "--ignore", "DC499")
        assert r.exit_code == 2 and "DC499" in r.stderr

    def test_an_error_that_stops_the_launch_is_never_hidden(self, in_tmp):
        clusters = in_tmp / "clusters.yaml"
        clusters.write_text(CLUSTERS.read_text().replace("    docker_image: us-docker.pkg.dev/golden-project/distillc/distillc:0.1.0\n", ""))
        r = run("launch", GOLDEN_INPUTS / "pruning.yaml", "--cluster", "v5p", "--clusters", clusters, "--ignore", "DC404")
        assert r.exit_code == 1 and "DC404" in r.stderr  # no image: nothing to launch
        for local_only in ("cpu", "h100-80gb-1"):  # no xpk device type: `launch --local` only
            clusters.write_text(CLUSTERS.read_text().replace("accelerator: v5p-128", f"accelerator: {local_only}"))
            r = run("launch", GOLDEN_INPUTS / "pruning.yaml", "--cluster", "v5p", "--clusters", clusters, "--ignore", "DC403")
            assert r.exit_code == 1 and "DC403" in r.stderr and f"'{local_only}' is not an xpk device type" in r.stderr

    def test_rules_and_explain_cover_the_launch_codes(self):
        listed = run("rules").stdout
        assert all(code in listed for code in ("DC400", "DC402", "DC406", "DC421", "DC432"))
        text = run("explain", "DC421").stdout
        assert text.startswith("DC421 (error): a schedule MaxText cannot express") and "Fails::" in text
        assert "Applies to `--target maxtext` only." in text
