//! `rlhf demo`: the whole RLHF pipeline offline on CPU, in minutes, on the real runtime.
//!
//! corpus → BPE tokenizer → SFT → reward model → distributed PPO (`rlhf run`: learner, reward
//! server and workers as processes on 127.0.0.1) → eval → report.html
//!
//! Every stage after the tokenizer runs the same `rlhf` subcommand a user would type, with its
//! config written next to its output, so the demo doubles as a worked example. A stage whose
//! directory holds a `.stage` file equal to its settings (and those of the stages it reads) is
//! skipped; anything else in its directory is an unfinished attempt and is cleared first.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use rlhf_actors::LearnerConfig;
use rlhf_actors::config::RuntimeConfig;
use rlhf_trainer::data::corpus::{generate_reviews, train_bpe};
use rlhf_trainer::data::{PromptConfig, TextExample};
use rlhf_trainer::ppo::KlController;
use rlhf_trainer::ppo::PpoConfig;
use rlhf_trainer::ppo::local::LocalConfig;
use rlhf_trainer::reward::RewardConfig;
use rlhf_trainer::sft::SftConfig;
use rlhf_trainer::train::optim::{OptimConfig, Schedule};
use rlhf_trainer::validate::{Checked, InvalidSetting, at_least_one, section};
use rlhf_trainer::{Gpt2Config, SamplingConfig};
use serde::{Deserialize, Serialize};

use crate::config::{self, ConfigArgs};
use crate::device::Device;
use crate::report;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The "happy" reviewer: PPO towards what the reward model scores high.
    Positive,
    /// The "pessimistic" reviewer: the same reward model, negated.
    Negative,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Positive => "positive",
            Self::Negative => "negative",
        }
    }
}

#[derive(Args)]
pub struct DemoArgs {
    /// Directory for every stage's output (finished stages with the same settings are reused).
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// What PPO trains the policy towards: positive ("happy") or negative ("pessimistic") reviews.
    #[arg(long, value_enum, default_value = "positive")]
    target: Target,
    /// Rollout workers for the PPO stage.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Redo every stage, even finished ones.
    #[arg(long)]
    fresh: bool,
    #[command(flatten)]
    config: ConfigArgs,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

/// Sizes of the generated corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorpusConfig {
    pub train_reviews: usize,
    pub test_reviews: usize,
    pub seed: u64,
}

impl Default for CorpusConfig {
    fn default() -> Self {
        Self { train_reviews: 4000, test_reviews: 400, seed: 0 }
    }
}

/// The evaluation at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    pub n_prompts: usize,
    /// Best-of-n baseline from the SFT policy (0: off).
    pub best_of: usize,
    pub max_new_tokens: usize,
    pub samples: usize,
    pub seed: u64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { n_prompts: 128, best_of: 4, max_new_tokens: 24, samples: 8, seed: 1 }
    }
}

/// Every setting of the demo; `--config FILE` and `--set key=value` override these defaults,
/// e.g. `--set ppo.iterations=60`. The `sft`, `reward` and `ppo` sections are exactly the
/// configs of `rlhf sft`, `rlhf reward train` and the learner's `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    pub corpus: CorpusConfig,
    /// Size of the byte-level BPE vocabulary trained on the corpus.
    pub vocab_size: usize,
    /// Model preset for the policy and the reward model (its vocabulary is the tokenizer's).
    pub preset: String,
    pub sft: SftConfig,
    pub reward: RewardConfig,
    pub ppo: LocalConfig,
    pub runtime: RuntimeConfig,
    pub eval: EvalConfig,
}

impl DemoConfig {
    pub fn validate(&self) -> Checked {
        at_least_one("corpus.train_reviews", self.corpus.train_reviews)?;
        at_least_one("corpus.test_reviews", self.corpus.test_reviews)?;
        if self.vocab_size < 260 {
            return Err(InvalidSetting::new(
                "vocab_size",
                "at least 260 (the 256 bytes and special tokens)",
                self.vocab_size,
            ));
        }
        if Gpt2Config::preset(&self.preset).is_err() {
            return Err(InvalidSetting::new(
                "preset",
                &format!("one of {}", rlhf_trainer::model::config::PRESETS.join(", ")),
                &self.preset,
            ));
        }
        section("sft", self.sft.validate())?;
        section("reward", self.reward.validate())?;
        section("ppo", self.ppo.validate())?;
        section("runtime", self.runtime.validate())?;
        at_least_one("eval.n_prompts", self.eval.n_prompts)?;
        at_least_one("eval.max_new_tokens", self.eval.max_new_tokens)
    }
}

rlhf_trainer::impl_validate!(DemoConfig);

impl Default for DemoConfig {
    fn default() -> Self {
        let sft = SftConfig {
            optim: OptimConfig {
                learning_rate: 2e-3,
                warmup_steps: 20,
                schedule: Schedule::Cosine,
                ..Default::default()
            },
            epochs: 4,
            batch_size: 16,
            max_length: 96,
            ..Default::default()
        };
        let reward = RewardConfig {
            optim: OptimConfig { learning_rate: 5e-4, warmup_steps: 10, ..Default::default() },
            epochs: 1,
            batch_size: 16,
            max_length: 96,
            ..Default::default()
        };
        let ppo = LocalConfig {
            iterations: 60,
            batch_size: 64,
            sampling: SamplingConfig { max_new_tokens: 24, ..Default::default() },
            ppo: PpoConfig {
                optim: OptimConfig { learning_rate: 1e-4, ..Default::default() },
                ppo_epochs: 4,
                mini_batch_size: 16,
                kl: KlController::Adaptive { value: 0.1, target: 6.0, horizon: 10000.0 },
                ..Default::default()
            },
            // The corpus's reviews are short: cut prompts from all of them.
            prompts: PromptConfig { min_chars: 0, min_tokens: 2, max_tokens: 6, seed: 0, whole: false },
            ..Default::default()
        };
        let runtime = RuntimeConfig { checkpoint_every: 10, ..Default::default() };
        Self {
            corpus: CorpusConfig::default(),
            vocab_size: 1024,
            preset: "tiny".into(),
            sft,
            reward,
            ppo,
            runtime,
            eval: EvalConfig::default(),
        }
    }
}

/// A stage's directory and the fingerprint that marks it finished.
struct Stage {
    dir: PathBuf,
    fingerprint: String,
}

impl Stage {
    /// `settings` are this stage's own; `inputs` are the stages it reads.
    fn new(dir: PathBuf, settings: &impl Serialize, inputs: &[&Stage]) -> anyhow::Result<Self> {
        let mut fingerprint = format!("rlhf {}\n{}\n", env!("CARGO_PKG_VERSION"), serde_json::to_string(settings)?);
        for input in inputs {
            fingerprint.push_str(&input.fingerprint);
        }
        Ok(Self { dir, fingerprint })
    }

    fn marker(&self) -> PathBuf {
        self.dir.join(".stage")
    }

    fn is_done(&self) -> bool {
        std::fs::read_to_string(self.marker()).is_ok_and(|text| text == self.fingerprint)
    }

    /// Runs `work` into a clean directory unless the stage is already done.
    fn run(
        &self,
        step: usize,
        title: &str,
        fresh: bool,
        work: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let label = format!("[{step}/6] {title}");
        if !fresh && self.is_done() {
            eprintln!("{label}: done already ({})", self.dir.display());
            return Ok(());
        }
        eprintln!("{label} → {}", self.dir.display());
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).with_context(|| format!("cannot clear {}", self.dir.display()))?;
        }
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let started = Instant::now();
        work(&self.dir).with_context(|| format!("stage {title:?}"))?;
        std::fs::write(self.marker(), &self.fingerprint)
            .with_context(|| format!("cannot write {}", self.marker().display()))?;
        eprintln!("{label}: finished in {:.0} s", started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// Runs `rlhf <args>` to completion (its progress and logs go to our terminal).
fn rlhf(args: &[String], stdout: Stdio) -> anyhow::Result<()> {
    let mut command: Command = crate::runtime::rlhf_command()?;
    if std::env::var_os("RUST_LOG").is_none() {
        // One line per PPO iteration: the workers' per-lease lines are left to RUST_LOG=debug users.
        command.env("RUST_LOG", "info,rlhf_rollout_worker=warn");
    }
    let status = command
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("starting rlhf {}", args[0]))?;
    if !status.success() {
        bail!("`rlhf {}` exited with {status}", args.join(" "));
    }
    Ok(())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn write_jsonl(path: &Path, rows: &[TextExample]) -> anyhow::Result<()> {
    let mut text = String::new();
    for row in rows {
        text.push_str(&serde_json::to_string(&serde_json::json!({"text": row.text, "label": row.label}))?);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let demo: DemoConfig = config::resolve(args.config.config.as_deref(), Vec::new(), &args.config.sets)?;
    anyhow::ensure!(
        demo.corpus.train_reviews >= 20 && demo.corpus.test_reviews >= 10,
        "corpus: need at least 20 train and 10 test reviews"
    );
    let started = Instant::now();
    let out = &args.out;
    // The demo's directory is its own run directory (stages are reused, so never refused); each
    // stage's command locks the stage's directory in turn.
    let _run_dir = rlhf_trainer::rundir::RunDir::open(out, rlhf_trainer::rundir::Existing::Resume)?;
    config::write(&demo, &out.join("demo_config.toml"))?;
    // Stage configs live beside the stages: a stage's directory is its command's --out, empty
    // when the command starts.
    let configs = out.join("configs");
    std::fs::create_dir_all(&configs).with_context(|| format!("cannot create {}", configs.display()))?;
    let device = args.device.to_string();
    let target = args.target.name();
    eprintln!("rlhf demo: target {target}, {} workers, output in {}", args.workers, out.display());

    // 1. The corpus: seeded procedural reviews with sentiment labels.
    let corpus = Stage::new(out.join("corpus"), &demo.corpus, &[])?;
    corpus.run(1, "corpus", args.fresh, |dir| {
        let reviews = generate_reviews(demo.corpus.train_reviews + demo.corpus.test_reviews, demo.corpus.seed);
        let (train, test) = reviews.split_at(demo.corpus.train_reviews);
        write_jsonl(&dir.join("train.jsonl"), train)?;
        write_jsonl(&dir.join("test.jsonl"), test)?;
        eprintln!("  {} train and {} test reviews, half positive", train.len(), test.len());
        Ok(())
    })?;
    let train_data = corpus.dir.join("train.jsonl");
    let test_data = corpus.dir.join("test.jsonl");

    // 2. A byte-level BPE trained on the training reviews.
    let tokenizer = Stage::new(out.join("tokenizer"), &demo.vocab_size, &[&corpus])?;
    tokenizer.run(2, "tokenizer", args.fresh, |dir| {
        let texts: Vec<String> = rlhf_trainer::data::load_text(&train_data, rlhf_trainer::data::OnMalformed::Error)?
            .rows
            .into_iter()
            .map(|r| r.text)
            .collect();
        let trained = train_bpe(&texts, demo.vocab_size)?;
        trained.save_hf(dir)?;
        eprintln!("  byte-level BPE, {} tokens", trained.vocab_size());
        Ok(())
    })?;

    // 3. SFT of a fresh tiny GPT-2 on the reviews.
    let sft = Stage::new(out.join("sft"), &(&demo.preset, &demo.sft), &[&tokenizer])?;
    sft.run(3, "supervised fine-tuning", args.fresh, |dir| {
        let config_file = configs.join("sft.toml");
        config::write(&demo.sft, &config_file)?;
        #[rustfmt::skip]
        let command = [
            "sft", "--init", &demo.preset, "--tokenizer", &path(&tokenizer.dir.join("tokenizer.json")),
            "--data", &path(&train_data), "--eval-data", &path(&test_data),
            "--config", &path(&config_file), "--out", &path(dir), "--device", &device,
        ];
        rlhf(&command.map(String::from), Stdio::null())
    })?;

    // 4. A reward model from the SFT model: positive reviews preferred over negative ones.
    let reward = Stage::new(out.join("reward-model"), &demo.reward, &[&sft])?;
    reward.run(4, "reward model", args.fresh, |dir| {
        let config_file = configs.join("reward.toml");
        config::write(&demo.reward, &config_file)?;
        #[rustfmt::skip]
        let command = [
            "reward", "train", "--model", &path(&sft.dir), "--format", "sentiment", "--target", "positive",
            "--data", &path(&train_data), "--eval-data", &path(&test_data), "--normalize",
            "--config", &path(&config_file), "--out", &path(dir), "--device", &device,
        ];
        rlhf(&command.map(String::from), Stdio::null())?;
        let (_, results) = report::reward_model_results(dir)?;
        eprintln!("  test accuracy {:.1}%", results.get("eval/accuracy").copied().unwrap_or(f64::NAN) * 100.0);
        Ok(())
    })?;

    // 5. PPO on the real runtime: learner, reward server and workers as processes.
    let learner_config = LearnerConfig {
        model: path(&sft.dir),
        prompts: train_data.clone(),
        out: out.join(format!("ppo-{target}")),
        reward: rlhf_actors::config::RewardSource {
            model: Some(path(&reward.dir)),
            negate: args.target == Target::Negative,
            ..Default::default()
        },
        train: demo.ppo.clone(),
        runtime: demo.runtime.clone(),
    };
    let ppo = Stage::new(learner_config.out.clone(), &(&learner_config, args.workers), &[&sft, &reward])?;
    ppo.run(5, &format!("PPO towards {target} reviews ({} iterations, {} workers)", demo.ppo.iterations, args.workers), args.fresh, |_dir| {
        let config_file = configs.join(format!("learner-{target}.toml"));
        config::write(&learner_config, &config_file)?;
        #[rustfmt::skip]
        let command = ["run", "--config", &path(&config_file), "--workers", &args.workers.to_string(), "--device", &device];
        rlhf(&command.map(String::from), Stdio::inherit())
    })?;

    // 6. Evaluation on held-out prompts, and the report.
    let eval = Stage::new(out.join(format!("eval-{target}")), &demo.eval, &[&ppo])?;
    eval.run(6, "evaluation and report", args.fresh, |dir| {
        let e = &demo.eval;
        let mut command: Vec<String> = [
            "eval",
            "--policy",
            &format!("sft={}", path(&sft.dir)),
            "--policy",
            &format!("{target}={}", path(&ppo.dir)),
            "--reference",
            &path(&sft.dir),
            "--prompts",
            &path(&test_data),
            "--min-chars",
            "0",
            "--reward-model",
            &path(&reward.dir),
            "--n-prompts",
            &e.n_prompts.to_string(),
            "--best-of",
            &e.best_of.to_string(),
            "--max-new-tokens",
            &e.max_new_tokens.to_string(),
            "--samples",
            &e.samples.to_string(),
            "--seed",
            &e.seed.to_string(),
            "--out",
            &path(&dir.join("eval.json")),
            "--device",
            &device,
        ]
        .map(String::from)
        .to_vec();
        if args.target == Target::Negative {
            command.push("--negate".into());
        }
        rlhf(&command, Stdio::null())
    })?;
    let mut inputs = report::Inputs::from_run_dir(&ppo.dir)?;
    inputs.title = format!("rlhf demo: PPO towards {target} reviews");
    inputs.eval = Some(crate::eval::EvalResults::read(&eval.dir.join("eval.json"))?);
    inputs.reward_model = Some(report::reward_model_results(&reward.dir)?);
    inputs.configs.insert(0, ("demo_config.toml".into(), std::fs::read_to_string(out.join("demo_config.toml"))?));
    let report_path = report::write(&ppo.dir, &inputs)?;

    // The summary.
    let eval_json = inputs.eval.as_ref().expect("set above");
    let reward_of = |name: &str| eval_json.mean_reward(name).unwrap_or(f64::NAN);
    let kl = eval_json.policies.get(target).map_or(f64::NAN, |p| p.kl_to_reference.mean);
    let accuracy = inputs.reward_model.as_ref().and_then(|(_, r)| r.get("eval/accuracy").copied()).unwrap_or(f64::NAN);
    let objective = if args.target == Target::Negative { "negated reward-model score" } else { "reward-model score" };
    println!("rlhf demo finished in {:.1} min", started.elapsed().as_secs_f64() / 60.0);
    println!(
        "  reward ({objective}) on {} held-out prompts: sft {:.3} → {target} {:.3}",
        eval_json.n_prompts,
        reward_of("sft"),
        reward_of(target)
    );
    if let Some(best) = eval_json.best_of_n.as_ref().map(|b| b.reward.mean) {
        println!("  best-of-{} from sft: {best:.3}", demo.eval.best_of);
    }
    println!("  KL({target} ‖ sft) {kl:.2} nats per response; reward model test accuracy {:.1}%", accuracy * 100.0);
    println!("  report: {}", report_path.display());
    Ok(())
}
