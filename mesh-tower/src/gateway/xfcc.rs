//! `x-forwarded-client-cert` for MUTUAL connections, as Envoy sets it with
//! `forward_client_cert_details: SANITIZE_SET` and Istio's gateway choice of details
//! (`subject`, `cert`, `uri`, `dns`):
//!
//! ```text
//! By=<URI SAN of the gateway's certificate>;Hash=<SHA-256 of the client certificate, hex>;
//! Cert="<client certificate, URL-encoded PEM>";Subject="<subject, RFC 2253>";
//! URI=<URI SAN>;DNS=<DNS SAN>
//! ```
//!
//! (one line; `By`, `URI` and `DNS` once per name, `URI=` empty when the certificate has
//! no URI name).

use http::HeaderValue;

use crate::transport::x509::{DNS, URI, hex, parse, pem, sha256, subject_rfc2253};

/// The value of `x-forwarded-client-cert` for a connection whose verified client
/// certificate is `peer` (DER), on a server whose own certificate has the URI names
/// `local_uris`; `None` when it cannot be built (a certificate that does not parse).
pub(crate) fn value(peer: &[u8], local_uris: &[String]) -> Option<HeaderValue> {
    let cert = parse(peer)?;
    let mut parts: Vec<String> = local_uris.iter().map(|u| format!("By={u}")).collect();
    parts.push(format!("Hash={}", hex(&sha256(peer)?)));
    parts.push(format!("Cert=\"{}\"", url_encode_pem(&pem(peer))));
    parts.push(format!("Subject=\"{}\"", subject_rfc2253(cert.subject)));
    let uris = cert.names(URI);
    if uris.is_empty() {
        parts.push("URI=".into());
    }
    parts.extend(uris.iter().map(|u| format!("URI={u}")));
    parts.extend(cert.names(DNS).iter().map(|d| format!("DNS={d}")));
    HeaderValue::from_str(&parts.join(";")).ok()
}

/// Envoy's URL encoding of a PEM text.
fn url_encode_pem(pem: &str) -> String {
    let mut out = String::with_capacity(pem.len() + pem.len() / 8);
    for c in pem.chars() {
        match c {
            '\n' => out.push_str("%0A"),
            ' ' => out.push_str("%20"),
            '+' => out.push_str("%2B"),
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::x509::tests::cert;

    #[test]
    fn the_header_has_envoys_fields_in_envoys_order() {
        let der = cert();
        let v = value(
            &der,
            &["spiffe://cluster.local/ns/istio-system/sa/gw".into()],
        )
        .unwrap();
        let v = v.to_str().unwrap();
        let fields: Vec<&str> = v.split(';').collect();
        assert_eq!(fields[0], "By=spiffe://cluster.local/ns/istio-system/sa/gw");
        assert!(
            fields[1].starts_with("Hash=") && fields[1].len() == 5 + 64,
            "{v}"
        );
        assert!(
            fields[2].starts_with("Cert=\"-----BEGIN%20CERTIFICATE-----%0A"),
            "{v}"
        );
        assert_eq!(fields[3], "Subject=\"CN=client,O=Acme\\, Inc.\"");
        assert_eq!(fields[4], "URI=spiffe://cluster.local/ns/a/sa/b");
        assert_eq!(fields[5], "DNS=client.example.com");
        assert_eq!(fields.len(), 6);
    }
}
