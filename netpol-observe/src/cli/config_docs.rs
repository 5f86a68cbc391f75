//! `docs/config.md`, generated from the agent's one definition of its settings,
//! [`AgentConfig`]: its clap arguments (flags, environment variables, help) and its serde form
//! (the `--config` file's keys and defaults). The test fails when the page is stale or when a setting
//! exists in one source and not the other; `NETPOL_OBSERVE_BLESS=1` rewrites the page.

use std::{collections::BTreeMap, fmt::Write as _};

use clap::CommandFactory;

use super::Cli;
use crate::agent::AgentConfig;

/// Flags about one run of the command, not settings of the agent: no file key.
const RUN_ONLY: &[&str] = &["config", "output", "duration", "log", "help"];

/// The file keys of the agent's configuration, nested ones dotted (`metrics.seriesBudget`),
/// with their default values as YAML would show them.
fn file_keys() -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    let value = serde_json::to_value(AgentConfig::default()).expect("the default serialises");
    walk("", &value, &mut out);
    out
}

/// `metrics-series-budget` and `metrics.seriesBudget` both become `metricsseriesbudget`.
fn normal(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The page.
fn render() -> String {
    let cli = Cli::command();
    let agent = cli
        .find_subcommand("agent")
        .expect("the agent command exists");
    let keys = file_keys();
    let by_normal: BTreeMap<String, &String> = keys.keys().map(|k| (normal(k), k)).collect();
    let mut page = String::from(
        "# Agent configuration\n\n\
         Generated from the code (`netpol-observe/src/cli/config_docs.rs`; a test keeps it \
         current). Every setting of `netpol-observe agent` is a flag, an environment variable \
         and a key of the `--config` YAML file; flags and environment variables override the \
         file, the file overrides the defaults. Lists in environment variables are \
         comma-separated (`--interfaces`/`--exclude` take one glob there: `{veth*,cali*}`). \
         Durations carry their unit: `500ms`, `10s`, `2m`, `1m30s`, `7d`.\n\n\
         | Flag | Environment | File key | Default (file) | Meaning |\n\
         |---|---|---|---|---|\n",
    );
    for arg in agent.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_else(|| "—".to_owned());
        let (key, default) = if RUN_ONLY.contains(&long) {
            ("(this run only)".to_owned(), "—".to_owned())
        } else {
            match by_normal.get(&normal(long)) {
                Some(k) => (format!("`{k}`"), format!("`{}`", keys[*k])),
                None => ("—".to_owned(), "—".to_owned()),
            }
        };
        let help = arg
            .get_help()
            .map(|h| h.to_string().replace('\n', " ").replace('|', "\\|"))
            .unwrap_or_default();
        let _ = writeln!(page, "| `--{long}` | {env} | {key} | {default} | {help} |");
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag of the agent but the run-only ones is a file key and every file key a flag:
    /// one set of settings in three forms.
    #[test]
    fn every_setting_is_a_flag_and_a_file_key() {
        let cli = Cli::command();
        let agent = cli.find_subcommand("agent").unwrap();
        let flags: Vec<&str> = agent
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| !RUN_ONLY.contains(l) && *l != "version")
            .collect();
        let keys = file_keys();
        let keyed: Vec<String> = keys.keys().map(|k| normal(k)).collect();
        let without_key: Vec<&&str> = flags
            .iter()
            .filter(|f| !keyed.contains(&normal(f)))
            .collect();
        assert!(
            without_key.is_empty(),
            "flags without a file key: {without_key:?}"
        );
        let flagged: Vec<String> = flags.iter().map(|f| normal(f)).collect();
        let without_flag: Vec<&String> = keys
            .keys()
            .filter(|k| !flagged.contains(&normal(k)))
            .collect();
        assert!(
            without_flag.is_empty(),
            "file keys without a flag: {without_flag:?}"
        );
    }

    /// `docs/config.md` is the generated page (`NETPOL_OBSERVE_BLESS=1` rewrites it).
    #[test]
    fn docs_config_md_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
        let page = render();
        if std::env::var_os("NETPOL_OBSERVE_BLESS").is_some() {
            std::fs::write(&path, &page).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == page,
            "docs/config.md is stale: run `NETPOL_OBSERVE_BLESS=1 cargo test -p netpol-observe \
             --lib config_docs` and commit it"
        );
    }
}
