//! The `edge` binary stops on SIGTERM as on Ctrl-C: what systemd and
//! Kubernetes send to stop a service.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn sigterm_stops_the_edge_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--quic-listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("edge starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let serving = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(l) = lines.next_line().await.expect("stderr line") {
            if let Some(rest) = l.strip_prefix("edge serving on http://") {
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("the edge said where it serves within 20 s")
    .expect("a serving line");
    let addr: std::net::SocketAddr = serving.parse().expect("address");
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());

    let pid = child.id().expect("pid").to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().await;
    assert!(sent.expect("kill runs").success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the edge exited within 10 s of SIGTERM")
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
