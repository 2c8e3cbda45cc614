//! Clients that prove themselves with a TLS client certificate (RFC 8705 section 2), and
//! tokens bound to one (section 3).
//!
//! A client registers what its certificate must show: a subject DN or subject alternative
//! names (`tls_client_auth`: the certificate must chain to the client CA), or the SHA-256
//! thumbprints of self-signed certificates (`self_signed_tls_client_auth`). Registered values
//! are parsed and kept in one canonical form, and a presented certificate is read once into
//! the same form, so matching is comparing.

use std::{fmt, net::IpAddr, sync::Arc};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use rustls::pki_types::CertificateDer;
use x509_parser::{
    certificate::X509Certificate, extensions::GeneralName, prelude::FromDer as _, x509::X509Name,
};

use super::ParseError;

/// The SHA-256 of a certificate's DER: what `cnf.x5t#S256` holds (base64url) and what a
/// self-signed client registers (hex).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Thumbprint([u8; 32]);

impl Thumbprint {
    /// The thumbprint of a certificate's DER.
    pub fn of(der: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut bytes = [0_u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }

    /// A thumbprint from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads one written as 64 hex digits (any case, `:` between bytes allowed, as
    /// `openssl x509 -fingerprint -sha256` prints it) or as 43 base64url characters (as
    /// in `cnf.x5t#S256`).
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let hex: String = value.chars().filter(|c| *c != ':').collect();
        let bytes = if hex.len() == 64 {
            decode_hex(&hex)
        } else if value.len() == 43 {
            URL_SAFE_NO_PAD.decode(value).ok()
        } else {
            None
        };
        bytes
            .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
            .map(Self)
            .ok_or_else(|| {
                ParseError::new(
                    "must be a SHA-256 thumbprint: 64 hex digits (`:` between bytes allowed) \
                     or 43 base64url characters",
                )
            })
    }

    /// Lowercase hex, as registered and stored.
    pub fn to_hex(self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Base64url without padding, as in `cnf.x5t#S256` (RFC 8705 section 3.1).
    pub fn to_base64url(self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thumbprint({})", self.to_hex())
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.is_ascii() || !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect()
}

/// A subject alternative name a client's certificate may carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectAltName {
    /// A DNS name, lowercase.
    Dns(String),
    /// A URI, such as a SPIFFE ID (`spiffe://example.org/ns/payments/sa/api`), compared
    /// exactly.
    Uri(String),
    /// An IP address.
    Ip(IpAddr),
    /// An email address (rfc822Name), compared without case.
    Email(String),
}

/// Longest subject alternative name or subject DN registered, in bytes.
const MAX_NAME: usize = 1024;

impl SubjectAltName {
    /// Reads a registered name: a URI when it has a scheme (`spiffe://…`, `urn:…`), an IP
    /// address when it is one, an email address when it holds `@`, else a DNS name.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        if value.is_empty() || value.len() > MAX_NAME || value.chars().any(char::is_whitespace) {
            return Err(ParseError::new(format!(
                "must hold 1 to {MAX_NAME} bytes and no spaces"
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(ParseError::new("must not hold control characters"));
        }
        if let Ok(ip) = value.parse::<IpAddr>() {
            return Ok(Self::Ip(ip.to_canonical()));
        }
        if let Some((scheme, rest)) = value.split_once(':')
            && !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && !rest.is_empty()
        {
            return url::Url::parse(value)
                .map(|_| Self::Uri(value.to_owned()))
                .map_err(|error| ParseError::new(format!("is not a valid URI ({error})")));
        }
        if value.contains('@') {
            return Ok(Self::Email(value.to_lowercase()));
        }
        let dns = value.trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if dns.len() <= 253 && dns.split('.').all(label_ok) {
            return Ok(Self::Dns(dns));
        }
        Err(ParseError::new(
            "must be a DNS name, a URI such as a SPIFFE ID, an IP address or an email address",
        ))
    }

    /// The name as registered and shown: the same form [`Self::parse`] reads.
    pub fn as_string(&self) -> String {
        match self {
            Self::Dns(name) | Self::Uri(name) | Self::Email(name) => name.clone(),
            Self::Ip(ip) => ip.to_string(),
        }
    }

    /// A name of a certificate, in the same form; `None` for kinds no client registers.
    fn of_certificate(name: &GeneralName<'_>) -> Option<Self> {
        match name {
            GeneralName::DNSName(dns) => {
                Some(Self::Dns(dns.trim_end_matches('.').to_ascii_lowercase()))
            }
            GeneralName::URI(uri) => Some(Self::Uri((*uri).to_owned())),
            GeneralName::RFC822Name(email) => Some(Self::Email(email.to_lowercase())),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                _ => None,
            }
            .map(|ip| Self::Ip(ip.to_canonical())),
            _ => None,
        }
    }
}

/// A distinguished name in one canonical form: relative distinguished names most specific
/// first (as RFC 4514 writes them), each a sorted list of attribute type (upper case short
/// name, or dotted OID) and value (compared without case, as `caseIgnoreMatch`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DistinguishedName {
    rdns: Vec<Vec<(String, String)>>,
}

/// Attribute types by OID and the short names RFC 4514 (and habit) give them.
const ATTRIBUTE_TYPES: &[(&str, &str)] = &[
    ("2.5.4.3", "CN"),
    ("2.5.4.6", "C"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.9", "STREET"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.5", "SERIALNUMBER"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("1.2.840.113549.1.9.1", "EMAILADDRESS"),
];

impl DistinguishedName {
    /// Reads an RFC 4514 string such as `CN=payments,OU=Services,O=Example,C=DE` (spaces
    /// around `,`, `+` and `=` are ignored; `\` escapes as RFC 4514 says; an attribute type
    /// is a short name, `E` for `EMAILADDRESS`, or a dotted OID).
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        if value.trim().is_empty() || value.len() > MAX_NAME {
            return Err(ParseError::new(format!(
                "must be an RFC 4514 distinguished name of at most {MAX_NAME} bytes, such as \
                 `CN=payments,O=Example`"
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(ParseError::new("must not hold control characters"));
        }
        let mut rdns = Vec::new();
        for rdn in split_unescaped(value, ',')? {
            let mut attributes = Vec::new();
            for attribute in split_unescaped(&rdn, '+')? {
                let (kind, raw) = attribute.split_once('=').ok_or_else(|| {
                    ParseError::new(format!(
                        "`{}` is no `TYPE=value` attribute",
                        attribute.trim()
                    ))
                })?;
                let kind = attribute_type(kind.trim())?;
                let value = unescape(raw.trim())?;
                if value.is_empty() {
                    return Err(ParseError::new(format!("`{kind}` has an empty value")));
                }
                attributes.push((kind, value.to_lowercase()));
            }
            attributes.sort();
            rdns.push(attributes);
        }
        Ok(Self { rdns })
    }

    /// The subject of a certificate; `None` when an attribute is not a string.
    fn of_certificate(name: &X509Name<'_>) -> Option<Self> {
        let mut rdns = Vec::new();
        for rdn in name.iter_rdn() {
            let mut attributes = Vec::new();
            for attribute in rdn.iter() {
                let oid = attribute.attr_type().to_id_string();
                let kind = ATTRIBUTE_TYPES
                    .iter()
                    .find(|(known, _)| *known == oid)
                    .map_or(oid.clone(), |(_, short)| (*short).to_owned());
                let value = attribute.as_str().ok()?;
                attributes.push((kind, value.trim().to_lowercase()));
            }
            attributes.sort();
            rdns.push(attributes);
        }
        // A certificate lists the most general first; RFC 4514 the most specific.
        rdns.reverse();
        Some(Self { rdns })
    }
}

impl fmt::Display for DistinguishedName {
    /// The RFC 4514 form, as stored and shown (values lowercase).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, rdn) in self.rdns.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            for (at, (kind, value)) in rdn.iter().enumerate() {
                if at > 0 {
                    f.write_str("+")?;
                }
                write!(f, "{kind}={}", escape(value))?;
            }
        }
        Ok(())
    }
}

/// Splits on `separator` where it is not escaped with `\`.
fn split_unescaped(value: &str, separator: char) -> Result<Vec<String>, ParseError> {
    let mut parts = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        let current = parts.last_mut().ok_or_else(|| ParseError::new("empty"))?;
        if c == '\\' {
            current.push(c);
            current.push(
                chars
                    .next()
                    .ok_or_else(|| ParseError::new("ends with a lone `\\`"))?,
            );
        } else if c == separator {
            parts.push(String::new());
        } else {
            current.push(c);
        }
    }
    if parts.iter().any(|part| part.trim().is_empty()) {
        return Err(ParseError::new(format!(
            "has an empty part between `{separator}`s"
        )));
    }
    Ok(parts)
}

/// An attribute type in canonical form.
fn attribute_type(kind: &str) -> Result<String, ParseError> {
    let upper = kind.to_ascii_uppercase();
    let upper = match upper.as_str() {
        "E" | "EMAIL" => "EMAILADDRESS".to_owned(),
        "S" => "ST".to_owned(),
        _ => upper,
    };
    if let Some((_, short)) = ATTRIBUTE_TYPES
        .iter()
        .find(|(oid, short)| *short == upper || *oid == upper)
    {
        return Ok((*short).to_owned());
    }
    let is_oid = upper.split('.').count() >= 2
        && upper
            .split('.')
            .all(|arc| !arc.is_empty() && arc.chars().all(|c| c.is_ascii_digit()));
    if is_oid {
        return Ok(upper);
    }
    Err(ParseError::new(format!(
        "`{kind}` is not an attribute type: use CN, O, OU, C, L, ST, STREET, DC, UID, \
         SERIALNUMBER, EMAILADDRESS or a dotted OID"
    )))
}

/// Undoes RFC 4514 escapes: `\` before a special character, or two hex digits.
fn unescape(value: &str) -> Result<String, ParseError> {
    let mut bytes = Vec::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buffer = [0_u8; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
            continue;
        }
        let next = chars
            .next()
            .ok_or_else(|| ParseError::new("ends with a lone `\\`"))?;
        if next.is_ascii_hexdigit() {
            let low = chars
                .next()
                .filter(char::is_ascii_hexdigit)
                .ok_or_else(|| ParseError::new("`\\` takes two hex digits or a special"))?;
            let pair: String = [next, low].iter().collect();
            bytes.push(
                u8::from_str_radix(&pair, 16)
                    .map_err(|_| ParseError::new("`\\` takes two hex digits"))?,
            );
        } else {
            let mut buffer = [0_u8; 4];
            bytes.extend_from_slice(next.encode_utf8(&mut buffer).as_bytes());
        }
    }
    String::from_utf8(bytes).map_err(|_| ParseError::new("escapes to bytes that are not UTF-8"))
}

/// RFC 4514 escapes for a value.
fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (index, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (index == 0 && matches!(c, ' ' | '#'))
            || (index == last && c == ' ');
        if special {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// What a client's certificate must show for it to authenticate by it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateIdentity {
    /// `tls_client_auth`: the certificate's subject.
    pub subject_dn: Option<DistinguishedName>,
    /// `tls_client_auth`: names of which the certificate must carry one, sorted.
    pub sans: Vec<SubjectAltName>,
    /// `self_signed_tls_client_auth`: thumbprints of which the certificate must be one.
    pub thumbprints: Vec<Thumbprint>,
}

impl CertificateIdentity {
    /// Whether the client authenticates by certificate at all.
    pub fn is_set(&self) -> bool {
        self.subject_dn.is_some() || !self.sans.is_empty() || !self.thumbprints.is_empty()
    }

    /// Whether `certificate` proves this identity: it is one of the registered self-signed
    /// thumbprints, or it chains to the client CA and shows the registered subject (if one
    /// is) and one of the registered names (if any are).
    pub fn matched_by(&self, certificate: &ClientCertificate) -> bool {
        if self.thumbprints.contains(&certificate.thumbprint()) {
            return true;
        }
        if !certificate.issued_by_client_ca || (self.subject_dn.is_none() && self.sans.is_empty()) {
            return false;
        }
        let Some(facts) = certificate.facts() else {
            return false;
        };
        self.subject_dn
            .as_ref()
            .is_none_or(|dn| facts.subject.as_ref() == Some(dn))
            && (self.sans.is_empty() || self.sans.iter().any(|san| facts.sans.contains(san)))
    }
}

/// The client certificate a TLS connection presented and its handshake verified.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// The chain, the client's own first.
    pub chain: Arc<[CertificateDer<'static>]>,
    /// Whether the chain leads to `tls.client_ca_file` (else it is a self-signed one, accepted
    /// with `tls.self_signed_client_certificates`, good only for a registered thumbprint).
    pub issued_by_client_ca: bool,
    /// The thumbprint of the client's own certificate (taken once, by the listener).
    pub thumbprint: Thumbprint,
}

/// The client certificate that came with a call.
#[derive(Debug, Clone)]
pub enum PresentedCertificate {
    /// The caller's own TLS connection's.
    Connection(ClientCertificate),
    /// One a trusted proxy (or the caller of `Authenticate`, for its own caller) vouched
    /// for, known only by its thumbprint.
    Forwarded(Thumbprint),
}

impl PresentedCertificate {
    /// Its thumbprint.
    pub fn thumbprint(&self) -> Thumbprint {
        match self {
            Self::Connection(certificate) => certificate.thumbprint(),
            Self::Forwarded(thumbprint) => *thumbprint,
        }
    }
}

/// What a certificate says of its holder.
#[derive(Debug)]
struct CertificateFacts {
    subject: Option<DistinguishedName>,
    sans: Vec<SubjectAltName>,
}

impl ClientCertificate {
    /// A certificate the handshake took, its thumbprint taken here.
    pub fn new(chain: Arc<[CertificateDer<'static>]>, issued_by_client_ca: bool) -> Self {
        let thumbprint = Thumbprint::of(chain.first().map_or(&[][..], |der| der.as_ref()));
        Self {
            chain,
            issued_by_client_ca,
            thumbprint,
        }
    }

    /// The thumbprint of the client's own certificate.
    pub fn thumbprint(&self) -> Thumbprint {
        self.thumbprint
    }

    /// The subject and names of the client's own certificate; `None` when it cannot be read.
    fn facts(&self) -> Option<CertificateFacts> {
        let der = self.chain.first()?;
        let (_, certificate) = X509Certificate::from_der(der.as_ref()).ok()?;
        let sans = certificate
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|extension| {
                extension
                    .value
                    .general_names
                    .iter()
                    .filter_map(SubjectAltName::of_certificate)
                    .collect()
            })
            .unwrap_or_default();
        Some(CertificateFacts {
            subject: DistinguishedName::of_certificate(certificate.subject()),
            sans,
        })
    }
}

/// Whether `der` is a self-signed certificate (its issuer is its subject) valid at `now`
/// (seconds since the epoch): what `tls.self_signed_client_certificates` lets through the
/// handshake.
pub fn is_self_signed_and_current(der: &[u8], now: i64) -> bool {
    let Ok((_, certificate)) = X509Certificate::from_der(der) else {
        return false;
    };
    let validity = certificate.validity();
    certificate.subject().as_raw() == certificate.issuer().as_raw()
        && validity.not_before.timestamp() <= now
        && now <= validity.not_after.timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_read_hex_with_or_without_colons_and_base64url() {
        let bytes: [u8; 32] = std::array::from_fn(|i| u8::try_from(i * 7).unwrap_or(0));
        let thumbprint = Thumbprint::from_bytes(bytes);
        let hex = thumbprint.to_hex();
        assert_eq!(Thumbprint::parse(&hex).unwrap(), thumbprint);
        assert_eq!(Thumbprint::parse(&hex.to_uppercase()).unwrap(), thumbprint);
        let colons: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(Thumbprint::parse(&colons.join(":")).unwrap(), thumbprint);
        assert_eq!(
            Thumbprint::parse(&thumbprint.to_base64url()).unwrap(),
            thumbprint
        );
        for bad in ["", "abc", &hex[1..], &format!("{hex}00"), &"zz".repeat(32)] {
            assert!(Thumbprint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subject_alternative_names_are_read_by_their_shape() {
        assert_eq!(
            SubjectAltName::parse("spiffe://example.org/ns/payments/sa/api").unwrap(),
            SubjectAltName::Uri("spiffe://example.org/ns/payments/sa/api".to_owned())
        );
        assert_eq!(
            SubjectAltName::parse("API.Example.com.").unwrap(),
            SubjectAltName::Dns("api.example.com".to_owned())
        );
        assert_eq!(
            SubjectAltName::parse("10.0.0.7").unwrap(),
            SubjectAltName::Ip("10.0.0.7".parse().unwrap())
        );
        assert_eq!(
            SubjectAltName::parse("Svc@Example.com").unwrap(),
            SubjectAltName::Email("svc@example.com".to_owned())
        );
        for bad in ["", "a b", "-bad-.example", "under_score.example", "x\u{7}y"] {
            assert!(SubjectAltName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_certificate_shows_its_subject_and_names_as_registered() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["API.example.com".to_owned()]).unwrap();
        // Most general first, as certificates list them (RFC 4514 writes them the other way).
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "billing");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/billing".try_into().unwrap(),
        ));
        let der = params.self_signed(&key).unwrap().der().clone();
        let certificate = ClientCertificate::new(Arc::from(vec![der]), true);
        let facts = certificate.facts().unwrap();
        assert_eq!(
            facts.subject,
            Some(DistinguishedName::parse("CN=billing,O=Example").unwrap()),
            "{:?}",
            facts.subject.as_ref().map(ToString::to_string)
        );
        assert!(
            facts
                .sans
                .contains(&SubjectAltName::parse("api.example.com").unwrap())
        );
        assert!(
            facts
                .sans
                .contains(&SubjectAltName::parse("spiffe://example.org/billing").unwrap())
        );
        let identity = CertificateIdentity {
            subject_dn: Some(DistinguishedName::parse("cn=Billing, o=example").unwrap()),
            sans: vec![SubjectAltName::parse("spiffe://example.org/billing").unwrap()],
            thumbprints: Vec::new(),
        };
        assert!(identity.matched_by(&certificate));
        let unvouched = ClientCertificate {
            issued_by_client_ca: false,
            ..certificate.clone()
        };
        assert!(!identity.matched_by(&unvouched), "no CA vouched for it");
        let by_thumbprint = CertificateIdentity {
            thumbprints: vec![unvouched.thumbprint()],
            ..CertificateIdentity::default()
        };
        assert!(by_thumbprint.matched_by(&unvouched));
    }

    #[test]
    fn only_a_current_self_signed_certificate_is_taken_for_one() {
        let now = crate::clock::system_now().timestamp();
        let self_signed = |from: i32, until: i32| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["batch".to_owned()]).unwrap();
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(until, 1, 1);
            (params.self_signed(&key).unwrap(), key, params)
        };
        let (current, ca_key, ca_params) = self_signed(2020, 2090);
        assert!(is_self_signed_and_current(current.der(), now));
        assert!(!is_self_signed_and_current(
            self_signed(2020, 2021).0.der(),
            now
        ));
        assert!(!is_self_signed_and_current(
            self_signed(2090, 2091).0.der(),
            now
        ));
        // Issued by another (its issuer is not its subject).
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let mut leaf = rcgen::CertificateParams::new(vec!["leaf".to_owned()]).unwrap();
        leaf.distinguished_name = rcgen::DistinguishedName::new();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "leaf");
        let leaf = leaf
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        assert!(!is_self_signed_and_current(leaf.der(), now));
        assert!(!is_self_signed_and_current(b"not a certificate", now));
    }

    #[test]
    fn distinguished_names_compare_in_one_canonical_form() {
        let a =
            DistinguishedName::parse("CN=payments, OU=Services,O=Example\\, Inc.,C=DE").unwrap();
        let b =
            DistinguishedName::parse("cn = Payments,ou=services ,o=example\\2c inc.,c=de").unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.to_string(),
            "CN=payments,OU=services,O=example\\, inc.,C=de"
        );
        assert_eq!(DistinguishedName::parse(&a.to_string()).unwrap(), a);
        assert_eq!(
            DistinguishedName::parse("2.5.4.3=x,E=a@b.c").unwrap(),
            DistinguishedName::parse("CN=x,emailAddress=a@b.c").unwrap()
        );
        assert_ne!(
            DistinguishedName::parse("CN=a,O=b").unwrap(),
            DistinguishedName::parse("O=b,CN=a").unwrap(),
            "the order of the names counts"
        );
        for bad in ["", "CN", "CN=", "CN=a,,O=b", "FOO=bar", "CN=a\\", "CN=a\\4"] {
            assert!(DistinguishedName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
