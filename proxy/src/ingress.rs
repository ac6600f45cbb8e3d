//! What a request *is* when it arrives, decided once, before routing and
//! before any stage runs (as linkerd2-proxy normalises URIs and Hosts):
//!
//! 1. **Framing**: a `Transfer-Encoding` other than `chunked` is refused
//!    (501): the proxy would otherwise forward a decoded chunked body
//!    without the coding the client applied.
//! 2. **Authority**: exactly one, valid, without user information. An
//!    HTTP/1.1 request needs one `Host`; an absolute-form target's
//!    authority wins over `Host` (RFC 9112 §3.2.2) and replaces it; an
//!    HTTP/2 `:authority` and a `host` that disagree are refused. The
//!    authority is then the `Host` the upstream receives, so routing and
//!    forwarding never see two different hosts.
//! 3. **Path**: [`normalize_path`]; the normalised path is routed *and*
//!    forwarded.
//! 4. **Hop-by-hop headers** are removed, with the headers `Connection`
//!    names, so a client cannot make the proxy drop a header a stage sets.
//!    `Upgrade` survives only as `Upgrade: websocket`; every other token
//!    (`h2c` above all) is dropped with `HTTP2-Settings`.
//! 5. **Cookies** sent as several HTTP/2 fields are joined with `"; "`
//!    (RFC 9113 §8.2.3), as an HTTP/1.1 upstream expects one field.
//!
//! Everything here is a pure function of the request head.

use std::borrow::Cow;

use http::header::{self, HeaderName};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Uri, Version, request};

use crate::errors::ProxyError;
use crate::upstream::strip_hop_by_hop;

/// What ingress decided about a request.
#[derive(Debug)]
pub struct Admitted {
    /// The host to route by: lower-case, without port or trailing dot.
    pub host: String,
    /// The authority (host and port) the client addressed, as sent
    /// upstream in `Host` and `X-Forwarded-Host`.
    pub authority: Option<HeaderValue>,
    /// Whether the request asks for a WebSocket upgrade.
    pub websocket: bool,
    /// The path normalised without merging slashes, when that differs
    /// from the routed path, for routes that keep them.
    pub unmerged: Option<String>,
}

/// Checks and normalises a request head in place; see the module docs.
pub fn admit(parts: &mut request::Parts) -> Result<Admitted, ProxyError> {
    let headers = &parts.headers;
    // NB: most requests carry neither header; `contains_key` is one probe.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        check_transfer_encoding(headers)?;
    }
    let websocket = headers.contains_key(header::UPGRADE) && is_websocket_upgrade(parts.version, headers);
    let (host, authority) = authority(parts)?;
    let unmerged = normalize_target(parts)?;
    strip_hop_by_hop(&mut parts.headers, websocket);
    strip_identity(&mut parts.headers);
    if websocket {
        parts.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    Ok(Admitted { host, authority, websocket, unmerged })
}

/// Removes the `x-sluice-` headers a client sent: those are the
/// gateway's word to the upstream about who is calling, and only an
/// identity stage may set them ([`crate::exchange::Caller`]).
pub fn strip_identity(headers: &mut HeaderMap) {
    let prefix = crate::exchange::IDENTITY_PREFIX.as_bytes();
    // NB: one pass over the names; most requests carry none.
    let sent: Vec<HeaderName> =
        headers.keys().filter(|name| name.as_str().as_bytes().get(..prefix.len()) == Some(prefix)).cloned().collect();
    for name in sent {
        headers.remove(name);
    }
}

fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), ProxyError> {
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let ok = value.to_str().is_ok_and(|v| v.split(',').all(|t| t.trim().eq_ignore_ascii_case("chunked")));
        if !ok {
            return Err(ProxyError::NotImplemented("the only Transfer-Encoding the gateway accepts is chunked".into()));
        }
    }
    Ok(())
}

/// The request's one authority, if it has one: the host to route by
/// (lower-case, without port) and the value to send as `Host`, which is
/// set on the request when it differs from the client's `Host`.
fn authority(parts: &mut request::Parts) -> Result<(String, Option<HeaderValue>), ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("the request has more than one Host header".into()));
    }
    let host = host.map(|h| checked_authority(h.as_bytes()).map(|name| (name, h.clone()))).transpose()?;
    let target = match parts.uri.authority() {
        Some(a) => {
            let value = HeaderValue::from_str(a.as_str()).map_err(|_| invalid_authority())?;
            Some((checked_authority(value.as_bytes())?, value))
        }
        None => None,
    };
    let chosen = match parts.version {
        Version::HTTP_2 | Version::HTTP_3 => match (target, host) {
            (Some(target), Some(host)) if !target.1.as_bytes().eq_ignore_ascii_case(host.1.as_bytes()) => {
                return Err(ProxyError::BadRequest("the :authority and host of the request differ".into()));
            }
            (Some(target), _) => Some((target, true)),
            (None, host) => host.map(|h| (h, false)),
        },
        version => match (target, host) {
            // Absolute form: the target's authority wins, Host is replaced.
            (Some(target), _) => Some((target, true)),
            (None, Some(host)) => Some((host, false)),
            (None, None) if version == Version::HTTP_11 => {
                return Err(ProxyError::BadRequest("an HTTP/1.1 request needs a Host header".into()));
            }
            (None, None) => None,
        },
    };
    Ok(match chosen {
        Some(((name, value), replace)) => {
            if replace {
                parts.headers.insert(header::HOST, value.clone());
            }
            (name, Some(value))
        }
        None => (String::new(), None),
    })
}

/// The bytes of an RFC 3986 reg-name (unreserved, sub-delims, `%`).
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
            );
        b += 1;
    }
    table
};

fn invalid_authority() -> ProxyError {
    ProxyError::BadRequest("the Host header is not a valid authority".into())
}

/// Checks an authority (`host[:port]`, RFC 3986 §3.2, without user
/// information) and returns its host: lower-case, without port, trailing
/// dot or IPv6 brackets.
fn checked_authority(bytes: &[u8]) -> Result<String, ProxyError> {
    if bytes.contains(&b'@') {
        return Err(ProxyError::BadRequest("the request's authority must not carry user information".into()));
    }
    let bracketed = bytes.first() == Some(&b'[');
    let (host, port) = if bracketed {
        let end = bytes.iter().position(|b| *b == b']').ok_or_else(invalid_authority)?;
        let literal = &bytes[1..end];
        if literal.is_empty() || !literal.iter().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')) {
            return Err(invalid_authority());
        }
        let port = match bytes[end + 1..].split_first() {
            None => None,
            Some((b':', port)) => Some(port),
            Some(_) => return Err(invalid_authority()),
        };
        (literal, port)
    } else {
        match bytes.iter().rposition(|b| *b == b':') {
            Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
            None => (bytes, None),
        }
    };
    if host.is_empty() || (!bracketed && !host.iter().all(|b| REG_NAME[usize::from(*b)])) {
        return Err(invalid_authority());
    }
    if port.is_some_and(|p| p.len() > 5 || !p.iter().all(u8::is_ascii_digit)) {
        return Err(invalid_authority());
    }
    let host = std::str::from_utf8(host).map_err(|_| invalid_authority())?;
    Ok(host.trim_end_matches('.').to_ascii_lowercase())
}

/// Normalises the request target to origin form with a normalised path;
/// returns the path normalised without merging slashes when it differs.
fn normalize_target(parts: &mut request::Parts) -> Result<Option<String>, ProxyError> {
    let path = parts.uri.path();
    if path == "*" || (path.is_empty() && parts.uri.authority().is_none()) {
        // NB: `OPTIONS *` asks about the server, not a resource; the
        // gateway has no answer to give for a route, so it is refused too.
        return Err(ProxyError::BadRequest("the request target * names no resource".into()));
    }
    if parts.method == Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not served by the gateway".into()));
    }
    let path = if path.is_empty() { "/" } else { path };
    let normalized = normalize_path(path, true).map_err(path_error)?;
    let changed = matches!(normalized, Cow::Owned(_));
    if !changed && parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
        return Ok(None);
    }
    let unmerged = match path.contains("//") {
        true => Some(normalize_path(path, false).map_err(path_error)?.into_owned()).filter(|u| *u != normalized),
        false => None,
    };
    let path_and_query = match parts.uri.query() {
        Some(q) => Cow::Owned(format!("{normalized}?{q}")),
        None => normalized,
    };
    let pq = PathAndQuery::try_from(path_and_query.as_ref())
        .map_err(|_| ProxyError::BadRequest("the normalised path is not a valid URI path".into()))?;
    parts.uri = Uri::from(pq);
    Ok(unmerged)
}

fn path_error(e: PathError) -> ProxyError {
    ProxyError::BadRequest(
        match e {
            PathError::AboveRoot => "the path climbs above the root (/..)",
            PathError::BadEscape => "the path has an invalid percent-encoding",
            PathError::NotAbsolute => "the path does not start with /",
        }
        .into(),
    )
}

/// Sets the request's path to `path`, keeping its query.
pub fn set_path(parts: &mut request::Parts, path: &str) -> Result<(), ProxyError> {
    let pq = match parts.uri.query() {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
        None => PathAndQuery::try_from(path),
    }
    .map_err(|_| ProxyError::BadRequest("the path is not a valid URI path".into()))?;
    parts.uri = Uri::from(pq);
    Ok(())
}

/// Where the first `segments` segments of a path end, counting runs of
/// slashes as one: maps a prefix length in the merged path onto the same
/// prefix of the unmerged one.
pub fn segments_end(path: &str, segments: usize) -> usize {
    let bytes = path.as_bytes();
    let (mut i, mut seen) = (0, 0);
    while i < bytes.len() && seen < segments {
        while i < bytes.len() && bytes[i] == b'/' {
            i += 1;
        }
        while i < bytes.len() && bytes[i] != b'/' {
            i += 1;
        }
        seen += 1;
    }
    i
}

/// Why a path cannot be normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// It does not start with `/`.
    NotAbsolute,
    /// A `..` would climb above the root.
    AboveRoot,
    /// A `%` is not followed by two hex digits.
    BadEscape,
}

/// The gateway's one path normalisation, applied before routing; the
/// upstream receives its result:
///
/// * percent-encoded unreserved characters are decoded (`%7E` is `~`,
///   `%2e%2e` is `..`) and other escapes are upper-cased; `%2F` and `%5C`
///   stay encoded and are never separators;
/// * dot-segments are removed (RFC 3986 §5.2.4); a `..` that would climb
///   above the root is an error, never clamped;
/// * with `merge_slashes`, repeated slashes become one.
///
/// A path that needs no change is returned borrowed.
pub fn normalize_path(path: &str, merge_slashes: bool) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let needs_work = bytes.iter().enumerate().any(|(i, &b)| match b {
        b'%' => true,
        b'/' => match bytes.get(i + 1) {
            Some(b'.') => true,
            Some(b'/') => merge_slashes,
            _ => false,
        },
        _ => false,
    });
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                if i == last {
                    out.push("");
                }
            }
            "" if merge_slashes && i != last => {}
            s => out.push(s),
        }
    }
    let normalized = format!("/{}", out.join("/"));
    if normalized == path { Ok(Cow::Borrowed(path)) } else { Ok(Cow::Owned(normalized)) }
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b as char);
            i += 1;
            continue;
        }
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
            return Err(PathError::BadEscape);
        };
        let value = (hi * 16 + lo) as u8;
        if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
            out.push(value as char);
        } else {
            out.push('%');
            out.push_str(&format!("{value:02X}"));
        }
        i += 3;
    }
    Ok(out)
}

/// `Connection: upgrade` with `websocket` among the `Upgrade` tokens, on
/// HTTP/1.1 (the only version with upgrades).
fn is_websocket_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && has_token(headers, &header::CONNECTION, "upgrade")
        && has_token(headers, &header::UPGRADE, "websocket")
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().split('/').next().is_some_and(|t| t.eq_ignore_ascii_case(token))))
}

fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else { return };
    let mut joined = first.as_bytes().to_vec();
    for value in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy;
/// then the first untrusted hop of `X-Forwarded-For`, read from the right
/// (the leftmost when every hop is trusted).
pub fn client_ip(peer: std::net::IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<std::net::IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    hops.iter().rev().find(|ip| !is_trusted(ip)).or(hops.first()).copied().unwrap_or(peer)
}

#[cfg(test)]
mod tests;
