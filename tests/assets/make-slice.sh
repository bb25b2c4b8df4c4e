#!/usr/bin/env bash
# Rebuilds the committed test-asset slice in this folder from the full assets folder
# (`../shared/assets` beside the clone), deterministically, and checks what it wrote.
#
#   tests/assets/make-slice.sh [SOURCE]          # write the slice here
#   tests/assets/make-slice.sh --check [SOURCE]  # rebuild in memory, compare, write nothing
#
# SOURCE: the argument, else $RLHF_ASSETS, else ../../../shared/assets relative to this script.
# Needs bash and python3 (standard library only). See README.md for what is cut and why.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode=write
if [[ "${1:-}" == "--check" ]]; then
    mode=check
    shift
elif [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
[[ $# -le 1 ]] || { echo "usage: $0 [--check] [SOURCE]" >&2; exit 2; }
src="${1:-${RLHF_ASSETS:-$here/../../../shared/assets}}"
[[ -d "$src" ]] || { echo "make-slice: source assets folder not found: $src" >&2; exit 1; }
src="$(cd "$src" && pwd)"

exec python3 - "$src" "$here" "$mode" <<'PY'
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

SRC, OUT, MODE = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

# --- What the slice is (change these and rerun; README.md describes them) ---------------------
TRAIN_PER_LABEL = 175  # imdb-sentiment/train.jsonl: first 175 negative + first 175 positive rows
TEST_PER_LABEL = 150   # imdb-sentiment/test.jsonl:  first 150 negative + first 150 positive rows
TLDR_ROWS = 100        # tldr-comparisons: the first 100 rows
# Rows at the start of each IMDb file that must be byte-identical to the full file's first rows,
# so that anything reading only a prefix sees the same data from either root:
#   train: trainer/fixtures/make_gpt2_fixtures.py trains its BPE on the first 300 train rows;
#   test:  the largest prompt stream a slice-sized test uses is 128 prompts (8 x 16), plus
#          rows[..100] in the data unit tests.
MIN_IDENTICAL_PREFIX = {"train": 300, "test": 200}
MIN_TLDR_DISTINCT_POSTS = 20  # data unit test: rl_prompts(&prompts[..20], ...)
MAX_TOTAL_BYTES = 7 * 1024 * 1024  # hard cap on the data files written here

# Source files read, with the sha256 their READMEs in the full assets folder state.
SOURCE_SHA256 = {
    "gpt2-tokenizer/tokenizer.json": "f6ed3d307010c244c22aeffbde05f419cf277c23e64cf98b673cac5449cfeff5",
    "imdb-lexicon/imdb.vocab": "01a13a306bd9e5a7826b8a0fc25a7a6017f143d86c1582f17857bb731fd252dc",
    "imdb-lexicon/imdbEr.txt": "8ddc38d79d90b135b530cc698266447420f93f95803453663c8fdc62946d07e2",
    "imdb-sentiment/train.jsonl": "0fb51272ba82c6c103b8b63e831ed3a0092da52eb5883c5269023eb01661b6f0",
    "imdb-sentiment/train.sources.txt": "0575927221bdbcd68e42c9115d3ae17b7f2c1694fcbaea11348fa0f240355119",
    "imdb-sentiment/test.jsonl": "43b7e42ed8a877b0e8b93471b3157dddcf79e43281a081b3842a0b8fb897090e",
    "imdb-sentiment/test.sources.txt": "75073937a24404a35bc62babc31e03c033871872112bdfae9ef4b16e9401c012",
    "tldr-comparisons/comparisons_batch13_first500.jsonl":
        "4ba54210ced68049ae018b8cfd69205995324ff725b6f41fe1b1ccd8f44a6222",
}
WHOLE = [  # copied unmodified (encoder.json and vocab.bpe are deliberately not in the slice)
    "gpt2-tokenizer/tokenizer.json",
    "imdb-lexicon/imdb.vocab",
    "imdb-lexicon/imdbEr.txt",
]
TLDR = "tldr-comparisons/comparisons_batch13_first500.jsonl"  # same name in the slice (see README)


def fail(message):
    sys.exit(f"make-slice: {message}")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def lines_of(data, name):
    if not data.endswith(b"\n") or b"\r" in data:
        fail(f"{name}: expected LF-terminated lines")
    return data[:-1].split(b"\n")


def imdb_split(split, per_label, src, dst):
    rows = lines_of(src[f"imdb-sentiment/{split}.jsonl"], f"{split}.jsonl")
    keys = lines_of(src[f"imdb-sentiment/{split}.sources.txt"], f"{split}.sources.txt")
    if len(rows) != len(keys):
        fail(f"{split}: {len(rows)} rows but {len(keys)} source keys")
    counts, kept = {0: 0, 1: 0}, []
    for i, line in enumerate(rows):
        row = json.loads(line)
        if set(row) != {"text", "label"} or row["label"] not in (0, 1) or not isinstance(row["text"], str):
            fail(f"{split}.jsonl:{i + 1}: not a {{text, label}} row")
        key = keys[i].decode()
        if not key.startswith(f"{split}/{'pos' if row['label'] == 1 else 'neg'}/"):
            fail(f"{split}.sources.txt:{i + 1}: {key} does not match label {row['label']}")
        if counts[row["label"]] < per_label:
            counts[row["label"]] += 1
            kept.append(i)
        if counts[0] == counts[1] == per_label:
            break
    if counts != {0: per_label, 1: per_label}:
        fail(f"{split}: only {counts} rows per label in the source")
    prefix = next((n for n, i in enumerate(kept) if i != n), len(kept))
    if prefix < MIN_IDENTICAL_PREFIX[split]:
        fail(f"{split}: only the first {prefix} rows equal the source's (need {MIN_IDENTICAL_PREFIX[split]})")
    dst[f"imdb-sentiment/{split}.jsonl"] = b"".join(rows[i] + b"\n" for i in kept)
    dst[f"imdb-sentiment/{split}.sources.txt"] = b"".join(keys[i] + b"\n" for i in kept)
    return {"rows": len(kept), "per_label": per_label, "identical_prefix": prefix, "last_source_line": kept[-1] + 1}


def build():
    src = {}
    for name, want in SOURCE_SHA256.items():
        path = SRC / name
        if not path.is_file():
            fail(f"missing source file {path}")
        data = path.read_bytes()
        if sha256(data) != want:
            fail(f"{path}: sha256 {sha256(data)}, expected {want} (not the documented source file)")
        src[name] = data
    dst, notes = {}, {}
    for name in WHOLE:
        dst[name] = src[name]
    vocab, er = src["imdb-lexicon/imdb.vocab"].splitlines(), src["imdb-lexicon/imdbEr.txt"].splitlines()
    if len(vocab) != len(er):
        fail(f"lexicon: {len(vocab)} words but {len(er)} ratings")
    notes["lexicon"] = {"entries": len(vocab)}
    notes["train"] = imdb_split("train", TRAIN_PER_LABEL, src, dst)
    notes["test"] = imdb_split("test", TEST_PER_LABEL, src, dst)

    tldr = lines_of(src[TLDR], TLDR)[:TLDR_ROWS]
    posts = []
    for i, line in enumerate(tldr):
        row = json.loads(line)
        if not {"info", "summaries", "choice"} <= set(row) or len(row["summaries"]) != 2 or row["choice"] not in (0, 1):
            fail(f"{TLDR}:{i + 1}: not a comparison row")
        post = (row["info"].get("subreddit"), row["info"].get("title"), row["info"]["post"])
        if post not in posts:
            posts.append(post)
    if len(tldr) != TLDR_ROWS or len(posts) < MIN_TLDR_DISTINCT_POSTS:
        fail(f"tldr: {len(tldr)} rows, {len(posts)} distinct posts")
    dst[TLDR] = b"".join(line + b"\n" for line in tldr)
    notes["tldr"] = {"rows": len(tldr), "distinct_posts": len(posts)}

    total = sum(len(d) for d in dst.values())
    if total > MAX_TOTAL_BYTES:
        fail(f"the slice is {total} bytes, over the {MAX_TOTAL_BYTES}-byte cap")
    return dst, notes, total


def sums(dst):
    return "".join(f"{sha256(dst[name])}  {name}\n" for name in sorted(dst)).encode()


dst, notes, total = build()
dst_sums = sums(dst)
if MODE == "check":
    bad = []
    for name, data in list(dst.items()) + [("SHA256SUMS", dst_sums)]:
        path = OUT / name
        if not path.is_file() or path.read_bytes() != data:
            bad.append(name)
    for folder in {name.split("/")[0] for name in dst}:
        for path in sorted((OUT / folder).glob("*")):
            if f"{folder}/{path.name}" not in dst:
                bad.append(f"{folder}/{path.name} (not part of the slice)")
    if bad:
        fail("the committed slice differs from a rebuild: " + ", ".join(bad))
    print(f"make-slice: the committed slice in {OUT} matches a rebuild from {SRC} ({total} bytes)")
    sys.exit(0)

# Write through a temporary folder so an interrupted run leaves no half-written file behind.
with tempfile.TemporaryDirectory(dir=OUT, prefix=".make-slice-") as tmp:
    for name, data in dst.items():
        (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
        (Path(tmp) / name).write_bytes(data)
    for name in dst:
        (OUT / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(Path(tmp) / name, OUT / name)
        os.chmod(OUT / name, 0o644)
(OUT / "SHA256SUMS").write_bytes(dst_sums)
for folder in sorted({name.split("/")[0] for name in dst}):
    for path in sorted((OUT / folder).glob("*")):
        if f"{folder}/{path.name}" not in dst:
            print(f"make-slice: warning: {path} is not part of the slice", file=sys.stderr)

# Read back what was written and report it.
for name in sorted(dst):
    if (OUT / name).read_bytes() != dst[name]:
        fail(f"{OUT / name} does not read back as written")
print(f"make-slice: wrote {len(dst)} files, {total} bytes ({total / 2**20:.2f} MiB), from {SRC} into {OUT}")
for name in sorted(dst):
    print(f"  {len(dst[name]):>9}  {sha256(dst[name])}  {name}")
for key, value in notes.items():
    print(f"  {key}: " + ", ".join(f"{k}={v}" for k, v in value.items()))
PY
