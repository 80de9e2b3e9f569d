//! Build contexts for a pipeline that is not run: tools such as `pipe search` and
//! `pipe graph export` ask the stage configs of a pipeline to open what its sinks wrote
//! (`StageConfig::open_vector_index`, `open_graph_index`, `open_embedder`) with the same
//! paths, providers, limits and response cache a run would use.

use super::RunError;
use crate::config::Plan;
use crate::policy::{Resources, ResourcesOptions};
use crate::stage::{BuildContext, Facts};
use std::path::Path;
use std::sync::Arc;

/// One [`BuildContext`] per stage of `plan` (same order), sharing one set of [`Resources`].
/// Nothing is built or opened; `state_dir` is where the run kept its state (`.pipe/`).
pub fn contexts_for(plan: &Plan, state_dir: &Path) -> Result<Vec<BuildContext>, RunError> {
    let resources = Arc::new(
        Resources::new(
            &plan.limits,
            &plan.providers,
            ResourcesOptions {
                cache_path: (!plan.providers.is_empty()).then(|| state_dir.join("cache.sqlite")),
                no_cache: false,
                budget: plan.budget.clone(),
                stop: tokio_util::sync::CancellationToken::new(),
            },
        )
        .map_err(RunError::Io)?,
    );
    let upstream = plan.upstream_ids();
    let facts = Facts::default();
    Ok(plan
        .stages
        .iter()
        .zip(upstream)
        .map(|(stage, upstream)| BuildContext {
            resources: resources.clone(),
            calls: Default::default(),
            notes: Default::default(),
            dry_run: false,
            stage_id: stage.id.clone(),
            base_dir: plan.base_dir.clone(),
            state_dir: state_dir.to_path_buf(),
            // Nothing is run: no run directory of its own.
            run_dir: state_dir.to_path_buf(),
            upstream,
            facts: facts.clone(),
        })
        .collect())
}
