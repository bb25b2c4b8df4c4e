//! `rlhf eval`: compare policies on held-out prompts — reward distribution, KL to a reference,
//! response length, best-of-n, and win rates under a judge — as JSON.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use clap::Args;
use rlhf_trainer::Kernels;
use rlhf_trainer::data::{OnMalformed, PromptConfig, load_prompt_texts, rl_prompts};
use rlhf_trainer::{Generator, Gpt2, SamplingConfig, infer::scoring};
use serde_json::json;

use crate::device::Device;
use crate::generate::load_model;
use crate::models::{ColumnArgs, data_path, scorer};
use crate::with_backend;

mod results;

pub use results::{BestOfN, EvalResults, JudgeResults, PolicyResults, Sample, SampleResponse, Summary, WinRate};

#[derive(Args)]
pub struct EvalArgs {
    /// A policy to evaluate, as NAME=DIR (repeat; the first two are also compared head to head).
    #[arg(long = "policy", required = true)]
    policies: Vec<String>,
    /// Reference model for the KL column (default: the first policy).
    #[arg(long)]
    reference: Option<String>,
    /// Held-out prompts (TRL's prompt-only rows) or texts to cut prompts from.
    #[arg(long)]
    prompts: PathBuf,
    #[command(flatten)]
    columns: ColumnArgs,
    #[arg(long, default_value_t = 64)]
    n_prompts: usize,
    /// Cut prompts only from texts longer than this many characters.
    #[arg(long, default_value_t = 200)]
    min_chars: usize,
    /// Use each text whole as the prompt (e.g. TL;DR posts), keeping its last N tokens; by
    /// default prompts are the first 2-8 tokens of each text.
    #[arg(long, value_name = "N")]
    whole_prompts: Option<usize>,
    /// Reward model directory scoring every response.
    #[arg(long, conflicts_with = "lexicon", required_unless_present = "lexicon")]
    reward_model: Option<String>,
    /// Lexicon scoring every response (file or aclImdb folder).
    #[arg(long)]
    lexicon: Option<PathBuf>,
    /// Flip the sign of every score (evaluate a "pessimistic" policy by its training objective).
    #[arg(long)]
    negate: bool,
    /// An independent judge that PPO never optimised: a lexicon (file or aclImdb folder) scoring
    /// every policy's responses beside the reward, never negated (e.g. aclImdb's imdbEr).
    #[arg(long, value_name = "PATH")]
    judge_lexicon: Option<PathBuf>,
    /// Best-of-n baseline: n samples per prompt from the first policy (its evaluated sample and
    /// n − 1 more), the best by reward kept.
    #[arg(long, default_value_t = 0)]
    best_of: usize,
    /// Judge for win rates: `reward` (the scorer above) or `command:CMD`, a program that reads
    /// {"prompt", "a", "b"} as JSON on stdin and prints `a`, `b` or `tie`.
    #[arg(long, default_value = "reward")]
    judge: String,
    #[arg(long, default_value_t = 24)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Side-by-side samples to include.
    #[arg(long, default_value_t = 5)]
    samples: usize,
    /// Also write the JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

struct PolicyRun {
    name: String,
    completions: Vec<Vec<u32>>,
    texts: Vec<String>,
    scores: Vec<f32>,
    /// The independent judge's scores, when there is one.
    judged: Option<Vec<f32>>,
    kl: Vec<f32>,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    with_backend!(args.device, |B, device| evaluate::<B>(&args, &device))
}

fn evaluate<B: Kernels>(args: &EvalArgs, device: &B::Device) -> anyhow::Result<()> {
    let policies: Vec<(String, String)> = args
        .policies
        .iter()
        .map(|p| p.split_once('=').map(|(n, d)| (n.to_string(), d.to_string())).context("--policy takes NAME=DIR"))
        .collect::<anyhow::Result<_>>()?;
    // Each policy is loaded once; the first one's tokenizer reads every policy's ids.
    let mut models = Vec::with_capacity(policies.len());
    let mut tokenizer = None;
    for (_, dir) in &policies {
        let (_, _, model, policy_tokenizer) = load_model::<B>(dir, device)?;
        tokenizer.get_or_insert(policy_tokenizer);
        models.push(model);
    }
    let tokenizer = tokenizer.expect("at least one --policy");
    let reference: Gpt2<B> = match &args.reference {
        Some(dir) => load_model::<B>(dir, device)?.2,
        None => models[0].clone(),
    };
    let mut scorer =
        scorer::<B>(args.reward_model.as_deref(), args.lexicon.as_deref(), args.negate, &tokenizer, device)?;
    let scorer_name = scorer.name();
    let mut judge = match &args.judge_lexicon {
        Some(lexicon) => Some(crate::models::scorer::<B>(None, Some(lexicon), false, &tokenizer, device)?),
        None => None,
    };
    let texts =
        load_prompt_texts(&data_path(&args.prompts, "test")?, &args.columns.columns(), OnMalformed::Error)?.rows;
    let mut prompts = rl_prompts(
        &texts,
        &tokenizer,
        &match args.whole_prompts {
            Some(max_tokens) => {
                PromptConfig { min_chars: args.min_chars, max_tokens, whole: true, ..Default::default() }
            }
            None => PromptConfig { seed: args.seed, min_chars: args.min_chars, ..Default::default() },
        },
    )?;
    prompts.truncate(args.n_prompts);
    anyhow::ensure!(!prompts.is_empty(), "no prompts from {}", args.prompts.display());
    let sampling = SamplingConfig { max_new_tokens: args.max_new_tokens, seed: args.seed, ..Default::default() };

    let mut runs = Vec::new();
    let generators: Vec<Generator<B>> = models.iter().map(|m| Generator::new(m.clone())).collect();
    for ((name, _), generator) in policies.iter().zip(&generators) {
        let out = generator.generate(&prompts, tokenizer.eos_id(), &sampling, device)?;
        let scores = scorer.score(&prompts, &out.completion_ids)?;
        let judged = judge.as_mut().map(|j| j.score(&prompts, &out.completion_ids)).transpose()?;
        // k1 KL to the reference on the sampled tokens, summed per response.
        let full: Vec<Vec<u32>> =
            prompts.iter().zip(&out.completion_ids).map(|(p, c)| [p.as_slice(), c].concat()).collect();
        let reference_logprobs = scoring::score(&reference, &full, tokenizer.pad_id(), 1.0, true, device)?.logprobs;
        let kl = out
            .logprobs
            .iter()
            .zip(&reference_logprobs)
            .map(|(lp, rl)| lp.iter().zip(&rl[rl.len() - lp.len()..]).map(|(a, b)| a - b).sum())
            .collect();
        let texts = out.completion_ids.iter().map(|c| tokenizer.decode(c)).collect::<Result<_, _>>()?;
        runs.push(PolicyRun { name: name.clone(), completions: out.completion_ids, texts, scores, judged, kl });
    }

    let mut report = EvalResults {
        scorer: scorer_name.clone(),
        n_prompts: prompts.len(),
        order: runs.iter().map(|r| r.name.clone()).collect(),
        policies: runs
            .iter()
            .map(|run| {
                let lengths: Vec<f32> = run.completions.iter().map(|c| c.len() as f32).collect();
                let results = PolicyResults {
                    reward: Summary::of(&run.scores),
                    kl_to_reference: Summary::of(&run.kl),
                    response_length: Summary::of(&lengths),
                };
                (run.name.clone(), results)
            })
            .collect(),
        best_of_n: None,
        win_rate: None,
        samples: Vec::new(),
        negated: args.negate,
        judge: judge.as_ref().map(|j| JudgeResults {
            judge: j.name(),
            policies: runs
                .iter()
                .filter_map(|run| Some((run.name.clone(), Summary::of(run.judged.as_ref()?))))
                .collect(),
            win_rate: None,
        }),
    };
    if args.best_of > 1 {
        // The first policy's evaluated sample is one of the n, so best-of-n never scores below it
        // on any prompt; n − 1 more are drawn with other seeds.
        let generator = &generators[0];
        let mut best = runs[0].scores.clone();
        for k in 1..args.best_of {
            let draw = SamplingConfig { seed: args.seed.wrapping_add(1000 + k as u64), ..sampling.clone() };
            let out = generator.generate(&prompts, tokenizer.eos_id(), &draw, device)?;
            for (b, s) in best.iter_mut().zip(scorer.score(&prompts, &out.completion_ids)?) {
                *b = b.max(s);
            }
        }
        report.best_of_n = Some(BestOfN { policy: runs[0].name.clone(), n: args.best_of, reward: Summary::of(&best) });
    }
    if runs.len() >= 2 {
        let (a, b) = (&runs[0], &runs[1]);
        let prompt_texts: Vec<String> = prompts.iter().map(|p| tokenizer.decode(p)).collect::<Result<_, _>>()?;
        let (wins, judge) = match args.judge.as_str() {
            "reward" => (verdicts(&a.scores, &b.scores, 1.0), scorer_name.clone()),
            command if command.starts_with("command:") => {
                let program = &command["command:".len()..];
                let verdicts = (0..prompts.len())
                    .map(|i| judge_with_command(program, &prompt_texts[i], &a.texts[i], &b.texts[i]))
                    .collect::<anyhow::Result<Vec<f64>>>()?;
                (verdicts, command.to_string())
            }
            other => bail!("--judge must be `reward` or `command:CMD`, got {other:?}"),
        };
        let rate = wins.iter().sum::<f64>() / wins.len() as f64;
        report.win_rate = Some(WinRate { a: a.name.clone(), b: b.name.clone(), a_over_b: rate, judge });
        if let (Some(results), Some(x), Some(y)) = (report.judge.as_mut(), &a.judged, &b.judged) {
            // In the objective's direction: with --negate a lower judge score is the better one.
            let wins = verdicts(x, y, if args.negate { -1.0 } else { 1.0 });
            let a_over_b = wins.iter().sum::<f64>() / wins.len() as f64;
            let judge = results.judge.clone();
            results.win_rate = Some(WinRate { a: a.name.clone(), b: b.name.clone(), a_over_b, judge });
        }
        report.samples = (0..prompts.len().min(args.samples))
            .map(|i| Sample {
                prompt: prompt_texts[i].clone(),
                responses: runs
                    .iter()
                    .map(|run| {
                        let response = SampleResponse {
                            response: run.texts[i].clone(),
                            reward: run.scores[i],
                            judge: run.judged.as_ref().map(|j| j[i]),
                        };
                        (run.name.clone(), response)
                    })
                    .collect(),
            })
            .collect();
    }
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.out {
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{text}");
    Ok(())
}

/// Per prompt: 1 when `a` scores higher than `b` (times `direction`), 0 when lower, ½ for a tie.
fn verdicts(a: &[f32], b: &[f32], direction: f32) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(x, y)| match (direction * x).partial_cmp(&(direction * y)) {
            Some(std::cmp::Ordering::Greater) => 1.0,
            Some(std::cmp::Ordering::Less) => 0.0,
            _ => 0.5,
        })
        .collect()
}

/// Runs an external judge: JSON {"prompt", "a", "b"} on stdin; `a`, `b` or `tie` on stdout.
fn judge_with_command(program: &str, prompt: &str, a: &str, b: &str) -> anyhow::Result<f64> {
    let mut child = Command::new("sh")
        .args(["-c", program])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting judge {program:?}"))?;
    let input = json!({"prompt": prompt, "a": a, "b": b}).to_string();
    // A judge may answer without reading its input; a closed pipe is not an error then.
    if let Err(e) = child.stdin.take().expect("piped").write_all(input.as_bytes()) {
        anyhow::ensure!(e.kind() == std::io::ErrorKind::BrokenPipe, "writing to judge {program:?}: {e}");
    }
    let output = child.wait_with_output()?;
    anyhow::ensure!(output.status.success(), "judge {program:?} exited with {}", output.status);
    match String::from_utf8_lossy(&output.stdout).trim() {
        "a" => Ok(1.0),
        "b" => Ok(0.0),
        "tie" => Ok(0.5),
        other => bail!("judge {program:?} printed {other:?}; expected a, b or tie"),
    }
}
