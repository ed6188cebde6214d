//! Which processes to profile, by what Kubernetes says about them:
//! namespaces to include or exclude, a label selector in the syntax of
//! `kubectl get -l`, and container ids. Parsing happens once at start-up,
//! so every error names the term that is wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::PodMetadata;

/// The shortest container id prefix that selects containers by prefix (the
/// length `docker ps` and `crictl ps` show). Shorter entries must match a
/// whole id.
pub const MIN_CONTAINER_ID_PREFIX: usize = 12;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`: the label is present with this value.
    Equals(String, String),
    /// `key!=value`: the label is absent or has another value.
    NotEquals(String, String),
    /// `key in (a,b)`: the label is present with one of these values.
    In(String, Vec<String>),
    /// `key notin (a,b)`: the label is absent or has none of these values.
    NotIn(String, Vec<String>),
    /// `key`: the label is present.
    Exists(String),
    /// `!key`: the label is absent.
    NotExists(String),
}

impl Requirement {
    /// Whether a pod with `labels` meets the requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(key, value) => labels.get(key) == Some(value),
            Requirement::NotEquals(key, value) => labels.get(key) != Some(value),
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => !labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::NotExists(key) => !labels.contains_key(key),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Equals(key, value) => write!(f, "{key}={value}"),
            Requirement::NotEquals(key, value) => write!(f, "{key}!={value}"),
            Requirement::In(key, values) => write!(f, "{key} in ({})", values.join(",")),
            Requirement::NotIn(key, values) => write!(f, "{key} notin ({})", values.join(",")),
            Requirement::Exists(key) => write!(f, "{key}"),
            Requirement::NotExists(key) => write!(f, "!{key}"),
        }
    }
}

/// A Kubernetes label selector: comma-separated requirements that must all
/// hold, equality-based (`app=web`, `tier!=cache`) or set-based
/// (`env in (a,b)`, `env notin (c)`, `has`, `!legacy`). The empty selector
/// matches every pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// A label selector that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector term `{term}`: {reason}")]
pub struct SelectorError {
    /// The term, as written.
    pub term: String,
    /// What is wrong with it.
    pub reason: String,
}

impl LabelSelector {
    /// Parses a selector such as `app=web,tier!=cache,env in (a,b),!legacy`.
    /// Keys and values are checked against Kubernetes' rules for label
    /// names and values.
    pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
        if text.trim().is_empty() {
            return Ok(LabelSelector::default());
        }
        let requirements = split_terms(text)?
            .into_iter()
            .map(parse_term)
            .collect::<Result<_, _>>()?;
        Ok(LabelSelector { requirements })
    }

    /// The requirements, all of which must hold.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether the selector has no requirement (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether a pod with `labels` meets every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        LabelSelector::parse(text)
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

/// Splits at the commas outside parentheses.
fn split_terms(text: &str) -> Result<Vec<&str>, SelectorError> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (at, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or_else(|| SelectorError {
                    term: text[start..=at].trim().to_string(),
                    reason: "`)` without `(`".to_string(),
                })?;
            }
            ',' if depth == 0 => {
                terms.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err(SelectorError {
            term: text[start..].trim().to_string(),
            reason: "`(` is never closed".to_string(),
        });
    }
    terms.push(&text[start..]);
    Ok(terms)
}

fn parse_term(raw: &str) -> Result<Requirement, SelectorError> {
    let term = raw.trim();
    let error = |reason: &str| SelectorError {
        term: term.to_string(),
        reason: reason.to_string(),
    };
    if term.is_empty() {
        return Err(error("empty term (a stray comma?)"));
    }
    let key = |k: &str| check_key(k.trim()).map(str::to_string).map_err(|reason| error(&reason));
    let value = |v: &str| {
        check_value(v.trim())
            .map(str::to_string)
            .map_err(|reason| error(&reason))
    };
    if let Some(rest) = term.strip_prefix('!') {
        if !rest.contains('=') {
            return Ok(Requirement::NotExists(key(rest)?));
        }
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(key(k)?, value(v)?));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(key(k)?, value(v)?));
    }
    if let Some(open) = term.find('(') {
        let inner = term[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| error("nothing may follow the closing `)`"))?;
        let mut words = term[..open].split_whitespace();
        let (Some(k), Some(operator), None) = (words.next(), words.next(), words.next()) else {
            return Err(error("expected `key in (…)` or `key notin (…)`"));
        };
        let values: Vec<String> = inner.split(',').map(value).collect::<Result<_, _>>()?;
        if values.iter().all(String::is_empty) {
            return Err(error("the set of values is empty"));
        }
        return match operator {
            "in" => Ok(Requirement::In(key(k)?, values)),
            "notin" => Ok(Requirement::NotIn(key(k)?, values)),
            other => Err(error(&format!("unknown operator `{other}` (expected `in` or `notin`)"))),
        };
    }
    if term.contains(char::is_whitespace) {
        return Err(error(
            "expected `key`, `!key`, `key=value`, `key!=value`, `key in (…)` or `key notin (…)`",
        ));
    }
    Ok(Requirement::Exists(key(term)?))
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at
/// most 63 characters.
fn check_key(key: &str) -> Result<&str, String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let valid = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !valid {
            return Err(format!("`{prefix}` is not a valid label key prefix (a DNS subdomain)"));
        }
    }
    if name.is_empty() {
        return Err("the label key is empty".to_string());
    }
    if !is_label_name(name) {
        return Err(format!(
            "`{name}` is not a valid label name (at most 63 letters, digits, `-`, `_` or `.`, \
             starting and ending with a letter or digit)"
        ));
    }
    Ok(key)
}

/// A label value: empty, or like a label name.
fn check_value(value: &str) -> Result<&str, String> {
    if value.is_empty() || is_label_name(value) {
        Ok(value)
    } else {
        Err(format!(
            "`{value}` is not a valid label value (at most 63 letters, digits, `-`, `_` or `.`, \
             starting and ending with a letter or digit)"
        ))
    }
}

fn is_label_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    bytes.len() <= 63
        && first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Which processes to profile. Every non-empty criterion must hold:
/// - `namespaces`: the process is in a known pod in one of them;
/// - `exclude_namespaces`: the process is not in a known pod in one of
///   them (processes outside pods pass);
/// - `selector`: the process is in a known pod whose labels match;
/// - `container_ids`: the process's container id equals one of them, or
///   starts with one that is at least [`MIN_CONTAINER_ID_PREFIX`] long
///   (case-insensitive; a `containerd://`-style scheme is ignored).
///
/// So with `namespaces`, `selector` or `container_ids` set, host processes
/// and containers the cache does not know yet are left out; with only
/// `exclude_namespaces`, or nothing, they are profiled. The default filter
/// allows everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFilter {
    /// Namespaces to profile; empty means all.
    pub namespaces: Vec<String>,
    /// Namespaces never to profile.
    pub exclude_namespaces: Vec<String>,
    /// Pod labels to require.
    pub selector: LabelSelector,
    /// Container ids (or prefixes) to profile; empty means all.
    pub container_ids: Vec<String>,
}

impl PodFilter {
    /// Whether the filter allows everything.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.exclude_namespaces.is_empty()
            && self.selector.is_empty()
            && self.container_ids.is_empty()
    }

    /// Whether a process passes, given its pod (if known) and its container
    /// id (if it is in a container). See [`PodFilter`] for the rules.
    pub fn allows(&self, meta: Option<&PodMetadata>, container_id: Option<&str>) -> bool {
        if !self.container_ids.is_empty() {
            let Some(id) = container_id else {
                return false;
            };
            if !self.container_ids.iter().any(|entry| container_id_matches(entry, id)) {
                return false;
            }
        }
        if !self.namespaces.is_empty() && !meta.is_some_and(|m| self.namespaces.contains(&m.namespace)) {
            return false;
        }
        if meta.is_some_and(|m| self.exclude_namespaces.contains(&m.namespace)) {
            return false;
        }
        if !self.selector.is_empty() && !meta.is_some_and(|m| self.selector.matches(&m.labels)) {
            return false;
        }
        true
    }
}

fn container_id_matches(entry: &str, id: &str) -> bool {
    let entry = entry.split_once("://").map_or(entry, |(_, rest)| rest).trim();
    if entry.is_empty() || entry.len() > id.len() {
        return false;
    }
    if entry.len() < id.len() && entry.len() < MIN_CONTAINER_ID_PREFIX {
        return false;
    }
    id.get(..entry.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn every_kind_of_term_parses() {
        let selector = LabelSelector::parse(
            "app=web, tier!=cache,env in (a, b),region notin(eu),!legacy,has,app.kubernetes.io/name==shop,empty=",
        )
        .expect("valid selector");
        assert_eq!(
            selector.requirements(),
            [
                Requirement::Equals("app".into(), "web".into()),
                Requirement::NotEquals("tier".into(), "cache".into()),
                Requirement::In("env".into(), strings(&["a", "b"])),
                Requirement::NotIn("region".into(), strings(&["eu"])),
                Requirement::NotExists("legacy".into()),
                Requirement::Exists("has".into()),
                Requirement::Equals("app.kubernetes.io/name".into(), "shop".into()),
                Requirement::Equals("empty".into(), String::new()),
            ]
        );
        assert_eq!(
            selector.to_string(),
            "app=web,tier!=cache,env in (a,b),region notin (eu),!legacy,has,app.kubernetes.io/name=shop,empty="
        );
        assert_eq!(LabelSelector::parse(&selector.to_string()), Ok(selector));
        assert!(LabelSelector::parse("  ").expect("empty").is_empty());
        assert_eq!("a=b".parse::<LabelSelector>().map(|s| s.requirements().len()), Ok(1));
    }

    #[test]
    fn errors_name_the_bad_term() {
        for (text, bad_term) in [
            ("app=web,,tier=x", ""),
            ("app=web,", ""),
            ("app=web,env in (a,b", "env in (a,b"),
            ("env in a,b)", "b)"),
            ("env in (a,b) x", "env in (a,b) x"),
            ("env within (a)", "env within (a)"),
            ("env in ()", "env in ()"),
            ("in (a)", "in (a)"),
            ("app = web extra", "app = web extra"),
            ("app web", "app web"),
            ("-app=web", "-app=web"),
            ("app=web!", "app=web!"),
            ("Bad_Prefix/app=x", "Bad_Prefix/app=x"),
            ("/app=x", "/app=x"),
            ("app/=x", "app/=x"),
            ("!", "!"),
            ("!a=b", "!a=b"),
        ] {
            let err = LabelSelector::parse(text).expect_err(text);
            assert_eq!(err.term, bad_term, "{text}: {err}");
            assert!(err.to_string().contains(&format!("`{bad_term}`")), "{err}");
        }
        let long = format!("app={}", "v".repeat(64));
        assert!(LabelSelector::parse(&long).is_err());
    }

    #[test]
    fn matching_follows_kubernetes_semantics() {
        let selector =
            LabelSelector::parse("app=web,tier!=cache,env in (prod,staging),!legacy,team").expect("valid selector");
        let pod = labels(&[("app", "web"), ("env", "prod"), ("team", "a")]);
        assert!(selector.matches(&pod));
        let mut other = pod.clone();
        other.insert("tier".into(), "cache".into());
        assert!(!selector.matches(&other));
        let mut other = pod.clone();
        other.insert("legacy".into(), "".into());
        assert!(!selector.matches(&other));
        let mut other = pod.clone();
        other.insert("env".into(), "dev".into());
        assert!(!selector.matches(&other));
        let mut other = pod.clone();
        other.remove("team");
        assert!(!selector.matches(&other));

        // `!=` and `notin` hold when the label is absent.
        let negative = LabelSelector::parse("tier!=cache,env notin (dev)").expect("valid selector");
        assert!(negative.matches(&labels(&[])));
        assert!(!negative.matches(&labels(&[("env", "dev")])));
        assert!(LabelSelector::default().matches(&labels(&[])));
    }

    fn pod(namespace: &str, pod_labels: &[(&str, &str)]) -> PodMetadata {
        PodMetadata {
            namespace: namespace.to_string(),
            labels: labels(pod_labels),
            ..PodMetadata::default()
        }
    }

    const ID: &str = "3c1f0a9e7b5d4c2a8f6e0d1b9a7c5e3f2d4b6a8c0e1f3a5b7d9c2e4f6a8b0c1d";

    #[test]
    fn the_default_filter_allows_everything() {
        let filter = PodFilter::default();
        assert!(filter.is_empty());
        assert!(filter.allows(None, None));
        assert!(filter.allows(Some(&pod("a", &[])), Some(ID)));
    }

    #[test]
    fn namespace_filters() {
        let filter = PodFilter {
            namespaces: strings(&["shop", "db"]),
            ..PodFilter::default()
        };
        assert!(filter.allows(Some(&pod("shop", &[])), Some(ID)));
        assert!(!filter.allows(Some(&pod("kube-system", &[])), Some(ID)));
        // Host processes and unknown containers are not in those namespaces.
        assert!(!filter.allows(None, None));
        assert!(!filter.allows(None, Some(ID)));

        let filter = PodFilter {
            exclude_namespaces: strings(&["kube-system"]),
            ..PodFilter::default()
        };
        assert!(!filter.allows(Some(&pod("kube-system", &[])), Some(ID)));
        assert!(filter.allows(Some(&pod("shop", &[])), Some(ID)));
        assert!(filter.allows(None, None));

        let both = PodFilter {
            namespaces: strings(&["shop"]),
            exclude_namespaces: strings(&["shop"]),
            ..PodFilter::default()
        };
        assert!(!both.allows(Some(&pod("shop", &[])), None), "exclusion wins");
    }

    #[test]
    fn selector_filter_needs_a_matching_pod() {
        let filter = PodFilter {
            selector: LabelSelector::parse("app=web").expect("valid selector"),
            ..PodFilter::default()
        };
        assert!(filter.allows(Some(&pod("shop", &[("app", "web")])), Some(ID)));
        assert!(!filter.allows(Some(&pod("shop", &[("app", "db")])), Some(ID)));
        assert!(!filter.allows(None, Some(ID)));
    }

    #[test]
    fn container_id_filter_matches_whole_ids_and_long_prefixes() {
        let filter = |entries: &[&str]| PodFilter {
            container_ids: strings(entries),
            ..PodFilter::default()
        };
        assert!(filter(&[ID]).allows(None, Some(ID)));
        assert!(filter(&[&format!("containerd://{ID}")]).allows(None, Some(ID)));
        assert!(filter(&["3C1F0A9E7B5D"]).allows(None, Some(ID)), "12-char prefix");
        assert!(filter(&["other", "3c1f0a9e7b5d4c2a"]).allows(None, Some(ID)));
        assert!(
            !filter(&["3c1f0a9e7b5"]).allows(None, Some(ID)),
            "11 chars is too short"
        );
        assert!(!filter(&["4c1f0a9e7b5d"]).allows(None, Some(ID)));
        assert!(!filter(&[&format!("{ID}0")]).allows(None, Some(ID)));
        assert!(!filter(&[""]).allows(None, Some(ID)));
        assert!(!filter(&[ID]).allows(None, None), "host processes have no id");
        // Short ids (not from cgroups, but possible) still match exactly.
        assert!(filter(&["abc"]).allows(None, Some("abc")));

        let combined = PodFilter {
            namespaces: strings(&["shop"]),
            container_ids: strings(&[ID]),
            ..PodFilter::default()
        };
        assert!(combined.allows(Some(&pod("shop", &[])), Some(ID)));
        assert!(!combined.allows(Some(&pod("db", &[])), Some(ID)));
    }
}
