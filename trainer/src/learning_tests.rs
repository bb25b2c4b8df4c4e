//! Does learning happen? Small synthetic tasks for SFT, the reward model and PPO, on tiny models.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;

use crate::infer::sampling::SamplingConfig;
use crate::model::gpt2::Heads;
use crate::ppo::local::{LocalConfig, run};
use crate::ppo::{PpoConfig, PpoTrainer};
use crate::reward::scorer::{ScoreError, Scorer};
use crate::reward::{PairIds, RewardConfig, normalize};
use crate::sft::SftConfig;
use crate::train::optim::OptimConfig;
use crate::{Gpt2Config, reward, sft};

type A = Autodiff<Flex>;

fn tiny_config() -> Gpt2Config {
    Gpt2Config::new(32, 48, 32, 2, 2)
}

#[test]
fn a_reward_model_learns_which_token_is_preferred_and_normalises() {
    let device = Default::default();
    let model = tiny_config().init::<A>(Heads::Score { num_labels: 1 }, &device);
    // Chosen texts contain token 7, rejected ones token 9, amid shared filler.
    let pairs: Vec<PairIds> = (0..32u32)
        .map(|i| PairIds { chosen: vec![1 + i % 5, 7, 2 + i % 3], rejected: vec![1 + i % 5, 9, 2 + i % 3] })
        .collect();
    let config = RewardConfig {
        optim: OptimConfig { learning_rate: 3e-3, ..Default::default() },
        epochs: 6,
        batch_size: 8,
        ..Default::default()
    };
    let before = reward::evaluate(&model.valid(), &pairs, &config, 0, &device);
    let (model, evals) = reward::train(model, &pairs, &pairs, &config, 0, &device, &mut |_| {}).unwrap();
    let after = evals.last().unwrap();
    assert!(after["eval/accuracy"] == 1.0 && after["eval/loss"] < before["eval/loss"] * 0.5, "{before:?} -> {after:?}");

    let mut model = model.valid();
    let rows: Vec<Vec<u32>> = pairs.iter().flat_map(|p| [p.chosen.clone(), p.rejected.clone()]).collect();
    normalize(&mut model, &rows, 0, 16, &device);
    let stats = reward::evaluate(&model, &pairs, &config, 0, &device);
    assert!(stats["eval/reward_mean"].abs() < 1e-3 && (stats["eval/reward_std"] - 1.0).abs() < 1e-3, "{stats:?}");
    assert_eq!(stats["eval/accuracy"], 1.0);
}

/// A model and optimizer as a checkpoint callback saw them.
type Saved = (crate::Gpt2<A>, crate::train::optim::AdamWOptimizer<crate::Gpt2<A>, A>);

#[test]
fn sft_lowers_the_loss_and_a_resumed_run_matches_an_uninterrupted_one() {
    let device = Default::default();
    let rows: Vec<Vec<u32>> = (0..24u32).map(|i| (0..12).map(|j| (i + j) % 8 + 1).collect()).collect();
    let config = SftConfig {
        optim: OptimConfig { learning_rate: 3e-3, warmup_steps: 2, ..Default::default() },
        epochs: 2,
        batch_size: 6,
        ..Default::default()
    };
    let init = config_model(&device);
    let before = sft::evaluate(&init.valid(), &rows, 8, 0, &device)["eval/loss"];
    let run = |model, optim, start, checkpoints: &mut Vec<Saved>| {
        sft::train(model, optim, &rows, &rows, &config, start, 0, &device, &mut |_| {}, &mut |m, o, _, _| {
            checkpoints.push((m.clone(), o.clone()));
            Ok(())
        })
        .unwrap()
    };
    let mut checkpoints = Vec::new();
    let full = run(init.clone(), config.optim.adamw(), 0, &mut checkpoints);
    let after = full.evals.last().unwrap()["eval/loss"];
    assert!(after < before * 0.7, "{before} -> {after}");

    // Resume from the end of epoch 1 through a real checkpoint directory.
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = crate::Tokenizer::load(&crate::testutil::fixtures().join("gpt2/lm")).unwrap();
    let (model, optim) = &checkpoints[0];
    let state = crate::train::TrainerState { step: 4, total_steps: 8, config: serde_json::Value::Null };
    crate::train::save_checkpoint(&dir.path().join("step-4"), model, &tiny_config(), &tokenizer, optim, &state)
        .unwrap();
    let latest = crate::train::latest_checkpoint(dir.path(), "step-", crate::train::STATE_FILE).unwrap().1;
    let (_, model, optim, state) = crate::train::load_checkpoint::<A>(&latest, config.optim.adamw(), &device).unwrap();
    assert_eq!(state.step, 4);
    let resumed = run(model, optim, state.step, &mut Vec::new());
    let a = crate::testutil::values(resumed.model.valid().transformer.wte.weight.val());
    let b = crate::testutil::values(full.model.valid().transformer.wte.weight.val());
    assert!(crate::testutil::max_abs_diff(&a, &b) < 1e-5, "resumed run diverged");
}

#[test]
fn sft_gradient_accumulation_matches_one_larger_batch() {
    // Eight rows of one length: batches of 4 with grad_accum 2 take the same steps, over the same
    // rows, as batches of 8, so the weights end alike; without accumulation they take twice the
    // steps and end elsewhere.
    let device = Default::default();
    let rows: Vec<Vec<u32>> = (0..8u32).map(|i| (0..10).map(|j| (i * 3 + j) % 9 + 1).collect()).collect();
    let init = config_model(&device);
    let train = |batch_size: usize, grad_accum: usize| {
        let config = SftConfig {
            optim: OptimConfig { learning_rate: 3e-3, ..Default::default() },
            epochs: 3,
            batch_size,
            grad_accum,
            ..Default::default()
        };
        let mut steps = 0;
        let outcome = sft::train(
            init.clone(),
            config.optim.adamw(),
            &rows,
            &rows,
            &config,
            0,
            0,
            &device,
            &mut |_| steps += 1,
            &mut |_, _, _, _| Ok(()),
        )
        .unwrap();
        (steps, crate::testutil::values(outcome.model.valid().transformer.wte.weight.val()))
    };
    let (steps, big) = train(8, 1);
    let (accumulated_steps, accumulated) = train(4, 2);
    let (small_steps, small) = train(4, 1);
    assert_eq!((steps, accumulated_steps, small_steps), (3, 3, 6));
    assert!(crate::testutil::max_abs_diff(&big, &accumulated) < 1e-5, "accumulated gradients differ");
    assert!(crate::testutil::max_abs_diff(&big, &small) > 1e-3, "the control did not differ");
}

fn config_model(device: &burn::backend::flex::FlexDevice) -> crate::Gpt2<A> {
    tiny_config().init::<A>(Heads::Lm, device)
}

/// Rewards each response token equal to 5.
struct CountFives;

impl Scorer for CountFives {
    fn score(&mut self, _: &[Vec<u32>], responses: &[Vec<u32>]) -> Result<Vec<f32>, ScoreError> {
        Ok(responses.iter().map(|r| r.iter().filter(|&&t| t == 5).count() as f32).collect())
    }
    fn score_texts(&mut self, _: &[String], _: &[String]) -> Result<Vec<f32>, ScoreError> {
        unreachable!("the local loop scores token ids")
    }
    fn name(&self) -> String {
        "count-fives".into()
    }
    fn vocab_size(&self) -> usize {
        u32::MAX as usize
    }
}

#[test]
fn local_ppo_raises_the_reward_with_bounded_kl() {
    let device = Default::default();
    let policy = tiny_config().init::<A>(Heads::LmValue, &device);
    let reference = policy.valid();
    let local = LocalConfig {
        iterations: 12,
        batch_size: 32,
        sampling: SamplingConfig { max_new_tokens: 6, stop_at_eos: false, seed: 1, ..Default::default() },
        ppo: PpoConfig {
            optim: OptimConfig { learning_rate: 3e-3, max_grad_norm: 1.0, ..Default::default() },
            ppo_epochs: 2,
            mini_batch_size: 16,
            kl: crate::ppo::KlController::Fixed { value: 0.02 },
            ..Default::default()
        },
        ..Default::default()
    };
    let mut trainer = PpoTrainer::<A>::new(policy, None, reference, local.ppo.clone(), 0, &device).unwrap();
    let prompts: Vec<Vec<u32>> = (1..9u32).map(|i| vec![i, i + 1]).collect();
    let mut rewards = Vec::new();
    let mut kls = Vec::new();
    run(&mut trainer, &prompts, &mut CountFives, &local, 0, &device, &mut |it| {
        rewards.push(it.stats["env/reward_mean"]);
        kls.push(it.stats["objective/kl"]);
    })
    .unwrap();
    // Chance is 6/32 ≈ 0.19 fives per response.
    let first = rewards[..3].iter().sum::<f64>() / 3.0;
    let last = rewards[rewards.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(last > first + 0.5, "reward did not rise: {rewards:?}");
    // Observed: reward 0.2 -> ~5 of 6 fives, KL ~13 nats after 12 iterations at beta 0.02.
    assert!(kls.iter().all(|kl| kl.is_finite() && *kl < 25.0), "KL unbounded: {kls:?}");
}

/// Eight short scored rollouts over a 32-token vocabulary; `score` gives rollout `i`'s score.
fn rollouts(score: impl Fn(u32) -> f32) -> Vec<crate::ppo::Rollout> {
    (0..8u32)
        .map(|i| crate::ppo::Rollout {
            query: vec![1 + i % 4, 2],
            response: vec![3, 4 + i % 5, 5],
            logprobs: vec![-1.0; 3],
            score: score(i),
        })
        .collect()
}

#[test]
fn a_ppo_step_is_deterministic() {
    let device = Default::default();
    let policy = tiny_config().init::<A>(Heads::LmValue, &device);
    let reference = policy.valid();
    let rollouts = rollouts(|i| i as f32 * 0.1);
    let config = PpoConfig {
        optim: OptimConfig { learning_rate: 1e-3, ..Default::default() },
        mini_batch_size: 4,
        ..Default::default()
    };
    let run = || {
        let mut trainer =
            PpoTrainer::<A>::new(policy.clone(), None, reference.clone(), config.clone(), 0, &device).unwrap();
        let a = trainer.step(&rollouts, 10).unwrap();
        let b = trainer.step(&rollouts, 10).unwrap();
        (a, b, crate::testutil::values(trainer.policy.valid().transformer.wte.weight.val()))
    };
    let (a1, b1, w1) = run();
    let (a2, b2, w2) = run();
    let strip = |s: &crate::train::Stats| {
        s.iter().filter(|(k, _)| !k.starts_with("time/")).map(|(k, v)| (k.clone(), *v)).collect::<Vec<_>>()
    };
    assert_eq!(strip(&a1), strip(&a2));
    assert_eq!(strip(&b1), strip(&b2));
    assert_eq!(w1, w2);
}

#[test]
fn a_smaller_cliprange_clips_more_tokens() {
    // `ppo.cliprange` reaches the policy loss: once the first mini-batch has moved the policy,
    // the ratios of later ones leave [1 − ε, 1 + ε] the more often the smaller ε is.
    let device = Default::default();
    let policy = tiny_config().init::<A>(Heads::LmValue, &device);
    let reference = policy.valid();
    let rollouts = rollouts(|i| i as f32 * 0.1);
    let clipfrac = |cliprange: f64| {
        let config = PpoConfig {
            optim: OptimConfig { learning_rate: 1e-2, ..Default::default() },
            mini_batch_size: 4,
            cliprange,
            ..Default::default()
        };
        let mut trainer = PpoTrainer::<A>::new(policy.clone(), None, reference.clone(), config, 0, &device).unwrap();
        trainer.step(&rollouts, 10).unwrap()["ppo/policy/clipfrac"]
    };
    let (tight, default, loose) = (clipfrac(0.001), clipfrac(0.2), clipfrac(1e3));
    assert!(tight > 0.3, "cliprange 0.001 clipped {tight}");
    assert!(tight > default, "cliprange 0.001 clipped {tight}, 0.2 clipped {default}");
    assert_eq!(loose, 0.0, "nothing is clipped at cliprange 1000");
}

#[test]
fn the_value_head_learns_shared_or_separate() {
    // The same scored rollouts, update after update: the value head (the policy's, or a separate
    // critic) receives gradients and its error falls, well below a control run with vf_coef 0.
    let device = Default::default();
    let rollouts = rollouts(|i| if i % 2 == 0 { 1.0 } else { -1.0 });
    let head = |t: &PpoTrainer<A>| match &t.critic {
        Some(critic) => crate::testutil::values(critic.model.valid().score.unwrap().weight.val()),
        None => crate::testutil::values(t.policy.valid().v_head.unwrap().summary.weight.val()),
    };
    let run = |separate: bool, vf_coef: f64| {
        let config = PpoConfig {
            optim: OptimConfig { learning_rate: 3e-3, ..Default::default() },
            mini_batch_size: 4,
            vf_coef,
            ..Default::default()
        };
        let heads = if separate { Heads::Lm } else { Heads::LmValue };
        let policy = tiny_config().init::<A>(heads, &device);
        let reference = tiny_config().init::<A>(Heads::Lm, &device).valid();
        let critic =
            separate.then(|| (tiny_config(), tiny_config().init::<A>(Heads::Score { num_labels: 1 }, &device)));
        let mut trainer = PpoTrainer::<A>::new(policy, critic, reference, config, 0, &device).unwrap();
        let before = head(&trainer);
        let errors: Vec<f64> = (0..8).map(|_| trainer.step(&rollouts, 100).unwrap()["ppo/val/error"]).collect();
        (errors, before != head(&trainer))
    };
    for separate in [false, true] {
        let (errors, moved) = run(separate, 1.0);
        let (control, _) = run(separate, 0.0);
        assert!(moved, "separate critic {separate}: the value head's weights did not move");
        let last = errors[7];
        assert!(last < errors[0] * 0.5, "separate critic {separate}: value error {errors:?}");
        assert!(last < control[7] * 0.5, "separate critic {separate}: {errors:?} vs vf_coef 0: {control:?}");
    }
}

#[test]
fn a_ppo_checkpoint_restores_the_separate_critic_and_its_optimizer() {
    // One step with a separate critic, a checkpoint, and a restore into a trainer whose critic is
    // fresh: the restored weights are the checkpoint's, and the next step (Adam's moments
    // included) moves both trainers alike. One mini-batch per step, so the shuffling RNG (re-seeded
    // on restore) only permutes rows within it.
    let device = Default::default();
    let rollouts = rollouts(|i| if i % 2 == 0 { 1.0 } else { -1.0 });
    let config = PpoConfig {
        optim: OptimConfig { learning_rate: 3e-3, ..Default::default() },
        mini_batch_size: 8,
        ppo_epochs: 1,
        ..Default::default()
    };
    let policy = tiny_config().init::<A>(Heads::Lm, &device);
    let reference = policy.valid();
    let new_trainer = || {
        let critic = tiny_config().init::<A>(Heads::Score { num_labels: 1 }, &device);
        PpoTrainer::<A>::new(
            policy.clone(),
            Some((tiny_config(), critic)),
            reference.clone(),
            config.clone(),
            0,
            &device,
        )
        .unwrap()
    };
    let weights = |t: &PpoTrainer<A>| {
        let critic = t.critic.as_ref().unwrap().model.valid();
        let policy = t.policy.valid();
        [
            crate::testutil::values(critic.score.unwrap().weight.val()),
            crate::testutil::values(critic.transformer.wte.weight.val()),
            crate::testutil::values(policy.transformer.wte.weight.val()),
        ]
    };
    let mut original = new_trainer();
    original.step(&rollouts, 10).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = crate::Tokenizer::load(&crate::testutil::fixtures().join("gpt2/lm")).unwrap();
    original.save_checkpoint(dir.path(), 1, &tiny_config(), &tokenizer).unwrap();
    assert!(dir.path().join(crate::ppo::CRITIC_DIR).join("model.safetensors").is_file());

    let mut restored = new_trainer();
    assert_ne!(weights(&original)[0], weights(&restored)[0], "the fresh critic must differ from the trained one");
    let state = restored.restore_checkpoint(dir.path()).unwrap();
    assert_eq!((state.version, restored.optimizer_steps), (1, 1));
    assert_eq!(weights(&original), weights(&restored));
    original.step(&rollouts, 10).unwrap();
    restored.step(&rollouts, 10).unwrap();
    for (a, b) in weights(&original).iter().zip(&weights(&restored)) {
        assert!(crate::testutil::max_abs_diff(a, b) < 1e-5, "the restored critic or policy stepped differently");
    }

    // A run that uses the policy's value head refuses a checkpoint with a separate critic.
    let shared = tiny_config().init::<A>(Heads::LmValue, &device);
    let mut shared = PpoTrainer::<A>::new(shared, None, reference.clone(), config.clone(), 0, &device).unwrap();
    let error = shared.restore_checkpoint(dir.path()).expect_err("a mismatched critic is refused").to_string();
    assert!(error.contains("critic") && error.contains("shared"), "{error}");
}

/// A model with one infinite weight: every loss is NaN.
fn poisoned(device: &burn::backend::flex::FlexDevice) -> crate::Gpt2<A> {
    use burn::module::Param;
    use burn::tensor::Tensor;
    let mut model = config_model(device);
    let bias = model.transformer.h[0].mlp.c_fc.bias.take().unwrap();
    let mut values = crate::testutil::values(bias.val());
    values[0] = f64::INFINITY;
    let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
    let n = values.len();
    model.transformer.h[0].mlp.c_fc.bias =
        Some(Param::from_tensor(Tensor::from_data(burn::tensor::TensorData::new(values, [n]), device)));
    model
}

#[test]
fn non_finite_steps_change_nothing_and_too_many_stop_training() {
    let device = Default::default();
    let rows: Vec<Vec<u32>> = (0..8u32).map(|i| (0..6).map(|j| (i + j) % 8 + 1).collect()).collect();
    let config = SftConfig { epochs: 3, batch_size: 2, max_skipped_steps: 3, ..Default::default() };
    let model = poisoned(&device);
    let before = crate::testutil::values(model.valid().transformer.wte.weight.val());
    let mut checkpoints = 0;
    let err =
        sft::train(model, config.optim.adamw(), &rows, &[], &config, 0, 0, &device, &mut |_| {}, &mut |_, _, _, _| {
            checkpoints += 1;
            Ok(())
        })
        .err()
        .expect("training stops");
    assert!(err.to_string().contains("3 optimizer steps in a row had a non-finite loss"), "{err}");
    assert_eq!(checkpoints, 0, "nothing is checkpointed after a skipped step");

    // A skipped step leaves the weights as they were: compare after exactly the allowed skips.
    let config = SftConfig { epochs: 1, batch_size: 4, max_skipped_steps: 10, ..Default::default() };
    let outcome = sft::train(
        poisoned(&device),
        config.optim.adamw(),
        &rows,
        &[],
        &config,
        0,
        0,
        &device,
        &mut |_| {},
        &mut |_, _, _, _| Ok(()),
    )
    .unwrap();
    assert_eq!(crate::testutil::values(outcome.model.valid().transformer.wte.weight.val()), before);

    // And such a model is never written.
    let tokenizer = crate::Tokenizer::load(&crate::testutil::fixtures().join("gpt2/lm")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = crate::model::hf::export(&poisoned(&device).valid(), &tiny_config(), &tokenizer, &dir.path().join("out"))
        .unwrap_err();
    assert!(err.to_string().contains("transformer.h.0.mlp.c_fc.bias"), "{err}");
    assert!(!dir.path().join("out").exists(), "no partial output");
}

#[test]
fn ppo_stops_after_too_many_non_finite_mini_batches() {
    let device = Default::default();
    let config = PpoConfig { mini_batch_size: 2, ppo_epochs: 2, max_skipped_steps: 3, ..Default::default() };
    let policy = poisoned(&device).with_value_head(0);
    let reference = tiny_config().init::<Flex>(Heads::Lm, &device);
    let mut trainer = PpoTrainer::<A>::new(policy, None, reference, config, 0, &device).unwrap();
    let rollouts: Vec<crate::ppo::Rollout> = (0..4u32)
        .map(|i| crate::ppo::Rollout {
            query: vec![1, 2 + i],
            response: vec![3, 4],
            logprobs: vec![-1.0, -1.0],
            score: 1.0,
        })
        .collect();
    let err = trainer.step(&rollouts, 8).unwrap_err().to_string();
    assert!(err.contains("3 optimizer steps in a row"), "{err}");
    assert_eq!(trainer.optimizer_steps, 0);
}
