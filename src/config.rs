//! Resolving a command's config: defaults < TOML file (`--config`) < typed flags < `--set a.b=v`.
//! The result is deserialised once into the command's serde struct (`deny_unknown_fields`), so
//! a misspelt key is an error naming it.

use rlhf_trainer::validate::Validate;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::Value;

/// Builds `T` from its defaults, the file, the flags and the `--set` overrides.
pub fn resolve<T: Serialize + DeserializeOwned + Default + Validate>(
    file: Option<&Path>,
    flags: Vec<(&str, Value)>,
    sets: &[String],
) -> anyhow::Result<T> {
    let mut value = Value::try_from(T::default()).context("serialising the default config")?;
    if let Some(file) = file {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read config {}", file.display()))?;
        let overrides: Value =
            toml::from_str(&text).with_context(|| format!("{} is not valid TOML", file.display()))?;
        merge(&mut value, overrides);
        T::deserialize(value.clone()).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    }
    for (key, flag) in flags {
        set(&mut value, key, flag)?;
    }
    for assignment in sets {
        let Some((key, raw)) = assignment.split_once('=') else {
            bail!("--set {assignment:?}: expected KEY=VALUE, e.g. --set ppo.cliprange=0.1");
        };
        set(&mut value, key.trim(), parse_value(raw.trim()))?;
        T::deserialize(value.clone()).map_err(|e| anyhow!("--set {assignment}: {e}"))?;
    }
    let config = T::deserialize(value).map_err(|e| anyhow!("invalid config: {e}"))?;
    config.validate().map_err(|e| anyhow!("invalid config: {e}"))?;
    Ok(config)
}

/// A TOML value (`0.1`, `true`, `[1, 2]`, `{ fixed = { value = 0.1 } }`), else a bare string.
fn parse_value(raw: &str) -> Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

/// Merges `overrides` into `base`, table by table. A one-key table meeting a one-key table with
/// another key is an enum switching variant (`[train.ppo.kl.fixed]` over the default
/// `kl.adaptive`): it is replaced, not merged.
fn merge(base: &mut Value, overrides: Value) {
    match (base, overrides) {
        (Value::Table(base), Value::Table(overrides))
            if base.len() == 1 && overrides.len() == 1 && base.keys().ne(overrides.keys()) =>
        {
            *base = overrides;
        }
        (Value::Table(base), Value::Table(overrides)) => {
            for (key, value) in overrides {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overrides) => *base = overrides,
    }
}

fn set(root: &mut Value, key: &str, value: Value) -> anyhow::Result<()> {
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        let table = node.as_table_mut().ok_or_else(|| anyhow!("config key {key:?}: {part:?} is not a table"))?;
        node = table.entry(part.to_string()).or_insert_with(|| Value::Table(Default::default()));
    }
    let table = node.as_table_mut().ok_or_else(|| anyhow!("config key {key:?} does not name a table entry"))?;
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// Writes the resolved config as TOML (into run directories and checkpoints).
pub fn write<T: Serialize>(config: &T, path: &Path) -> anyhow::Result<()> {
    let text = toml::to_string_pretty(config).context("serialising the config")?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `--config` and `--set`, shared by every command with a config.
#[derive(clap::Args)]
pub struct ConfigArgs {
    /// TOML file with the command's config fields (see its `*_config.toml` in a run directory).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one config field, e.g. --set optim.learning_rate=3e-4 (repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
}

/// The typed flags of the supervised training commands (SFT, reward model).
#[derive(clap::Args)]
pub struct TrainFlags {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub learning_rate: Option<f64>,
    #[arg(long)]
    pub max_length: Option<usize>,
}

impl TrainFlags {
    /// Resolves a config whose fields include `epochs`, `batch_size`, `optim.learning_rate` and
    /// `max_length`.
    pub fn resolve<T: Serialize + DeserializeOwned + Default + Validate>(&self) -> anyhow::Result<T> {
        let integer = |v: usize| Value::Integer(v as i64);
        let flags = [
            ("epochs", self.epochs.map(integer)),
            ("batch_size", self.batch_size.map(integer)),
            ("optim.learning_rate", self.learning_rate.map(Value::Float)),
            ("max_length", self.max_length.map(integer)),
        ];
        let flags = flags.into_iter().filter_map(|(key, value)| value.map(|v| (key, v))).collect();
        resolve(self.config.config.as_deref(), flags, &self.config.sets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlhf_trainer::ppo::KlController;
    use rlhf_trainer::ppo::local::LocalConfig;

    #[test]
    fn a_file_can_switch_an_enum_variant_and_set_fields() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ppo.toml");
        std::fs::write(&file, "iterations = 3\n[ppo.kl.fixed]\nvalue = 0.05\n[ppo.optim]\nlearning_rate = 1e-3\n")
            .unwrap();
        let config: LocalConfig = resolve(Some(&file), Vec::new(), &["ppo.cliprange=0.1".into()]).unwrap();
        assert_eq!(config.iterations, 3);
        assert_eq!(config.ppo.kl, KlController::Fixed { value: 0.05 });
        assert_eq!(config.ppo.optim.learning_rate, 1e-3);
        assert_eq!(config.ppo.cliprange, 0.1);
        assert_eq!(
            config.ppo.optim.beta2,
            LocalConfig::default().ppo.optim.beta2,
            "untouched fields keep their defaults"
        );
        let error = resolve::<LocalConfig>(None, Vec::new(), &["ppo.clip_range=0.1".into()]).unwrap_err();
        assert!(error.to_string().contains("clip_range"), "{error}");
    }
}
