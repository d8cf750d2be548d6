//! Bytes to messages and back, and what an incoming message means for the request in
//! flight. Pure: no I/O, unit-tested directly.

use std::os::fd::OwnedFd;

use prost::Message;

use crate::error::{Error, Result};
pub(crate) use crate::kind::RequestKind;
use crate::notify::{HOOK_NAMES, Notification};
use crate::proto::{CriuReq, CriuReqType, CriuResp};

/// Serializes a request into one datagram.
pub(crate) fn encode(req: &CriuReq) -> Vec<u8> {
    req.encode_to_vec()
}

/// The answer to a notification.
pub(crate) fn notify_answer(success: bool, externals: Vec<String>) -> CriuReq {
    CriuReq {
        r#type: CriuReqType::Notify as i32,
        notify_success: Some(success),
        opts: (!externals.is_empty()).then(|| crate::proto::CriuOpts {
            external: externals,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What a datagram from criu means while `kind` is in flight.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// criu reached a hook and waits for our answer.
    Notify(Notification),
    /// criu's final answer to the request (successful or not).
    Done(CriuResp),
}

/// Decodes one datagram and classifies it against the request in flight.
///
/// fds travel only with `orphan-pts-master` (or with hooks this crate does not know);
/// anywhere else they are a protocol error (and are closed).
pub(crate) fn classify(kind: RequestKind, bytes: &[u8], mut fds: Vec<OwnedFd>) -> Result<Incoming> {
    let resp = CriuResp::decode(bytes).map_err(|source| Error::Decode {
        what: "criu_resp",
        len: bytes.len(),
        source,
    })?;
    let ty = CriuReqType::try_from(resp.r#type).ok();
    if ty == Some(CriuReqType::Notify) {
        let Some(notify) = resp.notify else {
            return Err(Error::protocol(
                "a NOTIFY message with a hook name",
                "NOTIFY without a notify field",
            ));
        };
        let name = notify.script.unwrap_or_default();
        if name.is_empty() {
            return Err(Error::protocol(
                "a NOTIFY message with a hook name",
                "an empty hook name",
            ));
        }
        if fds.len() > 1 {
            return Err(Error::protocol(
                format!("at most one fd with {name}"),
                format!("{} fds", fds.len()),
            ));
        }
        let fd = fds.pop();
        return notification(&name, notify.pid, fd);
    }
    if !fds.is_empty() {
        return Err(Error::protocol(
            format!("no fd with the {} response", kind.wire_name()),
            format!("{} fds", fds.len()),
        ));
    }
    // criu answers a request it cannot serve ("Invalid req", "Bad req seq") with type
    // EMPTY and success = false: a refusal, not a protocol break.
    if ty == Some(kind.response_type()) || (ty == Some(CriuReqType::Empty) && !resp.success) {
        return Ok(Incoming::Done(resp));
    }
    Err(Error::protocol(
        format!("a {} response", kind.response_type().as_str_name()),
        match ty {
            Some(t) => format!("a {} response", t.as_str_name()),
            None => format!("unknown message type {}", resp.r#type),
        },
    ))
}

/// What a datagram [`classify`] rejected still says about criu's state.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Peek {
    /// A NOTIFY: criu waits for an answer to this hook (its name, possibly empty).
    Notify(String),
    /// Any other message: criu's final answer.
    Final {
        /// Its `success`.
        success: bool,
    },
}

/// The notification criu sent as hook `name`, with the pid and fd it carried.
pub(crate) fn notification(name: &str, pid: Option<i32>, fd: Option<OwnedFd>) -> Result<Incoming> {
    let needs_pid = |pid: Option<i32>| {
        pid.ok_or_else(|| Error::protocol(format!("a pid with {name}"), "no pid"))
    };
    let n = match (name, fd) {
        ("orphan-pts-master", Some(master)) => Notification::OrphanPtsMaster { master },
        ("orphan-pts-master", None) => {
            return Err(Error::protocol("an fd with orphan-pts-master", "no fd"));
        }
        ("pre-stream", None) => Notification::PreStream,
        ("pre-dump", None) => Notification::PreDump,
        ("post-dump", None) => Notification::PostDump,
        ("pre-restore", None) => Notification::PreRestore,
        ("post-restore", None) => Notification::PostRestore {
            pid: needs_pid(pid)?,
        },
        ("network-lock", None) => Notification::NetworkLock,
        ("network-unlock", None) => Notification::NetworkUnlock,
        ("setup-namespaces", None) => Notification::SetupNamespaces {
            pid: needs_pid(pid)?,
        },
        ("post-setup-namespaces", None) => Notification::PostSetupNamespaces,
        ("pre-resume", None) => Notification::PreResume,
        ("post-resume", None) => Notification::PostResume,
        ("status-ready", None) => Notification::StatusReady,
        ("query-ext-files", None) => Notification::QueryExtFiles,
        (known, Some(_)) if HOOK_NAMES.contains(&known) => {
            return Err(Error::protocol(format!("no fd with {name}"), "an fd"));
        }
        (other, fd) => Notification::Other {
            name: other.to_owned(),
            pid,
            fd,
        },
    };
    Ok(Incoming::Notify(n))
}

/// For a datagram [`classify`] rejected: what it was, `None` when it does not decode.
pub(crate) fn peek(bytes: &[u8]) -> Option<Peek> {
    let resp = CriuResp::decode(bytes).ok()?;
    Some(if resp.r#type == CriuReqType::Notify as i32 {
        Peek::Notify(resp.notify.and_then(|n| n.script).unwrap_or_default())
    } else {
        Peek::Final {
            success: resp.success,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{CriuNotify, CriuOpts};

    fn resp(ty: CriuReqType, success: bool) -> CriuResp {
        CriuResp {
            r#type: ty as i32,
            success,
            ..Default::default()
        }
    }

    #[test]
    fn required_fields_are_encoded_even_at_their_defaults() {
        // criu's protobuf-c rejects a request without `type`, and a criu_opts without
        // images_dir_fd; prost must write both even when they hold default values.
        let req = CriuReq {
            r#type: CriuReqType::Empty as i32,
            opts: Some(CriuOpts::default()),
            ..Default::default()
        };
        let bytes = encode(&req);
        // field 1 varint 0; field 2 (opts) holding field 1 varint -1 (10 bytes).
        assert_eq!(&bytes[..2], &[0x08, 0x00]);
        assert_eq!(bytes[2], 0x12);
        let opts = CriuOpts::decode(&bytes[4..]).unwrap();
        assert_eq!(opts.images_dir_fd, -1);
        assert_eq!(opts.log_level(), 2);
        assert_eq!(bytes[4], 0x08, "images_dir_fd must be on the wire");
    }

    #[test]
    fn notify_is_classified_with_name_and_pid() {
        let mut r = resp(CriuReqType::Notify, true);
        r.notify = Some(CriuNotify {
            script: Some("post-restore".into()),
            pid: Some(42),
        });
        match classify(RequestKind::Restore, &r.encode_to_vec(), vec![]).unwrap() {
            Incoming::Notify(n) => {
                assert_eq!(n.name(), "post-restore");
                assert_eq!(n.pid(), Some(42));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_response_type_is_a_protocol_error() {
        let r = resp(CriuReqType::Restore, true);
        let err = classify(RequestKind::Dump, &r.encode_to_vec(), vec![]).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected a DUMP response, got a RESTORE response"),
            "{err}"
        );
    }

    #[test]
    fn empty_refusal_is_a_final_answer() {
        let mut r = resp(CriuReqType::Empty, false);
        r.cr_errmsg = Some("Bad req seq".into());
        assert!(matches!(
            classify(RequestKind::PreDump, &r.encode_to_vec(), vec![]).unwrap(),
            Incoming::Done(_)
        ));
    }

    #[test]
    fn page_server_child_is_answered_as_page_server() {
        let r = resp(CriuReqType::PageServer, true);
        assert!(matches!(
            classify(RequestKind::PageServerChild, &r.encode_to_vec(), vec![]).unwrap(),
            Incoming::Done(_)
        ));
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let err = classify(RequestKind::Version, &[0xff, 0xff, 0xff], vec![]).unwrap_err();
        assert!(matches!(err, Error::Decode { len: 3, .. }), "{err:?}");
    }

    #[test]
    fn notify_answer_carries_externals() {
        let req = notify_answer(true, vec!["file[123]:x".into()]);
        let back = CriuReq::decode(&*encode(&req)).unwrap();
        assert_eq!(back.notify_success, Some(true));
        assert_eq!(back.opts.unwrap().external, vec!["file[123]:x".to_string()]);
        let no = notify_answer(false, vec![]);
        assert!(no.opts.is_none());
    }
}
