//! What every training loop shares: AdamW settings, the learning-rate schedule, and clipping by
//! the global gradient norm (PyTorch's `clip_grad_norm_`; burn's own clipping is per tensor).

use crate::error::TrainError;
use crate::kernels::AutodiffKernels;
use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::{
    AdamWState, AdaptiveMomentumState, GradientsParams, LearningRate, SimpleOptimizer, adaptor::OptimizerAdaptor,
};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorPrimitive};

use crate::kernels::{AdamWStep, Kernels};
use crate::validate::{Checked, finite_at_least, finite_positive, in_range};
use serde::{Deserialize, Serialize};

/// Learning-rate shape over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

/// AdamW and schedule settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub warmup_steps: usize,
    pub schedule: Schedule,
    /// Clip the global gradient norm to this value; 0 leaves gradients alone. (A number rather
    /// than an option so that TOML, which has no null, can turn it off.)
    pub max_grad_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            learning_rate: 5e-5,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 0,
            schedule: Schedule::Constant,
            max_grad_norm: 1.0,
        }
    }
}

/// AdamW exactly as burn's `AdamW` computes it, with the same state record (`AdamWState`, so
/// checkpoints are interchangeable), applied per parameter by [`Kernels::adamw_step`]: one
/// fused pass on the CPU instead of ten tensor ops.
#[derive(Debug, Clone, Copy)]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
}

impl<B: Kernels> SimpleOptimizer<B> for FusedAdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let time = state.as_ref().map_or(1, |s| s.momentum.time + 1);
        let moments = state
            .map(|s| (s.momentum.moment_1.into_primitive().tensor(), s.momentum.moment_2.into_primitive().tensor()));
        let step = AdamWStep {
            lr,
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            time: time as i32,
        };
        let out = B::adamw_step(tensor.into_primitive().tensor(), grad.into_primitive().tensor(), moments, &step);
        let float = |t| Tensor::<B, D>::from_primitive(TensorPrimitive::Float(t));
        let momentum = AdaptiveMomentumState::new(time, float(out.moment_1), float(out.moment_2));
        (float(out.param), Some(AdamWState::new(momentum)))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

pub type AdamWOptimizer<M, B> = OptimizerAdaptor<FusedAdamW, M, B>;

impl OptimConfig {
    pub fn adamw<B: AutodiffBackend<InnerBackend: Kernels>, M: AutodiffModule<B>>(&self) -> AdamWOptimizer<M, B> {
        OptimizerAdaptor::from(FusedAdamW {
            beta_1: self.beta1 as f32,
            beta_2: self.beta2 as f32,
            epsilon: self.eps as f32,
            weight_decay: self.weight_decay as f32,
        })
    }

    /// Checks every setting (see [`crate::validate`]).
    pub fn validate(&self) -> Checked {
        finite_at_least("learning_rate", self.learning_rate, 0.0)?;
        finite_at_least("weight_decay", self.weight_decay, 0.0)?;
        in_range("beta1", self.beta1, 0.0, 1.0)?;
        in_range("beta2", self.beta2, 0.0, 1.0)?;
        finite_positive("eps", self.eps)?;
        finite_at_least("max_grad_norm", self.max_grad_norm, 0.0)
    }

    /// Learning rate at optimizer step `step` (0-based) of `total_steps`: linear warm-up, then
    /// constant, linear decay to 0, or cosine decay to 0.
    pub fn lr_at(&self, step: usize, total_steps: usize) -> f64 {
        if step < self.warmup_steps {
            return self.learning_rate * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / decay_steps).min(1.0);
        match self.schedule {
            Schedule::Constant => self.learning_rate,
            Schedule::Linear => self.learning_rate * (1.0 - progress),
            Schedule::Cosine => self.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

crate::impl_validate!(OptimConfig);

/// Counts optimizer steps skipped in a row for a non-finite loss, gradient norm or learning rate,
/// for every training loop. A skipped step changes neither the weights nor the optimizer state;
/// after `max` in a row training stops with [`TrainError::Diverged`].
#[derive(Debug, Clone)]
pub struct NonFiniteSkips {
    max: usize,
    in_a_row: usize,
}

impl NonFiniteSkips {
    pub fn new(max: usize) -> Self {
        Self { max, in_a_row: 0 }
    }

    /// Whether step `step` of the `what` loop may be applied (`Ok(true)`), must be skipped
    /// (`Ok(false)`, logged), or is one skip too many (`Err`).
    pub fn check(&mut self, what: &str, step: usize, loss: f64, grad_norm: f64, lr: f64) -> Result<bool, TrainError> {
        if loss.is_finite() && grad_norm.is_finite() && lr.is_finite() {
            self.in_a_row = 0;
            return Ok(true);
        }
        self.in_a_row += 1;
        let skipped_in_a_row = self.in_a_row;
        tracing::warn!(what, step, loss, grad_norm, lr, skipped_in_a_row, "non-finite loss or gradient: step skipped");
        if self.in_a_row >= self.max {
            return Err(TrainError::Diverged { step, skipped: self.in_a_row });
        }
        Ok(false)
    }
}

/// Sums the squares of every gradient of `module`, then (second pass) scales them.
struct GlobalNorm<'a, B: AutodiffKernels> {
    grads: &'a mut GradientsParams,
    sum_sq: Option<Tensor<B::InnerBackend, 1>>,
    scale: Option<f64>,
    ids: Vec<ParamId>,
}

impl<B: AutodiffKernels> ModuleVisitor<B> for GlobalNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let id = param.id;
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return;
        };
        match self.scale {
            None => {
                let sq = grad.clone().powi_scalar(2).sum();
                self.sum_sq = Some(match self.sum_sq.take() {
                    Some(total) => total + sq,
                    None => sq,
                });
                self.ids.push(id);
                self.grads.register::<B::InnerBackend, D>(id, grad);
            }
            Some(scale) => self.grads.register::<B::InnerBackend, D>(id, grad * scale),
        }
    }
}

/// Clips the global L2 norm of `module`'s gradients to `max_norm` (0: no clipping); returns the norm before
/// clipping (logged as `grad_norm`).
pub fn clip_grad_norm<B: AutodiffKernels, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let mut visitor = GlobalNorm::<B> { grads, sum_sq: None, scale: None, ids: Vec::new() };
    module.visit(&mut visitor);
    let norm = visitor.sum_sq.take().map(|s| s.into_scalar().elem::<f64>().sqrt()).unwrap_or(0.0);
    if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
        visitor.scale = Some(max_norm / (norm + 1e-6));
        module.visit(&mut visitor);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{AdamWConfig, Optimizer};
    use burn::tensor::{Distribution, backend::Backend};

    #[test]
    fn fused_adamw_matches_burns_adamw_bit_for_bit() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        A::seed(&device, 3);
        let start: Linear<A> = LinearConfig::new(64, 300).init(&device);
        // burn initialises parameters lazily: draw them once, before the two copies are made.
        let _ = (start.weight.val(), start.bias.as_ref().map(|b| b.val()));
        let config = OptimConfig { learning_rate: 1e-2, weight_decay: 0.01, ..Default::default() };
        let mut fused = config.adamw::<A, Linear<A>>();
        let mut burns = AdamWConfig::new()
            .with_beta_1(config.beta1 as f32)
            .with_beta_2(config.beta2 as f32)
            .with_epsilon(config.eps as f32)
            .with_weight_decay(config.weight_decay as f32)
            .init::<A, Linear<A>>();
        let (mut a, mut b) = (start.clone(), start);
        for step in 0..3 {
            let x = Tensor::<A, 2>::random([8, 64], Distribution::Default, &device);
            let grads_a = a.forward(x.clone()).powi_scalar(2).sum().backward();
            let grads_b = b.forward(x).powi_scalar(2).sum().backward();
            a = fused.step(1e-2, a.clone(), GradientsParams::from_grads(grads_a, &a));
            b = burns.step(1e-2, b.clone(), GradientsParams::from_grads(grads_b, &b));
            let (wa, wb) = (a.weight.val().into_data(), b.weight.val().into_data());
            assert_eq!(wa, wb, "step {step}: weights differ");
            assert_eq!(a.bias.as_ref().unwrap().val().into_data(), b.bias.as_ref().unwrap().val().into_data());
        }
        // Both keep burn's `AdamWState`, so a checkpoint written by one loads into the other.
        use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
        let dir = tempfile::tempdir().unwrap();
        let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
        recorder.record(burns.to_record(), dir.path().join("adamw")).unwrap();
        let record = recorder.load(dir.path().join("adamw"), &device).unwrap();
        fused = fused.load_record(record);
        assert_eq!(fused.to_record().len(), 2);
    }

    #[test]
    fn schedules_warm_up_then_decay() {
        let config =
            OptimConfig { learning_rate: 1.0, warmup_steps: 2, schedule: Schedule::Linear, ..Default::default() };
        let lrs: Vec<f64> = (0..6).map(|s| config.lr_at(s, 6)).collect();
        assert_eq!(lrs, vec![0.5, 1.0, 1.0, 0.75, 0.5, 0.25]);
        let cosine = OptimConfig { schedule: Schedule::Cosine, ..config };
        assert!((cosine.lr_at(4, 6) - 0.5).abs() < 1e-12);
    }
}
