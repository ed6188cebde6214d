//! The part of a pod taskprof keeps, and how it is read from the API's
//! JSON: identity, labels, the workload that owns it, and the ids of its
//! containers. Only these fields are decoded; everything else in a pod
//! (spec, conditions, volumes) is skipped by serde without being stored.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What taskprof knows about one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMetadata {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub pod: String,
    /// `metadata.uid`, lowercase.
    pub pod_uid: String,
    /// `spec.nodeName`.
    pub node: String,
    /// The kind of the workload that controls the pod (`Deployment`,
    /// `StatefulSet`, `DaemonSet`, `Job`, …), or `None` for a bare pod.
    /// A ReplicaSet made by a Deployment is reported as the Deployment.
    pub owner_kind: Option<String>,
    /// That workload's name.
    pub owner_name: Option<String>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `(container id, container name)` for every container that has been
    /// started: regular, init and ephemeral. Ids are bare lowercase hex.
    pub containers: Vec<(String, String)>,
}

impl PodMetadata {
    /// The name of the container with this id (bare, as
    /// [`strip_runtime_prefix`] leaves it).
    pub fn container_name(&self, container_id: &str) -> Option<&str> {
        self.containers
            .iter()
            .find(|(id, _)| id == container_id)
            .map(|(_, name)| name.as_str())
    }
}

/// A container id without its runtime scheme (`containerd://`, `cri-o://`,
/// `docker://`, or any other `scheme://`), lowercased; `None` when nothing
/// is left (a container that has not started yet has an empty id) or what
/// is left is not an id.
pub fn strip_runtime_prefix(container_id: &str) -> Option<String> {
    let id = container_id.split_once("://").map_or(container_id, |(_, id)| id).trim();
    // Ids are hex digests; anything with separators (a second scheme, a
    // path) is not one and could never match a cgroup.
    let plausible = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    (!id.is_empty() && plausible).then(|| id.to_ascii_lowercase())
}

#[derive(Deserialize)]
struct Pod {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ObjectMeta {
    name: String,
    namespace: String,
    uid: String,
    pub(crate) resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OwnerReference {
    kind: String,
    name: String,
    controller: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PodSpec {
    node_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PodStatus {
    container_statuses: Option<Vec<ContainerStatus>>,
    init_container_statuses: Option<Vec<ContainerStatus>>,
    ephemeral_container_statuses: Option<Vec<ContainerStatus>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ContainerStatus {
    name: String,
    #[serde(rename = "containerID")]
    container_id: Option<String>,
}

/// Reads a pod object. `None` when it lacks a UID (nothing could key it).
pub(crate) fn decode_pod(value: serde_json::Value) -> Result<Option<PodMetadata>, serde_json::Error> {
    let pod: Pod = serde_json::from_value(value)?;
    Ok(pod_metadata(pod))
}

fn pod_metadata(pod: Pod) -> Option<PodMetadata> {
    let Pod { metadata, spec, status } = pod;
    if metadata.uid.is_empty() {
        return None;
    }
    let labels = metadata.labels.unwrap_or_default();
    let (owner_kind, owner_name) = metadata
        .owner_references
        .as_deref()
        .and_then(|refs| refs.iter().find(|r| r.controller == Some(true)))
        .map(|owner| resolve_owner(&owner.kind, &owner.name, &labels))
        .unzip();
    let containers = [
        status.container_statuses,
        status.init_container_statuses,
        status.ephemeral_container_statuses,
    ]
    .into_iter()
    .flatten()
    .flatten()
    .filter_map(|c| Some((strip_runtime_prefix(c.container_id.as_deref()?)?, c.name)))
    .collect();
    Some(PodMetadata {
        namespace: metadata.namespace,
        pod: metadata.name,
        pod_uid: metadata.uid.to_ascii_lowercase(),
        node: spec.node_name.unwrap_or_default(),
        owner_kind,
        owner_name,
        labels,
        containers,
    })
}

/// The workload behind a controller reference. A Deployment's ReplicaSet is
/// named `<deployment>-<pod-template-hash>`; the workload people know is the
/// Deployment, and naming it keeps the label stable across rollouts.
fn resolve_owner(kind: &str, name: &str, labels: &BTreeMap<String, String>) -> (String, String) {
    if kind == "ReplicaSet" {
        let deployment = match labels.get("pod-template-hash") {
            Some(hash) => name.strip_suffix(hash.as_str()).and_then(|rest| rest.strip_suffix('-')),
            None => name.rsplit_once('-').and_then(|(deployment, hash)| {
                let looks_like_hash = (5..=10).contains(&hash.len())
                    && hash.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                looks_like_hash.then_some(deployment)
            }),
        };
        if let Some(deployment) = deployment.filter(|d| !d.is_empty()) {
            return ("Deployment".to_string(), deployment.to_string());
        }
    }
    (kind.to_string(), name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owner(kind: &str, name: &str, labels: &[(&str, &str)]) -> (String, String) {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        resolve_owner(kind, name, &labels)
    }

    #[test]
    fn replica_sets_of_deployments_resolve_to_the_deployment() {
        let deployment = |name: &str| ("Deployment".to_string(), name.to_string());
        assert_eq!(
            owner("ReplicaSet", "web-7d4b9c8f6d", &[("pod-template-hash", "7d4b9c8f6d")]),
            deployment("web")
        );
        assert_eq!(
            owner("ReplicaSet", "my-api-v2-5c7f9", &[("pod-template-hash", "5c7f9")]),
            deployment("my-api-v2")
        );
        // Without the label, the shape of the suffix decides.
        assert_eq!(owner("ReplicaSet", "checkout-6b8f7c9d5", &[]), deployment("checkout"));
        assert_eq!(owner("ReplicaSet", "front-end-abcde", &[]), deployment("front-end"));
    }

    #[test]
    fn other_owners_are_kept() {
        let keep = |kind: &str, name: &str| (kind.to_string(), name.to_string());
        // A standalone ReplicaSet whose name does not end in the hash.
        assert_eq!(
            owner("ReplicaSet", "legacy", &[("pod-template-hash", "5c7f9")]),
            keep("ReplicaSet", "legacy")
        );
        // Suffixes that cannot be a hash: too short, too long, upper case.
        assert_eq!(owner("ReplicaSet", "cache-v2", &[]), keep("ReplicaSet", "cache-v2"));
        assert_eq!(
            owner("ReplicaSet", "cache-abcdefghijk", &[]),
            keep("ReplicaSet", "cache-abcdefghijk")
        );
        assert_eq!(
            owner("ReplicaSet", "cache-ABCDE", &[]),
            keep("ReplicaSet", "cache-ABCDE")
        );
        assert_eq!(owner("ReplicaSet", "-abcde", &[]), keep("ReplicaSet", "-abcde"));
        assert_eq!(owner("StatefulSet", "db-abcde", &[]), keep("StatefulSet", "db-abcde"));
        assert_eq!(owner("DaemonSet", "agent", &[]), keep("DaemonSet", "agent"));
    }

    #[test]
    fn runtime_prefixes_are_stripped() {
        let id = "3c1f0a9e7b5d4c2a8f6e0d1b9a7c5e3f2d4b6a8c0e1f3a5b7d9c2e4f6a8b0c1d";
        for scheme in ["containerd://", "cri-o://", "docker://", ""] {
            assert_eq!(strip_runtime_prefix(&format!("{scheme}{id}")).as_deref(), Some(id));
        }
        assert_eq!(strip_runtime_prefix("containerd://ABC").as_deref(), Some("abc"));
        assert_eq!(strip_runtime_prefix(""), None);
        assert_eq!(strip_runtime_prefix("containerd://"), None);
    }

    /// Found by the `kubernetes` fuzz target: `docker://aaaer://aaa` kept
    /// `aaaer://aaa` as the container id.
    #[test]
    fn container_ids_with_a_second_scheme_are_refused() {
        assert_eq!(strip_runtime_prefix("docker://abc0er://abc1"), None);
        assert_eq!(strip_runtime_prefix("containerd://abc/def"), None);
        assert_eq!(strip_runtime_prefix("cri-o://0123abcd").as_deref(), Some("0123abcd"));
    }

    #[test]
    fn pods_decode_with_owner_containers_and_labels() {
        let value = json!({
            "metadata": {
                "name": "web-7d4b9c8f6d-x2x9q",
                "namespace": "shop",
                "uid": "5F2A9B1C-3D4E-4F60-8A7B-9C0D1E2F3A4B",
                "labels": {"app.kubernetes.io/name": "web", "pod-template-hash": "7d4b9c8f6d"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": "not-the-controller", "uid": "x"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f6d",
                     "uid": "y", "controller": true, "blockOwnerDeletion": true}
                ]
            },
            "spec": {"nodeName": "node-a"},
            "status": {
                "containerStatuses": [
                    {"name": "app", "containerID": "containerd://AAAA"},
                    {"name": "waiting", "state": {"waiting": {"reason": "ContainerCreating"}}},
                    {"name": "empty", "containerID": ""}
                ],
                "initContainerStatuses": [{"name": "init", "containerID": "cri-o://bbbb"}],
                "ephemeralContainerStatuses": [{"name": "debugger", "containerID": "docker://cccc"}]
            }
        });
        let pod = decode_pod(value).expect("decodes").expect("has a uid");
        assert_eq!(pod.namespace, "shop");
        assert_eq!(pod.pod, "web-7d4b9c8f6d-x2x9q");
        assert_eq!(pod.pod_uid, "5f2a9b1c-3d4e-4f60-8a7b-9c0d1e2f3a4b");
        assert_eq!(pod.node, "node-a");
        assert_eq!(pod.owner_kind.as_deref(), Some("Deployment"));
        assert_eq!(pod.owner_name.as_deref(), Some("web"));
        assert_eq!(
            pod.labels.get("app.kubernetes.io/name").map(String::as_str),
            Some("web")
        );
        assert_eq!(
            pod.containers,
            vec![
                ("aaaa".to_string(), "app".to_string()),
                ("bbbb".to_string(), "init".to_string()),
                ("cccc".to_string(), "debugger".to_string()),
            ]
        );
        assert_eq!(pod.container_name("bbbb"), Some("init"));
        assert_eq!(pod.container_name("dddd"), None);
    }

    #[test]
    fn bare_and_odd_pods_decode() {
        let pod = decode_pod(json!({"metadata": {"name": "p", "namespace": "n", "uid": "u"}}))
            .expect("decodes")
            .expect("has a uid");
        assert_eq!((pod.owner_kind, pod.owner_name), (None, None));
        assert!(pod.containers.is_empty() && pod.labels.is_empty());
        // Owners without a controller flag are not the controller.
        let pod = decode_pod(json!({"metadata": {"uid": "u", "ownerReferences": [{"kind": "Job", "name": "j"}]}}))
            .expect("decodes")
            .expect("has a uid");
        assert_eq!(pod.owner_kind, None);
        assert_eq!(
            decode_pod(json!({"metadata": {"name": "no-uid"}})).expect("decodes"),
            None
        );
        assert!(decode_pod(json!({"metadata": {"uid": 5}})).is_err());
        assert!(decode_pod(json!("not an object")).is_err());
    }
}
