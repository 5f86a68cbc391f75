//! `recommend -o yaml|json|text`: the format of what `recommend` prints or writes, as
//! kubectl's `-o` (issue 26, item 6). Policies are `yaml` (a multi-document stream, the
//! default) or `json` (one `v1` `List` of the objects, as `kubectl get -o json` prints several);
//! the `--diff` report is `text` (the default) or `json`. Where to write is `--write PATH`.

use anyhow::Context;

use crate::recommend::format::{RenderedObject, join_stream};

/// The format given with `-o/--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A multi-document YAML stream of the objects.
    Yaml,
    /// One JSON `List` of the objects, or the `--diff` report as one JSON object.
    Json,
    /// The `--diff` report for people.
    Text,
}

/// Parses `-o`: a format, or a clear error for a path (the old meaning of `-o`).
pub(super) fn parse(s: &str) -> Result<Output, String> {
    match s {
        "yaml" => Ok(Output::Yaml),
        "json" => Ok(Output::Json),
        "text" => Ok(Output::Text),
        other => Err(format!(
            "{other:?} is not an output format: -o takes yaml or json (the policies), or text or \
             json (the --diff report); to write the policies to a file or a directory use \
             --write {other}"
        )),
    }
}

/// The objects in `output`'s format (`Text` is the report's: an error for objects).
pub(super) fn render(objects: &[RenderedObject], output: Output) -> anyhow::Result<String> {
    render_refs(objects.iter(), output)
}

/// As [`render`], for some of the objects (one file of `--write DIR`).
pub(super) fn render_refs<'o>(
    objects: impl IntoIterator<Item = &'o RenderedObject>,
    output: Output,
) -> anyhow::Result<String> {
    match output {
        Output::Yaml => Ok(join_stream(objects)),
        Output::Json => {
            let items = objects
                .into_iter()
                .map(|o| {
                    crate::yaml::from_str::<serde_json::Value>(&o.yaml)
                        .with_context(|| format!("cannot render {} as JSON", o.id))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
            Ok(serde_json::to_string_pretty(&list)? + "\n")
        }
        Output::Text => anyhow::bail!(
            "-o text is the --diff report's format; the policies are written as yaml or json"
        ),
    }
}

/// The extension of a file of `--write DIR` in `output`'s format.
pub(super) fn extension(output: Output) -> &'static str {
    match output {
        Output::Json => "json",
        _ => "yaml",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_given_to_o_is_explained() {
        assert_eq!(parse("json"), Ok(Output::Json));
        let err = parse("policies/").unwrap_err();
        assert!(err.contains("--write policies/"), "{err}");
    }

    #[test]
    fn objects_render_as_a_json_list() {
        let o = RenderedObject {
            namespace: Some("shop".into()),
            id: "NetworkPolicy/shop/a".into(),
            yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: a\n  namespace: shop\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - port: 8080\n      protocol: TCP\n".into(),
        };
        let json: serde_json::Value =
            serde_json::from_str(&render(std::slice::from_ref(&o), Output::Json).unwrap()).unwrap();
        assert_eq!(json["kind"], "List");
        assert_eq!(
            json["items"][0]["spec"]["ingress"][0]["ports"][0]["port"],
            8080
        );
        assert_eq!(
            render(std::slice::from_ref(&o), Output::Yaml).unwrap(),
            format!("---\n{}", o.yaml)
        );
        assert!(render(&[o], Output::Text).is_err());
    }
}
