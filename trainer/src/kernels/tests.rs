use super::*;
use burn::backend::{Autodiff, Flex};
use rand::{Rng, SeedableRng, rngs::StdRng};

type B = Flex;

fn random(shape: [usize; 2], scale: f32, seed: u64) -> Tensor<B, 2> {
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape[0] * shape[1]).map(|_| (rng.random::<f32>() - 0.5) * 2.0 * scale).collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn targets(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

fn values<const D: usize>(t: FloatTensor<B>) -> Vec<f32> {
    float::<B, D>(t).into_data().iter::<f32>().collect()
}

fn assert_close(name: &str, got: &[f32], want: &[f32], tolerance: f32) {
    assert_eq!(got.len(), want.len(), "{name}: lengths");
    let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("kernels: {name} max |diff| = {diff:e}");
    assert!(diff <= tolerance, "{name}: max |diff| {diff:e} > {tolerance:e}");
}

// Several vocabulary chunks (5,000 rows of 873) so that the running log-sum-exp is merged
// across chunks and threads.
const N: usize = 300;
const D: usize = 24;
const VOCAB: usize = 5000;

#[test]
fn the_fused_cpu_log_prob_matches_the_tensor_op_version() {
    let (hidden, weight, targets) = (random([N, D], 1.0, 1), random([VOCAB, D], 1.0, 2), targets(N, VOCAB, 3));
    let prim = |t: &Tensor<B, 2>| t.clone().into_primitive().tensor();
    let (h, w): (Vec<f32>, Vec<f32>) = (hidden.to_data().to_vec().unwrap(), weight.to_data().to_vec().unwrap());
    for temperature in [1.0, 0.7] {
        let fused = cpu::lm_head_forward(prim(&hidden), prim(&weight), &targets, temperature, true);
        let plain = lm_head_forward_rows::<B>(prim(&hidden), prim(&weight), &targets, temperature, true);
        // Exact reference in f64 on the host.
        let (mut want_logprobs, mut want_entropy) = (Vec::new(), Vec::new());
        for i in 0..N {
            let z: Vec<f64> = (0..VOCAB)
                .map(|v| (0..D).map(|k| h[i * D + k] as f64 * w[v * D + k] as f64).sum::<f64>() / temperature as f64)
                .collect();
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + z.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            want_logprobs.push((z[targets[i] as usize] - lse) as f32);
            want_entropy.push(-z.iter().map(|x| (x - lse).exp() * (x - lse)).sum::<f64>() as f32);
        }
        assert_close("logprobs", &values::<1>(fused.logprobs), &want_logprobs, 1e-5);
        assert_close("logprobs (tensor ops)", &values::<1>(plain.logprobs), &want_logprobs, 1e-5);
        assert_close("lse", &values::<1>(fused.lse), &values::<1>(plain.lse), 1e-5);
        // Entropies are about ln(5000) = 8.5 here; the tensor-op version sums p · log p in f32.
        assert_close("entropy", &values::<1>(fused.entropy.unwrap()), &want_entropy, 1e-5);
        assert_close("entropy (tensor ops)", &values::<1>(plain.entropy.unwrap()), &want_entropy, 1e-4);
    }
}

#[test]
fn fused_cpu_results_do_not_depend_on_the_thread_count() {
    let (hidden, weight, targets) = (random([N, D], 1.0, 12), random([VOCAB, D], 1.0, 13), targets(N, VOCAB, 14));
    let grad = random([N, 1], 1.0, 15).reshape([N]);
    let prim = |t: &Tensor<B, 2>| t.clone().into_primitive().tensor();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let out = cpu::lm_head_forward(prim(&hidden), prim(&weight), &targets, 0.9, true);
            let grads = cpu::lm_head_backward(
                prim(&hidden),
                prim(&weight),
                &targets,
                0.9,
                out.lse.clone(),
                grad.clone().into_primitive().tensor(),
            );
            (values::<1>(out.logprobs), values::<1>(out.entropy.unwrap()), values::<2>(grads.0), values::<2>(grads.1))
        })
    };
    let one = run(1);
    for threads in [2, 3, 5] {
        assert!(run(threads) == one, "{threads} threads gave different bits than 1");
    }
}

#[test]
fn the_fused_backward_matches_autodiff_of_log_softmax() {
    type A = Autodiff<B>;
    let (hidden, weight, targets) = (random([N, D], 1.0, 4), random([VOCAB, D], 1.0, 5), targets(N, VOCAB, 6));
    let grad_out = random([N, 1], 1.0, 7).reshape([N]);
    let temperature = 0.7;
    let gradients = |fused: bool| {
        let h = Tensor::<A, 2>::from_inner(hidden.clone()).require_grad();
        let w = Tensor::<A, 2>::from_inner(weight.clone()).require_grad();
        let logprobs: Tensor<A, 1> = if fused {
            let out = A::lm_head_forward(
                h.clone().into_primitive().tensor(),
                w.clone().into_primitive().tensor(),
                &targets,
                temperature,
                false,
            );
            float(out.logprobs)
        } else {
            let logp = log_softmax(h.clone().matmul(w.clone().transpose()) / temperature as f64, 1);
            logp.gather(1, ids::<A>(&targets, [N, 1], &Default::default())).reshape([N])
        };
        let grads = (logprobs * Tensor::from_inner(grad_out.clone())).sum().backward();
        let read = |t: Tensor<B, 2>| t.into_data().iter::<f32>().collect::<Vec<_>>();
        (read(h.grad(&grads).unwrap()), read(w.grad(&grads).unwrap()))
    };
    let (fused, plain) = (gradients(true), gradients(false));
    assert_close("d_hidden", &fused.0, &plain.0, 1e-5);
    assert_close("d_weight", &fused.1, &plain.1, 1e-5);
    // The tensor-op default backward agrees too.
    let prim = |t: &Tensor<B, 2>| t.clone().into_primitive().tensor();
    let lse = cpu::lm_head_forward(prim(&hidden), prim(&weight), &targets, temperature, false).lse;
    let grad = grad_out.clone().into_primitive().tensor();
    let (d_hidden, d_weight) =
        lm_head_backward_rows::<B>(prim(&hidden), prim(&weight), &targets, temperature, lse, grad);
    assert_close("d_hidden (tensor ops)", &values::<2>(d_hidden), &plain.0, 1e-5);
    assert_close("d_weight (tensor ops)", &values::<2>(d_weight), &plain.1, 1e-5);
}

#[test]
fn the_cpu_gelu_and_its_gradient_match_burns_gelu_under_autodiff() {
    type A = Autodiff<B>;
    let x = random([64, 300], 6.0, 10); // inputs in [-6, 6], through tanh's whole range
    let grad_out = random([64, 300], 1.0, 11);
    let run = |fused: bool| {
        let input = Tensor::<A, 2>::from_inner(x.clone()).require_grad();
        let y: Tensor<A, 2> = if fused {
            float(A::tanh_gelu(input.clone().into_primitive().tensor()))
        } else {
            burn::tensor::activation::gelu_approximate(input.clone())
        };
        let grads = (y.clone() * Tensor::from_inner(grad_out.clone())).sum().backward();
        let read = |t: Tensor<B, 2>| t.into_data().iter::<f32>().collect::<Vec<_>>();
        (read(y.inner()), read(input.grad(&grads).unwrap()))
    };
    let (fused, plain) = (run(true), run(false));
    assert_close("gelu", &fused.0, &plain.0, 1e-6);
    assert_close("gelu gradient", &fused.1, &plain.1, 1e-5);
    let prim = |t: &Tensor<B, 2>| t.clone().into_primitive().tensor();
    let tensor_ops = values::<2>(gelu_backward_with_tensor_ops::<B>(prim(&x), prim(&grad_out)));
    assert_close("gelu gradient (tensor ops)", &tensor_ops, &plain.1, 1e-5);
}

#[test]
fn fused_cpu_sampling_draws_what_the_tensor_op_sampler_draws() {
    let (rows, vocab) = (16, 3000);
    let logits = random([rows, vocab], 4.0, 8);
    let mut rng = StdRng::seed_from_u64(9);
    let uniform: Vec<f32> = (0..rows).map(|_| rng.random()).collect();
    let configs = [
        TokenFilter::default(),
        TokenFilter { temperature: 0.7, ..Default::default() },
        TokenFilter { top_k: 50, ..Default::default() },
        TokenFilter { top_p: 0.9, temperature: 1.3, ..Default::default() },
        TokenFilter { top_k: 200, top_p: 0.5, ..Default::default() },
        TokenFilter { greedy: true, ..Default::default() },
    ];
    for config in configs {
        let prim = logits.clone().into_primitive().tensor();
        let (tokens, logprobs) = cpu::sample(prim.clone(), &uniform, &config);
        let (want_tokens, want_logprobs) = sample_with_tensor_ops::<B>(prim, &uniform, &config);
        assert_eq!(tokens, want_tokens, "{config:?}");
        assert_close(&format!("sampled logprobs {config:?}"), &logprobs, &want_logprobs, 1e-5);
    }
}
