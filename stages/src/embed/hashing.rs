//! The fallback when no model files are present: feature hashing. Lower-cased word unigrams
//! and bigrams are hashed (blake3, so the vectors are the same on every machine and version)
//! into a fixed number of signed buckets, and the vector is L2-normalised. It knows no
//! synonyms — "oxygen" and "O2" are unrelated to it — but texts that share words are close,
//! which keeps the pipeline and `pipe search` working on a machine without the model.

/// Dimensions of the fallback: the same as all-MiniLM-L6-v2, so a store sized for one fits
/// the other (the model name still tells them apart).
pub const DIMENSIONS: usize = 384;

/// Bigrams count half as much as words: they sharpen, words carry the meaning.
const BIGRAM_WEIGHT: f32 = 0.5;

#[derive(Clone, Debug)]
pub struct Hashing {
    dimensions: usize,
}

impl Hashing {
    pub fn new(dimensions: usize) -> Hashing {
        Hashing {
            dimensions: dimensions.max(1),
        }
    }

    /// `hashing-384`: what the records and the stores say the vectors are.
    pub fn model_name(&self) -> String {
        format!("hashing-{}", self.dimensions)
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    pub fn embed(&self, text: &str) -> Vec<f32> {
        let lower = text.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let mut vector = vec![0.0f32; self.dimensions];
        if words.is_empty() {
            // Only punctuation or symbols: the text itself is the one feature.
            self.add(&mut vector, b"t", text.trim().as_bytes(), 1.0);
        }
        for word in &words {
            self.add(&mut vector, b"w", word.as_bytes(), 1.0);
        }
        for pair in words.windows(2) {
            let bigram = format!("{} {}", pair[0], pair[1]);
            self.add(&mut vector, b"b", bigram.as_bytes(), BIGRAM_WEIGHT);
        }
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            vector.iter_mut().for_each(|x| *x /= norm);
        }
        vector
    }

    /// Adds `weight` to the feature's bucket, with a sign from the hash so that collisions
    /// cancel out on average instead of piling up.
    fn add(&self, vector: &mut [f32], kind: &[u8], feature: &[u8], weight: f32) {
        let mut hasher = blake3::Hasher::new();
        hasher.update(kind);
        hasher.update(b"\0");
        hasher.update(feature);
        let hash = hasher.finalize();
        let bytes: [u8; 8] = hash.as_bytes()[..8].try_into().unwrap_or([0; 8]);
        let h = u64::from_le_bytes(bytes);
        let bucket = (h % self.dimensions as u64) as usize;
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        vector[bucket] += sign * weight;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn vectors_are_deterministic_normalised_and_pinned() {
        let h = Hashing::new(DIMENSIONS);
        let a = h.embed("Houston, we've had a problem.");
        assert_eq!(a, h.embed("Houston, we've had a problem."));
        assert_eq!(a.len(), 384);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6);
        // Pinned: a change of tokenisation, hash or weights changes stored vectors, and
        // stores written before would no longer match their queries.
        let nonzero: Vec<(usize, f32)> = a
            .iter()
            .enumerate()
            .filter(|(_, x)| **x != 0.0)
            .map(|(i, x)| (i, (x * 1e4).round() / 1e4))
            .collect();
        // 6 words + 5 bigrams, no collision: words weigh 1, bigrams 0.5, over sqrt(7.25).
        assert_eq!(
            nonzero,
            [
                (10, 0.3714),
                (17, -0.1857),
                (76, -0.3714),
                (156, -0.1857),
                (183, 0.3714),
                (224, 0.3714),
                (262, -0.1857),
                (265, 0.3714),
                (319, 0.1857),
                (346, -0.1857),
                (361, 0.3714)
            ]
        );
        assert_eq!(h.model_name(), "hashing-384");
    }

    #[test]
    fn shared_words_are_closer_than_unrelated_text() {
        let h = Hashing::new(DIMENSIONS);
        let q = h.embed("oxygen tank pressure");
        let near = h.embed("The oxygen tank pressure is dropping fast.");
        let far = h.embed("Lunar module ascent engine burn complete.");
        assert!(cosine(&q, &near) > 0.4, "{}", cosine(&q, &near));
        assert!(cosine(&q, &far).abs() < 0.2, "{}", cosine(&q, &far));
        // Case and punctuation do not matter.
        assert_eq!(h.embed("Oxygen, TANK!"), h.embed("oxygen tank"));
    }

    #[test]
    fn symbols_only_still_get_a_unit_vector() {
        let h = Hashing::new(16);
        let v = h.embed("!!! ???");
        assert!((v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
