//! How many answer tokens a call asks for. An answer cut off at `max_tokens` is billed whole
//! and its batch asked again, so asking too little costs more than asking enough: the stage
//! learns what its answers need per chunk from this run's answers and cut-offs, and asks for
//! that with some headroom — never less than `max_tokens_per_chunk`, never more than
//! `max_answer_tokens` per call. (Asking far too much has a cost too: OpenAI counts
//! `max_tokens` against the tokens-per-minute limit.)

use std::sync::Mutex;

pub(super) struct AnswerSizing {
    /// `max_tokens_per_chunk`: the least a chunk is given.
    floor: u32,
    /// `max_answer_tokens`: the most one call asks for.
    ceiling: u32,
    /// Answer tokens per chunk, a moving average of recent answers; 0 before the first.
    need: Mutex<f64>,
}

impl AnswerSizing {
    /// Over the average need: a batch's answer varies with what its chunks hold.
    const HEADROOM: f64 = 1.3;
    /// Weight of the newest answer in the average.
    const WEIGHT: f64 = 0.2;
    /// A cut-off answer needed more than it was given; how much more is a guess.
    const PAST_CUT_OFF: f64 = 1.25;

    pub(super) fn new(floor: u32, ceiling: u32) -> AnswerSizing {
        AnswerSizing {
            floor,
            ceiling: ceiling.max(floor),
            need: Mutex::new(0.0),
        }
    }

    fn need(&self) -> f64 {
        *self.need.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tokens one chunk is given now.
    pub(super) fn per_chunk(&self) -> u32 {
        let wanted = (self.need() * Self::HEADROOM).ceil();
        (wanted.min(f64::from(self.ceiling)) as u32).max(self.floor)
    }

    /// `max_tokens` for a call of `chunks`.
    pub(super) fn max_tokens_for(&self, chunks: usize) -> u32 {
        let chunks = u32::try_from(chunks.max(1)).unwrap_or(u32::MAX);
        self.per_chunk().saturating_mul(chunks).min(self.ceiling)
    }

    /// Whether the answers seen so far say `chunks` need more than one call may ask for: the
    /// batch is split before it is sent, instead of after its answer is cut off. (A generous
    /// `max_tokens_per_chunk` alone splits nothing: the call asks for the ceiling.)
    pub(super) fn too_many(&self, chunks: usize) -> bool {
        chunks > 1 && self.need() * Self::HEADROOM * chunks as f64 > f64::from(self.ceiling)
    }

    /// The limit to ask again with after a cut-off at `max_tokens`, if it can go higher.
    pub(super) fn raised(&self, max_tokens: u32, chunks: usize) -> Option<u32> {
        (max_tokens < self.ceiling).then(|| {
            max_tokens
                .saturating_mul(2)
                .max(self.max_tokens_for(chunks))
                .min(self.ceiling)
        })
    }

    /// A complete answer for `chunks` took `output_tokens`.
    pub(super) fn answered(&self, output_tokens: u64, chunks: usize) {
        if output_tokens == 0 {
            return; // a provider that reports no usage says nothing about length
        }
        let seen = output_tokens as f64 / chunks.max(1) as f64;
        let mut need = self.need.lock().unwrap_or_else(|e| e.into_inner());
        *need = if *need == 0.0 {
            seen
        } else {
            *need + Self::WEIGHT * (seen - *need)
        };
    }

    /// An answer for `chunks` was cut off at `max_tokens`. A batch's cut-off says its chunks
    /// need more on average; one chunk's says little of the others (a model can run on until
    /// the limit, repeating itself), so it teaches nothing. A cut-off alone never makes two
    /// chunks too many for one call: only complete answers can say that.
    pub(super) fn cut_off(&self, max_tokens: u32, chunks: usize) {
        if chunks < 2 {
            return;
        }
        let at_least = (f64::from(max_tokens) / chunks as f64 * Self::PAST_CUT_OFF)
            .min(f64::from(self.ceiling) / (2.0 * Self::HEADROOM));
        let mut need = self.need.lock().unwrap_or_else(|e| e.into_inner());
        *need = need.max(at_least);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_allowance_holds_until_answers_need_more() {
        let s = AnswerSizing::new(800, 16_384);
        assert_eq!(s.max_tokens_for(10), 8_000);
        // Short answers never lower it.
        s.answered(2_000, 10);
        assert_eq!(s.max_tokens_for(10), 8_000);
        assert!(!s.too_many(10));
        // Room the ceiling cannot give, by configuration alone: the call asks for the ceiling.
        let generous = AnswerSizing::new(3_000, 16_384);
        generous.answered(5_000, 10);
        assert_eq!(generous.max_tokens_for(10), 16_384);
        assert!(!generous.too_many(10));
    }

    #[test]
    fn answers_longer_than_the_allowance_raise_it_with_headroom() {
        let s = AnswerSizing::new(800, 16_384);
        for _ in 0..30 {
            s.answered(10_400, 10); // 1,040 a chunk
        }
        assert_eq!(s.per_chunk(), 1_352);
        assert_eq!(s.max_tokens_for(10), 13_520);
    }

    #[test]
    fn a_cut_off_raises_the_allowance_past_what_was_given() {
        let s = AnswerSizing::new(800, 16_384);
        s.cut_off(8_000, 10);
        assert_eq!(s.per_chunk(), 1_300);
        // Asked again: twice the limit, within the ceiling.
        assert_eq!(s.raised(8_000, 10), Some(16_000));
        assert_eq!(s.raised(16_000, 10), Some(16_384));
        assert_eq!(s.raised(16_384, 10), None);
    }

    #[test]
    fn a_runaway_answer_does_not_split_every_later_batch() {
        let s = AnswerSizing::new(800, 16_384);
        s.answered(10_400, 10);
        // One chunk's answer ran on to the ceiling: nothing learned from it.
        s.cut_off(16_384, 1);
        assert_eq!(s.per_chunk(), 1_352);
        // A pair cut off at the ceiling twice: more room asked, but the pair still goes as one.
        s.cut_off(16_384, 2);
        assert!(s.per_chunk() > 1_352);
        assert!(!s.too_many(2));
    }

    #[test]
    fn a_batch_that_cannot_be_given_enough_is_split_before_it_is_sent() {
        let s = AnswerSizing::new(800, 16_384);
        for _ in 0..30 {
            s.answered(2_500, 1);
        }
        assert_eq!(s.per_chunk(), 3_250);
        assert!(s.too_many(10) && s.too_many(6));
        assert!(!s.too_many(5) && !s.too_many(1));
        // A single chunk is never refused: it gets the ceiling at most.
        let huge = AnswerSizing::new(800, 4_000);
        huge.answered(9_000, 1);
        assert_eq!(huge.max_tokens_for(1), 4_000);
        assert!(!huge.too_many(1));
    }
}
