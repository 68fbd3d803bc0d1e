"""Training on several nodes for real: two `core train` launchers ("nodes", one process each) meet
through torchrun's c10d rendezvous on loopback and match one process on the concatenated batch
(DDP and FSDP2); a node whose partner never comes stops after the rendezvous timeout with one
message; a killed worker is restarted by torchrun (--max-restarts) and resumes; the Slurm and
Kubernetes templates produce the right torchrun command for their environment."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.weights import load_checkpoint
from tests.core.test_train_distributed import assert_matches_one_process, single_process

REPO = Path(__file__).resolve().parents[2]
NODE = ["train.num_epochs=1", "train.num_gpus=1", "train.num_nodes=2", "dataset.train.type=synthetic_fixed"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def core(training, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "core.cli.main", *args], env=training.env(**env), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rendezvous(tmp_path: Path) -> dict[str, str]:
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RDZV_ID": tmp_path.name}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_nodes_match_one_process_on_the_global_batch(strategy, tmp_path, training):
    spec = training.write_spec(tmp_path / "tiny.toml", tmp_path / "unused")
    env = rendezvous(tmp_path)
    args = ["train", "-c", str(spec), *NODE, f"train.distributed_strategy={strategy}",
            f"results_dir={tmp_path / 'nodes'}"]
    nodes = [core(training, *args, **env) for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    extra = ["train.distributed_strategy=fsdp"] if strategy == "fsdp" else []
    reference = single_process(training, tmp_path / "one", *extra)
    assert_matches_one_process(tmp_path / "nodes" / "train", tmp_path / "one" / "train", reference)


def test_a_node_whose_partner_never_comes_stops_with_one_message(tmp_path, training):
    spec = training.write_spec(tmp_path / "tiny.toml", tmp_path / "unused")
    node = core(training, "train", "-c", str(spec), *NODE, "train.rdzv_timeout=5", **rendezvous(tmp_path))
    output = node.communicate(timeout=120)[0]
    text = " ".join(output.split())
    assert node.returncode == 2, output[-3000:]
    assert "train failed in a torchrun worker" in text and "check that 2 nodes run this command (train.num_nodes)" in text
    assert "a node waits 5 s (train.rdzv_timeout)" in text


def test_a_killed_worker_is_restarted_and_resumes(tmp_path, training):
    spec = training.write_spec(tmp_path / "tiny.toml", tmp_path / "unused")
    node = core(training, "train", "-c", str(spec), "train.num_epochs=4", "train.num_gpus=2", "train.max_restarts=1",
                "train.loss_type=killed_once", "train.checkpoint_interval=2", "train.checkpoint_interval_unit=step",
                "train.resume_training_checkpoint_path=auto", "dataset.train.type=synthetic_fixed",
                f"results_dir={tmp_path}")
    output = node.communicate(timeout=300)[0]
    assert node.returncode == 0, output[-3000:]
    out = tmp_path / "train"
    assert load_checkpoint(out / "latest.pth")["train_state"]["step"] == 8
    log = (out / "logs" / "rank0.log").read_text()
    assert log.count("RESUMING from") == 1
    steps = [int(line.split()[4].rstrip(":")) for line in log.splitlines() if ": loss on this rank" in line]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]


# --------------------------------------------------------------------------- job templates
def printed_command(training, tmp_path: Path, argv: list[str], env: dict[str, str]) -> list[str]:
    """The torchrun command `core train --print-command` prints for ``argv`` under ``env``."""
    done = subprocess.run(argv, env={**training.env(), **env}, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return shlex.split(done.stdout.strip().splitlines()[-1])


def shim(tmp_path: Path, name: str, body: str) -> None:
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def test_the_slurm_template_launches_one_node_of_the_job(tmp_path, training):
    spec = training.write_spec(tmp_path / "tiny.toml", tmp_path / "unused")
    shim(tmp_path, "scontrol", 'echo gpu-a17; echo gpu-a18\n')                       # show hostnames
    shim(tmp_path, "srun", 'while [[ $1 == --* ]]; do shift; done; exec "$@"\n')     # run the step here
    shim(tmp_path, "core", f'exec {sys.executable} -m core.cli.main "$@"\n')
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-a[17-18]",
           "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "8", "SLURM_JOB_ID": "4242"}
    cmd = printed_command(training, tmp_path, ["bash", str(REPO / "examples/slurm/train.sbatch"), str(spec),
                                               "--print-command"], env)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nproc_per_node=8", "--nnodes=2", "--max-restarts=2", "--rdzv-backend=c10d",
            "--rdzv-endpoint=gpu-a17:29500", "--rdzv-id=4242"} <= set(cmd)
    worker = cmd[cmd.index("core.train") - 1:]
    assert worker[:4] == ["-m", "core.train", "--config", str(spec)]
    assert {"train.num_nodes=2", "train.num_gpus=8", "train.resume_training_checkpoint_path=auto"} <= set(worker)


def test_the_kubernetes_pytorchjob_launches_one_node_of_the_job(tmp_path, training):
    job = yaml.safe_load((REPO / "examples/kubernetes/pytorchjob.yaml").read_text())
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert sum(r["replicas"] for r in replicas.values()) == 2
    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert container == replicas["Master"]["template"]["spec"]["containers"][0]
    spec = training.write_spec(tmp_path / "clip.toml", tmp_path / "unused")
    command = [sys.executable, "-m", "core.cli.main", *container["command"][1:], *container["args"]]
    command[command.index("/spec/clip.toml")] = str(spec)
    command[command.index("results_dir=/results/shelf")] = f"results_dir={tmp_path / 'results'}"
    operator_env = {"MASTER_ADDR": "clipcore-shelf-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "2",
                    "RANK": "1", **{e["name"]: e["value"] for e in container["env"]}}
    cmd = printed_command(training, tmp_path, [*command, "--print-command"], operator_env)
    assert {"--nproc_per_node=8", "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=clipcore-shelf-master-0:23456",
            "--rdzv-id=clipcore-shelf", "--max-restarts=2"} <= set(cmd)
    assert f"results_dir={tmp_path / 'results'}" in cmd
