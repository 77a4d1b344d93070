//! A real nginx as the shield cache between the origin and the edges, with
//! the shipped locations (`dist/nginx/treecast-shield.conf`): what the
//! shield test and the failover run put in front of their origin.
//!
//! nginx runs in the foreground as one process (`master_process off`), its
//! files (config, cache, temp, logs) under a directory of the run, and is
//! killed, by its pid, when the handle is dropped. Its access log records
//! `URI cache-status status` per request, so a run can count what was
//! passed to the origin ([`Nginx::origin_fetches`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// The shipped shield locations, included by the generated config.
pub const SHIELD_CONF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/dist/nginx/treecast-shield.conf"
);

/// A running nginx; killed when dropped.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

/// Where Debian and others install nginx.
fn binary() -> anyhow::Result<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("nginx is not installed: `apt-get install nginx` (bash .ci/run does)")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port for nginx")?
        .port())
}

impl Nginx {
    /// Starts nginx in `dir` on a free loopback port in front of `origin`;
    /// returns once it accepts connections.
    pub async fn start(dir: &Path, origin: SocketAddr) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let d = dir.display();
        let conf = format!(
            r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format shield '$uri $upstream_cache_status $status';
    access_log {d}/access.log shield;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    proxy_cache_path {d}/cache keys_zone=treecast:4m max_size=256m inactive=10m use_temp_path=off;
    upstream treecast_origin {{ server {origin}; keepalive 8; }}
    server {{
        listen {addr};
        include {SHIELD_CONF};
    }}
}}
"#
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)
            .with_context(|| format!("writing {}", conf_path.display()))?;
        let child = Command::new(binary()?)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nginx")?;
        let mut nginx = Self {
            child,
            addr,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = nginx.child.try_wait()? {
                bail!(
                    "nginx exited ({status}): {}",
                    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on {addr} within 10 s");
            }
            // Refused until nginx has bound its port; ask again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its base URL, for the edges' `origin`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its access log, one `URI cache-status status` line per request.
    pub fn access_log(&self) -> anyhow::Result<String> {
        let path = self.dir.join("access.log");
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Segment and signature URIs requested through the shield, each with
    /// how many of its requests were passed to the origin (cache `MISS`).
    pub fn origin_fetches(&self) -> anyhow::Result<BTreeMap<String, usize>> {
        let mut out: BTreeMap<String, usize> = BTreeMap::new();
        for line in self.access_log()?.lines() {
            let mut f = line.split_whitespace();
            let (Some(uri), Some(cache)) = (f.next(), f.next()) else {
                continue;
            };
            if uri.ends_with(".ts") || uri.ends_with(".sig") {
                *out.entry(uri.to_owned()).or_default() += usize::from(cache == "MISS");
            }
        }
        Ok(out)
    }

    /// Stops nginx.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
