#!/usr/bin/env bash
# A smoke run of docker-compose.yml on this machine's Docker Engine: two workers finish a run,
# then a second run is stopped mid-way with `docker stop` (SIGTERM: the learner checkpoints and
# exits 0) and restarted (`--resume auto` continues from its volume to the end). A manual check
# with real models; the full container test (scaling, kills, a partition, learner restarts) is
# tests/it/runtime/containers.rs, in `cargo test`.
#
#   deploy/compose/smoke.sh RUNS_DEMO_DIR        # the output of `rlhf demo` (runs/demo)
set -euo pipefail
cd "$(dirname "$0")"
export RLHF_DATA="$(cd "${1:?usage: smoke.sh RUNS_DEMO_DIR}" && pwd)"
project="rlhf-smoke-$$"
compose() { docker-compose -p "$project" "$@"; }
trap 'compose down -v >/dev/null 2>&1 || true' EXIT
../docker/build-image.sh >/dev/null

started=$(date +%s)
compose up --scale worker=2 --abort-on-container-exit --exit-code-from learner >"/tmp/$project-1.log" 2>&1
grep -q "run finished" "/tmp/$project-1.log"
joined=$(grep -c "worker joined" "/tmp/$project-1.log")
echo "1. a run with 2 workers finished (workers joined: $joined), learner exit 0"
compose down -v >/dev/null 2>&1

compose up -d --scale worker=2 >/dev/null 2>&1
learner="${project}_learner_1"
for _ in $(seq 1 120); do
    docker logs "$learner" 2>&1 | grep -q "checkpoint written" && break
    sleep 1
done
docker stop "$learner" >/dev/null
code=$(docker inspect "$learner" --format '{{.State.ExitCode}}')
docker logs "$learner" 2>&1 | grep -q "stopped with a checkpoint\|checkpointed already"
echo "2. docker stop: the learner checkpointed and exited $code"
[ "$code" = 0 ]
docker start "$learner" >/dev/null
for _ in $(seq 1 180); do
    [ "$(docker inspect "$learner" --format '{{.State.Status}}')" = exited ] && break
    sleep 1
done
docker logs "$learner" 2>&1 | grep -q "resuming"
docker logs "$learner" 2>&1 | grep -q "run finished"
echo "3. restarted: resumed from its volume and finished (exit $(docker inspect "$learner" --format '{{.State.ExitCode}}'))"
echo "smoke run passed in $(( $(date +%s) - started )) s"
