use std::path::PathBuf;

/// Why a configuration could not be loaded.
///
/// Every message is a single line that names where the bad value lives (file
/// path, `<env>` or `<cli>`), the key, what is wrong and how to fix it, so an
/// operator can act on it from a journal line alone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (fix: {fix})")]
    Read {
        path: PathBuf,
        source: std::io::Error,
        fix: String,
    },
    #[error("{path}: {key}: {problem} (fix: {fix})")]
    Invalid {
        /// The config file path, or `<env>` / `<cli>` when the value came
        /// from an environment variable / a command-line flag.
        path: String,
        /// `mesh.listen`, `folders[2].path`, `FLEETSYNC_MESH_LISTEN`,
        /// `--listen`, ... — whatever the user has to edit.
        key: String,
        problem: String,
        fix: String,
    },
}

impl ConfigError {
    /// The offending key, when the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }

    pub(crate) fn invalid(
        path: impl Into<String>,
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        // Problems often embed foreign error text (TOML parser, io, humantime)
        // which may span lines; the one-line promise must hold regardless.
        ConfigError::Invalid {
            path: one_line(path.into()),
            key: one_line(key.into()),
            problem: one_line(problem.into()),
            fix: one_line(fix.into()),
        }
    }
}

fn one_line(s: String) -> String {
    if !s.contains(['\n', '\r']) {
        return s;
    }
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
