use super::*;

fn spec(json: &str) -> Spec {
    serde_json::from_str(json).unwrap()
}

#[test]
fn a_mount_criu_does_not_know_is_refused_by_name() {
    let s = spec(
        r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "mounts": [
              {"destination": "/proc", "type": "proc", "source": "proc"},
              {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind"]},
              {"destination": "/cache", "type": "ramfs", "source": "ramfs"}
            ]}"#,
    );
    let err = check_spec(&s).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("mount /cache (type ramfs)"), "{text}");
    assert!(
        text.contains("criu cannot checkpoint ramfs mounts"),
        "{text}"
    );
    assert_eq!(
        bind_mounts(&s),
        [("/data".to_owned(), "/srv/data".to_owned())]
    );
}

#[test]
fn a_shared_cgroup_namespace_is_refused_and_others_are_joined() {
    let s = spec(
        r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "linux": {"namespaces": [
              {"type": "pid"}, {"type": "uts", "path": "/proc/1/ns/uts"},
              {"type": "cgroup", "path": "/proc/1/ns/cgroup"}
            ]}}"#,
    );
    let err = check_spec(&s).unwrap_err();
    assert!(
        err.to_string()
            .contains("cgroup namespace /proc/1/ns/cgroup"),
        "{err}"
    );
    let joined = joined_namespaces(&s);
    assert_eq!(
        joined[0],
        (LinuxNamespaceType::Uts, PathBuf::from("/proc/1/ns/uts"))
    );
    assert_eq!(criu_ns_name(joined[0].0), "uts");
}

#[test]
fn our_own_cgroups_are_found() {
    let paths = cgroup_paths(std::process::id() as i32).unwrap();
    assert!(!paths.is_empty(), "{paths:?}");
}
