"""The launch scripts: shellcheck, the commands their dry runs print, and local_cluster.sh's
process handling (failures, time limit). tpu_pod.sh's pre-emption recovery runs against a
stand-in `gcloud` on PATH that plays a TPU being pre-empted (there is no cloud here)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
SCRIPTS = ["local_cluster.sh", "gpu_node.sh", "slurm.sbatch", "tpu_pod.sh"]
HOME = "/home/u"


def run(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": HOME, "TMPDIR": "/tmp"}
    return subprocess.run(["bash", str(LAUNCH / script), *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def words(line: str) -> list[str]:
    """The arguments bash makes of one printed command line."""
    out = subprocess.run(["bash", "-c", 'eval "set -- $1"; printf "%s\\0" "$@"', "_", line],
                         capture_output=True, text=True, check=True).stdout
    return out.split("\0")[:-1]


def lines(result: subprocess.CompletedProcess) -> list[list[str]]:
    assert result.returncode == 0, result.stderr
    return [words(line) for line in result.stdout.splitlines()]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script):
    result = subprocess.run(["shellcheck", "--shell=bash", "--external-sources", str(LAUNCH / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable_and_refuse_a_missing_command(script):
    assert os.access(LAUNCH / script, os.X_OK)
    args = {"slurm.sbatch": ["--dry-run"], "tpu_pod.sh": ["--name", "n", "--zone", "z", "--type", "v5p-8", "--dry-run"]
            }.get(script, ["--dry-run", "--"])
    result = run(script, *args)
    assert result.returncode == 2 and "no command" in result.stderr


# ---------------------------------------------------------------- dry runs

def test_local_cluster_dry_run():
    result = run("local_cluster.sh", "-n", "3", "-d", "2", "-p", "4567", "--dry-run", "--",
                 "python", "-m", "pkg.mod", "--name", "a b",
                 env={"XLA_FLAGS": "--xla_dump_to=/tmp/d --xla_force_host_platform_device_count=8"})
    assert lines(result) == [
        ["env", "JAXBIQA_COORDINATOR=127.0.0.1:4567", "JAXBIQA_NUM_PROCESSES=3", f"JAXBIQA_PROCESS_ID={i}",
         "JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_dump_to=/tmp/d --xla_force_host_platform_device_count=2",
         "python", "-m", "pkg.mod", "--name", "a b"] for i in range(3)]


def test_gpu_node_dry_run():
    assert lines(run("gpu_node.sh", "--gpus", "4", "--dry-run", "--", "jaxbiqa", "train", "--config", "humaniqa")) == [
        ["env", "CUDA_VISIBLE_DEVICES=0,1,2,3", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.95",
         f"JAX_COMPILATION_CACHE_DIR={HOME}/.cache/jaxbiqa/jax", "jaxbiqa", "train", "--config", "humaniqa"]]
    assert lines(run("gpu_node.sh", "--cache-dir", "/c", "--mem-fraction", "0.9", "--dry-run", "--", "cmd")) == [
        ["env", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", "JAX_COMPILATION_CACHE_DIR=/c", "cmd"]]
    assert run("gpu_node.sh", "--mem-fraction", "1.5", "--", "cmd").returncode == 2


def test_slurm_dry_run_and_resume_after_requeue():
    srun = ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert lines(run("slurm.sbatch", "--dry-run", "jaxbiqa", "train", "--set", "output_dir=/s/r")) == [
        [*srun, f"--export=ALL,JAX_COMPILATION_CACHE_DIR={HOME}/.cache/jaxbiqa/jax,XLA_PYTHON_CLIENT_MEM_FRACTION=0.95",
         "jaxbiqa", "train", "--set", "output_dir=/s/r"]]
    env = {"SLURM_RESTART_COUNT": "1", "JAXBIQA_CACHE_DIR": "/shared/cache", "JAXBIQA_MEM_FRACTION": "0.8"}
    requeued = run("slurm.sbatch", "--dry-run", "jaxbiqa", "train", env=env)
    assert lines(requeued) == [[*srun, "--export=ALL,JAX_COMPILATION_CACHE_DIR=/shared/cache,"
                                       "XLA_PYTHON_CLIENT_MEM_FRACTION=0.8", "jaxbiqa", "train", "--resume"]]
    outside = run("slurm.sbatch", "jaxbiqa", "train")
    assert outside.returncode == 2 and "submit it with sbatch" in outside.stderr


def _ssh(node: str, command: str, where: tuple[str, ...] = ("--zone=us-east5-a",)) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, *where, "--worker=all", "--command", command]


SETUP = ("mkdir -p ~/jaxbiqa && tar -xzf ~/jaxbiqa.tgz -C ~/jaxbiqa && cd ~/jaxbiqa && python3 -m venv .venv "
         "&& .venv/bin/pip install -q -e '.[gcs]' 'jax[tpu]'")


def _run_on_workers(command: str, cache: str = "$HOME/.cache/jaxbiqa/jax") -> str:
    return (f"cd ~/jaxbiqa && export JAXBIQA_DISTRIBUTED=on JAX_COMPILATION_CACHE_DIR={cache} && "
            f". .venv/bin/activate && {command}")


def test_tpu_pod_dry_run_for_a_new_slice():
    result = run("tpu_pod.sh", "--name", "biqa", "--zone", "us-east5-a", "--type", "v5p-32", "--spot", "--src", "/src",
                 "--dry-run", "--", "jaxbiqa", "train", "--config", "humaniqa", "--set", "output_dir=gs://b/run 1")
    assert lines(result) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "create", "biqa", "--zone=us-east5-a", "--accelerator-type=v5p-32",
         "--version=v2-alpha-tpuv5", "--spot"],
        ["tar", "--exclude=.venv", "--exclude=.git", "--exclude=runs", "--exclude=*.egg-info", "-czf",
         "/tmp/jaxbiqa-biqa.tgz", "-C", "/src", "."],
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/jaxbiqa-biqa.tgz", "biqa:jaxbiqa.tgz", "--zone=us-east5-a",
         "--worker=all"],
        _ssh("biqa", SETUP),
        _ssh("biqa", _run_on_workers("jaxbiqa train --config humaniqa --set 'output_dir=gs://b/run 1'")),
    ]


def test_tpu_pod_dry_run_for_queued_multislice_installed_with_pip():
    result = run("tpu_pod.sh", "--name", "biqa", "--zone", "us-west4-a", "--type", "v5litepod-64", "--slices", "2",
                 "--pip", "jaxbiqa==0.1.0", "--cache-dir", "gs://b/cache", "--project", "p", "--delete", "--dry-run",
                 "--", "jaxbiqa", "train")
    where = ("--zone=us-west4-a", "--project=p")
    pip = "python3 -m venv ~/jaxbiqa/.venv && ~/jaxbiqa/.venv/bin/pip install -q jaxbiqa==0.1.0 'jax[tpu]'"
    ssh = functools.partial(_ssh, where=where)
    assert lines(result) == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", "biqa", *where, "--accelerator-type=v5litepod-64",
         "--runtime-version=v2-alpha-tpuv5-lite", "--node-count=2", "--node-prefix=biqa"],
        ssh("biqa-0", pip), ssh("biqa-1", pip),
        ssh("biqa-0", _run_on_workers("jaxbiqa train", "gs://b/cache")),
        ssh("biqa-1", _run_on_workers("jaxbiqa train", "gs://b/cache")),
        ["gcloud", "compute", "tpus", "queued-resources", "delete", "biqa", *where, "--force", "--quiet"],
    ]


@pytest.mark.parametrize("args, message", [
    (["--zone", "z", "--type", "v5p-8"], "--name, --zone and --type are required"),
    (["--name", "n", "--zone", "z", "--type", "v4-8"], "no default --version"),
    (["--name", "n", "--zone", "z", "--type", "v5p-8", "--slices", "0"], "--slices must be >= 1"),
    (["--name", "n", "--zone", "z", "--type", "v5p-8", "--bogus"], "unknown option '--bogus'"),
])
def test_tpu_pod_bad_arguments(args, message):
    result = run("tpu_pod.sh", *args, "--dry-run", "--", "cmd")
    assert result.returncode == 2 and message in result.stderr


# ---------------------------------------------------------------- tpu_pod.sh against a stand-in gcloud

FAKE_GCLOUD = textwrap.dedent("""\
    #!{python}
    # A TPU VM for tpu_pod.sh: describe / create / delete keep its state in a file; the first run
    # of the training command finds the TPU pre-empted (or, with FAIL_HEALTHY, fails on a healthy one).
    import os, sys
    from pathlib import Path
    home = Path(os.environ["FAKE_GCLOUD_DIR"])
    state = home / "state"
    with open(home / "calls", "a") as log:
        log.write(repr(sys.argv[1:]) + "\\n")
    verb = sys.argv[4]  # gcloud compute tpus tpu-vm VERB ...
    if verb == "describe":
        if not state.exists():
            sys.exit(1)
        print(state.read_text())
    elif verb == "create":
        state.write_text("READY")
    elif verb == "delete":
        state.unlink()
    elif verb == "ssh" and "jaxbiqa train" in sys.argv[-1]:
        runs = home / "runs"
        runs.write_text(str(int(runs.read_text()) + 1) if runs.exists() else "1")
        if os.environ.get("FAIL_HEALTHY"):
            sys.exit(7)
        if runs.read_text() == "1":  # pre-empted: the TPU is left PREEMPTED, or gone altogether
            state.unlink() if os.environ.get("PREEMPT_DELETES") else state.write_text("PREEMPTED")
            sys.exit(255)
""")


@pytest.fixture
def fake_gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
    gcloud.chmod(0o755)
    src = tmp_path / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_GCLOUD_DIR": str(tmp_path),
           "TMPDIR": str(tmp_path)}
    args = ["--name", "biqa", "--zone", "z", "--type", "v5p-32", "--src", str(src), "--", "jaxbiqa", "train"]
    return tmp_path, env, args


def _calls(home: Path) -> list[list[str]]:
    import ast
    return [ast.literal_eval(line) for line in (home / "calls").read_text().splitlines()]


def test_tpu_pod_recreates_a_preempted_tpu_and_resumes(fake_gcloud):
    home, env, args = fake_gcloud
    result = run("tpu_pod.sh", *args, env=env)
    assert result.returncode == 0, result.stderr
    verbs = [c[3] for c in _calls(home)]
    assert verbs == ["describe", "create", "scp", "ssh", "ssh",  # a new TPU, set up, the run is pre-empted
                     "describe", "delete", "create", "scp", "ssh", "ssh"]  # recreated, set up, run again
    runs = [c[-1] for c in _calls(home) if c[3] == "ssh" and "jaxbiqa train" in c[-1]]
    assert runs[0].endswith("jaxbiqa train") and runs[1].endswith("jaxbiqa train --resume")
    assert "pre-empted" in result.stderr


def test_tpu_pod_recreates_a_tpu_that_disappeared(fake_gcloud):
    home, env, args = fake_gcloud
    result = run("tpu_pod.sh", *args, env={**env, "PREEMPT_DELETES": "1"})
    assert result.returncode == 0, result.stderr
    assert [c[3] for c in _calls(home)] == ["describe", "create", "scp", "ssh", "ssh",
                                            "describe", "create", "scp", "ssh", "ssh"]  # nothing left to delete


def test_tpu_pod_reuses_a_ready_tpu_and_reports_a_real_failure(fake_gcloud):
    home, env, args = fake_gcloud
    (home / "state").write_text("READY")
    result = run("tpu_pod.sh", "--skip-setup", *args, env={**env, "FAIL_HEALTHY": "1"})
    assert result.returncode == 7 and "failed with status 7 on a healthy TPU" in result.stderr
    assert [c[3] for c in _calls(home)] == ["describe", "ssh", "describe"]  # no create, no restart


def test_dry_runs_call_nothing(fake_gcloud):
    home, env, args = fake_gcloud
    assert run("tpu_pod.sh", "--dry-run", *args, env=env).returncode == 0
    assert not (home / "calls").exists()


# ---------------------------------------------------------------- local_cluster.sh process handling

def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_local_cluster_stops_the_others_when_one_fails(tmp_path):
    script = ("import os, sys, time; i = os.environ['JAXBIQA_PROCESS_ID']; "
              f"open(os.path.join({str(tmp_path)!r}, 'pid' + i), 'w').write(str(os.getpid())); "
              "time.sleep(0.5) if i == '1' else time.sleep(60); sys.exit(3)")
    start = time.monotonic()
    result = run("local_cluster.sh", "-n", "2", "-d", "1", "--", sys.executable, "-c", script, timeout=30)
    assert result.returncode == 3 and "exited with status 3" in result.stderr
    assert time.monotonic() - start < 15  # did not wait for the sleeper
    assert _gone(int((tmp_path / "pid0").read_text()))


def test_local_cluster_time_limit(tmp_path):
    start = time.monotonic()
    result = run("local_cluster.sh", "-n", "2", "-t", "2", "--", "sleep", "60", timeout=30)
    assert result.returncode == 124 and "time limit of 2s" in result.stderr
    assert time.monotonic() - start < 10


def test_local_cluster_prefixes_output_and_passes_the_environment():
    script = ("import os; e = os.environ; "
              "print(e['JAXBIQA_PROCESS_ID'], e['JAXBIQA_NUM_PROCESSES'], e['XLA_FLAGS'])")
    result = run("local_cluster.sh", "-n", "2", "-d", "3", "--", sys.executable, "-c", script)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [
        f"[{i}] {i} 2 --xla_force_host_platform_device_count=3" for i in range(2)]
