//! Stage 1: TOML text → raw structs that record only what the file said.

use serde::Deserialize;
use toml::{Table, Value};

use crate::error::ConfigError;
use crate::suggest;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub data_dir: Option<String>,
    pub mesh: Option<RawMesh>,
    pub admin: Option<RawAdmin>,
    pub metrics: Option<RawMetrics>,
    pub log: Option<RawLog>,
    pub supervisor: Option<RawSupervisor>,
    pub debug: Option<RawDebug>,
    pub folders: Option<Vec<RawFolder>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMesh {
    pub listen: Option<String>,
    pub fleet_secret: Option<String>,
    pub fleet_secret_file: Option<String>,
    pub peers: Option<Vec<String>>,
    pub mdns: Option<bool>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub ticket_peers: Option<Vec<String>>,
    pub transfer_stall_timeout: Option<String>,
    pub peer_exchange: Option<bool>,
    pub max_peers: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
    pub socket: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub listen: Option<String>,
    pub bearer_token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSupervisor {
    pub ping_interval: Option<String>,
    pub stall_timeout: Option<String>,
    /// Range-checked in validation, so any TOML integer is accepted here.
    pub max_restarts: Option<i64>,
    pub restart_window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDebug {
    pub fault_injection: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFolder {
    pub id: Option<String>,
    pub path: Option<String>,
    pub mode: Option<String>,
    pub settle: Option<String>,
    pub rescan: Option<String>,
    pub watch: Option<String>,
    pub poll_interval: Option<String>,
    pub max_pending: Option<i64>,
    pub max_files: Option<i64>,
    pub min_free: Option<String>,
    pub umask: Option<String>,
    pub max_delete_fraction: Option<f64>,
    pub tombstone_ttl: Option<String>,
    pub versions: Option<RawVersions>,
}

/// `versions = "off"` or `versions = { keep, max_bytes, local }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawVersions {
    Word(String),
    Table(RawVersionsTable),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVersionsTable {
    pub keep: Option<String>,
    pub max_bytes: Option<String>,
    pub local: Option<bool>,
}

/// The TOML shape a leaf key must have. Checked before serde runs because
/// serde's type errors carry the key only in a multi-line `Display` and
/// sometimes echo the value — unacceptable for `fleet_secret`.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    Int,
    /// A number: integer or float.
    Number,
    StrList,
    Table,
    TableList,
    /// A word (`"off"`) or an inline table of its own keys.
    StrOrTable,
}

const TOP_KEYS: &[(&str, Kind)] = &[
    ("data_dir", Kind::Str),
    ("mesh", Kind::Table),
    ("admin", Kind::Table),
    ("metrics", Kind::Table),
    ("log", Kind::Table),
    ("supervisor", Kind::Table),
    ("debug", Kind::Table),
    ("folders", Kind::TableList),
];
const MESH_KEYS: &[(&str, Kind)] = &[
    ("listen", Kind::Str),
    ("fleet_secret", Kind::Str),
    ("fleet_secret_file", Kind::Str),
    ("peers", Kind::StrList),
    ("mdns", Kind::Bool),
    ("allow", Kind::StrList),
    ("deny", Kind::StrList),
    ("ticket_peers", Kind::StrList),
    ("transfer_stall_timeout", Kind::Str),
    ("peer_exchange", Kind::Bool),
    ("max_peers", Kind::Int),
];
const ADMIN_KEYS: &[(&str, Kind)] = &[("listen", Kind::Str), ("socket", Kind::Str)];
const METRICS_KEYS: &[(&str, Kind)] = &[("listen", Kind::Str), ("bearer_token_file", Kind::Str)];
const LOG_KEYS: &[(&str, Kind)] = &[("level", Kind::Str), ("format", Kind::Str)];
const SUPERVISOR_KEYS: &[(&str, Kind)] = &[
    ("ping_interval", Kind::Str),
    ("stall_timeout", Kind::Str),
    ("max_restarts", Kind::Int),
    ("restart_window", Kind::Str),
];
const DEBUG_KEYS: &[(&str, Kind)] = &[("fault_injection", Kind::Bool)];
const FOLDER_KEYS: &[(&str, Kind)] = &[
    ("id", Kind::Str),
    ("path", Kind::Str),
    ("mode", Kind::Str),
    ("settle", Kind::Str),
    ("rescan", Kind::Str),
    ("watch", Kind::Str),
    ("poll_interval", Kind::Str),
    ("max_pending", Kind::Int),
    ("max_files", Kind::Int),
    ("min_free", Kind::Str),
    ("umask", Kind::Str),
    ("max_delete_fraction", Kind::Number),
    ("tombstone_ttl", Kind::Str),
    ("versions", Kind::StrOrTable),
];
const VERSIONS_KEYS: &[(&str, Kind)] = &[
    ("keep", Kind::Str),
    ("max_bytes", Kind::Str),
    ("local", Kind::Bool),
];

/// Parse and shape-check the file text. `file` is how errors name the file.
pub(crate) fn parse(text: &str, file: &str) -> Result<RawConfig, ConfigError> {
    let table: Table = text.parse().map_err(|e| syntax_error(text, file, &e))?;
    check_shape(&table, file)?;
    // The shape check mirrors the structs, so this only fails if the two
    // drift apart; still report it rather than panic.
    Value::Table(table)
        .try_into::<RawConfig>()
        .map_err(|e| ConfigError::invalid(file, "<file>", e.message(), "report this as a bug"))
}

fn syntax_error(text: &str, file: &str, e: &toml::de::Error) -> ConfigError {
    let at = match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("line {line}, column {col}: ")
        }
        None => String::new(),
    };
    ConfigError::invalid(
        file,
        "<syntax>",
        format!("invalid TOML: {at}{}", e.message()),
        "correct the TOML syntax there (strings need quotes, sections are [mesh], \
         each folder starts with [[folders]])",
    )
}

/// 1-based line and column (in chars) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn check_shape(top: &Table, file: &str) -> Result<(), ConfigError> {
    check_table(top, "", "at the top level", TOP_KEYS, file)?;
    for (section, keys) in [
        ("mesh", MESH_KEYS),
        ("admin", ADMIN_KEYS),
        ("metrics", METRICS_KEYS),
        ("log", LOG_KEYS),
        ("supervisor", SUPERVISOR_KEYS),
        ("debug", DEBUG_KEYS),
    ] {
        if let Some(Value::Table(t)) = top.get(section) {
            check_table(t, section, &format!("in [{section}]"), keys, file)?;
        }
    }
    if let Some(Value::Array(folders)) = top.get("folders") {
        for (i, folder) in folders.iter().enumerate() {
            if let Value::Table(t) = folder {
                check_table(
                    t,
                    &format!("folders[{i}]"),
                    "in [[folders]]",
                    FOLDER_KEYS,
                    file,
                )?;
                if let Some(Value::Table(v)) = t.get("versions") {
                    check_table(
                        v,
                        &format!("folders[{i}].versions"),
                        "in versions = { ... }",
                        VERSIONS_KEYS,
                        file,
                    )?;
                }
            }
        }
    }
    Ok(())
}

fn check_table(
    table: &Table,
    prefix: &str,
    where_: &str,
    known: &[(&str, Kind)],
    file: &str,
) -> Result<(), ConfigError> {
    let path_of = |key: &str| {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        }
    };
    // Unknown keys first: a misspelt key is the likelier mistake and its
    // "did you mean" is more useful than a type complaint next to it.
    for key in table.keys() {
        if !known.iter().any(|(k, _)| k == key) {
            let names: Vec<&str> = known.iter().map(|(k, _)| *k).collect();
            let problem = match suggest(key, names.iter().copied()) {
                Some(s) => format!("unknown key (did you mean {s:?}?)"),
                None => "unknown key".to_string(),
            };
            return Err(ConfigError::invalid(
                file,
                path_of(key),
                problem,
                format!("valid keys {where_}: {}", names.join(", ")),
            ));
        }
    }
    for (key, kind) in known {
        let Some(value) = table.get(*key) else {
            continue;
        };
        check_kind(value, *kind, &path_of(key), key, file)?;
    }
    Ok(())
}

fn check_kind(
    value: &Value,
    kind: Kind,
    path: &str,
    key: &str,
    file: &str,
) -> Result<(), ConfigError> {
    let found = value.type_str();
    let wrong = |expected: &str, fix: String| {
        Err(ConfigError::invalid(
            file,
            path,
            format!("expected {expected}, found {}", article(found)),
            fix,
        ))
    };
    match kind {
        Kind::Str if !value.is_str() => {
            wrong("a string", format!("quote the value: {key} = \"...\""))
        }
        Kind::Bool if !value.is_bool() => wrong(
            "a boolean",
            format!("write {key} = true or {key} = false (no quotes)"),
        ),
        Kind::Int if !value.is_integer() => wrong(
            "an integer",
            format!("write a whole number without quotes, e.g. {key} = 5"),
        ),
        Kind::Number if !value.is_integer() && !value.is_float() => wrong(
            "a number",
            format!("write a number without quotes, e.g. {key} = 0.5"),
        ),
        Kind::StrList => match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if !item.is_str() {
                        return Err(ConfigError::invalid(
                            file,
                            format!("{path}[{i}]"),
                            format!("expected a string, found {}", article(item.type_str())),
                            format!(
                                "{key} is a list of quoted strings: {key} = [\"...\", \"...\"]"
                            ),
                        ));
                    }
                }
                Ok(())
            }
            _ => wrong(
                "an array of strings",
                format!("{key} is a list of quoted strings: {key} = [\"...\", \"...\"]"),
            ),
        },
        Kind::StrOrTable if !value.is_str() && !value.is_table() => wrong(
            "a string or an inline table",
            format!(
                "write {key} = \"off\" or {key} = {{ keep = \"30d\", max_bytes = \"1GiB\", local = false }}"
            ),
        ),
        Kind::Table if !value.is_table() => wrong(
            "a table",
            format!("put its keys under a [{key}] section header"),
        ),
        Kind::TableList => match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if !item.is_table() {
                        return Err(ConfigError::invalid(
                            file,
                            format!("{path}[{i}]"),
                            format!("expected a table, found {}", article(item.type_str())),
                            format!("start each entry with a [[{key}]] header"),
                        ));
                    }
                }
                Ok(())
            }
            _ => wrong(
                "an array of tables",
                format!("start each entry with a [[{key}]] header (double brackets)"),
            ),
        },
        _ => Ok(()),
    }
}

fn article(type_name: &str) -> String {
    match type_name.as_bytes().first() {
        Some(b'a' | b'e' | b'i' | b'o' | b'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}
