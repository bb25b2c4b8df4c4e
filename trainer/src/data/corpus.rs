//! A seeded, procedural movie-review corpus with sentiment labels, and a byte-level BPE trained on
//! it: what the embedded demo uses instead of downloads. The sentences are generated from small
//! word lists written here (positive and negative vocabulary, neutral filler), not copied text.

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokenizers::AddedToken;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::data::TextExample;
use crate::error::TokenizerError;
use crate::tokenizer::Tokenizer;

const SUBJECTS: &[&str] = &[
    "the film",
    "this movie",
    "the plot",
    "the acting",
    "the script",
    "the soundtrack",
    "the director",
    "the cast",
    "the ending",
    "the cinematography",
    "the dialogue",
    "the lead actor",
    "the story",
];
const POSITIVE: &[&str] = &[
    "wonderful",
    "brilliant",
    "moving",
    "beautiful",
    "excellent",
    "charming",
    "gripping",
    "superb",
    "delightful",
    "powerful",
    "funny",
    "clever",
    "stunning",
    "memorable",
    "heartfelt",
];
const NEGATIVE: &[&str] = &[
    "boring",
    "awful",
    "dull",
    "terrible",
    "clumsy",
    "predictable",
    "tedious",
    "weak",
    "painful",
    "forgettable",
    "messy",
    "lifeless",
    "silly",
    "annoying",
    "bland",
];
const POSITIVE_VERBS: &[&str] = &["loved", "enjoyed", "admired", "recommend", "treasured"];
const NEGATIVE_VERBS: &[&str] = &["hated", "regretted", "disliked", "endured", "resented"];
const FILLER: &[&str] = &[
    "I saw it on a rainy Sunday.",
    "It runs a little over two hours.",
    "My brother picked it for movie night.",
    "The theater was half empty.",
    "It is based on an old novel.",
    "I watched it with a bowl of popcorn.",
    "The trailer gave away a few scenes.",
    "It was filmed in a small coastal town.",
];

/// One sentence carrying `positive` sentiment.
fn sentiment_sentence(rng: &mut StdRng, positive: bool) -> String {
    let (adjectives, verbs) = if positive { (POSITIVE, POSITIVE_VERBS) } else { (NEGATIVE, NEGATIVE_VERBS) };
    let subject = SUBJECTS.choose(rng).expect("non-empty");
    let adjective = adjectives.choose(rng).expect("non-empty");
    let other = adjectives.choose(rng).expect("non-empty");
    let verb = verbs.choose(rng).expect("non-empty");
    match rng.random_range(0..4) {
        0 => format!("{} was {adjective}.", capitalise(subject)),
        1 => format!("I {verb} {subject}, it was {adjective} and {other}."),
        2 => format!("Honestly, {subject} felt {adjective}."),
        _ => format!("What a {adjective} experience; {subject} was {other}."),
    }
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// `n` reviews, half positive (label 1) and half negative (0), interleaved, from `seed`. Each has
/// 3–6 sentences: mostly of its sentiment, sometimes one of the other, plus neutral filler.
pub fn generate_reviews(n: usize, seed: u64) -> Vec<TextExample> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let positive = i % 2 == 0;
            let sentences = rng.random_range(3..=6);
            let text = (0..sentences)
                .map(|_| match rng.random_range(0..10) {
                    0..=1 => FILLER.choose(&mut rng).expect("non-empty").to_string(),
                    2 => sentiment_sentence(&mut rng, !positive),
                    _ => sentiment_sentence(&mut rng, positive),
                })
                .collect::<Vec<_>>()
                .join(" ");
            TextExample { text, label: positive as i64 }
        })
        .collect()
}

/// Trains a GPT-2-style byte-level BPE with `<|endoftext|>` on `texts`.
pub fn train_bpe(texts: &[String], vocab_size: usize) -> Result<Tokenizer, TokenizerError> {
    let eos = "<|endoftext|>";
    let train_error = |e: tokenizers::Error| TokenizerError::Codec { action: "train", message: e.to_string() };
    let mut tokenizer = tokenizers::Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(eos, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer: TrainerWrapper = trainer.into();
    tokenizer.train(&mut trainer, texts.iter()).map_err(train_error)?;
    Tokenizer::from_tokenizer(tokenizer, eos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reviews_are_seeded_balanced_varied_and_separable() {
        let reviews = generate_reviews(200, 7);
        assert_eq!(reviews, generate_reviews(200, 7));
        assert_ne!(reviews, generate_reviews(200, 8));
        assert_eq!(reviews.iter().filter(|r| r.label == 1).count(), 100);
        let distinct: std::collections::BTreeSet<&str> = reviews.iter().map(|r| r.text.as_str()).collect();
        assert!(distinct.len() > 190);
        // Counting sentiment words classifies most reviews: the labels carry signal.
        let correct = reviews
            .iter()
            .filter(|r| {
                let count = |words: &[&str]| words.iter().map(|w| r.text.matches(w).count()).sum::<usize>();
                (count(POSITIVE) > count(NEGATIVE)) == (r.label == 1)
            })
            .count();
        assert!(correct > 170, "{correct}/200");
    }

    #[test]
    fn a_bpe_trained_on_the_corpus_round_trips_its_text() {
        let texts: Vec<String> = generate_reviews(300, 1).into_iter().map(|r| r.text).collect();
        let tokenizer = train_bpe(&texts, 400).unwrap();
        assert!(tokenizer.vocab_size() <= 400);
        let text = &texts[0];
        let ids = tokenizer.encode(text).unwrap();
        assert!(ids.len() < text.len() / 2, "the merges should compress: {} ids for {} bytes", ids.len(), text.len());
        assert_eq!(tokenizer.decode(&ids).unwrap(), *text);
        assert_eq!(tokenizer.encode("<|endoftext|>").unwrap(), vec![tokenizer.eos_id()]);
    }
}
