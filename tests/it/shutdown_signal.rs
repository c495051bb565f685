//! SIGTERM on the real binary with 100 streams in flight: every stream completes with a clean
//! end, new connections are refused while draining, and the process exits 0.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_chunkgate");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never started listening");
        thread::sleep(Duration::from_millis(20));
    }
}

/// One streaming completion through the proxy, read to EOF.
fn stream_once(proxy: SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect(proxy).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let body = r#"{"model":"mock","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn sigterm_drains_100_streams_and_exits_zero() {
    let up = free_port();
    let listen = free_port();
    let _mock = Proc(
        Command::new(BIN)
            .args(["mock-upstream", "--listen", &up.to_string()])
            .args(["--tokens", "20", "--gap-ms", "50"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mock"),
    );
    wait_listening(up);
    let mut proxy = Proc(
        Command::new(BIN)
            .args(["serve", "--listen", &listen.to_string()])
            .args([
                "--upstream",
                &format!("http://{up}"),
                "--drain-timeout",
                "20s",
            ])
            .args(["--no-access-log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn proxy"),
    );
    wait_listening(listen);

    let clients: Vec<_> = (0..100)
        .map(|_| thread::spawn(move || stream_once(listen)))
        .collect();
    // Let every stream start (20 tokens 50 ms apart: about a second each), then ask to stop.
    thread::sleep(Duration::from_millis(400));
    let status = Command::new("kill")
        .args(["-TERM", &proxy.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    thread::sleep(Duration::from_millis(100));
    assert!(
        TcpStream::connect(listen).is_err(),
        "new connections must be refused while draining"
    );

    let mut complete = 0;
    for c in clients {
        let out = c.join().expect("client thread");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("data: [DONE]"), "stream cut: {text}");
        assert!(out.ends_with(b"\r\n0\r\n\r\n"), "no clean end: {text}");
        complete += 1;
    }
    assert_eq!(complete, 100, "streams lost at shutdown");

    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = proxy.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy did not exit after draining"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "exit status {code:?}");
}

#[test]
fn access_lines_reach_stdout_whole_by_exit() {
    let up = free_port();
    let listen = free_port();
    let _mock = Proc(
        Command::new(BIN)
            .args(["mock-upstream", "--listen", &up.to_string()])
            .args(["--tokens", "3", "--gap-ms", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mock"),
    );
    wait_listening(up);
    let mut proxy = Proc(
        Command::new(BIN)
            .args(["serve", "--listen", &listen.to_string()])
            .args(["--upstream", &format!("http://{up}")])
            .args(["--log-format", "json"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn proxy"),
    );
    wait_listening(listen);
    for _ in 0..20 {
        let out = stream_once(listen);
        assert!(out.ends_with(b"\r\n0\r\n\r\n"));
    }
    let status = Command::new("kill")
        .args(["-TERM", &proxy.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut stdout = String::new();
    proxy
        .0
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    let access: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON object a line"))
        .filter(|v| v["target"] == "access")
        .collect();
    assert_eq!(access.len(), 20, "{stdout}");
    for line in &access {
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "exchange");
        assert_eq!(line["path"], "/v1/chat/completions");
        assert_eq!(line["status"], 200);
        assert_eq!(line["outcome"], "complete");
        // The stream tap read the mock's answer.
        assert_eq!(line["model"], "mock", "{line}");
        assert_eq!(line["finish_reason"], "stop", "{line}");
        assert!(line["ttft_ms"].as_f64().is_some(), "{line}");
        assert!(line["duration_ms"].as_f64().is_some(), "{line}");
        assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
}
