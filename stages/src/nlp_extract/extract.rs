//! The extraction itself: entities from speaker labels, capitalised spans, acronyms and noun
//! phrases; relations from co-occurrence. Part-of-speech tags and noun-phrase chunks come from
//! `harper-brill` (the Brill tagger and chunker of the Harper grammar checker, trained on
//! Universal Dependencies English and shipped inside the crate: no model download, no network).

use super::text::{CharOffsets, Token, sentences, tokens, utterances};
use harper_brill::{BrillChunker, BrillTagger, Chunker, FreqDict, Tagger, UPOS};
use pipeline::{Entity, Graph, Mention, Relation};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Function words and radio-procedure words: never an entity on their own, trimmed from the
/// edges of names and phrases.
pub const BUILTIN_STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "affirm",
    "affirmative",
    "after",
    "again",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "both",
    "but",
    "by",
    "can",
    "copy",
    "could",
    "did",
    "do",
    "does",
    "done",
    "down",
    "each",
    "else",
    "even",
    "every",
    "few",
    "fine",
    "for",
    "from",
    "go",
    "good",
    "got",
    "had",
    "has",
    "have",
    "he",
    "hello",
    "her",
    "here",
    "hey",
    "hi",
    "him",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "just",
    "let",
    "like",
    "many",
    "mark",
    "may",
    "me",
    "might",
    "more",
    "most",
    "much",
    "must",
    "my",
    "negative",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "ok",
    "okay",
    "on",
    "once",
    "one",
    "only",
    "or",
    "other",
    "our",
    "out",
    "over",
    "own",
    "please",
    "really",
    "right",
    "roger",
    "said",
    "same",
    "say",
    "see",
    "she",
    "should",
    "so",
    "some",
    "sorry",
    "stand",
    "standby",
    "still",
    "such",
    "sure",
    "than",
    "thank",
    "thanks",
    "that",
    "the",
    "their",
    "them",
    "then",
    "there",
    "these",
    "they",
    "thing",
    "things",
    "this",
    "those",
    "though",
    "through",
    "to",
    "too",
    "uh",
    "um",
    "understand",
    "until",
    "up",
    "us",
    "very",
    "want",
    "was",
    "we",
    "well",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "why",
    "wilco",
    "will",
    "with",
    "would",
    "yeah",
    "yep",
    "yes",
    "yet",
    "you",
    "your",
];

/// "we" of "we've", "do" of "don't": the word before an English contraction suffix.
fn contraction_base(lower: &str) -> Option<&str> {
    [
        "n't", "n’t", "'s", "’s", "'ve", "’ve", "'re", "’re", "'ll", "’ll", "'d", "’d", "'m", "’m",
    ]
    .iter()
    .find_map(|suffix| lower.strip_suffix(suffix))
    .filter(|base| !base.is_empty())
}

/// The kinds of entity `nlp_extract` finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Speaker,
    Name,
    Acronym,
    NounPhrase,
}

/// Settings the extractor needs (from the stage config).
#[derive(Clone, Debug)]
pub struct Settings {
    pub kinds: Vec<Kind>,
    /// Type name per kind.
    pub type_names: BTreeMap<Kind, String>,
    pub mentions_type: String,
    pub co_occurs_type: String,
    /// None: no co-occurrence relations.
    pub co_occurrence: Option<Scope>,
    pub stop_words: HashSet<String>,
    pub min_chars: usize,
    pub noun_phrase_words: (usize, usize),
    pub max_paired_entities: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Sentence,
    Utterance,
}

/// Where the chunk sits, for mentions.
#[derive(Clone, Debug)]
pub struct ChunkRef<'a> {
    pub chunk_id: &'a str,
    pub document_id: &'a str,
    pub source_path: Option<&'a str>,
    /// Character offset of the chunk in its document, when known.
    pub char_start: Option<u64>,
}

/// What one extraction counted.
#[derive(Debug, Default)]
pub struct Stats {
    pub pairs_capped: u64,
}

pub struct Extractor {
    settings: Settings,
    tagger: Arc<BrillTagger<FreqDict>>,
    chunker: Arc<BrillChunker>,
}

/// One found occurrence of an entity.
#[derive(Clone, Debug)]
struct Found {
    name: String,
    kind: Kind,
    start: usize,
    end: usize,
}

impl Extractor {
    pub fn new(settings: Settings) -> Extractor {
        Extractor {
            settings,
            tagger: harper_brill::brill_tagger(),
            chunker: harper_brill::brill_chunker(),
        }
    }

    fn wants(&self, kind: Kind) -> bool {
        self.settings.kinds.contains(&kind)
    }

    /// A stop word, or a contraction of one ("We've", "that's", "don't").
    fn is_stop(&self, word: &str) -> bool {
        let lower = word.to_lowercase();
        self.settings.stop_words.contains(&lower)
            || contraction_base(&lower).is_some_and(|base| self.settings.stop_words.contains(base))
    }

    /// The tag the lexicon gives a word on its own (case-insensitive; a contraction by its
    /// first part).
    fn lexicon(&self, word: &str) -> Option<UPOS> {
        let lower = word.to_lowercase();
        let base = contraction_base(&lower).unwrap_or(&lower);
        self.tagger
            .tag_sentence(&[base.to_string()])
            .first()
            .copied()
            .flatten()
    }

    /// Entities and relations of one chunk's text.
    pub fn extract(&self, text: &str, at: &ChunkRef<'_>) -> (Graph, Stats) {
        let offsets = CharOffsets::new(text);
        let mention = |start: usize, end: usize| Mention {
            document_id: at.document_id.to_string(),
            chunk_id: at.chunk_id.to_string(),
            source_path: at.source_path.map(str::to_string),
            char_span: at
                .char_start
                .map(|base| [base + offsets.at(start), base + offsets.at(end)]),
        };
        let mut stats = Stats::default();
        let mut graph = Graph {
            extractor: super::EXTRACTOR.to_string(),
            ..Graph::default()
        };
        // Every occurrence, in text order; entities are made from them at the end, one per
        // name ("CDR" said as a speaker and written in the text is one entity), so relation
        // ends, which are names, are unique.
        let mut all: Vec<Found> = Vec::new();
        let mut relation_at: BTreeMap<(String, String, String), usize> = BTreeMap::new();
        let mut add_relation =
            |graph: &mut Graph, source: &str, kind: &str, target: &str, m: Mention| {
                let key = (source.to_string(), kind.to_string(), target.to_string());
                let at = *relation_at.entry(key).or_insert_with(|| {
                    graph.relations.push(Relation {
                        source: source.to_string(),
                        target: target.to_string(),
                        relation_type: kind.to_string(),
                        weight: 0.0,
                        ..Relation::default()
                    });
                    graph.relations.len() - 1
                });
                let relation = &mut graph.relations[at];
                if !relation.mentions.contains(&m) {
                    relation.mentions.push(m);
                    relation.weight += 1.0;
                }
            };

        for utterance in utterances(text) {
            let speaker = utterance
                .speaker
                .filter(|_| self.wants(Kind::Speaker))
                .map(|(s, e)| Found {
                    name: text[s..e].to_string(),
                    kind: Kind::Speaker,
                    start: s,
                    end: e,
                });
            let mut in_utterance: Vec<Found> = Vec::new();
            for sentence in sentences(text, utterance.body) {
                let found = self.sentence_entities(text, sentence);
                if self.settings.co_occurrence == Some(Scope::Sentence) {
                    self.pair(
                        &mut graph,
                        &mut add_relation,
                        &found,
                        mention(sentence.0, sentence.1),
                        &mut stats,
                    );
                }
                in_utterance.extend(found);
            }
            if self.settings.co_occurrence == Some(Scope::Utterance) {
                let m = mention(utterance.body.0, utterance.body.1);
                self.pair(&mut graph, &mut add_relation, &in_utterance, m, &mut stats);
            }
            if let Some(speaker) = &speaker {
                let m = mention(utterance.span.0, utterance.span.1);
                let mut said: Vec<&str> = in_utterance
                    .iter()
                    .map(|f| f.name.as_str())
                    .filter(|name| *name != speaker.name)
                    .collect();
                said.sort_unstable();
                said.dedup();
                for name in said {
                    add_relation(
                        &mut graph,
                        &speaker.name,
                        &self.settings.mentions_type,
                        name,
                        m.clone(),
                    );
                }
            }
            all.extend(speaker);
            all.extend(in_utterance);
        }
        // One entity per name, typed by its strongest kind in the chunk (speaker, then name,
        // acronym, noun phrase), in order of first appearance.
        let mut kind_of: BTreeMap<&str, Kind> = BTreeMap::new();
        for found in &all {
            let kind = kind_of.entry(found.name.as_str()).or_insert(found.kind);
            *kind = (*kind).min(found.kind);
        }
        let mut entity_at: BTreeMap<&str, usize> = BTreeMap::new();
        for found in &all {
            let at = *entity_at.entry(found.name.as_str()).or_insert_with(|| {
                graph.entities.push(Entity {
                    name: found.name.clone(),
                    entity_type: self.settings.type_names[&kind_of[found.name.as_str()]].clone(),
                    ..Entity::default()
                });
                graph.entities.len() - 1
            });
            let m = mention(found.start, found.end);
            let entity = &mut graph.entities[at];
            if !entity.mentions.contains(&m) {
                entity.mentions.push(m);
            }
        }
        (graph, stats)
    }

    /// Co-occurrence: every pair of distinct entities found together (not overlapping each
    /// other: "O2" inside "O2 tank" is not a second thing seen with it), counted once per
    /// scope.
    fn pair(
        &self,
        graph: &mut Graph,
        add_relation: &mut impl FnMut(&mut Graph, &str, &str, &str, Mention),
        found: &[Found],
        m: Mention,
        stats: &mut Stats,
    ) {
        let mut firsts: Vec<&Found> = Vec::new();
        for f in found {
            if !firsts.iter().any(|g| g.name == f.name) {
                firsts.push(f);
            }
        }
        if firsts.len() > self.settings.max_paired_entities {
            stats.pairs_capped += 1;
            firsts.truncate(self.settings.max_paired_entities);
        }
        for (i, a) in firsts.iter().enumerate() {
            for b in &firsts[i + 1..] {
                let overlap = a.start < b.end && b.start < a.end;
                if overlap {
                    continue;
                }
                let (source, target) = if a.name <= b.name {
                    (&a.name, &b.name)
                } else {
                    (&b.name, &a.name)
                };
                add_relation(
                    graph,
                    source,
                    &self.settings.co_occurs_type,
                    target,
                    m.clone(),
                );
            }
        }
    }

    /// Names, acronyms and noun phrases of one sentence, in text order.
    fn sentence_entities(&self, text: &str, sentence: (usize, usize)) -> Vec<Found> {
        let toks = tokens(text, sentence);
        if toks.is_empty() {
            return Vec::new();
        }
        let words: Vec<String> = toks
            .iter()
            .map(|t| text[t.start..t.end].to_string())
            .collect();
        let tags = self.tagger.tag_sentence(&words);
        let mut found = Vec::new();
        let mut taken = vec![false; toks.len()];
        if self.wants(Kind::Name) {
            self.names(text, &toks, &words, &mut found, &mut taken);
        }
        if self.wants(Kind::Acronym) {
            for (i, word) in words.iter().enumerate() {
                if taken[i] {
                    continue;
                }
                match self.acronym_kind(word) {
                    Some(Kind::Name) if self.wants(Kind::Name) => {
                        found.push(self.found(&toks[i..=i], text, Kind::Name));
                    }
                    Some(Kind::Acronym) => {
                        found.push(self.found(&toks[i..=i], text, Kind::Acronym));
                    }
                    _ => {}
                }
            }
        }
        if self.wants(Kind::NounPhrase) {
            let in_phrase = self.chunker.chunk_sentence(&words, &tags);
            self.noun_phrases(text, &toks, &words, &tags, &in_phrase, &taken, &mut found);
        }
        found.retain(|f| f.name.chars().count() >= self.settings.min_chars);
        found.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
        found
    }

    fn found(&self, toks: &[Token], text: &str, kind: Kind) -> Found {
        let (start, end) = (toks[0].start, toks[toks.len() - 1].end);
        Found {
            name: text[start..end]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            kind,
            start,
            end,
        }
    }

    /// Capitalised spans: runs of capitalised words separated by plain spaces ("Jim Lovell",
    /// "Mission Control"), with a trailing number ("Apollo 13"). Stop words are trimmed from
    /// the edges; the first word of a sentence counts only if the lexicon does not know it as
    /// a common word ("The", "Stand").
    fn names(
        &self,
        text: &str,
        toks: &[Token],
        words: &[String],
        found: &mut Vec<Found>,
        taken: &mut [bool],
    ) {
        let capitalised = |w: &str| {
            let mut chars = w.chars();
            chars.next().is_some_and(char::is_uppercase) && w.chars().any(char::is_lowercase)
        };
        let spaced = |a: &Token, b: &Token| text[a.end..b.start].chars().all(|c| c == ' ');
        let mut i = 0;
        while i < toks.len() {
            if !capitalised(&words[i]) {
                i += 1;
                continue;
            }
            let mut end = i + 1;
            while end < toks.len() && spaced(&toks[end - 1], &toks[end]) {
                if capitalised(&words[end]) {
                    end += 1;
                } else if words[end].chars().all(|c| c.is_ascii_digit()) {
                    end += 1;
                    break;
                } else {
                    break;
                }
            }
            // At the start of a sentence capitals say nothing: a function word goes ("The
            // Moon"), and so does a lone common word ("Roll complete"), but a run of capitals
            // stays a name ("Mission Control").
            let mut start = i;
            while start < end
                && (self.is_stop(&words[start])
                    || (start == 0
                        && self.lexicon(&words[start]).is_some_and(|t| {
                            t != UPOS::PROPN
                                && (end - start == 1
                                    || !matches!(t, UPOS::NOUN | UPOS::VERB | UPOS::ADJ))
                        })))
            {
                start += 1;
            }
            let mut stop = end;
            while stop > start && self.is_stop(&words[stop - 1]) {
                stop -= 1;
            }
            let has_name = (start..stop).any(|k| capitalised(&words[k]));
            if stop > start && has_name {
                found.push(self.found(&toks[start..stop], text, Kind::Name));
                taken[start..stop].iter_mut().for_each(|t| *t = true);
            }
            i = end;
        }
    }

    /// An all-capitals token: an acronym ("CSM", "O2", "S-IVB", "P52"), a shouted name
    /// ("HOUSTON": the lexicon knows it as a proper noun), or a shouted word ("POWER",
    /// "CONTROL": four or more letters the lexicon knows as a common word) that is neither.
    fn acronym_kind(&self, word: &str) -> Option<Kind> {
        let letters = word.chars().filter(|c| c.is_alphabetic()).count();
        if letters == 0
            || word.chars().any(char::is_lowercase)
            || word.chars().count() > 12
            || self.is_stop(word)
        {
            return None;
        }
        let only_letters = word.chars().all(char::is_alphabetic);
        if only_letters && letters >= 4 {
            return match self.lexicon(word) {
                Some(UPOS::PROPN) => Some(Kind::Name),
                Some(_) => None,
                None => Some(Kind::Acronym),
            };
        }
        Some(Kind::Acronym)
    }

    /// Noun phrases from the chunker: runs of tokens it marks, cut at punctuation, with
    /// determiners, pronouns, numbers and stop words trimmed from the start and function words
    /// and verbs from the end; kept when they end in a noun (or a word the tagger does not know), hold a
    /// lower-case word (all-capitals runs are switch labels, capitalised ones names) and have
    /// between `noun_phrase_words` words (longer ones keep their last words).
    #[allow(clippy::too_many_arguments)]
    fn noun_phrases(
        &self,
        text: &str,
        toks: &[Token],
        words: &[String],
        tags: &[Option<UPOS>],
        in_phrase: &[bool],
        taken: &[bool],
        found: &mut Vec<Found>,
    ) {
        let (min_words, max_words) = self.settings.noun_phrase_words;
        let mut i = 0;
        while i < toks.len() {
            if !in_phrase.get(i).copied().unwrap_or(false) || !toks[i].word {
                i += 1;
                continue;
            }
            let mut end = i;
            while end < toks.len() && in_phrase.get(end).copied().unwrap_or(false) && toks[end].word
            {
                end += 1;
            }
            let lead = |t: Option<UPOS>| {
                matches!(
                    t,
                    Some(
                        UPOS::DET
                            | UPOS::PRON
                            | UPOS::NUM
                            | UPOS::ADP
                            | UPOS::CCONJ
                            | UPOS::SCONJ
                            | UPOS::PART
                            | UPOS::AUX
                            | UPOS::INTJ
                            | UPOS::VERB
                    )
                )
            };
            let tail = |t: Option<UPOS>| {
                matches!(
                    t,
                    Some(
                        UPOS::DET
                            | UPOS::PRON
                            | UPOS::ADP
                            | UPOS::CCONJ
                            | UPOS::SCONJ
                            | UPOS::PART
                            | UPOS::AUX
                            | UPOS::ADJ
                            | UPOS::ADV
                            // The chunker can run on into the verb ("the oxygen tank failed").
                            | UPOS::VERB
                    )
                )
            };
            let mut start = i;
            while start < end && (lead(tags[start]) || self.is_stop(&words[start])) {
                start += 1;
            }
            let mut stop = end;
            while stop > start && (tail(tags[stop - 1]) || self.is_stop(&words[stop - 1])) {
                stop -= 1;
            }
            if stop - start > max_words {
                start = stop - max_words;
            }
            let head_is_noun =
                stop > start && matches!(tags[stop - 1], Some(UPOS::NOUN | UPOS::PROPN) | None);
            let has_lower =
                (start..stop).any(|k| words[k].chars().next().is_some_and(char::is_lowercase));
            let whole_name = (start..stop).all(|k| taken[k]);
            if stop - start >= min_words && head_is_noun && has_lower && !whole_name {
                found.push(self.found(&toks[start..stop], text, Kind::NounPhrase));
            }
            i = end;
        }
    }
}
