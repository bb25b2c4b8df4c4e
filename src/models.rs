//! `--model DIR | --init PRESET` for the training commands.

use std::path::PathBuf;

use anyhow::{Context, bail};
use burn::tensor::backend::Backend;
use clap::Args;
use rlhf_trainer::data::Columns;
use rlhf_trainer::rundir::{Existing, RunDir};
use rlhf_trainer::{Gpt2, Gpt2Config, Heads, Kernels, Tokenizer, hub, model::hf};

#[derive(Args, Clone)]
pub struct ModelSource {
    /// Start from this model directory or hub id.
    #[arg(long, conflicts_with = "init")]
    pub model: Option<String>,
    /// Start from random weights with this preset (tiny, nano, distilgpt2, gpt2, ...) or the
    /// shape in a GPT-2 `config.json`; its vocabulary is sized to the tokenizer.
    #[arg(long, value_name = "PRESET|CONFIG.json")]
    pub init: Option<String>,
    /// Tokenizer file or directory (default: the model directory's).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

impl ModelSource {
    /// The model with `heads` (new heads are freshly initialised), its config and tokenizer.
    pub fn load<B: Backend>(
        &self,
        heads: Heads,
        device: &B::Device,
    ) -> anyhow::Result<(Gpt2Config, Gpt2<B>, Tokenizer)> {
        match (&self.model, &self.init) {
            (Some(name), _) => {
                let dir = hub::resolve(name)?;
                let (config, model) = hf::load_as::<B>(&dir, heads, device)
                    .with_context(|| format!("loading model {}", dir.display()))?;
                let tokenizer = Tokenizer::load(self.tokenizer.as_deref().unwrap_or(&dir))?;
                check_vocabularies(&dir, &tokenizer, config.vocab_size)?;
                Ok((config, model, tokenizer))
            }
            (None, Some(preset)) => {
                let path =
                    self.tokenizer.as_deref().context("--init needs --tokenizer (a tokenizer.json or a directory)")?;
                let tokenizer = Tokenizer::load(path)?;
                let mut config = if preset.ends_with(".json") {
                    Gpt2Config::load(std::path::Path::new(preset)).with_context(|| format!("--init {preset}"))?
                } else {
                    Gpt2Config::preset(preset)?
                };
                config.vocab_size = tokenizer.vocab_size();
                config.eos_token_id = Some(tokenizer.eos_id());
                config.bos_token_id = Some(tokenizer.eos_id());
                let model = config.init::<B>(heads, device);
                Ok((config, model, tokenizer))
            }
            (None, None) => bail!("pass --model DIR or --init PRESET"),
        }
    }
}

/// Which dataset column holds what, for data whose names are not TRL's.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ColumnArgs {
    /// Column holding a whole text (default "text").
    #[arg(long, value_name = "NAME")]
    pub text_column: Option<String>,
    /// Column holding a sentiment label, 0/1 or neg/pos (default "label").
    #[arg(long, value_name = "NAME")]
    pub label_column: Option<String>,
    /// Column holding a prompt, a string or a conversation (default "prompt").
    #[arg(long, value_name = "NAME")]
    pub prompt_column: Option<String>,
    /// Column holding a prompt's completion (default "completion").
    #[arg(long, value_name = "NAME")]
    pub completion_column: Option<String>,
    /// Column holding the preferred response of a pair (default "chosen").
    #[arg(long, value_name = "NAME")]
    pub chosen_column: Option<String>,
    /// Column holding the other response of a pair (default "rejected").
    #[arg(long, value_name = "NAME")]
    pub rejected_column: Option<String>,
    /// Column holding a conversation: a list of {"role", "content"} (default "messages").
    #[arg(long, value_name = "NAME")]
    pub messages_column: Option<String>,
}

impl ColumnArgs {
    /// The column names: the flags over `base`.
    pub fn over(&self, base: &Columns) -> Columns {
        let pick = |flag: &Option<String>, default: &String| flag.clone().unwrap_or_else(|| default.clone());
        Columns {
            text: pick(&self.text_column, &base.text),
            label: pick(&self.label_column, &base.label),
            prompt: pick(&self.prompt_column, &base.prompt),
            completion: pick(&self.completion_column, &base.completion),
            chosen: pick(&self.chosen_column, &base.chosen),
            rejected: pick(&self.rejected_column, &base.rejected),
            messages: pick(&self.messages_column, &base.messages),
        }
    }

    pub fn columns(&self) -> Columns {
        self.over(&Columns::default())
    }
}

/// A dataset argument: a local file or folder, or a hub dataset id (its `split` parquet file).
pub fn data_path(arg: &std::path::Path, split: &str) -> anyhow::Result<std::path::PathBuf> {
    Ok(hub::resolve_dataset(&arg.to_string_lossy(), split)?)
}

/// Opens and locks a command's run directory (see [`rlhf_trainer::rundir`]): one that already
/// holds a run must be resumed (`--resume`) or cleared (`--overwrite`).
pub fn run_dir(out: &std::path::Path, resume: bool, overwrite: bool) -> anyhow::Result<RunDir> {
    anyhow::ensure!(!(resume && overwrite), "--resume and --overwrite exclude each other");
    let existing = if resume {
        Existing::Resume
    } else if overwrite {
        Existing::Overwrite
    } else {
        Existing::Refuse
    };
    Ok(RunDir::open(out, existing)?)
}

/// A PPO run's starting point: the policy (with `heads`), its frozen reference, its tokenizer
/// and the prompts cut from a dataset. Shared by `ppo --local` and the learner.
pub struct PolicySetup<B: rlhf_trainer::AutodiffKernels> {
    pub model_config: Gpt2Config,
    pub policy: Gpt2<B>,
    pub reference: Gpt2<B::InnerBackend>,
    pub tokenizer: Tokenizer,
    pub prompts: Vec<Vec<u32>>,
}

/// A tokenizer must not produce ids the model cannot embed; a smaller one (a padded model
/// vocabulary) is allowed, with a warning, since sampled ids past it cannot be decoded.
pub fn check_vocabularies(dir: &std::path::Path, tokenizer: &Tokenizer, model_vocab: usize) -> anyhow::Result<()> {
    let tokens = tokenizer.vocab_size();
    anyhow::ensure!(
        tokens <= model_vocab,
        "{}: the tokenizer has {tokens} tokens but the model's vocabulary has {model_vocab} (vocab_size in config.json); \
         they must come from the same model",
        dir.display()
    );
    if tokens < model_vocab {
        tracing::warn!(dir = %dir.display(), tokens, model_vocab, "the tokenizer is smaller than the model's vocabulary");
    }
    Ok(())
}

pub fn load_policy<B: rlhf_trainer::AutodiffKernels>(
    model: &str,
    heads: Heads,
    prompts: &std::path::Path,
    columns: &Columns,
    prompt_config: &rlhf_trainer::data::PromptConfig,
    device: &B::Device,
) -> anyhow::Result<PolicySetup<B>> {
    use rlhf_trainer::data::{OnMalformed, load_prompt_texts, rl_prompts};
    let dir = hub::resolve(model)?;
    let (model_config, policy) =
        hf::load_as::<B>(&dir, heads, device).with_context(|| format!("loading policy {}", dir.display()))?;
    let (_, reference) = hf::load_as::<B::InnerBackend>(&dir, Heads::Lm, device)?;
    let tokenizer = Tokenizer::load(&dir)?;
    check_vocabularies(&dir, &tokenizer, model_config.vocab_size)?;
    let texts = load_prompt_texts(&data_path(prompts, "train")?, columns, OnMalformed::Error)?.rows;
    let prompts_ids = rl_prompts(&texts, &tokenizer, prompt_config)?;
    anyhow::ensure!(
        !prompts_ids.is_empty(),
        "{} gave no prompts (texts must be longer than prompts.min_chars)",
        prompts.display()
    );
    Ok(PolicySetup { model_config, policy, reference, tokenizer, prompts: prompts_ids })
}

/// A separate critic (`critic = "reward-model"`): the reward model `name` (directory or hub id)
/// with its score head, and its config. It reads the policy's token ids, so a reward model with
/// another tokenizer than `policy_tokenizer` is refused.
pub fn load_critic<B: rlhf_trainer::AutodiffKernels>(
    name: &str,
    policy_tokenizer: &Tokenizer,
    device: &B::Device,
) -> anyhow::Result<(Gpt2Config, Gpt2<B>)> {
    let dir = hub::resolve(name)?;
    let tokenizer =
        Tokenizer::load(&dir).with_context(|| format!("loading the critic's tokenizer from {}", dir.display()))?;
    anyhow::ensure!(
        tokenizer.to_json()? == policy_tokenizer.to_json()?,
        "critic {}: its tokenizer differs from the policy's, but a separate critic reads the policy's tokens; \
         use critic = \"shared\" with a reward model of another tokenizer",
        dir.display()
    );
    hf::load_as::<B>(&dir, Heads::Score { num_labels: 1 }, device)
        .with_context(|| format!("loading the critic from {}", dir.display()))
}

/// The scorer for `--reward-model DIR` or `--lexicon PATH` (negated with `negate`), reading the
/// policy's token ids (a reward model with another vocabulary gets re-tokenised text).
pub fn scorer<B: Kernels>(
    reward_model: Option<&str>,
    lexicon: Option<&std::path::Path>,
    negate: bool,
    policy_tokenizer: &Tokenizer,
    device: &B::Device,
) -> anyhow::Result<Box<dyn rlhf_trainer::reward::scorer::Scorer>> {
    if reward_model.is_none() && lexicon.is_none() {
        bail!("pass --reward-model DIR or --lexicon PATH");
    }
    let spec = rlhf_reward_server::ScorerSpec {
        model: reward_model,
        lexicon,
        tokenizer: Some(policy_tokenizer),
        negate,
        batch_size: rlhf_reward_server::DEFAULT_SCORE_BATCH,
    };
    Ok(rlhf_reward_server::build_scorer::<B>(&spec, device)?)
}
