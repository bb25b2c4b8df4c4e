#!/usr/bin/env python3
"""The peers' side of rlhf's speed benchmarks, on exactly the shapes `rlhf bench` uses.

Run by hand, never by CI. It needs a venv with torch==2.5.1 transformers==4.46.3 trl==0.11.4:

    python bench/peers.py ppo --layers 2 --width 128 --heads 4 --batch 64 --mini-batch 16 --epochs 4
    python bench/peers.py generate --config tiny,distilgpt2 --batch 1,16,64 --prompt-len 8 --new-tokens 32

`bench/compare.sh` runs rlhf's command and this one back to back and prints both tables.

Both sides use the same inputs:
- random GPT-2 weights with the real 50,257-token vocabulary (no download: the model is built from
  a `GPT2Config`);
- queries drawn by the same 64-bit LCG as `rlhf bench ppo` (`Lcg` below, `bench::Lcg` in Rust):
  lengths uniform in `--query-tokens`, ids uniform over the vocabulary;
- the same synthetic score per rollout: the fraction of response ids that are even, minus 0.5
  (the score's cost is negligible on both sides, and it makes the reward deterministic);
- TRL's defaults where rlhf's `PpoConfig` follows them (lr 1.41e-5, adaptive KL 0.2 → 6,
  cliprange 0.2, vf_coef 0.1, gamma 1, lam 0.95), sampling with top_k 0, top_p 1, temperature 1.

The PPO table splits an iteration the way TRL's own timers do: generate, score,
`time/ppo/forward_pass` (old and reference log-probs and values), `time/ppo/optimize_step`.
The first iteration is a warm-up and is excluded from the averages.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

PRESETS = {
    "gpt2": (12, 768, 12, 1024),
    "gpt2-medium": (24, 1024, 16, 1024),
    "distilgpt2": (6, 768, 12, 1024),
    "tiny": (2, 64, 4, 256),
    "nano": (1, 32, 2, 128),
}
VOCAB = 50257
EOS = 50256


class Lcg:
    """Knuth's MMIX LCG; `next_below(n)` uses the high 32 bits (same as rlhf's `bench::Lcg`)."""

    def __init__(self, seed):
        self.state = seed & 0xFFFFFFFFFFFFFFFF

    def next_u32(self):
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        return self.state >> 32

    def next_below(self, n):
        return (self.next_u32() * n) >> 32


def queries(n, lo, hi, seed):
    rng = Lcg(seed)
    out = []
    for _ in range(n):
        length = lo + rng.next_below(hi - lo + 1)
        out.append([rng.next_below(VOCAB) for _ in range(length)])
    return out


def score(response):
    return sum(1 for t in response if t % 2 == 0) / max(len(response), 1) - 0.5


def gpt2_config(args):
    from transformers import GPT2Config

    if args.config:
        layers, width, heads, positions = PRESETS[args.config]
    else:
        layers, width, heads, positions = args.layers, args.width, args.heads, 1024
    return GPT2Config(
        vocab_size=VOCAB, n_positions=positions, n_embd=width, n_layer=layers, n_head=heads,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )


def tokenizer():
    from transformers import GPT2TokenizerFast

    here = Path(__file__).resolve().parent
    path = Path(os.environ.get("RLHF_ASSETS", here.parent.parent / "shared" / "assets")) / "gpt2-tokenizer"
    tok = GPT2TokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    tok.pad_token = tok.eos_token
    return tok


def bench_ppo(args):
    import torch
    from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, create_reference_model
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    config = gpt2_config(args)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(GPT2LMHeadModel(config))
    ref = create_reference_model(model)
    ppo_config = PPOConfig(
        batch_size=args.batch, mini_batch_size=args.mini_batch, ppo_epochs=args.epochs,
        learning_rate=1.41e-5, seed=0, log_with=None,
    )
    trainer = PPOTrainer(ppo_config, model, ref, tokenizer())
    lo, hi = (int(x) for x in args.query_tokens.split(".."))
    gen_kwargs = dict(min_length=-1, top_k=0, top_p=1.0, do_sample=True, pad_token_id=EOS,
                      max_new_tokens=args.new_tokens)
    if args.no_eos_stop:
        gen_kwargs["min_new_tokens"] = args.new_tokens
    rows = []
    for it in range(args.iterations + 1):
        qs = [torch.tensor(q) for q in queries(args.batch, lo, hi, seed=it)]
        t0 = time.perf_counter()
        responses = trainer.generate(qs, batch_size=args.batch, return_prompt=False, **gen_kwargs)
        t1 = time.perf_counter()
        scores = [torch.tensor(score(r.tolist()), dtype=torch.float32) for r in responses]
        t2 = time.perf_counter()
        stats = trainer.step(qs, responses, scores)
        t3 = time.perf_counter()
        total = t3 - t0
        rows.append(dict(
            generate=t1 - t0, score=t2 - t1, forward=stats["time/ppo/forward_pass"],
            optimise=stats["time/ppo/optimize_step"], step=t3 - t2, total=total,
            samples_per_s=args.batch / total,
            tokens=sum(len(r) for r in responses) / len(responses),
        ))
        print(f"# iteration {it}: {total:.2f} s{' (warm-up)' if it == 0 else ''}", file=sys.stderr)
    timed = rows[1:] or rows
    mean = {k: statistics.mean(r[k] for r in timed) for k in timed[0]}
    size = args.config or f"{args.layers}x{args.width}x{args.heads}"
    print("| impl | size | batch | mini-batch | epochs | response tokens | samples/s | generate s | score s | old+ref logprobs s | optimise s | step s | iteration s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| TRL 0.11.4 (torch {torch.__version__}, {torch.get_num_threads()} threads) | {size} | {args.batch} | "
          f"{args.mini_batch} | {args.epochs} | {mean['tokens']:.1f} | {mean['samples_per_s']:.2f} | "
          f"{mean['generate']:.3f} | {mean['score']:.3f} | {mean['forward']:.3f} | {mean['optimise']:.3f} | "
          f"{mean['step']:.3f} | {mean['total']:.3f} |")


def bench_generate(args):
    import torch
    from transformers import GPT2LMHeadModel

    print("| impl | config | batch | prompt_len | new_tokens | median s | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.config.split(","):
        torch.manual_seed(0)
        args_cfg = argparse.Namespace(config=name)
        model = GPT2LMHeadModel(gpt2_config(args_cfg)).eval()
        for batch in (int(b) for b in args.batch.split(",")):
            rng = Lcg(0)
            ids = torch.tensor([[rng.next_below(VOCAB) for _ in range(args.prompt_len)] for _ in range(batch)])
            mask = torch.ones_like(ids)
            kwargs = dict(attention_mask=mask, do_sample=not args.greedy, top_k=0, top_p=1.0,
                          max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=EOS)
            times = []
            with torch.inference_mode():
                for run in range(args.runs + 1):
                    t0 = time.perf_counter()
                    out = model.generate(ids, **kwargs)
                    assert out.shape[1] == args.prompt_len + args.new_tokens
                    if run > 0:
                        times.append(time.perf_counter() - t0)
            median = statistics.median(times)
            print(f"| transformers 4.46.3 (torch {torch.__version__}, {torch.get_num_threads()} threads) | {name} | "
                  f"{batch} | {args.prompt_len} | {args.new_tokens} | {median:.3f} | {batch * args.new_tokens / median:.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ppo = sub.add_parser("ppo", help="one TRL PPO iteration (generate, score, step)")
    ppo.add_argument("--config", choices=sorted(PRESETS))
    ppo.add_argument("--layers", type=int, default=2)
    ppo.add_argument("--width", type=int, default=128)
    ppo.add_argument("--heads", type=int, default=4)
    ppo.add_argument("--batch", type=int, default=64)
    ppo.add_argument("--mini-batch", type=int, default=16)
    ppo.add_argument("--epochs", type=int, default=4)
    ppo.add_argument("--query-tokens", default="2..8")
    ppo.add_argument("--new-tokens", type=int, default=16)
    ppo.add_argument("--no-eos-stop", action="store_true")
    ppo.add_argument("--iterations", type=int, default=2, help="timed iterations after one warm-up")
    gen = sub.add_parser("generate", help="transformers' generate, tokens/s")
    gen.add_argument("--config", default="tiny")
    gen.add_argument("--batch", default="1")
    gen.add_argument("--prompt-len", type=int, default=8)
    gen.add_argument("--new-tokens", type=int, default=32)
    gen.add_argument("--runs", type=int, default=3)
    gen.add_argument("--greedy", action="store_true")
    args = parser.parse_args()
    {"ppo": bench_ppo, "generate": bench_generate}[args.command](args)


if __name__ == "__main__":
    main()
