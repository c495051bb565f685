//! Differential test against hyper, an independent HTTP/1.1 implementation.
//!
//! Each body is sent after a `POST` head with `Transfer-Encoding: chunked` to a hyper http1
//! server over `tokio::io::duplex`; the service collects the body with
//! `http_body_util::BodyExt::collect` (data and trailers). For generated valid bodies, hyper's
//! bytes must equal the concatenation of our chunks and its trailers ours. For edge and
//! invalid bodies, a committed table records whether each side accepts; every disagreement is
//! decided in a comment on the text of RFC 9112 §7.1 (or PROTOCOL.md where the RFC leaves a
//! choice), so a change in either implementation shows up here.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chunkgate::codec::chunked::{decode_all, ChunkedEncoder, Field, Frame, Limits};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

/// What one side made of a body: the payload bytes and the trailer fields, or a refusal.
type Outcome = Result<(Bytes, Vec<(String, Vec<u8>)>), String>;

/// Let hyper read `body` as a request body and report what its `Incoming` delivered.
async fn hyper_reads(body: &[u8]) -> Outcome {
    let (mut client, server) = tokio::io::duplex(64 << 10);
    let (tx, rx) = oneshot::channel::<Outcome>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let service = service_fn(move |req: Request<Incoming>| {
        let tx = Arc::clone(&tx);
        async move {
            let outcome = match req.into_body().collect().await {
                Ok(collected) => {
                    let trailers = collected
                        .trailers()
                        .map(|t| {
                            t.iter()
                                .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default();
                    Ok((collected.to_bytes(), trailers))
                }
                Err(e) => Err(e.to_string()),
            };
            if let Some(tx) = tx.lock().expect("lock").take() {
                let _ = tx.send(outcome);
            }
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    let conn = tokio::spawn(
        http1::Builder::new()
            .half_close(true)
            .serve_connection(TokioIo::new(server), service),
    );
    let mut wire =
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: upstream\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    wire.extend_from_slice(body);
    let writer = tokio::spawn(async move {
        // hyper may stop reading at an error: a failed write is part of that outcome.
        let _ = client.write_all(&wire).await;
        let _ = client.shutdown().await;
        // Keep the read side open until hyper is done with the connection.
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(client);
    });
    let outcome = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("hyper answered within 5 s")
        .unwrap_or_else(|_| Err("connection closed before the body".to_owned()));
    writer.abort();
    conn.abort();
    outcome
}

/// What our decoder made of `body` under the default limits.
fn we_read(body: &[u8]) -> Outcome {
    let frames = decode_all(body, Limits::default()).map_err(|e| e.to_string())?;
    let mut data = BytesMut::new();
    let mut trailers = Vec::new();
    for f in frames {
        match f {
            Frame::Data(d) => data.extend_from_slice(&d),
            Frame::Trailers(fields) => {
                trailers = fields
                    .into_iter()
                    .map(|f| {
                        let name = String::from_utf8_lossy(&f.name).to_ascii_lowercase();
                        (name, f.value.to_vec())
                    })
                    .collect();
            }
            Frame::End => {}
        }
    }
    Ok((data.freeze(), trailers))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Who accepts a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accepts {
    Both,
    Neither,
    /// hyper accepts, we refuse: the comment on the case says why we are right.
    HyperOnly,
    /// We accept, hyper refuses: the comment on the case says why we are right.
    OursOnly,
}

struct Case {
    name: &'static str,
    body: Vec<u8>,
    expected: Accepts,
}

fn case(name: &'static str, body: impl AsRef<[u8]>, expected: Accepts) -> Case {
    Case {
        name,
        body: body.as_ref().to_vec(),
        expected,
    }
}

fn cases() -> Vec<Case> {
    use Accepts::*;
    let big = {
        let mut b = b"100001\r\n".to_vec();
        b.extend_from_slice(&vec![b'x'; 0x100001]);
        b.extend_from_slice(b"\r\n0\r\n\r\n");
        b
    };
    let mut ext_flood = b"1;aaaaaaaaaaaaaaa\r\nx\r\n".repeat(1200);
    ext_flood.extend_from_slice(b"0\r\n\r\n");
    let zeros = |n: usize, rest: &[u8]| {
        let mut b = vec![b'0'; n];
        b.extend_from_slice(rest);
        b
    };
    vec![
        case("simple", "3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n", Both),
        case("empty_body", "0\r\n\r\n", Both),
        case("leading_zeros", "0003\r\nabc\r\n000\r\n\r\n", Both),
        case(
            "size_digits_at_limit",
            zeros(63, b"3\r\nabc\r\n0\r\n\r\n"),
            Both,
        ),
        // RFC 9112 §7.1 allows any number of leading zeros (`chunk-size = 1*HEXDIG`) but lets a
        // recipient bound what it reads; PROTOCOL.md rule 10 bounds a size at 64 digits,
        // leading zeros included (`Limits::max_size_digits`), so a peer cannot pad every
        // one-byte chunk with kilobytes of zeros. hyper counts only the value and accepts.
        case(
            "size_digits_over_limit",
            zeros(64, b"3\r\nabc\r\n0\r\n\r\n"),
            HyperOnly,
        ),
        case("upper_hex", "A\r\n0123456789\r\n0\r\n\r\n", Both),
        case(
            "valid_extensions",
            "3;a=1;b;c=\"x y\"\r\nabc\r\n0;z\r\n\r\n",
            Both,
        ),
        case("extension_bws", "3 ; a = b\r\nabc\r\n0\r\n\r\n", Both),
        case("trailers", "1\r\na\r\n0\r\nX-Sum: abc\r\n\r\n", Both),
        // RFC 9110 §5.3: a field name may repeat when the field is a list or, like
        // `Set-Cookie`, is defined to repeat; neither side merges or refuses them.
        case(
            "trailer_repeated_set_cookie",
            "1\r\na\r\n0\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
            Both,
        ),
        case(
            "payload_with_framing_bytes",
            "5\r\n0\r\n\r\n\r\n0\r\n\r\n",
            Both,
        ),
        // RFC 9112 §7.1: `chunk = chunk-size [ chunk-ext ] CRLF` and chunk-ext starts with
        // `BWS ";"`. Whitespace after the size is allowed only as the BWS before a `;`. hyper
        // skips any whitespace after the size (its SizeLws state) and accepts this body; we
        // refuse it. A proxy that accepted it would forward a size line the next hop may
        // read differently.
        case("size_trailing_space", "3 \r\nabc\r\n0\r\n\r\n", HyperOnly),
        case("size_trailing_tab", "3\t\r\nabc\r\n0\r\n\r\n", HyperOnly),
        // RFC 9112 §7.1.1: `chunk-ext-name = token`, so `;` must be followed by a token.
        // hyper ignores everything after `;` up to CR (its Extension state) and accepts an
        // empty or malformed extension; we validate the grammar (PROTOCOL.md rule 11).
        case("extension_empty", "3;\r\nabc\r\n0\r\n\r\n", HyperOnly),
        case(
            "extension_space_in_name",
            "3;a b\r\nabc\r\n0\r\n\r\n",
            HyperOnly,
        ),
        case(
            "extension_trailing_space",
            "3;a=b \r\nabc\r\n0\r\n\r\n",
            HyperOnly,
        ),
        case(
            "extension_unterminated_quote",
            "3;a=\"x\r\nabc\r\n0\r\n\r\n",
            HyperOnly,
        ),
        // A control byte is neither tchar nor qdtext (RFC 9110 §5.6.2, §5.6.4).
        case("extension_ctl", "3;a=\x01\r\nabc\r\n0\r\n\r\n", HyperOnly),
        case(
            "extension_nul_in_quoted",
            "3;a=\"\x00\"\r\nabc\r\n0\r\n\r\n",
            HyperOnly,
        ),
        // Both refuse a bare LF in an extension: the 2025 line-ending smuggling vectors.
        case("extension_bare_lf", "2;\nxx\r\n0\r\n\r\n", Neither),
        case("extension_value_bare_lf", "2;a=b\nxx\r\n0\r\n\r\n", Neither),
        case("extension_bare_cr", "2;a\rxx\r\n0\r\n\r\n", Neither),
        case("size_bare_lf", "3\nabc\r\n0\r\n\r\n", Neither),
        case("size_bare_cr", "3\rabc\r\n0\r\n\r\n", Neither),
        case("size_cr_cr_lf", "3\r\r\nabc\r\n0\r\n\r\n", Neither),
        case("empty_size_line", "\r\nabc\r\n0\r\n\r\n", Neither),
        case("size_plus_sign", "+3\r\nabc\r\n0\r\n\r\n", Neither),
        case("size_0x_prefix", "0x3\r\nabc\r\n0\r\n\r\n", Neither),
        case("size_leading_space", " 3\r\nabc\r\n0\r\n\r\n", Neither),
        case("size_underscore", "1_0\r\nabc\r\n0\r\n\r\n", Neither),
        case("size_overflow_wraps", "10000000000000000\r\n\r\n", Neither),
        case("data_bare_lf", "3\r\nabc\n0\r\n\r\n", Neither),
        case("data_no_crlf", "3\r\nabcXX0\r\n\r\n", Neither),
        case("data_longer", "3\r\nabcd\r\n0\r\n\r\n", Neither),
        case("eof_in_data", "3\r\nab", Neither),
        case("eof_before_last_chunk", "3\r\nabc\r\n", Neither),
        case("eof_in_trailers", "0\r\nX-A: b\r\n", Neither),
        case("last_chunk_bare_lf", "0\n\r\n", Neither),
        case("trailer_bare_lf", "0\r\nX-A: b\n\r\n", Neither),
        // RFC 9112 §7.1 ends the trailer section with CRLF; hyper waits for it here and the
        // input ends, so both refuse.
        case("end_bare_lf", "0\r\n\n", Neither),
        // RFC 9112 §5.2: obs-fold is deprecated and a recipient may reject it; PROTOCOL.md
        // rule 7 rejects it in fields and trailers.
        case("trailer_obs_fold", "0\r\nX-A: a\r\n b\r\n\r\n", Neither),
        case(
            "trailer_space_before_colon",
            "0\r\nX-A : b\r\n\r\n",
            Neither,
        ),
        // RFC 9110 §6.5.1: fields that describe framing or routing cannot be processed as
        // trailers; PROTOCOL.md rule 13 makes them an error so no hop can merge them into the
        // head. hyper hands them on.
        case(
            "trailer_content_length",
            "0\r\nContent-Length: 5\r\n\r\n",
            HyperOnly,
        ),
        case(
            "trailer_transfer_encoding",
            "0\r\nTransfer-Encoding: chunked\r\n\r\n",
            HyperOnly,
        ),
        case("trailer_host", "0\r\nHost: evil.example\r\n\r\n", HyperOnly),
        // A chunk over our configured largest chunk (1 MiB by default) is refused as soon as
        // its size line is read (PROTOCOL.md rule 10, a 413 on a request): a policy limit,
        // not a grammar rule. hyper has no such limit and streams it.
        case("chunk_over_limit", big, HyperOnly),
        // CVE-2023-39326: both cap extension bytes per body at 16 KiB (1,200 lines of 16
        // extension bytes is 19,200), so a flood of extensions costs the sender, not us.
        case("extension_flood", ext_flood, Neither),
    ]
}

#[test]
fn hyper_diff_edge_bodies_match_the_committed_table() {
    let rt = runtime();
    let mut mismatches = Vec::new();
    for c in cases() {
        let theirs = rt.block_on(hyper_reads(&c.body));
        let ours = we_read(&c.body);
        let got = match (theirs.is_ok(), ours.is_ok()) {
            (true, true) => Accepts::Both,
            (false, false) => Accepts::Neither,
            (true, false) => Accepts::HyperOnly,
            (false, true) => Accepts::OursOnly,
        };
        if got == Accepts::Both {
            assert_eq!(
                theirs, ours,
                "{}: both accept, so the bytes must agree",
                c.name
            );
        }
        if got != c.expected {
            mismatches.push(format!(
                "{}: expected {:?}, got {got:?} (hyper: {theirs:?}, ours: {ours:?})",
                c.name, c.expected
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2000),
        "[가-힣 🦀✨a-z]{0,50}".prop_map(String::into_bytes),
        "[a-z ]{0,30}".prop_map(|s| format!("data: {{\"content\":\"{s}\"}}\n\n").into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hyper_diff_generated_valid_bodies_agree(
        payloads in prop::collection::vec(payload(), 0..10),
        trailer_value in prop::option::of("[a-z0-9]{1,12}"),
    ) {
        let mut enc = ChunkedEncoder::new();
        let mut wire = BytesMut::new();
        for p in &payloads {
            enc.encode_chunk(p, &mut wire);
        }
        let trailers: Vec<Field> = trailer_value
            .iter()
            .map(|v| Field { name: Bytes::from_static(b"x-checksum"), value: Bytes::from(v.clone()) })
            .collect();
        enc.encode_end(&trailers, &mut wire);
        let ours = we_read(&wire).expect("our decoder accepts what our encoder wrote");
        prop_assert_eq!(&ours.0[..], &payloads.concat()[..]);
        let theirs = runtime().block_on(hyper_reads(&wire));
        prop_assert_eq!(theirs, Ok(ours));
    }
}
