//! `${VAR}` / `${VAR:-default}` / `${VAR:+word}` in scalar values, from the process environment
//! and `.env`.
//!
//! Interpolation runs on parsed scalars, not on the raw text, so a value can never inject YAML
//! structure and every error still points at the scalar it came from.

use super::diagnostic::{Diagnostic, Diagnostics, Locator};
use marked_yaml::Node;
use marked_yaml::types::MarkedScalarNode;
use std::collections::HashMap;
use std::path::Path;

/// Variables visible to a pipeline: the process environment wins over `.env` files.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// Process environment, then `.env` beside the pipeline file, then `.env` in the working
    /// directory (earlier sources win).
    pub fn load(pipeline_dir: &Path) -> Result<Env, String> {
        let mut vars: HashMap<String, String> = std::env::vars().collect();
        let mut dotenv_paths = vec![pipeline_dir.join(".env")];
        if let Ok(cwd) = std::env::current_dir() {
            dotenv_paths.push(cwd.join(".env"));
        }
        for path in dotenv_paths {
            if !path.is_file() {
                continue;
            }
            let iter = dotenvy::from_path_iter(&path)
                .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
            for item in iter {
                let (key, value) = item.map_err(|e| format!("{}: {e}", path.display()))?;
                vars.entry(key).or_insert(value);
            }
        }
        Ok(Env { vars })
    }

    pub fn from_map(vars: HashMap<String, String>) -> Env {
        Env { vars }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

/// Replaces `${VAR}` / `${VAR:-default}` / `${VAR:+word}` in every scalar of the tree; `$$` is a
/// literal `$`.
pub fn interpolate_tree(node: &mut Node, env: &Env, locator: &Locator, diags: &mut Diagnostics) {
    match node {
        Node::Scalar(scalar) => interpolate_scalar(scalar, env, locator, diags),
        Node::Mapping(map) => {
            for (_, value) in map.iter_mut() {
                interpolate_tree(value, env, locator, diags);
            }
        }
        Node::Sequence(seq) => {
            for value in seq.iter_mut() {
                interpolate_tree(value, env, locator, diags);
            }
        }
    }
}

fn interpolate_scalar(
    scalar: &mut MarkedScalarNode,
    env: &Env,
    locator: &Locator,
    diags: &mut Diagnostics,
) {
    if !scalar.as_str().contains('$') {
        return;
    }
    match interpolate_str(scalar.as_str(), env) {
        Ok(value) => {
            let span = *scalar.span();
            *scalar = MarkedScalarNode::new(span, value);
        }
        Err(message) => diags.push(Diagnostic::new(locator.span(scalar.span()), message)),
    }
}

/// The string with variables substituted, or a message naming the variable that is missing.
pub fn interpolate_str(input: &str, env: &Env) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body_and_tail) = after.strip_prefix('{') {
            let end = body_and_tail
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in `{input}`"))?;
            let body = &body_and_tail[..end];
            // The operator is whichever of `:-` / `:+` comes first (the word may hold either).
            let operator = [":-", ":+"]
                .into_iter()
                .filter_map(|op| body.find(op).map(|at| (at, op)))
                .min();
            let (name, operator, word) = match operator {
                Some((at, op)) => (&body[..at], Some(op), &body[at + 2..]),
                None => (body, None, ""),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{body}}}` is not a valid variable reference (use ${{NAME}}, ${{NAME:-default}} or ${{NAME:+word}})"
                ));
            }
            let value = env.get(name);
            let set = value.is_some_and(|v| !v.is_empty());
            // Like the shell: `:-` also replaces a variable that is set but empty, and `:+`
            // gives its word only for a variable that is set and not empty (never the value,
            // so `when: ${API_KEY:+true}` keeps a secret out of the configuration).
            match (value, operator) {
                (Some(value), None) => out.push_str(value),
                (Some(value), Some(":-")) if set => out.push_str(value),
                (_, Some(":-")) => out.push_str(word),
                (_, Some(_)) if set => out.push_str(word),
                (_, Some(_)) => {}
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (set it, add it to .env, or write ${{{name}:-default}})"
                    ));
                }
            }
            rest = &body_and_tail[end + 1..];
        } else {
            // A lone `$` (e.g. in a price or a regex) is kept as is.
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env::from_map(HashMap::from([
            ("A".to_string(), "1".to_string()),
            ("EMPTY".to_string(), String::new()),
        ]))
    }

    #[test]
    fn substitutes_defaults_and_escapes() {
        let env = env();
        assert_eq!(interpolate_str("x${A}y", &env).unwrap(), "x1y");
        assert_eq!(interpolate_str("${B:-two}", &env).unwrap(), "two");
        assert_eq!(interpolate_str("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(interpolate_str("${EMPTY}", &env).unwrap(), "");
        assert_eq!(
            interpolate_str("$$HOME costs $5", &env).unwrap(),
            "$HOME costs $5"
        );
    }

    #[test]
    fn plus_gives_the_word_only_for_a_set_variable() {
        let env = env();
        assert_eq!(interpolate_str("${A:+yes}", &env).unwrap(), "yes");
        assert_eq!(interpolate_str("${EMPTY:+yes}", &env).unwrap(), "");
        assert_eq!(interpolate_str("${NOPE:+yes}", &env).unwrap(), "");
        // The first operator wins; the word may contain the other one.
        assert_eq!(interpolate_str("${A:+x:-y}", &env).unwrap(), "x:-y");
        assert_eq!(interpolate_str("${NOPE:-x:+y}", &env).unwrap(), "x:+y");
        assert!(
            interpolate_str("${:+x}", &env)
                .unwrap_err()
                .contains("not a valid variable")
        );
    }

    #[test]
    fn missing_and_malformed_are_errors() {
        let env = env();
        assert!(
            interpolate_str("${NOPE}", &env)
                .unwrap_err()
                .contains("`NOPE` is not set")
        );
        assert!(
            interpolate_str("${A", &env)
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(
            interpolate_str("${A B}", &env)
                .unwrap_err()
                .contains("not a valid variable")
        );
    }
}
