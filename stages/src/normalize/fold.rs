//! Folding names and types into the keys that decide identity: Unicode NFKC
//! (`unicode-normalization`), case, whitespace and punctuation; and the label-safe forms graph
//! stores need for types (`^[A-Za-z_][A-Za-z0-9_]*$`).

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// The key two surface forms share when they name the same thing: NFKC, lower case, dots and
/// apostrophes dropped inside words ("N.A.S.A." = "NASA" = "nasa", "O'Brien" = "OBrien"), any
/// other run of punctuation or whitespace one space ("fuel-cell" = "fuel cell"). A dot between
/// two digits separates them ("3.5" stays apart from "35").
pub fn fold_name(surface: &str) -> String {
    let chars: Vec<char> = surface.nfkc().collect();
    let mut out = String::with_capacity(surface.len());
    let mut gap = false;
    for (i, &c) in chars.iter().enumerate() {
        if c.is_alphanumeric() {
            if gap && !out.is_empty() {
                out.push(' ');
            }
            gap = false;
            out.extend(c.to_lowercase());
        } else if is_joiner(c) {
            let between_digits = i > 0
                && chars[i - 1].is_ascii_digit()
                && chars.get(i + 1).is_some_and(char::is_ascii_digit);
            if between_digits {
                gap = true;
            }
        } else {
            gap = true;
        }
    }
    out
}

/// Characters that join the letters of one word rather than separate words.
fn is_joiner(c: char) -> bool {
    matches!(c, '.' | '\'' | '’' | '‘' | '`' | '´' | 'ʼ')
}

/// A surface form as displayed: NFKC, whitespace collapsed, trimmed.
pub fn clean_display(surface: &str) -> String {
    let nfkc: String = surface.nfkc().collect();
    nfkc.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// True for names graph stores accept as labels and relationship types.
pub fn is_label(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The words of a type name: split at anything that is not an ASCII letter or digit (accents
/// are stripped first: "Équipe" → "Equipe") and where a lower-case letter meets an upper-case
/// one ("spaceCraft" → "space", "Craft").
fn label_words(raw: &str) -> Vec<String> {
    let ascii: String = raw
        .nfkd()
        .filter(|c| !is_combining_mark(*c))
        .map(|c| if c.is_ascii_alphanumeric() { c } else { ' ' })
        .collect();
    let mut words = Vec::new();
    for part in ascii.split_whitespace() {
        let mut word = String::new();
        let mut previous_lower = false;
        for c in part.chars() {
            if c.is_ascii_uppercase() && previous_lower && !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
            word.push(c);
        }
        if !word.is_empty() {
            words.push(word);
        }
    }
    words
}

/// An entity type as a node label, PascalCase: "person", "PERSON" and "Person" → `Person`,
/// "space craft" / "space_craft" / "spaceCraft" → `SpaceCraft`. `None` when nothing
/// label-safe is left (no ASCII letter or digit).
pub fn entity_label(raw: &str) -> Option<String> {
    let mut label: String = label_words(raw)
        .iter()
        .map(|w| {
            let lower = w.to_ascii_lowercase();
            let mut chars = lower.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect();
    if label.is_empty() {
        return None;
    }
    if label.starts_with(|c: char| c.is_ascii_digit()) {
        label.insert(0, '_');
    }
    Some(label)
}

/// A relation type as a relationship type, UPPER_SNAKE_CASE: "co-occurs", "coOccurs" and
/// "CO_OCCURS" → `CO_OCCURS`. `None` when nothing label-safe is left.
pub fn relation_label(raw: &str) -> Option<String> {
    let words = label_words(raw);
    if words.is_empty() {
        return None;
    }
    let mut label = words
        .iter()
        .map(|w| w.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join("_");
    if label.starts_with(|c: char| c.is_ascii_digit()) {
        label.insert(0, '_');
    }
    Some(label)
}

/// The key a type is looked up under in a `types:` table: case and separators folded
/// ("Space Craft" = "space_craft" = "SPACECRAFT" = "spacecraft").
pub fn type_key(raw: &str) -> String {
    label_words(raw)
        .iter()
        .map(|w| w.to_ascii_lowercase())
        .collect()
}

/// The digit runs of a name ("O2 tank 2" → ["2", "2"]): names whose numbers differ are
/// different things, however similar the letters.
pub fn numbers(name: &str) -> Vec<&str> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_case_punctuation_and_unicode() {
        for variant in ["NASA", "nasa", "N.A.S.A.", "  N.A.S.A ", "ＮＡＳＡ"] {
            assert_eq!(fold_name(variant), "nasa", "{variant}");
        }
        assert_eq!(fold_name("fuel-cell"), fold_name("Fuel  Cell"));
        assert_eq!(fold_name("O'Brien"), "obrien");
        assert_eq!(fold_name("Dr. Lee"), "dr lee");
        assert_ne!(fold_name("3.5 psi"), fold_name("35 psi"));
        assert_eq!(fold_name("S-IVB"), "s ivb");
        assert_eq!(fold_name("..."), "");
        assert_eq!(clean_display(" Jim \n Lovell "), "Jim Lovell");
    }

    #[test]
    fn type_labels_are_label_safe() {
        for raw in ["person", "PERSON", "Person", " person "] {
            assert_eq!(entity_label(raw).as_deref(), Some("Person"), "{raw}");
        }
        for raw in ["space craft", "space_craft", "spaceCraft", "Space-Craft"] {
            assert_eq!(entity_label(raw).as_deref(), Some("SpaceCraft"), "{raw}");
        }
        assert_eq!(entity_label("Équipement").as_deref(), Some("Equipement"));
        assert_eq!(entity_label("3d model").as_deref(), Some("_3dModel"));
        assert_eq!(entity_label("`); DROP"), Some("Drop".to_string()));
        assert_eq!(entity_label("火箭"), None);
        for raw in ["co-occurs", "coOccurs", "CO_OCCURS", "co occurs"] {
            assert_eq!(relation_label(raw).as_deref(), Some("CO_OCCURS"), "{raw}");
        }
        for label in ["Person", "_3dModel", "CO_OCCURS"] {
            assert!(is_label(label));
        }
        for bad in ["", "3d", "a b", "a`b", "É"] {
            assert!(!is_label(bad), "{bad}");
        }
        assert_eq!(type_key("Space Craft"), type_key("SPACECRAFT"));
        assert_eq!(type_key("space_craft"), "spacecraft");
    }

    #[test]
    fn numbers_are_kept_apart() {
        assert_eq!(numbers("O2 tank 2"), vec!["2", "2"]);
        assert_eq!(numbers("tank"), Vec::<&str>::new());
    }
}
