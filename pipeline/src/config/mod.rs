//! Loading a pipeline file: YAML → interpolation → `--set` overrides → per-stage configs →
//! topology checks. Every problem found is collected, so `pipe validate` reports all of them
//! at once, each with file:line:column.

pub mod diagnostic;
pub mod interpolate;
pub mod overrides;
pub mod yaml_json;

pub use diagnostic::{Diagnostic, Diagnostics, Location, Locator, did_you_mean};
pub use interpolate::Env;
pub use yaml_json::YamlJson;

use crate::policy::{BudgetSpec, LimitSpec, ProviderSpec};
use crate::record::KindSet;
use crate::registry::{ErasedConfig, KindInfo, Registry};
use crate::stage::{Produces, Role};
use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{LoaderOptions, Node, Span, Spanned};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const DEFAULT_CONCURRENCY: usize = 4;
pub const DEFAULT_BUFFER: usize = 256;

const TOP_LEVEL_KEYS: &[&str] = &["description", "resources", "budget", "stages"];
const RESOURCE_SECTIONS: &[&str] = &["pools", "limits", "providers"];

/// The YAML shape of one stage (its `config` is checked by the stage kind itself).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageHeader {
    /// Unique name of the stage; other stages list it in `inputs`.
    #[schemars(with = "String")]
    pub id: Spanned<String>,
    /// Stage kind (see `pipe list-stages`).
    #[schemars(with = "String")]
    pub kind: Spanned<String>,
    /// Stages whose output this stage consumes (fan-in when several).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub inputs: Vec<Spanned<String>>,
    /// Maximum calls in flight at once (default 4; 64 for stages that call a provider).
    #[schemars(with = "Option<u32>")]
    pub concurrency: Option<Spanned<usize>>,
    /// Records this stage's input edge may hold (default 256); a full edge slows the producer down.
    #[schemars(with = "Option<u32>")]
    pub buffer: Option<Spanned<usize>>,
    /// Emit outputs in input order even when calls finish out of order.
    #[serde(default)]
    pub ordered: bool,
    /// A named concurrency pool from `resources.pools`, shared with other stages.
    #[schemars(with = "Option<String>")]
    pub pool: Option<Spanned<String>>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Kind-specific settings (see `pipe list-stages`).
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub config: Option<serde::de::IgnoredAny>,
}

/// A named concurrency pool: stages naming it share `max_concurrency` permits.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    pub max_concurrency: usize,
}

/// `resources:` — named things shared by several stages.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    /// Named concurrency pools.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolSpec>,
    /// Named rate limits (one per provider account), shared by every provider naming them.
    #[serde(default)]
    pub limits: BTreeMap<String, LimitSpec>,
    /// Model endpoints stages call by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSpec>,
}

/// One stage, checked and ready to build.
pub struct PlannedStage {
    pub id: String,
    pub kind: String,
    pub role: Role,
    /// Indices (into `Plan::stages`) of the stages feeding this one.
    pub inputs: Vec<usize>,
    /// Indices of the stages consuming this one's output.
    pub consumers: Vec<usize>,
    pub concurrency: usize,
    pub buffer: usize,
    pub ordered: bool,
    pub pool: Option<String>,
    pub input_kinds: KindSet,
    pub output_kinds: KindSet,
    pub config: Box<dyn ErasedConfig>,
}

/// A validated pipeline: stages in topological order (producers before consumers).
pub struct Plan {
    pub file: PathBuf,
    pub base_dir: PathBuf,
    pub stages: Vec<PlannedStage>,
    pub pools: BTreeMap<String, PoolSpec>,
    pub limits: BTreeMap<String, LimitSpec>,
    pub providers: BTreeMap<String, ProviderSpec>,
    pub budget: BudgetSpec,
}

impl Plan {
    /// For every stage, the ids of the stages upstream of it, nearest first (breadth-first).
    pub fn upstream_ids(&self) -> Vec<Vec<String>> {
        self.stages
            .iter()
            .map(|stage| {
                let mut seen = std::collections::BTreeSet::new();
                let mut order = Vec::new();
                let mut queue: std::collections::VecDeque<usize> =
                    stage.inputs.iter().copied().collect();
                while let Some(i) = queue.pop_front() {
                    if seen.insert(i) {
                        order.push(self.stages[i].id.clone());
                        queue.extend(self.stages[i].inputs.iter().copied());
                    }
                }
                order
            })
            .collect()
    }
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `--set KEY=VALUE` arguments, in order.
    pub overrides: Vec<String>,
    /// Variables for interpolation; `None` = process environment + `.env`.
    pub env: Option<Env>,
}

/// Reads, checks and plans a pipeline file.
pub fn load(path: &Path, registry: &Registry, options: &LoadOptions) -> Result<Plan, Diagnostics> {
    let display: Arc<str> = Arc::from(path.display().to_string());
    let locator = Locator {
        file: display.clone(),
        overrides: options.overrides.clone(),
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic::new(
            Location::WholeFile(display.clone()),
            format!("cannot read pipeline file: {e}"),
        )])
    })?;
    let base_dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let env = match &options.env {
        Some(env) => env.clone(),
        None => Env::load(&base_dir).map_err(|e| {
            Diagnostics(vec![Diagnostic::new(
                Location::WholeFile(display.clone()),
                e,
            )])
        })?,
    };
    let mut plan = load_str(&text, &locator, registry, &env)?;
    plan.file = path.to_path_buf();
    plan.base_dir = base_dir;
    Ok(plan)
}

/// The same as [`load`] on text already read (`locator.file` names it in messages).
pub fn load_str(
    text: &str,
    locator: &Locator,
    registry: &Registry,
    env: &Env,
) -> Result<Plan, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut root = parse_yaml(text, locator)?;
    // Quoting is what tells "8" from 8 in free-form JSON fields (`YamlJson`): note it before
    // interpolation rewrites scalars, and again for the values `--set` brings.
    let mut quoted = std::collections::HashSet::new();
    yaml_json::note_quoted(&mut root, &mut quoted);
    interpolate::interpolate_tree(&mut root, env, locator, &mut diags);
    overrides::apply_overrides(&mut root, &locator.overrides, &mut diags);
    yaml_json::note_quoted(&mut root, &mut quoted);
    yaml_json::with_quoted(quoted, || load_tree(root, locator, registry, diags))
}

fn load_tree(
    root: Node,
    locator: &Locator,
    registry: &Registry,
    mut diags: Diagnostics,
) -> Result<Plan, Diagnostics> {
    let Some(top) = root.as_mapping() else {
        diags.push(Diagnostic::new(
            locator.span(root.span()),
            "a pipeline file is a mapping with `stages:` (and optionally `resources:`)",
        ));
        diags.sort();
        return Err(diags);
    };
    for key in top.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            diags.push(
                Diagnostic::new(
                    locator.span(key.span()),
                    format!("unknown top-level key `{}`", key.as_str()),
                )
                .with_help(
                    did_you_mean(key.as_str(), TOP_LEVEL_KEYS.iter().copied())
                        .or_else(|| Some("expected `stages`, `resources` or `description`".into())),
                ),
            );
        }
    }
    let resources = parse_resources(top, locator, registry, &mut diags);
    let budget = parse_budget(top, locator, &mut diags);
    let parsed = parse_stages(top, locator, registry, &resources, &mut diags);
    let stages = plan_topology(parsed, locator, &mut diags);
    diags.into_result(Plan {
        file: PathBuf::from(locator.file.as_ref()),
        base_dir: PathBuf::from("."),
        stages,
        pools: resources.pools,
        limits: resources.limits,
        providers: resources.providers,
        budget,
    })
}

fn parse_yaml(text: &str, locator: &Locator) -> Result<Node, Diagnostics> {
    use marked_yaml::LoadError;
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true);
    marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| {
        let (marker, message) = match &e {
            LoadError::TopLevelMustBeMapping(m) => (
                Some(*m),
                "a pipeline file is a mapping with `stages:` (and optionally `resources:`)"
                    .to_string(),
            ),
            LoadError::TopLevelMustBeSequence(m) => (Some(*m), e.to_string()),
            LoadError::UnexpectedAnchor(m) => (
                Some(*m),
                "YAML anchors and aliases are not supported".to_string(),
            ),
            LoadError::MappingKeyMustBeScalar(m) => {
                (Some(*m), "mapping keys must be plain strings".to_string())
            }
            LoadError::UnexpectedTag(m) => (Some(*m), "YAML tags are not supported".to_string()),
            LoadError::ScanError(m, err) => (Some(*m), format!("invalid YAML: {}", err.info())),
            LoadError::DuplicateKey(inner) => (
                inner.key.span().start().copied(),
                format!("duplicate key `{}`", inner.key.as_str()),
            ),
        };
        // Empty files have no marker: point at the file itself.
        let location = match marker {
            Some(m) => locator.marker(Some(&m)),
            None => Location::WholeFile(locator.file.clone()),
        };
        Diagnostics(vec![Diagnostic::new(location, message)])
    })
}

fn parse_resources(
    top: &MarkedMappingNode,
    locator: &Locator,
    registry: &Registry,
    diags: &mut Diagnostics,
) -> ResourcesSpec {
    let mut spec = ResourcesSpec::default();
    let Some(node) = top.get_node("resources") else {
        return spec;
    };
    let Some(map) = node.as_mapping() else {
        diags.push(Diagnostic::new(
            locator.span(node.span()),
            "`resources` must be a mapping (`pools:`, `limits:`, `providers:`)",
        ));
        return spec;
    };
    for (key, section) in map.iter() {
        match key.as_str() {
            "pools" => {
                for (name, pool, at) in parse_named::<PoolSpec>(section, "pool", locator, diags) {
                    match pool {
                        Some(pool) if pool.max_concurrency == 0 => {
                            let at = field_or(at, "max_concurrency");
                            diags.push(Diagnostic::new(
                                locator.span(at.span()),
                                format!("pool `{name}`: `max_concurrency` must be at least 1"),
                            ));
                        }
                        Some(pool) => {
                            spec.pools.insert(name, pool);
                        }
                        // Declared, even if malformed: stages naming it are not also flagged.
                        None => {
                            spec.pools.insert(name, PoolSpec { max_concurrency: 1 });
                        }
                    }
                }
            }
            "limits" => {
                for (name, limit, at) in parse_named::<LimitSpec>(section, "limit", locator, diags)
                {
                    if let Some(limit) = &limit {
                        check_limit(&name, limit, at, locator, diags);
                    }
                    spec.limits.insert(name, limit.unwrap_or_default());
                }
            }
            "providers" => {
                for (name, provider, _) in
                    parse_named::<ProviderSpec>(section, "provider", locator, diags)
                {
                    // A malformed one is still declared (stages naming it are not also
                    // flagged); the run never starts, so the placeholder is never built.
                    spec.providers
                        .insert(name, provider.unwrap_or_else(placeholder_provider));
                }
            }
            other => {
                diags.push(
                    Diagnostic::new(
                        locator.span(key.span()),
                        format!("unknown resource section `{other}`"),
                    )
                    .with_help(
                        did_you_mean(other, RESOURCE_SECTIONS.iter().copied())
                            .or_else(|| Some("expected `pools`, `limits` or `providers`".into())),
                    ),
                );
            }
        }
    }
    // Providers are checked once every limit is known, whatever the order of the sections.
    if let Some(section) = map.get_node("providers").and_then(Node::as_mapping) {
        for (name, node) in section.iter() {
            let Some(provider) = spec.providers.get(name.as_str()) else {
                continue;
            };
            if provider.kind.is_empty() {
                continue; // placeholder: its own error is already reported
            }
            check_provider(
                name.as_str(),
                provider,
                node,
                &spec,
                registry,
                locator,
                diags,
            );
        }
    }
    spec
}

/// Parses each entry of a `name: { ... }` section on its own, so one bad entry neither hides
/// the others nor their own errors. `None` = reported malformed.
fn parse_named<'a, T: serde::de::DeserializeOwned>(
    section: &'a Node,
    what: &str,
    locator: &Locator,
    diags: &mut Diagnostics,
) -> Vec<(String, Option<T>, &'a Node)> {
    let Some(entries) = section.as_mapping() else {
        diags.push(Diagnostic::new(
            locator.span(section.span()),
            format!("resources of this kind map names to settings (`my_{what}: {{ ... }}`)"),
        ));
        return Vec::new();
    };
    entries
        .iter()
        .map(|(name, node)| {
            let parsed = match marked_yaml::from_node::<T>(node) {
                Ok(v) => Some(v),
                Err(e) => {
                    let mut d = diagnostic::from_node_error(locator, e);
                    d.message = format!("{what} `{}`: {}", name.as_str(), d.message);
                    diags.push(d);
                    None
                }
            };
            (name.as_str().to_string(), parsed, node)
        })
        .collect()
}

fn field_or<'a>(node: &'a Node, field: &str) -> &'a Node {
    node.as_mapping()
        .and_then(|m| m.get_node(field))
        .unwrap_or(node)
}

fn check_limit(
    name: &str,
    limit: &LimitSpec,
    at: &Node,
    locator: &Locator,
    diags: &mut Diagnostics,
) {
    let zero = [
        ("rpm", limit.rpm),
        ("tpm", limit.tpm),
        ("rpd", limit.rpd),
        ("tpd", limit.tpd),
        ("max_concurrency", limit.max_concurrency.map(|c| c as u64)),
        ("min_concurrency", limit.min_concurrency.map(|c| c as u64)),
        (
            "initial_concurrency",
            limit.initial_concurrency.map(|c| c as u64),
        ),
    ];
    for (field, value) in zero {
        if value == Some(0) {
            diags.push(Diagnostic::new(
                locator.span(field_or(at, field).span()),
                format!("limit `{name}`: `{field}` must be at least 1"),
            ));
        }
    }
    check_adaptive_bounds(name, limit, at, locator, diags);
    if limit
        .burst_seconds
        .is_some_and(|b| !positive(b) || b > 60.0)
    {
        diags.push(Diagnostic::new(
            locator.span(field_or(at, "burst_seconds").span()),
            format!("limit `{name}`: `burst_seconds` must be more than 0 and at most 60"),
        ));
    }
}

/// `min_concurrency <= initial_concurrency <= max_concurrency`, on adaptive limits only.
fn check_adaptive_bounds(
    name: &str,
    limit: &LimitSpec,
    at: &Node,
    locator: &Locator,
    diags: &mut Diagnostics,
) {
    let adaptive_only = [
        ("min_concurrency", limit.min_concurrency),
        ("initial_concurrency", limit.initial_concurrency),
    ];
    if !limit.is_adaptive() {
        for (field, value) in adaptive_only {
            if value.is_some() {
                diags.push(
                    Diagnostic::new(
                        locator.span(field_or(at, field).span()),
                        format!("limit `{name}`: `{field}` applies to adaptive limits only"),
                    )
                    .with_help(Some(
                        "a limit with `rpm` or `tpm` is fixed unless it says `adaptive: true`"
                            .into(),
                    )),
                );
            }
        }
        return;
    }
    let min = limit.min_concurrency;
    let ordered = [
        (
            "min_concurrency",
            min,
            "initial_concurrency",
            limit.initial_concurrency,
        ),
        (
            "min_concurrency",
            min,
            "max_concurrency",
            limit.max_concurrency,
        ),
        (
            "initial_concurrency",
            limit.initial_concurrency,
            "max_concurrency",
            limit.max_concurrency,
        ),
    ];
    for (low_field, low, high_field, high) in ordered {
        if let (Some(low), Some(high)) = (low, high)
            && low > high
        {
            diags.push(Diagnostic::new(
                locator.span(field_or(at, low_field).span()),
                format!("limit `{name}`: `{low_field}` ({low}) is above `{high_field}` ({high})"),
            ));
        }
    }
}

fn positive(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

fn placeholder_provider() -> ProviderSpec {
    ProviderSpec {
        kind: String::new(),
        model: String::new(),
        base_url: None,
        api_key: None,
        limit: None,
        timeout_s: None,
        max_attempts: None,
        backoff_s: None,
        max_backoff_s: None,
        pricing: None,
        breaker: None,
        context_window: None,
        unreachable_after_s: None,
    }
}

fn check_provider(
    name: &str,
    provider: &ProviderSpec,
    node: &Node,
    spec: &ResourcesSpec,
    registry: &Registry,
    locator: &Locator,
    diags: &mut Diagnostics,
) {
    if !registry.provider_kinds().any(|(k, _)| k == provider.kind) {
        diags.push(
            Diagnostic::new(
                locator.span(field_or(node, "kind").span()),
                format!(
                    "provider `{name}`: unknown provider kind `{}`",
                    provider.kind
                ),
            )
            .with_help(
                did_you_mean(&provider.kind, registry.provider_kinds().map(|(k, _)| k)).or_else(
                    || {
                        let kinds: Vec<&str> = registry.provider_kinds().map(|(k, _)| k).collect();
                        Some(format!("expected one of: {}", kinds.join(", ")))
                    },
                ),
            ),
        );
    }
    if let Some(limit) = &provider.limit
        && !spec.limits.contains_key(limit)
    {
        diags.push(
            Diagnostic::new(
                locator.span(field_or(node, "limit").span()),
                format!("provider `{name}`: unknown limit `{limit}`"),
            )
            .with_help(
                did_you_mean(limit, spec.limits.keys().map(String::as_str))
                    .or_else(|| Some("declare it under `resources.limits`".into())),
            ),
        );
    }
    for (field, value) in [
        ("timeout_s", provider.timeout_s),
        ("backoff_s", provider.backoff_s),
        ("max_backoff_s", provider.max_backoff_s),
        ("unreachable_after_s", provider.unreachable_after_s),
    ] {
        if value.is_some_and(|v| !positive(v)) {
            diags.push(Diagnostic::new(
                locator.span(field_or(node, field).span()),
                format!("provider `{name}`: `{field}` must be more than 0"),
            ));
        }
    }
    if provider.context_window == Some(0) {
        diags.push(Diagnostic::new(
            locator.span(field_or(node, "context_window").span()),
            format!("provider `{name}`: `context_window` must be at least 1"),
        ));
    }
    if provider.max_attempts == Some(0) {
        diags.push(Diagnostic::new(
            locator.span(field_or(node, "max_attempts").span()),
            format!("provider `{name}`: `max_attempts` must be at least 1"),
        ));
    }
    if let Some(url) = &provider.base_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        diags.push(Diagnostic::new(
            locator.span(field_or(node, "base_url").span()),
            format!("provider `{name}`: `base_url` must start with http:// or https://"),
        ));
    }
}

fn parse_budget(top: &MarkedMappingNode, locator: &Locator, diags: &mut Diagnostics) -> BudgetSpec {
    let Some(node) = top.get_node("budget") else {
        return BudgetSpec::default();
    };
    match marked_yaml::from_node::<BudgetSpec>(node) {
        Ok(budget) => {
            if budget.max_usd.is_some_and(|v| !positive(v)) {
                diags.push(Diagnostic::new(
                    locator.span(field_or(node, "max_usd").span()),
                    "budget: `max_usd` must be more than 0",
                ));
            }
            if budget.max_tokens == Some(0) {
                diags.push(Diagnostic::new(
                    locator.span(field_or(node, "max_tokens").span()),
                    "budget: `max_tokens` must be at least 1",
                ));
            }
            budget
        }
        Err(e) => {
            let mut d = diagnostic::from_node_error(locator, e);
            d.message = format!("budget: {}", d.message);
            diags.push(d);
            BudgetSpec::default()
        }
    }
}

/// A stage as written, before the topology is known. `planned` is `None` when the stage has
/// an error of its own (already reported): it stays in the graph as a placeholder, so its
/// neighbours are not blamed for its absence.
struct ParsedStage {
    id: String,
    id_span: Span,
    kind: String,
    inputs: Vec<(String, Span)>,
    info: Option<KindInfo>,
    planned: Option<(StageHeader, Box<dyn ErasedConfig>)>,
}

fn raw_scalar(entry: &Node, key: &str) -> Option<(String, Span)> {
    let s = entry.as_mapping()?.get_scalar(key)?;
    Some((s.as_str().to_string(), *s.span()))
}

fn raw_inputs(entry: &Node) -> Vec<(String, Span)> {
    entry
        .as_mapping()
        .and_then(|m| m.get_sequence("inputs"))
        .map(|seq| {
            seq.iter()
                .filter_map(|n| n.as_scalar().map(|s| (s.as_str().to_string(), *s.span())))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_stages(
    top: &MarkedMappingNode,
    locator: &Locator,
    registry: &Registry,
    resources: &ResourcesSpec,
    diags: &mut Diagnostics,
) -> Vec<ParsedStage> {
    let Some(stages_node) = top.get_node("stages") else {
        diags.push(Diagnostic::new(
            Location::WholeFile(locator.file.clone()),
            "missing `stages:` (a list of stages, each with `id` and `kind`)",
        ));
        return Vec::new();
    };
    let Some(list) = stages_node.as_sequence() else {
        diags.push(Diagnostic::new(
            locator.span(stages_node.span()),
            "`stages` must be a list of stages, each with `id` and `kind`",
        ));
        return Vec::new();
    };
    if list.is_empty() {
        diags.push(Diagnostic::new(
            locator.span(stages_node.span()),
            "`stages` is empty",
        ));
    }
    let mut parsed = Vec::new();
    for entry in list.iter() {
        // id, kind and inputs are read raw first, so the graph can be checked even when the
        // rest of the stage is broken.
        let Some((id, id_span)) = raw_scalar(entry, "id") else {
            if let Err(e) = marked_yaml::from_node::<StageHeader>(entry) {
                diags.push(diagnostic::from_node_error(locator, e));
            } else {
                diags.push(Diagnostic::new(
                    locator.span(entry.span()),
                    "a stage needs an `id`",
                ));
            }
            continue;
        };
        let (kind, kind_span) =
            raw_scalar(entry, "kind").unwrap_or_else(|| (String::new(), *entry.span()));
        let mut stage = ParsedStage {
            id: id.clone(),
            id_span,
            kind: kind.clone(),

            inputs: raw_inputs(entry),
            info: registry.info(&kind).cloned(),
            planned: None,
        };
        let header = match marked_yaml::from_node::<StageHeader>(entry) {
            Ok(h) => Some(h),
            Err(e) => {
                let mut d = diagnostic::from_node_error(locator, e);
                d.message = format!("stage `{id}`: {}", d.message);
                diags.push(d);
                None
            }
        };
        let mut ok = header.is_some();
        if let Some(h) = &header {
            for (field, value) in [("concurrency", &h.concurrency), ("buffer", &h.buffer)] {
                if let Some(v) = value
                    && **v == 0
                {
                    diags.push(Diagnostic::new(
                        locator.span(v.span()),
                        format!("stage `{id}`: `{field}` must be at least 1"),
                    ));
                    ok = false;
                }
            }
            if let Some(pool) = &h.pool
                && !resources.pools.contains_key(pool.as_str())
            {
                diags.push(
                    Diagnostic::new(
                        locator.span(pool.span()),
                        format!("stage `{id}`: unknown pool `{}`", pool.as_str()),
                    )
                    .with_help(
                        did_you_mean(pool.as_str(), resources.pools.keys().map(String::as_str))
                            .or_else(|| Some("declare it under `resources.pools`".into())),
                    ),
                );
                ok = false;
            }
        }
        let Some(kind_def) = registry.get(&kind) else {
            if !kind.is_empty() {
                diags.push(
                    Diagnostic::new(
                        locator.span(&kind_span),
                        format!("stage `{id}`: unknown stage kind `{kind}`"),
                    )
                    .with_help(
                        did_you_mean(&kind, registry.kinds().map(|k| k.kind))
                            .or_else(|| Some("see `pipe list-stages`".into())),
                    ),
                );
            }
            parsed.push(stage);
            continue;
        };
        let empty;
        let config_node = match entry.as_mapping().and_then(|m| m.get_node("config")) {
            Some(node) => node,
            None => {
                empty = Node::Mapping(MarkedMappingNode::new_empty(*entry.span()));
                &empty
            }
        };
        let config = match kind_def.parse(config_node) {
            Ok(c) => Some(c),
            Err(e) => {
                let mut d = diagnostic::from_node_error(locator, e);
                d.message = format!("stage `{id}`: config: {}", d.message);
                diags.push(d);
                None
            }
        };
        if let Some(config) = &config {
            for (field, name) in config.providers() {
                if resources.providers.contains_key(&name) {
                    continue;
                }
                let at = find_field(config_node, &field).unwrap_or(config_node);
                diags.push(
                    Diagnostic::new(
                        locator.span(at.span()),
                        format!("stage `{id}`: unknown provider `{name}`"),
                    )
                    .with_help(
                        did_you_mean(&name, resources.providers.keys().map(String::as_str))
                            .or_else(|| Some("declare it under `resources.providers`".into())),
                    ),
                );
                ok = false;
            }
            for issue in config.validate() {
                let at = find_field(config_node, &issue.field).unwrap_or(config_node);
                diags.push(Diagnostic::new(
                    locator.span(at.span()),
                    format!("stage `{id}`: `{}` {}", issue.field, issue.message),
                ));
                ok = false;
            }
        }
        if let (true, Some(header), Some(config)) = (ok, header, config) {
            stage.planned = Some((header, config));
        }
        parsed.push(stage);
    }
    parsed
}

fn find_field<'a>(node: &'a Node, dotted: &str) -> Option<&'a Node> {
    dotted
        .split('.')
        .try_fold(node, |n, key| n.as_mapping()?.get_node(key))
}

fn plan_topology(
    parsed: Vec<ParsedStage>,
    locator: &Locator,
    diags: &mut Diagnostics,
) -> Vec<PlannedStage> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut duplicate = vec![false; parsed.len()];
    for (i, stage) in parsed.iter().enumerate() {
        if let Some(&first) = index.get(stage.id.as_str()) {
            let first_at = locator.span(&parsed[first].id_span);
            diags.push(Diagnostic::new(
                locator.span(&stage.id_span),
                format!(
                    "duplicate stage id `{}` (first defined at {first_at})",
                    stage.id
                ),
            ));
            duplicate[i] = true;
        } else {
            index.insert(stage.id.as_str(), i);
        }
    }
    let role = |i: usize| parsed[i].info.as_ref().map(|info| info.role);

    // Resolve inputs; check roles (only where the stage's own definition is sound).
    let mut inputs: Vec<Vec<usize>> = vec![Vec::new(); parsed.len()];
    let mut broken: Vec<bool> = parsed.iter().map(|s| s.planned.is_none()).collect();
    for (i, stage) in parsed.iter().enumerate() {
        let id = &stage.id;
        match role(i) {
            Some(Role::Source) if !stage.inputs.is_empty() => {
                diags.push(Diagnostic::new(
                    locator.span(&stage.inputs[0].1),
                    format!(
                        "stage `{id}` is a source (kind `{}`) and takes no inputs",
                        stage.kind
                    ),
                ));
                broken[i] = true;
                continue;
            }
            Some(r) if r != Role::Source && stage.inputs.is_empty() && stage.planned.is_some() => {
                diags.push(Diagnostic::new(
                    locator.span(&stage.id_span),
                    format!(
                        "stage `{id}` (kind `{}`) is a {} and needs `inputs:` naming the stages it reads from",
                        stage.kind,
                        r.name()
                    ),
                ));
                broken[i] = true;
                continue;
            }
            _ => {}
        }
        for (input, span) in &stage.inputs {
            match index.get(input.as_str()) {
                None => {
                    // Suggest only stages that could feed this one: not itself, not sinks.
                    let candidates = parsed
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i && role(j) != Some(Role::Sink))
                        .map(|(_, s)| s.id.as_str());
                    diags.push(
                        Diagnostic::new(
                            locator.span(span),
                            format!("stage `{id}` reads from `{input}`, which is not defined"),
                        )
                        .with_help(did_you_mean(input, candidates)),
                    );
                    broken[i] = true;
                }
                Some(&j) if j == i => {
                    diags.push(Diagnostic::new(
                        locator.span(span),
                        format!("stage `{id}` lists itself as an input"),
                    ));
                    broken[i] = true;
                }
                Some(&j) if role(j) == Some(Role::Sink) => {
                    diags.push(Diagnostic::new(
                        locator.span(span),
                        format!(
                            "stage `{id}` reads from `{input}`, a sink (kind `{}`), which emits no records",
                            parsed[j].kind
                        ),
                    ));
                    broken[i] = true;
                }
                Some(&j) => {
                    if inputs[i].contains(&j) {
                        diags.push(Diagnostic::new(
                            locator.span(span),
                            format!("stage `{id}` lists input `{input}` twice"),
                        ));
                    } else {
                        inputs[i].push(j);
                    }
                }
            }
        }
    }

    // Topological order (Kahn); what is left over sits on a cycle.
    let n = parsed.len();
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ins) in inputs.iter().enumerate() {
        for &j in ins {
            consumers[j].push(i);
        }
    }
    let mut pending: Vec<usize> = inputs.iter().map(Vec::len).collect();
    let mut ready: Vec<usize> = (0..n).filter(|&i| pending[i] == 0).rev().collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for &c in consumers[i].iter().rev() {
            pending[c] -= 1;
            if pending[c] == 0 {
                ready.push(c);
            }
        }
    }
    if order.len() < n {
        report_cycles(&parsed, &inputs, &order, locator, diags);
    }

    // Payload kinds along every edge; a broken stage's output is unknown and not checked.
    let mut output_kinds = vec![KindSet::EMPTY; n];
    let mut input_kinds = vec![KindSet::EMPTY; n];
    for &i in &order {
        let stage = &parsed[i];
        let incoming = inputs[i]
            .iter()
            .fold(KindSet::EMPTY, |acc, &j| acc.union(output_kinds[j]));
        input_kinds[i] = incoming;
        let Some(info) = &stage.info else { continue };
        output_kinds[i] = match info.produces {
            Produces::Nothing => KindSet::EMPTY,
            Produces::Kinds(k) => k,
            Produces::SameAsInput => incoming,
        };
        for &j in &inputs[i] {
            let produced = output_kinds[j];
            if produced.is_empty() || produced.is_subset_of(info.accepts) {
                continue;
            }
            let span = stage
                .inputs
                .iter()
                .find(|(name, _)| *name == parsed[j].id)
                .map(|(_, span)| span)
                .unwrap_or(&stage.id_span);
            diags.push(Diagnostic::new(
                locator.span(span),
                format!(
                    "type mismatch: stage `{}` (kind `{}`) accepts {}, but its input `{}` (kind `{}`) produces {}",
                    stage.id, stage.kind, info.accepts, parsed[j].id, parsed[j].kind, produced
                ),
            ));
        }
    }

    // Output nobody consumes would be thrown away: refuse rather than drop records silently.
    for (i, stage) in parsed.iter().enumerate() {
        let sound = !broken[i] && !duplicate[i];
        if sound && role(i) != Some(Role::Sink) && consumers[i].is_empty() {
            diags.push(
                Diagnostic::new(
                    locator.span(&stage.id_span),
                    format!(
                        "the output of stage `{}` is not consumed by any stage, so its records would be lost",
                        stage.id
                    ),
                )
                .with_help(Some("add a sink (e.g. `kind: jsonl`) with this stage in its `inputs`".into())),
            );
        }
    }

    if !diags.is_empty() {
        return Vec::new();
    }
    // Renumber into topological order. No diagnostics means every stage is sound.
    let mut new_index = vec![0; n];
    for (pos, &i) in order.iter().enumerate() {
        new_index[i] = pos;
    }
    let mut slots: Vec<Option<ParsedStage>> = parsed.into_iter().map(Some).collect();
    order
        .iter()
        .filter_map(|&i| {
            let stage = slots[i].take()?;
            let (h, config) = stage.planned?;
            let info = stage.info?;
            Some(PlannedStage {
                id: stage.id,
                kind: stage.kind,
                role: info.role,
                inputs: inputs[i].iter().map(|&j| new_index[j]).collect(),
                consumers: consumers[i].iter().map(|&j| new_index[j]).collect(),
                concurrency: h
                    .concurrency
                    .map(|c| *c)
                    .unwrap_or(info.default_concurrency),
                buffer: h.buffer.map(|b| *b).unwrap_or(DEFAULT_BUFFER),
                ordered: h.ordered,
                pool: h.pool.map(|p| p.as_str().to_string()),
                input_kinds: input_kinds[i],
                output_kinds: output_kinds[i],
                config,
            })
        })
        .collect()
}

/// One diagnostic per cycle, at the first stage of the cycle in file order.
fn report_cycles(
    parsed: &[ParsedStage],
    inputs: &[Vec<usize>],
    ordered: &[usize],
    locator: &Locator,
    diags: &mut Diagnostics,
) {
    let n = parsed.len();
    let mut done = vec![false; n];
    for &i in ordered {
        done[i] = true;
    }
    for start in 0..n {
        if done[start] {
            continue;
        }
        // Walk back along inputs that are themselves unresolved until a stage repeats.
        let mut path = vec![start];
        let mut current = start;
        let cycle = loop {
            let Some(&next) = inputs[current].iter().find(|&&j| !done[j]) else {
                break None;
            };
            if let Some(pos) = path.iter().position(|&p| p == next) {
                break Some(path[pos..].to_vec());
            }
            path.push(next);
            current = next;
        };
        let Some(mut cycle) = cycle else {
            done[start] = true;
            continue;
        };
        // Read it in data-flow direction, starting at the earliest stage in the file.
        cycle.reverse();
        let first = cycle
            .iter()
            .enumerate()
            .min_by_key(|&(_, &s)| s)
            .map(|(p, _)| p)
            .unwrap_or(0);
        cycle.rotate_left(first);
        let names: Vec<&str> = cycle.iter().map(|&s| parsed[s].id.as_str()).collect();
        let head = cycle[0];
        diags.push(Diagnostic::new(
            locator.span(&parsed[head].id_span),
            format!("stages form a cycle: {} → {}", names.join(" → "), names[0]),
        ));
        for &s in &path {
            done[s] = true;
        }
    }
}
