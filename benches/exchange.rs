//! The driver's own cost per request, against an in-process peer that answers at once
//! (criu itself takes tens of milliseconds per request; this measures what we add).
//!
//! `cargo bench --bench exchange`. The side-by-side comparison with `criu dump` under
//! `xargs -P` is `scripts/bench` (root, real criu).

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use tokio_seqpacket::UnixSeqpacket;

use criu_swrk::proto::{CriuNotify, CriuReq, CriuReqType, CriuResp, CriuVersion};
use criu_swrk::{DumpOptions, Session};

fn resp(ty: CriuReqType) -> CriuResp {
    CriuResp {
        r#type: ty as i32,
        success: true,
        ..Default::default()
    }
}

/// A peer that answers VERSION queries until the driver closes its end.
async fn version_peer(sock: UnixSeqpacket) {
    let mut buf = vec![0u8; 64 * 1024];
    let answer = CriuResp {
        version: Some(CriuVersion {
            major_number: 4,
            minor_number: 1,
            ..Default::default()
        }),
        ..resp(CriuReqType::Version)
    }
    .encode_to_vec();
    while let Ok(info) = sock.recv(&mut buf).await {
        if info.bytes_read() == 0 {
            break;
        }
        sock.send(&answer).await.unwrap();
    }
}

/// A peer that serves one dump as criu does: three hooks, each answered, then the
/// final response.
async fn dump_peer(sock: UnixSeqpacket) {
    let mut buf = vec![0u8; 64 * 1024];
    let info = sock.recv(&mut buf).await.unwrap();
    let req = CriuReq::decode(&buf[..info.bytes_read()]).unwrap();
    assert_eq!(req.r#type(), CriuReqType::Dump);
    for hook in ["pre-dump", "query-ext-files", "post-dump"] {
        let notify = CriuResp {
            notify: Some(CriuNotify {
                script: Some(hook.into()),
                pid: None,
            }),
            ..resp(CriuReqType::Notify)
        };
        sock.send(&notify.encode_to_vec()).await.unwrap();
        sock.recv(&mut buf).await.unwrap();
    }
    sock.send(&resp(CriuReqType::Dump).encode_to_vec())
        .await
        .unwrap();
}

fn exchange(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    c.bench_function("version query (keep_open round trip)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let (ours, theirs) = UnixSeqpacket::pair().unwrap();
                tokio::spawn(version_peer(theirs));
                let mut session = Session::from_fd(ours.into()).expect("a seqpacket socket");
                let start = Instant::now();
                for _ in 0..iters {
                    session.version().await.unwrap();
                }
                start.elapsed()
            })
        })
    });

    let images = tempfile::tempdir().unwrap();
    c.bench_function(
        "dump exchange (request, 3 hooks, response, stats read)",
        |b| {
            b.to_async(&rt).iter(|| {
                let dir = images.path().to_path_buf();
                async move {
                    let (ours, theirs) = UnixSeqpacket::pair().unwrap();
                    let peer = tokio::spawn(dump_peer(theirs));
                    let out = Session::from_fd(ours.into())
                        .expect("a seqpacket socket")
                        .dump(DumpOptions::new(999_999).images_dir(dir))
                        .await
                        .unwrap();
                    peer.await.unwrap();
                    out
                }
            })
        },
    );
}

criterion_group!(benches, exchange);
criterion_main!(benches);
