//! `Criu::self_test` against real criu (root): the installed criu passes, and a criu
//! 4.1.1 (built by `scripts/test` into /opt/criu-4.1.1, or `$CRIU_41_BIN`) is reported
//! unable to dump inet sockets on this kernel, with the fix.

mod common;

use criu_swrk::Criu;
use criu_swrk::doctor::Status;

fn status_of(report: &criu_swrk::doctor::Report, name: &str) -> Status {
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {report:#?}"))
        .status
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn the_installed_criu_passes_its_self_test() {
    let env = common::env();
    let report = env.criu.self_test().await;
    assert!(report.can_checkpoint(), "{report:#?}");
    for canary in ["canary: process", "canary: tcp", "canary: namespaces"] {
        assert_eq!(status_of(&report, canary), Status::Ok, "{report:#?}");
    }
    assert!(
        !report.checks.iter().any(|c| c.status == Status::Failed),
        "{report:#?}"
    );
    common::assert_no_criu_left().await;
}

/// criu 4.1.1, which scripts/test builds (`CRIU_SUITE=trixie PREFIX=/opt/criu-4.1.1
/// CRIU_CHECKS=none scripts/install-criu`).
fn criu_4_1() -> Criu {
    let path = std::env::var("CRIU_41_BIN").unwrap_or_else(|_| "/opt/criu-4.1.1/sbin/criu".into());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: scripts/test builds it"
    );
    Criu::new().with_path(path)
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn criu_4_1_is_reported_unable_to_dump_inet_sockets_with_the_fix() {
    let _env = common::env();
    let old = criu_4_1();
    let report = old.self_test().await;
    assert!(!report.can_checkpoint(), "{report:#?}");
    let inet = report
        .checks
        .iter()
        .find(|c| c.name == "inet sockets")
        .expect("the inet check, from the version and the kernel");
    assert_eq!(inet.status, Status::Failed);
    assert!(
        inet.detail.contains("criu 4.1.1 cannot dump inet sockets"),
        "{inet:?}"
    );
    assert_eq!(inet.fix.as_deref(), Some("install criu 4.2 or later"));
    // And the canary that holds TCP sockets proves it, with criu's own line.
    let tcp = report
        .checks
        .iter()
        .find(|c| c.name == "canary: tcp")
        .unwrap();
    assert_eq!(tcp.status, Status::Failed, "{tcp:?}");
    assert!(tcp.detail.contains("Can't get 1:16 opt"), "{tcp:?}");
    assert!(
        tcp.fix.as_deref().unwrap().contains("install criu 4.2"),
        "{tcp:?}"
    );
    // Processes without inet sockets still checkpoint with it.
    assert_eq!(
        status_of(&report, "canary: process"),
        Status::Ok,
        "{report:#?}"
    );
    common::assert_no_criu_left().await;
}
