//! Every PPO setting changes what it should: one `PpoTrainer::step` on the same rollouts from the
//! same weights, once with the defaults and once with one setting changed, then the metric (or
//! the weights) that setting must move. A setting that silently did nothing fails its row.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;

use crate::Gpt2Config;
use crate::model::gpt2::{Gpt2, Heads, Init};
use crate::ppo::{KlController, KlEstimator, MissingEos, OldLogprobs, PpoConfig, PpoTrainer, Rollout};
use crate::testutil::values;
use crate::train::Stats;
use crate::train::optim::OptimConfig;

type A = Autodiff<Flex>;

/// Eight rollouts, no response ending in the end-of-text id 0, behaviour log-probs of −1.
fn rollouts() -> Vec<Rollout> {
    (0..8u32)
        .map(|i| Rollout {
            query: vec![1 + i % 4, 2],
            response: vec![3, 4 + i % 5, 5 + i % 3],
            logprobs: vec![-1.0; 3],
            score: i as f32 * 0.25 - 0.5,
        })
        .collect()
}

fn base() -> PpoConfig {
    PpoConfig {
        optim: OptimConfig { learning_rate: 3e-3, ..Default::default() },
        mini_batch_size: 4,
        kl: KlController::Fixed { value: 0.2 },
        ..Default::default()
    }
}

/// One step from fixed weights, with a reference that differs from the policy (so that the KL
/// estimators disagree); returns the statistics and the policy's weights after the step.
fn step(config: PpoConfig) -> (Stats, Vec<f64>) {
    let device = Default::default();
    let model_config = Gpt2Config::new(32, 48, 32, 2, 2);
    let policy: Gpt2<A> = model_config.init_with(Heads::LmValue, &mut Init::seeded(1), &device);
    let reference = model_config.init_with(Heads::Lm, &mut Init::seeded(2), &device);
    let mut trainer = PpoTrainer::<A>::new(policy, None, reference, config, 0, &device).unwrap();
    let stats = trainer.step(&rollouts(), 8).unwrap();
    let weights = values(trainer.policy.valid().transformer.h[0].attn.c_attn.weight.val());
    (stats, weights)
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn every_ppo_setting_moves_its_metric() {
    let (base_stats, base_weights) = step(base());
    let initial = step(PpoConfig { optim: OptimConfig { learning_rate: 0.0, ..base().optim }, ..base() }).1;
    let moved = distance(&base_weights, &initial);
    assert!(moved > 0.0, "the base step moves the weights");
    let metric = |stats: &Stats, name: &str| stats[name];
    // (setting, config, check on (stats, weights) against the base run's)
    type Check = Box<dyn Fn(&Stats, &[f64]) -> Result<(), String>>;
    let more = |name: &'static str| -> Check {
        let before = metric(&base_stats, name);
        Box::new(move |s: &Stats, _: &[f64]| {
            let after = s[name];
            if after > before { Ok(()) } else { Err(format!("{name}: {before} -> {after}, expected more")) }
        })
    };
    let less = |name: &'static str| -> Check {
        let before = metric(&base_stats, name);
        Box::new(move |s: &Stats, _: &[f64]| {
            let after = s[name];
            if after < before { Ok(()) } else { Err(format!("{name}: {before} -> {after}, expected less")) }
        })
    };
    let differs = |name: &'static str| -> Check {
        let before = metric(&base_stats, name);
        Box::new(move |s: &Stats, _: &[f64]| {
            let after = s[name];
            if (after - before).abs() > 1e-6 { Ok(()) } else { Err(format!("{name}: stayed {before}")) }
        })
    };
    let (base_w, initial_w) = (base_weights.clone(), initial.clone());
    let moves_less: Check = Box::new(move |_: &Stats, w: &[f64]| {
        let (this, base) = (distance(w, &initial_w), distance(&base_w, &initial_w));
        if this < base * 0.9 { Ok(()) } else { Err(format!("weights moved {this}, base {base}")) }
    });
    let base_w = base_weights.clone();
    let other_weights: Check =
        Box::new(
            move |_: &Stats, w: &[f64]| {
                if distance(w, &base_w) > 1e-7 { Ok(()) } else { Err("the weights are the base run's".into()) }
            },
        );
    let initial_w = initial.clone();
    let skipped_everything: Check = Box::new(move |s: &Stats, w: &[f64]| {
        let checks = [
            (s["ppo/skipped_minibatches/ratio"] == 8.0, "8 mini-batches skipped (2 per epoch × 4)"),
            (s["ppo/loss/total"] == 0.0 && s["ppo/loss/policy"] == 0.0, "losses reported as 0"),
            (distance(w, &initial_w) == 0.0, "weights unchanged"),
            (s["ppo/policy/approxkl"].is_finite(), "diagnostics still reported"),
        ];
        checks.iter().find(|(ok, _)| !ok).map_or(Ok(()), |(_, what)| Err(format!("expected {what}: {s:?}")))
    });
    let ppo = base();
    let rows: Vec<(&str, PpoConfig, Check)> = vec![
        ("cliprange", PpoConfig { cliprange: 0.001, ..ppo.clone() }, more("ppo/policy/clipfrac")),
        ("cliprange_value", PpoConfig { cliprange_value: 1e-4, ..ppo.clone() }, more("ppo/val/clipfrac")),
        ("vf_coef", PpoConfig { vf_coef: 2.0, ..ppo.clone() }, more("ppo/loss/total")),
        ("kl_estimator", PpoConfig { kl_estimator: KlEstimator::Abs, ..ppo.clone() }, differs("objective/kl")),
        (
            "kl (coefficient)",
            PpoConfig { kl: KlController::Fixed { value: 2.0 }, ..ppo.clone() },
            differs("ppo/mean_non_score_reward"),
        ),
        ("whiten_rewards", PpoConfig { whiten_rewards: true, ..ppo.clone() }, differs("ppo/returns/mean")),
        ("gamma", PpoConfig { gamma: 0.5, ..ppo.clone() }, differs("ppo/returns/mean")),
        ("lam", PpoConfig { lam: 0.1, ..ppo.clone() }, differs("ppo/returns/var")),
        ("score_clip", PpoConfig { score_clip: 0.1, ..ppo.clone() }, less("ppo/std_scores")),
        ("score_scaling", PpoConfig { score_scaling: true, ..ppo.clone() }, more("ppo/std_scores")),
        ("missing_eos", PpoConfig { missing_eos: MissingEos::Penalty(1.0), ..ppo.clone() }, less("ppo/mean_scores")),
        (
            "old_logprobs",
            PpoConfig { old_logprobs: OldLogprobs::Behaviour, ..ppo.clone() },
            differs("objective/entropy"),
        ),
        ("ratio_threshold", PpoConfig { ratio_threshold: 0.5, ..ppo.clone() }, skipped_everything),
        ("ppo_epochs", PpoConfig { ppo_epochs: 1, ..ppo.clone() }, moves_less),
        (
            "max_grad_norm",
            PpoConfig { optim: OptimConfig { max_grad_norm: 1e-4, ..ppo.optim.clone() }, ..ppo.clone() },
            // Adam normalises the step size, so a clipped gradient moves the weights differently,
            // not necessarily less.
            other_weights,
        ),
        (
            "weight_decay",
            PpoConfig { optim: OptimConfig { weight_decay: 10.0, ..ppo.optim.clone() }, ..ppo.clone() },
            Box::new({
                let base_w = base_weights.clone();
                move |_: &Stats, w: &[f64]| {
                    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
                    if norm(w) < norm(&base_w) { Ok(()) } else { Err("weight decay did not shrink the weights".into()) }
                }
            }),
        ),
    ];
    let mut failures = Vec::new();
    for (setting, config, check) in rows {
        let (stats, weights) = step(config);
        if let Err(e) = check(&stats, &weights) {
            failures.push(format!("{setting}: {e}"));
        }
    }
    assert!(failures.is_empty(), "settings that did not do what they should:\n{}", failures.join("\n"));
}
