"""`distillc ablate` on the command line: output formats, exit codes, --out, --best."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from distillc.compiler.cli import app
from tests.conftest import spec_text

SPEC = """
student:
  model: tiny-teacher
loss:
  alpha: {start: 0.9, end: 0.5, schedule: cosine}
  beta: {start: 1.0, end: 0.1, schedule: cosine}
  layers: {strategy: first_n, count: 1}
ablation:
  axes:
    loss.alpha.end: [0.3, 0.5]
    loss.beta.start: [0.0, 1.0]
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text(SPEC))
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, ["ablate", *map(str, args)])


def test_json_is_the_public_shape(spec):
    res = invoke(spec, "--format", "json", "--axis", "loss.temperature.start=1,2", "--target", "maxtext")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    for cell in doc["cells"]:
        assert {"name", "status", "values", "reason", "duplicate_of"} <= set(cell)
    assert [(c["name"], c["status"]) for c in doc["cells"]] == [
        ("quickstart-a03-bs0", "pruned"),
        ("quickstart-a03-t2-bs0", "pruned"),  # names follow the priority order: alpha, T, beta
        ("quickstart-a03", "valid"),
        ("quickstart-a03-t2", "valid"),
        ("quickstart-bs0", "pruned"),
        ("quickstart-t2-bs0", "pruned"),
        ("quickstart-base", "valid"),
        ("quickstart-t2", "valid"),
    ]
    assert doc["cells"][1]["values"] == {"loss.alpha.end": 0.3, "loss.beta.start": 0.0, "loss.temperature.start": 2}
    assert doc["cells"][1]["reason"].startswith("DC120 ") and doc["cells"][1]["duplicate_of"] is None
    assert doc["cells"][2]["reason"] is None


def test_valid_and_duplicate_cells_in_json(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(spec_text("loss: {alpha: 0.9}"))
    res = invoke(path, "--format", "json", "--axis", "loss.alpha.end=0.3,0.5")
    assert res.exit_code == 0, res.output
    cells = json.loads(res.stdout)["cells"]
    assert [(c["status"], c["duplicate_of"]) for c in cells] == [("valid", None), ("duplicate", cells[0]["name"])]
    assert cells[0]["aliases"] == [cells[1]["name"]]


def test_all_pruned_exits_1_and_table_lists_reasons(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(spec_text(SPEC.replace("[0.0, 1.0]", "[0.0]")))
    res = invoke(path, "--target", "maxtext")
    assert res.exit_code == 1
    assert "DC120" in res.stdout and "pruned" in res.stdout
    assert "0 valid" in res.stderr


def test_text_table_and_csv(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(spec_text("loss: {alpha: {start: 0.9, end: 0.5, schedule: cosine}}"))
    res = invoke(path, "--axis", "loss.alpha.end=0.3,0.5")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0].split()[:2] == ["NAME", "STATUS"]
    assert lines[1].split() == ["quickstart-a03", "valid", "loss.alpha.end=0.3"]
    assert lines[2].split() == ["quickstart-base", "valid", "(base", "values)"]
    res = invoke(path, "--axis", "loss.alpha.end=0.3", "--format", "csv")
    assert res.stdout.splitlines() == ["name,status,loss.alpha.end,reason,duplicate_of", "quickstart-a03,valid,0.3,,"]


def test_axis_errors_exit_1_with_positions(spec):
    res = invoke(spec, "--axis", "loss.alpha.ned=0.3")
    assert res.exit_code == 1
    assert "DC170" in res.stderr and "--axis:1:1" in res.stderr and "did you mean 'end'" in res.stderr


def test_usage_errors_exit_2(spec, tmp_path):
    assert invoke(tmp_path / "missing.yaml").exit_code == 2
    res = invoke(spec, "--strategy", "random")
    assert res.exit_code == 2 and "--samples" in res.stderr
    res = invoke(spec, "--strategy", "staged", "--best", tmp_path / "nope.csv")
    assert res.exit_code == 2 and "cannot read" in res.stderr


def test_max_cells(spec):
    res = invoke(spec, "--axis", "loss.temperature.start=1,2,3", "--max-cells", "4", "--format", "json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["cells"] == [] and [d["code"] for d in doc["diagnostics"]] == ["DC173"]


def test_staged_with_best_and_out(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(spec_text("""
loss:
  alpha: {start: 0.9, end: 0.5, schedule: cosine}
ablation:
  strategy: staged
  axes:
    loss.temperature.start: [1.0, 2.0]
    loss.alpha.end: [0.3, 0.5]
    train.learning_rate: [1.0e-3, 3.0e-3]
"""))
    res = invoke(path, "--format", "json")
    doc = json.loads(res.stdout)
    assert doc["stage"]["number"] == 1 and doc["stage"]["name"] == "logits"
    names = [c["name"] for c in doc["cells"]]
    assert names == ["quickstart-a03", "quickstart-base", "quickstart-a03-t2", "quickstart-t2"]
    best = tmp_path / "best.csv"
    best.write_text("name,metric\n" + "\n".join(f"{n},{m}" for n, m in zip(names, [2.1, 2.3, 1.9, 2.0])))
    out = tmp_path / "out"
    res = invoke(path, "--best", best, "--format", "json", "--out", out)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["stage"]["name"] == "other" and doc["stage"]["winners"][0]["cell"] == "quickstart-a03-t2"
    assert [c["values"] for c in doc["cells"]] == [
        {"loss.alpha.end": 0.3, "loss.temperature.start": 2.0, "train.learning_rate": 1.0e-3},
        {"loss.alpha.end": 0.3, "loss.temperature.start": 2.0, "train.learning_rate": 3.0e-3},
    ]
    # learning rate 3e-3 is the base's: that cell is stage 1's winner, already run
    assert [(c["name"], c["result"]) for c in doc["cells"]] == [("quickstart-a03-t2-lr0001", None), ("quickstart-a03-t2", 1.9)]
    index = json.loads((out / "index.json").read_text())
    assert [c["spec"] for c in index["cells"]] == [f"{c['name']}.yaml" for c in doc["cells"]]
    script = (out / "launch_all.sh").read_text().splitlines()
    assert 'distillc launch quickstart-a03-t2-lr0001.yaml --cluster "$cluster" "$@"' in script
    assert '# already run (result 1.9): distillc launch quickstart-a03-t2.yaml --cluster "$cluster" "$@"' in script
    for c in doc["cells"]:
        v = CliRunner().invoke(app, ["validate", str(out / f"{c['name']}.yaml")])
        assert v.exit_code == 0, v.output


CLUSTERS = """
version: 1
clusters:
  big:
    project: my-project
    zone: us-east5-a
    cluster: v5p-cluster
    accelerator: v5p-128
    num_slices: 1
    docker_image: gcr.io/my-project/distillc:0.1.0
"""


def test_cluster_decides_validity_and_is_written_into_children(tmp_path):
    import yaml

    from tests.conftest import ROOT

    data = yaml.safe_load((ROOT / "specs" / "ablation-example.yaml").read_text())
    data.pop("ablation")
    data["resources"]["accelerator"] = "v5p-8"  # 4 chips: fsdp 64 does not fit (DC150)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "clusters.yaml").write_text(CLUSTERS)
    res = invoke(path, "--axis", "loss.alpha.end=0.3", "--format", "json")
    # the base spec's own error, which the axis does not fix: reported once, exit 1, no cells
    doc = json.loads(res.stdout)
    assert res.exit_code == 1 and doc["cells"] == [] and [d["code"] for d in doc["diagnostics"]] == ["DC150"]
    out = tmp_path / "out"
    res = invoke(path, "--axis", "loss.alpha.end=0.3", "--format", "json", "--cluster", "big",
                 "--clusters", tmp_path / "clusters.yaml", "--out", out)
    assert res.exit_code == 0, res.output
    (cell,) = json.loads(res.stdout)["cells"]
    assert cell["status"] == "valid"
    child = yaml.safe_load((out / f"{cell['name']}.yaml").read_text())
    assert child["resources"]["accelerator"] == "v5p-128"
    assert f"--clusters {tmp_path / 'clusters.yaml'} --cluster big \"$@\"" in (out / "launch_all.sh").read_text()
    assert invoke(path, "--axis", "loss.alpha.end=0.3", "--cluster", "nope", "--clusters", tmp_path / "clusters.yaml").exit_code == 2


def test_out_refuses_a_foreign_non_empty_directory(spec, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.csv").write_text("a,1\n")
    res = invoke(spec, "--out", other)
    assert res.exit_code == 2 and "not the output of `distillc ablate`" in res.output
    assert [p.name for p in other.iterdir()] == ["results.csv"]
    out = tmp_path / "out"
    assert invoke(spec, "--out", out).exit_code == 0
    assert invoke(spec, "--out", out).exit_code == 0  # its own earlier output: replaced


def test_a_base_error_is_reported_once_and_exits_1(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(spec_text("name: " + "n" * 41 + "\n" + SPEC))
    res = invoke(path)
    assert res.exit_code == 1 and res.output.count("DC161") == 1 and "pruned" not in res.output


# ---------------------------------------------------------------- hostile input


def assert_clean(res, code: int, *needles: str) -> None:
    """Exit `code` with each needle in the output, and no traceback (CliRunner keeps the exception)."""
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    for n in needles:
        assert n in res.output, res.output


def _write(tmp_path, text: str = SPEC):
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text(text))
    return path


def test_a_newline_in_the_spec_path_cannot_run_a_command(tmp_path):
    import os
    import subprocess

    path = tmp_path / "abl\ntouch PWN15 #.yaml"
    path.write_text(spec_text(SPEC))
    out = tmp_path / "out"
    assert_clean(invoke(path, "--out", out), 0)
    script = out / "launch_all.sh"
    assert "from " + str(tmp_path) + "/abl\\ntouch PWN15 #.yaml: " in script.read_text().splitlines()[1]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "distillc").write_text("#!/usr/bin/env bash\n")
    (bin_dir / "distillc").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    p = subprocess.run(["bash", str(script), "c"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert not list(tmp_path.rglob("PWN15*"))
    for child in out.glob("*.yaml"):  # the header comment no longer breaks the child's YAML
        assert_clean(CliRunner().invoke(app, ["validate", str(child)]), 0)


def test_a_newline_in_an_axis_value_is_escaped_in_comments_and_the_table(tmp_path):
    value = "gs://b/x\nmaxtext: {base_config: evil.yml}\n#"
    out = tmp_path / "out"
    axis = "teacher.checkpoint=" + json.dumps(value) + ",gs://b/y"  # a YAML double-quoted "\n" is a newline
    res = invoke(_write(tmp_path, ""), "--strategy", "grid", "--axis", axis, "--out", out)
    assert_clean(res, 0)
    assert [line.split()[1] for line in res.stdout.splitlines()[1:]] == ["valid", "valid"]  # one line per cell
    assert "teacher.checkpoint=gs://b/x\\nmaxtext: {base_config: evil.yml}\\n#" in res.stdout
    import yaml

    children = sorted(out.glob("*.yaml"))
    assert len(children) == 2
    for child in children:
        data = yaml.safe_load(child.read_text())
        assert "maxtext" not in data and data["teacher"]["checkpoint"] in (value, "gs://b/y")
        assert_clean(CliRunner().invoke(app, ["validate", str(child)]), 0)


@pytest.mark.parametrize("axis", ["loss.alpha.end=.inf", "loss.alpha.end=1e999", "loss.alpha.end=0.3,.nan",
                                  "train.learning_rate=1e999", 'loss.alpha.end="inf"'])
def test_a_non_finite_axis_option_is_a_usage_error(spec, axis):
    key = axis.partition("=")[0]
    res = invoke(spec, "--axis", axis)
    assert_clean(res, 2, f"distillc: error: --axis {key}: value ", "not a finite number")
    assert len(res.stderr.splitlines()) == 1


def test_a_non_finite_value_in_ablation_axes_is_dc171_at_its_line(tmp_path):
    path = _write(tmp_path, SPEC.replace("loss.alpha.end: [0.3, 0.5]", "loss.alpha.end: [.inf, 0.5]"))
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if t.strip() == "- .inf")
    assert_clean(invoke(path), 1, "error[DC171]: loss.alpha.end: inf is not a finite number", f"spec.yaml:{line}:")


@pytest.mark.parametrize("content,message", [
    (b"name,metric\n\xff\xfe,1\n", "not UTF-8 text"),
    ("name,metric\nx,1\n".encode("utf-16"), "not UTF-8 text"),
    (b"name,metric\nquickstart-a03,1\nquickstart-a03,2\n", "'quickstart-a03' is listed twice"),
    (b'{"quickstart-a03": 1, "quickstart-a03": 2}', "'quickstart-a03' is listed twice"),
    (b"name,metric\nquickstart-a03,inf\n", "metric of 'quickstart-a03' is infinite"),
    (b"name,metric\nquickstart-a03,-inf\n", "metric of 'quickstart-a03' is infinite"),
    (b"foo,bar\nquickstart-a03,1\n", "the header needs a name column"),
], ids=["binary", "utf-16", "repeat-csv", "repeat-json", "inf", "minus-inf", "unknown-header"])
def test_a_bad_best_file_is_a_one_line_usage_error(spec, tmp_path, content, message):
    best = tmp_path / "best.csv"
    best.write_bytes(content)
    res = invoke(spec, "--strategy", "staged", "--best", best)
    assert_clean(res, 2, f"distillc: error: --best {best}: ", message)
    assert len(res.stderr.splitlines()) == 1


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_best_refuses_what_is_not_a_regular_file_without_blocking(spec, tmp_path, kind):
    # in a child process with a memory cap (set by the child itself: a preexec_fn would run Python in a
    # fork of this process, which may hold jax's threads) and a timeout: reading these used to hang or eat memory
    import os
    import subprocess
    import sys

    best = tmp_path / "fifo" if kind == "fifo" else kind
    if kind == "fifo":
        os.mkfifo(best)
    child = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
             "from distillc.compiler.cli import main; main()")
    p = subprocess.run([sys.executable, "-c", child, "ablate", str(spec),
                        "--strategy", "staged", "--best", str(best)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert p.stderr == f"distillc: error: --best {best}: not a regular file\n"


def test_best_reads_the_results_csv_that_the_runs_metrics_give(tmp_path):
    """docs/ablate.md: results.csv comes from each cell's run directory (<output_dir>/<cell name>) by
    `python -m distillc.runtime.train.metrics RUN_DIR...`: the last held-out evaluation's hard_loss."""
    import subprocess
    import sys

    path = tmp_path / "s.yaml"
    path.write_text(spec_text("""
ablation:
  strategy: staged
  axes:
    loss.temperature.start: [1.0, 2.0]
"""))
    names = [c["name"] for c in json.loads(invoke(path, "--format", "json").stdout)["cells"]]
    runs = tmp_path / "runs"
    for i, name in enumerate(names):  # an interim evaluation, then the final one that counts
        (runs / name).mkdir(parents=True)
        (runs / name / "metrics.jsonl").write_text(
            json.dumps({"step": 10, "split": "eval", "hard_loss": 1.0}) + "\n"
            + json.dumps({"step": 20, "split": "train", "hard_loss": 0.1}) + "\n"
            + json.dumps({"step": 20, "split": "eval", "hard_loss": 2.5 - i}) + "\n")
    (runs / "unfinished").mkdir()
    p = subprocess.run([sys.executable, "-m", "distillc.runtime.train.metrics", *map(str, sorted(runs.iterdir()))],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "name,metric" and "unfinished: no final evaluation" in p.stderr
    results = tmp_path / "results.csv"
    results.write_text(p.stdout)
    res = invoke(path, "--best", results, "--format", "json")
    assert res.exit_code == 0, res.output
    winner = json.loads(res.stdout)["stage"]["winners"][0]
    assert winner["cell"] == names[-1]  # the lowest final hard_loss
