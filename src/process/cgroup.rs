//! Which container and pod a process belongs to, read from the path of its
//! cgroup in `/proc/PID/cgroup`. This is how a sample is tied to Kubernetes
//! metadata: the container id found here is the one the kubelet reports in
//! the pod's `status.containerStatuses`.
//!
//! Every container runtime and cgroup driver names cgroups differently, so
//! the parser looks at the shape of each path segment rather than at a fixed
//! layout: `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`
//! (systemd driver), a bare 64-hex directory (cgroupfs driver, plain
//! Docker), and `pod<uid>` or `kubepods-…-pod<uid>.slice` for the pod. When
//! containers nest (kind, Docker-in-Docker) the innermost one wins, because
//! that is the one the process was started in. Anything unrecognised yields
//! no id; parsing never fails and never logs, since it runs for every new
//! process.

use std::path::Path;

/// The container runtime a cgroup path most likely belongs to, guessed from
/// the path's shape. A bare id under the cgroupfs driver says nothing about
/// the runtime, so the guess is often absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// containerd's CRI plugin (`cri-containerd-<id>.scope`).
    Containerd,
    /// CRI-O (`crio-<id>.scope`).
    CriO,
    /// Docker, directly or through cri-dockerd (`docker-<id>.scope`,
    /// `/docker/<id>`).
    Docker,
}

impl Runtime {
    /// The runtime's usual short name, as in a container id URI scheme.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
        }
    }
}

/// The container and pod a process runs in, as far as its cgroup tells.
/// All fields are empty for a process outside any container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerRef {
    /// The innermost container's id: 64 lowercase hex digits. A pod's pause
    /// (sandbox) process has the sandbox's id here, which is a container id
    /// of that pod too.
    pub container_id: Option<String>,
    /// The pod's UID in its canonical dashed, lowercase form
    /// (`5f2a9b1c-3d4e-4f60-8a7b-9c0d1e2f3a4b`). A static pod's UID is a
    /// 32-hex config hash with no dashes and is kept as it is.
    pub pod_uid: Option<String>,
    /// The runtime, when the path shape gives it away.
    pub runtime: Option<Runtime>,
}

impl ContainerRef {
    /// Whether the cgroup named neither a container nor a pod.
    pub fn is_empty(&self) -> bool {
        self.container_id.is_none() && self.pod_uid.is_none()
    }

    /// How much a line told: a container id counts more than a pod UID.
    fn score(&self) -> u8 {
        2 * u8::from(self.container_id.is_some()) + u8::from(self.pod_uid.is_some())
    }
}

/// Parses the contents of `/proc/PID/cgroup`: cgroup v1 lines
/// (`N:controllers:/path`, one per hierarchy) and the v2 line (`0::/path`).
/// The line that says the most wins (a container id over a pod UID alone);
/// with cgroup v1 the controllers normally agree, and with the hybrid layout
/// the v2 line is often just `/`. Malformed lines are skipped.
pub fn parse_cgroup(text: &str) -> ContainerRef {
    let mut best = ContainerRef::default();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(hierarchy), Some(_controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if hierarchy.is_empty() || !hierarchy.bytes().all(|b| b.is_ascii_digit()) || !path.starts_with('/') {
            continue;
        }
        let found = parse_path(path);
        if found.score() > best.score() {
            best = found;
        }
    }
    best
}

/// Reads and parses `/proc/PID/cgroup` under `proc_root`. A process that is
/// gone, or a file that cannot be read, gives an empty reference.
pub fn read_container_ref(proc_root: &Path, pid: u32) -> ContainerRef {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))
        .map(|text| parse_cgroup(&text))
        .unwrap_or_default()
}

/// Walks one cgroup path from the root down, so that what is found last is
/// the innermost level.
fn parse_path(path: &str) -> ContainerRef {
    let mut found = ContainerRef::default();
    let mut parent = "";
    // containerd with the systemd driver but no systemd to convert the path
    // (some kind and minikube nodes) leaves `slice:prefix:id` in a single
    // segment; reading `:` as a separator makes it an ordinary nesting.
    for segment in path.split(['/', ':']).filter(|s| !s.is_empty()) {
        if let Some((id, runtime)) = container_segment(segment, parent) {
            found.container_id = Some(id);
            found.runtime = runtime;
        } else if let Some(uid) = pod_segment(segment) {
            // A pod inside a container (kind, Docker-in-Docker): the outer
            // container is the node, not this process's container.
            found = ContainerRef {
                pod_uid: Some(uid),
                ..ContainerRef::default()
            };
        }
        parent = segment;
    }
    found
}

/// A segment naming a container, with the runtime its shape suggests.
fn container_segment(segment: &str, parent: &str) -> Option<(String, Option<Runtime>)> {
    if is_hex_id(segment) {
        let runtime = match parent {
            "docker" => Some(Runtime::Docker),
            "cri-containerd" => Some(Runtime::Containerd),
            "crio" => Some(Runtime::CriO),
            _ => None,
        };
        return Some((segment.to_ascii_lowercase(), runtime));
    }
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    // conmon, CRI-O's monitor process, gets a scope of its own beside the
    // container's; it is not the container.
    if name.starts_with("crio-conmon-") {
        return None;
    }
    let (runtime, id) = if let Some(id) = name.strip_prefix("cri-containerd-") {
        (Some(Runtime::Containerd), id)
    } else if let Some(id) = name.strip_prefix("crio-") {
        (Some(Runtime::CriO), id)
    } else if let Some(id) = name.strip_prefix("docker-") {
        (Some(Runtime::Docker), id)
    } else if let Some(id) = name.strip_prefix("libpod-") {
        // Podman: a container, by a runtime taskprof has no name for.
        (None, id)
    } else {
        return None;
    };
    is_hex_id(id).then(|| (id.to_ascii_lowercase(), runtime))
}

/// A segment naming a pod: `pod<uid>` (cgroupfs driver) or
/// `kubepods[-<qos>]-pod<uid>.slice` (systemd driver, with `_` for `-`).
fn pod_segment(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    // A UID is hex, so it cannot contain "pod": the last one starts it.
    let at = name.rfind("pod")?;
    if at > 0 && !name[..at].ends_with('-') {
        return None;
    }
    canonical_pod_uid(&name[at + 3..])
}

/// A UUID with `-` or `_` separators (one kind throughout) in canonical form, or a static pod's
/// 32-hex hash as it is.
fn canonical_pod_uid(text: &str) -> Option<String> {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    if text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(text.to_ascii_lowercase());
    }
    // One separator throughout: `-` in cgroupfs paths, `_` where systemd
    // escaped them; a mix is neither.
    let separator = if text.contains('_') { '_' } else { '-' };
    let groups: Vec<&str> = text.split(separator).collect();
    let well_formed = groups.len() == GROUPS.len()
        && groups
            .iter()
            .zip(GROUPS)
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()));
    well_formed.then(|| groups.join("-").to_ascii_lowercase())
}

/// Whether `text` is a full container id: exactly 64 hex digits.
fn is_hex_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(text: &str, container_id: Option<&str>, pod_uid: Option<&str>, runtime: Option<Runtime>) {
        let found = parse_cgroup(text);
        assert_eq!(
            found,
            ContainerRef {
                container_id: container_id.map(str::to_string),
                pod_uid: pod_uid.map(str::to_string),
                runtime,
            },
            "{text}"
        );
    }

    #[test]
    fn systemd_driver_containerd_burstable_v1_and_v2() {
        let id = "3c1f0a9e7b5d4c2a8f6e0d1b9a7c5e3f2d4b6a8c0e1f3a5b7d9c2e4f6a8b0c1d";
        let uid = "5f2a9b1c-3d4e-4f60-8a7b-9c0d1e2f3a4b";
        for text in [
            include_str!("../../tests/fixtures/cgroup/systemd-containerd-burstable.v1"),
            include_str!("../../tests/fixtures/cgroup/systemd-containerd-burstable.v2"),
        ] {
            expect(text, Some(id), Some(uid), Some(Runtime::Containerd));
        }
    }

    #[test]
    fn systemd_driver_crio_guaranteed_v1_and_v2() {
        let id = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0";
        let uid = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
        for text in [
            include_str!("../../tests/fixtures/cgroup/systemd-crio-guaranteed.v1"),
            include_str!("../../tests/fixtures/cgroup/systemd-crio-guaranteed.v2"),
        ] {
            expect(text, Some(id), Some(uid), Some(Runtime::CriO));
        }
    }

    #[test]
    fn crio_conmon_is_in_the_pod_but_not_a_container() {
        expect(
            include_str!("../../tests/fixtures/cgroup/systemd-crio-conmon.v2"),
            None,
            Some("77e1c0de-2b3a-4c5d-9e6f-a0b1c2d3e4f5"),
            None,
        );
    }

    #[test]
    fn systemd_driver_docker_besteffort() {
        expect(
            include_str!("../../tests/fixtures/cgroup/systemd-docker-besteffort.v1"),
            Some("1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f801"),
            Some("c4d5e6f7-0819-4a2b-bc3d-4e5f60718293"),
            Some(Runtime::Docker),
        );
    }

    #[test]
    fn cgroupfs_driver_every_qos_class() {
        expect(
            include_str!("../../tests/fixtures/cgroup/cgroupfs-besteffort.v1"),
            Some("6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d"),
            Some("8d9e0f1a-2b3c-4d5e-8f60-718293a4b5c6"),
            None,
        );
        expect(
            include_str!("../../tests/fixtures/cgroup/cgroupfs-burstable.v2"),
            Some("b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1"),
            Some("f0e1d2c3-b4a5-4968-8776-5a4b3c2d1e0f"),
            None,
        );
        expect(
            include_str!("../../tests/fixtures/cgroup/cgroupfs-guaranteed.v1"),
            Some("c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"),
            Some("11223344-5566-4778-899a-abbccddeeff0"),
            None,
        );
    }

    #[test]
    fn plain_docker_with_either_driver() {
        expect(
            include_str!("../../tests/fixtures/cgroup/docker-cgroupfs.v1"),
            Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
            None,
            Some(Runtime::Docker),
        );
        expect(
            include_str!("../../tests/fixtures/cgroup/docker-systemd.v2"),
            Some("fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"),
            None,
            Some(Runtime::Docker),
        );
    }

    #[test]
    fn nested_containers_yield_the_innermost() {
        expect(
            include_str!("../../tests/fixtures/cgroup/kind-nested.v2"),
            Some("2222333344445555666677778888999922223333444455556666777788889999"),
            Some("99887766-5544-4332-a110-ffeeddccbbaa"),
            Some(Runtime::Containerd),
        );
        expect(
            include_str!("../../tests/fixtures/cgroup/docker-in-docker.v1"),
            Some("abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd"),
            Some("0f1e2d3c-4b5a-4697-a8b9-cadbecfd0e1f"),
            None,
        );
    }

    #[test]
    fn unconverted_systemd_path_from_containerd() {
        expect(
            include_str!("../../tests/fixtures/cgroup/containerd-unconverted-systemd.v2"),
            Some("7777888899990000aaaabbbbccccdddd7777888899990000aaaabbbbccccdddd"),
            Some("31415926-5358-4979-8323-846264338327"),
            Some(Runtime::Containerd),
        );
    }

    #[test]
    fn host_processes_have_no_container() {
        for text in [
            include_str!("../../tests/fixtures/cgroup/host-service.v2"),
            include_str!("../../tests/fixtures/cgroup/host-session.v1"),
        ] {
            assert!(parse_cgroup(text).is_empty(), "{text}");
        }
    }

    #[test]
    fn a_pod_in_a_container_is_not_that_container() {
        // The pod-level cgroup of a kind node: the outer id is the node's.
        let outer = "5555666677778888999900001111222233334444555566667777888899990000";
        expect(
            &format!("0::/docker/{outer}/kubepods/burstable/pod0f1e2d3c-4b5a-4697-a8b9-cadbecfd0e1f\n"),
            None,
            Some("0f1e2d3c-4b5a-4697-a8b9-cadbecfd0e1f"),
            None,
        );
    }

    #[test]
    fn ids_and_uids_are_lowercased() {
        expect(
            "0::/kubepods/podABCDEF01-2345-4678-9ABC-DEF012345678/C0FFEE00C0FFEE00C0FFEE00C0FFEE00C0FFEE00C0FFEE00C0FFEE00C0FFEE00",
            Some("c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"),
            Some("abcdef01-2345-4678-9abc-def012345678"),
            None,
        );
    }

    #[test]
    fn static_pod_hash_is_kept_as_it_is() {
        expect(
            "0::/kubepods/burstable/pod0123456789abcdef0123456789abcdef\n",
            None,
            Some("0123456789abcdef0123456789abcdef"),
            None,
        );
    }

    /// Found by the `cgroup` fuzz target: `pod0a1b2c3d_4e5f_4a78-899a-…`
    /// was read as a pod UID.
    #[test]
    fn a_pod_uid_with_mixed_separators_is_not_a_pod_uid() {
        assert_eq!(canonical_pod_uid("0a1b2c3d_4e5f_4a78-899a-abbccddeeff0"), None);
        assert_eq!(
            canonical_pod_uid("0A1B2C3D_4E5F_4A78_899A_ABBCCDDEEFF0").as_deref(),
            Some("0a1b2c3d-4e5f-4a78-899a-abbccddeeff0")
        );
        assert_eq!(
            canonical_pod_uid("0a1b2c3d-4e5f-4a78-899a-abbccddeeff0").as_deref(),
            Some("0a1b2c3d-4e5f-4a78-899a-abbccddeeff0")
        );
    }

    #[test]
    fn malformed_input_never_panics_and_yields_no_id() {
        let long_line = format!("0::/{}", "a/".repeat(100_000));
        let cases = [
            "",
            "\n\n",
            "garbage",
            "1:cpu",
            "::",
            "0::",
            "0::relative/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope",
            "x::/docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ":cpu:/docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            // One digit short, one too many, not hex.
            "0::/docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde",
            "0::/docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0",
            "0::/docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg",
            "0::/system.slice/cri-containerd-.scope",
            "0::/system.slice/crio-conmon-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope",
            "0::/kubepods/pod/",
            "0::/kubepods/podnot-a-uid",
            "0::/kubepods/kubepods-burstable-pod12345678_1234_1234_1234_12345678901.slice",
            "0::/kubepods/xpod12345678-1234-1234-1234-123456789012",
            "0::/ünïcödé/🦀/docker-é",
            &long_line,
        ];
        for text in cases {
            assert!(parse_cgroup(text).is_empty(), "{text:.200}");
        }
    }

    #[test]
    fn a_valid_line_wins_over_malformed_ones() {
        let text = "garbage\n3:cpu\n0::/docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n\u{0}";
        expect(
            text,
            Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
            None,
            Some(Runtime::Docker),
        );
    }

    #[test]
    fn reads_from_a_proc_root_and_tolerates_missing_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_dir = dir.path().join("42");
        std::fs::create_dir(&pid_dir).expect("create pid dir");
        std::fs::write(
            pid_dir.join("cgroup"),
            include_str!("../../tests/fixtures/cgroup/cgroupfs-burstable.v2"),
        )
        .expect("write cgroup");
        let found = read_container_ref(dir.path(), 42);
        assert_eq!(
            found.container_id.as_deref(),
            Some("b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1")
        );
        assert_eq!(read_container_ref(dir.path(), 43), ContainerRef::default());
    }

    #[test]
    fn runtime_names() {
        assert_eq!(Runtime::Containerd.as_str(), "containerd");
        assert_eq!(Runtime::CriO.as_str(), "cri-o");
        assert_eq!(Runtime::Docker.as_str(), "docker");
    }
}
