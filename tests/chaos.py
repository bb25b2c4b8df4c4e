#!/usr/bin/env python3
"""Chaos run: `rlhf learner` + a reward server + workers on 127.0.0.1 under a seeded schedule of
SIGKILLs (workers, the reward server, and the learner, which restarts with --resume), then a
check that the run still reads as one clean run.

    python3 tests/chaos.py --minutes 20 --seed 1        # builds nothing: uses target/release/rlhf

Not part of CI (it takes as long as you ask). It trains the demo's models (`rlhf demo`, a
minute, once per --work directory) and then PPO on IMDb prompts with the demo's reward model.
At the end faults stop, the learner is restarted once more to finish a few iterations, and:

- every prompt of the run is in `rollouts.jsonl` exactly once, and `accounting.json` counts them;
- `metrics.jsonl` holds each step once, 1..N, in order (the curve continues across restarts);
- `accounting.json` counts one resume per learner restart that wrote a checkpoint.

Prints the faults injected and the outcome as a table; exits 1 if a check fails.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT.parent / "shared" / "assets"


def rlhf_binary():
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return str(target / "release" / "rlhf")


class Proc:
    """A child `rlhf` process with its stderr in a log file."""

    def __init__(self, work, name, args, server):
        self.name, self.args, self.server, self.work = name, args, server, work
        self.starts = 0
        self.addr = None
        self.proc = None

    def start(self, extra=()):
        self.starts += 1
        log = open(self.work / f"{self.name}.{self.starts}.log", "w")
        self.proc = subprocess.Popen([RLHF, *self.args, *extra], stdout=subprocess.PIPE if self.server else subprocess.DEVNULL, stderr=log)
        if self.server:
            line = self.proc.stdout.readline().decode().strip()
            if not line:
                raise SystemExit(f"{self.name} printed no address; see {log.name}")
            self.addr = line.removeprefix("http://")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def lines(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def newest_checkpoint(out):
    versions = [int(p.name.removeprefix("version-")) for p in (out / "checkpoints").glob("version-*") if (p / "ppo_state.json").is_file()]
    return max(versions, default=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--mean-gap-s", type=float, default=30.0, help="mean seconds between faults")
    parser.add_argument("--work", type=Path, default=ROOT / "target" / "chaos")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)

    demo = work / "demo"
    if not (demo / "reward-model" / "config.json").is_file():
        print("training the demo's models (rlhf demo) ...", flush=True)
        subprocess.run([RLHF, "demo", "--out", str(demo)], check=True, stderr=open(work / "demo.log", "w"))
    out = work / "run"
    batch = 16
    config = work / "learner.toml"
    config.write_text(
        f'model = "{demo / "sft"}"\nprompts = "{ASSETS / "imdb-sentiment" / "train.jsonl"}"\nout = "{out}"\n\n'
        f'[reward]\nmodel = "{demo / "reward-model"}"\n\n'
        f"[train]\niterations = 100000\nbatch_size = {batch}\n\n[train.sampling]\nmax_new_tokens = 16\n\n"
        "[train.ppo]\nmini_batch_size = 8\n\n"
        "[runtime]\nlease_size = 4\nlease_timeout_s = 30.0\nheartbeat_timeout_s = 3.0\nheartbeat_interval_ms = 300\ncheckpoint_every = 2\n"
    )

    learner = Proc(work, "learner", ["learner", "--config", str(config), "--overwrite"], server=True)
    learner.start()
    learner.args = ["learner", "--config", str(config), "--resume", "--listen", learner.addr]
    reward = Proc(work, "reward", ["reward-server", "--model", str(demo / "reward-model"), "--listen", "127.0.0.1:0"], server=True)
    reward.start()
    reward.args[-1] = reward.addr
    workers = [
        Proc(work, f"worker-{i}", ["worker", "--learner", learner.addr, "--reward", reward.addr, "--name", f"chaos-{i}", "--patience-s", "300"], server=False)
        for i in range(args.workers)
    ]
    for w in workers:
        w.start()

    faults = {"worker killed": 0, "reward server killed": 0, "learner killed (resumed)": 0}
    deadline = time.time() + args.minutes * 60
    print(f"chaos for {args.minutes} min, seed {args.seed}, {args.workers} workers; logs in {work}", flush=True)
    try:
        while time.time() < deadline:
            time.sleep(min(rng.expovariate(1.0 / args.mean_gap_s), max(0.0, deadline - time.time())))
            if time.time() >= deadline:
                break
            if learner.proc.poll() is not None:
                raise SystemExit(f"the learner exited by itself ({learner.proc.returncode}); see its log")
            kind = rng.choices(["worker", "reward", "learner"], weights=[3, 2, 2])[0]
            if kind == "learner" and newest_checkpoint(out) == 0:
                kind = "worker"
            pause = rng.uniform(0.5, 5.0)
            step = len(lines(out / "metrics.jsonl"))
            if kind == "worker":
                victim = rng.choice(workers)
                victim.kill()
                time.sleep(pause)
                victim.start()
                faults["worker killed"] += 1
            elif kind == "reward":
                reward.kill()
                time.sleep(pause)
                reward.start()
                faults["reward server killed"] += 1
            else:
                learner.kill()
                time.sleep(pause)
                learner.start()
                faults["learner killed (resumed)"] += 1
            print(f"{time.strftime('%H:%M:%S')} step {step}: killed the {kind}, restarted after {pause:.1f} s", flush=True)

        # Finish: one more restart from the newest checkpoint with a reachable end.
        while newest_checkpoint(out) == 0:
            time.sleep(1)
        learner.kill()
        iterations = newest_checkpoint(out) + 3
        learner.start(["--set", f"train.iterations={iterations}"])
        learner.proc.wait(timeout=1800)
        finished = learner.proc.returncode == 0
    finally:
        for w in workers:
            w.stop()
        reward.stop()
        learner.kill()

    metrics = lines(out / "metrics.jsonl")
    rollouts = lines(out / "rollouts.jsonl")
    accounting = json.loads((out / "accounting.json").read_text()) if (out / "accounting.json").exists() else {}
    indices = [r["prompt_index"] for r in rollouts]
    steps = [m["step"] for m in metrics]
    # A restarted learner killed before its first checkpoint leaves no trace in the run (the
    # next one resumes from the same checkpoint), so count the restarts that wrote one.
    logs = [work / f"learner.{n}.log" for n in range(2, learner.starts + 1)]
    restarts = sum(1 for log in logs if "checkpoint written" in log.read_text())
    checks = {
        "the learner finished (exit 0)": finished,
        f"every prompt once in rollouts.jsonl ({len(indices)} lines, {len(set(indices))} distinct)": sorted(indices) == list(range(iterations * batch)),
        f"accounting.json counts them ({accounting.get('prompts_accounted')})": accounting.get("prompts_accounted") == iterations * batch,
        f"metrics.jsonl steps 1..{iterations}, once each, in order": steps == list(range(1, iterations + 1)),
        f"one resume per restart that wrote a checkpoint ({accounting.get('resumes')} of {restarts}; {learner.starts - 1} restarts)": accounting.get("resumes") == restarts,
    }
    print(f"\n| fault | count |\n|---|---|")
    for name, count in faults.items():
        print(f"| {name} | {count} |")
    print(f"| **total** | {sum(faults.values())} |\n")
    print(f"iterations trained: {iterations} ({iterations * batch} prompts); accounting: {json.dumps(accounting)}")
    reward_curve = [round(m.get("env/reward_mean", float("nan")), 3) for m in metrics]
    print(f"reward mean, first/last 5 steps: {reward_curve[:5]} ... {reward_curve[-5:]}\n")
    print("| check | result |\n|---|---|")
    for name, ok in checks.items():
        print(f"| {name} | {'pass' if ok else 'FAIL'} |")
    sys.exit(0 if all(checks.values()) else 1)


RLHF = rlhf_binary()

if __name__ == "__main__":
    main()
