//! The series labels a profile from a Kubernetes container carries. They are
//! chosen to stay low in cardinality: pod names change on every rollout but
//! the workload does not, and only the pod labels the user asks for are
//! copied. Every name is a valid Prometheus label name, which Parca and
//! Pyroscope both require.

use super::PodMetadata;

/// The pod label read for `service_name` unless another is configured.
pub const DEFAULT_SERVICE_NAME_LABEL: &str = "app.kubernetes.io/name";

/// What [`series_labels`] adds besides the fixed set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelOptions {
    /// The pod label whose value becomes `service_name`; `None` means
    /// [`DEFAULT_SERVICE_NAME_LABEL`].
    pub service_name_label: Option<String>,
    /// Pod labels copied as `pod_label_<name>`, with every character that a
    /// Prometheus label name cannot hold replaced by `_`.
    pub pod_labels: Vec<String>,
}

/// The labels of a series from `container` (id `container_id`) of the pod
/// `meta`, in this order:
/// - `service_name`: the value of the service-name pod label when the pod
///   has it and it is not empty, else `<namespace>/<container>`;
/// - `namespace`, `pod`, `container`, `container_id`;
/// - `workload_kind` and `workload`, when a controller owns the pod;
/// - `pod_label_<name>` for each of `options.pod_labels` the pod has (the
///   first one wins when two names sanitize alike).
///
/// `node` is not included: the agent labels every series with it already.
pub fn series_labels(
    meta: &PodMetadata,
    container: &str,
    container_id: &str,
    options: &LabelOptions,
) -> Vec<(String, String)> {
    let service_label = options
        .service_name_label
        .as_deref()
        .unwrap_or(DEFAULT_SERVICE_NAME_LABEL);
    let service_name = meta
        .labels
        .get(service_label)
        .filter(|value| !value.is_empty())
        .cloned()
        .unwrap_or_else(|| format!("{}/{}", meta.namespace, container));
    let mut labels = vec![
        ("service_name".to_string(), service_name),
        ("namespace".to_string(), meta.namespace.clone()),
        ("pod".to_string(), meta.pod.clone()),
        ("container".to_string(), container.to_string()),
        ("container_id".to_string(), container_id.to_string()),
    ];
    if let (Some(kind), Some(name)) = (&meta.owner_kind, &meta.owner_name) {
        labels.push(("workload_kind".to_string(), kind.clone()));
        labels.push(("workload".to_string(), name.clone()));
    }
    for key in &options.pod_labels {
        let Some(value) = meta.labels.get(key) else {
            continue;
        };
        let name = format!("pod_label_{}", sanitize_label_name(key));
        if !labels.iter().any(|(existing, _)| *existing == name) {
            labels.push((name, value.clone()));
        }
    }
    labels
}

/// `key` with every character outside `[a-zA-Z0-9_]` replaced by `_`. The
/// result is a valid label name once it follows a prefix that starts with a
/// letter.
fn sanitize_label_name(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(labels: &[(&str, &str)]) -> PodMetadata {
        PodMetadata {
            namespace: "shop".to_string(),
            pod: "web-7d4b9c8f6d-x2x9q".to_string(),
            pod_uid: "5f2a9b1c-3d4e-4f60-8a7b-9c0d1e2f3a4b".to_string(),
            node: "node-a".to_string(),
            owner_kind: Some("Deployment".to_string()),
            owner_name: Some("web".to_string()),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            containers: vec![("abc".to_string(), "app".to_string())],
        }
    }

    fn get<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
        labels.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn fixed_labels_and_the_default_service_name() {
        let labels = series_labels(&meta(&[]), "app", "abc", &LabelOptions::default());
        let names: Vec<&str> = labels.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "service_name",
                "namespace",
                "pod",
                "container",
                "container_id",
                "workload_kind",
                "workload"
            ]
        );
        assert_eq!(get(&labels, "service_name"), Some("shop/app"));
        assert_eq!(get(&labels, "workload_kind"), Some("Deployment"));
        assert_eq!(get(&labels, "workload"), Some("web"));
        assert_eq!(get(&labels, "container_id"), Some("abc"));
        assert_eq!(get(&labels, "node"), None);
    }

    #[test]
    fn service_name_comes_from_the_pod_label_or_the_configured_one() {
        let pod = meta(&[("app.kubernetes.io/name", "storefront"), ("team", "payments")]);
        let labels = series_labels(&pod, "app", "abc", &LabelOptions::default());
        assert_eq!(get(&labels, "service_name"), Some("storefront"));

        let options = LabelOptions {
            service_name_label: Some("team".to_string()),
            ..LabelOptions::default()
        };
        assert_eq!(
            get(&series_labels(&pod, "app", "abc", &options), "service_name"),
            Some("payments")
        );
        // A configured label the pod lacks, or an empty value, falls back.
        let options = LabelOptions {
            service_name_label: Some("missing".to_string()),
            ..LabelOptions::default()
        };
        assert_eq!(
            get(&series_labels(&pod, "app", "abc", &options), "service_name"),
            Some("shop/app")
        );
        let empty = meta(&[("app.kubernetes.io/name", "")]);
        assert_eq!(
            get(
                &series_labels(&empty, "app", "abc", &LabelOptions::default()),
                "service_name"
            ),
            Some("shop/app")
        );
    }

    #[test]
    fn selected_pod_labels_are_copied_under_valid_names() {
        let pod = meta(&[
            ("app.kubernetes.io/version", "1.2.3"),
            ("app-kubernetes-io/version", "shadowed"),
            ("tier", "frontend"),
            ("ünï", "x"),
        ]);
        let options = LabelOptions {
            service_name_label: None,
            pod_labels: vec![
                "app.kubernetes.io/version".to_string(),
                "app-kubernetes-io/version".to_string(),
                "tier".to_string(),
                "absent".to_string(),
                "ünï".to_string(),
            ],
        };
        let labels = series_labels(&pod, "app", "abc", &options);
        assert_eq!(get(&labels, "pod_label_app_kubernetes_io_version"), Some("1.2.3"));
        assert_eq!(get(&labels, "pod_label_tier"), Some("frontend"));
        assert_eq!(get(&labels, "pod_label_absent"), None);
        assert_eq!(get(&labels, "pod_label__n_"), Some("x"));
        for (name, _) in &labels {
            let mut chars = name.chars();
            assert!(
                chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_'),
                "{name}"
            );
            assert!(chars.all(|c| c.is_ascii_alphanumeric() || c == '_'), "{name}");
        }
        let mut names: Vec<&String> = labels.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), labels.len(), "no duplicate label names");
    }

    #[test]
    fn bare_pods_have_no_workload() {
        let mut pod = meta(&[]);
        pod.owner_kind = None;
        pod.owner_name = None;
        let labels = series_labels(&pod, "app", "abc", &LabelOptions::default());
        assert_eq!(get(&labels, "workload_kind"), None);
        assert_eq!(get(&labels, "workload"), None);
    }
}
