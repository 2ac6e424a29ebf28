//! Label and field selectors, parsed from query strings and matched against JSON objects.
//!
//! Parsing is separate from matching so a bad selector answers 400 before any work, and a watch
//! can re-evaluate the same parsed selector against both the old and new object of an event.

use serde_json::Value;

use super::shard::ShardSelector;
use super::status::ApiError;

/// One label requirement.
#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (all requirements must hold).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelReq>);

/// A parsed field selector (`path=value` / `path!=value` terms, all must hold).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.into_iter().filter(|t| !t.is_empty()).collect()
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

/// A label key: `name` or `prefix/name`, the prefix a DNS subdomain (the rule objects' labels
/// are validated by).
fn valid_label_key(k: &str) -> bool {
    super::validation::names::qualified_name(k).is_empty()
}

/// A label value: empty, or at most 63 characters of a qualified name's part.
fn valid_label_value(v: &str) -> bool {
    super::validation::names::label_value(v).is_empty()
}

/// Field labels kube-apiserver v1.35 accepts beyond `metadata.name` and `metadata.namespace`,
/// per resource (checked against a real one: other resources refuse anything else), and the
/// value a missing field compares as.
fn extra_field_labels(group: &str, plural: &str) -> Option<&'static [&'static str]> {
    Some(match (group, plural) {
        ("", "secrets") => &["type"],
        ("", "services") => &["spec.clusterIP", "spec.type"],
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "namespaces") => &["status.phase"],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("events.k8s.io", "events") => &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
        ],
        _ => return None,
    })
}

/// Boolean fields a field selector reads as `false` when the object leaves them out.
const FALSE_WHEN_ABSENT: &[&str] = &["spec.unschedulable", "spec.hostNetwork"];

fn parse_set(term: &str, rest: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| ApiError::bad_request(format!("unable to parse requirement: {term}")))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for term in split_terms(s) {
            let bad = || ApiError::bad_request(format!("unable to parse requirement: {term}"));
            let req = if let Some(k) = term.strip_prefix('!') {
                LabelReq::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = term.split_once("!=") {
                LabelReq::NotEq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = term.split_once("==") {
                LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = term.split_once('=') {
                LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, rest)) = term.split_once(" notin ") {
                LabelReq::NotIn(k.trim().to_string(), parse_set(term, rest)?)
            } else if let Some((k, rest)) = term.split_once(" in ") {
                LabelReq::In(k.trim().to_string(), parse_set(term, rest)?)
            } else {
                LabelReq::Exists(term.to_string())
            };
            let key = match &req {
                LabelReq::Eq(k, _)
                | LabelReq::NotEq(k, _)
                | LabelReq::In(k, _)
                | LabelReq::NotIn(k, _)
                | LabelReq::Exists(k)
                | LabelReq::NotExists(k) => k,
            };
            let values: &[String] = match &req {
                LabelReq::Eq(_, v) | LabelReq::NotEq(_, v) => std::slice::from_ref(v),
                LabelReq::In(_, vs) | LabelReq::NotIn(_, vs) => vs,
                LabelReq::Exists(_) | LabelReq::NotExists(_) => &[],
            };
            if !valid_label_key(key) || !values.iter().all(|v| valid_label_value(v)) {
                return Err(bad());
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether the object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

impl FieldSelector {
    /// Parses `metadata.name=x,metadata.namespace!=y` (any dotted path into the object).
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in split_terms(s) {
            let (path, eq, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                )));
            };
            if !valid_key(path.trim()) {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: {term}"
                )));
            }
            terms.push((path.trim().to_string(), eq, value.trim().to_string()));
        }
        Ok(Self(terms))
    }

    /// Refuses field labels the resource does not support, with kube-apiserver's 400.
    pub fn check_supported(&self, group: &str, plural: &str) -> Result<(), ApiError> {
        let extra = extra_field_labels(group, plural);
        for (path, _, _) in &self.0 {
            if matches!(path.as_str(), "metadata.name" | "metadata.namespace") {
                continue;
            }
            match extra {
                Some(fields) if fields.contains(&path.as_str()) => {}
                Some(_) => {
                    return Err(ApiError::bad_request(format!(
                        "field label not supported: {path}"
                    )));
                }
                None => {
                    return Err(ApiError::bad_request(format!(
                        "\"{path}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
                    )));
                }
            }
        }
        Ok(())
    }

    /// Whether every term holds; a missing field compares as the empty string (`false` for
    /// the boolean fields that have a field label).
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, want)| {
            let pointer = format!("/{}", path.replace('.', "/"));
            let got = match obj.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None if FALSE_WHEN_ABSENT.contains(&path.as_str()) => {
                    "false".to_string()
                }
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (got == *want) == *eq
        })
    }
}

/// Both selectors of a request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selectors {
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// Shard selector (`shardSelector`, when the fake shards).
    pub shard: Option<ShardSelector>,
}

impl Selectors {
    /// Whether the object is selected.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj)
            && self.fields.matches(obj)
            && self.shard.as_ref().is_none_or(|s| s.matches(obj))
    }

    /// No requirement at all: everything matches.
    pub fn is_empty(&self) -> bool {
        self.labels.0.is_empty() && self.fields.0.is_empty() && self.shard.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_operators_match_like_kubernetes() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (db, web)", true),
            ("app notin (web)", false),
            ("missing notin (web)", true),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier in (back)", false),
            ("", true),
        ];
        for (sel, want) in cases {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&obj),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn malformed_selectors_are_rejected() {
        let bad_labels = [
            "app in web",
            "a b",
            "app===x",
            "-bad=x",
            "bad-=x",
            "app=-x",
            "app in (x,-y)",
            "Example.com/app=x",
            "/app=x",
            "example.com/=x",
        ];
        for sel in bad_labels {
            assert!(LabelSelector::parse(sel).is_err(), "{sel}");
        }
        for sel in [
            "example.com/app=x",
            "a.b-c/d_e.f=g-h",
            "app=",
            "app in (x, y_z)",
        ] {
            assert!(LabelSelector::parse(sel).is_ok(), "{sel}");
        }
        assert!(FieldSelector::parse("metadata.name").is_err());
    }

    #[test]
    fn field_labels_are_checked_per_resource_like_kube_apiserver() {
        let cases = [
            (
                "",
                "configmaps",
                "metadata.name=a,metadata.namespace=b",
                true,
            ),
            ("", "configmaps", "spec.foo=x", false),
            ("", "secrets", "type=Opaque", true),
            ("", "secrets", "data.x=y", false),
            ("", "pods", "spec.nodeName=n,status.phase=Running", true),
            ("", "nodes", "spec.unschedulable=false", true),
            ("", "events", "involvedObject.name=a,reason=B", true),
            ("events.k8s.io", "events", "regarding.name=a", true),
            ("events.k8s.io", "events", "involvedObject.name=a", false),
            ("apps", "replicasets", "status.replicas=1", false),
            ("example.com", "widgets", "spec.size=1", false),
        ];
        for (group, plural, sel, ok) in cases {
            let parsed = FieldSelector::parse(sel).unwrap();
            assert_eq!(
                parsed.check_supported(group, plural).is_ok(),
                ok,
                "{group}/{plural} {sel}"
            );
        }
        let node = json!({"metadata": {"name": "n"}, "spec": {}});
        assert!(
            FieldSelector::parse("spec.unschedulable=false")
                .unwrap()
                .matches(&node)
        );
    }

    #[test]
    fn field_selector_compares_paths_as_strings() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns"}});
        let cases = [
            ("metadata.name=a", true),
            ("metadata.name!=a", false),
            ("metadata.namespace=ns,metadata.name=b", false),
            ("spec.nodeName=", true),
        ];
        for (sel, want) in cases {
            assert_eq!(
                FieldSelector::parse(sel).unwrap().matches(&obj),
                want,
                "{sel}"
            );
        }
    }
}
