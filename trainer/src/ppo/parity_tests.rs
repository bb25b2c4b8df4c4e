//! PPO math against TRL 0.11.4 (`fixtures/make_trl_fixtures.py` -> `fixtures/trl/`), to 1e-5.

use burn::backend::Flex;
use burn::tensor::Tensor;

use crate::ppo::*;
use crate::testutil::{Reference, fixtures, max_abs_diff, values};

type B = Flex;
const TOL: f64 = 1e-5;

fn reference() -> Reference {
    Reference::load(&fixtures().join("trl/ppo_math.safetensors"))
}

fn assert_close(name: &str, got: Vec<f64>, want: Vec<f64>) {
    let diff = max_abs_diff(&got, &want);
    eprintln!("parity: {name} max |diff| = {diff:e}");
    assert!(diff <= TOL, "{name}: max |diff| {diff:e}\n got {got:?}\nwant {want:?}");
}

fn check<const D: usize>(r: &Reference, name: &str, got: Tensor<B, D>) {
    assert_close(name, values(got), r.get(name).1);
}

#[test]
fn reward_shaping_matches_trl_for_every_estimator() {
    let r = reference();
    let mask: Tensor<B, 2> = r.tensor("mask");
    for (tag, estimator) in [("kl", KlEstimator::K1), ("abs", KlEstimator::Abs), ("mse", KlEstimator::Mse)] {
        let kl = kl_penalty(r.tensor("logprobs"), r.tensor("ref_logprobs"), estimator);
        check(&r, &format!("{tag}/kls"), kl.clone());
        let shaped = shape_rewards(r.tensor("scores"), kl, mask.clone(), 0.2);
        check(&r, &format!("{tag}/rewards"), shaped.rewards);
        check(&r, &format!("{tag}/non_score_rewards"), shaped.non_score_rewards);
    }
    check(&r, "full/kls", full_kl(r.tensor("logits"), r.tensor("ref_logits")));
}

#[test]
fn gae_matches_trl_with_and_without_reward_whitening() {
    let r = reference();
    for (tag, whiten) in [("gae", false), ("gae_whiten", true)] {
        let out = gae(r.tensor("values"), r.tensor("kl/rewards"), r.tensor("mask"), 0.99, 0.95, whiten);
        check(&r, &format!("{tag}/values"), out.values);
        check(&r, &format!("{tag}/advantages"), out.advantages);
        check(&r, &format!("{tag}/returns"), out.returns);
    }
}

#[test]
fn losses_and_stats_match_trl() {
    // The statistics come from `minibatch_stats`, the function `PpoTrainer::step` reports with.
    let r = reference();
    let mask: Tensor<B, 2> = r.tensor("mask");
    let values_masked = r.tensor::<B, 2>("values") * mask.clone();
    let adv = gae(r.tensor("values"), r.tensor("kl/rewards"), mask.clone(), 0.99, 0.95, false);
    let targets = Targets {
        old_logprobs: r.tensor("logprobs"),
        old_values: values_masked,
        advantages: adv.advantages,
        returns: adv.returns,
        mask,
    };
    let pg = policy_loss(
        r.tensor("new_logprobs"),
        targets.old_logprobs.clone(),
        targets.advantages.clone(),
        targets.mask.clone(),
        0.2,
    );
    let vf =
        value_loss(r.tensor("vpreds"), targets.old_values.clone(), targets.returns.clone(), targets.mask.clone(), 0.2);
    let entropy = || entropy_from_logits(r.tensor("logits"));
    for (key, got) in stats::minibatch_stats(&pg, &vf, 0.1, entropy(), &targets, true) {
        let name = format!("loss/{}", key.strip_prefix("ppo/").unwrap());
        assert_close(&name, vec![got], r.get(&name).1);
    }
    // Above ratio_threshold TRL zeroes the losses but reports the diagnostics unchanged.
    assert!(pg.ratio_mean.clone().into_scalar() > 0.5);
    for (key, got) in stats::minibatch_stats(&pg, &vf, 0.1, entropy(), &targets, false) {
        let name = format!("loss_skipped/{}", key.strip_prefix("ppo/").unwrap());
        assert_close(&name, vec![got], r.get(&name).1);
    }
}

#[test]
fn adaptive_kl_controller_matches_trl() {
    let r = reference();
    let mut ctl = KlController::Adaptive { value: 0.2, target: 6.0, horizon: 10000.0 };
    let got: Vec<f64> = [3.0, 12.0, 6.5, 0.0]
        .iter()
        .map(|&kl| {
            ctl.update(kl, 256);
            ctl.value()
        })
        .collect();
    assert_close("adaptive_kl/values", got, r.get("adaptive_kl/values").1);
}

/// Runs [`crate::parity::ppo_step`] on the CPU, asserts every check, and returns the trainer.
fn ppo_step_passes(which: crate::parity::PpoStep) -> PpoTrainer<burn::backend::Autodiff<Flex>> {
    let (checks, trainer) = crate::parity::ppo_step(&fixtures(), which, &Default::default()).unwrap();
    for check in checks {
        crate::testutil::assert_passes(check);
    }
    trainer
}

/// TRL's statistics of `PPOTrainer.step()` with one epoch of one mini-batch: the first
/// mini-batch's losses before any parameter update (`make_trl_fixtures.py::model_step`).
#[test]
fn first_ppo_step_statistics_match_trl_on_a_tiny_gpt2() {
    let trainer = ppo_step_passes(crate::parity::PpoStep::FirstMiniBatch);
    // The update moved the policy, and the adaptive controller moved beta towards the target.
    assert_eq!(trainer.optimizer_steps, 1);
    assert!(trainer.kl.value() < 0.2);
}

/// Two epochs: the second mini-batch's statistics come after the first Adam step, and the
/// parameters' change over both steps matches TRL's.
#[test]
fn ppo_statistics_and_parameters_match_trl_after_an_update() {
    let trainer = ppo_step_passes(crate::parity::PpoStep::AfterAnUpdate);
    assert_eq!(trainer.optimizer_steps, 2);
}

#[test]
fn running_moments_match_trl() {
    let r = reference();
    let mut moments = RunningMoments::default();
    let mut got = Vec::new();
    for batch in [[1.0, 2.0, 4.0], [-1.0, 0.5, 3.0], [10.0, 10.0, 12.0]] {
        moments.update(&batch);
        got.extend([moments.mean, moments.std]);
    }
    // TRL accumulates in float32: compare relatively.
    for (g, w) in got.iter().zip(r.get("running_moments").1) {
        assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "running moments: got {got:?}, TRL {w}");
    }
}
