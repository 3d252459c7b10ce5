//! Targets of the stasisd protocol (`stasis_client::protocol`): the client and the daemon
//! both decode every packet with `protocol::decode`, through `protocol::recv_fds`.

use stasis_client::protocol::{self, Message, ProtocolError, TransportError};
use std::os::fd::{AsFd, OwnedFd};

/// `protocol`: one packet. What decodes is exactly one well-formed message, so it encodes back
/// to the same bytes; its texts go through the helpers that handle them.
pub fn decode(data: &[u8]) {
    let Ok(msg) = protocol::decode(data) else {
        return;
    };
    let again = protocol::encode(&msg).expect("a decoded message encodes");
    assert_eq!(again, data, "decode is not the inverse of encode");
    match &msg {
        Message::Failure { code, message } => {
            let _ = protocol::parse_version_mismatch(message);
            let cut = Message::failure(*code, message.clone());
            assert_eq!(cut, msg, "a Failure that fits is not cut");
        }
        Message::Hello { version } | Message::Welcome { version } => {
            let text = protocol::version_mismatch_text(version, protocol::VERSION);
            assert!(
                protocol::parse_version_mismatch(&text).is_some(),
                "the mismatch text does not parse back"
            );
        }
        _ => {}
    }
    let _ = (msg.name(), msg.carries_fd());
}

/// A connected `SOCK_SEQPACKET` pair, as between a client and stasisd.
struct Pair {
    client: OwnedFd,
    daemon: OwnedFd,
    /// What a message carries as its descriptor.
    passed: std::fs::File,
}

fn pair() -> Pair {
    let scratch = crate::scratch::Scratch::new();
    let path = scratch.path().join("s");
    let listener = stasis_sys::socket::seqpacket_listen(&path, 1).expect("listen");
    let client = stasis_sys::socket::seqpacket_connect(&path).expect("connect");
    let daemon = stasis_sys::socket::accept(listener.as_fd()).expect("accept");
    let passed = std::fs::File::open("/dev/null").expect("opening /dev/null");
    Pair {
        client,
        daemon,
        passed,
    }
}

thread_local! {
    static PAIR: Pair = pair();
}

/// `protocol_recv`: `[n_fds][packet]`: the packet is sent with `n_fds % 16` descriptors through
/// a real connection and received by `protocol::recv_fds`, which must agree with
/// `protocol::decode` and accept a message only with the descriptors its kind carries.
pub fn recv(data: &[u8]) {
    let Some((&n, packet)) = data.split_first() else {
        return;
    };
    PAIR.with(|p| {
        let fds = vec![p.passed.as_fd(); usize::from(n % 16)];
        if stasis_sys::socket::send_with_fds(p.client.as_fd(), packet, &fds).is_err() {
            return;
        }
        match protocol::recv_fds(p.daemon.as_fd()) {
            Ok((msg, got)) => {
                assert_eq!(protocol::decode(packet), Ok(msg.clone()), "recv and decode");
                assert_eq!(got.len(), msg.fd_count(), "descriptors of {msg:?}");
                assert_eq!(fds.len(), msg.fd_count(), "descriptors sent");
            }
            Err(TransportError::Protocol(ProtocolError::TooLong { .. })) => {
                assert!(
                    packet.len() > protocol::MAX_MESSAGE,
                    "a short packet is too long"
                );
            }
            Err(TransportError::Closed) => assert!(packet.is_empty(), "closed"),
            Err(TransportError::Protocol(
                ProtocolError::WrongFdCount { .. } | ProtocolError::FdsTruncated,
            )) => {}
            Err(TransportError::Protocol(e)) => {
                assert_eq!(protocol::decode(packet), Err(e), "recv and decode errors");
            }
            Err(e @ TransportError::Io { .. }) => panic!("recv failed: {e}"),
        }
    });
}
