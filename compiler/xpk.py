"""xpk 1.16 command lines as argument lists, and what survives the trip through xpk intact.

Every command is a list of strings (for subprocess, never a shell string) with every flag spelled
in full as `--flag=value`: xpk's argparse accepts unique prefixes, and `--flag value` lets a value
that starts with '-' be read as a flag. launch.sh shell-quotes each element (`shell_line`).

What xpk does with the values (xpk 1.16, core/docker_container.py and core/docker_resources.py):
  * --command is pasted into a YAML literal block (`bash -c |`) as `({command}) & PID=$!;`, and on
    GPU device types also into `value: "{command}"` of a COMMAND variable. A newline breaks the
    block; on GPUs a double quote ends the YAML string early and a backslash starts a YAML escape.
    A `#` that starts a word comments out xpk's own `) & PID=$!;`. So distillc builds the command
    from fixed words and shell-quoted values (`command_word`) and rejects, with DC406, a value
    whose quoted form still contains a newline (anywhere), or a double quote or backslash (GPUs).
  * --env VALUE is pasted into `value: "{value}"` (a double-quoted YAML scalar), after xpk's own
    parse, which keeps only the first line. distillc writes each value as a YAML double-quoted
    body (`yaml_dq_escape`): backslash, double quote, newline, tab and other control characters
    become YAML escapes, so the manifest's parsed value is the value given, byte for byte.
    Kubernetes still expands `$(NAME)` references in env values; that is Kubernetes' own
    syntax, used on purpose (xpk's JAX_COORDINATOR_ADDRESS does), and `$$` keeps a literal `$`.
  * --project, --zone, --cluster, --workload and images reach gcloud/kubectl command lines that xpk
    runs through a shell; clusters.py accepts only their documented forms (DC402), and workload
    names come from naming.workload_name.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Iterable, Literal, Optional, Sequence

XPK = "xpk"
ImageMode = Literal["docker_image", "base_docker_image"]


@dataclass(frozen=True)
class Image:
    """The container image: used as is (`docker_image`), or with the build dir layered on by xpk."""

    mode: ImageMode
    ref: str


@dataclass(frozen=True)
class Target:
    """Where workloads go: one clusters-file entry, resolved (its accelerator may be the spec's)."""

    project: str
    zone: str
    cluster: str
    device_flag: Literal["tpu-type", "device-type"]
    device_type: str
    accelerator_kind: Literal["tpu", "gpu", "cpu"]
    num_slices: int
    priority: str
    max_restarts: int
    restart_on_exit_codes: tuple[int, ...]
    env: tuple[tuple[str, str], ...]
    image: Image

    @property
    def gpu(self) -> bool:
        """xpk also copies --command into a double-quoted COMMAND variable on GPU device types."""
        return self.accelerator_kind == "gpu"


# ---------------------------------------------------------------- quoting


def shell_word(value: str) -> str:
    """One word for bash (POSIX sh quoting; `shlex.quote`)."""
    return shlex.quote(value)


def shell_line(argv: Sequence[str]) -> str:
    return " ".join(shell_word(a) for a in argv)


def command_word(value: str, gpu: bool) -> tuple[str, Optional[str]]:
    """`value` quoted for the container's bash inside xpk's --command, and the reason it cannot be
    carried (None when it can). shlex.quote makes `$(...)`, backticks, `;`, `#`, spaces and
    unicode literal; it writes a single quote as '"'"', which holds a double quote."""
    quoted = shlex.quote(value)
    bad = [c for c in ("\n", "\r") if c in value]
    if gpu:
        bad += [c for c in ('"', "\\") if c in quoted]
    if bad:
        names = {"\n": "a newline", "\r": "a carriage return", '"': "a double quote", "\\": "a backslash"}
        why = " and ".join(names[c] for c in dict.fromkeys(bad))
        where = " on GPU device types" if gpu and any(c in ('"', "\\") for c in bad) else ""
        extra = " (a single quote is written as '\"'\"' in bash)" if gpu and "'" in value and '"' not in value else ""
        return quoted, f"it contains {why}, which cannot arrive intact in --command{where} (xpk 1.16){extra}"
    return quoted, None


_YAML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\x00": "\\0"}


def yaml_dq_escape(value: str) -> str:
    """The body of a YAML double-quoted scalar that reads back as `value`: backslash, quote and
    C0/C1 control characters (and U+2028/U+2029, line breaks to YAML) become escapes."""
    out = []
    for ch in value:
        if ch in _YAML_ESCAPES:
            out.append(_YAML_ESCAPES[ch])
        elif ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F:
            out.append(f"\\x{ord(ch):02x}")
        elif ch in "\u2028\u2029\ufeff":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


# ---------------------------------------------------------------- commands


def workload_create(
    target: Target,
    workload: str,
    command: str,
    env: Iterable[tuple[str, str]] = (),
    script_dir: Optional[str] = None,
) -> tuple[str, ...]:
    """`xpk workload create` for one workload. `env` is added after the target's own variables;
    `script_dir` is the directory xpk layers onto a base image (required in that mode)."""
    argv = [
        XPK, "workload", "create",
        f"--cluster={target.cluster}",
        f"--workload={workload}",
        f"--{target.device_flag}={target.device_type}",
        f"--num-slices={target.num_slices}",
    ]
    if target.image.mode == "docker_image":
        argv.append(f"--docker-image={target.image.ref}")
    else:
        if script_dir is None:
            raise ValueError("a base docker image needs the script dir to layer onto it")
        argv += [f"--base-docker-image={target.image.ref}", f"--script-dir={script_dir}"]
    argv += [
        f"--command={command}",
        f"--project={target.project}",
        f"--zone={target.zone}",
        f"--priority={target.priority}",
        f"--max-restarts={target.max_restarts}",
    ]
    if target.restart_on_exit_codes:
        argv.append("--restart-on-exit-codes=" + ",".join(str(c) for c in target.restart_on_exit_codes))
    for key, value in (*target.env, *env):
        argv.append(f"--env={key}={yaml_dq_escape(value)}")
    return tuple(argv)


def wait_for(target: Target, workload: str) -> tuple[str, ...]:
    """`xpk workload list --wait-for-job-completion=NAME`: returns 0 once NAME completed, non-zero
    (125) when it failed, 124 on timeout (a week by default)."""
    return (
        XPK, "workload", "list",
        f"--cluster={target.cluster}",
        f"--wait-for-job-completion={workload}",
        f"--project={target.project}",
        f"--zone={target.zone}",
    )
