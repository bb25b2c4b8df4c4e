//! `rlhf parity`: the numerical parity checks against transformers and TRL (the same ones the
//! unit tests run on the CPU) on any device, printed as a table. Exits non-zero if one fails.

use std::path::PathBuf;

use anyhow::{Context, bail};
use burn::backend::Autodiff;
use clap::Args;

use crate::device::Device;
use crate::with_backend;

#[derive(Args)]
pub struct ParityArgs {
    /// The reference fixtures (`gpt2/` and `trl/`), as committed in the repository.
    #[arg(long, default_value = "trainer/fixtures")]
    fixtures: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

pub fn run(args: ParityArgs) -> anyhow::Result<()> {
    let checks =
        with_backend!(args.device, |B, device| rlhf_trainer::parity::all::<Autodiff<B>>(&args.fixtures, &device))
            .with_context(|| {
                format!("running the parity checks on {} (fixtures in {})", args.device, args.fixtures.display())
            })?;
    println!("| check | device | max abs diff | tolerance | result |");
    println!("|---|---|---|---|---|");
    for check in &checks {
        let result = if check.passed() { "ok" } else { "FAILED" };
        println!(
            "| {} | {} | {:.3e} | {:.0e} | {result} |",
            check.name, args.device, check.max_abs_diff, check.tolerance
        );
    }
    let failed = checks.iter().filter(|c| !c.passed()).count();
    if failed > 0 {
        bail!("{failed} of {} parity checks failed on {}", checks.len(), args.device);
    }
    Ok(())
}
