#!/usr/bin/env bash
# A one-node Slurm (Debian's slurmctld, slurmd and munge, started by hand: no systemd) and a short
# rlhf run on it: the learner job, a 2-task worker array, then a requeue after
# `scancel --signal=TERM` of the learner. Needs root, `apt-get install slurmctld slurmd munge`, a
# built rlhf and the demo's models (`rlhf demo`, default runs/demo).
#
#   deploy/slurm/one-node.sh [RUNS_DEMO_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
demo="$(cd "${1:-runs/demo}" && pwd)"
rlhf="$(cd "${CARGO_TARGET_DIR:-$HOME/.cache/rlhf-target}/release" && pwd)/rlhf"
node="$(hostname -s)"
work="$(mktemp -d /tmp/rlhf-slurm.XXXX)"
chmod 755 "$work"

# munge and slurm, configured for this one node.
mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge /etc/slurm /var/spool/slurmctld /var/spool/slurmd
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=rlhf
SlurmctldHost=$node
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ReturnToService=2
JobRequeue=1
MpiDefault=none
NodeName=$node CPUs=$(nproc) State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 1 30); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo

# A short run: the demo's models, 40 iterations, a checkpoint every 5.
cat > "$work/learner.toml" <<CONF
model = "$demo/sft"
prompts = "$demo/corpus/train.jsonl"
out = "$work/out"
[reward]
model = "$demo/reward-model"
[train]
iterations = 40
batch_size = 64
[train.prompts]
min_chars = 0
max_tokens = 6
[runtime]
lease_size = 16
checkpoint_every = 5
CONF
export RLHF_SHARED="$work/shared" RLHF_BIN="$rlhf" RLHF_REWARD_MODEL="$demo/reward-model"
learner=$(sbatch --parsable --export=ALL -o "$work/learner-%j.log" deploy/slurm/learner.sbatch "$work/learner.toml")
sbatch --parsable --export=ALL --array=1-2 -o "$work/worker-%A_%a.log" deploy/slurm/workers.sbatch >/dev/null
echo "learner job $learner; logs in $work"
# Stop the learner mid-run as a time limit would (SIGTERM to the batch shell), then requeue it.
for _ in $(seq 1 120); do grep -q "checkpoint written" "$work"/learner-*.log 2>/dev/null && break; sleep 1; done
scancel --signal=TERM --batch "$learner"
for _ in $(seq 1 60); do grep -q "stopped with a checkpoint\|checkpointed already" "$work"/learner-*.log && break; sleep 1; done
scontrol requeue "$learner" || true
for _ in $(seq 1 300); do [ -s "$work/out/accounting.json" ] && break; sleep 1; done
sleep 3
squeue
echo "--- learner log (both attempts)"
grep -hE "stop requested|stopped with|resuming|run finished|checkpoint written policy_version=(5|10|40)" "$work"/learner-*.log || true
python3 -c "import json,sys; a=json.load(open('$work/out/accounting.json')); print('accounting:', a)"
