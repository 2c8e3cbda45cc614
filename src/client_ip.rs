//! The client's IP, for rate limits and audit events: the peer's address, or, when the peer
//! is one of the configured trusted proxies (`server.trusted_proxies`), the address those
//! proxies forwarded in `X-Forwarded-For`. The header is read right to left, skipping trusted
//! proxies: the first address that is not one is the client. Anything a client writes itself
//! sits further left and is never reached, so a client cannot choose the address it is
//! counted under. From a peer that is not a trusted proxy the header is ignored.
//!
//! The caller's TLS client certificate: its own connection's, or, from one of the proxies of
//! `server.client_certificate_proxies` (a list of its own: naming a certificate is a greater
//! power than naming an address), the `Hash=` of `X-Forwarded-Client-Cert` (Envoy's header),
//! read strictly: one header, no quote left open, its last element well formed with one
//! `Hash`; at any doubt there is none. Such a proxy's own certificate
//! never speaks for the caller.
//!
//! Layer: foundation. Uses nothing of Keystone's; the adapters use it.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use http::{HeaderMap, Request};
use ipnet::IpNet;

/// The network a client is counted under (rate limits, connection caps): an IPv4 address
/// whole, an IPv6 address by its /64, which one host usually holds whole (IPv4-mapped IPv6
/// as IPv4).
pub fn network_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !u128::from(u64::MAX),
        )),
        v4 => v4,
    }
}

/// The header read from trusted proxies.
const FORWARDED_FOR: &str = "x-forwarded-for";

/// The most entries of `X-Forwarded-For` looked at (proxy chains are short).
const MAX_HOPS: usize = 32;

/// The client IP of a request, set by [`TrustedProxies::tag`] on every request of every
/// listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The other end of a connection, as the listener took it: in every request's extensions, on
/// gRPC and on HTTP.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// The client certificate chain its TLS handshake verified, the client's own first (none
    /// on plaintext, or when it sent none).
    pub certificates: Option<std::sync::Arc<[rustls::pki_types::CertificateDer<'static>]>>,
    /// Whether that chain leads to `tls.client_ca_file` (else it is an accepted self-signed
    /// certificate).
    pub issued_by_client_ca: bool,
    /// The SHA-256 of the client's own certificate, taken once per connection.
    pub thumbprint: Option<[u8; 32]>,
}

/// The header a trusted proxy forwards the client's certificate in (Envoy's).
const FORWARDED_CLIENT_CERT: &str = "x-forwarded-client-cert";

/// The client certificate that speaks for the caller of a request, set by
/// [`TrustedProxies::tag`] when there is one.
#[derive(Debug, Clone)]
pub enum CallerCertificate {
    /// The certificate the peer presented on its own TLS connection (the peer is not a
    /// trusted proxy).
    Connection {
        /// The chain, the client's own first.
        chain: Arc<[rustls::pki_types::CertificateDer<'static>]>,
        /// Whether it leads to `tls.client_ca_file`.
        issued_by_client_ca: bool,
        /// The SHA-256 of the client's own certificate.
        thumbprint: [u8; 32],
    },
    /// The SHA-256 of the certificate's DER, as a trusted proxy forwarded it
    /// (`X-Forwarded-Client-Cert` `Hash=`).
    Forwarded([u8; 32]),
}

/// The proxies whose `X-Forwarded-For` is believed, and those whose
/// `X-Forwarded-Client-Cert` is.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Arc<[IpNet]>,
    certificate_nets: Arc<[IpNet]>,
}

impl TrustedProxies {
    /// Believes the proxies in `nets`.
    pub fn new(nets: &[IpNet]) -> Self {
        Self {
            nets: nets.iter().map(IpNet::trunc).collect(),
            certificate_nets: Arc::default(),
        }
    }

    /// Believes the client certificates that the proxies in `nets` forward.
    pub fn with_certificate_proxies(mut self, nets: &[IpNet]) -> Self {
        self.certificate_nets = nets.iter().map(IpNet::trunc).collect();
        self
    }

    /// Whether `ip` is one of the proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client IP of a call from `peer` carrying `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.trusts(client) {
            return client;
        }
        // Several headers count as one list, in order (RFC 9110 section 5.3). Entries are
        // read one by one: bytes a client wrote on the left cannot spoil the entries proxies
        // appended on the right.
        let entries: Vec<&str> = headers
            .get_all(FORWARDED_FOR)
            .iter()
            .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
            .map(|entry| std::str::from_utf8(entry).unwrap_or(""))
            .collect();
        for entry in entries.iter().rev().take(MAX_HOPS) {
            // An entry that is no address was not written by a trusted proxy: the client is
            // whoever handed it to the last proxy believed.
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }

    /// Sets the [`ClientIp`] of a request from its peer (the listener's [`Peer`], or axum's
    /// connection info) and headers. A request with no known peer gets none.
    pub fn tag<B>(&self, mut request: Request<B>) -> Request<B> {
        let peer = request
            .extensions()
            .get::<Peer>()
            .map(|peer| peer.addr)
            .or_else(|| {
                request
                    .extensions()
                    .get::<axum::extract::ConnectInfo<SocketAddr>>()
                    .map(|info| info.0)
            });
        if let Some(peer) = peer {
            let ip = self.client_ip(peer.ip(), request.headers());
            request.extensions_mut().insert(ClientIp(ip));
            let from = peer.ip().to_canonical();
            let certificate = if self.certificate_nets.iter().any(|net| net.contains(&from)) {
                forwarded_certificate(request.headers()).map(CallerCertificate::Forwarded)
            } else {
                request.extensions().get::<Peer>().and_then(|peer| {
                    Some(CallerCertificate::Connection {
                        chain: peer.certificates.clone()?,
                        issued_by_client_ca: peer.issued_by_client_ca,
                        thumbprint: peer.thumbprint?,
                    })
                })
            };
            if let Some(certificate) = certificate {
                request.extensions_mut().insert(certificate);
            }
        }
        request
    }
}

/// The `Hash=` of the last element of `X-Forwarded-Client-Cert` (one header): the certificate
/// the nearest proxy's client presented. `None` when there is none, when a quote is left open
/// anywhere in the header, when that element holds a pair without `=` or names `Hash` twice,
/// or when it is not 64 hex digits.
pub(crate) fn forwarded_certificate(headers: &HeaderMap) -> Option<[u8; 32]> {
    let mut values = headers.get_all(FORWARDED_CLIENT_CERT).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let element = split_outside_quotes(value.to_str().ok()?, ',')?.pop()?;
    let mut hashes = split_outside_quotes(element, ';')?
        .into_iter()
        .map(|pair| pair.split_once('='))
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .filter(|(key, _)| key.trim().eq_ignore_ascii_case("hash"));
    let (Some((_, hash)), None) = (hashes.next(), hashes.next()) else {
        return None;
    };
    let hash = hash.trim();
    let hash = hash
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(hash);
    if hash.len() != 64 || !hash.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = [0_u8; 32];
    for (at, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hash.get(at * 2..at * 2 + 2)?, 16).ok()?;
    }
    Some(bytes)
}

/// Splits on `separator` outside double quotes (a `\` inside quotes escapes the next byte);
/// `None` when a quote is left open.
fn split_outside_quotes(value: &str, separator: char) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (at, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(value.get(start..at)?);
                start = at + c.len_utf8();
            }
            _ => {}
        }
    }
    if quoted || escaped {
        return None;
    }
    parts.push(value.get(start..)?);
    Some(parts)
}

/// One `X-Forwarded-For` entry: an address, maybe with a port or in brackets.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inner| inner.parse::<IpAddr>().ok())
        })
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            &nets
                .iter()
                .map(|net| net.parse().expect("a CIDR block"))
                .collect::<Vec<IpNet>>(),
        )
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                FORWARDED_FOR,
                HeaderValue::from_str(value).expect("a header value"),
            );
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn the_forwarded_certificate_is_the_hash_of_the_last_element() {
        let hash = "a".repeat(64);
        let other = "b".repeat(64);
        let mut headers = HeaderMap::new();
        headers.append(
            FORWARDED_CLIENT_CERT,
            HeaderValue::from_str(&format!(
                "By=spiffe://a;Hash={other};Subject=\"CN=x,O=y;z\",By=spiffe://b;Hash={hash};URI=spiffe://c"
            ))
            .expect("a header value"),
        );
        assert_eq!(forwarded_certificate(&headers), Some([0xaa; 32]));
        let mut quoted = HeaderMap::new();
        quoted.append(
            FORWARDED_CLIENT_CERT,
            HeaderValue::from_str(&format!("Subject=\"a,b\";hash=\"{other}\""))
                .expect("a header value"),
        );
        assert_eq!(forwarded_certificate(&quoted), Some([0xbb; 32]));
        let open_quote =
            format!("Hash={other};Subject=\",By=spiffe://proxy;Hash={hash};URI=spiffe://c");
        let twice = format!("Hash={other};Hash={hash}");
        let plus = format!("Hash=+a{}", "a".repeat(62));
        for bad in [
            "",
            "Hash=",
            "Hash=abc",
            "By=x",
            &format!("Hash={}", "g".repeat(64)),
            &open_quote,
            &twice,
            &plus,
            "Hash",
        ] {
            let mut headers = HeaderMap::new();
            headers.append(
                FORWARDED_CLIENT_CERT,
                HeaderValue::from_str(bad).expect("a header value"),
            );
            assert_eq!(forwarded_certificate(&headers), None, "{bad}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            trusted.client_ip(ip("203.0.113.9"), &headers(&["1.2.3.4"])),
            ip("203.0.113.9")
        );
        assert_eq!(
            TrustedProxies::default().client_ip(ip("10.0.0.1"), &headers(&["1.2.3.4"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8", "192.168.1.1/32"]);
        // The client wrote "6.6.6.6" itself; the edge proxy appended the real peer.
        let forwarded = headers(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        assert_eq!(
            trusted.client_ip(ip("192.168.1.1"), &forwarded),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn a_chain_of_trusted_proxies_only_ends_at_the_first_of_them() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            trusted.client_ip(ip("10.0.0.1"), &headers(&["10.0.0.3, 10.0.0.2"])),
            ip("10.0.0.3")
        );
        assert_eq!(
            trusted.client_ip(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_believed_hop() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            trusted.client_ip(ip("10.0.0.1"), &headers(&["unknown, 10.0.0.2"])),
            ip("10.0.0.2")
        );
        assert_eq!(
            trusted.client_ip(ip("10.0.0.1"), &headers(&["1.2.3.4, ,"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn bytes_a_client_wrote_do_not_spoil_what_the_proxy_appended() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let mut forwarded = HeaderMap::new();
        forwarded.append(
            FORWARDED_FOR,
            HeaderValue::from_bytes(b"\x80\xff, 198.51.100.7").expect("obs-text is allowed"),
        );
        assert_eq!(
            trusted.client_ip(ip("10.0.0.1"), &forwarded),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_understood() {
        let trusted = proxies(&["::1/128", "127.0.0.1/32"]);
        assert_eq!(
            trusted.client_ip(ip("::1"), &headers(&["[2001:db8::1]:443"])),
            ip("2001:db8::1")
        );
        assert_eq!(
            trusted.client_ip(ip("::ffff:127.0.0.1"), &headers(&["198.51.100.7:5000"])),
            ip("198.51.100.7")
        );
        assert_eq!(
            trusted.client_ip(ip("::1"), &headers(&["[2001:db8::2]"])),
            ip("2001:db8::2")
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn the_client_is_the_peer_or_an_address_a_trusted_proxy_forwarded(
                values in proptest::collection::vec("[0-9a-f.:, \\[\\]]{0,60}|.{0,30}", 0..4),
                trusted_peer in any::<bool>(),
            ) {
                let trusted = proxies(&["10.0.0.0/8"]);
                let peer = if trusted_peer { ip("10.0.0.1") } else { ip("203.0.113.1") };
                let mut headers = HeaderMap::new();
                for value in &values {
                    if let Ok(value) = HeaderValue::from_str(value) {
                        headers.append(FORWARDED_FOR, value);
                    }
                }
                let client = trusted.client_ip(peer, &headers);
                if trusted_peer {
                    // Right to left: the first entry outside the trusted block, stopping at
                    // the first that is no address.
                    let entries: Vec<&str> = values
                        .iter()
                        .filter(|v| HeaderValue::from_str(v).is_ok())
                        .flat_map(|v| v.split(','))
                        .collect();
                    let mut expected = peer;
                    for entry in entries.iter().rev().take(MAX_HOPS) {
                        let Some(ip) = parse_entry(entry) else { break };
                        expected = ip;
                        if !trusted.trusts(ip) {
                            break;
                        }
                    }
                    prop_assert_eq!(client, expected);
                } else {
                    prop_assert_eq!(client, peer);
                }
            }
        }
    }
}
