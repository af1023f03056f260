"""Several machines under torchrun, simulated on loopback: two torchrun agents (`--nnodes 2
--nproc-per-node 1`, c10d rendezvous on 127.0.0.1) are two "nodes". They must train what one process
with the doubled batch trains, score every dev example once, survive a SIGKILLed worker under
--max-restarts by resuming from the last checkpoint (ending bit-identical to an uninterrupted run),
refuse a run directory the other node cannot see, and refuse a resume that changes the global batch.

Every agent runs in its own session with a bounded timeout; a test that times out kills its agents."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from nanoft.weights.safetensors_io import SafetensorsFile

TIMEOUT = 300  # seconds for one torchrun job (two agents); the machine may be shared and slow
WALL_CLOCK = ("examples_per_s",)  # metrics.jsonl fields that measure time, not training

# The worker torchrun starts: `nanoft train` itself, plus two test hooks. Every start of a rank appends
# the step its trainer starts from to marks/rank<R>.jsonl; with TEST_PAUSE_AT=k the rank-1 worker stops
# after step k and sleeps (once per marks folder), so the test can SIGKILL it at a known point; with
# TEST_SIGTERM_AT=k it sends itself SIGTERM after step k instead (a signal that reached one rank only).
WORKER = """
import json, os, signal, sys, time
from nanoft.train.trainer import Trainer

marks = os.environ["TEST_MARKS"]
pause_at = int(os.environ.get("TEST_PAUSE_AT", "0"))
term_at = int(os.environ.get("TEST_SIGTERM_AT", "0"))
rank = int(os.environ.get("RANK", 0))
init, train_step = Trainer.__init__, Trainer.train_step

def recorded_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    with open(os.path.join(marks, f"rank{rank}.jsonl"), "a") as f:
        f.write(json.dumps({"start_step": self.step, "resume": self.config.resume,
                            "overwrite": self.config.overwrite}) + "\\n")

def pausing_step(self, group):
    stats = train_step(self, group)
    if self.step == pause_at and rank == 1 and not os.path.exists(os.path.join(marks, "paused")):
        open(os.path.join(marks, "paused"), "w").close()
        time.sleep(120)  # the test kills this process now
    if self.step == term_at and rank == 1 and not os.path.exists(os.path.join(marks, "termed")):
        open(os.path.join(marks, "termed"), "w").close()
        os.kill(os.getpid(), signal.SIGTERM)
    return stats

Trainer.__init__, Trainer.train_step = recorded_init, pausing_step
sys.argv = ["nanoft", "train"] + sys.argv[1:]
from nanoft.cli import main
main()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(marks: Path, **extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHELASTIC_", "RANK", "WORLD_SIZE"))}
    env.update(OMP_NUM_THREADS="1", TEST_MARKS=str(marks), PYTHONUNBUFFERED="1", **extra)
    return env


def start_nodes(script: Path, args: List[str], env: Dict[str, str], cwds: List[Path], max_restarts: int = 0,
                nodes: int = 2) -> List[subprocess.Popen]:
    """`nodes` torchrun agents, one process each, meeting at a c10d rendezvous on a free loopback port."""
    port, run_id = free_port(), uuid.uuid4().hex[:12]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id,
               "--max-restarts", str(max_restarts), "--monitor-interval", "0.2", str(script), *args]
    return [subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True) for cwd in cwds]


def finish(agents: List[subprocess.Popen], timeout: float = TIMEOUT) -> List[subprocess.CompletedProcess]:
    """Wait for every agent (killing all their processes past `timeout`); their exit codes and output."""
    deadline, results = time.monotonic() + timeout, []
    try:
        for agent in agents:
            out, _ = agent.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append(subprocess.CompletedProcess(agent.args, agent.returncode, out))
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait()
    return results


def train_args(tiny_task, dev: Path, output: str, model: str, batch_size: int, **options) -> List[str]:
    values = dict(train_file=tiny_task["data"] / "train.tsv", dev_file=dev, model=tiny_task[model],
                  batch_size=batch_size, output=output, max_steps=8, lr=1e-3, max_length=32, precision="fp32",
                  seed=0, sampler="random", eval_every=4, eval_batch_size=4, log_every=1, **options)
    args = ["--quiet"]
    for key, value in values.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def metrics(run: Path) -> List[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in records]


def flat(record: dict, prefix: str = "") -> dict:
    """{"eval": {"dev": {"loss": x}}} → {"eval.dev.loss": x}, for pytest.approx."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def weights(run: Path) -> Dict[str, torch.Tensor]:
    f = SafetensorsFile(run / "checkpoint" / "model.safetensors")
    return {k: f.tensor(k).clone() for k in f.keys()}


@pytest.fixture(scope="module")
def cluster(tiny_task, tmp_path_factory):
    """Runs shared by the tests: one process with batch 16 and two nodes × batch 8 (dropout 0), and two
    nodes with dropout (each rank draws its own masks), all on a dev set of 37 (odd: ranks score unequal
    shares)."""
    root = tmp_path_factory.mktemp("cluster")
    dev = root / "dev.tsv"
    rows = (tiny_task["data"] / "train.tsv").read_text().splitlines()
    dev.write_text("\n".join(rows[:38]) + "\n")  # header + 37 rows
    script = root / "worker.py"
    script.write_text(WORKER)
    marks = root / "marks"
    marks.mkdir()
    env = env_for(marks)
    one = subprocess.run([sys.executable, str(script), *train_args(tiny_task, dev, str(root / "one"), "model_nodrop", 16)],
                         env=env, cwd=root,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert one.returncode == 0, one.stdout + one.stderr
    two = finish(start_nodes(script, train_args(tiny_task, dev, str(root / "two"), "model_nodrop", 8), env, [root] * 2))
    assert all(r.returncode == 0 for r in two), "\n".join(r.stdout for r in two)
    common = train_args(tiny_task, dev, str(root / "drop"), "model", 8, checkpoint_every=3)
    drop = finish(start_nodes(script, common, env, [root] * 2))
    assert all(r.returncode == 0 for r in drop), "\n".join(r.stdout for r in drop)
    return {"root": root, "dev": dev, "script": script, "one": root / "one", "two": root / "two",
            "drop": root / "drop"}


@pytest.mark.slow
def test_two_nodes_train_what_one_process_with_the_doubled_batch_trains(cluster, tiny_task):
    one, two = weights(cluster["one"]), weights(cluster["two"])
    assert one.keys() == two.keys()
    start = SafetensorsFile(tiny_task["model_nodrop"] / "model.safetensors")
    assert max(float((two[k] - start.tensor(k)).abs().max()) for k in two) > 1e-3  # training moved the weights
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-6, rtol=0, msg=key)
    m1, m2 = metrics(cluster["one"]), metrics(cluster["two"])
    assert len(m1) == len(m2) == 8 + 2  # a record per step and per evaluation
    for a, b in zip(m1, m2):
        assert flat(a).keys() == flat(b).keys()
        assert flat(b) == pytest.approx(flat(a), rel=1e-5, abs=1e-6), (a, b)
    launch = json.loads((cluster["two"] / "launch.json").read_text())
    assert launch["world_size"] == 2 and launch["nodes"] == 2 and launch["restart_count"] == 0
    results = json.loads((cluster["two"] / "results.json").read_text())
    assert results["world_size"] == 2


@pytest.mark.slow
def test_two_nodes_score_every_dev_example_exactly_once(cluster, tiny_task):
    """The last evaluation (step 8, the final weights) against an independent one: each of the 37 dev
    examples alone through the saved model. A dropped or doubled example would change loss and accuracy."""
    import torch.nn.functional as F

    import nanoft
    from nanoft.weights import load_tokenizer

    run = cluster["drop"]
    logged = [r["eval"]["dev"] for r in metrics(run) if "eval" in r][-1]
    model = nanoft.load_model(run / "checkpoint", head="classification", num_labels=2).eval()
    tokenizer = load_tokenizer(run / "checkpoint")
    rows = [line.split("\t") for line in cluster["dev"].read_text().splitlines()[1:]]
    assert len(rows) == 37
    losses, correct = [], 0
    with torch.no_grad():
        for text, label in rows:
            ids, types = tokenizer.encode(text, max_length=32)
            logits = model(torch.tensor([ids]), token_type_ids=torch.tensor([types]))
            losses.append(float(F.cross_entropy(logits, torch.tensor([int(label)]))))
            correct += int(logits.argmax(-1).item() == int(label))
    assert logged["accuracy"] == correct / 37
    assert logged["loss"] == pytest.approx(sum(losses) / 37, rel=1e-5)


def worker_pids(run_id_env: str, rank: int) -> List[int]:
    """Processes (scanned in /proc) whose environment holds this job's torchrun run id and RANK=`rank`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"TORCHELASTIC_RUN_ID={run_id_env}".encode() in environ and f"RANK={rank}".encode() in environ:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_a_killed_worker_restarts_and_resumes_bit_identical(cluster, tiny_task):
    """max_steps 8, checkpoints at 3, 4 (evaluation), 6, 8; rank 1 is SIGKILLed after step 5 of the first
    attempt. torchrun restarts both nodes; they resume from step 4 with no --resume flag, replay step 5,
    and end with exactly the weights and metrics of the uninterrupted run."""
    root = cluster["root"]
    marks = root / "marks-restart"
    marks.mkdir()
    env = env_for(marks, TEST_PAUSE_AT="5")
    args = train_args(tiny_task, cluster["dev"], str(root / "restart"), "model", 8, checkpoint_every=3)
    agents = start_nodes(cluster["script"], args, env, [root] * 2, max_restarts=1)
    run_id = agents[0].args[agents[0].args.index("--rdzv-id") + 1]
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (marks / "paused").exists():
            assert time.monotonic() < deadline and all(a.poll() is None for a in agents), "never reached step 5"
            time.sleep(0.1)
        victims = worker_pids(run_id, rank=1)
        assert len(victims) == 1, victims
        os.kill(victims[0], signal.SIGKILL)
    finally:
        results = finish(agents)
    output = "\n".join(r.stdout for r in results)
    assert all(r.returncode == 0 for r in results), output
    for rank in (0, 1):  # each rank started twice: fresh, then resumed from step 4 without a flag
        starts = [json.loads(line) for line in (marks / f"rank{rank}.jsonl").read_text().splitlines()]
        assert starts == [{"start_step": 0, "resume": False, "overwrite": False},
                          {"start_step": 4, "resume": True, "overwrite": False}], rank
    expected, got = weights(cluster["drop"]), weights(root / "restart")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert metrics(root / "restart") == metrics(cluster["drop"])
    assert json.loads((root / "restart" / "launch.json").read_text())["restart_count"] == 1


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(cluster, tiny_task):
    """SIGTERM reaches rank 1 alone after step 5: both ranks agree to stop there, rank 0 saves a checkpoint
    of step 5 and both say so; `--resume` on two nodes then ends exactly like the uninterrupted run."""
    root = cluster["root"]
    args = train_args(tiny_task, cluster["dev"], str(root / "term"), "model", 8, checkpoint_every=3)
    marks = root / "marks-term"
    marks.mkdir()
    stopped = finish(start_nodes(cluster["script"], args, env_for(marks, TEST_SIGTERM_AT="5"), [root] * 2))
    assert all(r.returncode != 0 for r in stopped)
    lines = [line for r in stopped for line in r.stdout.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and all("interrupted at step 5; checkpoint saved" in line for line in lines), lines
    state = json.loads((root / "term" / "checkpoint" / "trainer_state.json").read_text())
    assert state["state"]["step"] == 5
    resumed = finish(start_nodes(cluster["script"], args + ["--resume"], env_for(marks), [root] * 2))
    assert all(r.returncode == 0 for r in resumed), "\n".join(r.stdout for r in resumed)
    expected, got = weights(cluster["drop"]), weights(root / "term")
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert metrics(root / "term") == metrics(cluster["drop"])


@pytest.mark.slow
def test_a_node_that_cannot_see_the_run_directory_stops_every_rank(cluster, tiny_task, tmp_path):
    """Each node runs in its own folder with a relative --output: the same path names two different
    folders, as on machines without shared storage. Both ranks stop with one line naming the blind one."""
    cwds = [tmp_path / "node-a", tmp_path / "node-b"]
    for cwd in cwds:
        cwd.mkdir()
    args = train_args(tiny_task, cluster["dev"], "run", "model_nodrop", 8)
    results = finish(start_nodes(cluster["script"], args, env_for(tmp_path), cwds))
    assert all(r.returncode != 0 for r in results)
    lines = [line for r in results for line in r.stdout.splitlines() if line.startswith("error:")]
    assert len(lines) == 2, "\n".join(r.stdout for r in results)  # one line per rank
    for line in lines:
        assert "rank 1 (host" in line and "cannot see rank 0's run directory" in line
        assert "storage every machine mounts at the same path" in line
    assert sorted((cwd / "run").is_dir() for cwd in cwds) == [False, True]  # only rank 0's node has one


@pytest.mark.slow
def test_a_check_that_fails_on_rank_0_stops_every_rank(cluster, tiny_task):
    """An existing run without --overwrite/--resume: rank 0 alone can tell, every rank must stop with its
    line (not wait in the next collective until the timeout)."""
    args = train_args(tiny_task, cluster["dev"], str(cluster["two"]), "model_nodrop", 8)
    results = finish(start_nodes(cluster["script"], args, env_for(cluster["root"]), [cluster["root"]] * 2),
                     timeout=TIMEOUT)
    assert all(r.returncode != 0 for r in results)
    lines = [line for r in results for line in r.stdout.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and all("run directory already exists" in line for line in lines), lines


# ------------------------------------------------------------------ in-process: resume geometry and restarts
def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock"))
    return target


@pytest.mark.slow
def test_a_resume_on_another_world_size_must_keep_the_global_batch(cluster, tiny_task, tiny_config, tmp_path):
    """The two-node run (8 per process × 2) resumed by one process: batch 8 changes the global batch and
    is refused; batch 16 keeps it and continues on the same global batches as the one-process run."""
    from nanoft.errors import ConfigError
    from nanoft.train import Trainer

    two, one = copy_run(cluster["two"], tmp_path / "two"), copy_run(cluster["one"], tmp_path / "one")
    config = tiny_config(model=str(tiny_task["model_nodrop"]), max_steps=12, lr=1e-3, sampler="random",
                         eval_every=4, eval_batch_size=4, dev_file=str(cluster["dev"]), resume=True)
    with pytest.raises(ConfigError, match=r"cannot resume on 1 process\(es\): the global batch_size .* was "
                                          r"8 × 2 = 16, now 8 × 1 = 8 .*--batch-size 16"):
        Trainer(config.replace(output=str(two), batch_size=8))
    Trainer(config.replace(output=str(two), batch_size=16)).fit()
    Trainer(config.replace(output=str(one), batch_size=16)).fit()
    a, b = weights(two), weights(one)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)
    assert [r["step"] for r in metrics(two)] == [r["step"] for r in metrics(one)]
    launch = json.loads((two / "launch.json").read_text())
    assert launch["world_size"] == 1 and launch["batch_size"] == 16  # the next resume compares with these


def elastic_env(monkeypatch, run_id: str, attempt: int) -> None:
    """What torchrun sets in a one-process job: this attempt's restart count and the job's run id."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", run_id)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(attempt))


@pytest.mark.slow
def test_a_restarted_attempt_resumes_without_a_flag(tiny_config, tmp_path, monkeypatch):
    from nanoft.train import Trainer

    reference = Trainer(tiny_config(output=str(tmp_path / "ref"), max_steps=6, eval_every=3)).fit()
    elastic_env(monkeypatch, "job", 0)
    config = tiny_config(max_steps=6, eval_every=3)
    Trainer(config).fit(stop_at_step=4)  # a checkpoint at 4 (like a process that died right after it)
    with open(Path(config.output) / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.0}\n')  # logged after the checkpoint by the dead attempt
    elastic_env(monkeypatch, "job", 1)
    restarted = Trainer(config)
    assert restarted.step == 4 and restarted.config.resume
    results = restarted.fit()
    assert results["best"] == reference["best"]
    assert metrics(Path(config.output)) == metrics(tmp_path / "ref")
    a, b = weights(Path(config.output)), weights(tmp_path / "ref")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_restart_before_any_checkpoint_starts_over(tiny_config, tmp_path, monkeypatch):
    from nanoft.train import Trainer

    config = tiny_config(max_steps=3)
    elastic_env(monkeypatch, "job", 0)
    Trainer(config).fit(stop_at_step=2)
    run = Path(config.output)
    shutil.rmtree(run / "checkpoint")  # the dead attempt never completed a checkpoint
    elastic_env(monkeypatch, "job", 1)
    restarted = Trainer(config)
    assert restarted.step == 0 and restarted.config.overwrite and not restarted.config.resume
    restarted.fit()
    assert [r["step"] for r in metrics(run) if "eval" not in r] == [1, 2, 3]


def test_a_restart_of_another_job_keeps_the_command_flags(tiny_config, monkeypatch):
    """launch.json from another torchrun job (or an attempt that died before opening the run): the restart
    is treated as what the command says, so an existing run is not silently continued or replaced."""
    from nanoft.errors import ConfigError
    from nanoft.train import Trainer

    config = tiny_config(max_steps=2)
    elastic_env(monkeypatch, "old-job", 0)
    Trainer(config).fit()
    elastic_env(monkeypatch, "new-job", 1)
    with pytest.raises(ConfigError, match="run directory already exists"):
        Trainer(config)


def test_a_restarted_rank_0_waits_for_a_lingering_lock(tmp_path):
    """A lock still held (a crashed machine's, until the NFS lease ends) is waited for, then taken."""
    import threading

    from nanoft.train import elastic
    from nanoft.train.rundir import RunDir

    holder = RunDir(tmp_path / "run")
    holder.open(clear=False)
    waiting = RunDir(tmp_path / "run")
    assert waiting.lock_holder() is not None
    assert elastic.wait_for_lock(waiting, timeout=0) is False  # still held: no wait left, reported as such
    threading.Timer(0.5, holder.close).start()
    assert elastic.wait_for_lock(waiting, timeout=30) is True  # freed by the holder, not given up on
    assert waiting.lock_holder() is None
