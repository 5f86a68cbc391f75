//! Every `Examples:` line of every command's `--help` is a command line that parses: the
//! examples a user copies work (issue 26, item 6).

use clap::{CommandFactory, Parser};

use super::Cli;

/// The example command lines of a `--help` text: the lines after `Examples:` up to the first
/// blank line, continuation lines (`\`) joined, `sudo` dropped, only `netpol-observe` commands
/// (not `kubectl …`), without their `# comment`, redirection or pipe.
fn examples(help: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut joined = String::new();
    for line in help
        .lines()
        .skip_while(|l| l.trim() != "Examples:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
    {
        let line = line.trim();
        match line.strip_suffix('\\') {
            Some(head) => joined.push_str(head),
            None => {
                joined.push_str(line);
                lines.push(std::mem::take(&mut joined));
            }
        }
    }
    lines
        .into_iter()
        .map(|l| l.trim_start_matches("sudo ").to_owned())
        .filter(|l| l.starts_with("netpol-observe "))
        .collect()
}

/// Splits a shell command line into words: single and double quotes group, an unquoted `#`,
/// `>` or `|` ends the command.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_default().push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_default();
            }
            (None, '#' | '>' | '|') => break,
            (None, c) if c.is_whitespace() => out.extend(word.take()),
            (None, c) => word.get_or_insert_default().push(c),
        }
    }
    out.extend(word);
    out
}

#[test]
fn every_help_example_parses() {
    let mut cli = Cli::command();
    cli.build();
    let mut checked = 0;
    for sub in cli
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let help = sub
            .get_after_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        let found = examples(&help);
        assert!(
            !found.is_empty(),
            "{}: no Examples: in --help",
            sub.get_name()
        );
        for line in found {
            let argv = words(&line);
            if let Err(e) = Cli::try_parse_from(&argv) {
                panic!("{}: example {line:?} does not parse: {e}", sub.get_name());
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} examples");
}

#[test]
fn example_lines_are_split_as_a_shell_would() {
    assert_eq!(
        words("netpol-observe agent --interfaces 'veth*' \"a b\" > x.jsonl  # note"),
        ["netpol-observe", "agent", "--interfaces", "veth*", "a b"]
    );
    let help = "Examples:\n  sudo netpol-observe lab --scenario s.yaml \\\n      --enforce\n  kubectl get pods\n\nmore";
    assert_eq!(
        examples(help),
        ["netpol-observe lab --scenario s.yaml --enforce"]
    );
}
