//! `peer install`, `peer uninstall`, `peer status`: the agent as a
//! per-user service that starts at login, so a viewer installs it once and
//! never configures it.
//!
//! - On Linux, `install` writes a systemd user unit
//!   (`~/.config/systemd/user/treecast-peer.service`, or under
//!   `$XDG_CONFIG_HOME`) whose `ExecStart` runs this very executable with
//!   the flags given to `install` (the edges, usually), then asks the
//!   user's systemd to reload, enable and start it (`--no-start` writes
//!   the unit only: an installer running as another user, a container
//!   without a user manager). `uninstall` stops, disables and removes it.
//! - macOS (a launchd agent) and Windows (a task at logon) use the files in
//!   `dist/launchd/` and `dist/windows/`; docs/peer.md says how. They are
//!   not installed by this command.
//! - `status` finds the running agent on the proxy ports the player
//!   plugin looks at and prints what it serves; with nothing running it
//!   says so and exits non-zero.
//!
//! The unit's text is built by a pure function ([`systemd_unit`]) so it is
//! tested without a systemd.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::PROXY_PORTS;
use crate::edge_client::EdgeClient;
use crate::status::{AgentStatus, AGENT_NAME};

/// The unit's file name.
pub const UNIT: &str = "treecast-peer.service";

/// The text of the systemd user unit that runs `exe` with `args`.
pub fn systemd_unit(exe: &Path, args: &[String]) -> String {
    let mut exec = quote(&exe.to_string_lossy());
    for a in args {
        exec.push(' ');
        exec.push_str(&quote(a));
    }
    format!(
        "# Written by `peer install`; removed by `peer uninstall`.\n\
         [Unit]\n\
         Description=treecast peer: plays live channels for this user's players and relays them to other viewers\n\
         Documentation=https://example.invalid/treecast/docs/peer.md\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         ExecStart={exec}\n\
         Restart=on-failure\n\
         RestartSec=5\n\
         # SIGTERM: the agent leaves every channel's tree, then exits.\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec=15\n\
         Nice=5\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n"
    )
}

/// One `ExecStart` word: quoted when it has to be, `%` escaped (systemd
/// expands specifiers), `"` and `\` escaped inside quotes.
fn quote(word: &str) -> String {
    let word = word.replace('%', "%%");
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c));
    if plain {
        return word;
    }
    let mut out = String::from("\"");
    for c in word.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Where the user's systemd units live.
pub fn unit_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("systemd/user"));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).context(
        "neither XDG_CONFIG_HOME nor HOME is set: cannot tell where the user's units go",
    )?;
    Ok(PathBuf::from(home).join(".config/systemd/user"))
}

/// The command line the service runs: this executable, `peer` first when
/// it is the `treecast` binary, then `args`.
fn service_command(args: &[String]) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let mut all = Vec::new();
    if exe.file_stem().and_then(|s| s.to_str()) != Some("peer") {
        all.push("peer".to_string());
    }
    all.extend(args.iter().cloned());
    Ok((exe, all))
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("systemctl")
        .arg("--user")
        .args(args)
        .output()
        .context("running systemctl --user (is systemd installed?)")?;
    if !out.status.success() {
        bail!(
            "systemctl --user {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes the unit for `args` into `dir` and, with `start`, enables and
/// starts it. Returns the unit's path.
pub fn install(dir: &Path, args: &[String], start: bool) -> anyhow::Result<PathBuf> {
    if !cfg!(target_os = "linux") {
        bail!("`peer install` sets up a systemd user unit (Linux); on macOS and Windows use the files in dist/ as docs/peer.md says");
    }
    let (exe, all) = service_command(args)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(UNIT);
    // Written whole, then renamed: systemd never reads half a unit.
    let tmp = dir.join(format!(".{UNIT}.tmp"));
    std::fs::write(&tmp, systemd_unit(&exe, &all))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    if start {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", UNIT])?;
    }
    Ok(path)
}

/// Stops and disables the unit (when `stop`) and removes its file.
/// Returns whether there was one.
pub fn uninstall(dir: &Path, stop: bool) -> anyhow::Result<bool> {
    let path = dir.join(UNIT);
    if stop {
        // Not running, or no user manager: the file still goes.
        if let Err(e) = systemctl(&["disable", "--now", UNIT]) {
            eprintln!("{e}");
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {
            if stop {
                let _ = systemctl(&["daemon-reload"]);
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// The running agent on loopback, found on the proxy ports in order.
pub async fn find_agent() -> Option<(SocketAddr, AgentStatus)> {
    for port in PROXY_PORTS {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if let Some(s) = ask_agent(addr).await {
            return Some((addr, s));
        }
    }
    None
}

/// The status of the agent whose proxy is at `addr`, if one answers
/// there.
pub async fn ask_agent(addr: SocketAddr) -> Option<AgentStatus> {
    let uri = format!("http://{addr}").parse().ok()?;
    let b = EdgeClient::new(&uri)
        .get("/status", 4 << 20, Duration::from_millis(500))
        .await
        .ok()?;
    serde_json::from_slice::<AgentStatus>(&b)
        .ok()
        .filter(|s| s.agent == AGENT_NAME)
}

/// What `peer status` prints for a running agent.
pub fn describe(addr: SocketAddr, s: &AgentStatus) -> String {
    let mut out = format!(
        "treecast peer {} on http://{addr}/ for {} s; edge {} ({} known)\n",
        s.version,
        s.uptime_s,
        s.edge,
        s.edges.len()
    );
    if s.channels.is_empty() {
        out.push_str(
            "no channel playing (a player asking for /live/<channel>/index.m3u8 joins one)\n",
        );
    }
    for c in &s.channels {
        out.push_str(&format!(
            "  {}{}: depth {}, {} children, {:.1} MB from peers, {:.1} MB from the edge, {:.1} MB uploaded, {} stalls\n",
            c.channel,
            if c.pinned { " (kept)" } else { "" },
            c.depth,
            c.children,
            c.bytes_from_tree as f64 / 1e6,
            c.bytes_from_edge as f64 / 1e6,
            c.bytes_uploaded as f64 / 1e6,
            c.viewer.inferred.stalls.max(c.viewer.reported.stalls),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_this_executable_with_the_flags_quoted() {
        let unit = systemd_unit(
            Path::new("/opt/tree cast/peer"),
            &[
                "--edge".into(),
                "http://edge.example:8081".into(),
                "--token".into(),
                "50% \"off\"".into(),
            ],
        );
        assert!(
            unit.contains(
                "ExecStart=\"/opt/tree cast/peer\" --edge http://edge.example:8081 --token \"50%% \\\"off\\\"\"\n"
            ),
            "{unit}"
        );
        assert!(unit.contains("WantedBy=default.target"), "{unit}");
    }

    #[test]
    fn install_and_uninstall_write_and_remove_the_unit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path =
            install(dir.path(), &["--edge".into(), "http://e:1".into()], false).expect("install");
        let text = std::fs::read_to_string(&path).expect("unit");
        assert!(text.contains("--edge http://e:1"), "{text}");
        assert!(uninstall(dir.path(), false).expect("uninstall"));
        assert!(!path.exists());
        assert!(!uninstall(dir.path(), false).expect("again"));
    }
}
