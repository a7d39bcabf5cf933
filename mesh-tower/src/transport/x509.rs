//! Reading X.509 certificates: the subject and the subject alternative names, which is
//! all the mesh needs of a peer's certificate (its SPIFFE identity is a URI name; Envoy's
//! `x-forwarded-client-cert` shows the subject and the names), with a small DER reader
//! rather than a full X.509 stack. Also the certificate's SHA-256 digest and PEM text.

use std::time::{Duration, SystemTime};

/// The URI subject alternative names of the certificate `der`.
pub(crate) fn uri_sans(der: &[u8]) -> Vec<String> {
    parse(der).map(|c| c.names(URI)).unwrap_or_default()
}

/// `GeneralName` tags: `[2] dNSName`, `[6] uniformResourceIdentifier` (primitive,
/// context-specific).
pub(crate) const DNS: u8 = 0x82;
pub(crate) const URI: u8 = 0x86;

/// The SHA-256 digest of `data`, with rustls' *ring* provider.
pub(crate) fn sha256(data: &[u8]) -> Option<Vec<u8>> {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13()?;
    let hash = suite.common.hash_provider;
    (hash.algorithm() == rustls::crypto::hash::HashAlgorithm::SHA256)
        .then(|| hash.hash(data).as_ref().to_vec())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `der` as a PEM `CERTIFICATE` (64 base64 characters a line), as OpenSSL writes it.
pub(crate) fn pem(der: &[u8]) -> String {
    pem_section("CERTIFICATE", der)
}

/// `der` as a PEM section labelled `label`.
pub(crate) fn pem_section(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                let idx = (n >> (18 - 6 * i)) & 0x3f;
                b64.push(char::from(B64[idx as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// One DER element.
struct Tlv<'a> {
    tag: u8,
    /// Its contents.
    value: &'a [u8],
    /// Its whole encoding.
    raw: &'a [u8],
}

/// Reads the next element of `input` (definite lengths up to 4 bytes, single-byte tags).
fn next<'a>(input: &mut &'a [u8]) -> Option<Tlv<'a>> {
    let data: &'a [u8] = input;
    let (&tag, rest) = data.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, r) = rest.split_at_checked(n)?;
        rest = r;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let header = data.len() - rest.len();
    let (value, after) = rest.split_at_checked(len)?;
    let raw = data.get(..header + len)?;
    *input = after;
    Some(Tlv { tag, value, raw })
}

/// The parts of a certificate the mesh reads.
pub(crate) struct Cert<'a> {
    /// The contents of the subject `Name`.
    pub(crate) subject: &'a [u8],
    /// The contents of the `GeneralNames` of the subject alternative names, if any.
    sans: Option<&'a [u8]>,
    /// Its validity period (`notBefore`, `notAfter`), when the times could be read.
    pub(crate) validity: Option<(SystemTime, SystemTime)>,
}

impl Cert<'_> {
    /// The subject alternative names with `GeneralName` tag `tag`, as text.
    pub(crate) fn names(&self, tag: u8) -> Vec<String> {
        let mut out = Vec::new();
        let mut sans = self.sans.unwrap_or_default();
        while let Some(n) = next(&mut sans) {
            if n.tag == tag
                && let Ok(s) = std::str::from_utf8(n.value)
            {
                out.push(s.to_owned());
            }
        }
        out
    }
}

const SEQUENCE: u8 = 0x30;
/// The subjectAltName extension, 2.5.29.17.
const SAN_OID: [u8; 3] = [0x55, 0x1d, 0x11];

/// Reads the subject and subject alternative names of an X.509 certificate.
pub(crate) fn parse(der: &[u8]) -> Option<Cert<'_>> {
    let mut input = der;
    let cert = next(&mut input).filter(|t| t.tag == SEQUENCE)?;
    let mut c = cert.value;
    let tbs = next(&mut c).filter(|t| t.tag == SEQUENCE)?;
    let mut t = tbs.value;
    let mut el = next(&mut t)?;
    if el.tag == 0xa0 {
        // [0] version; then the serial number.
        el = next(&mut t)?;
    }
    let _serial = el;
    let _signature = next(&mut t)?;
    let _issuer = next(&mut t)?;
    let validity = next(&mut t)?;
    let validity = {
        let mut v = validity.value;
        match (next(&mut v), next(&mut v)) {
            (Some(a), Some(b)) => time(&a).zip(time(&b)),
            _ => None,
        }
    };
    let subject = next(&mut t).filter(|x| x.tag == SEQUENCE)?;
    let _spki = next(&mut t)?;
    let mut sans = None;
    while let Some(e) = next(&mut t) {
        if e.tag != 0xa3 {
            continue;
        }
        // [3] extensions: a SEQUENCE of { extnID, critical DEFAULT FALSE, extnValue }.
        let mut x = e.value;
        let Some(exts) = next(&mut x).filter(|x| x.tag == SEQUENCE) else {
            continue;
        };
        let mut list = exts.value;
        while let Some(ext) = next(&mut list) {
            let mut f = ext.value;
            let Some(oid) = next(&mut f) else { continue };
            if oid.value != SAN_OID {
                continue;
            }
            let Some(mut v) = next(&mut f) else { continue };
            if v.tag == 0x01 {
                let Some(after) = next(&mut f) else { continue };
                v = after;
            }
            let mut inner = v.value;
            sans = next(&mut inner)
                .filter(|n| n.tag == SEQUENCE)
                .map(|n| n.value);
        }
    }
    Some(Cert {
        subject: subject.value,
        sans,
        validity,
    })
}

/// The validity period of the certificate `der`.
pub(crate) fn validity(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    parse(der)?.validity
}

/// A `UTCTime` (`YYMMDDHHMMSSZ`, years 1950–2049) or `GeneralizedTime`
/// (`YYYYMMDDHHMMSSZ`), the two forms RFC 5280 allows in a validity period.
fn time(t: &Tlv<'_>) -> Option<SystemTime> {
    let s = std::str::from_utf8(t.value).ok()?;
    let digits = s.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (t.tag, digits.len()) {
        (0x17, 12) => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (0x18, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| rest[i..i + 2].parse::<i64>().ok();
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let secs = mesh_config::calendar::days_from_civil(year, month, day) * 86_400
        + hour * 3600
        + minute * 60
        + second;
    if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

/// A distinguished name as OpenSSL prints it with `XN_FLAG_RFC2253` (what Envoy puts in
/// `Subject`): the last RDN first, `,` between RDNs, `+` inside one, short attribute
/// names, RFC 2253 escapes, bytes outside printable ASCII as `\XX`, unknown attributes
/// as `OID=#hex`.
pub(crate) fn subject_rfc2253(name: &[u8]) -> String {
    let mut rdns: Vec<String> = Vec::new();
    let mut n = name;
    while let Some(set) = next(&mut n) {
        let mut attrs: Vec<String> = Vec::new();
        let mut s = set.value;
        while let Some(atv) = next(&mut s) {
            let mut a = atv.value;
            let (Some(oid), Some(val)) = (next(&mut a), next(&mut a)) else {
                continue;
            };
            let text = match (attribute_name(oid.value), string_value(&val)) {
                (Some(short), Some(v)) => format!("{short}={}", escape_2253(&v)),
                (Some(short), None) => format!("{short}=#{}", hex(val.raw)),
                (None, _) => format!("{}=#{}", dotted(oid.value), hex(val.raw)),
            };
            attrs.push(text);
        }
        rdns.push(attrs.join("+"));
    }
    rdns.reverse();
    rdns.join(",")
}

/// OpenSSL's short name of a common attribute type.
fn attribute_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, n] => match n {
            3 => "CN",
            4 => "SN",
            5 => "serialNumber",
            6 => "C",
            7 => "L",
            8 => "ST",
            9 => "street",
            10 => "O",
            11 => "OU",
            12 => "title",
            42 => "GN",
            _ => return None,
        },
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress",
        _ => return None,
    })
}

/// An OID in dotted form.
fn dotted(oid: &[u8]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut acc: u64 = 0;
    for b in oid {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = acc.min(80) / 40;
                parts.push(first.to_string());
                parts.push((acc - first * 40).to_string());
            } else {
                parts.push(acc.to_string());
            }
            acc = 0;
        }
    }
    parts.join(".")
}

/// The text of a directory string, for the string types certificates use.
fn string_value(v: &Tlv<'_>) -> Option<String> {
    match v.tag {
        // UTF8String, NumericString, PrintableString, T61String, IA5String,
        // VisibleString.
        0x0c | 0x12 | 0x13 | 0x14 | 0x16 | 0x1a => {
            Some(String::from_utf8_lossy(v.value).into_owned())
        }
        // BMPString: UTF-16BE.
        0x1e => {
            let units: Vec<u16> = v
                .value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            Some(String::from_utf16_lossy(&units))
        }
        _ => None,
    }
}

/// RFC 2253 escaping, with OpenSSL's `ESC_CTRL` and `ESC_MSB`.
fn escape_2253(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_ascii_control() || !c.is_ascii() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A DER TLV.
    fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match value.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(value);
        out
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    /// A minimal certificate: subject `CN=client,O=Acme, Inc.` (O first in DER) and
    /// SANs `spiffe://cluster.local/ns/a/sa/b` and `client.example.com`.
    pub(crate) fn cert() -> Vec<u8> {
        let atv = |oid: &[u8], tag: u8, v: &str| {
            tlv(
                0x31,
                &tlv(0x30, &cat(&[tlv(0x06, oid), tlv(tag, v.as_bytes())])),
            )
        };
        let subject = tlv(
            0x30,
            &cat(&[
                atv(&[0x55, 0x04, 0x0a], 0x0c, "Acme, Inc."),
                atv(&[0x55, 0x04, 0x03], 0x13, "client"),
            ]),
        );
        let sans = tlv(
            0x30,
            &cat(&[
                tlv(0x86, b"spiffe://cluster.local/ns/a/sa/b"),
                tlv(0x82, b"client.example.com"),
            ]),
        );
        let ext = tlv(
            0x30,
            &cat(&[tlv(0x06, &SAN_OID), tlv(0x01, &[0xff]), tlv(0x04, &sans)]),
        );
        let tbs = tlv(
            0x30,
            &cat(&[
                tlv(0xa0, &tlv(0x02, &[2])),
                tlv(0x02, &[1]),
                tlv(0x30, &[]),
                tlv(0x30, &[]),
                tlv(0x30, &[]),
                subject,
                tlv(0x30, &[]),
                tlv(0xa3, &tlv(0x30, &ext)),
            ]),
        );
        tlv(0x30, &cat(&[tbs, tlv(0x30, &[]), tlv(0x03, &[0])]))
    }

    #[test]
    fn reads_subject_and_alternative_names() {
        let der = cert();
        let c = parse(&der).unwrap();
        assert_eq!(subject_rfc2253(c.subject), "CN=client,O=Acme\\, Inc.");
        assert_eq!(c.names(URI), vec!["spiffe://cluster.local/ns/a/sa/b"]);
        assert_eq!(c.names(DNS), vec!["client.example.com"]);
        assert_eq!(uri_sans(&der), vec!["spiffe://cluster.local/ns/a/sa/b"]);
    }

    #[test]
    fn sha256_and_base64_are_right() {
        // FIPS 180-2 test vector.
        assert_eq!(
            hex(&sha256(b"abc").unwrap()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            pem(b"foobar"),
            "-----BEGIN CERTIFICATE-----\nZm9vYmFy\n-----END CERTIFICATE-----\n"
        );
        assert!(pem(b"fo").contains("\nZm8=\n"));
        assert!(pem(b"f").contains("\nZg==\n"));
        assert_eq!(pem(&[0u8; 60]).lines().nth(1).map(str::len), Some(64));
    }

    #[test]
    fn escapes_and_unknown_attributes() {
        assert_eq!(escape_2253(" a#b "), "\\ a#b\\ ");
        assert_eq!(escape_2253("#x"), "\\#x");
        assert_eq!(escape_2253("é"), "\\C3\\A9");
        assert_eq!(
            dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]),
            "1.2.840.113549"
        );
        let name = tlv(
            0x31,
            &tlv(0x30, &cat(&[tlv(0x06, &[0x2a, 0x03]), tlv(0x0c, b"x")])),
        );
        assert_eq!(subject_rfc2253(&name), "1.2.3=#0c0178");
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        assert!(parse(&[]).is_none());
        assert!(parse(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        let der = cert();
        for cut in 0..der.len() {
            if let Some(c) = parse(&der[..cut]) {
                let _ = (subject_rfc2253(c.subject), c.names(URI), c.names(DNS));
            }
        }
    }
}
