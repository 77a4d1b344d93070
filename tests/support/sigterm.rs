//! Shared by the `edge` and `origin` crates' `signals` tests (included with
//! `#[path]`): a server binary stops on SIGTERM as on Ctrl-C, what systemd
//! and Kubernetes send to stop a service.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Runs `exe args` in a fresh directory, waits for the stderr line
/// starting with `serving` (followed by `http://ADDR`), sends SIGTERM, and
/// checks that it exits 0 within 10 s, said it was shutting down, and
/// released its port.
pub async fn stops_on_sigterm(exe: &str, args: &[&str], serving: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(exe)
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the server starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let prefix = format!("{serving} http://");
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(l) = lines.next_line().await.expect("stderr line") {
            if let Some(rest) = l.strip_prefix(&prefix) {
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("the server said where it serves within 20 s")
    .expect("a serving line");
    let addr: std::net::SocketAddr = addr.parse().expect("address");
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());

    let pid = child.id().expect("pid").to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().await;
    assert!(sent.expect("kill runs").success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the server exited within 10 s of SIGTERM")
        .expect("wait");
    assert!(status.success(), "exit status {status}");
    let mut rest = String::new();
    while let Ok(Some(l)) = lines.next_line().await {
        rest.push_str(&l);
        rest.push('\n');
    }
    assert!(rest.contains("shutting down"), "no shutdown in:\n{rest}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the port is still open after exit"
    );
}
