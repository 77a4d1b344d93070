//! The network lab: `treecast swarm --net PROFILE` runs every peer behind
//! its own emulated link (see `docs/netlab.md`).
//!
//! ```text
//!   harness ns (-e)                 router ns (-r)              peer ns (-pN)
//!   origin 127.0.0.1  ─┐
//!   edge 10.77.0.1 [uplink]══════[edge] NFQUEUE  [pN]═══════════[wan] 10.X.Y.2
//!    tbf: edge upload         delay/loss here   tbf: N's download   tbf: N's upload
//!   players, /status ─── connect from inside the peer's namespace ──▶ 127.0.0.1 (proxy)
//! ```
//!
//! - [`profile`]: the TOML profiles and the links drawn from them;
//! - [`emulator`]: delay and loss, in this process, for every packet the
//!   router forwards;
//! - [`Lab`]: the namespaces, veth pairs, addresses, routes, `tc` caps and
//!   the iptables rule, made with the system's `ip`, `tc` and `iptables`,
//!   and removed on drop. A profile's sites add a router namespace per
//!   site (`-sK`): its peers hang on a bridge (`lan`, 192.168.K+1.0/24)
//!   behind it, its WAN link (`wan`, 10.70.K.2, capped both ways) goes to
//!   the core router, and `nft` gives it the site's NAT (`masquerade`,
//!   `masquerade fully-random`, none, or no UDP out); Every name starts `tcl<pid>-`, so a run that was
//!   killed is recognised and cleaned by the next.
//!
//! The harness process itself moves into the harness namespace before its
//! runtime starts (so the origin, the edge and every client of theirs
//! live there, and the machine's own namespace is not touched). A player
//! reaches its peer's proxy on the loopback of the peer's namespace, as a
//! browser reaches the proxy on its own machine: [`dialer`] opens the
//! connection from a thread inside that namespace. Everything a peer
//! sends to the edge or another peer crosses its capped, delayed link and
//! the router.

pub mod emulator;
pub mod profile;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use emulator::{Emulator, EmulatorHandle, Leg};
use profile::{EdgeLink, NatKind, PeerLink, Place, Site};
use treecast_peer::edge_client::Dial;

/// The edge's address, inside the harness namespace.
pub const EDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const ROUTER_EDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Peers one lab can hold (the address plan: 10.80.0.0 to 10.127.249.0).
pub const MAX_PEERS: usize = 48 * 250;
/// Sites one lab can hold (10.70.K.0/24 and 192.168.K+1.0/24).
pub const MAX_SITES: usize = 250;
const NETNS_DIR: &str = "/run/netns";
const PREFIX: &str = "tcl";
/// Netfilter queue the router's packets go through.
const QUEUE: u16 = 0;
/// Longest a capped link queues packets before dropping (a home router's
/// buffer).
const QUEUE_LATENCY: &str = "50ms";

/// The lab could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Namespaces need root.
    #[error("the network lab needs root (it creates network namespaces, links and qdiscs); run as root, or without --net to run on loopback")]
    NotRoot,
    /// A system tool is missing.
    #[error("`{tool}` not found: install Debian's {package} package")]
    MissingTool {
        /// The command.
        tool: &'static str,
        /// Where it comes from.
        package: &'static str,
    },
    /// Too many peers for the address plan.
    #[error("the network lab holds at most {MAX_PEERS} peers, {0} asked")]
    TooManyPeers(usize),
    /// Too many sites for the address plan.
    #[error("the network lab holds at most {MAX_SITES} sites, {0} asked")]
    TooManySites(usize),
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// What ran.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// Entering a namespace failed.
    #[error("entering network namespace {netns}: {source}")]
    Enter {
        /// The namespace.
        netns: String,
        /// Why.
        source: std::io::Error,
    },
    /// The delay and loss emulator did not start.
    #[error(transparent)]
    Emulator(#[from] emulator::EmulatorError),
}

/// Where one peer runs in the lab.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerNet {
    /// Its slot: the peer it hosts, and after churn that peer's replacement.
    pub slot: usize,
    /// Its network namespace.
    pub netns: String,
    /// Its own address on its capped link, where it binds QUIC: for a
    /// public peer also the edge's view of it; for a peer on a site, its
    /// LAN address (the edge sees the site's router).
    pub wan: Ipv4Addr,
    /// Its link.
    pub link: PeerLink,
    /// Its site (index in the profile's sites), if it is on one.
    pub site: Option<usize>,
    /// The namespace at the other end of its link (the core router, or
    /// its site's router), where its download cap is.
    pub attached_to: String,
}

/// One site of the lab: its router's namespace and WAN address.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteNet {
    /// The site, as the profile gives it.
    pub site: Site,
    /// Its router's namespace.
    pub netns: String,
    /// Its router's WAN address (what the edge sees of a NAT site).
    pub wan: Ipv4Addr,
    /// The core router's end of its WAN link (`sK`).
    pub core_dev: String,
}

/// The lab: namespaces, links, caps and the emulator; all removed on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    peers: Vec<PeerNet>,
    sites: Vec<SiteNet>,
    edge: EdgeLink,
    emulator: Option<EmulatorHandle>,
}

/// A [`Dial`] that connects from inside the network namespace `netns`:
/// each connection is opened by a short-lived thread that enters it (the
/// socket stays in that namespace; the thread's move does not outlive it).
pub fn dialer(netns: String) -> Dial {
    Arc::new(move |addr| {
        let netns = netns.clone();
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("netlab-dial".into())
                .spawn(move || {
                    let connected = enter_netns(&netns)
                        .and_then(|()| {
                            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                        })
                        .and_then(|s| s.set_nonblocking(true).map(|()| s));
                    let _ = tx.send(connected);
                })?;
            let stream = rx
                .await
                .map_err(|_| std::io::Error::other("the dialing thread ended"))??;
            tokio::net::TcpStream::from_std(stream)
        })
    })
}

/// Moves the calling thread into the network namespace `name` (threads it
/// starts afterwards are born there too).
pub fn enter_netns(name: &str) -> std::io::Result<()> {
    let f = std::fs::File::open(Path::new(NETNS_DIR).join(name))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

impl Lab {
    /// Builds the lab for one peer per place in `places` (public with its
    /// link, or on one of `sites`), behind an edge on `edge`, with the
    /// emulator's loss and jitter drawn from `seed`. Cleans what killed
    /// earlier runs left first.
    pub fn create(
        edge: EdgeLink,
        places: Vec<Place>,
        sites: Vec<Site>,
        seed: u64,
    ) -> Result<Self, LabError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(LabError::NotRoot);
        }
        for (tool, package) in [
            ("ip", "iproute2"),
            ("tc", "iproute2"),
            ("iptables", "iptables"),
        ] {
            if Command::new(tool).arg("-V").output().is_err() {
                return Err(LabError::MissingTool { tool, package });
            }
        }
        if !sites.is_empty() && Command::new("nft").arg("-v").output().is_err() {
            return Err(LabError::MissingTool {
                tool: "nft",
                package: "nftables",
            });
        }
        if places.len() > MAX_PEERS {
            return Err(LabError::TooManyPeers(places.len()));
        }
        if sites.len() > MAX_SITES {
            return Err(LabError::TooManySites(sites.len()));
        }
        clean_stale();
        let prefix = format!("{PREFIX}{}-", std::process::id());
        let sites: Vec<SiteNet> = sites
            .into_iter()
            .enumerate()
            .map(|(k, site)| SiteNet {
                site,
                netns: format!("{prefix}s{k}"),
                wan: Ipv4Addr::new(10, 70, k as u8, 2),
                core_dev: format!("s{k}"),
            })
            .collect();
        let mut on_site = vec![0u8; sites.len()];
        let peers: Vec<PeerNet> = places
            .into_iter()
            .enumerate()
            .map(|(n, place)| {
                let (hi, lo) = ((n / 250) as u8, (n % 250) as u8);
                let (wan, attached_to) = match place.site {
                    Some(k) => {
                        on_site[k] += 1;
                        (
                            Ipv4Addr::new(192, 168, k as u8 + 1, 9 + on_site[k]),
                            sites[k].netns.clone(),
                        )
                    }
                    None => (Ipv4Addr::new(10, 80 + hi, lo, 2), format!("{prefix}r")),
                };
                PeerNet {
                    slot: n,
                    netns: format!("{prefix}p{n}"),
                    wan,
                    link: place.link,
                    site: place.site,
                    attached_to,
                }
            })
            .collect();
        let mut lab = Self {
            namespaces: Vec::new(),
            prefix,
            peers,
            sites,
            edge,
            emulator: None,
        };
        // From here on, a failure drops `lab`, which removes what was made.
        lab.build()?;
        let mut legs: HashMap<Ipv4Addr, Leg> = lab
            .peers
            .iter()
            // A site's peers reach the core through its router: the site's
            // WAN leg (below) delays and drops their packets.
            .filter(|p| p.site.is_none())
            .map(|p| {
                (
                    p.wan,
                    Leg {
                        delay: Duration::from_secs_f64(p.link.rtt_ms / 2000.0),
                        jitter: Duration::from_secs_f64(p.link.jitter_ms / 1000.0),
                        loss: p.link.loss,
                        reorder: p.link.reorder,
                    },
                )
            })
            .collect();
        for (k, s) in lab.sites.iter().enumerate() {
            let leg = Leg {
                delay: Duration::from_secs_f64(s.site.rtt_ms / 2000.0),
                jitter: Duration::ZERO,
                loss: s.site.loss,
                reorder: 0.0,
            };
            legs.insert(s.wan, leg);
            if s.site.nat == NatKind::None {
                // Routed as they are: the core sees the peers' own addresses.
                for p in lab.peers.iter().filter(|p| p.site == Some(k)) {
                    legs.insert(p.wan, leg);
                }
            }
        }
        legs.insert(
            EDGE_IP,
            Leg {
                delay: Duration::from_secs_f64(edge.rtt_ms / 2000.0),
                jitter: Duration::ZERO,
                loss: edge.loss,
                reorder: 0.0,
            },
        );
        lab.emulator = Some(emulator::spawn(
            &lab.router(),
            QUEUE,
            Emulator::new(legs, seed),
        )?);
        tracing::info!(peers = lab.peers.len(), prefix = %lab.prefix, "netlab: ready");
        Ok(lab)
    }

    /// How late the emulator has let packets go so far.
    pub fn lateness(&self) -> std::sync::Arc<emulator::Lateness> {
        self.emulator
            .as_ref()
            .map(EmulatorHandle::lateness)
            .unwrap_or_default()
    }

    /// The router's namespace.
    pub fn router(&self) -> String {
        format!("{}r", self.prefix)
    }

    /// The namespace the harness (origin, edge, players) runs in.
    pub fn harness_netns(&self) -> String {
        format!("{}e", self.prefix)
    }

    /// Where each peer runs, by slot.
    pub fn peers(&self) -> &[PeerNet] {
        &self.peers
    }

    /// The sites, by index.
    pub fn sites(&self) -> &[SiteNet] {
        &self.sites
    }

    /// The edge's link.
    pub fn edge(&self) -> EdgeLink {
        self.edge
    }

    /// The edge's address.
    pub fn edge_ip(&self) -> IpAddr {
        IpAddr::V4(EDGE_IP)
    }

    /// Moves the calling thread into the harness namespace.
    pub fn enter(&self) -> Result<(), LabError> {
        let netns = self.harness_netns();
        enter_netns(&netns).map_err(|source| LabError::Enter { netns, source })
    }

    fn build(&mut self) -> Result<(), LabError> {
        let router = self.router();
        let harness = self.harness_netns();
        let mut names = vec![router.clone(), harness.clone()];
        names.extend(self.sites.iter().map(|s| s.netns.clone()));
        names.extend(self.peers.iter().map(|p| p.netns.clone()));
        let mut batch = String::new();
        for n in &names {
            let _ = writeln!(batch, "netns add {n}");
        }
        run("ip", &["-batch", "-"], Some(&batch))?;
        self.namespaces = names;

        let mut links =
            format!("link add uplink netns {harness} type veth peer name edge netns {router}\n");
        for s in &self.sites {
            let _ = writeln!(
                links,
                "link add wan netns {} type veth peer name {} netns {router}",
                s.netns, s.core_dev
            );
        }
        for (n, p) in self.peers.iter().enumerate() {
            let ns = &p.netns;
            let _ = writeln!(
                links,
                "link add wan netns {ns} type veth peer name p{n} netns {}",
                p.attached_to
            );
        }
        run("ip", &["-batch", "-"], Some(&links))?;

        let mut r = format!(
            "link set dev lo up\nlink set dev edge up\naddr add {ROUTER_EDGE_IP}/24 dev edge\n"
        );
        let h = format!(
            "link set dev lo up\nlink set dev uplink up\naddr add {EDGE_IP}/24 dev uplink\nroute add 10.64.0.0/10 via {ROUTER_EDGE_IP}\n"
        );
        for (n, p) in self.peers.iter().enumerate() {
            let [a, b, c, _] = p.wan.octets();
            let gateway = format!("{a}.{b}.{c}.1");
            if p.site.is_none() {
                let _ = writeln!(r, "link set dev p{n} up\naddr add {gateway}/24 dev p{n}");
            }
            let peer = format!(
                "link set dev lo up\nlink set dev wan up\naddr add {}/24 dev wan\nroute add default via {gateway}\n",
                p.wan
            );
            run("ip", &["-n", &p.netns, "-batch", "-"], Some(&peer))?;
            let up = tbf(p.link.upload_kbps);
            let mut args = vec!["-n", &p.netns, "qdisc", "replace", "dev", "wan", "root"];
            args.extend(up.iter().map(String::as_str));
            run("tc", &args, None)?;
        }
        run("ip", &["-n", &router, "-batch", "-"], Some(&r))?;
        run("ip", &["-n", &harness, "-batch", "-"], Some(&h))?;
        self.build_sites()?;

        let mut tc_router = String::new();
        for (n, p) in self.peers.iter().enumerate() {
            let line = format!(
                "qdisc replace dev p{n} root {}\n",
                tbf(p.link.download_kbps).join(" ")
            );
            if p.site.is_none() {
                tc_router.push_str(&line);
            } else {
                run("tc", &["-n", &p.attached_to, "-batch", "-"], Some(&line))?;
            }
        }
        for s in &self.sites {
            let _ = writeln!(
                tc_router,
                "qdisc replace dev {} root {}",
                s.core_dev,
                tbf(s.site.wan_download_kbps).join(" ")
            );
        }
        run("tc", &["-n", &router, "-batch", "-"], Some(&tc_router))?;
        let edge_cap = format!(
            "qdisc replace dev uplink root {}\n",
            tbf(self.edge.upload_kbps).join(" ")
        );
        run("tc", &["-n", &harness, "-batch", "-"], Some(&edge_cap))?;

        run(
            "ip",
            &[
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
            None,
        )?;
        // Every forwarded packet goes to the emulator; none passes while
        // it is not reading (no --queue-bypass), so a broken emulator
        // shows as a dead network, not as a fast one.
        run(
            "ip",
            &[
                "netns",
                "exec",
                &router,
                "iptables",
                "-w",
                "-A",
                "FORWARD",
                "-j",
                "NFQUEUE",
                "--queue-num",
                &QUEUE.to_string(),
            ],
            None,
        )?;
        Ok(())
    }
}

impl Lab {
    /// Each site's router: addresses and routes on both sides, the
    /// bridge its peers hang on, the WAN cap going up, and its NAT.
    fn build_sites(&self) -> Result<(), LabError> {
        let router = self.router();
        let harness = self.harness_netns();
        let mut core = String::new();
        let mut harness_routes = String::new();
        for (k, s) in self.sites.iter().enumerate() {
            let lan_net = format!("192.168.{}.0/24", k + 1);
            let _ = writeln!(
                core,
                "link set dev {dev} up\naddr add 10.70.{k}.1/24 dev {dev}",
                dev = s.core_dev
            );
            let mut site = format!(
                "link set dev lo up\nlink set dev wan up\naddr add {}/24 dev wan\nroute add default via 10.70.{k}.1\nlink add lan type bridge\nlink set dev lan up\naddr add 192.168.{}.1/24 dev lan\n",
                s.wan,
                k + 1
            );
            for (n, _) in self
                .peers
                .iter()
                .enumerate()
                .filter(|(_, p)| p.site == Some(k))
            {
                let _ = writeln!(site, "link set dev p{n} master lan\nlink set dev p{n} up");
            }
            run("ip", &["-n", &s.netns, "-batch", "-"], Some(&site))?;
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &s.netns,
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                ],
                None,
            )?;
            let up = format!(
                "qdisc replace dev wan root {}\n",
                tbf(s.site.wan_upload_kbps).join(" ")
            );
            run("tc", &["-n", &s.netns, "-batch", "-"], Some(&up))?;
            let mut rules = String::from(COUNT_RULES);
            if s.site.nat == NatKind::None {
                // No NAT: the core routes the site's addresses to it, and
                // the harness sends them through the core.
                let _ = writeln!(core, "route add {lan_net} via {}", s.wan);
                let _ = writeln!(harness_routes, "route add {lan_net} via {ROUTER_EDGE_IP}");
            } else {
                rules.push_str(&nat_rules(s.site.nat));
            }
            run(
                "ip",
                &["netns", "exec", &s.netns, "nft", "-f", "-"],
                Some(&rules),
            )?;
        }
        if !core.is_empty() {
            run("ip", &["-n", &router, "-batch", "-"], Some(&core))?;
        }
        if !harness_routes.is_empty() {
            run(
                "ip",
                &["-n", &harness, "-batch", "-"],
                Some(&harness_routes),
            )?;
        }
        Ok(())
    }
}

/// Every site router counts what enters its LAN from the WAN in packets
/// over 600 bytes: data (media, playlists, HTTP bodies), not the
/// acknowledgements of what the site sends out, which a site feeding
/// others receives in proportion to its upload.
const COUNT_RULES: &str = "table inet treecast_count {\n  counter wan_in_data { }\n  chain count_in {\n    type filter hook forward priority filter; policy accept;\n    iifname \"wan\" meta length > 600 counter name \"wan_in_data\"\n  }\n}\n";

/// The nftables ruleset of a site router with `nat`: source NAT of what
/// leaves by `wan` (keeping ports where it can, or a random port per
/// destination for `symmetric`), a firewall that drops what arrives on
/// `wan` unsolicited, as a home or office router does, and for
/// `udp-blocked` no UDP from the LAN out.
///
/// The firewall matters to traversal as much as the NAT: without it an
/// unsolicited datagram (a child's handshake that arrives before the
/// parent has punched) is delivered to the router itself, and the
/// conntrack entry it leaves takes the very port the parent's mapping
/// needs, so the NAT maps the punch to another port and the traversal
/// fails for as long as the child keeps retrying.
fn nat_rules(nat: NatKind) -> String {
    let masquerade = match nat {
        NatKind::Symmetric => "masquerade fully-random",
        _ => "masquerade",
    };
    let mut rules = format!(
        "table ip treecast_nat {{\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"wan\" {masquerade}\n  }}\n}}\n\
         table inet treecast_firewall {{\n  chain input {{\n    type filter hook input priority filter; policy accept;\n    iifname \"wan\" ct state new drop\n  }}\n}}\n"
    );
    if nat == NatKind::UdpBlocked {
        rules.push_str(
            "table inet treecast_filter {\n  chain block_udp {\n    type filter hook forward priority filter; policy accept;\n    iifname \"lan\" oifname \"wan\" meta l4proto udp drop\n  }\n}\n",
        );
    }
    rules
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut e) = self.emulator.take() {
            e.stop();
        }
        remove(&self.namespaces);
    }
}

/// What the kernel counted on a peer's link: bytes the qdiscs sent
/// (upload on the peer's side, download on the router's) and packets they
/// dropped (the link's queue overflowed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkCounters {
    /// Bytes sent up.
    pub up_bytes: u64,
    /// Packets dropped going up.
    pub up_drops: u64,
    /// Bytes sent down.
    pub down_bytes: u64,
    /// Packets dropped going down.
    pub down_drops: u64,
    /// Of the bytes sent down, those in packets over 600 bytes (data, not
    /// acknowledgements); counted on sites' WAN links only.
    pub down_data_bytes: u64,
}

impl LinkCounters {
    /// The growth since `before`.
    pub fn since(self, before: Self) -> Self {
        Self {
            up_bytes: self.up_bytes.saturating_sub(before.up_bytes),
            up_drops: self.up_drops.saturating_sub(before.up_drops),
            down_bytes: self.down_bytes.saturating_sub(before.down_bytes),
            down_drops: self.down_drops.saturating_sub(before.down_drops),
            down_data_bytes: self.down_data_bytes.saturating_sub(before.down_data_bytes),
        }
    }
}

/// Reads every peer's link counters (`tc -s -j`), by slot; a link whose
/// counters cannot be read counts zero.
pub fn link_counters(router: &str, peers: &[PeerNet]) -> Vec<LinkCounters> {
    let read = |ns: &str, dev: Option<&str>| -> Vec<serde_json::Value> {
        let mut args = vec!["-n", ns, "-s", "-j", "qdisc", "show"];
        if let Some(d) = dev {
            args.extend(["dev", d]);
        }
        Command::new("tc")
            .args(&args)
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok())
            .unwrap_or_default()
    };
    let field = |q: &serde_json::Value, k: &str| q.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    let down = read(router, None);
    peers
        .iter()
        .map(|p| {
            let up = read(&p.netns, Some("wan"));
            let dev = format!("p{}", p.slot);
            let site_down;
            let down = if p.site.is_some() {
                site_down = read(&p.attached_to, None);
                &site_down
            } else {
                &down
            };
            let d = down
                .iter()
                .find(|q| q.get("dev").and_then(|v| v.as_str()) == Some(dev.as_str()));
            LinkCounters {
                up_bytes: up.first().map_or(0, |q| field(q, "bytes")),
                up_drops: up.first().map_or(0, |q| field(q, "drops")),
                down_bytes: d.map_or(0, |q| field(q, "bytes")),
                down_drops: d.map_or(0, |q| field(q, "drops")),
                down_data_bytes: 0,
            }
        })
        .collect()
}

/// Each site's WAN link counters, by site: up is what left the site
/// (its router's `wan` qdisc), down what entered it (the core router's
/// qdisc towards it).
pub fn site_counters(router: &str, sites: &[SiteNet]) -> Vec<LinkCounters> {
    let read = |ns: &str, dev: &str| -> (u64, u64) {
        let out = Command::new("tc")
            .args(["-n", ns, "-s", "-j", "qdisc", "show", "dev", dev])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).ok())
            .unwrap_or_default();
        let q = out.first();
        let field = |k: &str| q.and_then(|q| q.get(k)?.as_u64()).unwrap_or(0);
        (field("bytes"), field("drops"))
    };
    let data_in = |ns: &str| -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-j", "list", "counter"])
            .args(["inet", "treecast_count", "wan_in_data"])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok());
        out.as_ref()
            .and_then(|v| v.get("nftables")?.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .find_map(|e| e.get("counter")?.get("bytes")?.as_u64())
            .unwrap_or(0)
    };
    sites
        .iter()
        .map(|s| {
            let (up_bytes, up_drops) = read(&s.netns, "wan");
            let (down_bytes, down_drops) = read(router, &s.core_dev);
            LinkCounters {
                up_bytes,
                up_drops,
                down_bytes,
                down_drops,
                down_data_bytes: data_in(&s.netns),
            }
        })
        .collect()
}

/// `tc` arguments of a token bucket at `kbps`: a burst of 4 ms at the
/// rate (at least two full packets) and a queue of [`QUEUE_LATENCY`].
fn tbf(kbps: u32) -> Vec<String> {
    let burst = (u64::from(kbps) * 1000 / 8 * 4 / 1000).max(3028);
    [
        "tbf".to_string(),
        "rate".into(),
        format!("{kbps}kbit"),
        "burst".into(),
        burst.to_string(),
        "latency".into(),
        QUEUE_LATENCY.into(),
    ]
    .to_vec()
}

/// Deletes namespaces; their veth pairs, addresses, routes, qdiscs and
/// rules go with them.
fn remove(names: &[String]) {
    if names.is_empty() {
        return;
    }
    let batch: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
    // -force: go on past a name already gone.
    if let Err(e) = run("ip", &["-force", "-batch", "-"], Some(&batch)) {
        tracing::warn!(error = %e, "netlab: removing namespaces");
    }
}

/// Removes the namespaces of lab runs whose process is gone.
fn clean_stale() {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    let stale: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| {
            owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    if !stale.is_empty() {
        tracing::info!(
            count = stale.len(),
            "netlab: removing namespaces a killed run left"
        );
        remove(&stale);
    }
}

/// The pid in a lab namespace's name (`tcl<pid>-...`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<(), LabError> {
    let command = format!("{cmd} {}", args.join(" "));
    let failed = |stderr: String| LabError::Command {
        command: command.clone(),
        stderr,
    };
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names_carry_their_owner() {
        assert_eq!(owner_pid("tcl1234-p7"), Some(1234));
        assert_eq!(owner_pid("tcl1234-r"), Some(1234));
        assert_eq!(owner_pid("other-ns"), None);
        assert_eq!(owner_pid("tclx-r"), None);
    }

    #[test]
    fn token_buckets_hold_two_packets_at_least() {
        assert_eq!(tbf(1000)[4], "3028");
        assert_eq!(tbf(100_000)[4], "50000");
    }
}
