//! The CI smoke test of the fuzz targets: each target body runs on its seeds and on a fixed,
//! seeded set of mutations of them (bit flips, byte overwrites, truncations, splices and
//! interesting integers), and must not panic. Not coverage-guided: real fuzzing runs under
//! libFuzzer (`fuzz/README.md`); inputs it finds worth keeping go in `fuzz/regressions/<target>/`,
//! which this test replays too.

use std::path::PathBuf;

/// How long one input may take: longer is a hang (a finding), not slowness.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// Mutated inputs per seed.
const MUTATIONS_PER_SEED: usize = 150;

/// A small deterministic generator (xorshift64*), so every CI run tries the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [u64; 8] = [0, 1, 0x7f, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff, u64::MAX];

/// One mutation of `seed`; byte 0 (the target's selector) is kept, so each seed's reader is hit.
fn mutate(seed: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if data.len() < 2 {
            data.push(rng.next() as u8);
            continue;
        }
        let at = 1 + rng.below(data.len() - 1);
        match rng.below(6) {
            0 => data[at] ^= 1 << rng.below(8),
            1 => data[at] = rng.next() as u8,
            2 => data.truncate(at),
            3 => {
                let value = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                let width = [1, 2, 4, 8][rng.below(4)].min(data.len() - at);
                data[at..at + width].copy_from_slice(&value[..width]);
            }
            4 => {
                let from = rng.below(other.len());
                let take = rng.below(64).min(other.len() - from);
                data.splice(at..at, other[from..from + take].iter().copied());
            }
            _ => {
                let len = rng.below(16).min(data.len() - at);
                data.drain(at..at + len);
            }
        }
    }
    data
}

fn regressions(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("regressions").join(target);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries.flatten().map(|e| std::fs::read(e.path()).expect("a regression input")).collect()
}

#[test]
fn every_fuzz_target_survives_its_seeds_mutations_and_regressions() {
    for (name, target) in rlhf_fuzz::TARGETS {
        let seeds = rlhf_fuzz::seeds::seeds(name);
        assert!(!seeds.is_empty(), "{name} has no seeds");
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
        let mut inputs: Vec<Vec<u8>> = seeds.clone();
        inputs.extend(regressions(name));
        for (i, seed) in seeds.iter().enumerate() {
            let other = &seeds[(i + 1) % seeds.len()];
            inputs.extend((0..MUTATIONS_PER_SEED).map(|_| mutate(seed, other, &mut rng)));
        }
        for input in inputs {
            let (done, finished) = std::sync::mpsc::channel();
            // Kept for replay (and for fuzz/regressions/ once fixed) if this input fails.
            let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-{name}-last-input"));
            std::fs::write(&kept, &input).expect("writable target dir");
            let shown =
                format!("{} bytes (in {}): {:02x?}", input.len(), kept.display(), &input[..input.len().min(64)]);
            std::thread::spawn(move || {
                let _ = done.send(std::panic::catch_unwind(|| target(&input)).is_ok());
            });
            match finished.recv_timeout(DEADLINE) {
                Ok(true) => {}
                Ok(false) => panic!("fuzz target {name} panicked on {shown}"),
                Err(_) => panic!("fuzz target {name} ran over {DEADLINE:?} on {shown}"),
            }
        }
    }
}

#[test]
fn the_seeds_are_accepted_where_they_should_be() {
    // A seed the readers refuse would leave the fuzzer exploring error paths only.
    let messages = rlhf_fuzz::seeds::seeds("messages");
    assert_eq!(rlhf_reward_server::decode_and_check(&messages[1][1..], 384).unwrap(), 2);
    assert_eq!(rlhf_reward_server::decode_and_check(&messages[2][1..], 384).unwrap(), 1);
    assert!(rlhf_fuzz::seed_is_accepted(&messages[0]), "the submission seed is refused");
    assert!(rlhf_fuzz::seed_is_accepted(&messages[3]), "the join seed is refused");
    assert!(rlhf_fuzz::seed_is_accepted(&messages[4]), "the lease seed is refused");
}
