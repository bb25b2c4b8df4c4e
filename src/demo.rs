//! `rlhf demo`: the whole RLHF pipeline offline on CPU, in minutes, on the real runtime.
//!
//! corpus → BPE tokenizer → SFT → reward model → distributed PPO (`rlhf run`: learner, reward
//! server and workers as processes on 127.0.0.1) → eval → report.html
//!
//! The corpus is rlhf's procedural reviews, or any labelled text corpus with `--corpus` (e.g.
//! real IMDb reviews; `deploy/demo-imdb.toml` holds settings chosen for them). With
//! `--judge-lexicon`, the eval also scores every response with a lexicon PPO never optimised.
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
    /// Resolve and check the settings, print them as TOML, and exit.
    #[arg(long)]
    check: bool,
    /// A labelled text corpus instead of the procedural one: a `{"text","label"}` JSONL, CSV or
    /// parquet file, a folder with `train.*` (and `test.*`) in those formats, an aclImdb folder,
    /// or a hub dataset id (`imdb`) when online. Without a test split, `corpus.test_fraction` of
    /// it is held out.
    #[arg(long, value_name = "PATH")]
    corpus: Option<PathBuf>,
    /// An existing tokenizer (tokenizer.json or a model directory) instead of a BPE trained on
    /// the corpus.
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
    /// An independent judge for the eval: a lexicon (e.g. aclImdb's imdbEr) scoring every
    /// policy's held-out responses beside the reward model PPO optimised.
    #[arg(long, value_name = "PATH")]
    judge_lexicon: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

/// Sizes of the corpus: reviews generated, or at most this many taken (seeded shuffle) from
/// `--corpus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorpusConfig {
    pub train_reviews: usize,
    pub test_reviews: usize,
    /// With `--corpus` and no test split in it: the fraction held out for testing.
    pub test_fraction: f64,
    pub seed: u64,
}

impl Default for CorpusConfig {
    fn default() -> Self {
        Self { train_reviews: 4000, test_reviews: 400, test_fraction: 0.1, seed: 0 }
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

/// A GPT-2 shape for the demo's models (`[model]` in the config), instead of a preset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_positions: usize,
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
    /// A model shape instead of the preset's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelShape>,
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
        let fraction = self.corpus.test_fraction;
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(InvalidSetting::new("corpus.test_fraction", "a fraction between 0 and 1", fraction));
        }
        if self.vocab_size < 260 {
            return Err(InvalidSetting::new(
                "vocab_size",
                "at least 260 (the 256 bytes and special tokens)",
                self.vocab_size,
            ));
        }
        if let Some(m) = &self.model {
            Gpt2Config::new(self.vocab_size, m.n_positions, m.n_embd, m.n_layer, m.n_head)
                .validate()
                .map_err(|e| InvalidSetting::new("model", "a valid GPT-2 shape", e))?;
        } else if Gpt2Config::preset(&self.preset).is_err() {
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
            model: None,
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

/// Where `--corpus` reads from: a training split and, if the corpus has one, a test split.
#[derive(Debug, Clone, Serialize)]
struct CorpusSource {
    train: PathBuf,
    test: Option<PathBuf>,
    /// Size and modification time of each, so that a changed corpus redoes the stages.
    identity: Vec<String>,
}

impl CorpusSource {
    /// `arg` as a file, a folder with `train.*`/`test.*` (JSONL, CSV or parquet) or `train/` and
    /// `test/` in the aclImdb layout, an aclImdb folder of one split, or a hub dataset id.
    fn find(arg: &Path) -> anyhow::Result<Self> {
        let split_in = |dir: &Path, split: &str| -> Option<PathBuf> {
            let candidates = ["jsonl", "csv", "parquet"].map(|ext| dir.join(format!("{split}.{ext}")));
            candidates.into_iter().find(|p| p.is_file()).or_else(|| {
                let folder = dir.join(split);
                (folder.join("pos").is_dir() && folder.join("neg").is_dir()).then_some(folder)
            })
        };
        let (train, test) = if arg.is_file() {
            (arg.to_path_buf(), None)
        } else if arg.is_dir() {
            match split_in(arg, "train") {
                Some(train) => (train, split_in(arg, "test")),
                None if arg.join("pos").is_dir() && arg.join("neg").is_dir() => (arg.to_path_buf(), None),
                None => bail!(
                    "--corpus {}: expected train.jsonl, train.csv or train.parquet (and test.*), or an aclImdb \
                     folder (train/ and test/ with pos/ and neg/)",
                    arg.display()
                ),
            }
        } else {
            // Not a local path: a hub dataset id (which fails at once, naming the path, when the
            // argument looks like a path).
            let train =
                crate::models::data_path(arg, "train").with_context(|| format!("--corpus {}", arg.display()))?;
            (train, crate::models::data_path(arg, "test").ok())
        };
        let identity = std::iter::once(&train).chain(&test).map(|p| file_identity(p)).collect::<anyhow::Result<_>>()?;
        Ok(Self { train, test, identity })
    }

    /// The training and test reviews: at most `config.train_reviews` and `config.test_reviews`
    /// of each, after a seeded shuffle; without a test split, `config.test_fraction` of the
    /// training split is held out. Both splits must hold both labels.
    fn load(&self, config: &CorpusConfig) -> anyhow::Result<(Vec<TextExample>, Vec<TextExample>)> {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        let read = |path: &Path| -> anyhow::Result<Vec<TextExample>> {
            let rows = rlhf_trainer::data::load_text(path, rlhf_trainer::data::OnMalformed::Error)?.rows;
            anyhow::ensure!(!rows.is_empty(), "--corpus {}: no reviews", path.display());
            Ok(rows)
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
        let mut train = read(&self.train)?;
        train.shuffle(&mut rng);
        let mut test = match &self.test {
            Some(path) => {
                let mut test = read(path)?;
                test.shuffle(&mut rng);
                test
            }
            None => {
                let held_out = ((train.len() as f64) * config.test_fraction).round().max(1.0) as usize;
                anyhow::ensure!(
                    held_out < train.len(),
                    "--corpus {}: {} reviews are too few to hold out {held_out} for testing",
                    self.train.display(),
                    train.len()
                );
                train.split_off(train.len() - held_out)
            }
        };
        train.truncate(config.train_reviews);
        test.truncate(config.test_reviews);
        for (split, rows) in [("training", &train), ("test", &test)] {
            for label in [0, 1] {
                anyhow::ensure!(
                    rows.iter().any(|r| r.label == label),
                    "--corpus {}: the {split} reviews have no label {label}; the reward model needs positive (1) and \
                     negative (0) reviews",
                    self.train.display()
                );
            }
        }
        Ok((train, test))
    }
}

/// A file or folder as `path:bytes:modified`, for a stage's fingerprint.
fn file_identity(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    Ok(format!("{}:{}:{}", path.display(), meta.len(), modified.map_or(0, |d| d.as_nanos())))
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
    if args.check {
        print!("{}", toml::to_string_pretty(&demo)?);
        return Ok(());
    }
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

    // 1. The corpus: seeded procedural reviews with sentiment labels, or `--corpus`.
    let source = args.corpus.as_deref().map(CorpusSource::find).transpose()?;
    let corpus = Stage::new(out.join("corpus"), &(&demo.corpus, &source), &[])?;
    corpus.run(1, "corpus", args.fresh, |dir| {
        let (train, test) = match &source {
            Some(source) => source.load(&demo.corpus)?,
            None => {
                let mut reviews =
                    generate_reviews(demo.corpus.train_reviews + demo.corpus.test_reviews, demo.corpus.seed);
                let test = reviews.split_off(demo.corpus.train_reviews);
                (reviews, test)
            }
        };
        write_jsonl(&dir.join("train.jsonl"), &train)?;
        write_jsonl(&dir.join("test.jsonl"), &test)?;
        let positive = |rows: &[TextExample]| rows.iter().filter(|r| r.label == 1).count();
        eprintln!(
            "  {} train ({} positive) and {} test reviews ({} positive)",
            train.len(),
            positive(&train),
            test.len(),
            positive(&test)
        );
        Ok(())
    })?;
    let train_data = corpus.dir.join("train.jsonl");
    let test_data = corpus.dir.join("test.jsonl");

    // 2. A byte-level BPE trained on the training reviews, or `--tokenizer`.
    let given_tokenizer = args.tokenizer.as_deref().map(file_identity).transpose()?;
    let tokenizer = Stage::new(out.join("tokenizer"), &(&demo.vocab_size, &given_tokenizer), &[&corpus])?;
    tokenizer.run(2, "tokenizer", args.fresh, |dir| {
        if let Some(path) = &args.tokenizer {
            let given =
                rlhf_trainer::Tokenizer::load(path).with_context(|| format!("--tokenizer {}", path.display()))?;
            given.save_hf(dir)?;
            eprintln!("  {} ({} tokens)", path.display(), given.vocab_size());
            return Ok(());
        }
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
    let sft = Stage::new(out.join("sft"), &(&demo.preset, &demo.model, &demo.sft), &[&tokenizer])?;
    sft.run(3, "supervised fine-tuning", args.fresh, |dir| {
        let config_file = configs.join("sft.toml");
        config::write(&demo.sft, &config_file)?;
        // A preset, or the `[model]` shape as a config.json (the vocabulary follows the tokenizer).
        let init = match &demo.model {
            None => demo.preset.clone(),
            Some(m) => {
                let shape = configs.join("model.json");
                Gpt2Config::new(demo.vocab_size, m.n_positions, m.n_embd, m.n_layer, m.n_head)
                    .save(&shape, "GPT2LMHeadModel")?;
                path(&shape)
            }
        };
        #[rustfmt::skip]
        let command = [
            "sft", "--init", &init, "--tokenizer", &path(&tokenizer.dir.join("tokenizer.json")),
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
        ..Default::default()
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
    let judge = args.judge_lexicon.as_deref().map(file_identity).transpose()?;
    let eval = Stage::new(out.join(format!("eval-{target}")), &(&demo.eval, &judge), &[&ppo])?;
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
            // Held-out prompts are cut as the training prompts are.
            "--min-chars",
            &demo.ppo.prompts.min_chars.to_string(),
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
        if let Some(lexicon) = &args.judge_lexicon {
            command.extend(["--judge-lexicon".to_string(), path(lexicon)]);
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
    if let (Some(judge), Some(before), Some(after)) =
        (&eval_json.judge, eval_json.mean_judge("sft"), eval_json.mean_judge(target))
    {
        let win = judge.win_rate.as_ref().map_or(f64::NAN, |w| 1.0 - w.a_over_b);
        println!(
            "  independent judge ({}): sft {before:.3} → {target} {after:.3}; judge win rate {win:.2}",
            judge.judge
        );
        if eval_json.reward_hacking_suspected("sft", target) == Some(true) {
            println!("  reward hacking suspected: the reward rose but the judge did not follow");
        }
    }
    println!("  report: {}", report_path.display());
    Ok(())
}
