//! Who may use the local proxy: the viewer's own players and the web pages
//! the operator named, nobody else. Sans-IO: request headers in, a verdict
//! out; [`crate::proxy`] applies it before any route runs.
//!
//! - **Host**: only loopback names (`localhost`, `127.x.y.z`, `[::1]`,
//!   any port). A page that points a DNS name of its own at 127.0.0.1 (DNS
//!   rebinding) sends its own name and is refused; a request without
//!   `Host` (HTTP/1.0 tools) is let through, since browsers always send it.
//! - **Origin**: a browser request carrying `Origin` must come from an
//!   allowed page origin: the agent's own (`http://127.0.0.1:<port>`,
//!   `http://localhost:<port>`, `http://[::1]:<port>`), the edges' (a page
//!   the edge serves), or the configured `page_origins`. A browser request
//!   without `Origin` from another site (`Sec-Fetch-Site: cross-site` or
//!   `same-site`: an `<img>` or `<video>` on some page pointing here) is
//!   refused too. Players outside a browser (ffmpeg, VLC, mpv) send
//!   neither header and are served.
//! - **CORS**: an allowed cross-origin request is answered with
//!   `Access-Control-Allow-Origin` naming that origin (never `*`), and its
//!   preflight with the methods, headers and the Private Network Access
//!   grant; a refused origin's preflight is refused.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use treecast_proto::http::{self as h, Body};

/// Why a request was refused before any route ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `Host` is not a loopback name.
    #[error("Host {0:?} is not a loopback name: this agent serves only players on this machine")]
    Host(String),
    /// The page's origin is not allowed to use the agent.
    #[error("pages of {0} may not use this agent (page_origins in its config)")]
    Origin(String),
    /// A request from another site's page without an `Origin`.
    #[error("requests from other sites' pages must say their Origin")]
    CrossSite,
}

impl Refusal {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Host(_) => "host",
            Refusal::Origin(_) | Refusal::CrossSite => "origin",
        }
    }

    /// The answer.
    pub fn response(&self) -> Response<Body> {
        let status = match self {
            Refusal::Host(_) => StatusCode::MISDIRECTED_REQUEST,
            Refusal::Origin(_) | Refusal::CrossSite => StatusCode::FORBIDDEN,
        };
        h::text(status, self.to_string())
    }
}

/// The page origins allowed to use the agent, normalised
/// (`scheme://host[:port]`, lower case).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allowed: Vec<String>,
}

impl Policy {
    /// The agent's own origins for its proxy `port`, and `others`
    /// (already normalised: the edges' and `page_origins`).
    pub fn new(port: u16, others: impl IntoIterator<Item = String>) -> Self {
        let mut allowed: Vec<String> = ["127.0.0.1", "localhost", "[::1]"]
            .iter()
            .map(|host| format!("http://{host}:{port}"))
            .collect();
        for o in others {
            if !allowed.contains(&o) {
                allowed.push(o);
            }
        }
        Self { allowed }
    }

    /// The origins allowed.
    pub fn allowed(&self) -> &[String] {
        &self.allowed
    }

    /// The verdict on a request's headers: `Ok(Some(origin))` for an
    /// allowed request that names its origin (answer with CORS for it),
    /// `Ok(None)` for one that names none.
    pub fn check(&self, headers: &HeaderMap) -> Result<Option<String>, Refusal> {
        if let Some(host) = headers.get(header::HOST) {
            let host = host.to_str().unwrap_or("");
            if !is_loopback_host(host) {
                return Err(Refusal::Host(host.chars().take(100).collect()));
            }
        }
        match headers.get(header::ORIGIN) {
            Some(origin) => {
                let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
                if self.allowed.contains(&origin) {
                    Ok(Some(origin))
                } else {
                    Err(Refusal::Origin(origin.chars().take(100).collect()))
                }
            }
            None => match headers.get("sec-fetch-site").map(HeaderValue::as_bytes) {
                Some(b"cross-site") | Some(b"same-site") => Err(Refusal::CrossSite),
                _ => Ok(None),
            },
        }
    }
}

/// True for `localhost`, an IPv4 loopback address or `[::1]`, with or
/// without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || valid_port(port) => {
                return v6
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok_and(|a| a.is_loopback())
            }
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if valid_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

fn valid_port(port: &str) -> bool {
    port.strip_prefix(':')
        .unwrap_or(port)
        .parse::<u16>()
        .is_ok()
}

/// Adds the CORS headers for an allowed `origin` to `resp`.
pub fn grant(resp: &mut Response<Body>, origin: &str) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Content-Length, Content-Type, Date"),
    );
}

/// The answer to an allowed origin's preflight, Private Network Access
/// included (a public page asking for a loopback address).
pub fn preflight(origin: &str) -> Response<Body> {
    let mut r = h::empty_response();
    *r.status_mut() = StatusCode::NO_CONTENT;
    grant(&mut r, origin);
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Range"),
    );
    h.insert(
        "access-control-allow-private-network",
        HeaderValue::from_static("true"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn only_loopback_names_are_hosts() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8090",
            "127.4.5.6:1",
            "localhost",
            "LOCALHOST:8090",
            "localhost.",
            "[::1]",
            "[::1]:8090",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8090",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "10.0.0.1:8090",
            "[::2]:8090",
            "[::1]x",
            "127.0.0.1:notaport",
            "",
            "0.0.0.0:8090",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn a_rebinding_page_and_foreign_origins_are_refused() {
        let p = Policy::new(8090, ["https://townhall.example".to_string()]);
        assert_eq!(p.check(&headers(&[("host", "127.0.0.1:8090")])), Ok(None));
        assert_eq!(
            p.check(&headers(&[("host", "evil.example:8090")])),
            Err(Refusal::Host("evil.example:8090".into()))
        );
        assert_eq!(
            p.check(&headers(&[
                ("host", "127.0.0.1:8090"),
                ("origin", "https://TownHall.example")
            ])),
            Ok(Some("https://townhall.example".into()))
        );
        assert_eq!(
            p.check(&headers(&[
                ("host", "localhost:8090"),
                ("origin", "http://127.0.0.1:8090")
            ])),
            Ok(Some("http://127.0.0.1:8090".into()))
        );
        assert_eq!(
            p.check(&headers(&[
                ("host", "127.0.0.1:8090"),
                ("origin", "https://evil.example")
            ]))
            .map_err(|e| e.label()),
            Err("origin")
        );
        // Another port on loopback is another origin.
        assert!(p
            .check(&headers(&[
                ("host", "127.0.0.1:8090"),
                ("origin", "http://127.0.0.1:9999")
            ]))
            .is_err());
        assert_eq!(
            p.check(&headers(&[
                ("host", "127.0.0.1:8090"),
                ("sec-fetch-site", "cross-site")
            ])),
            Err(Refusal::CrossSite)
        );
        assert_eq!(
            p.check(&headers(&[
                ("host", "127.0.0.1:8090"),
                ("sec-fetch-site", "none")
            ])),
            Ok(None)
        );
        // No Host at all: not a browser.
        assert_eq!(p.check(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn grants_name_the_origin_never_a_wildcard() {
        let r = preflight("https://townhall.example");
        assert_eq!(
            r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://townhall.example"
        );
        assert_eq!(r.headers()["access-control-allow-private-network"], "true");
    }
}
