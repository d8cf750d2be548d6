//! TCP servers against real criu (root, criu >= 4.2): a listening redis with its
//! data, an established connection kept across dump and restore with the client
//! outside the tree, a restore onto a port someone else holds, and refusals that
//! must name their cause.
//!
//! Outside CI these tests skip when root or criu is missing; with `CI=true` they fail.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::net::{self, CounterClient, NftLock, Redis, Reply, RestoredTree};
use criu_swrk::{DumpOptions, Error, NetworkLock, RestoreOptions};

/// How many keys the redis test loads.
const KEYS: usize = 100_000;

/// A client's read timeout, with room to spare: during the outage criu's lock
/// drops the connection's packets, so a client that sent then stalls in TCP
/// retransmits and resumes about 0.3 s after the restore (measured here).
const ANSWER: Duration = Duration::from_secs(8);

/// redis's `DEBUG DIGEST`: a hash of the whole data set.
fn digest(r: &mut Redis) -> String {
    match r.cmd(&["DEBUG", "DIGEST"]).unwrap() {
        Reply::Status(d) => d,
        other => panic!("DEBUG DIGEST answered {other:?}"),
    }
}

/// Asserts `err` is criu's refusal and that one of criu's error lines, as the
/// refusal carries it and as its Display shows it, holds each of `causes`.
fn assert_refused_with(err: &Error, causes: &[&str]) {
    let text = err.to_string();
    eprintln!("--- refusal ---\n{text}\n---");
    let refusal = err
        .refusal()
        .unwrap_or_else(|| panic!("expected a refusal, got: {text}"));
    let line = refusal
        .log_errors
        .iter()
        .find(|l| causes.iter().all(|c| l.contains(c)))
        .unwrap_or_else(|| panic!("no error line says {causes:?}: {text}"));
    assert!(
        text.contains(line.as_str()),
        "Display lacks {line:?}: {text}"
    );
}

/// Connects a counter client and reads counters `1..=n`; returns the client once
/// the server holds its end of the connection.
fn client_with_counters(server_pid: i32, port: u16, n: u64) -> CounterClient {
    let mut client = CounterClient::connect(port, ANSWER);
    for want in 1..=n {
        assert_eq!(client.next().unwrap(), want);
    }
    let ours = client.local_port();
    assert!(
        net::tcp_sockets_of(server_pid)
            .iter()
            .any(|s| s.state == net::ESTABLISHED && s.local_port == port && s.remote_port == ours),
        "server {server_pid} should hold its end of our connection from port {ours}"
    );
    client
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn redis_listening_with_100k_keys_comes_back_with_its_data() {
    let env = common::env();
    let port = net::free_port();
    let mut server = net::redis_server(port);

    let t = Instant::now();
    let before = {
        let mut r = Redis::connect(port).unwrap();
        r.set_many(KEYS).unwrap();
        assert_eq!(r.cmd(&["DBSIZE"]).unwrap(), Reply::Int(KEYS as i64));
        digest(&mut r)
    };
    eprintln!("loaded {KEYS} keys in {:?}", t.elapsed());
    assert_ne!(before, "0".repeat(40), "the digest of an empty data set");
    // Our connections are closed; redis drops its ends a moment later. A listening
    // socket alone needs no tcp_established.
    net::wait_only_listeners(server.pid);

    let images = env.subdir("images");
    let t = Instant::now();
    env.criu
        .dump(DumpOptions::new(server.pid).images_dir(&images))
        .await
        .unwrap();
    eprintln!("dump: {:?}", t.elapsed());
    server.reap_dumped();

    let t = Instant::now();
    let out = env
        .criu
        .restore(RestoreOptions::new().images_dir(&images))
        .await
        .unwrap();
    eprintln!("restore: {:?}", t.elapsed());
    let restored = RestoredTree { pid: out.pid };
    assert_eq!(restored.pid, server.pid, "criu restores the original pid");

    // A new client is served from the restored data set.
    let mut r = Redis::connect(port).unwrap();
    assert_eq!(digest(&mut r), before, "the restored data set differs");
    assert_eq!(r.cmd(&["DBSIZE"]).unwrap(), Reply::Int(KEYS as i64));
    assert_eq!(
        r.cmd(&["GET", "key:4242"]).unwrap(),
        Reply::Bulk(Some(
            format!("value:4242:{}", 4242usize.wrapping_mul(2_654_435_761)).into_bytes()
        ))
    );
    assert_eq!(
        r.cmd(&["SET", "after", "restore"]).unwrap(),
        Reply::Status("OK".into())
    );
    assert_eq!(
        r.cmd(&["GET", "after"]).unwrap(),
        Reply::Bulk(Some(b"restore".to_vec()))
    );
    drop(r);
    drop(restored);
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn an_established_connection_survives_dump_and_restore() {
    let env = common::env();
    let port = net::free_port();
    let mut server = net::counter_server(port);
    let mut client = client_with_counters(server.pid, port, 3);
    let client_port = client.local_port();

    let images = env.subdir("images");
    let t = Instant::now();
    env.criu
        .dump(
            DumpOptions::new(server.pid)
                .images_dir(&images)
                .tcp_established(true)
                .network_lock(NetworkLock::Nftables),
        )
        .await
        .unwrap();
    eprintln!("dump: {:?}", t.elapsed());
    let lock = NftLock::of_dump(&images);
    assert!(
        lock.exists(),
        "the connection should be locked until the restore: no table {}",
        lock.table
    );
    server.reap_dumped();

    let t = Instant::now();
    let out = env
        .criu
        .restore(
            RestoreOptions::new()
                .images_dir(&images)
                .tcp_established(true)
                .network_lock(NetworkLock::Nftables),
        )
        .await
        .unwrap();
    let restored_at = Instant::now();
    eprintln!("restore: {:?}", t.elapsed());
    let restored = RestoredTree { pid: out.pid };
    assert!(!lock.exists(), "the restore should remove {}", lock.table);

    // The same connection: our end kept its port, and the restored server holds the
    // other end.
    assert_eq!(client.local_port(), client_port);
    assert!(
        net::tcp_sockets_of(restored.pid)
            .iter()
            .any(|s| s.state == net::ESTABLISHED
                && s.local_port == port
                && s.remote_port == client_port),
        "restored {} should hold the server's end of our connection: {:?}",
        restored.pid,
        net::tcp_sockets_of(restored.pid)
    );
    for want in 4..=6 {
        assert_eq!(client.next().unwrap(), want, "the counter should go on");
    }
    eprintln!(
        "first answers after the restore within {:?}",
        restored_at.elapsed()
    );
    drop(client);
    drop(restored);
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn restore_onto_a_held_port_fails_with_the_cause_then_succeeds_once_freed() {
    let env = common::env();
    let port = net::free_port();
    let mut server = net::counter_server(port);
    drop(client_with_counters(server.pid, port, 1));
    net::wait_only_listeners(server.pid);

    let images = env.subdir("images");
    env.criu
        .dump(DumpOptions::new(server.pid).images_dir(&images))
        .await
        .unwrap();
    server.reap_dumped();

    let blocker = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let err = env
        .criu
        .restore(RestoreOptions::new().images_dir(&images))
        .await
        .unwrap_err();
    assert_refused_with(
        &err,
        &["inet: Can't bind inet socket", "Address already in use"],
    );
    // What criu forked for the restore holds no socket now (gone, or a zombie).
    assert_eq!(net::tcp_sockets_of(server.pid), []);

    drop(blocker);
    // criu may leave the task it forked as a zombie named criu, holding the pid.
    common::reap_orphaned_criu().await;
    let out = env
        .criu
        .restore(RestoreOptions::new().images_dir(&images))
        .await
        .unwrap();
    let restored = RestoredTree { pid: out.pid };
    // Intact: the counter goes on where the original stopped.
    let mut client = CounterClient::connect(port, ANSWER);
    assert_eq!(client.next().unwrap(), 2);
    drop(client);
    drop(restored);
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn restore_of_an_established_connection_without_tcp_established_names_the_socket() {
    let env = common::env();
    let port = net::free_port();
    let mut server = net::counter_server(port);
    let mut client = client_with_counters(server.pid, port, 2);

    let images = env.subdir("images");
    env.criu
        .dump(
            DumpOptions::new(server.pid)
                .images_dir(&images)
                .tcp_established(true)
                .network_lock(NetworkLock::Nftables),
        )
        .await
        .unwrap();
    let lock = NftLock::of_dump(&images);
    server.reap_dumped();

    let err = env
        .criu
        .restore(
            RestoreOptions::new()
                .images_dir(&images)
                .network_lock(NetworkLock::Nftables),
        )
        .await
        .unwrap_err();
    assert_refused_with(&err, &["inet: Connected TCP socket in image"]);
    assert!(
        err.to_string()
            .contains("hint: the tree was dumped with established TCP"),
        "{err}"
    );
    assert!(
        lock.exists(),
        "a failed restore leaves the lock: {}",
        lock.table
    );

    // Nothing was lost: with the option the same images restore, and the connection
    // goes on.
    // No network_lock here: criu takes the method from the images (inventory.img)
    // and removes the table the dump made.
    common::reap_orphaned_criu().await;
    let out = env
        .criu
        .restore(
            RestoreOptions::new()
                .images_dir(&images)
                .tcp_established(true),
        )
        .await
        .unwrap();
    let restored = RestoredTree { pid: out.pid };
    assert!(!lock.exists(), "the restore should remove {}", lock.table);
    assert_eq!(client.next().unwrap(), 3);
    drop(client);
    drop(restored);
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn dump_with_the_default_iptables_lock_names_the_missing_binary_and_keeps_the_target() {
    let env = common::env();
    let port = net::free_port();
    let mut server = net::counter_server(port);
    let mut client = client_with_counters(server.pid, port, 2);

    let images = env.subdir("images");
    // No leave_running: only the rollback keeps the server alive.
    let err = env
        .criu
        .dump(
            DumpOptions::new(server.pid)
                .images_dir(&images)
                .tcp_established(true),
        )
        .await
        .unwrap_err();
    // The decisive line is the shell's, which criu runs iptables through; criu's
    // own lines follow it.
    assert_refused_with(&err, &["iptables: not found"]);
    assert!(err.to_string().contains("--network-lock nftables"), "{err}");
    assert!(
        err.to_string().contains("Iptables configuration failed"),
        "{err}"
    );
    assert!(
        err.request_state().is_some_and(|s| s.target_unchanged()),
        "{err}"
    );

    assert!(server.running(), "the server should run on");
    assert_eq!(
        client.next().unwrap(),
        3,
        "the connection should work as before"
    );
    assert!(
        !images.join("inventory.img").exists(),
        "a refused dump leaves no images"
    );
    drop(client);
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn shell_job_restored_without_shell_job_names_the_cause() {
    let env = common::env();
    let mut job = env.shell_job_workload(8);

    // Without shell_job criu refuses to dump it in the first place.
    let err = env
        .criu
        .dump(DumpOptions::new(job.pid).images_dir(env.subdir("plain")))
        .await
        .unwrap_err();
    assert_refused_with(
        &err,
        &[&format!(
            "The root process {} is not a session leader",
            job.pid
        )],
    );
    common::workload::assert_alive_and_intact(job.pid, &job.info).unwrap();

    let images = env.subdir("images");
    env.criu
        .dump(
            DumpOptions::new(job.pid)
                .images_dir(&images)
                .shell_job(true),
        )
        .await
        .unwrap();
    job.wait_reaped();
    assert!(job.shell_running(), "the session leader should live on");

    let err = env
        .criu
        .restore(RestoreOptions::new().images_dir(&images))
        .await
        .unwrap_err();
    // criu would recreate the session leader (the shell) as a helper task with its
    // pid, which the shell still holds.
    assert_refused_with(
        &err,
        &[&format!("Can't fork for {}: File exists", job.leader)],
    );
    assert!(job.shell_running(), "the session leader should live on");

    common::reap_orphaned_criu().await;
    let out = env
        .criu
        .restore(RestoreOptions::new().images_dir(&images).shell_job(true))
        .await
        .unwrap();
    let restored = common::Restored {
        pid: out.pid,
        info: job.info,
    };
    restored.assert_alive_and_intact();
    drop(restored);
    common::assert_no_criu_left().await;
}
