//! Live migration, stop-and-copy, against real criu (root). Two hosts on one machine:
//! this test's network namespace (the source) and one it makes (the destination),
//! joined by a veth pair with RFC 5737 addresses; the destination is `criu-swrk serve`
//! run in its namespace. Targets are the init of their own pid namespace (the same
//! kernel would otherwise clash on pids). A test CA and certificates are made here.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use criu_swrk::migrate::{Destination, Migration, Security, TlsFiles};
use criu_swrk::{Error, RequestState, Side};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLI: &str = env!("CARGO_BIN_EXE_criu-swrk");

/// A CA, and certificates it signed for each name, written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = p.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    /// Files for a side whose certificate names `name` (an address or a DNS name).
    fn side(&self, name: &str) -> TlsFiles {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![name.to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let cert_path = self.dir.path().join(format!("{name}.pem"));
        let key_path = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        TlsFiles {
            ca: self.dir.path().join("ca.pem"),
            cert: cert_path,
            key: key_path,
        }
    }
}

/// The destination host: a network namespace joined to ours by a veth pair, each
/// end with an address of its own /30 of 192.0.2.0/24 (one per test).
struct Host {
    ns: String,
    veth: String,
    /// The destination's address (ours is the other of the /30).
    there: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip(8)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Host {
    fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let ns = format!("csmig{tag}");
        let veth = format!("csm{tag}a");
        let peer = format!("csm{tag}b");
        let base = 4 * (n + 1);
        let here = format!("192.0.2.{}", base + 1);
        let there = format!("192.0.2.{}", base + 2);
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["addr", "add", &format!("{here}/30"), "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{there}/30"),
            "dev",
            &peer,
        ]);
        ip(&["-n", &ns, "link", "set", &peer, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        Host { ns, veth, there }
    }

    /// `criu-swrk --json serve --once` in the destination's namespace, listening on
    /// its address, once it listens.
    fn serve(&self, root: &Path, security: &[String]) -> Serve {
        let listen = format!("{}:7070", self.there);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns, CLI, "--json", "serve", "--once"])
            .args(["--listen", &listen, "--images-root"])
            .arg(root)
            .args(security)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.contains("\"listening\""), "serve said: {line:?}");
        Serve {
            child,
            out,
            addr: listen.parse().unwrap(),
        }
    }
}

impl Host {
    /// Shapes the source's side of the link to `rate` (tc's token bucket), a
    /// stand-in for a slower network: the pages go that way.
    fn shape(&self, rate: &str) {
        let out = Command::new("tc")
            .args([
                "qdisc", "add", "dev", &self.veth, "root", "tbf", "rate", rate,
            ])
            .args(["burst", "1mb", "latency", "100ms"])
            .output()
            .expect("tc(8)");
        assert!(
            out.status.success(),
            "tc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Deleting the namespace deletes the pair; the link is deleted too in case
        // the namespace was never made.
        for args in [
            vec!["netns", "del", &self.ns],
            vec!["link", "del", &self.veth],
        ] {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        }
    }
}

/// A running `criu-swrk serve`.
struct Serve {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
    addr: SocketAddr,
}

impl Serve {
    /// Its one line about the migration, and its exit.
    fn result(mut self) -> serde_json::Value {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut err);
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("serve printed {line:?} ({e}); status {status}; {err}"));
        v
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_args(f: &TlsFiles) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        f.ca.display().to_string(),
        "--tls-cert".into(),
        f.cert.display().to_string(),
        "--tls-key".into(),
        f.key.display().to_string(),
    ]
}

/// Returns once the source is handing its image files over (its dump waits at
/// post-dump): the first of them appears in the destination's directory `dir` (the
/// page server's own files, pages and its log, come earlier).
fn wait_for_hand_over(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let handed_over = |p: &PathBuf| !p.file_name().unwrap().to_string_lossy().starts_with("page");
    while !files_in(dir).iter().any(handed_over) {
        assert!(Instant::now() < deadline, "no image file arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn stop_and_copy_over_mutual_tls_moves_the_tree_intact_and_ends_the_source() {
    let env = common::env();
    let host = Host::new();
    let pki = Pki::new("criu-swrk test CA");
    let dest_tls = pki.side(&host.there);
    let src_tls = pki.side("source");
    let root = env.subdir("incoming");
    let serve = host.serve(&root, &tls_args(&dest_tls));

    let mut target = env.ns_workload(256);
    let moved = Migration::new(target.pid, serve.addr, Security::Tls(src_tls))
        .id("moved")
        .run(&env.criu)
        .await
        .unwrap_or_else(|e| panic!("migration: {e}"));
    let arrived = serve.result();
    assert_eq!(arrived["event"], "arrived", "{arrived}");
    assert_eq!(arrived["pid"], moved.pid);
    assert_eq!(arrived["confirmed"], true, "{arrived}");
    // The memory came through criu's page server, not the control connection.
    assert!(moved.pages_bytes >= 256 << 20, "{moved:?}");
    assert!(moved.file_bytes < 4 << 20, "{moved:?}");
    assert!(moved.downtime > Duration::ZERO && moved.downtime < moved.total);
    let p = moved.phases;
    assert!(
        p.dump > Duration::ZERO && p.restore > Duration::ZERO,
        "{p:?}"
    );
    let sum = p.connect + p.plan + p.dump + p.transfer + p.restore + p.commit;
    assert!(
        sum <= moved.total,
        "{p:?} add up to more than {:?}",
        moved.total
    );
    // The source tree is gone; the copy runs there with its memory intact.
    target.reap_dumped();
    let restored = target.restored(moved.pid);
    restored.assert_alive_and_intact();
    assert!(root.join("moved").join("inventory.img").exists());
    drop(restored);
    drop(host);
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn a_client_without_a_valid_certificate_is_refused_before_anything_is_written() {
    let env = common::env();
    let pki = Pki::new("criu-swrk test CA");
    let rogue = Pki::new("someone else's CA");
    let root = env.subdir("incoming");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dest = Destination::new(
        env.criu.clone(),
        &root,
        Security::Tls(pki.side("127.0.0.1")),
    )
    .deadline(Duration::from_secs(20));
    let served = tokio::spawn(async move { dest.accept(&listener).await });

    let target = env.ns_workload(16);
    // Signed by a CA the destination does not trust (and trusting that CA only).
    let err = Migration::new(target.pid, addr, Security::Tls(rogue.side("source")))
        .run(&env.criu)
        .await
        .unwrap_err();
    let Error::Migration { source_tree, .. } = &err else {
        panic!("expected a migration error, got {err:?}");
    };
    assert_eq!(*source_tree, RequestState::Untouched, "{err}");
    let dest_err = served.await.unwrap().unwrap_err();
    assert!(
        matches!(
            dest_err,
            Error::Migration {
                failed: Side::Link,
                ..
            }
        ),
        "{dest_err:?}"
    );
    assert!(dest_err.to_string().contains("TLS"), "{dest_err}");
    assert!(files_in(&root).is_empty(), "written: {:?}", files_in(&root));
    target.assert_alive_and_intact();
}

/// Relays `from` to `to` both ways, flipping one byte of the first image file of
/// the dump the source sends (the control connection in plain TCP: what TLS would refuse to let
/// anyone do, to show the checksums catch it).
async fn tampering_relay(listener: tokio::net::TcpListener, to: SocketAddr) {
    let (mut src, _) = listener.accept().await.unwrap();
    let mut dst = tokio::net::TcpStream::connect(to).await.unwrap();
    let (mut src_r, mut src_w) = src.split();
    let (mut dst_r, mut dst_w) = dst.split();
    let back = tokio::io::copy(&mut dst_r, &mut src_w);
    let forth = async {
        let mut flipped = false;
        loop {
            let mut len = [0u8; 4];
            if src_r.read_exact(&mut len).await.is_err() {
                break;
            }
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            if src_r.read_exact(&mut body).await.is_err() {
                break;
            }
            let msg: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let mut data = Vec::new();
            if msg["msg"] == "file" {
                data = vec![0u8; msg["size"].as_u64().unwrap() as usize];
                if src_r.read_exact(&mut data).await.is_err() {
                    break;
                }
                // cpuinfo.img comes before the dump: the first of the tree's images.
                if !flipped && !data.is_empty() && msg["name"] != "cpuinfo.img" {
                    data[0] ^= 0x55;
                    flipped = true;
                }
            }
            let sent = async {
                dst_w.write_all(&len).await?;
                dst_w.write_all(&body).await?;
                dst_w.write_all(&data).await
            };
            if sent.await.is_err() {
                break;
            }
        }
        let _ = dst_w.shutdown().await;
    };
    let _ = tokio::join!(back, forth);
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn a_tampered_image_is_refused_before_restore_and_the_source_resumes() {
    let env = common::env();
    let root = env.subdir("incoming");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dest_addr = listener.local_addr().unwrap();
    let dest = Destination::new(env.criu.clone(), &root, Security::Insecure)
        .deadline(Duration::from_secs(60));
    let served = tokio::spawn(async move { dest.accept(&listener).await });
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let relayed = tokio::spawn(tampering_relay(relay, dest_addr));

    let target = env.ns_workload(32);
    let err = Migration::new(target.pid, relay_addr, Security::Insecure)
        .run(&env.criu)
        .await
        .unwrap_err();
    match &err {
        Error::Migration {
            failed: Side::Destination,
            reason,
            source_tree: RequestState::RolledBack,
        } => assert!(reason.contains("checksum"), "{err}"),
        other => panic!("expected the destination's refusal, got {other:?}"),
    }
    let dest_err = served.await.unwrap().unwrap_err();
    assert!(dest_err.to_string().contains("checksum"), "{dest_err}");
    relayed.await.unwrap();
    // Nothing restored there, nothing left of the attempt; the tree runs on here.
    assert!(files_in(&root).is_empty(), "left: {:?}", files_in(&root));
    target.assert_alive_and_intact();
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn the_destination_killed_mid_migration_leaves_the_source_running_intact() {
    let env = common::env();
    let host = Host::new();
    let pki = Pki::new("criu-swrk test CA");
    let root = env.subdir("incoming");
    let serve = host.serve(&root, &tls_args(&pki.side(&host.there)));
    let target = env.ns_workload(64);
    let addr = serve.addr;
    let mut serve = serve;
    // Killed once the source is handing its image files over.
    let killer = std::thread::spawn(move || {
        wait_for_hand_over(&root.join("cut"));
        serve.child.kill().unwrap();
        serve.child.wait().unwrap();
    });
    let err = Migration::new(target.pid, addr, Security::Tls(pki.side("source")))
        .id("cut")
        .deadline(Duration::from_secs(60))
        .run(&env.criu)
        .await
        .unwrap_err();
    killer.join().unwrap();
    match &err {
        Error::Migration {
            failed,
            source_tree: RequestState::RolledBack,
            ..
        } => assert!(matches!(failed, Side::Link | Side::Destination), "{err}"),
        other => panic!("expected a rolled-back migration, got {other:?}"),
    }
    target.assert_alive_and_intact();
    drop(host);
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn the_link_cut_mid_migration_resumes_the_source_within_its_deadline() {
    let env = common::env();
    let host = Host::new();
    let pki = Pki::new("criu-swrk test CA");
    let root = env.subdir("incoming");
    let mut security = tls_args(&pki.side(&host.there));
    security.extend(["--deadline".into(), "15".into()]);
    let serve = host.serve(&root, &security);
    let target = env.ns_workload(64);
    let veth = host.veth.clone();
    let dir = root.join("cut");
    // The veth goes down once the source hands its files over: no reset, no answer.
    let cutter = std::thread::spawn(move || {
        wait_for_hand_over(&dir);
        ip(&["link", "set", &veth, "down"]);
    });
    let started = Instant::now();
    let err = Migration::new(target.pid, serve.addr, Security::Tls(pki.side("source")))
        .id("cut")
        .deadline(Duration::from_secs(8))
        .run(&env.criu)
        .await
        .unwrap_err();
    cutter.join().unwrap();
    let took = started.elapsed();
    assert!(
        matches!(
            err,
            Error::Migration {
                source_tree: RequestState::RolledBack,
                ..
            }
        ),
        "{err:?}"
    );
    // The deadline plus criu's rollback, not TCP's minutes of retries.
    assert!(took < Duration::from_secs(20), "took {took:?}: {err}");
    target.assert_alive_and_intact();
    // The destination says what it did: gave up before restoring, or restored a copy
    // whose source never confirmed (which the source, cut off, did not let go).
    let said = serve.result();
    match said["event"].as_str() {
        Some("failed") => {}
        Some("arrived") => {
            assert_eq!(said["confirmed"], false, "{said}");
            let copy = nix::unistd::Pid::from_raw(said["pid"].as_i64().unwrap() as i32);
            let _ = nix::sys::signal::kill(copy, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(copy, None);
        }
        other => panic!("serve said {other:?}: {said}"),
    }
    drop(host);
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn the_cli_moves_a_tree_over_loopback_when_asked_for_plain_tcp() {
    let env = common::env();
    let _pipes = common::PipeMaxSize::set(4 << 20);
    for lazy in [false, true] {
        let root = env.subdir(if lazy { "incoming-lazy" } else { "incoming" });
        cli_moves(&env, &root, lazy).await;
    }

    // Plain TCP anywhere else is refused before anything happens.
    let out = std::process::Command::new(CLI)
        .args([
            "migrate",
            "--insecure",
            "--pid",
            "1",
            "--to",
            "10.9.9.9:7070",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plain TCP is refused to 10.9.9.9:7070"),
        "{err}"
    );
}

/// `criu-swrk --json migrate` (post-copy with `lazy`) to a destination in this
/// process: JSON lines of progress, in order, then the result.
async fn cli_moves(env: &common::Env, root: &Path, lazy: bool) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dest = Destination::new(env.criu.clone(), root, Security::Insecure);
    let served = tokio::spawn(async move { dest.accept(&listener).await });
    let mut target = env.ns_workload(32);
    let mut cmd = tokio::process::Command::new(CLI);
    cmd.args(["--json", "migrate", "--insecure", "--id", "cli"])
        .args(["--pid", &target.pid.to_string(), "--to", &addr.to_string()]);
    if lazy {
        cmd.arg("--lazy");
    }
    let out = cmd.output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{l:?}: {e}; {}", String::from_utf8_lossy(&out.stderr)))
        })
        .collect();
    let (v, steps) = lines.split_last().expect("a result line");
    assert_eq!(v["ok"], true, "lazy {lazy}: {v}");
    assert!(v["phases_ms"]["restore"].as_f64().unwrap() > 0.0, "{v}");
    let names: Vec<&str> = steps
        .iter()
        .inspect(|s| assert_eq!(s["event"], "progress", "{s}"))
        .map(|s| s["step"].as_str().unwrap())
        .filter(|s| *s != "pages")
        .collect();
    let expected = if lazy {
        ["ready", "frozen", "dumped", "sent", "running", "restored"].as_slice()
    } else {
        ["ready", "frozen", "dumped", "sent", "restored"].as_slice()
    };
    assert_eq!(names, expected, "lazy {lazy}: {text}");
    let arrived = served.await.unwrap().unwrap();
    assert_eq!(v["restored_pid"], arrived.pid);
    assert!(arrived.confirmed);
    target.reap_dumped();
    target.restored(arrived.pid).assert_alive_and_intact();
}

/// Waits for the one copy of `target` to run, and returns it with the moment seen.
fn copy_running(target: &common::NsTarget, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        assert!(Instant::now() < deadline, "no copy of the target ran");
        if let [copy] = target.copies()[..] {
            // The counter alone: reading the buffer would wait for all its pages.
            let counter = || {
                common::workload::read_memory(copy, target.info.counter, 8)
                    .map(|b| u64::from_le_bytes(b[..8].try_into().unwrap()))
            };
            let first = counter();
            std::thread::sleep(Duration::from_millis(200));
            if let (Ok(a), Ok(b)) = (first, counter())
                && b > a
            {
                return copy;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn post_copy_runs_the_tree_on_the_destination_before_its_memory_has_arrived() {
    let env = common::env();
    let _pipes = common::PipeMaxSize::set(4 << 20);
    let host = Host::new();
    // 256 MiB at 400 Mbit/s: about 5 s of pages, time to see the copy run meanwhile.
    host.shape("400mbit");
    let pki = Pki::new("criu-swrk test CA");
    let root = env.subdir("incoming");
    let serve = host.serve(&root, &tls_args(&pki.side(&host.there)));
    let mut target = env.ns_workload(256);
    let migration = Migration::new(target.pid, serve.addr, Security::Tls(pki.side("source")))
        .id("lazy")
        .lazy(true)
        .deadline(Duration::from_secs(40));
    let criu = env.criu.clone();
    let migration = tokio::spawn(async move { migration.run(&criu).await });
    let copy = {
        let t = &target;
        tokio::task::block_in_place(|| copy_running(t, Duration::from_secs(60)))
    };
    // The copy counts on while the source still serves its pages: the source's
    // tree is ended only once the last one has arrived.
    assert!(!migration.is_finished(), "the pages were all there already");
    assert!(
        common::exists(target.pid),
        "the source's tree ended before its pages were served"
    );
    let moved = migration
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("migration: {e}"));
    assert_eq!(moved.pid, copy);
    assert!(moved.pages_bytes >= 200 << 20, "{moved:?}");
    assert!(moved.phases.pages > Duration::from_secs(1), "{moved:?}");
    assert!(moved.downtime < moved.phases.pages, "{moved:?}");
    let arrived = serve.result();
    assert_eq!(arrived["event"], "arrived", "{arrived}");
    assert_eq!(arrived["confirmed"], true, "{arrived}");
    target.reap_dumped();
    let restored = target.restored(moved.pid);
    restored.assert_alive_and_intact();
    common::assert_no_criu_left().await;
    drop(restored);
    drop(host);
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn a_restore_failing_on_the_destination_resumes_the_source_in_either_mode() {
    let env = common::env();
    let _pipes = common::PipeMaxSize::set(4 << 20);
    let host = Host::new();
    let pki = Pki::new("criu-swrk test CA");
    for lazy in [false, true] {
        let root = env.subdir(if lazy { "incoming-lazy" } else { "incoming" });
        let serve = host.serve(&root, &tls_args(&pki.side(&host.there)));
        // Not in a pid namespace of its own: the restore needs the pid the frozen
        // original still holds, and criu fails it.
        let target = env.workload(16);
        let err = Migration::new(target.pid, serve.addr, Security::Tls(pki.side("source")))
            .id("clash")
            .lazy(lazy)
            .deadline(Duration::from_secs(60))
            .run(&env.criu)
            .await
            .unwrap_err();
        let Error::Migration {
            failed,
            reason,
            source_tree,
        } = &err
        else {
            panic!("lazy {lazy}: expected a migration error, got {err:?}");
        };
        assert_eq!(*failed, Side::Destination, "lazy {lazy}: {err}");
        assert!(reason.contains("restore"), "lazy {lazy}: {err}");
        assert_eq!(*source_tree, RequestState::RolledBack, "lazy {lazy}: {err}");
        target.assert_alive_and_intact();
        let said = serve.result();
        assert_eq!(said["event"], "failed", "lazy {lazy}: {said}");
        assert!(
            files_in(&root).is_empty(),
            "lazy {lazy}: left {:?}",
            files_in(&root)
        );
    }
    drop(host);
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn pre_copy_runs_where_memory_is_tracked_and_is_refused_clearly_where_not() {
    use criu_swrk::PreDumpOptions;
    use criu_swrk::migrate::{PreCopyPolicy, pre_copy};
    let env = common::env();
    let target = env.ns_workload(16);
    let root = env.subdir("rounds");
    let tracked = env.criu.features().await.unwrap().mem_track;
    let rounds = pre_copy(&env.criu, &PreCopyPolicy::new().max_rounds(3), |n, _| {
        let dir = root.join(n.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        PreDumpOptions::new(target.pid).images_dir(dir)
    })
    .await;
    match rounds {
        Ok((_loop, report)) => {
            assert!(tracked, "pre-copy ran without memory tracking");
            assert!((1..=3).contains(&report.rounds.len()), "{report:?}");
        }
        Err(e) => {
            assert!(!tracked, "refused with memory tracking: {e}");
            assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
            let text = e.to_string();
            assert!(text.contains("CONFIG_MEM_SOFT_DIRTY"), "{text}");
            // Refused before any pre-dump: nothing written, the tree untouched.
            assert!(files_in(&root.join("1")).is_empty(), "{text}");
            // A pre-copy migration is refused as clearly, before it connects anywhere
            // (nothing listens at this address).
            let err = Migration::new(
                target.pid,
                "127.0.0.1:9".parse().unwrap(),
                Security::Insecure,
            )
            .pre_copy(PreCopyPolicy::default())
            .run(&env.criu)
            .await
            .unwrap_err();
            assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
            assert!(err.to_string().contains("CONFIG_MEM_SOFT_DIRTY"), "{err}");
        }
    }
    target.assert_alive_and_intact();
    common::assert_no_criu_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn post_copy_cut_while_pages_flow_resumes_the_source_and_ends_the_copy() {
    let env = common::env();
    let _pipes = common::PipeMaxSize::set(4 << 20);
    let host = Host::new();
    host.shape("400mbit");
    let pki = Pki::new("criu-swrk test CA");
    let root = env.subdir("incoming");
    let mut security = tls_args(&pki.side(&host.there));
    security.extend(["--deadline".into(), "12".into()]);
    let serve = host.serve(&root, &security);
    let target = env.ns_workload(256);
    let migration = Migration::new(target.pid, serve.addr, Security::Tls(pki.side("source")))
        .id("cut-lazy")
        .lazy(true)
        .deadline(Duration::from_secs(10));
    let criu = env.criu.clone();
    let started = Instant::now();
    let migration = tokio::spawn(async move { migration.run(&criu).await });
    // The copy runs there with part of its memory; then the link goes silent.
    let copy = {
        let t = &target;
        tokio::task::block_in_place(|| copy_running(t, Duration::from_secs(30)))
    };
    assert!(!migration.is_finished(), "the pages were all there already");
    ip(&["link", "set", &host.veth, "down"]);
    let err = migration.await.unwrap().unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            err,
            Error::Migration {
                source_tree: RequestState::RolledBack,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(25), "took {took:?}: {err}");
    // criu resumed the source tree as it was frozen.
    target.assert_alive_and_intact();
    // The destination, silent source past its deadline, ended its copy.
    let said = serve.result();
    assert_eq!(said["event"], "failed", "{said}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while target.copies().contains(&copy) {
        assert!(Instant::now() < deadline, "the copy {copy} still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    common::assert_no_criu_left().await;
    drop(host);
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn one_destination_takes_two_migrations_at_once() {
    let env = common::env();
    let _pipes = common::PipeMaxSize::set(4 << 20);
    let root = env.subdir("incoming");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dest = Destination::new(env.criu.clone(), &root, Security::Insecure);
    let served = tokio::spawn(async move {
        let mut arrivals = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let dest = dest.clone();
            arrivals.push(tokio::spawn(
                async move { dest.serve_connection(tcp).await },
            ));
        }
        let mut out = Vec::new();
        for a in arrivals {
            out.push(a.await.unwrap().unwrap());
        }
        out
    });
    let mut a = env.ns_workload(32);
    let mut b = env.ns_workload(32);
    let (ra, rb) = tokio::join!(
        Migration::new(a.pid, addr, Security::Insecure)
            .id("a")
            .run(&env.criu),
        Migration::new(b.pid, addr, Security::Insecure)
            .id("b")
            .lazy(true)
            .run(&env.criu),
    );
    let (ma, mb) = (ra.unwrap(), rb.unwrap());
    let arrived = served.await.unwrap();
    let mut ids: Vec<&str> = arrived.iter().map(|x| x.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"]);
    assert!(arrived.iter().all(|x| x.confirmed));
    a.reap_dumped();
    b.reap_dumped();
    a.restored(ma.pid).assert_alive_and_intact();
    b.restored(mb.pid).assert_alive_and_intact();
    common::assert_no_criu_left().await;
}
