//! `--device cpu | cuda | cuda:N`, checked before any tensor is made.
//!
//! burn's CUDA runtime panics in a device thread on first use when `libcuda` is missing, with no
//! `Result` to catch, so the driver is probed here first (load `libcuda.so.1`, `cuInit`,
//! `cuDeviceGetCount`) and a missing or absent GPU becomes a clear error.

use anyhow::{Context, bail};

/// A parsed `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("expected cpu, cuda or cuda:N, got {s:?}")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Runs `$body` with `B` bound to the backend type and `$dev` to its device.
///
/// ```ignore
/// with_backend!(args.device, |B, device| run::<B>(&device, &args))
/// ```
#[macro_export]
macro_rules! with_backend {
    ($device:expr, |$b:ident, $dev:ident| $body:expr) => {{
        match $crate::device::check($device)? {
            $crate::device::Device::Cpu => {
                type $b = burn::backend::Flex;
                let $dev = burn::backend::flex::FlexDevice::default();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::device::Device::Cuda(index) => {
                type $b = burn::backend::Cuda;
                let $dev = burn::backend::cuda::CudaDevice::new(index);
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::device::Device::Cuda(_) => {
                unreachable!("check() refuses cuda without the feature")
            }
        }
    }};
}

/// Checks that `device` can be used by this build on this machine.
pub fn check(device: Device) -> anyhow::Result<Device> {
    match device {
        Device::Cpu => Ok(device),
        Device::Cuda(index) => {
            if !cfg!(feature = "cuda") {
                bail!(
                    "--device {device}: this rlhf was built without CUDA support; rebuild with `cargo build --release --features cuda`"
                );
            }
            let count = cuda_device_count().with_context(|| format!("--device {device}: no usable NVIDIA GPU"))?;
            if index >= count {
                bail!("--device {device}: the driver reports {count} GPU(s), so the index must be below {count}");
            }
            Ok(device)
        }
    }
}

/// Where `rlhf run` puts each child: the learner, the reward server and every worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub learner: Device,
    pub reward: Device,
    pub workers: Vec<Device>,
}

impl Placement {
    /// `device` for every child on the CPU or a single GPU. With `gpus` > 1 (and `device` =
    /// `cuda`), the learner gets `cuda:0` and the reward server and workers spread round robin
    /// over the others; `worker_devices` places the workers explicitly (round robin when there
    /// are more workers than devices; the reward server keeps its place).
    pub fn plan(device: Device, gpus: usize, workers: usize, worker_devices: &[Device]) -> Self {
        let spread = matches!(device, Device::Cuda(_)) && gpus > 1;
        let (learner, rest): (Device, Vec<Device>) =
            if spread { (Device::Cuda(0), (1..gpus).map(Device::Cuda).collect()) } else { (device, vec![device]) };
        let reward = rest[0];
        let workers = if worker_devices.is_empty() {
            // Workers start after the reward server in the rotation, so with two spare GPUs the
            // first worker does not share the reward server's.
            (0..workers).map(|i| rest[(i + 1) % rest.len()]).collect()
        } else {
            (0..workers).map(|i| worker_devices[i % worker_devices.len()]).collect()
        };
        Self { learner, reward, workers }
    }
}

/// How many GPUs the CUDA driver sees (0 without a driver or without CUDA support).
pub fn gpu_count() -> usize {
    if cfg!(feature = "cuda") { cuda_device_count().unwrap_or(0) } else { 0 }
}

/// Asks the CUDA driver how many GPUs it sees.
fn cuda_device_count() -> anyhow::Result<usize> {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGetCount = unsafe extern "C" fn(*mut i32) -> i32;
    // SAFETY: loading the CUDA driver library runs no initialisers beyond the driver's own, and
    // the two symbols have these C signatures in every CUDA version (cuda.h).
    unsafe {
        let lib = libloading::Library::new("libcuda.so.1")
            .context("cannot load libcuda.so.1 (is the NVIDIA driver installed?)")?;
        let init: libloading::Symbol<CuInit> = lib.get(b"cuInit\0").context("libcuda.so.1 has no cuInit")?;
        let status = init(0);
        if status != 0 {
            bail!("cuInit failed with CUDA error {status}");
        }
        let get_count: libloading::Symbol<CuDeviceGetCount> =
            lib.get(b"cuDeviceGetCount\0").context("libcuda.so.1 has no cuDeviceGetCount")?;
        let mut count = 0i32;
        let status = get_count(&mut count);
        if status != 0 {
            bail!("cuDeviceGetCount failed with CUDA error {status}");
        }
        Ok(count.max(0) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlhf_run_gives_each_child_its_own_gpu_when_there_are_several() {
        let cuda = Device::Cuda;
        let one = Placement::plan(Device::Cpu, 0, 2, &[]);
        assert_eq!(one, Placement { learner: Device::Cpu, reward: Device::Cpu, workers: vec![Device::Cpu; 2] });
        let single = Placement::plan(cuda(0), 1, 2, &[]);
        assert_eq!(single, Placement { learner: cuda(0), reward: cuda(0), workers: vec![cuda(0); 2] });
        // Four GPUs: learner 0, reward server 1, workers over 2, 3, 1, 2.
        let four = Placement::plan(cuda(0), 4, 4, &[]);
        assert_eq!((four.learner, four.reward), (cuda(0), cuda(1)));
        assert_eq!(four.workers, [cuda(2), cuda(3), cuda(1), cuda(2)]);
        // Two GPUs: the learner alone on 0, everything else on 1.
        let two = Placement::plan(cuda(0), 2, 3, &[]);
        assert_eq!((two.learner, two.reward, two.workers), (cuda(0), cuda(1), vec![cuda(1); 3]));
        // Explicit worker devices, cycled.
        let explicit = Placement::plan(cuda(0), 4, 3, &[cuda(2), cuda(3)]);
        assert_eq!(explicit.workers, [cuda(2), cuda(3), cuda(2)]);
    }
}
