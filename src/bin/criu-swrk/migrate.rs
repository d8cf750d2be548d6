//! `serve` and `migrate`: live migration between two hosts.

use criu_swrk::Criu;
use std::io::IsTerminal;

use criu_swrk::migrate::{Destination, Migration, Progress, Security, TlsFiles};
use serde_json::json;

use crate::args::{MigrateArgs, SecurityArgs, ServeArgs};
use crate::report;

fn security(a: &SecurityArgs) -> Security {
    match (&a.tls_ca, &a.tls_cert, &a.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Security::Tls(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
        // clap requires all three, or --insecure.
        _ => Security::Insecure,
    }
}

/// Serves migrations until killed (or one, with `--once`).
pub async fn serve(criu: &Criu, a: ServeArgs, json: bool) -> bool {
    let listener = match tokio::net::TcpListener::bind(a.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("criu-swrk: serve: cannot listen on {}: {e}", a.listen);
            return false;
        }
    };
    let mut dest = Destination::new(criu.clone(), &a.images_root, security(&a.security));
    if let Some(d) = a.security.deadline {
        dest = dest.deadline(d);
    }
    if json {
        println!(
            "{}",
            json!({"event": "listening", "address": a.listen.to_string()})
        );
    } else {
        eprintln!("criu-swrk: serving migrations on {}", a.listen);
    }
    if a.once {
        return report_arrival(dest.accept(&listener).await, json);
    }
    // One task per migration: several sources may move trees here at once.
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let dest = dest.clone();
                tokio::spawn(async move { report_arrival(dest.serve_connection(tcp).await, json) });
            }
            Err(e) => {
                eprintln!("criu-swrk: serve: accepting: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Prints how one migration ended; whether it arrived.
fn report_arrival(result: criu_swrk::Result<criu_swrk::migrate::Arrival>, json: bool) -> bool {
    match result {
        Ok(arrived) => {
            if json {
                println!(
                    "{}",
                    json!({"event": "arrived", "id": arrived.id, "pid": arrived.pid,
                           "images_dir": arrived.images_dir, "confirmed": arrived.confirmed,
                           "file_bytes": arrived.file_bytes})
                );
            } else {
                println!(
                    "{}: arrived as pid {}{}",
                    arrived.id,
                    arrived.pid,
                    if arrived.confirmed {
                        ""
                    } else {
                        " (the source did not confirm)"
                    }
                );
            }
            true
        }
        Err(e) => {
            if json {
                println!("{}", json!({"event": "failed", "error": report::chain(&e)}));
            } else {
                eprintln!("criu-swrk: serve: {}", report::chain(&e));
            }
            false
        }
    }
}

/// Moves one tree.
pub async fn migrate(criu: &Criu, a: MigrateArgs, json: bool) -> bool {
    let mut m = Migration::new(a.pid, a.to, security(&a.security))
        .tcp_established(a.tcp_established)
        .shell_job(a.shell_job)
        .lazy(a.lazy);
    if let Some(bundle) = &a.bundle {
        match criu_swrk::oci::Container::from_bundle(bundle, a.pid) {
            Ok(c) => m = m.container(c),
            Err(e) => {
                eprintln!("criu-swrk: migrate {}: {}", a.pid, report::chain(&e));
                return false;
            }
        }
    }
    if a.pre_copy {
        m = m.pre_copy(criu_swrk::migrate::PreCopyPolicy::default());
    }
    if let Some(name) = a.server_name {
        m = m.server_name(name);
    }
    if let Some(id) = a.id {
        m = m.id(id);
    }
    if let Some(lock) = a.network_lock {
        m = m.network_lock(lock.into());
    }
    if let Some(d) = a.security.deadline {
        m = m.deadline(d);
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let shown = tokio::spawn(show_progress(rx, a.pid, json));
    let result = m.progress(tx).run(criu).await;
    // The sender went with the migration: the display ends with its last step.
    let _ = shown.await;
    match result {
        Ok(moved) => {
            if json {
                println!(
                    "{}",
                    json!({"ok": true, "pid": a.pid, "to": a.to.to_string(), "restored_pid": moved.pid,
                    "downtime_ms": moved.downtime.as_secs_f64() * 1e3,
                    "total_ms": moved.total.as_secs_f64() * 1e3,
                    "pages_bytes": moved.pages_bytes, "file_bytes": moved.file_bytes,
                    "phases_ms": {
                        "connect": moved.phases.connect.as_secs_f64() * 1e3,
                        "plan": moved.phases.plan.as_secs_f64() * 1e3,
                        "dump": moved.phases.dump.as_secs_f64() * 1e3,
                        "transfer": moved.phases.transfer.as_secs_f64() * 1e3,
                        "restore": moved.phases.restore.as_secs_f64() * 1e3,
                        "pages": moved.phases.pages.as_secs_f64() * 1e3,
                        "commit": moved.phases.commit.as_secs_f64() * 1e3,
                    }})
                );
            } else {
                println!(
                    "{}: moved to {} as pid {}; downtime {:?}, total {:?}, {} MiB of pages, {} KiB of other images",
                    a.pid,
                    a.to,
                    moved.pid,
                    moved.downtime,
                    moved.total,
                    moved.pages_bytes >> 20,
                    moved.file_bytes >> 10
                );
                let p = moved.phases;
                println!(
                    "  connect {:?}, plan {:?}, dump {:?}, transfer {:?}, restore {:?}, pages {:?}, commit {:?}",
                    p.connect, p.plan, p.dump, p.transfer, p.restore, p.pages, p.commit
                );
            }
            true
        }
        Err(e) => {
            let state = e.request_state();
            if json {
                println!(
                    "{}",
                    json!({"ok": false, "pid": a.pid, "error": report::chain(&e),
                           "source_tree": state.map(|s| format!("{s:?}"))})
                );
            } else {
                eprintln!("criu-swrk: migrate {}: {}", a.pid, report::chain(&e));
            }
            false
        }
    }
}

/// The migration's steps as they come: JSON lines on stdout with `--json`, a spinner
/// on stderr when it is a terminal, plain lines on stderr otherwise.
async fn show_progress(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Progress>,
    pid: i32,
    json: bool,
) {
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} migrate {prefix}: {msg} {elapsed}")
                .expect("a valid template"),
        );
        bar.set_prefix(pid.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    });
    let mut memory = 0u64;
    while let Some(step) = rx.recv().await {
        let (name, detail, text) = match step {
            Progress::Ready => ("ready", json!({}), "the destination is ready".to_owned()),
            Progress::Frozen { memory_bytes } => {
                memory = memory_bytes;
                (
                    "frozen",
                    json!({"memory_bytes": memory_bytes}),
                    format!("frozen, {} MiB to move", memory_bytes >> 20),
                )
            }
            Progress::Dumped => ("dumped", json!({}), "dumped".to_owned()),
            Progress::Sent { file_bytes } => (
                "sent",
                json!({"file_bytes": file_bytes}),
                format!("images sent ({} KiB)", file_bytes >> 10),
            ),
            Progress::Running { pid } => (
                "running",
                json!({"restored_pid": pid}),
                format!("runs there as pid {pid}; its pages follow"),
            ),
            Progress::Pages { bytes } => (
                "pages",
                json!({"bytes": bytes}),
                format!(
                    "runs there; pages {} of about {} MiB",
                    bytes >> 20,
                    memory.max(bytes) >> 20
                ),
            ),
            Progress::Restored { pid } => (
                "restored",
                json!({"restored_pid": pid}),
                format!("restored there as pid {pid}"),
            ),
            _ => continue,
        };
        if json {
            let mut line = json!({"event": "progress", "pid": pid, "step": name});
            if let (Some(o), Some(d)) = (line.as_object_mut(), detail.as_object()) {
                o.extend(d.clone());
            }
            println!("{line}");
        } else if let Some(bar) = &bar {
            bar.set_message(text);
        } else if name != "pages" {
            eprintln!("criu-swrk: migrate {pid}: {text}");
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}
