//! Network profiles: TOML files that say what links the lab gives the edge
//! and the peers (format in `docs/netlab.md`), and the per-peer links drawn
//! from them.
//!
//! A profile names classes of peers with their share of the audience; each
//! value of a class is a number or a `[low, high]` range from which every
//! peer of the class draws its own (uniformly, from the run's seed). Class
//! sizes follow the shares exactly (largest remainder), so a 100-peer run
//! of `residential` has 25 DSL peers, not "about 25".
//!
//! A profile may also declare sites (`[[site]]`): offices or homes whose
//! peers sit behind one router with one WAN link, and a NAT of a given
//! kind ([`NatKind`]). A site's peers are counted in the run's `--peers`;
//! the classes share what is left (the public peers).

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::rng::Rng;

/// The profiles shipped in `profiles/`, by name.
pub const SHIPPED: &[(&str, &str)] = &[
    ("lan", include_str!("../../profiles/lan.toml")),
    (
        "residential",
        include_str!("../../profiles/residential.toml"),
    ),
    (
        "mobile-heavy",
        include_str!("../../profiles/mobile-heavy.toml"),
    ),
    ("offices", include_str!("../../profiles/offices.toml")),
];

/// Mixed into a run's seed for its links' draw, so links and roles are not
/// drawn from one sequence, and `sim --net P --seed S` draws the links
/// `swarm --net P --seed S` does.
pub const LINK_SEED: u64 = 0x6e65_746c_6162;

/// Fastest link a profile may give, Mb/s (the veth pairs and `tc` go
/// further, but a 2-core machine cannot fill more).
const MAX_MBPS: f64 = 10_000.0;
/// Slowest: `tc`'s token bucket needs a few packets of burst per tick.
const MIN_MBPS: f64 = 0.064;
/// Longest round trip a profile may give, ms.
const MAX_RTT_MS: f64 = 5_000.0;

/// A profile that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Neither a shipped name nor a readable file.
    #[error("no network profile {name:?}: not a shipped one ({shipped}) and not a readable file ({source})")]
    NotFound {
        /// What was asked for.
        name: String,
        /// The shipped names.
        shipped: String,
        /// Why the file could not be read.
        source: std::io::Error,
    },
    /// Not TOML of the profile's shape (unknown key, wrong type); the
    /// message names the line.
    #[error("network profile {name}: {message}")]
    Parse {
        /// The profile.
        name: String,
        /// What the TOML parser said, with line and column.
        message: String,
    },
    /// A value that no link can have.
    #[error("network profile {name}, line {line}: `{key}` {problem}")]
    Invalid {
        /// The profile.
        name: String,
        /// Line of the value.
        line: usize,
        /// The key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// A number, or a range every peer draws its own from.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Draw {
    /// The same for every peer of the class.
    Fixed(f64),
    /// Uniform in `[low, high]`.
    Range([f64; 2]),
}

impl Draw {
    fn bounds(self) -> (f64, f64) {
        match self {
            Self::Fixed(v) => (v, v),
            Self::Range([a, b]) => (a, b),
        }
    }

    fn draw(self, rng: &mut Rng) -> f64 {
        let (a, b) = self.bounds();
        a + (b - a) * rng.unit()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    edge: Option<RawEdge>,
    #[serde(rename = "class")]
    classes: Vec<RawClass>,
    #[serde(rename = "site", default)]
    sites: Vec<RawSite>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    name: Option<String>,
    nat: Spanned<String>,
    peers: Spanned<i64>,
    wan_upload_mbps: Spanned<f64>,
    wan_download_mbps: Spanned<f64>,
    rtt_ms: Option<Spanned<f64>>,
    loss: Option<Spanned<f64>>,
    lan_mbps: Option<Spanned<f64>>,
}

/// How a site's router treats its peers' traffic to the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    /// Source NAT keeping each inside address and port on one outside
    /// port (nftables `masquerade`): endpoint-independent mapping,
    /// replies only.
    Cone,
    /// A new outside port for every destination (`masquerade
    /// fully-random`): endpoint-dependent mapping.
    Symmetric,
    /// No NAT: the site's addresses are routed as they are.
    None,
    /// A corporate firewall: NAT as `cone`, and no UDP out (HTTP and
    /// HTTPS over TCP only).
    UdpBlocked,
}

impl NatKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "cone" => Self::Cone,
            "symmetric" => Self::Symmetric,
            "none" => Self::None,
            "udp-blocked" => Self::UdpBlocked,
            _ => return None,
        })
    }

    /// The name in profiles and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cone => "cone",
            Self::Symmetric => "symmetric",
            Self::None => "none",
            Self::UdpBlocked => "udp-blocked",
        }
    }
}

/// A site: peers behind one router and WAN link.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Site {
    /// Its name (for the report).
    pub name: String,
    /// Its router's NAT.
    pub nat: NatKind,
    /// Peers on it.
    pub peers: usize,
    /// The WAN link's upload cap (the site towards the edge), kb/s.
    pub wan_upload_kbps: u32,
    /// The WAN link's download cap, kb/s.
    pub wan_download_kbps: u32,
    /// Round trip from the site's router to the core, ms.
    pub rtt_ms: f64,
    /// Random loss on each direction of the WAN link.
    pub loss: f64,
    /// Each peer's LAN link (both ways), kb/s.
    pub lan_kbps: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    upload_mbps: Option<Spanned<f64>>,
    rtt_ms: Option<Spanned<f64>>,
    loss: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClass {
    name: Option<String>,
    share: Spanned<f64>,
    upload_mbps: Spanned<Draw>,
    download_mbps: Spanned<Draw>,
    rtt_ms: Spanned<Draw>,
    loss: Option<Spanned<Draw>>,
    jitter_ms: Option<Spanned<Draw>>,
    reorder: Option<Spanned<Draw>>,
}

/// The edge's link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdgeLink {
    /// Uplink cap, kb/s.
    pub upload_kbps: u32,
    /// Round trip from the edge to the core, ms.
    pub rtt_ms: f64,
    /// Loss on each direction of the edge's link.
    pub loss: f64,
}

/// A class of peers.
#[derive(Debug, Clone, PartialEq)]
pub struct Class {
    /// Its name (for the report).
    pub name: String,
    /// Its share of the peers.
    pub share: f64,
    upload_mbps: Draw,
    download_mbps: Draw,
    rtt_ms: Draw,
    loss: Draw,
    jitter_ms: Draw,
    reorder: Draw,
}

/// A parsed, checked profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Its name: the shipped name or the file's path.
    pub name: String,
    /// What it models.
    pub description: String,
    /// The edge's link.
    pub edge: EdgeLink,
    /// The peers' classes (the public peers, outside every site).
    pub classes: Vec<Class>,
    /// Sites of peers behind a router, in the profile's order.
    pub sites: Vec<Site>,
}

/// Where one peer of a run sits: on a site (by index in
/// [`Profile::sites`]) behind its router, or public with its own link.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Place {
    /// Its site, if it is on one.
    pub site: Option<usize>,
    /// Its own link: drawn from its class for a public peer; for a site's
    /// peer, its LAN link (the site's WAN link is the router's).
    pub link: PeerLink,
}

/// One peer's link, drawn from its class.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PeerLink {
    /// Its class.
    pub class: String,
    /// Upload cap, kb/s.
    pub upload_kbps: u32,
    /// Download cap, kb/s.
    pub download_kbps: u32,
    /// Round trip to the core, ms (half each way).
    pub rtt_ms: f64,
    /// Random loss on each direction.
    pub loss: f64,
    /// Extra delay per packet, uniform in `[0, jitter_ms]`.
    pub jitter_ms: f64,
    /// Share of packets whose jitter may overtake earlier ones.
    pub reorder: f64,
}

impl Profile {
    /// A shipped profile by name, or a TOML file by path.
    pub fn load(name_or_path: &str) -> Result<Self, ProfileError> {
        if let Some((name, text)) = SHIPPED.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(name, text);
        }
        let text = std::fs::read_to_string(Path::new(name_or_path)).map_err(|source| {
            ProfileError::NotFound {
                name: name_or_path.into(),
                shipped: SHIPPED
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
                source,
            }
        })?;
        Self::parse(name_or_path, &text)
    }

    /// Parses and checks a profile's text.
    pub fn parse(name: &str, text: &str) -> Result<Self, ProfileError> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| ProfileError::Parse {
            name: name.into(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let check = Checker { name, text };
        let edge = raw.edge.as_ref();
        let edge = EdgeLink {
            upload_kbps: match edge.and_then(|e| e.upload_mbps.as_ref()) {
                Some(v) => check.rate("edge.upload_mbps", v.span(), *v.get_ref())?,
                None => 1_000_000,
            },
            rtt_ms: match edge.and_then(|e| e.rtt_ms.as_ref()) {
                Some(v) => check.delay("edge.rtt_ms", v.span(), *v.get_ref(), MAX_RTT_MS)?,
                None => 0.0,
            },
            loss: match edge.and_then(|e| e.loss.as_ref()) {
                Some(v) => check.loss("edge.loss", v.span(), *v.get_ref())?,
                None => 0.0,
            },
        };
        if raw.classes.is_empty() {
            return Err(ProfileError::Parse {
                name: name.into(),
                message: "no [[class]] of peers".into(),
            });
        }
        let mut classes = Vec::new();
        let mut total = 0.0;
        for (i, c) in raw.classes.iter().enumerate() {
            let share = *c.share.get_ref();
            if !(share > 0.0 && share <= 1.0) {
                return Err(check.invalid(
                    "share",
                    c.share.span(),
                    format!("must be in (0, 1], got {share}"),
                ));
            }
            total += share;
            check.draw("upload_mbps", &c.upload_mbps, |k, s, v| check.rate(k, s, v))?;
            check.draw("download_mbps", &c.download_mbps, |k, s, v| {
                check.rate(k, s, v)
            })?;
            check.draw("rtt_ms", &c.rtt_ms, |k, s, v| {
                check.delay(k, s, v, MAX_RTT_MS)
            })?;
            let zero = Draw::Fixed(0.0);
            if let Some(l) = &c.loss {
                check.draw("loss", l, |k, s, v| check.loss(k, s, v))?;
            }
            if let Some(j) = &c.jitter_ms {
                check.draw("jitter_ms", j, |k, s, v| check.delay(k, s, v, MAX_RTT_MS))?;
            }
            if let Some(r) = &c.reorder {
                check.draw("reorder", r, |k, s, v| check.loss(k, s, v))?;
            }
            classes.push(Class {
                name: c.name.clone().unwrap_or_else(|| format!("class{}", i + 1)),
                share,
                upload_mbps: *c.upload_mbps.get_ref(),
                download_mbps: *c.download_mbps.get_ref(),
                rtt_ms: *c.rtt_ms.get_ref(),
                loss: c.loss.as_ref().map_or(zero, |l| *l.get_ref()),
                jitter_ms: c.jitter_ms.as_ref().map_or(zero, |j| *j.get_ref()),
                reorder: c.reorder.as_ref().map_or(zero, |r| *r.get_ref()),
            });
        }
        if (total - 1.0).abs() > 1e-6 {
            let first = &raw.classes[0].share;
            return Err(check.invalid(
                "share",
                first.span(),
                format!("the classes' shares add up to {total}, not 1"),
            ));
        }
        let mut sites = Vec::new();
        for (i, site) in raw.sites.iter().enumerate() {
            let nat = NatKind::parse(site.nat.get_ref()).ok_or_else(|| {
                check.invalid(
                    "nat",
                    site.nat.span(),
                    format!(
                        "must be cone, symmetric, none or udp-blocked, got {:?}",
                        site.nat.get_ref()
                    ),
                )
            })?;
            let peers = *site.peers.get_ref();
            if !(1..=250).contains(&peers) {
                return Err(check.invalid(
                    "peers",
                    site.peers.span(),
                    format!("must be between 1 and 250, got {peers}"),
                ));
            }
            let wan_up = &site.wan_upload_mbps;
            let wan_down = &site.wan_download_mbps;
            sites.push(Site {
                name: site
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("site{}", i + 1)),
                nat,
                peers: peers as usize,
                wan_upload_kbps: check.rate("wan_upload_mbps", wan_up.span(), *wan_up.get_ref())?,
                wan_download_kbps: check.rate(
                    "wan_download_mbps",
                    wan_down.span(),
                    *wan_down.get_ref(),
                )?,
                rtt_ms: match &site.rtt_ms {
                    Some(v) => check.delay("rtt_ms", v.span(), *v.get_ref(), MAX_RTT_MS)?,
                    None => 0.0,
                },
                loss: match &site.loss {
                    Some(v) => check.loss("loss", v.span(), *v.get_ref())?,
                    None => 0.0,
                },
                lan_kbps: match &site.lan_mbps {
                    Some(v) => check.rate("lan_mbps", v.span(), *v.get_ref())?,
                    None => 100_000,
                },
            });
        }
        Ok(Self {
            name: name.into(),
            description: raw.description.unwrap_or_default(),
            edge,
            classes,
            sites,
        })
    }

    /// Peers on the profile's sites.
    pub fn site_peers(&self) -> usize {
        self.sites.iter().map(|s| s.peers).sum()
    }

    /// Every peer's place for a run of `n` peers: the sites' peers, and
    /// links drawn from the classes for the rest (see [`Self::draw`]);
    /// order shuffled from `rng`, so sites and public peers join mixed.
    /// An error when the sites hold more than `n`.
    pub fn places(&self, n: usize, rng: &mut Rng) -> Result<Vec<Place>, String> {
        let on_sites = self.site_peers();
        if on_sites > n {
            return Err(format!(
                "profile {} puts {on_sites} peers on its sites; run at least that many (--peers)",
                self.name
            ));
        }
        let mut places: Vec<Place> = self
            .draw(n - on_sites, rng)
            .into_iter()
            .map(|link| Place { site: None, link })
            .collect();
        for (k, site) in self.sites.iter().enumerate() {
            for _ in 0..site.peers {
                places.push(Place {
                    site: Some(k),
                    link: PeerLink {
                        class: site.name.clone(),
                        upload_kbps: site.lan_kbps,
                        download_kbps: site.lan_kbps,
                        rtt_ms: site.rtt_ms,
                        loss: site.loss,
                        jitter_ms: 0.0,
                        reorder: 0.0,
                    },
                });
            }
        }
        if !self.sites.is_empty() {
            // Without sites the order stays the classes' draw, as the
            // simulator draws it for the same seed.
            for i in (1..places.len()).rev() {
                places.swap(i, rng.below(i + 1));
            }
        }
        Ok(places)
    }

    /// Links for `n` peers: class sizes from the shares (largest
    /// remainder), values drawn per peer, order shuffled, all from `rng`.
    pub fn draw(&self, n: usize, rng: &mut Rng) -> Vec<PeerLink> {
        let exact: Vec<f64> = self.classes.iter().map(|c| c.share * n as f64).collect();
        let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
        let mut order: Vec<usize> = (0..counts.len()).collect();
        order.sort_by(|&a, &b| {
            let ra = exact[a] - exact[a].floor();
            let rb = exact[b] - exact[b].floor();
            rb.total_cmp(&ra).then(a.cmp(&b))
        });
        let short = n - counts.iter().sum::<usize>();
        for &i in order.iter().cycle().take(short) {
            counts[i] += 1;
        }
        let mut links = Vec::with_capacity(n);
        for (c, &count) in self.classes.iter().zip(&counts) {
            for _ in 0..count {
                links.push(PeerLink {
                    class: c.name.clone(),
                    upload_kbps: mbps_to_kbps(c.upload_mbps.draw(rng)),
                    download_kbps: mbps_to_kbps(c.download_mbps.draw(rng)),
                    rtt_ms: c.rtt_ms.draw(rng),
                    loss: c.loss.draw(rng),
                    jitter_ms: c.jitter_ms.draw(rng),
                    reorder: c.reorder.draw(rng),
                });
            }
        }
        // Fisher-Yates, so join order does not follow the classes.
        for i in (1..links.len()).rev() {
            links.swap(i, rng.below(i + 1));
        }
        links
    }
}

fn mbps_to_kbps(mbps: f64) -> u32 {
    (mbps * 1000.0).round() as u32
}

/// Range checks that name the key and its line.
struct Checker<'a> {
    name: &'a str,
    text: &'a str,
}

impl Checker<'_> {
    fn invalid(&self, key: &str, span: std::ops::Range<usize>, problem: String) -> ProfileError {
        let line = 1 + self.text[..span.start.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count();
        ProfileError::Invalid {
            name: self.name.into(),
            line,
            key: key.into(),
            problem,
        }
    }

    fn draw<T>(
        &self,
        key: &str,
        v: &Spanned<Draw>,
        each: impl Fn(&str, std::ops::Range<usize>, f64) -> Result<T, ProfileError>,
    ) -> Result<(), ProfileError> {
        let (a, b) = v.get_ref().bounds();
        each(key, v.span(), a)?;
        each(key, v.span(), b)?;
        if a > b {
            return Err(self.invalid(key, v.span(), format!("range [{a}, {b}] is backwards")));
        }
        Ok(())
    }

    fn rate(&self, key: &str, span: std::ops::Range<usize>, v: f64) -> Result<u32, ProfileError> {
        if !(MIN_MBPS..=MAX_MBPS).contains(&v) {
            return Err(self.invalid(
                key,
                span,
                format!("must be between {MIN_MBPS} and {MAX_MBPS} Mb/s, got {v}"),
            ));
        }
        Ok(mbps_to_kbps(v))
    }

    fn delay(
        &self,
        key: &str,
        span: std::ops::Range<usize>,
        v: f64,
        max: f64,
    ) -> Result<f64, ProfileError> {
        if !(0.0..=max).contains(&v) {
            return Err(self.invalid(
                key,
                span,
                format!("must be between 0 and {max} ms, got {v}"),
            ));
        }
        Ok(v)
    }

    fn loss(&self, key: &str, span: std::ops::Range<usize>, v: f64) -> Result<f64, ProfileError> {
        if !(0.0..0.5).contains(&v) {
            return Err(self.invalid(
                key,
                span,
                format!("is a fraction of packets, from 0 up to 0.5, got {v}"),
            ));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_profiles_parse() {
        for (name, _) in SHIPPED {
            let p = Profile::load(name).expect(name);
            assert!(!p.classes.is_empty());
        }
    }

    #[test]
    fn residential_draws_the_mix_exactly_and_repeats_with_the_seed() {
        let p = Profile::load("residential").expect("shipped");
        let a = p.draw(100, &mut Rng::new(3));
        let b = p.draw(100, &mut Rng::new(3));
        assert_eq!(a, b);
        let count = |kbps| a.iter().filter(|l| l.upload_kbps == kbps).count();
        assert_eq!(
            [count(1000), count(5000), count(20_000), count(100_000)],
            [25, 35, 25, 15]
        );
        assert!(a
            .iter()
            .all(|l| (20.0..=120.0).contains(&l.rtt_ms) && l.loss <= 0.01));
        // Shuffled: the first ten are not all one class.
        assert!(a[..10].iter().any(|l| l.class != a[0].class));
    }

    #[test]
    fn odd_sizes_still_add_up() {
        let p = Profile::load("mobile-heavy").expect("shipped");
        for n in [1, 3, 7, 16] {
            assert_eq!(p.draw(n, &mut Rng::new(1)).len(), n);
        }
    }

    fn refused(text: &str) -> String {
        Profile::parse("test.toml", text)
            .expect_err("refused")
            .to_string()
    }

    const CLASS: &str = "[[class]]\nshare = 1\nupload_mbps = 5\ndownload_mbps = 50\nrtt_ms = 20\n";

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let e = refused(&format!("{CLASS}bandwidth = 3\n"));
        assert!(e.contains("bandwidth") && e.contains("line 6"), "{e}");
        let e = refused(&format!("[edge]\nupload = 3\n{CLASS}"));
        assert!(e.contains("upload") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn impossible_values_are_refused_with_key_and_line() {
        let e = refused(&CLASS.replace("rtt_ms = 20", "rtt_ms = -5"));
        assert!(e.contains("line 5") && e.contains("`rtt_ms`"), "{e}");
        let e = refused(&CLASS.replace("upload_mbps = 5", "upload_mbps = 0"));
        assert!(e.contains("line 3") && e.contains("`upload_mbps`"), "{e}");
        let e = refused(&CLASS.replace("download_mbps = 50", "download_mbps = [50, 10]"));
        assert!(e.contains("backwards") && e.contains("line 4"), "{e}");
        let e = refused(&format!("{CLASS}loss = 0.9\n"));
        assert!(e.contains("`loss`") && e.contains("line 6"), "{e}");
        let e = refused(&format!("[edge]\nupload_mbps = -1\n{CLASS}"));
        assert!(
            e.contains("`edge.upload_mbps`") && e.contains("line 2"),
            "{e}"
        );
        let e = refused(&CLASS.replace("share = 1", "share = 0.5"));
        assert!(e.contains("add up to 0.5"), "{e}");
        let e = refused("description = \"x\"\n");
        assert!(e.contains("class"), "{e}");
    }

    #[test]
    fn a_missing_file_names_the_shipped_profiles() {
        let e = Profile::load("/nonexistent/p.toml")
            .expect_err("missing")
            .to_string();
        assert!(e.contains("lan, residential, mobile-heavy"), "{e}");
    }
}
