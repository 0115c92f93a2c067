"""Many processes, one run (CPU, gloo, torchrun): N processes compute what one process computes.

Each torchrun job here is checked against an in-process single-process run of the same recipe and
seed: per-step losses, final weights, metrics, FLOPs and the bill's energy. dropout is off in the
digits jobs: each rank draws its own dropout masks (rank r's stream is seeded from (seed, r)), so with
dropout 2 processes cannot draw the mask one process draws for the same batch (see docs/scaling.md).
The jobs are few and tiny (a few dozen steps); every subprocess has a timeout, and every process a
job started is killed if a test fails (torchrun starts its workers in sessions of their own).
"""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import powertrain
from powertrain.train import distributed
from powertrain.run.rundir import RunDir
from powertrain.errors import RecipeError
from powertrain.measure import EnergyBackend

DIGITS = ["digits-mlp", "model.dropout=0", "train.max_steps=24", "train.log_every=1", "train.checkpoint_every_steps=8",
          "train.device=cpu"]  # these jobs are CPU/gloo ones on any machine (the GPU tier: tests/test_gpu_tier.py)
# 1293 train samples, batch 64: an epoch is 21 steps, the last of 13 samples (shares of 7 and 6: unequal)
GPT = """name: gpt-tiny
data: {name: text, max_chars: 20000, block_size: 32, val_fraction: 0.1}
model: {name: gpt, n_layer: 2, n_head: 2, n_embd: 32}
train: {max_steps: 18, batch_size: 16, eval_batch_size: 64, optimizer: adamw, lr: 3.0e-3, weight_decay: 0.1,
        grad_clip: 1.0, warmup_steps: 2, log_every: 1, checkpoint_every_steps: 6, device: cpu}
"""  # a constant LR after warmup: a run stopped at step 6 or 12 and resumed with more max_steps trains as one of 18
FAKE_NODE_J = 100.0  # the fake node counter: 100 J more at every reading

SITECUSTOMIZE = """
import os
if os.environ.get("PT_TEST_FAKE_NODE"):  # one energy counter per node, like RAPL: 100 J per reading
    import powertrain.measure.meter as meter
    from powertrain.measure.energy.base import EnergyBackend

    class FakeNode(EnergyBackend):
        name, scope = "fake-node", "node"

        def __init__(self):
            super().__init__()
            self.methods, self.readings_taken = {"node": "measured:fake"}, 0

        def snapshot(self):
            self.readings_taken += 1
            return {"node": 100.0 * self.readings_taken}

    meter.detect_backends = lambda *a, **k: ([FakeNode()], [])
if os.environ.get("PT_TEST_WATCH"):  # record each file operation of this rank under the run directory
    import sys
    watched, record = os.environ["PT_TEST_WATCH"], f"{os.environ['PT_TEST_AUDIT']}-rank{os.environ.get('RANK', 'x')}"

    def audit(event, args):
        if event in ("open", "os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.listdir",
                     "os.scandir", "shutil.rmtree") and args and str(args[0]).startswith(watched):
            with open(record, "a") as f:
                f.write(f"{event} {args[0]}\\n")

    sys.addaudithook(audit)
if os.environ.get("PT_TEST_SLOW_S"):  # so that a kill lands mid-run
    import time
    from powertrain.train.engine import Trainer
    step, pause = Trainer.train_step, float(os.environ["PT_TEST_SLOW_S"])
    Trainer.train_step = lambda self, batch: (time.sleep(pause), step(self, batch))[1]
"""


class FakeNode(EnergyBackend):
    """The same fake counter for the in-process reference runs."""
    name, scope = "fake-node", "node"

    def __init__(self):
        super().__init__()
        self.methods, self.readings_taken = {"node": "measured:fake"}, 0

    def snapshot(self):
        self.readings_taken += 1
        return {"node": FAKE_NODE_J * self.readings_taken}


# ---------------------------------------------------------------- in one process (first: later tests leave a
# process group of one behind, as `powertrain train` with strategy fsdp does)
def test_strategy_from_environment(monkeypatch):
    assert distributed.setup("auto") == distributed.SINGLE
    monkeypatch.setenv("WORLD_SIZE", "2")
    if not torch.distributed.is_initialized():
        with pytest.raises(RecipeError, match="train.strategy: single, but this job has 2 processes"):
            distributed.setup("single")
    with pytest.raises(RecipeError, match="strategy"):
        powertrain.load_recipe("digits-mlp", ["train.strategy=dp"])


@pytest.mark.parametrize("loader", [False, True])
@pytest.mark.parametrize("n,batch,world", [(1293, 64, 2), (100, 32, 3), (10, 4, 3), (7, 8, 2)])
def test_shards_are_disjoint_and_cover_each_global_batch(n, batch, world, loader):
    """Every rank's share of every global batch, from `start` on; together exactly the batch, in order.
    (A DataLoader split loads only the rank's own samples; an in-memory split slices the batch.)"""
    from torch.utils.data import TensorDataset

    from powertrain.data import LoaderSplit, TensorSplit

    split = LoaderSplit(TensorDataset(torch.arange(n))) if loader else TensorSplit(torch.arange(n))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    for start in (0, 1):
        per_rank = [list(distributed.shard_batches(split, order, batch, start, r, world)) for r in range(world)]
        expected = list(TensorSplit(torch.arange(n)).batches(order, batch, start))
        assert all(len(shares) == len(expected) for shares in per_rank)  # every rank steps as often
        for k, ref in enumerate(expected):
            shares = [per_rank[r][k] for r in range(world)]
            assert all(g == len(ref[0]) for _, _, g in shares)
            assert torch.equal(torch.cat([b[0][:m] for b, m, _ in shares]), ref[0])


def test_activation_checkpointing_recomputes_each_block(gpt):
    """With it, each block runs its forward again in backward; losses and gradients are unchanged."""
    from powertrain import data, models

    root, _ = gpt
    recipe = powertrain.load_recipe(str(root / "gpt-tiny.yaml"))
    bundle = data.build(recipe.data.model_dump(), seed=0)
    grads, calls = [], []
    for on in (False, True):
        torch.manual_seed(0)
        model = models.build(recipe.model.model_dump(), bundle.meta)
        if on:
            assert distributed.checkpoint_activations(model) == 2
        n = [0]
        model.h[0].attn.register_forward_hook(lambda *a: n.__setitem__(0, n[0] + 1))
        x, y = next(bundle.train.batches(torch.arange(8), 8))
        with one_thread():
            torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        grads.append([p.grad for p in model.parameters()])
        calls.append(n[0])
    assert calls == [1, 2]
    assert all(torch.allclose(a, b) for a, b in zip(*grads))


def test_fsdp_needs_transformer_blocks(tiny_digits):
    from powertrain import TrainConfig, Trainer, models

    model = models.build({"name": "mlp", "hidden": [8]}, tiny_digits.meta)
    with pytest.raises(RecipeError, match="fsdp shards transformer blocks.*use train.strategy=ddp"):
        Trainer(model, tiny_digits, TrainConfig(max_steps=1, strategy="fsdp"), callbacks=[])


# ---------------------------------------------------------------- launching jobs, and cleaning up after them
def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    harness = tmp_path_factory.mktemp("harness")
    (harness / "sitecustomize.py").write_text(SITECUSTOMIZE)
    # CUDA_VISIBLE_DEVICES="": these jobs' workers are CPU ones (gloo); where GPUs are visible, joining the
    # process group also binds each worker to GPU LOCAL_RANK (distributed.init_process_group), which a machine
    # with fewer GPUs than workers does not have
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(harness), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "PT_TEST_FAKE_NODE": "1", "CUDA_VISIBLE_DEVICES": ""}


@contextlib.contextmanager
def job(cmd: list[str], env: dict, cwd=None):
    """A running job (torchrun and its workers); whatever happens, none of its processes survives."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            kill_tree(proc)


def run_job(cmd: list[str], env: dict, timeout: float = 180) -> str:
    with job(cmd, env) as proc:
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, out[-3000:]
    return out


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def final_weights(run_dir: Path) -> dict:
    return load_file(str(RunDir(run_dir).list_checkpoints()[-1] / "model.safetensors"))


def assert_same_training(a: Path, b: Path, tol: float) -> None:
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) and max(abs(x - y) for x, y in zip(la, lb)) <= tol, (la, lb)
    ea, eb = (json.loads((p / "eval.json").read_text()) for p in (a, b))
    for split in ("val", "test"):
        if split in eb:
            assert ea[split]["loss"] == pytest.approx(eb[split]["loss"], abs=tol)
            assert ea[split].get("accuracy") == eb[split].get("accuracy")


@contextlib.contextmanager
def one_thread():
    """As in each worker (torchrun sets OMP_NUM_THREADS=1); and 2 threads on a busy 2-core machine are slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def reference(recipe, overrides, out: Path) -> powertrain.Run:
    """The single-process run, on the same fake node counter."""
    with pytest.MonkeyPatch.context() as mp, one_thread():
        mp.setattr("powertrain.measure.meter.detect_backends", lambda *a, **k: ([FakeNode()], []))
        return powertrain.train(recipe, overrides, out=out, callbacks=[])


# ---------------------------------------------------------------- DDP on digits-mlp, through `--nproc`
@pytest.fixture(scope="module")
def digits_job(env, tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    audit = {"PT_TEST_WATCH": str(root / "ddp"), "PT_TEST_AUDIT": str(root / "audit")}  # file operations there
    out = run_job([sys.executable, "-m", "powertrain", "train", *DIGITS, "--nproc", "2", "--out", str(root / "ddp")],
                  {**env, **audit})
    return root / "ddp", out, reference(DIGITS[0], DIGITS[1:], root / "one")


def test_ddp_equals_one_process(digits_job):
    ddp, _, one = digits_job
    assert_same_training(ddp, one.dir, tol=1e-5)
    wa, wb = final_weights(ddp), final_weights(one.dir)
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5, rtol=0) for k in wa)


def test_only_rank_0_logs_and_writes(digits_job):
    ddp, printed, _ = digits_job
    rank0, rank1 = (ddp.parent / f"audit-rank{r}" for r in (0, 1))  # what an audit hook saw in each worker
    assert "open" in rank0.read_text() and not rank1.exists()  # rank 1 never touched the run directory
    records = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 25))  # one writer: no step twice
    assert {p.name for p in ddp.iterdir()} == {"recipe.yaml", "env.json", "metrics.jsonl", "eval.json", "bill.json", ".lock",
                                                "checkpoints"}
    assert [c.name for c in RunDir(ddp).list_checkpoints()] == ["step-00000021", "step-00000024"]
    assert printed.count("run written to") == 1 and printed.count("test: loss") == 1
    assert json.loads((ddp / "env.json").read_text())["world_size"] == 2


def test_one_bill_per_job(digits_job):
    """Local rank 0 alone reads the node's counter: the job's energy is the node's, not twice it."""
    ddp, _, one = digits_job
    bill = json.loads((ddp / "bill.json").read_text())
    assert bill["energy"]["total_j"] == one.bill["energy"]["total_j"] > 0  # the same readings of the node counter
    assert bill["energy"]["components"] == {"node": {"energy_j": one.bill["energy"]["total_j"], "method": "measured:fake"}}
    assert bill["flops"]["train_total"] == one.bill["flops"]["train_total"]  # the ranks' shares add up
    assert bill["flops"]["per_step_train"] == one.bill["flops"]["per_step_train"]
    assert bill["samples_trained"] == one.bill["samples_trained"] == 21 * 64 - 64 + 13 + 3 * 64
    assert bill["device"]["world_size"] == 2 and [d["rank"] for d in bill["device"]["devices"]] == [0, 1]
    assert bill["mfu"]["devices"] == 2


def test_distillation_job_equals_one_process(env, digits_job, tmp_path):
    """A Distiller in a job (its teacher is needed by the FLOP count before sharding; each rank takes its
    share of the cached teacher logits) trains as one process does."""
    _, _, one = digits_job
    student = [*DIGITS, "model.hidden=[32]", f"train.distill.teacher={one.dir}"]
    run_job([sys.executable, "-m", "powertrain", "train", *student, "--nproc", "2", "--out", str(tmp_path / "kd")], env)
    ref = reference(student[0], student[1:], tmp_path / "one")
    assert_same_training(tmp_path / "kd", ref.dir, tol=1e-5)
    wa, wb = final_weights(tmp_path / "kd"), final_weights(ref.dir)
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5, rtol=0) for k in wa)
    bill = json.loads((tmp_path / "kd" / "bill.json").read_text())
    cache = ref.bill["distill"]["teacher_forward_flops"]  # the teacher's logits of all 1293 train samples
    assert cache == 1293 * bill["teacher"]["flops_per_sample_forward"] > 0
    assert bill["distill"]["teacher_forward_flops"] == 2 * cache  # each of the 2 ranks computed the whole cache
    assert bill["flops"]["train_total"] == ref.bill["flops"]["train_total"] + cache


# ---------------------------------------------------------------- elastic: a worker killed, the job restarted
def test_elastic_restart_after_sigkill_equals_uninterrupted(env, digits_job, tmp_path):
    ddp, _, _ = digits_job
    out = tmp_path / "elastic"
    cmd = torchrun("--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "--monitor-interval", "0.1",
                   "-m", "powertrain", "train", *DIGITS, "--out", str(out))
    with job(cmd, {**env, "PT_TEST_SLOW_S": "0.05"}) as proc:
        deadline = time.monotonic() + 120  # a hang guard: fail, do not wait forever, if no checkpoint ever comes
        while not RunDir(out).list_checkpoints():  # step 8 is written: kill a worker now
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
            time.sleep(0.05)
        workers = [p for p in descendants(proc.pid) if "powertrain" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGKILL)
        printed, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, printed[-3000:]
    assert "exitcode: -9" in printed  # torchrun saw the kill (and, since it succeeded, restarted the workers)
    wa, wb = final_weights(out), final_weights(ddp)
    assert all(torch.equal(wa[k], wb[k]) for k in wb)  # bit for bit: same world, same order, same RNG
    assert losses(out) == losses(ddp)


# ---------------------------------------------------------------- GPT: FSDP2 (+ activation checkpointing), DCP
@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt")
    (root / "gpt-tiny.yaml").write_text(GPT)
    return root, reference(str(root / "gpt-tiny.yaml"), [], root / "one")




def assert_same_prefix(run: Path, ref: Path, tol: float) -> None:
    la, lb = losses(run), losses(ref)
    assert len(la) <= len(lb) and max(abs(x - y) for x, y in zip(la, lb)) <= tol, (la, lb)


def test_fsdp_sharded_checkpoints_across_world_sizes(env, gpt, tmp_path):
    """FSDP in a world of 1 for 6 steps; resumed by 2 processes (FSDP2 per block, activation
    checkpointing) to step 12; resumed by 1 process to step 18: the losses and the final evaluation
    are those of one uninterrupted single process."""
    root, one = gpt
    recipe, run = str(root / "gpt-tiny.yaml"), tmp_path / "fsdp"
    with one_thread():
        first = powertrain.train(recipe, ["train.strategy=fsdp", "train.max_steps=6"], out=run, callbacks=[])
    assert first.trainer.dist.strategy == "fsdp" and first.trainer.dist.world_size == 1
    assert_same_prefix(run, one.dir, tol=1e-5)
    run_job([sys.executable, "-m", "powertrain", "resume", str(run), "train.max_steps=12",
             "train.activation_checkpointing=true", "--nproc", "2"], env)
    assert len(losses(run)) == 12
    assert_same_prefix(run, one.dir, tol=1e-4)  # 1 -> 2 processes
    step12 = RunDir(run).list_checkpoints()[-1]
    assert step12.name == "step-00000012" and (step12 / ".metadata").is_file()
    assert len(list(step12.glob("*.distcp"))) == 2  # one shard file per rank
    with one_thread():
        last = powertrain.resume(run, ["train.max_steps=18", "train.activation_checkpointing=false"], callbacks=[])
    assert last.trainer.dist.world_size == 1 and last.trainer.step == 18  # 2 -> 1 process
    assert_same_training(run, one.dir, tol=1e-4)


# ---------------------------------------------------------------- two "nodes" on localhost, c10d rendezvous
def test_two_nodes_c10d_rendezvous(env, gpt):
    """2 nodes x 1 process running `torchrun -m powertrain`: DDP equals one process, and the bill sums
    the two nodes' counters (each read once, by its local rank 0)."""
    root, one = gpt
    out, port = root / "nodes", free_port()
    cmd = torchrun("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                   f"127.0.0.1:{port}", "--rdzv-id", "pt-test", "-m", "powertrain", "train",
                   str(root / "gpt-tiny.yaml"), "--out", str(out))
    with job(cmd, env) as a, job(cmd, env) as b:
        outs = [p.communicate(timeout=180)[0] for p in (a, b)]
        assert a.returncode == 0 and b.returncode == 0, [o[-2000:] for o in outs]
    assert_same_training(out, one.dir, tol=1e-5)
    bill = json.loads((out / "bill.json").read_text())
    assert bill["device"]["nodes"] == 2 and sorted(d["node_rank"] for d in bill["device"]["devices"]) == [0, 1]
    assert bill["energy"]["total_j"] == 2 * one.bill["energy"]["total_j"]  # one reading per node, summed
