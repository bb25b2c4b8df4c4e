//! Writes each fuzz target's seeds into `DIR/<target>/seed-N` (libFuzzer's starting corpus):
//! `cargo run --release -p rlhf-fuzz --bin write-seeds -- fuzz/libfuzzer/corpus`.

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/libfuzzer/corpus".into()));
    for (name, _) in rlhf_fuzz::TARGETS {
        let target = dir.join(name);
        std::fs::create_dir_all(&target)?;
        for (i, seed) in rlhf_fuzz::seeds::seeds(name).iter().enumerate() {
            std::fs::write(target.join(format!("seed-{i}")), seed)?;
        }
        println!("{}: {} seeds", target.display(), rlhf_fuzz::seeds::seeds(name).len());
    }
    Ok(())
}
